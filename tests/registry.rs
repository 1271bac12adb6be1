//! A real OCI registry for the tests: Debian's `docker-registry`
//! (distribution 2.8) on a free loopback port with its storage in a
//! temporary directory, started once per test binary ([`TestRegistry::open`];
//! with htpasswd basic auth, [`TestRegistry::with_auth`]; with the bearer
//! flow of a token server, [`TestRegistry::with_token`]), and the
//! ways the tests put things in it: `skopeo copy` of the images the build
//! makes, and blobs and manifests pushed over the distribution API.
//!
//! The registry runs under a shell that kills it when the test binary's end
//! of its stdin closes, i.e. when the test binary exits, however it exits.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// The user and password of [`TestRegistry::with_auth`].
pub const USER: &str = "wisp-test";
pub const PASSWORD: &str = "s3cret-Passw0rd";

/// A running registry.
pub struct TestRegistry {
    /// `127.0.0.1:PORT`.
    pub host: String,
    /// Its storage root (blobs under `docker/registry/v2/blobs`).
    pub storage: PathBuf,
    /// Whether it asks for [`USER`] and [`PASSWORD`].
    pub auth: bool,
    /// Its token server's count of tokens issued (bearer mode).
    tokens: Option<&'static std::sync::atomic::AtomicUsize>,
    _stdin: Mutex<ChildStdin>,
    _dir: tempfile::TempDir,
}

/// How a [`TestRegistry`] asks for credentials.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Auth {
    None,
    Basic,
    /// `WWW-Authenticate: Bearer` to a token server of the test's, which
    /// gives a signed token for [`USER`] and [`PASSWORD`].
    Token,
}

