//! The `wisp` command line's clap definitions: the global flags, one
//! `*Args` struct per subcommand, and the flag groups they share
//! ([`ConnectArgs`], and the API's [`ScalingFields`]). Every flag can also
//! be set by an environment variable, shown in `--help` with its default.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use wisp_runner::spec;

use crate::api::ScalingFields;

#[derive(Debug, Parser)]
#[command(
    name = "wisp",
    version,
    about = "wisp: a Function-as-a-Service runtime for WebAssembly components and OCI images"
)]
pub struct Cli {
    /// Log filter (tracing's env-filter syntax, e.g. `info`, `wisp=debug`).
    #[arg(long, env = "WISP_LOG", default_value = "info", global = true)]
    pub log: String,
    /// Log format.
    #[arg(long, env = "WISP_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"], global = true)]
    pub log_format: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway.
    Serve(Box<ServeArgs>),
    /// Upload a function's artifact and deploy it (replacing a function of the same name).
    Deploy(Box<DeployArgs>),
    /// Call a function and print its response body.
    Invoke(InvokeArgs),
    /// List deployed functions.
    Ls(ConnectArgs),
    /// Remove a function.
    Rm(RmArgs),
    /// Load a function and measure it: warm, open-loop rate, cold starts, or a burst.
    Bench(Box<BenchArgs>),
    /// Print a function's output (stdout and stderr of its handlers).
    Logs(LogsArgs),
    /// Change a function's scaling settings (live).
    Scale(ScaleArgs),
    /// Pull an image (or a wasm component) from a registry into the server's store.
    Pull(PullArgs),
    /// Give a stored image another local name.
    Tag(TagArgs),
    /// Remove an image's name, and the image once it has none and no function runs it.
    Rmi(RmiArgs),
    /// Save credentials for a registry on the server (checked against the registry first).
    Login(LoginArgs),
    /// Forget the server's saved credentials for a registry.
    Logout(LogoutArgs),
    /// List container images, their layers and sizes, and the functions using them.
    Images(ConnectArgs),
    /// Remove the artifacts and images (and layers) no function uses, once past the server's --prune-grace.
    Prune(PruneArgs),
    /// List a function's kept revisions (every deploy is one).
    History(RmArgs),
    /// Deploy an earlier revision of a function again (the one before the current, or --to N).
    Rollback(RollbackArgs),
    /// Manage secrets: values functions read as files in /var/openfaas/secrets.
    #[command(subcommand)]
    Secret(SecretCommand),
    /// Manage namespaces (the admin's): functions and secrets live in one.
    #[command(subcommand)]
    Namespace(NamespaceCommand),
    /// Manage namespace tokens (the admin's): each manages one namespace's functions and secrets.
    #[command(subcommand)]
    Token(TokenCommand),
    /// List the cluster's nodes with their load (a node on its own lists itself).
    Nodes(ConnectArgs),
}

#[derive(Debug, Subcommand)]
pub enum NamespaceCommand {
    /// Make a namespace.
    Create(NamespaceArgs),
    /// List namespaces (a namespace token sees its own).
    Ls(ConnectArgs),
    /// Remove an empty namespace, and revoke its tokens.
    Rm(NamespaceArgs),
}

#[derive(Debug, Args)]
pub struct NamespaceArgs {
    /// Namespace name (lower-case letters, digits and '-'; at most 63).
    pub name: String,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a token for one namespace and print it (it is shown only this once).
    Create(TokenCreateArgs),
    /// List namespace tokens (their ids, never the tokens).
    Ls(ConnectArgs),
    /// Revoke a namespace token.
    Rm(TokenRmArgs),
}

#[derive(Debug, Args)]
pub struct TokenCreateArgs {
    /// Who or what the token is for.
    #[arg(long, default_value = "")]
    pub description: String,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Debug, Args)]
pub struct TokenRmArgs {
    /// The token's id (`wisp token ls`).
    pub id: String,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// Function name.
    pub name: String,
    /// The revision to go back to (`wisp history` lists them) [default: the one before the current].
    #[arg(long)]
    pub to: Option<u64>,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Create a secret (its value from --from-file, --from-literal, or standard input).
    Create(SecretValueArgs),
    /// Replace a secret's value; the functions using it roll to new instances that read it.
    Update(SecretValueArgs),
    /// List secrets (names only: values are never shown).
    Ls(ConnectArgs),
    /// Remove a secret.
    Rm(SecretRmArgs),
}

