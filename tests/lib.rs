//! The end-to-end harness: starts the real `wisp` binary on a free port with
//! a temporary data dir, talks to it over real HTTP, and stops it the way a
//! user or a crash would (SIGTERM, SIGKILL). Around it, what the tests
//! share: the CLI's output as a `CliOutput`, `eventually` for conditions
//! reached in the background, and a busybox root filesystem for container
//! functions.
//!
//! The binary is `target/<profile>/wisp` next to the test executable (built
//! by `cargo build --workspace` / `cargo test --workspace`), or `$WISP_BIN`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use http::Method;
use tokio::task::JoinHandle;
pub use wisp::api::FunctionDeployment;
pub use wisp::cli::client::{Answer, Client};

pub use wisp_function_artifacts as artifacts;

pub mod etcd;
pub mod registry;

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
    binary: Option<PathBuf>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    run_as: Option<u32>,
    fd_limit: Option<u32>,
    cgroup: Option<PathBuf>,
    cwd: Option<PathBuf>,
}

impl WispBuilder {
    /// Serve from this data dir (kept after the server stops).
    pub fn data_dir(mut self, dir: &Path) -> Self {
        self.data_dir = Some(dir.to_owned());
        self
    }

    /// Runs the server in `dir`, naming its data dir relative to it (the
    /// data dir must be below `dir`).
    pub fn in_dir(mut self, dir: &Path) -> Self {
        self.cwd = Some(dir.to_owned());
        self
    }

    /// Runs the server as this uid (and gid), through util-linux's
    /// `setpriv`; the data dir is handed to that user.
    pub fn run_as(mut self, uid: u32) -> Self {
        self.run_as = Some(uid);
        self
    }

    /// Starts the server in the cgroup v2 directory `dir`: through `sh`,
    /// which moves itself there and then runs the server.
    pub fn in_cgroup(mut self, dir: &Path) -> Self {
        self.cgroup = Some(dir.to_owned());
        self
    }

    /// Runs this binary instead of [`wisp_bin`] (a renamed copy, say).
    pub fn binary(mut self, path: &Path) -> Self {
        self.binary = Some(path.to_owned());
        self
    }

    /// Runs the server with this `RLIMIT_NOFILE` (soft and hard), through
    /// util-linux's `prlimit`.
    pub fn fd_limit(mut self, limit: u32) -> Self {
        self.fd_limit = Some(limit);
        self
    }

