//! Running each `wisp` subcommand: `serve` starts the gateway, the others
//! call a running gateway through [`Client`] and print what it answered.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use http_body_util::BodyExt;
use wisp_runner::container::spawner::{LaunchError, SpawnerHandle};
use wisp_runner::image::ImportLimits;
use wisp_runner::protocol::Protocol;
use wisp_runner::wasm::WasmConfig;

use crate::connections::{ConnectionLimits, default_max_connections};

use super::args::{
    BenchArgs, Cli, Command, ConnectArgs, DeployArgs, InvokeArgs, LoginArgs, LogsArgs,
    NamespaceCommand, PruneArgs, PullArgs, RegistryArgs, SecretCommand, SecretValueArgs, ServeArgs,
    TokenCommand,
};
use super::client::{Client, ClientError};
use crate::api::{FunctionDeployment, FunctionResources};
use crate::prune::PruneConfig;
use crate::server::{ServeConfig, serve, shutdown_signal};

/// `/var/lib/wisp` when running as root, `./.wisp` otherwise.
pub fn default_data_dir() -> PathBuf {
    use std::os::unix::fs::MetadataExt;
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    if root {
        PathBuf::from("/var/lib/wisp")
    } else {
        PathBuf::from(".wisp")
    }
}

pub fn init_logging(filter: &str, format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Runs the command; `spawner` is the container spawner `main` forked for
/// `serve` (or why it could not).
pub async fn run(
    cli: Cli,
    spawner: Option<Result<SpawnerHandle, LaunchError>>,
) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => {
            let cluster = cluster_config(&args)?;
            let config = ServeConfig {
                listen: args.listen,
                // Absolute: sandboxes resolve paths in it from another
                // working directory (the spawner's mount namespace).
                data_dir: {
                    let dir = args.data_dir.unwrap_or_else(default_data_dir);
                    std::path::absolute(&dir).unwrap_or(dir)
                },
                shutdown_grace: args.shutdown_grace,
                connections: ConnectionLimits {
                    max: match args.max_connections {
                        Some(max) => usize::try_from(max).unwrap_or(usize::MAX),
                        None => default_max_connections(),
                    },
                    header_read_timeout: args.header_read_timeout,
                    idle_timeout: args.idle_timeout,
                },
                max_artifact_bytes: args.max_artifact_size,
                wasm: WasmConfig {
                    max_instances: args.max_wasm_instances,
                },
                sandboxes: wisp_runner::container::SandboxOptions {
                    premade: args.premade_sandboxes,
                    reuse_cgroups: args.reuse_cgroups,
                    favordynmods: args.cgroup_favordynmods,
                },
                images: ImportLimits {
                    max_bytes: args.max_image_size,
                    max_entries: args.max_image_entries,
                },
                prune: PruneConfig {
                    interval: args.prune_interval,
                    grace: args.prune_grace,
                },
                insecure_registries: args.insecure_registries,
                registry_mirrors: args.registry_mirrors,
                deploy_wait: args.deploy_wait,
                revision_history: args.revision_history as usize,
                lambda_region: args.lambda_region,
                calls: crate::calls::AsyncConfig {
                    share: args.async_share,
                    max_queued: args.async_queue_max,
                    max_queued_bytes: args.async_queue_max_bytes,
                    allow_local_callbacks: args.allow_local_callbacks,
                },
                token: match &args.token_file {
                    Some(path) => Some(
                        std::fs::read_to_string(path)
                            .with_context(|| format!("reading --token-file {}", path.display()))?,
                    ),
                    None => None,
                },
                cluster,
            };
            let spawner = spawner.unwrap_or(Err(LaunchError::NotStarted));
            serve(config, spawner, shutdown_signal()).await
        }
        Command::Deploy(args) => deploy(*args).await,
        Command::Pull(args) => pull(args).await,
        Command::Login(args) => login(args).await,
        Command::Tag(args) => {
            let request = crate::api::TagRequest {
                source: args.source,
                target: args.target,
            };
            print!("{}", connect(&args.connect)?.tag(&request).await?);
            Ok(())
        }
        Command::Rmi(args) => {
            let request = crate::api::RemoveImageRequest {
                image: args.image,
                force: args.force,
            };
            let removed = connect(&args.connect)?.remove_image(&request).await?;
            for name in &removed.untagged {
                println!("untagged {name}");
            }
            match &removed.deleted {
                Some(digest) => println!("deleted {digest} ({})", human(removed.bytes)),
                None => println!("the image stays: functions run it or it has other names"),
            }
            Ok(())
        }
        Command::Logout(args) => {
            let request = crate::api::LogoutRequest {
                registry: args.registry,
            };
            print!("{}", connect(&args.connect)?.logout(&request).await?);
            Ok(())
        }
        Command::Secret(command) => secret(command).await,
        Command::Namespace(command) => namespace(command).await,
        Command::Token(command) => token(command).await,
        Command::Nodes(args) => {
            let view = connect(&args)?.nodes().await?;
            match &view.cluster {
                Some(name) => println!(
                    "cluster {name}, registry in etcd{}; answered by {}",
                    if view.reachable {
                        ""
                    } else {
                        " (out of reach: last view)"
                    },
                    view.this_node
                ),
                None => println!("a node on its own (registry in its data dir)"),
            }
            println!(
                "{:<20} {:<28} {:<8} {:>4} {:>9} {:>9} {:>9}",
                "NODE", "ADDRESS", "VERSION", "CPUS", "IN-FLIGHT", "INSTANCES", "FUNCTIONS"
            );
            for node in view.nodes {
                println!(
                    "{:<20} {:<28} {:<8} {:>4} {:>9} {:>9} {:>9}",
                    node.name,
                    if node.address.is_empty() {
                        "-"
                    } else {
                        &node.address
                    },
                    node.version,
                    node.cpus,
                    node.load.in_flight,
                    node.load.instances,
                    node.load.functions
                );
            }
            Ok(())
        }
        Command::History(args) => {
            let revisions = connect(&args.connect)?.revisions(&args.name).await?;
            println!("{:<9} {:<21} {:<10} IMAGE", "REVISION", "DEPLOYED", "KIND");
            for r in revisions {
                let mark = if r.current { " (current)" } else { "" };
                println!(
                    "{:<9} {:<21} {:<10} {}{mark}",
                    r.revision,
                    r.created_at,
                    r.kind.as_str(),
                    r.image
                );
            }
            Ok(())
        }
        Command::Rollback(args) => {
            print!(
                "{}",
                connect(&args.connect)?
                    .rollback(&args.name, args.to)
                    .await?
            );
            Ok(())
        }
        Command::Invoke(args) => invoke(args).await,
        Command::Ls(args) => ls(args).await,
        Command::Images(args) => images(args).await,
        Command::Logs(args) => logs(args).await,
        Command::Bench(args) => bench(*args).await,
        Command::Scale(args) => {
            let request = crate::api::ScaleRequest {
                service_name: Some(args.name.clone()),
                scaling: args.scaling,
                ..Default::default()
            };
            let answer = connect(&args.connect)?.scale(&args.name, &request).await?;
            print!("{answer}");
            Ok(())
        }
        Command::Prune(args) => prune(args).await,
        Command::Rm(args) => {
            let client = connect(&args.connect)?;
            client.delete(&args.name).await?;
            println!("removed {}", args.name);
            Ok(())
        }
    }
}