#[derive(Debug, Args)]
pub struct SecretValueArgs {
    /// Secret name (the file name functions read it from).
    pub name: String,
    /// Read the value from this file (binary values are kept as they are).
    #[arg(long, conflicts_with = "from_literal")]
    pub from_file: Option<PathBuf>,
    /// The value itself (visible in the process list: prefer --from-file or standard input).
    #[arg(long)]
    pub from_literal: Option<String>,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Debug, Args)]
pub struct SecretRmArgs {
    /// Secret name.
    pub name: String,
    /// Remove it even though functions use it (their running instances keep it; their next deploy fails until it exists again).
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "WISP_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Where the registry, artifacts and token live [default: /var/lib/wisp as root, ./.wisp otherwise].
    #[arg(long, env = "WISP_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// How long in-flight requests may take to finish at shutdown.
    #[arg(long, env = "WISP_SHUTDOWN_GRACE", default_value = "30s", value_parser = duration)]
    pub shutdown_grace: Duration,
    /// Time a client has to send a request's head before it is
    /// disconnected; a new connection, its first request.
    #[arg(long, env = "WISP_HEADER_READ_TIMEOUT", default_value = "30s", value_parser = duration)]
    pub header_read_timeout: Duration,
    /// Time a keep-alive (or h2) connection may stay open with no request
    /// in flight.
    #[arg(long, env = "WISP_IDLE_TIMEOUT", default_value = "75s", value_parser = duration)]
    pub idle_timeout: Duration,
    /// Client connections open at once; when full, the connection idle the
    /// longest makes way for a new one [default: half the file-descriptor limit].
    #[arg(long, env = "WISP_MAX_CONNECTIONS", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: Option<u32>,
    /// Largest artifact that may be uploaded.
    #[arg(long, env = "WISP_MAX_ARTIFACT_SIZE", default_value = "512Mi", value_parser = bytes)]
    pub max_artifact_size: u64,
    /// WebAssembly instances that may run at once, across all functions.
    #[arg(long, env = "WISP_MAX_WASM_INSTANCES", default_value_t = 256)]
    pub max_wasm_instances: u32,
    /// Container sandboxes (namespaces, cgroup, init) kept made ahead of
    /// demand, so a cold start only mounts the image and starts the handler;
    /// as many again are kept with the image started last mounted too.
    #[arg(long, env = "WISP_PREMADE_SANDBOXES", default_value_t = wisp_runner::container::DEFAULT_PREMADE)]
    pub premade_sandboxes: usize,
    /// Give a sandbox the network namespace of one that exited, once it is
    /// found empty (no socket, no TIME_WAIT; its configuration cannot
    /// change), instead of making a new one: cheaper container starts.
    /// Loopback traffic counters carry over; `false` makes a fresh
    /// namespace for every sandbox (see docs/architecture.md).
    #[arg(long, env = "WISP_REUSE_NETNS", default_value_t = true, action = clap::ArgAction::Set)]
    pub reuse_netns: bool,
    /// Give a sandbox the cgroup of one that exited, once no process is
    /// left in it, with its limits lifted until its function's are set,
    /// instead of making a new one: cheaper container starts. Its counters
    /// (and up to 16 MiB of page cache charged to it) carry over; `false`
    /// makes a fresh cgroup for every sandbox (see docs/architecture.md).
    #[arg(long, env = "WISP_REUSE_CGROUPS", default_value_t = true, action = clap::ArgAction::Set)]
    pub reuse_cgroups: bool,
    /// Turn on the kernel's cgroup2 `favordynmods` option at start-up (kept
    /// until the hierarchy is remounted without it): a sandbox joining its
    /// cgroup then never waits ~10 ms for an RCU grace period, which
    /// otherwise sets the p99 of back-to-back cold starts; forks and exits
    /// host-wide pay a memory barrier more. `false` leaves the host's
    /// setting alone (see docs/architecture.md).
    #[arg(long, env = "WISP_CGROUP_FAVORDYNMODS", default_value_t = true, action = clap::ArgAction::Set)]
    pub cgroup_favordynmods: bool,
    /// Most bytes one image import may write: the archive's files copied
    /// out plus its layers unpacked (an image past it is refused with 413).
    #[arg(long, env = "WISP_MAX_IMAGE_SIZE", default_value = "4Gi", value_parser = bytes)]
    pub max_image_size: u64,
    /// Most entries (files, directories, links) in one image, its archive
    /// and layers together.
    #[arg(long, env = "WISP_MAX_IMAGE_ENTRIES", default_value_t = wisp_runner::image::limits::DEFAULT_MAX_IMAGE_ENTRIES)]
    pub max_image_entries: u64,
    /// How often unused artifacts and images are removed in the background (0 turns it off).
    #[arg(long, env = "WISP_PRUNE_INTERVAL", default_value = "1h", value_parser = duration)]
    pub prune_interval: Duration,
    /// How old an unused artifact or image must be before a prune removes
    /// it, so that an upload about to be deployed is kept.
    #[arg(long, env = "WISP_PRUNE_GRACE", default_value = "10m", value_parser = duration)]
    pub prune_grace: Duration,
    /// A registry (`host:port`) every deploy may reach over plain HTTP
    /// instead of TLS (repeatable; comma-separated in the variable).
    #[arg(
        long = "insecure-registry",
        env = "WISP_INSECURE_REGISTRIES",
        value_delimiter = ',',
        value_name = "HOST:PORT"
    )]
    pub insecure_registries: Vec<String>,
    /// Pull a registry's images from a mirror, `REGISTRY=URL`
    /// (`docker.io=http://127.0.0.1:5000`; an `http://` mirror is reached
    /// over plain HTTP), for hosts that reach no public registry or that
    /// use a pull-through cache (repeatable; comma-separated in the variable).
    #[arg(long = "registry-mirror", env = "WISP_REGISTRY_MIRRORS", value_delimiter = ',', value_name = "REGISTRY=URL", value_parser = mirror)]
    pub registry_mirrors: Vec<(String, String)>,
    /// How long a deploy by reference waits for its download before it
    /// answers 202 and goes on in the background (the function shows as
    /// pulling, and its requests wait for it).
    #[arg(long, env = "WISP_DEPLOY_WAIT", default_value = "2s", value_parser = duration)]
    pub deploy_wait: Duration,
    /// Share of a function's capacity (instances × concurrency) its
    /// asynchronous calls may use at once; the rest stays free for
    /// synchronous requests (at least one call runs).
    #[arg(long, env = "WISP_ASYNC_SHARE", default_value_t = crate::calls::DEFAULT_SHARE, value_parser = share)]
    pub async_share: f64,
    /// Asynchronous calls that may wait per function; more are refused with 429.
    #[arg(long, env = "WISP_ASYNC_QUEUE_MAX", default_value_t = crate::calls::DEFAULT_MAX_QUEUED)]
    pub async_queue_max: usize,
    /// Bytes of request bodies that asynchronous calls waiting per function
    /// may hold (they are kept in the data dir); more are refused with 429.
    #[arg(long, env = "WISP_ASYNC_QUEUE_MAX_BYTES", default_value = "1Gi", value_parser = bytes)]
    pub async_queue_max_bytes: u64,
    /// Let asynchronous calls' callbacks reach loopback, link-local and this
    /// host's own addresses (refused by default: no requests into the host).
    #[arg(long, env = "WISP_ALLOW_LOCAL_CALLBACKS")]
    pub allow_local_callbacks: bool,
    /// Revisions kept per function for `wisp rollback`, the current one
    /// included; their artifacts and images are kept from prunes.
    #[arg(long, env = "WISP_REVISION_HISTORY", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub revision_history: u32,
    /// The AWS region Lambda functions are told they run in
    /// (`AWS_REGION`), unless a function's env names another.
    #[arg(long, env = "WISP_LAMBDA_REGION", default_value = wisp_runner::protocol::lambda::DEFAULT_REGION)]
    pub lambda_region: String,
    /// Read the control API's token from this file instead of making one
    /// (every node of a cluster needs the same; a Kubernetes Secret, say).
    #[arg(long, env = "WISP_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Join a cluster: the etcd endpoints it shares (comma-separated URLs,
    /// e.g. http://h1:2379,http://h2:2379). Without it the node is on its own.
    #[arg(long, env = "WISP_ETCD", value_delimiter = ',')]
    pub etcd: Vec<String>,
    /// The cluster's name: its keys live under /wisp/<name>/ in etcd.
    #[arg(long, env = "WISP_CLUSTER_NAME", default_value = "default")]
    pub cluster_name: String,
    /// This node's name in the cluster [default: the host name].
    #[arg(long, env = "WISP_NODE_NAME")]
    pub node_name: Option<String>,
    /// The URL the other nodes reach this one at [default: http://<listen address>].
    #[arg(long, env = "WISP_ADVERTISE")]
    pub advertise: Option<String>,
    /// How long after its last renewal a dead node drops out of the cluster.
    #[arg(long, env = "WISP_LEASE_TTL", default_value = "10s", value_parser = duration)]
    pub lease_ttl: Duration,
    /// A CA certificate (PEM) to trust for etcd over TLS.
    #[arg(long, env = "WISP_ETCD_CA")]
    pub etcd_ca: Option<PathBuf>,
    /// A client certificate (PEM) for etcd, with --etcd-key.
    #[arg(long, env = "WISP_ETCD_CERT", requires = "etcd_key")]
    pub etcd_cert: Option<PathBuf>,
    /// The client certificate's key (PEM).
    #[arg(long, env = "WISP_ETCD_KEY", requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,
    /// An etcd user, with --etcd-password (etcd's own authentication).
    #[arg(long, env = "WISP_ETCD_USER", requires = "etcd_password")]
    pub etcd_user: Option<String>,
    /// The etcd user's password.
    #[arg(
        long,
        env = "WISP_ETCD_PASSWORD",
        hide_env_values = true,
        requires = "etcd_user"
    )]
    pub etcd_password: Option<String>,
}