    /// Extra `wisp serve` arguments.
    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.to_owned());
        self
    }

    /// An environment variable for `wisp serve` (each flag has one).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
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
        let binary = self.binary.unwrap_or_else(wisp_bin);
        // The command line, outermost wrapper first.
        let mut words: Vec<std::ffi::OsString> = Vec::new();
        if let Some(limit) = self.fd_limit {
            words.extend([
                "prlimit".into(),
                format!("--nofile={limit}").into(),
                "--".into(),
            ]);
        }
        if let Some(cgroup) = &self.cgroup {
            if self.run_as.is_some() {
                bail!("run_as and in_cgroup do not combine");
            }
            // The server starts in `cgroup`: a shell moves itself there,
            // then becomes the server.
            words.extend([
                "sh".into(),
                "-c".into(),
                r#"echo $$ > "$1/cgroup.procs" && shift && exec "$@""#.into(),
                "sh".into(),
                cgroup.clone().into(),
            ]);
        }
        if let Some(uid) = self.run_as {
            std::os::unix::fs::chown(&data_dir, Some(uid), Some(uid))?;
            std::os::unix::fs::chown(data_dir.join("server.log"), Some(uid), Some(uid))?;
            words.extend([
                "setpriv".into(),
                format!("--reuid={uid}").into(),
                format!("--regid={uid}").into(),
                "--clear-groups".into(),
                "--".into(),
            ]);
        }
        words.push(binary.into());
        let mut command = Command::new(&words[0]);
        command.args(&words[1..]);
        let mut named = data_dir.clone();
        if let Some(cwd) = &self.cwd {
            named = data_dir.strip_prefix(cwd)?.to_owned();
            command.current_dir(cwd);
        }
        let mut child = command
            .arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(&named)
            .args(&self.args)
            // The host's cgroup2 option is one test's to change
            // (`the_server_turns_on_cgroup2_favordynmods_unless_asked_not_to`).
            .env("WISP_CGROUP_FAVORDYNMODS", "false")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
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

    /// Uploads `file` to the artifact store; returns its digest.
    pub async fn upload(&self, file: &str) -> anyhow::Result<String> {
        let bytes = std::fs::read(file).with_context(|| format!("reading {file}"))?;
        Ok(self.client.upload_artifact(bytes).await?.digest)
    }

    /// Uploads `file` and deploys it as `name`, with `tweak` applied to the request.
    pub async fn deploy_with(
        &self,
        name: &str,
        file: &str,
        tweak: impl FnOnce(&mut FunctionDeployment),
    ) -> anyhow::Result<()> {
        let mut deployment = FunctionDeployment {
            service: name.to_owned(),
            image: self.upload(file).await?,
            ..FunctionDeployment::default()
        };
        tweak(&mut deployment);
        self.client.deploy(&deployment).await?;
        Ok(())
    }

    pub async fn deploy(&self, name: &str, file: &str) {
        self.deploy_with(name, file, |_| {}).await.expect("deploy");
    }

    /// Deploys the root filesystem `rootfs` as `name` with
    /// `wisp deploy NAME --rootfs ROOTFS ARGS…`; panics if the CLI fails.
    #[track_caller]
    pub fn deploy_rootfs(&self, name: &str, rootfs: &Path, args: &[&str]) {
        let rootfs = rootfs.to_str().expect("a UTF-8 rootfs path");
        let mut cli = vec!["deploy", name, "--rootfs", rootfs];
        cli.extend(args);
        let out = self.cli(&cli);
        assert!(
            out.success,
            "wisp deploy {name}: {}{}",
            out.stdout, out.stderr
        );
    }

    /// Deploys `name`, a CGI function running the shell `script` (`sh -c`)
    /// in the busybox root filesystem `rootfs`, once per request.
    #[track_caller]
    pub fn deploy_cgi_script(&self, name: &str, rootfs: &Path, script: &str) {
        let args = ["--protocol", "cgi", "--", "/bin/sh", "-c", script];
        self.deploy_rootfs(name, rootfs, &args);
    }

    /// Deploys `name`, busybox httpd serving the root filesystem `rootfs`'s
    /// `/www` on port 8080 (`--protocol http`), with the shell `script` as its
    /// CGI program `/www/cgi-bin/<script_name>`; `args` are further
    /// `wisp deploy` arguments.
    #[track_caller]
    pub fn deploy_httpd_script(
        &self,
        name: &str,
        rootfs: &Path,
        script_name: &str,
        script: &str,
        args: &[&str],
    ) {
        let cgi_bin = rootfs.join("www/cgi-bin");
        std::fs::create_dir_all(&cgi_bin).expect("making /www/cgi-bin");
        let path = cgi_bin.join(script_name);
        std::fs::write(&path, format!("#!/bin/sh\n{script}\n")).expect("writing the script");
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("making the script executable");
        let mut cli = vec!["--protocol", "http", "--port", "8080"];
        cli.extend(args);
        cli.extend([
            "--",
            "/bin/busybox",
            "httpd",
            "-f",
            "-p",
            "8080",
            "-h",
            "/www",
        ]);
        self.deploy_rootfs(name, rootfs, &cli);
    }

    /// Deploys a busybox CGI function `name` that sleeps `seconds` (as
    /// sleep(1) reads them), then answers `slow`; `args` are further
    /// `wisp deploy` arguments, such as its scaling.
    #[track_caller]
    pub fn deploy_slow(&self, name: &str, seconds: &str, args: &[&str]) {
        let rootfs = busybox_rootfs();
        let script = format!(
            "#!/bin/sh\nsleep {seconds}\nprintf 'Content-Type: text/plain\\r\\n\\r\\nslow\\n'\n"
        );
        std::fs::write(rootfs.path().join("slow.sh"), script).expect("writing slow.sh");
        let mut cli = vec!["--protocol", "cgi"];
        cli.extend(args);
        cli.extend(["--", "/bin/sh", "/slow.sh"]);
        self.deploy_rootfs(name, rootfs.path(), &cli);
    }

    /// The deployed functions' names, as the control API lists them.
    pub async fn function_names(&self) -> Vec<String> {
        let list = self.client.list().await.expect("list functions");
        list.into_iter().map(|f| f.name).collect()
    }

    /// How many instances of function `name` run now.
    pub async fn replicas(&self, name: &str) -> u64 {
        let status = self.client.function(name).await.expect("function status");
        status.replicas
    }

    /// The text of `GET /metrics`.
    pub async fn metrics(&self) -> String {
        self.invoke("GET", "/metrics", "").await.text()
    }

    /// Sends a request (to a function, or a `/system/` route with the token)
    /// and reads the whole answer.
    pub async fn invoke(&self, method: &str, path: &str, body: &str) -> Answer {
        call(&self.client, parse_method(method), path, body.to_owned()).await
    }

    /// Sends `GET path` and returns the response once its head arrives, its
    /// body to be read as it streams.
    pub async fn stream(&self, path: &str) -> http::Response<hyper::body::Incoming> {
        self.client
            .send(
                Method::GET,
                path,
                Default::default(),
                wisp_runner::backend::empty_body(),
            )
            .await
            .expect("request")
    }

    /// Sends the request of [`Wisp::invoke`] from a task of its own (with a
    /// clone of the client, so the task does not borrow the server): the test
    /// goes on while it runs, and awaits the handle for the answer.
    pub fn spawn_invoke(&self, method: &str, path: &str, body: &str) -> JoinHandle<Answer> {
        let client = self.client.clone();
        let (method, path, body) = (parse_method(method), path.to_owned(), body.to_owned());
        tokio::spawn(async move { call(&client, method, &path, body).await })
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
    pub fn cli_unreachable(args: &[&str]) -> CliOutput {
        let out = Command::new(wisp_bin())
            .args(args)
            .env("WISP_GATEWAY", "http://127.0.0.1:9")
            .env("WISP_TOKEN", "x")
            .output()
            .expect("run wisp");
        out.into()
    }

    /// Runs the `wisp` CLI against this server (its token read from the data dir).
    pub fn cli(&self, args: &[&str]) -> CliOutput {
        self.cli_command(args).output().expect("run wisp").into()
    }

    /// The `wisp` CLI command of [`Self::cli`], to run elsewhere (a
    /// blocking task, while the test does something else).
    pub fn cli_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(wisp_bin());
        command
            .args(args)
            .env("WISP_GATEWAY", &self.addr)
            .env("WISP_DATA_DIR", &self.data_dir)
            .env_remove("WISP_TOKEN");
        command
    }
}

