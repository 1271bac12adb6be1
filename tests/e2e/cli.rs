//! The `wisp` command line against a real server.

use wisp_e2e::{Wisp, artifacts, wisp_bin};

#[tokio::test]
async fn deploy_invoke_ls_rm() {
    let wisp = Wisp::start();
    let out = wisp
        .cli(&[
            "deploy",
            "hello",
            artifacts::HELLO,
            "--env",
            "GREETING=Yo",
            "--timeout",
            "5s",
            "--memory",
            "64Mi",
        ])
        .expect_success();
    assert!(out.contains("deployed hello (wasm-http"), "{out}");
    let out = wisp
        .cli(&[
            "invoke",
            "hello",
            "--path",
            "/p?name=cli",
            "--data",
            "payload",
        ])
        .expect_success();
    assert!(
        out.contains("Yo, cli!") && out.contains("method: POST") && out.contains("body: payload"),
        "{out}"
    );

    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), "from a file").unwrap();
    let at_file = format!("@{}", file.path().display());
    let out = wisp
        .cli(&[
            "invoke", "hello", "-X", "PUT", "--data", &at_file, "-H", "X-A: 1",
        ])
        .expect_success();
    assert!(
        out.contains("method: PUT") && out.contains("body: from a file"),
        "{out}"
    );

    let out = wisp.cli(&["ls"]).expect_success();
    assert!(out.contains("hello") && out.contains("wasm-http"), "{out}");
    let err = wisp.cli(&["invoke", "ghost"]).expect_failure();
    assert!(err.contains("ghost"), "{err}");
    let out = wisp.cli(&["rm", "hello"]).expect_success();
    assert!(out.contains("removed hello"));
    let out = wisp.cli(&["ls"]).expect_success();
    assert!(!out.contains("hello"), "{out}");
}