fn mirror(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((registry, url)) if !registry.is_empty() && !url.is_empty() => {
            Ok((registry.to_owned(), url.to_owned()))
        }
        _ => Err(format!(
            "expected REGISTRY=URL, e.g. docker.io=http://127.0.0.1:5000, not {text:?}"
        )),
    }
}

#[derive(Debug, Args)]
pub struct ConnectArgs {
    /// Base URL of the gateway.
    #[arg(long, env = "WISP_GATEWAY", default_value = "http://127.0.0.1:8080")]
    pub gateway: String,
    /// Control API token [default: read from <data dir>/token].
    #[arg(long, env = "WISP_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Data dir of a local gateway, to read its token from [default: /var/lib/wisp as root, ./.wisp otherwise].
    #[arg(long, env = "WISP_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The namespace of the functions and secrets to act on [default: openfaas-fn, or a namespace token's own].
    #[arg(long, short = 'n', env = "WISP_NAMESPACE")]
    pub namespace: Option<String>,
}

#[derive(Debug, Args)]
pub struct DeployArgs {
    /// Function name (lower-case letters, digits, '-', '_', '.'; at most 63).
    pub name: String,
    /// The artifact: a wasi:http component or WASI preview1 CGI module
    /// (.wasm), or an OCI image (a `docker save` / OCI archive tar, or an
    /// OCI image layout directory).
    #[arg(required_unless_present_any = ["image", "rootfs", "binary"])]
    pub file: Option<PathBuf>,
    /// An OCI image: a registry reference the server pulls
    /// (`[registry[:port]/]repo[:tag][@sha256:…]`, `nginx` meaning
    /// `docker.io/library/nginx:latest`), or a file: a `docker save` /
    /// `podman save` / OCI archive tar, or an OCI layout directory. A path
    /// that exists wins.
    #[arg(long, conflicts_with_all = ["file", "rootfs", "binary"])]
    pub image: Option<String>,
    /// When the server asks the registry for --image REF: `always`,
    /// `missing` or `never` [default: always for a tag, missing for a digest].
    #[arg(long, value_parser = ["always", "missing", "never"])]
    pub pull: Option<String>,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// A root filesystem directory to run as a one-layer image (needs a command: `-- CMD…`).
    #[arg(long, conflicts_with_all = ["file", "image", "binary"])]
    pub rootfs: Option<PathBuf>,
    /// A static executable to run as a one-layer image.
    #[arg(long, conflicts_with_all = ["file", "image", "rootfs"])]
    pub binary: Option<PathBuf>,
    /// One word of the command replacing the image's Entrypoint and Cmd;
    /// repeat per word (`--cmd /bin/sh --cmd -c --cmd 'echo hi'`), or give
    /// the whole command after `--`.
    #[arg(
        long = "cmd",
        value_name = "WORD",
        num_args = 1,
        allow_hyphen_values = true
    )]
    pub cmd: Vec<String>,
    /// The command replacing the image's Entrypoint and Cmd, after `--`
    /// (`wisp deploy app --rootfs DIR -- /bin/app --serve`).
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
    /// Containers: how wisp reaches the handler, `http` (it listens on $PORT) or `cgi`.
    #[arg(long)]
    pub protocol: Option<String>,
    /// Containers: the port an `http` handler listens on [default: the image's only exposed port, else 8080].
    #[arg(long)]
    pub port: Option<u16>,
    /// Containers: CPU cap, in cores (`0.5`) or millicores (`500m`) [default: none].
    #[arg(long)]
    pub cpu: Option<String>,
    #[command(flatten)]
    pub scaling: ScalingFields,
    /// wasi:http components: requests one wasm instance serves before a
    /// fresh one is made (like `wasmtime serve --max-instance-reuse-count`) [default: 1].
    #[arg(long)]
    pub instance_reuse: Option<u32>,
    /// Environment variable for the function, KEY=VALUE (repeatable).
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// A secret the function reads as /var/openfaas/secrets/NAME (repeatable; `wisp secret create` makes one).
    #[arg(long = "secret", value_name = "NAME")]
    pub secrets: Vec<String>,
    /// Request deadline [default: 30s].
    #[arg(long, env = "WISP_DEPLOY_TIMEOUT")]
    pub timeout: Option<String>,
    /// Memory cap of one instance [default: 128Mi].
    #[arg(long, env = "WISP_DEPLOY_MEMORY")]
    pub memory: Option<String>,
    /// Largest request body [default: 6Mi].
    #[arg(long, env = "WISP_DEPLOY_MAX_BODY")]
    pub max_body: Option<String>,
    /// Host the function may call over HTTP, or `*` (repeatable) [default: none].
    #[arg(long = "allow-outbound", value_name = "HOST")]
    pub allow_outbound: Vec<String>,
    /// Label, KEY=VALUE (repeatable).
    #[arg(long = "label", short = 'l', value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// How the server reaches a registry for one pull or deploy.