fn connect(args: &ConnectArgs) -> anyhow::Result<Client> {
    let token = match &args.token {
        Some(token) => Some(token.clone()),
        None => {
            let dir = args.data_dir.clone().unwrap_or_else(default_data_dir);
            crate::auth::read(&dir).ok()
        }
    };
    Ok(Client::new(&args.gateway, token).in_namespace(args.namespace.clone()))
}

fn key_values(what: &str, items: &[String]) -> anyhow::Result<Option<BTreeMap<String, String>>> {
    if items.is_empty() {
        return Ok(None);
    }
    let mut map = BTreeMap::new();
    for item in items {
        let Some((k, v)) = item.split_once('=') else {
            bail!("invalid {what} {item:?}: expected KEY=VALUE");
        };
        map.insert(k.to_owned(), v.to_owned());
    }
    Ok(Some(map))
}

async fn deploy(args: DeployArgs) -> anyhow::Result<()> {
    let client = connect(&args.connect)?;
    let mut command = match (args.cmd.is_empty(), args.command.is_empty()) {
        (false, false) => bail!(
            "the command is given twice: put it after `--` (`-- /bin/app --flag`) or give one `--cmd WORD` per word, not both"
        ),
        (false, true) => args.cmd.clone(),
        _ => args.command.clone(),
    };
    // What the function runs: an upload's digest, or a reference the
    // server pulls.
    let (image, uploaded) = match artifact(&args, &mut command)? {
        Artifact::Bytes(bytes) => {
            let uploaded = client.upload_artifact(bytes).await?;
            (uploaded.digest.clone(), Some(uploaded))
        }
        Artifact::Reference(reference) => (reference, None),
    };
    let deployment = FunctionDeployment {
        service: args.name.clone(),
        image,
        env_vars: key_values("--env", &args.env)?,
        secrets: (!args.secrets.is_empty()).then(|| args.secrets.clone()),
        labels: key_values("--label", &args.labels)?,
        limits: (args.memory.is_some() || args.cpu.is_some()).then(|| FunctionResources {
            memory: args.memory.clone(),
            cpu: args.cpu.clone(),
            ..FunctionResources::default()
        }),
        protocol: args.protocol.clone(),
        port: args.port,
        command: (!command.is_empty()).then_some(command),
        scaling: args.scaling,
        instance_reuse: args.instance_reuse,
        timeout: args.timeout,
        max_body_size: args.max_body,
        allow_outbound: (!args.allow_outbound.is_empty()).then_some(args.allow_outbound),
        pull: args.pull.clone(),
        insecure_registries: (!args.registry.insecure_registries.is_empty())
            .then(|| args.registry.insecure_registries.clone()),
        registry_auth: registry_auth(&args.registry),
        ..FunctionDeployment::default()
    };
    if uploaded.is_some() {
        client.deploy(&deployment).await?;
    } else {
        // The server pulls: show its progress, and wait for a deploy it
        // goes on with after answering.
        let name = args.name.clone();
        super::progress::while_pulling(
            &client,
            |pull| pull.function.as_deref() == Some(name.as_str()),
            async { Ok(client.deploy(&deployment).await?) },
        )
        .await?;
        super::progress::until_deployed(&client, &args.name).await?;
    }
    let status = client.function(&args.name).await?;
    let what = match (&uploaded, &status.image_digest) {
        (Some(uploaded), _) => format!("{}, {} bytes", uploaded.digest, uploaded.size),
        (None, Some(digest)) => format!("{}@{digest}", status.image),
        (None, None) => status.image.clone(),
    };
    // The protocol, when it is not the default: a Lambda runtime found in
    // the image is said here.
    let kind = match status.protocol {
        Some(p @ (Protocol::Lambda | Protocol::Cgi)) => {
            let how = if args.protocol.is_none() && p == Protocol::Lambda {
                ", found a Lambda runtime in the image"
            } else {
                ""
            };
            format!("{}, {} protocol{how}", status.kind.as_str(), p.as_str())
        }
        _ => status.kind.as_str().to_owned(),
    };
    println!(
        "deployed {} ({kind}, {what})\ninvoke: curl {}/function/{}",
        args.name,
        client.gateway(),
        client.qualified(&args.name)
    );
    Ok(())
}

