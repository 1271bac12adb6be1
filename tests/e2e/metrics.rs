//! Every declared metric moves during a realistic session, and a real
//! Prometheus server scrapes wisp.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::StatusCode;
use wisp_e2e::{Wisp, artifacts, eventually};

/// Metric family → the set of distinct sample lines seen for it.
type Seen = BTreeMap<String, BTreeSet<String>>;

fn families(text: &str) -> (BTreeSet<String>, Seen) {
    let mut declared = BTreeSet::new();
    let mut seen = Seen::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ")
            && let Some(name) = rest.split_whitespace().next()
        {
            declared.insert(name.to_owned());
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let name = line.split(['{', ' ']).next().unwrap_or("");
        // A histogram's samples are <family>_bucket/_sum/_count; a family's
        // own name may end in _count too (gateway_service_count).
        let family = if wisp::metrics::DECLARED.contains(&name) {
            name
        } else {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name)
        };
        seen.entry(family.to_owned())
            .or_default()
            .insert(line.to_owned());
    }
    (declared, seen)
}

/// Families a session of ordinary use leaves alone, each moved by a test of
/// its own: refused connections (`connections.rs`, a full cap), dropped
/// output (`logs.rs`, a flood), pulls (`registry.rs`, a registry) and
/// asynchronous calls (`calls.rs`, a callback receiver).
const EXERCISED_ELSEWHERE: &[&str] = &[
    "wisp_http_connections_refused_total",
    "wisp_log_lines_dropped_total",
    "wisp_image_pull_seconds",
    "wisp_image_pull_bytes_total",
    "wisp_async_queue_depth",
    "wisp_async_calls_total",
    "wisp_async_retries_total",
    "wisp_async_callbacks_total",
];

#[tokio::test]
async fn every_declared_metric_changes_during_a_session() {
    let wisp = Wisp::builder()
        .arg("--header-read-timeout")
        // Short, to see the silent connection closed; long enough that a
        // loaded machine still reads the test's own requests in time.
        .arg("3s")
        .start()
        .unwrap();
    // A connection that never sends a byte, closed as idle.
    let mut silent = tokio::net::TcpStream::connect(wisp.addr.trim_start_matches("http://"))
        .await
        .unwrap();
    let (_, first) = families(&wisp.metrics().await);
    let declared: BTreeSet<String> = wisp::metrics::DECLARED
        .iter()
        .map(|s| (*s).to_owned())
        .collect();

    // Scrape in the background, keeping every distinct sample.
    let seen = Arc::new(Mutex::new(Seen::new()));
    let scraper = {
        let client = wisp.client.clone();
        let seen = seen.clone();
        tokio::spawn(async move {
            loop {
                if let Ok(answer) = client
                    .call(
                        http::Method::GET,
                        "/metrics",
                        Default::default(),
                        bytes::Bytes::new(),
                    )
                    .await
                {
                    let (_, now) = families(&answer.text());
                    let mut seen = seen.lock().unwrap();
                    for (family, lines) in now {
                        seen.entry(family).or_default().extend(lines);
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };

    // A session: wasm and containers, cold and warm, errors, a queue, an
    // idle stop.
    wisp.deploy("hello", artifacts::HELLO).await;
    assert_eq!(
        wisp.invoke("GET", "/function/hello/", "").await.status,
        StatusCode::OK
    );
    // One request at a time, idle soon after.
    let scaling = [
        "--max",
        "1",
        "--concurrency",
        "1",
        "--idle-timeout",
        "300ms",
    ];
    wisp.deploy_slow("slow", "0.3", &scaling);
    let calls: Vec<_> = (0..3)
        .map(|_| wisp.spawn_invoke("GET", "/function/slow/", ""))
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap().status, StatusCode::OK);
    }
    let missing = wisp
        .invoke("GET", "/function/hello/missing-is-fine", "")
        .await;
    assert!(missing.status.is_success() || missing.status.is_client_error());
    // The slow function idles out.
    eventually("slow to idle out", Duration::from_secs(10), async || {
        wisp.replicas("slow").await == 0
    })
    .await;
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::AsyncReadExt::read_to_end(&mut silent, &mut rest),
    )
    .await;
    assert!(closed.is_ok(), "the silent connection was not closed");
    tokio::time::sleep(Duration::from_millis(100)).await;
    scraper.abort();

    let seen = seen.lock().unwrap();
    let mut unchanged = Vec::new();
    for family in &declared {
        if EXERCISED_ELSEWHERE.contains(&family.as_str()) {
            continue;
        }
        let before = first.get(family).cloned().unwrap_or_default();
        let during = seen.get(family).cloned().unwrap_or_default();
        if during.is_empty() || during == before {
            unchanged.push(family.clone());
        }
    }
    assert!(
        unchanged.is_empty(),
        "metrics that never changed: {unchanged:?}"
    );
}

#[tokio::test]
async fn a_real_prometheus_scrapes_wisp() {
    let prometheus = which("prometheus")
        .expect("prometheus is installed by scripts/setup.sh (Debian package prometheus)");
    let wisp = Wisp::start();
    wisp.deploy("hello", artifacts::HELLO).await;
    assert_eq!(
        wisp.invoke("GET", "/function/hello/", "").await.status,
        StatusCode::OK
    );

    let dir = tempfile::tempdir().unwrap();
    let target = wisp.addr.trim_start_matches("http://").to_owned();
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 200ms\nscrape_configs:\n  - job_name: wisp\n    static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .unwrap();
    let port = free_port();
    let mut child = std::process::Command::new(prometheus)
        .arg(format!(
            "--config.file={}",
            dir.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start prometheus");
    let client = wisp_e2e::Client::new(&format!("http://127.0.0.1:{port}"), None);
    let query =
        "/api/v1/query?query=gateway_function_invocation_total%7Bfunction_name%3D%22hello%22%7D";
    let mut result = serde_json::Value::Null;
    eventually(
        "prometheus to get wisp's series",
        Duration::from_secs(60),
        async || {
            let Ok(answer) = client
                .call(
                    http::Method::GET,
                    query,
                    Default::default(),
                    bytes::Bytes::new(),
                )
                .await
            else {
                return false;
            };
            result = serde_json::from_slice(&answer.body).unwrap_or_default();
            result["data"]["result"]
                .as_array()
                .is_some_and(|r| !r.is_empty())
        },
    )
    .await;
    let _ = child.kill();
    let _ = child.wait();
    let series = &result["data"]["result"][0];
    assert_eq!(series["metric"]["function_name"], "hello");
    assert_eq!(series["metric"]["code"], "200");
    assert_eq!(series["value"][1], "1");
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| std::path::Path::new(dir).join(program))
        .find(|p| p.is_file())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A deleted function leaves no series behind (the soak's churn of ever
/// new names grew `/metrics` and the gateway by ~50 series per deleted
/// function).
#[tokio::test]
async fn a_deleted_function_leaves_no_series() {
    let wisp = Wisp::start();
    wisp.deploy("gone", artifacts::HELLO).await;
    assert_eq!(
        wisp.invoke("GET", "/function/gone/", "").await.status,
        StatusCode::OK
    );
    assert!(wisp.metrics().await.contains("function_name=\"gone\""));
    wisp.client.delete("gone").await.unwrap();
    let metrics = wisp.metrics().await;
    let left: Vec<&str> = metrics
        .lines()
        .filter(|l| l.contains("function_name=\"gone\""))
        .collect();
    assert!(left.is_empty(), "{left:#?}");
}
