//! What survives a restart, a crash, a redeploy and a shutdown.

use std::time::{Duration, SystemTime};

use http::StatusCode;
use wisp_e2e::{Wisp, artifacts, eventually};

fn compiled_files(wisp: &Wisp) -> Vec<(std::path::PathBuf, SystemTime)> {
    let dir = wisp.data_dir.join("artifacts").join("compiled");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.path(), e.metadata().unwrap().modified().unwrap())
        })
        .collect();
    files.sort();
    files
}

#[tokio::test]
async fn functions_survive_a_crash_without_recompiling() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = Wisp::builder().data_dir(dir.path()).start().unwrap();
    first.deploy("hello", artifacts::HELLO).await;
    first.deploy("cgi-echo", artifacts::CGI_ECHO).await;
    let token = first.token.clone();
    let compiled = compiled_files(&first);
    assert_eq!(compiled.len(), 2);
    first.kill();

    let second = Wisp::builder().data_dir(dir.path()).start().unwrap();
    assert_eq!(second.token, token, "the token is kept");
    let names = second.function_names().await;
    assert_eq!(names, ["cgi-echo", "hello"]);
    let hello = second.invoke("GET", "/function/hello?name=again", "").await;
    assert_eq!(hello.status, StatusCode::OK);
    assert!(hello.text().contains("Hello, again!"));
    let cgi = second.invoke("POST", "/function/cgi-echo", "x").await;
    assert_eq!(cgi.status, StatusCode::OK);
    assert_eq!(
        compiled_files(&second),
        compiled,
        "precompiled code was reused, not rebuilt"
    );
    // The token was printed once, by the first server only.
    assert_eq!(second.log().matches("listening").count(), 2);
}

/// Descriptors and mappings of the server that point at precompiled code.
fn compiled_code_held(wisp: &Wisp) -> usize {
    let compiled = wisp.data_dir.join("artifacts").join("compiled");
    let compiled = compiled.to_str().unwrap();
    let proc = std::path::PathBuf::from(format!("/proc/{}", wisp.pid()));
    let fds = std::fs::read_dir(proc.join("fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with(compiled))
        .count();
    let maps = std::fs::read_to_string(proc.join("maps")).unwrap();
    fds + maps.lines().filter(|l| l.contains(compiled)).count()
}

#[tokio::test]
async fn a_deleted_wasm_function_lets_go_of_its_code() {
    let wisp = Wisp::start();
    // Deployed, invoked and deleted three times each: a component and a
    // core module. Each round used to leave the code mapped and its file
    // open (the instance's memory slot still held the code's image, freed
    // only when another instance happened to take that slot).
    for round in 0..3 {
        for (name, file) in [("h", artifacts::HELLO), ("c", artifacts::CGI_ECHO)] {
            let name = format!("{name}{round}");
            wisp.deploy(&name, file).await;
            let got = wisp.invoke("POST", &format!("/function/{name}"), "x").await;
            assert_eq!(got.status, StatusCode::OK, "{}", got.text());
            assert!(compiled_code_held(&wisp) > 0, "serving maps the code");
            wisp.cli(&["rm", &name]).expect_success();
        }
    }
    eventually(
        "the code of deleted functions is unmapped and closed",
        Duration::from_secs(10),
        async || compiled_code_held(&wisp) == 0,
    )
    .await;
}

#[tokio::test]
async fn redeploy_lets_in_flight_requests_finish_on_the_old_version() {
    let wisp = Wisp::start();
    wisp.deploy("fn", artifacts::MISBEHAVE).await;
    let slow = wisp.spawn_invoke("GET", "/function/fn/sleep?ms=1500", "");
    tokio::time::sleep(Duration::from_millis(300)).await;
    wisp.deploy("fn", artifacts::HELLO).await;
    let new = wisp.invoke("GET", "/function/fn", "").await;
    assert!(
        new.text().contains("Hello, world!"),
        "new requests go to the new version: {}",
        new.text()
    );
    let old = slow.await.unwrap();
    assert_eq!(old.status, StatusCode::OK);
    assert_eq!(old.text(), "slept\n");
}

#[tokio::test]
async fn sigterm_finishes_in_flight_requests_then_exits() {
    let mut wisp = Wisp::start();
    wisp.deploy("fn", artifacts::MISBEHAVE).await;
    let slow = wisp.spawn_invoke("GET", "/function/fn/sleep?ms=1000", "");
    tokio::time::sleep(Duration::from_millis(300)).await;
    wisp.signal("TERM");
    let answer = slow.await.unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.text(), "slept\n");
    let status = wisp.wait(Duration::from_secs(10)).unwrap();
    assert!(status.success(), "{status}");
    assert!(wisp.log().contains("SIGTERM received"));
}

#[tokio::test]
async fn a_second_server_on_the_same_data_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _first = Wisp::builder().data_dir(dir.path()).start().unwrap();
    let err = Wisp::builder()
        .data_dir(dir.path())
        .start()
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("already open"), "{err}");
}

