//! The end-to-end harness: starts the real `wisp` binary on a free port with
//! a temporary data dir, talks to it over real HTTP, and stops it the way a
//! user or a crash would (SIGTERM, SIGKILL).
//!
//! The binary is `target/<profile>/wisp` next to the test executable (built
//! by `cargo build --workspace` / `cargo test --workspace`), or `$WISP_BIN`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
pub use wisp::api::FunctionDeployment;
pub use wisp::cli::client::{Answer, Client};

pub use wisp_function_artifacts as artifacts;

/// Path of the `wisp` binary under test.
pub fn wisp_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("WISP_BIN") {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/e2e-<hash> → target/<profile>/wisp
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("wisp"))
        .expect("target dir");
    assert!(
        bin.exists(),
        "{} does not exist: run `cargo build --workspace` first (or set WISP_BIN)",
        bin.display()
    );
    bin
}

/// A running `wisp serve`.
pub struct Wisp {
    child: Option<Child>,
    pub addr: String,
    pub data_dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
    pub client: Client,
    pub token: String,
}

/// How to start a server.
#[derive(Default)]
pub struct WispBuilder {
    data_dir: Option<PathBuf>,
    args: Vec<String>,
    run_as: Option<u32>,
}

impl WispBuilder {
    /// Serve from this data dir (kept after the server stops).
    pub fn data_dir(mut self, dir: &Path) -> Self {
        self.data_dir = Some(dir.to_owned());
        self
    }

    /// Runs the server as this uid (and gid), through util-linux's
    /// `setpriv`; the data dir is handed to that user.
    pub fn run_as(mut self, uid: u32) -> Self {
        self.run_as = Some(uid);
        self
    }

    /// Extra `wisp serve` arguments.
    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.to_owned());
        self
    }

    pub fn start(self) -> anyhow::Result<Wisp> {
        let (temp, data_dir) = match self.data_dir {
            Some(dir) => (None, dir),
            None => {
                let temp = tempfile::tempdir()?;
                let dir = temp.path().to_owned();
                (Some(temp), dir)
            }
        };
        std::fs::create_dir_all(&data_dir)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.join("server.log"))?;
        let mut command = match self.run_as {
            None => Command::new(wisp_bin()),
            Some(uid) => {
                std::os::unix::fs::chown(&data_dir, Some(uid), Some(uid))?;
                std::os::unix::fs::chown(data_dir.join("server.log"), Some(uid), Some(uid))?;
                let mut c = Command::new("setpriv");
                c.arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={uid}"))
                    .arg("--clear-groups")
                    .arg("--")
                    .arg(wisp_bin());
                c
            }
        };
        let mut child = command
            .arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(&data_dir)
            .args(&self.args)
            .env("WISP_LOG", "info,wisp=debug")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .context("spawning wisp serve")?;
        let stdout = child.stdout.take().context("stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let addr = loop {
            let Some(line) = lines.next() else {
                let status = child.wait()?;
                let log = std::fs::read_to_string(data_dir.join("server.log")).unwrap_or_default();
                bail!("wisp serve exited ({status}) before listening; log:\n{log}");
            };
            let line = line?;
            if let Some(addr) = line.strip_prefix("wisp: listening on ") {
                break addr.trim().to_owned();
            }
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let token = wisp::auth::read(&data_dir)?;
        let client = Client::new(&addr, Some(token.clone()));
        Ok(Wisp {
            child: Some(child),
            addr,
            data_dir,
            _temp: temp,
            client,
            token,
        })
    }
}

impl Wisp {
    pub fn builder() -> WispBuilder {
        WispBuilder::default()
    }

    /// A server with a fresh temporary data dir.
    pub fn start() -> Wisp {
        Wisp::builder().start().expect("start wisp")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("server.log")).unwrap_or_default()
    }

    /// Uploads `file` and deploys it as `name`, with `tweak` applied to the request.
    pub async fn deploy_with(
        &self,
        name: &str,
        file: &str,
        tweak: impl FnOnce(&mut FunctionDeployment),
    ) -> anyhow::Result<()> {
        let bytes = std::fs::read(file).with_context(|| format!("reading {file}"))?;
        let uploaded = self.client.upload_artifact(bytes).await?;
        let mut deployment = FunctionDeployment {
            service: name.to_owned(),
            image: uploaded.digest,
            ..FunctionDeployment::default()
        };
        tweak(&mut deployment);
        self.client.deploy(&deployment).await?;
        Ok(())
    }

    pub async fn deploy(&self, name: &str, file: &str) {
        self.deploy_with(name, file, |_| {}).await.expect("deploy");
    }

    /// The deployed functions' names, as the control API lists them.
    pub async fn function_names(&self) -> Vec<String> {
        let list = self.client.list().await.expect("list functions");
        list.into_iter().map(|f| f.name).collect()
    }

    /// Sends a request to a function and reads the whole answer.
    pub async fn invoke(&self, method: &str, path: &str, body: &str) -> Answer {
        self.client
            .call(
                method.parse().expect("method"),
                path,
                Default::default(),
                body.to_owned(),
            )
            .await
            .expect("request")
    }

    /// Sends a signal with kill(1).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits for the server to exit (up to `timeout`).
    pub fn wait(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let child = self.child.as_mut().context("already waited")?;
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                self.child = None;
                return Ok(status);
            }
            if std::time::Instant::now() > deadline {
                bail!("wisp did not exit within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Runs the `wisp` CLI against a gateway address nothing listens on.
    pub fn cli_unreachable(args: &[&str]) -> (bool, String, String) {
        let out = Command::new(wisp_bin())
            .args(args)
            .env("WISP_GATEWAY", "http://127.0.0.1:9")
            .env("WISP_TOKEN", "x")
            .output()
            .expect("run wisp");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Runs the `wisp` CLI against this server; returns (success, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(wisp_bin())
            .args(args)
            .env("WISP_GATEWAY", &self.addr)
            .env("WISP_DATA_DIR", &self.data_dir)
            .env_remove("WISP_TOKEN")
            .output()
            .expect("run wisp");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for Wisp {
    fn drop(&mut self) {
        self.kill();
    }
}