#[derive(Debug, Clone, Default, Args)]
pub struct RegistryArgs {
    /// A registry (`host:port`) to reach over plain HTTP instead of TLS (repeatable).
    #[arg(long = "insecure-registry", value_name = "HOST:PORT")]
    pub insecure_registries: Vec<String>,
    /// Credentials for the registry, `user:password` (sent to the server
    /// for this pull only; never stored there).
    #[arg(
        long,
        env = "WISP_REGISTRY_CREDS",
        hide_env_values = true,
        value_name = "USER:PASSWORD"
    )]
    pub creds: Option<String>,
}

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// The registry, `host[:port]` (`docker.io` for Docker Hub).
    pub registry: String,
    /// User name.
    #[arg(long, short = 'u')]
    pub username: String,
    /// Password (visible in the process list: prefer --password-stdin).
    #[arg(
        long,
        short = 'p',
        env = "WISP_REGISTRY_PASSWORD",
        hide_env_values = true,
        conflicts_with = "password_stdin"
    )]
    pub password: Option<String>,
    /// Read the password from standard input.
    #[arg(long)]
    pub password_stdin: bool,
    /// Reach the registry over plain HTTP to check the login.
    #[arg(long)]
    pub insecure: bool,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Debug, Args)]
pub struct TagArgs {
    /// A local name (`registry/repo:tag`, short forms as docker reads them) or a manifest digest.
    pub source: String,
    /// The new name.
    pub target: String,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Debug, Args)]
