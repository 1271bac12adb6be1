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

    // Follow: a line written after the request starts arrives on it.
    let response = wisp
        .stream("/system/logs?name=talk&tail=0&follow=true")
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
    assert!(!followed.contains("said one"), "tail=0 skips what was kept");

    let out = wisp.cli(&["logs", "talk", "--tail", "1"]).expect_success();
    assert!(out.trim().ends_with("stderr: said two"), "{out}");

    let unknown = wisp.invoke("GET", "/system/logs?name=nope", "").await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
}