/// What `wisp deploy` sends: a file's bytes, or a registry reference.
enum Artifact {
    Bytes(Vec<u8>),
    Reference(String),
}

/// The artifact `args` name. `--rootfs` and `--binary` are packed into a
/// one-layer image with `command` (which is then cleared: the image has
/// it); `--image` is a path if one exists there, else a registry reference.
fn artifact(args: &DeployArgs, command: &mut Vec<String>) -> anyhow::Result<Artifact> {
    if let Some(rootfs) = &args.rootfs {
        let bytes = super::pack::rootfs_image(rootfs, command)?;
        command.clear();
        return Ok(Artifact::Bytes(bytes));
    }
    if let Some(binary) = &args.binary {
        let bytes = super::pack::binary_image(binary, command)?;
        command.clear();
        return Ok(Artifact::Bytes(bytes));
    }
    let path = match (&args.image, &args.file) {
        (Some(image), _) => {
            let path = std::path::PathBuf::from(image);
            if !path.exists() {
                wisp_runner::image::pull::parse_reference(image).map_err(|e| {
                    anyhow::anyhow!(
                        "--image {image:?} is no file or directory here, nor a registry reference: {e}; give an image archive (.tar), an OCI layout directory, or a reference such as registry.example.com/team/app:1.0"
                    )
                })?;
                return Ok(Artifact::Reference(image.clone()));
            }
            path
        }
        (None, Some(file)) => file.clone(),
        (None, None) => bail!("name the artifact: FILE, --image, --rootfs or --binary"),
    };
    Ok(Artifact::Bytes(if path.is_dir() {
        super::pack::tar_dir(&path)?
    } else {
        read_file(&path)?
    }))
}

