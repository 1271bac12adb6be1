//! The `wisp` command line against a real server.

use wisp_e2e::{Wisp, artifacts, wisp_bin};

#[tokio::test]
async fn deploy_invoke_ls_rm() {
    let wisp = Wisp::start();
    let (ok, out, err) = wisp.cli(&[
        "deploy",
        "hello",
        artifacts::HELLO,
        "--env",
        "GREETING=Yo",
        "--timeout",
        "5s",
        "--memory",
        "64Mi",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("deployed hello (wasm-http"), "{out}");
    let (ok, out, err) = wisp.cli(&[
        "invoke",
        "hello",
        "--path",
        "/p?name=cli",
        "--data",
        "payload",
    ]);
    assert!(ok, "{err}");
    assert!(
        out.contains("Yo, cli!") && out.contains("method: POST") && out.contains("body: payload"),
        "{out}"
    );

    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), "from a file").unwrap();
    let at_file = format!("@{}", file.path().display());
    let (ok, out, _) = wisp.cli(&[
        "invoke", "hello", "-X", "PUT", "--data", &at_file, "-H", "X-A: 1",
    ]);
    assert!(
        ok && out.contains("method: PUT") && out.contains("body: from a file"),
        "{out}"
    );

    let (ok, out, _) = wisp.cli(&["ls"]);
    assert!(
        ok && out.contains("hello") && out.contains("wasm-http"),
        "{out}"
    );
    let (ok, _, err) = wisp.cli(&["invoke", "ghost"]);
    assert!(!ok && err.contains("ghost"), "{err}");
    let (ok, out, err) = wisp.cli(&["rm", "hello"]);
    assert!(ok, "{err}");
    assert!(out.contains("removed hello"));
    let (ok, out, _) = wisp.cli(&["ls"]);
    assert!(ok && !out.contains("hello"), "{out}");
}

#[tokio::test]
async fn bad_input_gives_one_clear_line() {
    let wisp = Wisp::start();
    let (ok, _, err) = wisp.cli(&["deploy", "x", "/no/such/file.wasm"]);
    assert!(!ok && err.contains("/no/such/file.wasm"), "{err}");
    let (ok, _, err) = wisp.cli(&["deploy", "x", artifacts::HELLO, "--env", "NOEQUALS"]);
    assert!(!ok && err.contains("KEY=VALUE"), "{err}");
    let (ok, _, err) = wisp.cli(&["deploy", "x", artifacts::HELLO, "--timeout", "forever"]);
    assert!(!ok && err.contains("timeout"), "{err}");
    let out = std::process::Command::new(wisp_bin())
        .args(["ls", "--gateway", "http://127.0.0.1:1"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("cannot reach the wisp gateway"),
        "{err}"
    );
    let out = std::process::Command::new(wisp_bin())
        .args(["ls"])
        .env("WISP_GATEWAY", &wisp.addr)
        .env("WISP_TOKEN", "wrong")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("401"), "{err}");
}

#[test]
fn help_states_defaults_and_env_vars() {
    let out = std::process::Command::new(wisp_bin())
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for expected in [
        "[env: WISP_LISTEN=]",
        "[default: 127.0.0.1:8080]",
        "WISP_DATA_DIR",
        "[default: 30s]",
    ] {
        assert!(help.contains(expected), "missing {expected} in\n{help}");
    }
    let out = std::process::Command::new(wisp_bin())
        .args(["invoke", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("WISP_GATEWAY") && help.contains("[default: http://127.0.0.1:8080]"),
        "{help}"
    );
}