impl TestRegistry {
    /// The test binary's registry without auth.
    pub fn open() -> &'static TestRegistry {
        static REGISTRY: OnceLock<TestRegistry> = OnceLock::new();
        REGISTRY.get_or_init(|| TestRegistry::start(Auth::None).expect("start docker-registry"))
    }

    /// The test binary's registry with htpasswd basic auth.
    pub fn with_auth() -> &'static TestRegistry {
        static REGISTRY: OnceLock<TestRegistry> = OnceLock::new();
        REGISTRY.get_or_init(|| TestRegistry::start(Auth::Basic).expect("start docker-registry"))
    }

    /// The test binary's registry that sends clients to a token server
    /// (the bearer flow), which wants [`USER`] and [`PASSWORD`].
    pub fn with_token() -> &'static TestRegistry {
        static REGISTRY: OnceLock<TestRegistry> = OnceLock::new();
        REGISTRY.get_or_init(|| TestRegistry::start(Auth::Token).expect("start docker-registry"))
    }

    /// How many tokens its token server has issued.
    pub fn tokens_issued(&self) -> usize {
        self.tokens
            .map_or(0, |t| t.load(std::sync::atomic::Ordering::Relaxed))
    }

    fn start(mode: Auth) -> anyhow::Result<TestRegistry> {
        let dir = tempfile::tempdir()?;
        let storage = dir.path().join("storage");
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let host = format!("127.0.0.1:{port}");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {host}\n",
            storage.display()
        );
        let mut tokens = None;
        if mode == Auth::Token {
            let server = TokenServer::start(dir.path())?;
            config.push_str(&format!(
                "auth:\n  token:\n    realm: http://{}/token\n    service: {TOKEN_SERVICE}\n    issuer: {TOKEN_ISSUER}\n    rootcertbundle: {}\n",
                server.host,
                server.cert.display()
            ));
            tokens = Some(server.issued);
        }
        if mode == Auth::Basic {
            let htpasswd = dir.path().join("htpasswd");
            let out = Command::new("htpasswd")
                .args(["-Bbn", USER, PASSWORD])
                .output()
                .context("running htpasswd (apache2-utils)")?;
            if !out.status.success() {
                bail!("htpasswd failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            std::fs::write(&htpasswd, &out.stdout)?;
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: wisp-test\n    path: {}\n",
                htpasswd.display()
            ));
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config)?;
        let log = std::fs::File::create(dir.path().join("registry.log"))?;
        let mut child = Command::new("sh")
            .args([
                "-c",
                r#"docker-registry serve "$1" & r=$!; read _; kill $r"#,
                "sh",
            ])
            .arg(&config_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .context("starting docker-registry (Debian package docker-registry)")?;
        let stdin = child.stdin.take().context("stdin")?;
        // Reaped by nobody: it lives as long as the test binary.
        std::mem::forget(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(&host).is_err() {
            if Instant::now() > deadline {
                let log =
                    std::fs::read_to_string(dir.path().join("registry.log")).unwrap_or_default();
                bail!("docker-registry did not listen on {host}; its log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(TestRegistry {
            host,
            storage,
            auth: mode != Auth::None,
            tokens,
            _stdin: Mutex::new(stdin),
            _dir: dir,
        })
    }

    /// `HOST:PORT/name` (name may carry `:tag` or `@digest`).
    pub fn reference(&self, name: &str) -> String {
        format!("{}/{name}", self.host)
    }

    /// Pushes a `docker save` archive (or an OCI layout directory) as
    /// `name:tag`, with skopeo.
    pub fn push(&self, image: &Path, name_tag: &str) {
        let source = if image.is_dir() {
            format!("oci:{}", image.display())
        } else {
            format!("docker-archive:{}", image.display())
        };
        self.copy(&source, name_tag);
    }

    /// Pushes skopeo's `source` (`oci-archive:PATH`, …) as `name:tag`.
    pub fn copy(&self, source: &str, name_tag: &str) {
        let mut command = Command::new("skopeo");
        command.args([
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            source,
            &format!("docker://{}", self.reference(name_tag)),
        ]);
        if self.auth {
            command.args(["--dest-creds", &format!("{USER}:{PASSWORD}")]);
        }
        let out = command.output().expect("running skopeo");
        assert!(
            out.status.success(),
            "skopeo copy {source} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Uploads `bytes` as a blob of `repo`; returns its digest.
    pub async fn push_blob(&self, repo: &str, bytes: &[u8]) -> String {
        use sha2::Digest as _;
        let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)));
        let started = self
            .request(
                http::Method::POST,
                &format!("http://{}/v2/{repo}/blobs/uploads/", self.host),
                None,
                Bytes::new(),
            )
            .await;
        assert_eq!(started.0, http::StatusCode::ACCEPTED, "{}", started.2);
        let location = started.1.expect("Location of the upload");
        let location = if location.starts_with('/') {
            format!("http://{}{location}", self.host)
        } else {
            location
        };
        let separator = if location.contains('?') { '&' } else { '?' };
        let done = self
            .request(
                http::Method::PUT,
                &format!("{location}{separator}digest={digest}"),
                Some("application/octet-stream"),
                Bytes::copy_from_slice(bytes),
            )
            .await;
        assert_eq!(done.0, http::StatusCode::CREATED, "{}", done.2);
        digest
    }

    /// Puts a manifest (or index) under `repo:tag`; returns its digest.
    pub async fn push_manifest(
        &self,
        repo: &str,
        tag: &str,
        media_type: &str,
        manifest: &serde_json::Value,
    ) -> String {
        use sha2::Digest as _;
        let bytes = serde_json::to_vec(manifest).expect("manifest JSON");
        let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&bytes)));
        let put = self
            .request(
                http::Method::PUT,
                &format!("http://{}/v2/{repo}/manifests/{tag}", self.host),
                Some(media_type),
                Bytes::from(bytes),
            )
            .await;
        assert_eq!(put.0, http::StatusCode::CREATED, "{}", put.2);
        digest
    }

    /// The manifest `repo:tag` names, as JSON.
    pub async fn manifest(&self, repo: &str, tag: &str) -> serde_json::Value {
        let (status, _, body) = self
            .request(
                http::Method::GET,
                &format!("http://{}/v2/{repo}/manifests/{tag}", self.host),
                None,
                Bytes::new(),
            )
            .await;
        assert_eq!(status, http::StatusCode::OK, "{body}");
        serde_json::from_str(&body).expect("manifest JSON")
    }

    /// Overwrites the first byte of the stored blob `digest`, so the
    /// registry serves content that does not match its name.
    pub fn tamper(&self, digest: &str) {
        let hex = digest.trim_start_matches("sha256:");
        let path = self
            .storage
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data");
        let mut bytes = std::fs::read(&path).expect("the stored blob");
        bytes[0] ^= 0xff;
        let mut file = std::fs::File::create(&path).expect("rewrite the blob");
        file.write_all(&bytes).expect("rewrite the blob");
    }

    async fn request(
        &self,
        method: http::Method,
        url: &str,
        content_type: Option<&str>,
        body: Bytes,
    ) -> (http::StatusCode, Option<String>, String) {
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let mut request = http::Request::builder().method(method).uri(url);
        if let Some(content_type) = content_type {
            request = request.header(http::header::CONTENT_TYPE, content_type);
        }
        request = request.header(
            http::header::ACCEPT,
            "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json",
        );
        if self.auth {
            use base64::Engine as _;
            let creds =
                base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
            request = request.header(http::header::AUTHORIZATION, format!("Basic {creds}"));
        }
        let request = request.body(Full::new(body)).expect("request");
        let response = client.request(request).await.expect("registry request");
        let status = response.status();
        let location = response
            .headers()
            .get(http::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = response
            .into_body()
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
            .unwrap_or_default();
        (status, location, body)
    }
}