impl Drop for Wisp {
    fn drop(&mut self) {
        self.kill();
        // A failing test shows what the server said.
        if std::thread::panicking() {
            eprintln!(
                "--- server log ---\n{}--- end of server log ---",
                self.log()
            );
        }
    }
}

fn parse_method(method: &str) -> Method {
    method.parse().expect("method")
}

/// The request of [`Wisp::invoke`].
async fn call(client: &Client, method: Method, path: &str, body: String) -> Answer {
    client
        .call(method, path, Default::default(), body)
        .await
        .expect("request")
}

/// What one run of the `wisp` CLI printed, and whether it exited with success.
#[derive(Debug)]
pub struct CliOutput {
    /// The exit status was success.
    pub success: bool,
    /// Standard output, decoded lossily.
    pub stdout: String,
    /// Standard error, decoded lossily.
    pub stderr: String,
}

impl CliOutput {
    /// Panics (showing both streams) unless the run succeeded; returns its stdout.
    #[track_caller]
    pub fn expect_success(self) -> String {
        assert!(
            self.success,
            "the wisp CLI failed:\n{}{}",
            self.stdout, self.stderr
        );
        self.stdout
    }

    /// Panics (showing both streams) if the run succeeded; returns its stderr.
    #[track_caller]
    pub fn expect_failure(self) -> String {
        assert!(
            !self.success,
            "the wisp CLI succeeded:\n{}{}",
            self.stdout, self.stderr
        );
        self.stderr
    }
}

