//! Container functions, end to end: images imported from a `docker save`
//! tar and an OCI layout, the `http` and `cgi` protocols, and the sandbox's
//! isolation proven from inside it by a busybox probe. These need root
//! (CI runs as root) and a static busybox (`scripts/setup.sh` installs it).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::StatusCode;
use wisp_e2e::{Wisp, artifacts, busybox_rootfs, eventually};

/// The host's first non-loopback IPv4 address, if it has one.
fn host_ip() -> Option<String> {
    let out = std::process::Command::new("hostname")
        .arg("-I")
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .find(|a| a.contains('.') && !a.starts_with("127."))
        .map(str::to_owned)
}

/// Deploys the busybox probe as the CGI function `name` through the CLI's
/// `--rootfs`, with extra CLI arguments.
fn deploy_probe(wisp: &Wisp, name: &str, rootfs: &Path, extra: &[&str]) {
    let port = wisp.addr.rsplit(':').next().unwrap().to_owned();
    let host_ip = host_ip().unwrap_or_else(|| "10.255.255.1".into());
    let host_port = format!("HOST_PORT={port}");
    let host_ip = format!("HOST_IP={host_ip}");
    let mut args = vec!["--protocol", "cgi", "--env", &host_port, "--env", &host_ip];
    args.extend(extra);
    args.extend(["--cmd", "/bin/sh", "/probe.sh"]);
    wisp.deploy_rootfs(name, rootfs, &args);
}

async fn probe(wisp: &Wisp, name: &str, check: &str) -> (StatusCode, String) {
    let answer = wisp
        .invoke("GET", &format!("/function/{name}/?{check}"), "")
        .await;
    (answer.status, answer.text())
}

/// The sandbox cgroups of the server with `pid`, by name.
fn sandbox_cgroups(pid: u32) -> BTreeSet<String> {
    sandbox_dirs(pid, "memory")
        .iter()
        .filter_map(|d| d.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .collect()
}

/// The directories of the server with `pid`'s sandbox cgroups that hold
/// `controller`'s files: below this process's own cgroup (the server runs
/// in it too), in the unified hierarchy on cgroup v2 or in the
/// controller's own on v1.
fn sandbox_dirs(pid: u32, controller: &str) -> Vec<PathBuf> {
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let mut parents: Vec<PathBuf> = Vec::new();
    for line in own.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next(), parts.next(), parts.next());
        let (Some(controllers), Some(path)) = (controllers, path) else {
            continue;
        };
        let path = path.trim_start_matches('/');
        if controllers.split(',').any(|c| c == controller) {
            parents.push(
                Path::new("/sys/fs/cgroup")
                    .join(controller)
                    .join(path)
                    .join("wisp"),
            );
        } else if controllers.is_empty() {
            parents.push(Path::new("/sys/fs/cgroup").join(path).join("wisp"));
        }
    }
    // `sandbox-<pid>.<start time>-<n>`: the server's pid and start time.
    let tag = format!("sandbox-{pid}.");
    parents
        .iter()
        .filter_map(|p| std::fs::read_dir(p).ok())
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .filter(|e| e.file_name().to_string_lossy().starts_with(&tag))
        .map(|e| e.path())
        .collect()
}

fn mounts() -> BTreeSet<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .map(|l| l.split(' ').skip(4).take(1).collect::<String>())
        .collect()
}

#[tokio::test]
async fn ping_runs_from_a_docker_archive_and_an_oci_layout() {
    let wisp = Wisp::start();
    wisp.deploy("ping", artifacts::PING_DOCKER_ARCHIVE).await;
    let out = wisp
        .cli(&["deploy", "ping-oci", "--image", artifacts::PING_OCI_LAYOUT])
        .expect_success();
    assert!(out.contains("container"), "{out}");
    // A static binary becomes a one-layer image.
    wisp.cli(&["deploy", "ping-bin", "--binary", artifacts::PING_BIN])
        .expect_success();
    for name in ["ping", "ping-oci", "ping-bin"] {
        let first = wisp
            .invoke("GET", &format!("/function/{name}/ping"), "")
            .await;
        assert_eq!(first.status, StatusCode::OK, "{}", first.text());
        assert_eq!(first.text(), "pong");
        let timing = first.headers["server-timing"].to_str().unwrap().to_owned();
        assert!(timing.starts_with("cold"), "{timing}");
        let echo = wisp
            .invoke(
                "POST",
                &format!("/function/{name}/echo?name=wisp"),
                "payload",
            )
            .await;
        assert_eq!(echo.status, StatusCode::OK);
        let text = echo.text();
        assert!(text.contains("Hello, wisp!"), "{text}");
        assert!(text.contains("body: payload"), "{text}");
        let warm = wisp
            .invoke("GET", &format!("/function/{name}/ping"), "")
            .await;
        assert_eq!(warm.headers["server-timing"], "warm");
    }
    // The image's ExposedPorts and Entrypoint were honoured, and the
    // handler's stderr reached the server log.
    assert!(wisp.log().contains("ping: listening on"), "{}", wisp.log());
}