/// A TCP proxy in front of a registry that a test can hold up and cut:
/// the registry's answers pass up to an allowance of bytes, then wait
/// until the test opens the gate; [`GatedProxy::cut`] drops every
/// connection and refuses new ones (a registry that went away mid-pull).
pub struct GatedProxy {
    /// `127.0.0.1:PORT`.
    pub host: String,
    gate: std::sync::Arc<tokio::sync::watch::Sender<Gate>>,
}

#[derive(Debug, Clone, Copy)]
struct Gate {
    /// Bytes the registry's answers may still carry (`None`: any).
    allowance: Option<u64>,
    cut: bool,
}

impl GatedProxy {
    /// A proxy to `upstream` (`host:port`), open; its tasks run on the
    /// calling test's runtime.
    pub async fn start(upstream: &str) -> GatedProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let host = listener.local_addr().expect("proxy address").to_string();
        let gate = std::sync::Arc::new(tokio::sync::watch::Sender::new(Gate {
            allowance: None,
            cut: false,
        }));
        let upstream = upstream.to_owned();
        let accepting = gate.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if accepting.borrow().cut {
                    continue;
                }
                let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                    continue;
                };
                tokio::spawn(relay(client, server, accepting.clone()));
            }
        });
        GatedProxy { host, gate }
    }

    /// `HOST:PORT/name` through the proxy.
    pub fn reference(&self, name: &str) -> String {
        format!("{}/{name}", self.host)
    }

    /// From now on, let `bytes` more through, then hold (a cut proxy
    /// takes connections again).
    pub fn limit(&self, bytes: u64) {
        self.gate.send_modify(|g| {
            g.allowance = Some(bytes);
            g.cut = false;
        });
    }

    /// Let everything through.
    pub fn open(&self) {
        self.gate.send_modify(|g| {
            g.allowance = None;
            g.cut = false;
        });
    }

    /// Drop every connection, and refuse new ones until [`Self::open`].
    pub fn cut(&self) {
        self.gate.send_modify(|g| g.cut = true);
    }
}

/// Copies the client's bytes to the registry as they come, and the
/// registry's back within the gate's allowance.
async fn relay(
    client: tokio::net::TcpStream,
    server: tokio::net::TcpStream,
    gate: std::sync::Arc<tokio::sync::watch::Sender<Gate>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let mut watch = gate.subscribe();
    let upload = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
    });
    let mut buf = vec![0u8; 16 << 10];
    'relay: loop {
        let n = tokio::select! {
            read = server_read.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
            _ = watch.wait_for(|g| g.cut) => break,
        };
        let mut sent = 0;
        while sent < n {
            let mut take = 0;
            gate.send_if_modified(|g| {
                take = match g.allowance {
                    _ if g.cut => 0,
                    None => n - sent,
                    Some(left) => {
                        let take = left.min((n - sent) as u64);
                        g.allowance = Some(left - take);
                        take as usize
                    }
                };
                take > 0 && g.allowance.is_some()
            });
            if take == 0 {
                let Ok(g) = watch
                    .wait_for(|g| g.cut || g.allowance != Some(0))
                    .await
                    .map(|g| *g)
                else {
                    break 'relay;
                };
                if g.cut {
                    break 'relay;
                }
                continue;
            }
            if client_write
                .write_all(&buf[sent..sent + take])
                .await
                .is_err()
            {
                break 'relay;
            }
            sent += take;
        }
    }
    upload.abort();
}