/// `--creds user:password` as the API's `registryAuth` (base64).
fn registry_auth(args: &RegistryArgs) -> Option<String> {
    use base64::Engine as _;
    args.creds
        .as_ref()
        .map(|creds| base64::engine::general_purpose::STANDARD.encode(creds))
}

/// `wisp login REGISTRY`: the server checks the credentials with the
/// registry and saves them.
async fn login(args: LoginArgs) -> anyhow::Result<()> {
    let password = match (&args.password, args.password_stdin) {
        (Some(password), _) => password.clone(),
        (None, true) => {
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .context("reading the password from standard input")?;
            line.trim_end_matches(['\n', '\r']).to_owned()
        }
        (None, false) => bail!("give the password with --password-stdin (or -p)"),
    };
    let request = crate::api::LoginRequest {
        registry: args.registry,
        username: args.username,
        password,
        insecure: args.insecure,
    };
    print!("{}", connect(&args.connect)?.login(&request).await?);
    Ok(())
}

/// `wisp secret …`.
async fn secret(command: SecretCommand) -> anyhow::Result<()> {
    match command {
        SecretCommand::Create(args) => put_secret(args, false).await,
        SecretCommand::Update(args) => put_secret(args, true).await,
        SecretCommand::Ls(args) => {
            for secret in connect(&args)?.secrets().await? {
                println!("{}", secret.name);
            }
            Ok(())
        }
        SecretCommand::Rm(args) => {
            connect(&args.connect)?
                .delete_secret(&args.name, args.force)
                .await?;
            println!("removed secret {}", args.name);
            Ok(())
        }
    }
}

/// `wisp namespace …`.
async fn namespace(command: NamespaceCommand) -> anyhow::Result<()> {
    match command {
        NamespaceCommand::Create(args) => {
            print!(
                "{}",
                connect(&args.connect)?.create_namespace(&args.name).await?
            );
            Ok(())
        }
        NamespaceCommand::Ls(args) => {
            for namespace in connect(&args)?.namespaces().await? {
                println!("{namespace}");
            }
            Ok(())
        }
        NamespaceCommand::Rm(args) => {
            connect(&args.connect)?.delete_namespace(&args.name).await?;
            println!("removed namespace {} and revoked its tokens", args.name);
            Ok(())
        }
    }
}

