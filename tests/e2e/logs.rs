//! Handler output kept per function: `GET /system/logs` and `wisp logs`.

use std::time::Duration;

use http::StatusCode;
use http_body_util::BodyExt;
use wisp_e2e::{Wisp, busybox_rootfs};

#[tokio::test]
async fn handler_output_is_kept_tailed_and_followed() {
    let wisp = Wisp::start();
    let rootfs = busybox_rootfs();
    wisp.deploy_cgi_script(
        "talk",
        rootfs.path(),
        "echo \"said $QUERY_STRING\" >&2; printf 'Content-Type: text/plain\\r\\n\\r\\nok'",
    );
    assert_eq!(
        wisp.invoke("GET", "/function/talk/?one", "").await.text(),
        "ok"
    );

    // Output is written off the request path: it lands a moment later.
    wisp_e2e::eventually(
        "the output to be logged",
        Duration::from_secs(10),
        async || {
            let kept = wisp
                .invoke("GET", "/system/logs?name=talk&tail=5", "")
                .await;
            kept.text().contains("said one")
        },
    )
    .await;
    let kept = wisp
        .invoke("GET", "/system/logs?name=talk&tail=5", "")
        .await;
    assert_eq!(kept.status, StatusCode::OK);
    let line: serde_json::Value =
        serde_json::from_str(kept.text().lines().last().unwrap()).unwrap();
    assert_eq!(line["name"], "talk");
    assert_eq!(line["text"], "said one");
    assert_eq!(line["stream"], "stderr");

    // Follow: a line written after the request starts arrives on it; since=
    // skips the kept lines written before it.
    let after_one = wisp_runner::store::logs::parse_rfc3339(line["timestamp"].as_str().unwrap())
        .expect("an RFC 3339 timestamp")
        + 1;
    let since = wisp_runner::store::logs::rfc3339(
        u64::try_from(after_one / 1000).unwrap(),
        Some(u32::try_from(after_one % 1000).unwrap()),
    );
    let response = wisp
        .stream(&format!("/system/logs?name=talk&since={since}&follow=true"))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    assert_eq!(
        wisp.invoke("GET", "/function/talk/?two", "").await.text(),
        "ok"
    );
    let followed = tokio::time::timeout(Duration::from_secs(10), async {
        let mut seen = String::new();
        while let Some(frame) = body.frame().await {
            if let Some(data) = frame.unwrap().data_ref() {
                seen.push_str(&String::from_utf8_lossy(data));
                if seen.contains("said two") {
                    return seen;
                }
            }
        }
        seen
    })
    .await
    .expect("the followed line arrives");
    assert!(followed.contains("said two"), "{followed}");
    assert!(!followed.contains("said one"), "since= skips what was kept");

    wisp_e2e::eventually(
        "the second line to be logged",
        Duration::from_secs(10),
        async || {
            wisp.cli(&["logs", "talk", "--tail", "1"])
                .stdout
                .contains("said two")
        },
    )
    .await;
    let out = wisp.cli(&["logs", "talk", "--tail", "1"]).expect_success();
    assert!(out.trim().ends_with("stderr: said two"), "{out}");

    let unknown = wisp.invoke("GET", "/system/logs?name=nope", "").await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);

    // OpenFaaS's spec: tail <= 0 means every kept line; instance= filters.
    let all = wisp
        .invoke("GET", "/system/logs?name=talk&tail=0", "")
        .await
        .text();
    assert!(
        all.contains("said one") && all.contains("said two"),
        "{all}"
    );
    let none = wisp
        .invoke("GET", "/system/logs?name=talk&instance=nobody", "")
        .await;
    assert_eq!((none.status, none.text()), (StatusCode::OK, String::new()));
    let elsewhere = wisp
        .invoke("GET", "/system/logs?name=talk&namespace=other", "")
        .await;
    assert_eq!(elsewhere.status, StatusCode::NOT_FOUND);
    let bad = wisp
        .invoke("GET", "/system/logs?name=talk&tail=last", "")
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{}", bad.text());
}

/// Issue 11, finding 12: a handler flooding its output cost the gateway
/// CPU on the request path (a synchronous write per line). Output is
/// written by a thread of its own, within a rate limit per function; what
/// is over it is dropped, counted, and noted in the function's log.
#[tokio::test]
async fn a_flooding_handler_is_rate_limited_and_counted() {
    let wisp = Wisp::start();
    let rootfs = wisp_e2e::busybox_rootfs();
    let root = rootfs.path();
    for applet in ["yes", "head"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    wisp.deploy_httpd_script(
        "flood",
        root,
        "flood",
        "yes 'flooding the log' | head -c 8000000 >&2\nprintf 'Content-Type: text/plain\\r\\n\\r\\ndone\\n'",
        &[],
    );
    let answer = wisp
        .invoke("GET", "/function/flood/cgi-bin/flood", "")
        .await;
    assert_eq!(answer.text(), "done\n", "{}", answer.status);
    let dropped = |metrics: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("wisp_log_lines_dropped_total{function_name=\"flood\"} "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    };
    wisp_e2e::eventually(
        "dropped lines to be counted",
        std::time::Duration::from_secs(10),
        async || dropped(&wisp.metrics().await) > 0,
    )
    .await;
    // 8 MB of output (470,000 lines): most of it over the 1 MiB/s limit.
    let metrics = wisp.metrics().await;
    assert!(dropped(&metrics) > 100_000, "{metrics}");
    // The log says so, and stays within its two files.
    let _ = wisp
        .invoke("GET", "/function/flood/cgi-bin/flood", "")
        .await;
    wisp_e2e::eventually(
        "the log to note the drop",
        std::time::Duration::from_secs(10),
        async || {
            wisp.cli(&["logs", "flood"])
                .stdout
                .contains("lines of output dropped")
        },
    )
    .await;
    let on_disk: u64 = std::fs::read_dir(wisp.data_dir.join("logs"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(on_disk <= 2 * 1024 * 1024 + 64 * 1024, "{on_disk} bytes");
    let health = wisp.invoke("GET", "/healthz", "").await;
    assert_eq!(health.status, StatusCode::OK);
}