const TOKEN_SERVICE: &str = "wisp-test-registry";
const TOKEN_ISSUER: &str = "wisp-test-token-server";

/// The token server of [`TestRegistry::with_token`]: `GET /token` with
/// [`USER`] and [`PASSWORD`] (basic auth) gets a JWT for the scopes asked,
/// signed RS256 by a key whose self-signed certificate the registry
/// trusts (sent in the token's `x5c` header); anything else gets 401. It
/// serves one connection at a time on a thread of its own.
struct TokenServer {
    host: String,
    cert: PathBuf,
    issued: &'static std::sync::atomic::AtomicUsize,
}

impl TokenServer {
    fn start(dir: &Path) -> anyhow::Result<TokenServer> {
        let key = dir.join("token-key.pem");
        let cert = dir.join("token-cert.pem");
        let out = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args(["-subj", "/CN=wisp-test-token-server", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .context("running openssl (Debian package openssl)")?;
        if !out.status.success() {
            bail!(
                "openssl req failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let der = Command::new("openssl")
            .args(["x509", "-outform", "der", "-in"])
            .arg(&cert)
            .output()?;
        if !der.status.success() {
            bail!(
                "openssl x509 failed: {}",
                String::from_utf8_lossy(&der.stderr)
            );
        }
        use base64::Engine as _;
        let x5c = base64::engine::general_purpose::STANDARD.encode(&der.stdout);
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let host = listener.local_addr()?.to_string();
        let issued: &'static std::sync::atomic::AtomicUsize =
            Box::leak(Box::new(std::sync::atomic::AtomicUsize::new(0)));
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let _ = answer_token_request(stream, &key, &x5c, issued);
            }
        });
        Ok(TokenServer { host, cert, issued })
    }
}

fn answer_token_request(
    mut stream: std::net::TcpStream,
    key: &Path,
    x5c: &str,
    issued: &std::sync::atomic::AtomicUsize,
) -> anyhow::Result<()> {
    use base64::Engine as _;
    use std::io::{BufRead, BufReader};
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut authorized = false;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("authorization")
        {
            let expected =
                base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
            authorized = value.trim() == format!("Basic {expected}");
        }
    }
    let target = request_line.split_whitespace().nth(1).unwrap_or("");
    let query = target.split_once('?').map_or("", |(_, q)| q);
    let scopes: Vec<String> = query
        .split('&')
        .filter_map(|pair| pair.strip_prefix("scope="))
        .map(percent_decode)
        .collect();
    if !authorized {
        let body = "{\"errors\":[{\"code\":\"UNAUTHORIZED\"}]}";
        write!(
            stream,
            "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?;
        return Ok(());
    }
    // `repository:NAME:pull,push` (a name has no colon in these tests).
    let access: Vec<serde_json::Value> = scopes
        .iter()
        .flat_map(|scope| scope.split(' '))
        .filter_map(|scope| {
            let mut parts = scope.splitn(3, ':');
            let (kind, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
            Some(serde_json::json!({
                "type": kind,
                "name": name,
                "actions": actions.split(',').collect::<Vec<_>>(),
            }))
        })
        .collect();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let n = issued.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let header = serde_json::json!({ "typ": "JWT", "alg": "RS256", "x5c": [x5c] });
    let claims = serde_json::json!({
        "iss": TOKEN_ISSUER,
        "sub": USER,
        "aud": TOKEN_SERVICE,
        "exp": now + 300,
        "nbf": now - 10,
        "iat": now,
        "jti": format!("wisp-test-{n}"),
        "access": access,
    });
    let url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let signing_input = format!(
        "{}.{}",
        url.encode(header.to_string()),
        url.encode(claims.to_string())
    );
    let mut openssl = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    openssl
        .stdin
        .take()
        .context("openssl stdin")?
        .write_all(signing_input.as_bytes())?;
    let signature = openssl.wait_with_output()?;
    if !signature.status.success() {
        bail!("openssl dgst failed");
    }
    let token = format!("{signing_input}.{}", url.encode(&signature.stdout));
    let body =
        serde_json::json!({ "token": token, "access_token": token, "expires_in": 300 }).to_string();
    write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    Ok(())
}

/// `%XX` and `+` decoded.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