/// `wisp token …`.
async fn token(command: TokenCommand) -> anyhow::Result<()> {
    match command {
        TokenCommand::Create(args) => {
            let Some(namespace) = args.connect.namespace.clone() else {
                bail!("name the token's namespace: wisp token create --namespace NAME");
            };
            let made = connect(&args.connect)?
                .create_token(&namespace, &args.description)
                .await?;
            eprintln!(
                "token {} for namespace {} (shown only now; use it as WISP_TOKEN, or as the password of faas-cli login):",
                made.id, made.namespace
            );
            println!("{}", made.token);
            Ok(())
        }
        TokenCommand::Ls(args) => {
            println!(
                "{:<13} {:<24} {:<21} DESCRIPTION",
                "ID", "NAMESPACE", "CREATED"
            );
            for t in connect(&args)?.tokens().await? {
                println!(
                    "{:<13} {:<24} {:<21} {}",
                    t.id,
                    t.namespace,
                    wisp_runner::store::logs::rfc3339(t.created_at, None),
                    t.description
                );
            }
            Ok(())
        }
        TokenCommand::Rm(args) => {
            connect(&args.connect)?.delete_token(&args.id).await?;
            println!("revoked token {}", args.id);
            Ok(())
        }
    }
}

/// `wisp secret create|update NAME`: the value from a file, the command
/// line or standard input, sent whole (binary values as `rawValue`).
async fn put_secret(args: SecretValueArgs, update: bool) -> anyhow::Result<()> {
    use base64::Engine as _;
    let value = match (&args.from_file, &args.from_literal) {
        (Some(path), _) => {
            std::fs::read(path).with_context(|| format!("reading {}", path.display()))?
        }
        (None, Some(literal)) => literal.clone().into_bytes(),
        (None, None) => {
            let mut value = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut value)
                .context("reading the value from standard input")?;
            value
        }
    };
    let secret = crate::api::Secret {
        name: args.name.clone(),
        raw_value: Some(base64::engine::general_purpose::STANDARD.encode(&value)),
        ..crate::api::Secret::default()
    };
    print!(
        "{}",
        connect(&args.connect)?.put_secret(&secret, update).await?
    );
    Ok(())
}

/// `wisp pull REF`: the server pulls it into its stores.
async fn pull(args: PullArgs) -> anyhow::Result<()> {
    let client = connect(&args.connect)?;
    let request = crate::api::PullRequest {
        image: args.reference.clone(),
        pull: Some("always".into()),
        insecure_registries: (!args.registry.insecure_registries.is_empty())
            .then(|| args.registry.insecure_registries.clone()),
        registry_auth: registry_auth(&args.registry),
    };
    let whole = wisp_runner::image::pull::parse_reference(&args.reference)
        .map(|r| r.whole())
        .map_err(|e| anyhow::anyhow!("{:?} is not an image reference: {e}", args.reference))?;
    let pulled = super::progress::while_pulling(
        &client,
        |pull| pull.function.is_none() && pull.reference == whole,
        async { Ok(client.pull(&request).await?) },
    )
    .await?;
    println!(
        "pulled {}@{} ({}: {} blobs downloaded, {} bytes; {} already stored; {:.2} s)",
        pulled.reference,
        pulled.digest,
        pulled.kind.as_str(),
        pulled.blobs_fetched,
        pulled.downloaded_bytes,
        pulled.blobs_present,
        pulled.seconds
    );
    Ok(())
}