/// Issue 11, finding 5: the data dir was 0755 and `wisp.redb` and the log
/// files 0644, so any local user could read every function's environment
/// and output. They are made private, and fixed when an older wisp left
/// them open.
#[tokio::test]
async fn the_data_dir_is_private_and_fixed_at_start() {
    use std::os::unix::fs::PermissionsExt;
    let top = tempfile::tempdir().unwrap();
    let dir = top.path().join("data");
    // Octal text, so that a failure reads `755`, not `493`.
    let mode = |p: &std::path::Path| {
        format!(
            "{:o}",
            std::fs::metadata(p).unwrap().permissions().mode() & 0o777
        )
    };
    let log_files = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(dir.join("logs"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect()
    };
    let check = |when: &str| {
        assert_eq!(mode(&dir), "700", "{when}: the data dir");
        assert_eq!(mode(&dir.join("wisp.redb")), "600", "{when}: wisp.redb");
        assert_eq!(mode(&dir.join("token")), "600", "{when}: the token");
        assert_eq!(mode(&dir.join("logs")), "700", "{when}: the log dir");
        let files = log_files();
        assert!(!files.is_empty(), "{when}: a log file was written");
        for file in files {
            assert_eq!(mode(&file), "600", "{when}: {}", file.display());
        }
    };

    let mut first = Wisp::builder().data_dir(&dir).start().unwrap();
    first
        .deploy_with("misbehave", artifacts::MISBEHAVE, |d| {
            d.env_vars = Some([("PASSWORD".to_owned(), "hunter2".to_owned())].into());
        })
        .await
        .unwrap();
    let answer = first.invoke("GET", "/function/misbehave/stderr", "").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    wisp_e2e::eventually(
        "the function's log file",
        Duration::from_secs(10),
        async || std::fs::read_dir(dir.join("logs")).is_ok_and(|mut d| d.next().is_some()),
    )
    .await;
    check("made by this wisp");
    first.kill();

    // What an older wisp left: readable by everyone.
    let open = |p: &std::path::Path, m: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
    };
    open(&dir, 0o755);
    open(&dir.join("wisp.redb"), 0o644);
    open(&dir.join("logs"), 0o755);
    for file in log_files() {
        open(&file, 0o644);
    }
    let _second = Wisp::builder().data_dir(&dir).start().unwrap();
    check("fixed at start");
}

/// Where the artifact `digest` (`sha256:<hex>`) is stored.
fn artifact_path(wisp: &Wisp, digest: &str) -> std::path::PathBuf {
    let hex = digest.strip_prefix("sha256:").unwrap();
    wisp.data_dir.join("artifacts/sha256").join(hex)
}

/// Issue 11, finding 14: uploaded artifacts were never removed. `wisp
/// prune` removes those no function uses once past the grace period, keeps
/// what functions use, and `--dry-run` only lists.
#[tokio::test]
async fn prune_removes_unused_artifacts_past_the_grace_and_keeps_what_functions_use() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = Wisp::builder().data_dir(dir.path()).start().unwrap();
    first.deploy("hello", artifacts::HELLO).await;
    let hello = first.client.function("hello").await.unwrap().image;
    let unused = first.upload(artifacts::CGI_ECHO).await.unwrap();
    // Within the grace period (10 minutes by default) an upload is kept:
    // it may be about to be deployed.
    let out = first.cli(&["prune"]).expect_success();
    assert_eq!(out.trim(), "nothing to remove");
    assert!(artifact_path(&first, &unused).exists());
    first.signal("TERM");
    assert!(first.wait(Duration::from_secs(20)).unwrap().success());

    let mut second = Wisp::builder()
        .data_dir(dir.path())
        .arg("--prune-grace")
        .arg("0s")
        .start()
        .unwrap();
    let out = second.cli(&["prune", "--dry-run"]).expect_success();
    assert!(
        out.contains(&format!("would remove artifact {unused}")),
        "{out}"
    );
    assert!(!out.contains(&hello), "what a function uses stays: {out}");
    assert!(out.contains("would free"), "{out}");
    assert!(
        artifact_path(&second, &unused).exists(),
        "a dry run removes nothing"
    );

    let out = second.cli(&["prune"]).expect_success();
    assert!(out.contains(&format!("removed artifact {unused}")), "{out}");
    assert!(!out.contains(&hello), "{out}");
    let freed = out.lines().last().unwrap_or_default();
    assert!(
        freed.starts_with("freed ") && !freed.contains("(0 bytes)"),
        "{out}"
    );
    assert!(!artifact_path(&second, &unused).exists());
    assert!(artifact_path(&second, &hello).exists());
    let answer = second.invoke("GET", "/function/hello", "").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    let out = second.cli(&["prune"]).expect_success();
    assert_eq!(out.trim(), "nothing to remove");
    second.signal("TERM");
    assert!(second.wait(Duration::from_secs(20)).unwrap().success());

    let third = Wisp::builder().data_dir(dir.path()).start().unwrap();
    let answer = third.invoke("GET", "/function/hello", "").await;
    assert_eq!(
        answer.status,
        StatusCode::OK,
        "after a restart: {}",
        answer.text()
    );
}

/// The server prunes in the background every `--prune-interval`.
#[tokio::test]
async fn a_background_sweep_removes_what_no_function_uses() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = Wisp::builder().data_dir(dir.path()).start().unwrap();
    first.deploy("hello", artifacts::HELLO).await;
    let hello = first.client.function("hello").await.unwrap().image;
    first.signal("TERM");
    assert!(first.wait(Duration::from_secs(20)).unwrap().success());

    let second = Wisp::builder()
        .data_dir(dir.path())
        .env("WISP_PRUNE_INTERVAL", "1s")
        .env("WISP_PRUNE_GRACE", "0s")
        .start()
        .unwrap();
    let unused = second.upload(artifacts::CGI_ECHO).await.unwrap();
    wisp_e2e::eventually(
        "the sweep to remove the unused artifact",
        Duration::from_secs(30),
        async || !artifact_path(&second, &unused).exists(),
    )
    .await;
    assert!(artifact_path(&second, &hello).exists());
    let answer = second.invoke("GET", "/function/hello", "").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    wisp_e2e::eventually(
        "the sweep's log line",
        Duration::from_secs(10),
        async || second.log().contains("pruned what no function uses"),
    )
    .await;
}