/// Issue 11, finding 7: a function's output forged server log lines and
/// reached the operator's terminal raw (`ESC ] 0;…`, `ESC [2J`). Control
/// characters are escaped in the server log and in `wisp logs`.
#[tokio::test]
async fn function_output_is_escaped_for_the_log_and_the_terminal() {
    let wisp = Wisp::start();
    let rootfs = busybox_rootfs();
    wisp.deploy_cgi_script(
        "noisy",
        rootfs.path(),
        "printf 'title\\033]0;pwned\\007 clear\\033[2J\\nFORGED-LINE level=INFO\\n' >&2; exit 1",
    );
    let answer = wisp.invoke("GET", "/function/noisy/", "").await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY, "{}", answer.text());
    let log = wisp.log();
    assert!(log.contains("pwned"), "the output is logged: {log}");
    // (The log has tracing's own colour codes: look for the function's.)
    assert!(
        !log.contains("\u{1b}]0;") && !log.contains("\u{1b}[2J"),
        "no escape sequence of the function's in the server log"
    );
    assert!(
        !log.lines().any(|l| l.starts_with("FORGED-LINE")),
        "no forged line in the server log: {log}"
    );
    let shown = wisp.cli(&["logs", "noisy"]).expect_success();
    assert!(
        shown.contains("pwned") && shown.contains("FORGED-LINE"),
        "{shown}"
    );
    assert!(
        !shown.contains('\u{1b}') && !shown.contains('\u{7}'),
        "{shown:?}"
    );
}

/// Issue 11, finding 15: a starting server decided which sandboxes were
/// leftovers by their owner's pid and process name (`wisp`), so it killed
/// the sandboxes of a live server whose binary has another name (and kept
/// those of a dead one whose pid a `wisp` CLI reused). Owners are now a pid
/// and its start time.
#[tokio::test]
async fn a_starting_server_leaves_a_live_servers_sandboxes_alone() {
    let bin = tempfile::tempdir().unwrap();
    let renamed = bin.path().join("wisp-renamed");
    std::fs::copy(wisp_e2e::wisp_bin(), &renamed).unwrap();
    let first = Wisp::builder().binary(&renamed).start().unwrap();
    let rootfs = busybox_rootfs();
    deploy_probe(&first, "kept", rootfs.path(), &[]);
    assert_eq!(probe(&first, "kept", "id").await.0, StatusCode::OK);
    let _second = Wisp::start();
    let (status, body) = probe(&first, "kept", "id").await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the first server's sandbox lives: {body}"
    );
}

/// Issue 11, finding 10: a CGI `Status: 101` was taken as the final
/// response (the client got `101 Switching Protocols` and a dead
/// connection). It is a protocol error of the function's: 502.
#[tokio::test]
async fn a_cgi_informational_status_is_a_bad_gateway() {
    let wisp = Wisp::start();
    let rootfs = busybox_rootfs();
    wisp.deploy_cgi_script(
        "interim",
        rootfs.path(),
        "printf 'Status: 101 Switching Protocols\\r\\nUpgrade: h2c\\r\\n\\r\\n'",
    );
    for _ in 0..2 {
        let answer = wisp.invoke("GET", "/function/interim/", "").await;
        assert_eq!(answer.status, StatusCode::BAD_GATEWAY, "{}", answer.text());
        assert!(answer.text().contains("interim"), "{}", answer.text());
    }
    assert!(wisp.log().contains("informational"), "the cause is logged");
    let health = wisp.invoke("GET", "/healthz", "").await;
    assert_eq!(
        health.status,
        StatusCode::OK,
        "the client's connection still serves"
    );
}