#[tokio::test]
async fn bad_input_gives_one_clear_line() {
    let wisp = Wisp::start();
    let err = wisp
        .cli(&["deploy", "x", "/no/such/file.wasm"])
        .expect_failure();
    assert!(err.contains("/no/such/file.wasm"), "{err}");
    let err = wisp
        .cli(&["deploy", "x", artifacts::HELLO, "--env", "NOEQUALS"])
        .expect_failure();
    assert!(err.contains("KEY=VALUE"), "{err}");
    let err = wisp
        .cli(&["deploy", "x", artifacts::HELLO, "--timeout", "forever"])
        .expect_failure();
    assert!(err.contains("timeout"), "{err}");
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

#[tokio::test]
async fn wisp_bench_runs_every_mode_and_writes_json() {
    let wisp = wisp_e2e::Wisp::start();
    wisp.deploy("hello", wisp_e2e::artifacts::HELLO).await;
    let dir = tempfile::tempdir().unwrap();
    for (mode, extra, expected) in [
        (
            "warm",
            vec!["--requests", "40", "--concurrency", "4"],
            Some(40),
        ),
        // Spread over two event loops, each with its own connections.
        (
            "warm",
            vec!["--requests", "40", "--concurrency", "5", "--threads", "2"],
            Some(40),
        ),
        ("rate", vec!["--rate", "50", "--duration", "1s"], None),
        // Each request at its due time, on its loop's timer; then on
        // tokio's 1-ms timer.
        (
            "rate",
            vec!["--rate", "50", "--duration", "1s", "--pacing", "exact"],
            None,
        ),
        (
            "rate",
            vec!["--rate", "50", "--duration", "1s", "--pacing", "tick"],
            None,
        ),
        ("cold", vec!["--requests", "3"], Some(3)),
        // Two workers share the copies: still one cold start each.
        (
            "cold",
            vec!["--requests", "3", "--concurrency", "2"],
            Some(3),
        ),
        ("burst", vec!["--concurrency", "10"], Some(10)),
    ] {
        let run = extra.join("");
        let json = dir.path().join(format!("{mode}{run}.json"));
        let plot = dir.path().join(format!("{mode}{run}.svg"));
        let mut args = vec![
            "bench",
            "hello",
            "--mode",
            mode,
            "--json",
            json.to_str().unwrap(),
            "--plot",
            plot.to_str().unwrap(),
        ];
        args.extend(extra);
        let out = wisp.cli(&args);
        assert!(out.success, "{mode}: {}{}", out.stdout, out.stderr);
        assert!(out.stdout.contains("latency ms: p50"), "{}", out.stdout);
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
        assert_eq!(report["mode"], mode);
        if mode == "rate" {
            let pacing = ["exact", "tick"]
                .into_iter()
                .find(|p| run.contains(p))
                .unwrap_or("group");
            assert_eq!(report["pacing"], pacing, "{report}");
        }
        let svg = std::fs::read_to_string(&plot).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.contains("CDF"),
            "a plot is drawn"
        );
        assert_eq!(report["errors"], 0, "{report}");
        let requests = report["requests"].as_u64().unwrap();
        match expected {
            Some(n) => assert_eq!(requests, n, "{report}"),
            // 50/s for 1 s, open loop.
            None => assert!((45..=51).contains(&requests), "{report}"),
        }
        assert_eq!(report["statuses"]["200"].as_u64(), Some(requests));
        for key in ["p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms"] {
            assert!(
                report["latency"][key].as_f64().unwrap() > 0.0,
                "{key}: {report}"
            );
        }
        if mode == "cold" {
            assert_eq!(report["cold_starts"], 3, "every request was a cold start");
            assert!(
                report["phases"]["start"]["count"].as_u64() == Some(3),
                "{report}"
            );
        }
    }
    // The copies it made are gone.
    let names = wisp.function_names().await;
    assert_eq!(names, ["hello"]);

    // The load-latency curve: the peak, then each step, in a table, as
    // JSON and as a plot.
    let json = dir.path().join("curve.json");
    let plot = dir.path().join("curve.svg");
    let out = wisp.cli(&[
        "bench",
        "hello",
        "--mode",
        "curve",
        "--steps",
        "20,50",
        "--duration",
        "1s",
        "--concurrency",
        "8",
        "--json",
        json.to_str().unwrap(),
        "--plot",
        plot.to_str().unwrap(),
    ]);
    assert!(out.success, "curve: {}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("closed-loop peak"), "{}", out.stdout);
    let curve: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let peak = curve["peak_rps"].as_f64().unwrap();
    assert!(peak > 0.0, "{curve}");
    // The peak is the median of three closed-loop runs.
    let mut runs: Vec<f64> = curve["peak_runs_rps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_f64().unwrap())
        .collect();
    runs.sort_by(f64::total_cmp);
    assert_eq!(runs.len(), 3, "{curve}");
    assert_eq!(runs[1], peak, "{curve}");
    let steps = curve["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2, "{curve}");
    for (step, percent) in steps.iter().zip([20.0, 50.0]) {
        let offered = step["offered_rps"].as_f64().unwrap();
        assert!((offered - peak * percent / 100.0).abs() < 1.0, "{step}");
        assert_eq!(step["report"]["mode"], "rate");
        assert!(step["goodput_rps"].as_f64().unwrap() > 0.0, "{step}");
    }
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("offered load"),
        "a curve is drawn"
    );

    // Bad input: one line, non-zero exit.
    for args in [
        vec!["bench", "nope"],
        vec!["bench", "hello", "--duration", "0s"],
        vec!["bench", "hello", "--threads", "0"],
        vec!["bench", "hello", "--mode", "rate"],
        vec!["bench", "hello", "--mode", "curve", "--steps", "0,50"],
        vec!["bench", "--url", "http://127.0.0.1:9/", "--mode", "cold"],
        vec!["bench", "--url", "https://127.0.0.1:9/"],
    ] {
        let out = wisp.cli(&args);
        assert!(!out.success, "{args:?}: {}", out.stdout);
        assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
    }
    let err = wisp_e2e::Wisp::cli_unreachable(&["bench", "hello"]).expect_failure();
    assert!(err.contains("cannot reach"), "{err}");
}

/// `wisp bench --url` loads any HTTP server with the same generator (an
/// anchor to compare with), at the URL's path, and never sends it the
/// gateway's token.
#[tokio::test]
async fn wisp_bench_loads_any_url_without_the_token() {
    use std::io::{BufRead, BufReader, Write};
    let wisp = Wisp::start();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/anchor?x=1", listener.local_addr().unwrap());
    // A keep-alive server that answers every request "ok" and notes what
    // it was asked.
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let noted = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let noted = noted.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut writer = stream;
                let mut head = String::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    head.push_str(&line);
                    if line == "\r\n" {
                        noted.lock().unwrap().push(std::mem::take(&mut head));
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if writer.write_all(answer).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    for extra in [
        vec!["--mode", "warm", "--requests", "30", "--concurrency", "3"],
        vec!["--mode", "rate", "--rate", "50", "--duration", "1s"],
    ] {
        let mut args = vec!["bench", "--url", &url];
        args.extend(extra);
        let out = wisp.cli(&args);
        assert!(out.success, "{args:?}: {}{}", out.stdout, out.stderr);
        assert!(out.stdout.contains(&url), "{}", out.stdout);
        assert!(out.stdout.contains("statuses: 200:"), "{}", out.stdout);
    }
    let seen = seen.lock().unwrap();
    // Warm-up, open connections and measured requests, all at the URL.
    assert!(seen.len() >= 30 + 45, "{}", seen.len());
    for head in seen.iter() {
        assert!(head.starts_with("GET /anchor?x=1 HTTP/1.1\r\n"), "{head}");
        assert!(
            !head.to_ascii_lowercase().contains("authorization"),
            "{head}"
        );
    }
}

/// Issue 11, finding 16: `--cmd` took every word after it, flags included,
/// so `--cmd /bin/h --protocol cgi` deployed an `http` function running
/// `/bin/h --protocol cgi`. A command goes after `--`, or one word per
/// `--cmd`; both at once is refused.
#[tokio::test]
async fn a_command_never_swallows_the_flags_after_it() {
    let wisp = Wisp::start();
    let rootfs = wisp_e2e::busybox_rootfs();
    let rootfs = rootfs.path().to_str().unwrap();
    let script = "printf 'Content-Type: text/plain\\r\\n\\r\\nfrom cgi\\n'";
    wisp.cli(&[
        "deploy",
        "words",
        "--rootfs",
        rootfs,
        "--cmd",
        "/bin/sh",
        "--cmd",
        "-c",
        "--cmd",
        script,
        "--protocol",
        "cgi",
    ])
    .expect_success();
    let answer = wisp.invoke("GET", "/function/words", "").await;
    assert_eq!(answer.text(), "from cgi\n", "{}", answer.status);
    wisp.cli(&[
        "deploy",
        "rest",
        "--rootfs",
        rootfs,
        "--protocol",
        "cgi",
        "--",
        "/bin/sh",
        "-c",
        script,
    ])
    .expect_success();
    let answer = wisp.invoke("GET", "/function/rest", "").await;
    assert_eq!(answer.text(), "from cgi\n", "{}", answer.status);
    let err = wisp
        .cli(&[
            "deploy", "both", "--rootfs", rootfs, "--cmd", "/bin/sh", "--", "/bin/sh",
        ])
        .expect_failure();
    assert!(err.contains("given twice"), "{err}");
    // A flag-like word after a --cmd word is a flag, and an unknown one
    // says how to pass it as part of the command.
    let err = wisp
        .cli(&[
            "deploy", "dash", "--rootfs", rootfs, "--cmd", "/bin/sh", "-c", script,
        ])
        .expect_failure();
    assert!(err.contains("--"), "{err}");
}
