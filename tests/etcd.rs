//! A real 3-member etcd cluster for the cluster tests: Debian's
//! `etcd-server` on free loopback ports, its data on a tmpfs (`/dev/shm`),
//! started once per test binary ([`TestEtcd::shared`]; tests keep apart by
//! cluster name) or on its own for a test that stops members
//! ([`TestEtcd::start`]).
//!
//! Each member runs under a shell that kills it when the test binary's end
//! of its stdin closes, i.e. when the test binary exits, however it exits.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// One member: its ports and the shell that runs it.
struct Member {
    name: String,
    client: u16,
    peer: u16,
    data: PathBuf,
    /// Dropping it (closing the shell's stdin) stops the member.
    stdin: Option<ChildStdin>,
    /// The shell, which exits once the member has.
    shell: Option<std::process::Child>,
}

/// A running etcd cluster.
pub struct TestEtcd {
    members: Mutex<Vec<Member>>,
    initial: String,
    dir: tempfile::TempDir,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl TestEtcd {
    /// The cluster every test of this binary may share.
    pub fn shared() -> &'static TestEtcd {
        static ETCD: OnceLock<TestEtcd> = OnceLock::new();
        ETCD.get_or_init(|| TestEtcd::start().expect("start etcd"))
    }

    /// A cluster of three members of its own.
    pub fn start() -> anyhow::Result<TestEtcd> {
        let shm = std::path::Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            tempfile::tempdir_in(shm)?
        } else {
            tempfile::tempdir()?
        };
        let mut members = Vec::new();
        for i in 1..=3 {
            members.push(Member {
                name: format!("m{i}"),
                client: free_port()?,
                peer: free_port()?,
                data: dir.path().join(format!("m{i}")),
                stdin: None,
                shell: None,
            });
        }
        let initial = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",");
        let etcd = TestEtcd {
            members: Mutex::new(members),
            initial,
            dir,
        };
        for i in 0..3 {
            etcd.start_member(i)?;
        }
        etcd.wait_healthy(Duration::from_secs(20))?;
        Ok(etcd)
    }

    /// The client URLs, comma-separated (what `--etcd` takes).
    pub fn endpoints(&self) -> String {
        self.members
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|m| format!("http://127.0.0.1:{}", m.client))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Every key under `prefix` and its value, as etcd holds them (read
    /// through etcd's JSON gateway on the first member).
    pub fn range(&self, prefix: &str) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let port = self
            .members
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .first()
            .map(|m| m.client)
            .ok_or_else(|| anyhow::anyhow!("no etcd member"))?;
        // The prefix's range end: its last byte plus one.
        let mut end = prefix.as_bytes().to_vec();
        if let Some(last) = end.last_mut() {
            *last += 1;
        }
        let body = serde_json::json!({"key": b64.encode(prefix), "range_end": b64.encode(&end)});
        let out = Command::new("curl")
            .args(["-fsS", "-m", "5", "-X", "POST", "-d"])
            .arg(body.to_string())
            .arg(format!("http://127.0.0.1:{port}/v3/kv/range"))
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "etcd range: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let answer: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let mut found = Vec::new();
        for kv in answer["kvs"].as_array().into_iter().flatten() {
            let key = b64.decode(kv["key"].as_str().unwrap_or_default())?;
            let value = b64.decode(kv["value"].as_str().unwrap_or_default())?;
            found.push((String::from_utf8_lossy(&key).into_owned(), value));
        }
        Ok(found)
    }

    /// Starts member `i` (0-based), again after [`Self::stop_member`].
    pub fn start_member(&self, i: usize) -> anyhow::Result<()> {
        let mut members = self
            .members
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let m = members.get_mut(i).context("no such member")?;
        if m.stdin.is_some() {
            return Ok(());
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{}.log", m.name)))?;
        let mut child = Command::new("sh")
            .args([
                "-c",
                r#"etcd "$@" & e=$!; read _; kill -9 $e; wait $e"#,
                "sh",
            ])
            .args([
                "--name",
                &m.name,
                "--data-dir",
                &m.data.display().to_string(),
                "--listen-client-urls",
                &format!("http://127.0.0.1:{}", m.client),
                "--advertise-client-urls",
                &format!("http://127.0.0.1:{}", m.client),
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{}", m.peer),
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{}", m.peer),
                "--initial-cluster",
                &self.initial,
                "--initial-cluster-token",
                "wisp-test",
                "--initial-cluster-state",
                "new",
                // Quick elections on loopback.
                "--heartbeat-interval",
                "50",
                "--election-timeout",
                "500",
                "--log-level",
                "warn",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .context("starting etcd (Debian package etcd-server)")?;
        m.stdin = Some(child.stdin.take().context("stdin")?);
        // Ends with its stdin (also when the test binary exits).
        m.shell = Some(child);
        Ok(())
    }

    /// Stops member `i` as a crash would (SIGKILL), and waits until it has
    /// exited.
    pub fn stop_member(&self, i: usize) {
        let mut members = self
            .members
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(m) = members.get_mut(i)
            && let Some(mut stdin) = m.stdin.take()
        {
            let _ = stdin.write_all(b"\n");
            drop(stdin);
            // Until it has exited (and let go of its data dir's lock).
            if let Some(mut shell) = m.shell.take() {
                let _ = shell.wait();
            }
        }
    }

    /// Waits until every running member answers `/health` with a leader.
    pub fn wait_healthy(&self, timeout: Duration) -> anyhow::Result<()> {
        let ports: Vec<u16> = self
            .members
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .filter(|m| m.stdin.is_some())
            .map(|m| m.client)
            .collect();
        let deadline = Instant::now() + timeout;
        for port in ports {
            loop {
                let healthy = Command::new("curl")
                    .args(["-fsS", "-m", "1"])
                    .arg(format!("http://127.0.0.1:{port}/health"))
                    .output()
                    .is_ok_and(|o| {
                        o.status.success()
                            && String::from_utf8_lossy(&o.stdout).contains("\"health\":\"true\"")
                    });
                if healthy {
                    break;
                }
                if Instant::now() > deadline {
                    // The end of each member's log.
                    let logs: String = (1..=3)
                        .map(|i| {
                            let log =
                                std::fs::read_to_string(self.dir.path().join(format!("m{i}.log")))
                                    .unwrap_or_default();
                            let lines: Vec<&str> = log.lines().collect();
                            let tail = lines[lines.len().saturating_sub(15)..].join("\n");
                            format!("--- m{i} ---\n{tail}\n")
                        })
                        .collect();
                    bail!("etcd on port {port} is not healthy; logs:\n{logs}");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }
}