/// Issue 11, finding 4: a failing handler's stderr reached anonymous
/// callers in the 502 body. It goes to the logs; the caller gets the
/// status and a generic reason.
#[tokio::test]
async fn a_failing_handlers_stderr_is_not_sent_to_the_caller() {
    let wisp = Wisp::start();
    let rootfs = busybox_rootfs();
    wisp.deploy_cgi_script("leaky", rootfs.path(), "echo password=hunter2 >&2; exit 1");
    let answer = wisp.invoke("GET", "/function/leaky/", "").await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY, "{}", answer.text());
    assert!(answer.text().contains("exit status 1"), "{}", answer.text());
    assert!(!answer.text().contains("hunter2"), "{}", answer.text());
    let log = wisp.log();
    assert!(
        log.contains("password=hunter2"),
        "stderr reaches the server log"
    );
    let logs = wisp.cli(&["logs", "leaky"]).expect_success();
    assert!(
        logs.contains("password=hunter2"),
        "and the function's logs: {logs}"
    );
}

#[tokio::test]
async fn cgi_containers_run_one_process_per_request() {
    let wisp = Wisp::start();
    wisp.deploy_with("cgi-native", artifacts::CGI_NATIVE_DOCKER_ARCHIVE, |d| {
        d.protocol = Some("cgi".into());
    })
    .await
    .unwrap();
    for i in 0..3 {
        let answer = wisp
            .invoke("POST", &format!("/function/cgi-native/a/b?i={i}"), "hello")
            .await;
        assert_eq!(answer.status, StatusCode::OK);
        let text = answer.text();
        assert!(text.contains("PATH_INFO=/a/b"), "{text}");
        assert!(text.contains(&format!("QUERY_STRING=i={i}")), "{text}");
        assert!(text.contains("body=hello"), "{text}");
    }
}

#[tokio::test]
async fn the_sandbox_is_isolated() {
    let wisp = Wisp::start();
    let rootfs = busybox_rootfs();
    deploy_probe(&wisp, "probe", rootfs.path(), &[]);

    let (status, pids) = probe(&wisp, "probe", "pids").await;
    assert_eq!(status, StatusCode::OK, "{pids}");
    let pids: Vec<u32> = pids.lines().filter_map(|l| l.parse().ok()).collect();
    assert!(pids.contains(&1), "init is PID 1: {pids:?}");
    assert!(pids.len() <= 4, "sees only its own processes: {pids:?}");
    assert!(!pids.contains(&wisp.pid()), "{pids:?}");

    let (_, caps) = probe(&wisp, "probe", "caps").await;
    assert!(caps.contains("CapEff:\t0000000000000000"), "{caps}");
    assert!(caps.contains("CapPrm:\t0000000000000000"), "{caps}");
    assert!(caps.contains("CapBnd:\t0000000000000000"), "{caps}");
    assert!(caps.contains("NoNewPrivs:\t1"), "{caps}");
    assert!(caps.contains("Seccomp:\t2"), "{caps}");

    assert_eq!(probe(&wisp, "probe", "hostname").await.1.trim(), "probe");
    // Sandboxes are made ahead at SCHED_IDLE; the function runs at the
    // normal policy (SCHED_OTHER = 0).
    assert_eq!(probe(&wisp, "probe", "policy").await.1.trim(), "0");
    assert_eq!(probe(&wisp, "probe", "id").await.1, "0\n0\n");

    let (_, net) = probe(&wisp, "probe", "net").await;
    assert!(net.contains("loopback:refused"), "{net}");
    assert!(net.contains("host:refused"), "{net}");

    // Writes land in the sandbox's own scratch layer, never in the image's.
    assert_eq!(probe(&wisp, "probe", "write").await.1, "pwned\n");
    assert_eq!(probe(&wisp, "probe", "read").await.1, "pwned\n");
    let layers = wisp.data_dir.join("images/layers");
    for layer in std::fs::read_dir(&layers).unwrap() {
        let motd = layer.unwrap().path().join("diff/etc/motd");
        if motd.exists() {
            assert_eq!(std::fs::read_to_string(&motd).unwrap(), "original\n");
        }
    }
    // A second sandbox of the same image starts from the image again.
    deploy_probe(&wisp, "probe2", rootfs.path(), &[]);
    assert_eq!(probe(&wisp, "probe2", "read").await.1, "original\n");
}