pub struct RmiArgs {
    /// A local name or a manifest digest.
    pub image: String,
    /// Even while functions run it: its names go, the image stays until no function runs it.
    #[arg(long, short = 'f')]
    pub force: bool,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Debug, Args)]
pub struct LogoutArgs {
    /// The registry, `host[:port]`.
    pub registry: String,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Debug, Args)]
pub struct PullArgs {
    /// The image: `[registry[:port]/]repo[:tag][@sha256:…]`.
    pub reference: String,
    #[command(flatten)]
    pub registry: RegistryArgs,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Function name.
    #[arg(required_unless_present = "url", conflicts_with = "url")]
    pub name: Option<String>,
    /// Load this HTTP URL on any server instead of a function (warm, rate and curve modes), e.g. an anchor to compare with, measured by the same generator. Sends no token.
    #[arg(long, value_name = "URL", conflicts_with = "path")]
    pub url: Option<String>,
    /// warm: closed loop; rate: open loop at --rate; cold: every request
    /// finds zero instances (copies of the function); burst: concurrent
    /// first requests; curve: the closed-loop peak, then rate at --steps
    /// percent of it (--duration each, default 5s).
    #[arg(long, value_enum, default_value = "warm")]
    pub mode: super::bench::Mode,
    /// Requests to measure [default: cold 20, burst --concurrency; warm and rate run for --duration].
    #[arg(long)]
    pub requests: Option<u64>,
    /// How long warm and rate run, e.g. `10s` [default: 10s unless --requests].
    #[arg(long, value_parser = duration)]
    pub duration: Option<Duration>,
    /// Requests at once; in rate mode the most in flight, each on a kept-alive connection [default: warm 16, burst 100, rate 256, cold 1].
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Event loops sending the requests, each a thread with its own connections and its share of --concurrency [default: half the CPUs, at least 1].
    #[arg(long)]
    pub threads: Option<usize>,
    /// How rate mode waits for each request's due time: group (a timer per event loop; each request goes at its due time or, with an earlier one, up to 0.5 ms ahead and counts its latency from when it went), exact (each at its due time, to the microsecond; a timer interrupt per request) or tick (tokio's 1-ms timer: requests due within a millisecond leave together, and each latency counts that wait).
    #[arg(long, value_enum, default_value = "group")]
    pub pacing: super::bench::Pacing,
    /// Requests per second (rate mode).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Offered loads of curve mode, percent of the closed-loop peak.
    #[arg(long, value_delimiter = ',', default_value = "50,75,90,110,150")]
    pub steps: Vec<u32>,
    /// Path below the function.
    #[arg(long, default_value = "/")]
    pub path: String,
    /// HTTP method.
    #[arg(long, short = 'X', default_value = "GET")]
    pub method: String,
    /// Request body (literal text).
    #[arg(long, short = 'd')]
    pub data: Option<String>,
    /// Write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Draw the latency distribution (CDF and histogram) to this SVG file;
    /// in curve mode, latency and goodput against the offered load.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Function name.
    pub name: String,
    /// Keep printing new lines as they are written.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Only the last N lines kept (0: none, only what `--follow` brings).
    #[arg(long)]
    pub tail: Option<usize>,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Debug, Args)]
