//! Revisions and rollback: every deploy is a revision, the newest are kept
//! with what they run, and a rollback deploys one again.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use wisp_e2e::registry::TestRegistry;
use wisp_e2e::{Wisp, artifacts, eventually};

async fn deploy_misbehave(wisp: &Wisp, version: &str) {
    wisp.deploy_with("m", artifacts::MISBEHAVE, |d| {
        d.env_vars = Some([("VERSION".to_owned(), version.to_owned())].into());
    })
    .await
    .unwrap();
}

async fn version(wisp: &Wisp) -> String {
    wisp.invoke("GET", "/function/m/env?name=VERSION", "")
        .await
        .text()
}

async fn rollback(wisp: &Wisp, body: &str) -> (StatusCode, String) {
    let answer = wisp
        .client
        .call(
            Method::POST,
            "/system/rollback/m",
            HeaderMap::new(),
            Bytes::from(body.to_owned()),
        )
        .await
        .unwrap();
    (answer.status, answer.text())
}

#[tokio::test]
async fn every_deploy_is_a_revision_and_a_rollback_deploys_one_again() {
    let wisp = Wisp::builder()
        .arg("--revision-history")
        .arg("3")
        .start()
        .unwrap();
    for v in ["one", "two", "three"] {
        deploy_misbehave(&wisp, v).await;
    }
    assert_eq!(version(&wisp).await, "three");
    let status = wisp.client.function("m").await.unwrap();
    assert_eq!(status.revision, Some(3));
    // Scaling is tuned live: not a revision.
    wisp.cli(&["scale", "m", "--max", "3"]).expect_success();
    let history = wisp.cli(&["history", "m"]).expect_success();
    let lines: Vec<&str> = history.lines().collect();
    assert_eq!(lines.len(), 4, "{history}");
    assert!(
        lines[1].starts_with("1 ") && lines[3].starts_with("3 "),
        "{history}"
    );
    assert!(lines[3].ends_with("(current)"), "{history}");

    // A request in flight finishes on the version it started on.
    let slow = wisp.spawn_invoke("GET", "/function/m/sleep?ms=1500", "");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let out = wisp.cli(&["rollback", "m"]).expect_success();
    assert!(
        out.contains("back to revision 2, deployed as revision 4"),
        "{out}"
    );
    assert_eq!(version(&wisp).await, "two");
    let slow = slow.await.unwrap();
    assert_eq!(
        (slow.status, slow.text()),
        (StatusCode::OK, "slept\n".into())
    );
    let status = wisp.client.function("m").await.unwrap();
    assert_eq!(status.revision, Some(4));
    assert_eq!(status.scaling.max_instances, 3, "the scaling stays");

    wisp.cli(&["rollback", "m", "--to", "3"]).expect_success();
    assert_eq!(version(&wisp).await, "three");

    // Three are kept (--revision-history 3): 3, 4 and 5.
    let (status, text) = rollback(&wisp, r#"{"revision":1}"#).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{text}");
    assert!(text.contains("kept: 3, 4, 5"), "{text}");
    let (status, text) = rollback(&wisp, r#"{"revision":5}"#).await;
    assert_eq!(status, StatusCode::CONFLICT, "{text}");
    let (status, text) = rollback(&wisp, r#"{"revision":"x"}"#).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    let (status, _) = wisp
        .client
        .call(
            Method::POST,
            "/system/rollback/nope",
            HeaderMap::new(),
            Bytes::new(),
        )
        .await
        .map(|a| (a.status, a.text()))
        .unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND);

    // A deleted name starts over.
    wisp.client.delete("m").await.unwrap();
    deploy_misbehave(&wisp, "again").await;
    assert_eq!(wisp.client.function("m").await.unwrap().revision, Some(1));
}

#[tokio::test]
async fn prunes_spare_kept_revisions_and_a_rollback_to_a_removed_image_says_so() {
    let registry = TestRegistry::open();
    registry.push(
        Path::new(artifacts::PING_DOCKER_ARCHIVE),
        "revisions/ping:1",
    );
    let reference = registry.reference("revisions/ping:1");
    let wisp = Wisp::builder()
        .arg("--insecure-registry")
        .arg(&registry.host)
        .arg("--prune-grace")
        .arg("0s")
        .start()
        .unwrap();
    let pong = async || {
        let got = wisp.invoke("GET", "/function/p/ping", "").await;
        (got.status, got.text().trim().to_owned())
    };
    wisp.cli(&["deploy", "p", "--image", &reference])
        .expect_success();
    assert_eq!(pong().await, (StatusCode::OK, "pong".into()));
    wisp.deploy("p", artifacts::MISBEHAVE).await;

    // Revision 1's image is no function's now, but a rollback may want it.
    wisp.cli(&["prune"]).expect_success();
    wisp.cli(&["rollback", "p"]).expect_success();
    assert_eq!(pong().await, (StatusCode::OK, "pong".into()));

    // Removed by hand, it cannot come back.
    wisp.deploy("p", artifacts::MISBEHAVE).await;
    // (Once the ping version has drained: until then it is in use.)
    eventually(
        "the image to be removed",
        Duration::from_secs(10),
        async || wisp.cli(&["rmi", &reference]).success,
    )
    .await;
    let refused = wisp.cli(&["rollback", "p", "--to", "3"]).expect_failure();
    assert!(
        refused.contains("revision 3 of p cannot be restored")
            && refused.contains(&format!("(pulled from {reference}) is gone")),
        "{refused}"
    );
    assert_eq!(wisp.client.function("p").await.unwrap().revision, Some(4));
}