#[tokio::test]
async fn a_memory_hog_is_oom_killed_and_its_sandbox_replaced() {
    let wisp = Wisp::start();
    let rootfs = busybox_rootfs();
    deploy_probe(&wisp, "hog", rootfs.path(), &["--memory", "32Mi"]);
    assert_eq!(probe(&wisp, "hog", "id").await.0, StatusCode::OK);
    let (status, body) = probe(&wisp, "hog", "hog").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(body.contains("out of memory"), "{body}");
    let (status, body) = probe(&wisp, "hog", "id").await;
    assert_eq!(status, StatusCode::OK, "a new sandbox serves: {body}");
}

#[tokio::test]
async fn a_fork_bomb_stops_at_the_pids_limit() {
    let wisp = Wisp::start();
    let rootfs = busybox_rootfs();
    deploy_probe(&wisp, "bomb", rootfs.path(), &[]);
    let (status, body) = probe(&wisp, "bomb", "forkbomb").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let n: u32 = body
        .trim()
        .strip_prefix("processes: ")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{body}"));
    assert!((50..=128).contains(&n), "stopped at the limit of 128: {n}");
    let health = wisp.invoke("GET", "/healthz", "").await;
    assert_eq!(health.status, StatusCode::OK, "the host is unaffected");
}

/// `--cpu` is a CFS quota that the kernel enforces: a CGI process that
/// spins is throttled (`nr_throttled` in its cgroup's `cpu.stat`), at the
/// quota wisp wrote (`cpu.max` on v2, `cpu.cfs_quota_us` on v1).
#[tokio::test]
async fn a_cpu_hog_is_throttled_at_its_cpu_limit() {
    let wisp = Wisp::start();
    let rootfs = busybox_rootfs();
    deploy_probe(&wisp, "spin", rootfs.path(), &["--cpu", "200m"]);
    let (status, body) = probe(&wisp, "spin", "spin").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let read = |dir: &Path, file: &str| std::fs::read_to_string(dir.join(file)).unwrap_or_default();
    // 20 ms of CPU time in every 100 ms period; the pre-made sandboxes have no quota.
    let capped: Vec<PathBuf> = sandbox_dirs(wisp.pid(), "cpu")
        .into_iter()
        .filter(|d| {
            read(d, "cpu.max").trim() == "20000 100000"
                || read(d, "cpu.cfs_quota_us").trim() == "20000"
        })
        .collect();
    assert_eq!(capped.len(), 1, "one sandbox has the quota: {capped:?}");
    let stat = read(&capped[0], "cpu.stat");
    let throttled: u64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("nr_throttled "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no nr_throttled in cpu.stat: {stat}"));
    assert!(throttled > 0, "the spinning handler was throttled: {stat}");
}

#[tokio::test]
async fn handlers_that_exit_or_never_listen_get_clear_errors() {
    let wisp = Wisp::start();
    let rootfs = busybox_rootfs();
    wisp.deploy_rootfs(
        "quits",
        rootfs.path(),
        &["--cmd", "/bin/sh", "-c", "echo boom >&2; exit 3"],
    );
    let answer = wisp.invoke("GET", "/function/quits/", "").await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    assert!(answer.text().contains("exit status 3"), "{}", answer.text());
    assert!(wisp.log().contains("boom"), "stderr reaches the log");

    wisp.deploy_rootfs(
        "mute",
        rootfs.path(),
        &["--timeout", "1s", "--cmd", "/bin/sleep", "60"],
    );
    let answer = wisp.invoke("GET", "/function/mute/", "").await;
    assert_eq!(
        answer.status,
        StatusCode::GATEWAY_TIMEOUT,
        "{}",
        answer.text()
    );
    assert!(answer.text().contains("port 8080"), "{}", answer.text());

    wisp.deploy_rootfs("nocmd", rootfs.path(), &["--cmd", "/no/such"]);
    let answer = wisp.invoke("GET", "/function/nocmd/", "").await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY, "{}", answer.text());
}