async fn invoke(args: InvokeArgs) -> anyhow::Result<()> {
    let client = connect(&args.connect)?;
    let body = match args.data.as_deref() {
        None => Vec::new(),
        Some("-") => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .context("reading stdin")?;
            buf
        }
        Some(d) if d.starts_with('@') => read_file(Path::new(&d[1..]))?,
        Some(d) => d.as_bytes().to_vec(),
    };
    let method = match &args.method {
        Some(m) => Method::from_bytes(m.to_ascii_uppercase().as_bytes())
            .with_context(|| format!("invalid method {m:?}"))?,
        None if args.data.is_some() => Method::POST,
        None => Method::GET,
    };
    let mut headers = HeaderMap::new();
    for h in &args.headers {
        let Some((name, value)) = h.split_once(':') else {
            bail!("invalid header {h:?}: expected `Name: value`");
        };
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .with_context(|| format!("invalid header name in {h:?}"))?;
        let value = HeaderValue::from_str(value.trim())
            .with_context(|| format!("invalid header value in {h:?}"))?;
        headers.append(name, value);
    }
    let path = if args.path.starts_with('/') {
        args.path.clone()
    } else {
        format!("/{}", args.path)
    };
    if let Some(callback) = &args.callback {
        let value = HeaderValue::from_str(callback)
            .with_context(|| format!("invalid callback URL {callback:?}"))?;
        headers.insert("x-callback-url", value);
    }
    let route = if args.asynchronous {
        "async-function"
    } else {
        "function"
    };
    let response = client
        .send(
            method,
            &format!("/{route}/{}{}", client.qualified(&args.name), path),
            headers,
            wisp_runner::backend::full_body(body),
        )
        .await?;
    let status = response.status();
    if args.asynchronous && status == http::StatusCode::ACCEPTED {
        let id = response
            .headers()
            .get("x-call-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("?");
        println!("queued call {id}");
        return Ok(());
    }
    if args.include {
        eprintln!("{:?} {}", response.version(), status);
        for (name, value) in response.headers() {
            eprintln!("{name}: {}", value.to_str().unwrap_or("<binary>"));
        }
        eprintln!();
    }
    // Stream the body out as it arrives.
    let mut body = response.into_body();
    let mut out = std::io::stdout().lock();
    let mut err = std::io::stderr().lock();
    while let Some(frame) = body.frame().await {
        let frame = frame.context("reading the response body")?;
        if let Some(data) = frame.data_ref() {
            if status.is_success() || status.is_redirection() {
                out.write_all(data)?;
                out.flush()?;
            } else {
                err.write_all(data)?;
            }
        }
    }
    if !(status.is_success() || status.is_redirection()) {
        bail!("function {} answered {status}", args.name);
    }
    Ok(())
}

fn read_file(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

async fn ls(args: ConnectArgs) -> anyhow::Result<()> {
    let client = connect(&args)?;
    let functions = client.list().await?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<24} {:<10} {:<8} {:>12} {:>9}  IMAGE",
        "NAME", "KIND", "STATE", "INVOCATIONS", "INSTANCES"
    )?;
    for f in functions {
        let image: String = f.image.chars().take(40).collect();
        // A function still pulling has no kind yet.
        let kind = match f.state {
            crate::api::FunctionState::Ready => f.kind.as_str(),
            _ => "-",
        };
        let state = match &f.deploying {
            Some(d) if d.error.is_none() && f.state == crate::api::FunctionState::Ready => {
                "updating"
            }
            _ => f.state.as_str(),
        };
        writeln!(
            out,
            "{:<24} {kind:<10} {state:<8} {:>12} {:>9}  {image}",
            f.name, f.invocation_count, f.replicas
        )?;
        if let Some(error) = f.deploying.and_then(|d| d.error) {
            writeln!(out, "  deploy failed: {error}")?;
        }
    }
    Ok(())
}

