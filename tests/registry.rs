//! A real OCI registry for the tests: Debian's `docker-registry`
//! (distribution 2.8) on a free loopback port with its storage in a
//! temporary directory, started once per test binary ([`TestRegistry::open`]
//! and, with htpasswd basic auth, [`TestRegistry::with_auth`]), and the
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
    _stdin: Mutex<ChildStdin>,
    _dir: tempfile::TempDir,
}

impl TestRegistry {
    /// The test binary's registry without auth.
    pub fn open() -> &'static TestRegistry {
        static REGISTRY: OnceLock<TestRegistry> = OnceLock::new();
        REGISTRY.get_or_init(|| TestRegistry::start(false).expect("start docker-registry"))
    }

    /// The test binary's registry with htpasswd basic auth.
    pub fn with_auth() -> &'static TestRegistry {
        static REGISTRY: OnceLock<TestRegistry> = OnceLock::new();
        REGISTRY.get_or_init(|| TestRegistry::start(true).expect("start docker-registry"))
    }

    fn start(auth: bool) -> anyhow::Result<TestRegistry> {
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
        if auth {
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
            auth,
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