#[tokio::test]
async fn broken_and_hostile_images_are_refused_at_deploy() {
    let wisp = Wisp::start();
    let garbage = wisp
        .client
        .upload_artifact(b"not an image".to_vec())
        .await
        .unwrap();
    let d = wisp_e2e::FunctionDeployment {
        service: "junk".into(),
        image: garbage.digest,
        ..Default::default()
    };
    let err = wisp.client.deploy(&d).await.unwrap_err().to_string();
    assert!(
        err.contains("400") || err.contains("not a usable image"),
        "{err}"
    );

    // A layer with an entry that climbs out of it.
    let mut layer = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(4);
    header.set_mode(0o644);
    header.set_entry_type(tar::EntryType::Regular);
    let name = b"../escaped";
    header.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name);
    header.set_cksum();
    layer.append(&header, &b"evil"[..]).unwrap();
    let layer = wisp_oci_writer::Layer::from_tar(layer.into_inner().unwrap());
    let image = wisp::cli::pack::image(layer, &["/x".into()]);
    let uploaded = wisp.client.upload_artifact(image).await.unwrap();
    let d = wisp_e2e::FunctionDeployment {
        service: "hostile".into(),
        image: uploaded.digest,
        ..Default::default()
    };
    let err = wisp.client.deploy(&d).await.unwrap_err().to_string();
    assert!(err.contains("escaped"), "the error names the entry: {err}");
    assert!(!wisp.data_dir.join("images/escaped").exists());
    assert!(!wisp.data_dir.join("images/layers/escaped").exists());
    assert!(
        wisp.client.list().await.unwrap().is_empty(),
        "registry unchanged"
    );
}

#[tokio::test]
async fn nothing_is_left_behind_after_teardown_or_a_crash() {
    let mounts_before = mounts();
    let dir = tempfile::tempdir().unwrap();
    let mut wisp = Wisp::builder().data_dir(dir.path()).start().unwrap();
    let pid = wisp.pid();
    // Two sandboxes are made ahead of demand (the default).
    eventually(
        "the pre-made sandboxes",
        Duration::from_secs(10),
        async || sandbox_cgroups(pid).len() == 2,
    )
    .await;
    wisp.deploy("ping", artifacts::PING_DOCKER_ARCHIVE).await;
    assert_eq!(
        wisp.invoke("GET", "/function/ping/ping", "").await.text(),
        "pong"
    );
    eventually(
        "a replacement pre-made sandbox",
        Duration::from_secs(10),
        async || sandbox_cgroups(pid).len() == 3,
    )
    .await;
    wisp.client.delete("ping").await.unwrap();
    eventually(
        "the function's sandbox to go",
        Duration::from_secs(10),
        async || sandbox_cgroups(pid).len() == 2,
    )
    .await;
    assert_eq!(mounts(), mounts_before, "no mount reached the host");
    wisp.deploy("ping", artifacts::PING_DOCKER_ARCHIVE).await;
    assert_eq!(
        wisp.invoke("GET", "/function/ping/ping", "").await.text(),
        "pong"
    );
    wisp.signal("TERM");
    assert!(wisp.wait(Duration::from_secs(20)).unwrap().success());
    assert!(
        sandbox_cgroups(pid).is_empty(),
        "a stopped server leaves no cgroup: {:?}",
        sandbox_cgroups(pid)
    );

    // A crash: the spawner and every container die with the server; the
    // next server removes the cgroups the dead one left.
    let mut crashed = Wisp::builder().data_dir(dir.path()).start().unwrap();
    let pid = crashed.pid();
    assert_eq!(
        crashed
            .invoke("GET", "/function/ping/ping", "")
            .await
            .text(),
        "pong"
    );
    assert!(!sandbox_cgroups(pid).is_empty());
    crashed.kill();
    let next = Wisp::builder().data_dir(dir.path()).start().unwrap();
    eventually(
        "the dead server's cgroups to go",
        Duration::from_secs(10),
        async || sandbox_cgroups(pid).is_empty(),
    )
    .await;
    assert_eq!(
        next.invoke("GET", "/function/ping/ping", "").await.text(),
        "pong"
    );
    assert_eq!(mounts(), mounts_before);
}

/// The cgroup v2 hierarchy's mount if it has the memory, cpu and pids
/// controllers (a pure v2 host); `None` on v1 and hybrid hosts.
fn cgroup_v2_mount() -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if !right.starts_with("cgroup2 ") {
            return None;
        }
        let mount = PathBuf::from(left.split(' ').nth(4)?);
        let offered = std::fs::read_to_string(mount.join("cgroup.controllers")).ok()?;
        let offered: Vec<&str> = offered.split_whitespace().collect();
        ["memory", "cpu", "pids"]
            .iter()
            .all(|c| offered.contains(c))
            .then_some(mount)
    })
}

/// A cgroup made for a test, removed with what is below it (deepest first).
struct TestCgroup(PathBuf);