async fn bench(args: BenchArgs) -> anyhow::Result<()> {
    use super::bench::{BenchConfig, Mode};
    let method: Method = args
        .method
        .parse()
        .map_err(|_| anyhow::anyhow!("invalid method {:?}", args.method))?;
    let concurrency = args.concurrency.unwrap_or(match args.mode {
        Mode::Warm => 16,
        Mode::Burst => 100,
        Mode::Rate | Mode::Curve => 256,
        Mode::Cold => 1,
    });
    let duration = match args.mode {
        Mode::Curve => Some(args.duration.unwrap_or(std::time::Duration::from_secs(5))),
        _ => args.duration,
    };
    // With --url: its origin is the server, its path and query the target.
    let (function, direct, path, client) = match (&args.url, args.name) {
        (Some(url), _) => {
            let uri: http::Uri = url
                .parse()
                .map_err(|e| anyhow::anyhow!("--url {url:?}: {e}"))?;
            let (Some("http"), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
                anyhow::bail!(
                    "--url takes an http:// URL with a host, e.g. http://127.0.0.1:9000/ping"
                );
            };
            let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
            let client = super::client::Client::new(&format!("http://{authority}"), None);
            (url.clone(), true, path, client)
        }
        (None, Some(name)) => (name, false, args.path, connect(&args.connect)?),
        (None, None) => anyhow::bail!("name a function, or a server with --url"),
    };
    let config = BenchConfig {
        function,
        direct,
        mode: args.mode,
        requests: args.requests,
        duration,
        concurrency,
        threads: args.threads.unwrap_or_else(super::bench::default_threads),
        pacing: args.pacing,
        rate: args.rate,
        path,
        method,
        body: bytes::Bytes::from(args.data.unwrap_or_default()),
        json: args.json,
        plot: args.plot,
    };
    if config.mode == Mode::Curve {
        config.validate()?;
        if args.steps.is_empty() || args.steps.contains(&0) {
            anyhow::bail!("--steps takes percents of the peak above zero, e.g. 50,75,90,110,150");
        }
        let curve = super::bench::curve::run(&client, &config, &args.steps).await?;
        print!("{}", super::bench::curve::render(&curve));
        return Ok(());
    }
    let report = super::bench::run(&client, &config).await?;
    print!("{}", super::bench::render(&report));
    Ok(())
}

async fn logs(args: LogsArgs) -> anyhow::Result<()> {
    let client = connect(&args.connect)?;
    let mut query = client.scoped(&format!("/system/logs?name={}", args.name));
    match args.tail {
        // The API reads tail=0 as "every line" (OpenFaaS's spec): ask for
        // the lines written from now on instead.
        Some(0) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            let since = wisp_runner::store::logs::rfc3339(now.as_secs(), Some(now.subsec_millis()));
            query.push_str(&format!("&since={since}"));
        }
        Some(tail) => query.push_str(&format!("&tail={tail}")),
        None => {}
    }
    if args.follow {
        query.push_str("&follow=true");
    }
    let response = client
        .send(
            Method::GET,
            &query,
            HeaderMap::new(),
            wisp_runner::backend::empty_body(),
        )
        .await?;
    let status = response.status();
    let mut body = response.into_body();
    if !status.is_success() {
        let bytes = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        bail!("{status}: {}", String::from_utf8_lossy(&bytes).trim());
    }
    let mut pending = Vec::new();
    let mut out = std::io::stdout().lock();
    while let Some(frame) = body.frame().await {
        let frame = frame.context("reading the log stream")?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        pending.extend_from_slice(data);
        while let Some(nl) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=nl).collect();
            match serde_json::from_slice::<wisp_runner::store::logs::LogLine>(&line) {
                // What a function wrote reaches the terminal escaped.
                Ok(l) => writeln!(
                    out,
                    "{} {} {}: {}",
                    l.timestamp,
                    l.instance,
                    l.stream,
                    wisp_runner::store::logs::escape_controls(&l.text)
                )?,
                Err(_) => out.write_all(&line)?,
            }
            out.flush()?;
        }
    }
    Ok(())
}

async fn images(args: ConnectArgs) -> anyhow::Result<()> {
    let images = connect(&args)?.images().await?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<40} {:<12} {:<19} {:>10}  {:<20} COMMAND",
        "REPOSITORY", "TAG", "IMAGE ID", "SIZE", "FUNCTIONS"
    )?;
    for image in images {
        let id: String = image
            .digest
            .trim_start_matches("sha256:")
            .chars()
            .take(12)
            .collect();
        // One line per name, as `docker images` has it; `<none>` unnamed.
        let names: Vec<(String, String)> = if image.names.is_empty() {
            vec![("<none>".into(), "<none>".into())]
        } else {
            image
                .names
                .iter()
                .map(|n| match n.rsplit_once(':') {
                    Some((repo, tag)) if !tag.contains('/') => (repo.to_owned(), tag.to_owned()),
                    _ => (n.clone(), "<none>".into()),
                })
                .collect()
        };
        let functions = if image.functions.is_empty() {
            "-".to_owned()
        } else {
            image.functions.join(",")
        };
        let command = image
            .entrypoint
            .iter()
            .chain(&image.cmd)
            .cloned()
            .collect::<Vec<_>>()
            .join(" ");
        for (repository, tag) in &names {
            writeln!(
                out,
                "{repository:<40} {tag:<12} {id:<19} {:>10}  {functions:<20} {command}",
                human(image.size)
            )?;
        }
        for layer in image.layers.iter().rev() {
            let id: String = layer.diff_id.chars().take(19).collect();
            writeln!(out, "  layer {id:<17} {:>10}", human(layer.size))?;
        }
    }
    Ok(())
}