impl From<std::process::Output> for CliOutput {
    fn from(output: std::process::Output) -> CliOutput {
        CliOutput {
            success: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

/// Waits until `check` holds, asking again every 25 ms; panics with "timed
/// out waiting for {what}" once `timeout` has passed. A plain condition is an
/// `async ||` closure too.
pub async fn eventually(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// An OCI image (an OCI archive) whose one layer is `rootfs`, running
/// `entrypoint` as the image's `User` `user`: what `wisp deploy --rootfs`
/// makes, plus a user, which the CLI has no flag for.
pub fn rootfs_image_as(rootfs: &Path, entrypoint: &[&str], user: &str) -> Vec<u8> {
    use wisp_oci_writer::{Blob, DEFAULT_PATH, Layer, Layout, media_type};
    let architecture = std::env::consts::ARCH
        .replace("x86_64", "amd64")
        .replace("aarch64", "arm64");
    let layer = Layer::from_dir(rootfs).expect("packing the rootfs");
    let container = serde_json::json!({
        "Entrypoint": entrypoint,
        "Env": [DEFAULT_PATH],
        "User": user,
    });
    let config = wisp_oci_writer::config(&architecture, container, &[layer.diff_id()]);
    let config = Blob::json(media_type::CONFIG, &config);
    let layer = layer.into_blob();
    let manifest = wisp_oci_writer::manifest(&config, &[&layer]);
    Layout::new(&[manifest.descriptor()], vec![config, manifest, layer]).to_archive()
}

/// A root filesystem with a static busybox, its applets, a file to
/// overwrite and the CGI probe `/probe.sh` (also as
/// `/www/cgi-bin/probe`, for busybox httpd).
pub fn busybox_rootfs() -> tempfile::TempDir {
    make_busybox_rootfs().expect("a busybox root filesystem")
}

fn make_busybox_rootfs() -> anyhow::Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    let root = dir.path();
    for sub in ["bin", "etc", "tmp"] {
        std::fs::create_dir_all(root.join(sub))?;
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).context(
        "copying /bin/busybox: a static busybox is needed (apt-get install busybox-static)",
    )?;
    for applet in [
        "sh", "ls", "grep", "cat", "hostname", "wget", "awk", "sleep", "id", "echo", "pidof",
        "kill", "printf", "true", "nc", "httpd",
    ] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))?;
    }
    std::fs::write(root.join("etc/motd"), "original\n")?;
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/:/bin/sh\n",
    )?;
    std::fs::write(root.join("probe.sh"), PROBE)?;
    // The probe as busybox httpd's CGI script, for `http` handlers.
    let cgi_bin = root.join("www/cgi-bin");
    std::fs::create_dir_all(&cgi_bin)?;
    std::fs::write(cgi_bin.join("probe"), "#!/bin/sh\nexec /bin/sh /probe.sh\n")?;
    std::fs::set_permissions(
        cgi_bin.join("probe"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    Ok(dir)
}

/// The CGI probe: `?pids`, `?caps`, `?net`, … report what the sandbox looks
/// like from inside; `?hog`, `?spin` and `?forkbomb` push at its limits;
/// `?fail` exits with status 3 before it answers.
const PROBE: &str = r#"#!/bin/sh
# The hog fails before it answers: the caller sees why (a 502).
[ "$QUERY_STRING" = hog ] && exec awk 'BEGIN { s = "0123456789abcdef"; while (1) s = s s }'
[ "$QUERY_STRING" = fail ] && { echo "failing on purpose" >&2; exit 3; }
printf 'Content-Type: text/plain\r\n\r\n'
case "$QUERY_STRING" in
pids) for p in /proc/[0-9]*; do echo "${p#/proc/}"; done ;;
caps) grep -E '^(CapEff|CapPrm|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status ;;
initcaps) grep -E '^CapBnd:' /proc/1/status ;;
hostname) hostname ;;
policy) awk '{print $41}' /proc/self/stat ;;
id) id -u; id -g ;;
net)
  if wget -q -T 2 -O /dev/null "http://127.0.0.1:$HOST_PORT/healthz" 2>/dev/null; then echo loopback:connected; else echo loopback:refused; fi
  if wget -q -T 2 -O /dev/null "http://$HOST_IP:$HOST_PORT/healthz" 2>/dev/null; then echo host:connected; else echo host:refused; fi ;;
sockets) cat /proc/net/tcp /proc/net/tcp6 ;;
litter)
  # Listeners left running for the sandbox's life (both die with it).
  nc -l -p 9000 </dev/null >/dev/null 2>&1 &
  httpd -p 127.0.0.1:9001 -h /www
  sleep 0.2
  cat /proc/net/tcp /proc/net/tcp6 ;;
write) echo pwned > /etc/motd && cat /etc/motd ;;
read) cat /etc/motd ;;
spin) awk 'BEGIN { for (i = 0; i < 300000; i++) s += i; print "spun" }' ;;
forkbomb)
  # The bomb runs in a child shell: ash gives up when fork fails.
  sh -c 'i=0; while [ $i -lt 400 ]; do sleep 20 >/dev/null 2>&1 & i=$((i+1)); done' 2>/dev/null
  n=0; for p in /proc/[0-9]*; do n=$((n+1)); done
  echo "processes: $n"
  kill -9 -1 2>/dev/null ;;
*) echo "unknown probe $QUERY_STRING" ;;
esac
"#;