impl Drop for TestCgroup {
    fn drop(&mut self) {
        fn remove(dir: &Path) {
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                if entry.path().is_dir() {
                    remove(&entry.path());
                }
            }
            let _ = std::fs::remove_dir(dir);
        }
        remove(&self.0);
    }
}

/// On cgroup v2 a cgroup holding processes (other than the root) cannot
/// enable controllers for its children. A server that is all its cgroup
/// holds — a systemd unit with `Delegate=yes` — moves itself and its
/// spawner to the leaf `wisp-server`, and its sandboxes get their limits
/// below `wisp`. Runs on v2 hosts only (`tests/cgroup-v2-vm.sh` boots one);
/// elsewhere it passes without checking anything.
#[tokio::test]
async fn on_cgroup_v2_a_server_alone_in_its_cgroup_moves_to_a_leaf() {
    let Some(mount) = cgroup_v2_mount() else {
        eprintln!("not a cgroup v2 host: nothing to check");
        return;
    };
    // The delegated cgroup, as systemd would make it for a unit.
    std::fs::write(mount.join("cgroup.subtree_control"), "+memory +cpu +pids").unwrap();
    let delegated = TestCgroup(mount.join(format!("wisp-e2e-{}", std::process::id())));
    std::fs::create_dir(&delegated.0).unwrap();
    let mut wisp = Wisp::builder().in_cgroup(&delegated.0).start().unwrap();
    let rootfs = busybox_rootfs();
    deploy_probe(&wisp, "hog", rootfs.path(), &["--memory", "32Mi"]);
    assert_eq!(probe(&wisp, "hog", "id").await.0, StatusCode::OK);

    let read = |dir: &Path, file: &str| std::fs::read_to_string(dir.join(file)).unwrap_or_default();
    assert_eq!(
        read(&delegated.0, "cgroup.procs"),
        "",
        "the cgroup is left to its children"
    );
    let server = read(&delegated.0.join("wisp-server"), "cgroup.procs");
    let server: Vec<&str> = server.lines().collect();
    assert_eq!(server.len(), 2, "the server and its spawner: {server:?}");
    assert!(
        server.contains(&wisp.pid().to_string().as_str()),
        "{server:?}"
    );
    let limited: Vec<PathBuf> = std::fs::read_dir(delegated.0.join("wisp"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|d| read(d, "memory.max").trim() == (32u64 << 20).to_string())
        .collect();
    assert_eq!(limited.len(), 1, "the function's sandbox has its limit");
    let (status, body) = probe(&wisp, "hog", "hog").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(body.contains("out of memory"), "{body}");

    wisp.signal("TERM");
    assert!(wisp.wait(Duration::from_secs(20)).unwrap().success());
    let left: Vec<PathBuf> = std::fs::read_dir(delegated.0.join("wisp"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    assert!(
        left.is_empty(),
        "a stopped server leaves no sandbox cgroup: {left:?}"
    );
}

#[tokio::test]
async fn images_are_listed_and_pruned_when_unused() {
    let wisp = Wisp::start();
    wisp.deploy("ping", artifacts::PING_DOCKER_ARCHIVE).await;
    let rootfs = busybox_rootfs();
    deploy_probe(&wisp, "probe", rootfs.path(), &[]);
    let out = wisp.cli(&["images"]).expect_success();
    assert!(out.contains("ping") && out.contains("probe"), "{out}");
    assert!(out.contains("layer sha256:"), "{out}");
    assert_eq!(wisp.client.images().await.unwrap().len(), 2);

    wisp.client.delete("probe").await.unwrap();
    let out = wisp.cli(&["prune"]).expect_success();
    assert!(out.contains("removed 1 images"), "{out}");
    let left = wisp.client.images().await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].functions, ["ping"]);
    assert_eq!(
        wisp.invoke("GET", "/function/ping/ping", "").await.text(),
        "pong",
        "what a function uses is kept"
    );
}

#[tokio::test]
async fn without_root_containers_are_refused_and_wasm_still_runs() {
    let wisp = Wisp::builder().run_as(65534).start().unwrap();
    let err = wisp
        .deploy_with("ping", artifacts::PING_DOCKER_ARCHIVE, |_| {})
        .await
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("503"), "{err}");
    assert!(err.contains("run as root"), "{err}");
    wisp.deploy("hello", artifacts::HELLO).await;
    let answer = wisp.invoke("GET", "/function/hello/", "").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert!(wisp.client.list().await.unwrap().len() == 1);
}
