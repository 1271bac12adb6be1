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