/// `wisp prune`: one line per artifact, image, layer and blob removed
/// (or, with `--dry-run`, that would be), then the space freed.
async fn prune(args: PruneArgs) -> anyhow::Result<()> {
    let report = connect(&args.connect)?.prune(args.dry_run).await?;
    let mut out = std::io::stdout().lock();
    if report.is_empty() {
        writeln!(out, "nothing to remove")?;
        return Ok(());
    }
    let (verb, freed) = if report.dry_run {
        ("would remove", "would free")
    } else {
        ("removed", "freed")
    };
    for (kind, entry) in report.entries() {
        writeln!(
            out,
            "{verb} {kind:<8} {} {:>10}",
            entry.digest,
            human(entry.bytes)
        )?;
    }
    writeln!(
        out,
        "{freed} {} ({} bytes)",
        human(report.bytes),
        report.bytes
    )?;
    Ok(())
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Whether an error came from the gateway being unreachable (for exit codes).
pub fn is_unreachable(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<ClientError>(),
        Some(ClientError::Unreachable { .. })
    )
}

/// The cluster `serve` joins, if `--etcd` names any endpoint.
fn cluster_config(args: &ServeArgs) -> anyhow::Result<Option<crate::cluster::ClusterConfig>> {
    let endpoints = args.etcd.clone();
    let name = args.cluster_name.clone();
    let advertise = args.advertise.clone();
    let endpoints: Vec<String> = endpoints
        .into_iter()
        .map(|e| e.trim().to_owned())
        .filter(|e| !e.is_empty())
        .collect();
    if endpoints.is_empty() {
        return Ok(None);
    }
    if args.token_file.is_none() {
        anyhow::bail!(
            "--etcd needs --token-file: every node of a cluster answers to the same token, and the nodes use it between themselves"
        );
    }
    let node = args
        .node_name
        .clone()
        .unwrap_or_else(crate::cluster::local_node_name);
    if !crate::namespaces::is_valid(&name) {
        anyhow::bail!(
            "--cluster-name {name:?} must be a DNS label: lowercase letters, digits and '-', at most 63"
        );
    }
    // Kubernetes node names (the DaemonSet's default) may be DNS names.
    let subdomain =
        !node.is_empty() && node.len() <= 253 && node.split('.').all(crate::namespaces::is_valid);
    if !subdomain {
        anyhow::bail!(
            "--node-name {node:?} must be a DNS name: labels of lowercase letters, digits and '-', joined by '.'"
        );
    }
    let lease_ttl = args.lease_ttl;
    if lease_ttl < std::time::Duration::from_secs(2) {
        anyhow::bail!("--lease-ttl must be at least 2s, not {lease_ttl:?}");
    }
    let advertise = advertise.unwrap_or_default();
    let scheme = advertise.starts_with("http://") || advertise.starts_with("https://");
    if !advertise.is_empty() && !scheme {
        anyhow::bail!("--advertise must be an http:// or https:// URL, not {advertise:?}");
    }
    Ok(Some(crate::cluster::ClusterConfig {
        endpoints,
        name,
        node,
        advertise: advertise.trim_end_matches('/').to_owned(),
        lease_ttl,
        ca: args.etcd_ca.clone(),
        cert: args.etcd_cert.clone(),
        key: args.etcd_key.clone(),
        user: args.etcd_user.clone().zip(args.etcd_password.clone()),
    }))
}