pub struct ScaleArgs {
    /// Function name.
    pub name: String,
    #[command(flatten)]
    pub scaling: ScalingFields,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Debug, Args)]
pub struct InvokeArgs {
    /// Function name.
    pub name: String,
    /// Path below the function, e.g. `/items/1?x=2` [default: /].
    #[arg(long, default_value = "/")]
    pub path: String,
    /// HTTP method [default: POST with --data, GET without].
    #[arg(long, short = 'X')]
    pub method: Option<String>,
    /// Request body: literal text, `@FILE`, or `-` for stdin.
    #[arg(long, short = 'd')]
    pub data: Option<String>,
    /// Request header, `Name: value` (repeatable).
    #[arg(long = "header", short = 'H', value_name = "NAME: VALUE")]
    pub headers: Vec<String>,
    /// Print the status line and response headers to stderr.
    #[arg(long, short = 'i')]
    pub include: bool,
    /// Queue the call and return at once (`/async-function/`); prints its call id.
    #[arg(long = "async")]
    pub asynchronous: bool,
    /// With --async: where the function's response is POSTed when the call is done.
    #[arg(long, requires = "asynchronous", value_name = "URL")]
    pub callback: Option<String>,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Only list what would be removed.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    /// Function name.
    pub name: String,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

fn share(s: &str) -> Result<f64, String> {
    s.parse::<f64>()
        .ok()
        .filter(|f| *f > 0.0 && *f <= 1.0)
        .ok_or_else(|| format!("{s:?}: expected a fraction above 0 and at most 1, such as 0.5"))
}

fn duration(s: &str) -> Result<Duration, String> {
    spec::parse_duration("duration", s).map_err(|e| e.to_string())
}

fn bytes(s: &str) -> Result<u64, String> {
    spec::parse_bytes("size", s).map_err(|e| e.to_string())
}
