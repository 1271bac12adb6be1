//! The pool's policy with the real backends: scale from zero, shared cold
//! starts, the queue, idle teardown, pre-warming and live scaling.

use std::time::Duration;

use http::StatusCode;
use wisp_e2e::{Wisp, artifacts, eventually};

#[tokio::test]
async fn a_burst_of_first_requests_shares_the_instances_it_starts() {
    let wisp = Wisp::start();
    wisp.deploy_with("ping", artifacts::PING_DOCKER_ARCHIVE, |d| {
        d.scaling.concurrency = Some(4);
        d.scaling.max_instances = Some(10);
    })
    .await
    .unwrap();
    let calls: Vec<_> = (0..20)
        .map(|_| wisp.spawn_invoke("GET", "/function/ping/ping", ""))
        .collect();
    let mut cold = 0;
    for call in calls {
        let answer = call.await.unwrap();
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
        assert_eq!(answer.text(), "pong");
        if answer.headers["server-timing"]
            .to_str()
            .unwrap()
            .starts_with("cold")
        {
            cold += 1;
        }
    }
    let n = wisp.replicas("ping").await;
    assert!(n <= 5, "{n} instances for 20 requests at concurrency 4");
    assert!(cold >= 1);
    let text = wisp.metrics().await;
    assert!(
        text.contains(r#"wisp_cold_start_seconds_count{backend="container",function_name="ping"}"#),
        "{text}"
    );
    assert!(
        text.contains(r#"wisp_cold_start_phase_seconds_count{backend="container",phase="rootfs"}"#),
        "{text}"
    );
}

#[tokio::test]
async fn idle_instances_scale_to_zero_and_come_back_cold() {
    let wisp = Wisp::start();
    wisp.deploy_with("hello", artifacts::HELLO, |d| {
        d.scaling.idle_timeout = Some("300ms".into());
    })
    .await
    .unwrap();
    wisp.deploy_with("ping", artifacts::PING_DOCKER_ARCHIVE, |d| {
        d.scaling.idle_timeout = Some("300ms".into());
    })
    .await
    .unwrap();
    for (name, path) in [
        ("hello", "/function/hello/"),
        ("ping", "/function/ping/ping"),
    ] {
        let first = wisp.invoke("GET", path, "").await;
        assert_eq!(first.status, StatusCode::OK);
        assert_eq!(wisp.replicas(name).await, 1);
        eventually("scale to zero", Duration::from_secs(10), async || {
            wisp.replicas(name).await == 0
        })
        .await;
        let again = wisp.invoke("GET", path, "").await;
        assert_eq!(again.status, StatusCode::OK);
        assert!(
            again.headers["server-timing"]
                .to_str()
                .unwrap()
                .starts_with("cold"),
            "{name} starts again"
        );
    }
    let text = wisp.metrics().await;
    assert!(
        text.contains(r#"wisp_instance_stops_total{function_name="ping",reason="idle"} 1"#),
        "{text}"
    );
}

#[tokio::test]
async fn min_instances_are_pre_warmed_and_scaling_changes_live() {
    let wisp = Wisp::start();
    // OpenFaaS's label sets the minimum.
    wisp.deploy_with("ping", artifacts::PING_DOCKER_ARCHIVE, |d| {
        d.labels = Some([("com.openfaas.scale.min".to_owned(), "2".to_owned())].into());
    })
    .await
    .unwrap();
    eventually(
        "2 pre-warmed instances",
        Duration::from_secs(10),
        async || wisp.replicas("ping").await == 2,
    )
    .await;
    let first = wisp.invoke("GET", "/function/ping/ping", "").await;
    assert_eq!(
        first.headers["server-timing"], "warm",
        "the first request finds one"
    );
    let status = wisp.client.function("ping").await.unwrap();
    assert_eq!(status.scaling.min_instances, 2);

    // `wisp scale` changes it live, and it survives a restart.
    wisp.cli(&["scale", "ping", "--min", "0", "--idle-timeout", "200ms"])
        .expect_success();
    eventually("scale down to zero", Duration::from_secs(10), async || {
        wisp.replicas("ping").await == 0
    })
    .await;
    // OpenFaaS's scale-function call sets the minimum too.
    let answer = wisp
        .client
        .call(
            http::Method::POST,
            "/system/scale-function/ping",
            [(
                http::header::AUTHORIZATION,
                format!("Bearer {}", wisp.token).parse().unwrap(),
            )]
            .into_iter()
            .collect(),
            r#"{"serviceName":"ping","replicas":1}"#,
        )
        .await
        .unwrap();
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.text());
    eventually("one instance", Duration::from_secs(10), async || {
        wisp.replicas("ping").await == 1
    })
    .await;
}

#[tokio::test]
async fn past_max_requests_queue_and_a_full_queue_answers_429() {
    let wisp = Wisp::start();
    let one_runs_one_waits = ["--max", "1", "--concurrency", "1", "--queue-size", "1"];
    wisp.deploy_slow("slow", "1", &one_runs_one_waits);
    // The second call queues at 100 ms; the third comes once the queue
    // has stood 250 ms (a burst is absorbed, a standing queue is not).
    let mut calls = Vec::new();
    for pause in [0, 100, 300] {
        tokio::time::sleep(Duration::from_millis(pause)).await;
        calls.push(wisp.spawn_invoke("GET", "/function/slow/", ""));
    }
    let mut statuses = Vec::new();
    for call in calls {
        let answer = call.await.unwrap();
        if answer.status == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(answer.headers["retry-after"], "1");
        }
        statuses.push(answer.status.as_u16());
    }
    statuses.sort_unstable();
    assert_eq!(
        statuses,
        [200, 200, 429],
        "one runs, one queues, one is refused"
    );
}

/// A response whose body nobody reads (HEAD) still lets the guest run to
/// its end: its instance goes back for reuse, as after a GET.
#[tokio::test]
async fn a_reused_wasm_instance_survives_a_head_request() {
    let wisp = Wisp::start();
    wisp.deploy_with("reused", artifacts::MISBEHAVE, |d| {
        d.instance_reuse = Some(10);
    })
    .await
    .unwrap();
    let count = || async { wisp.invoke("GET", "/function/reused/count", "").await };
    assert_eq!(count().await.text(), "1\n");
    let head = wisp.invoke("HEAD", "/function/reused/count", "").await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.body.is_empty(), "no body for HEAD");
    // The guest may finish just after the headers went out.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(
        count().await.text(),
        "3\n",
        "the HEAD request ran on the same instance"
    );
}

#[tokio::test]
async fn wasm_instances_are_fresh_per_request_unless_reuse_is_asked_for() {
    let wisp = Wisp::start();
    wisp.deploy("fresh", artifacts::MISBEHAVE).await;
    wisp.deploy_with("reused", artifacts::MISBEHAVE, |d| {
        d.instance_reuse = Some(3);
    })
    .await
    .unwrap();
    let mut fresh = Vec::new();
    let mut reused = Vec::new();
    for _ in 0..6 {
        fresh.push(wisp.invoke("GET", "/function/fresh/count", "").await.text());
        reused.push(
            wisp.invoke("GET", "/function/reused/count", "")
                .await
                .text(),
        );
    }
    assert!(
        fresh.iter().all(|c| c == "1\n"),
        "no state survives: {fresh:?}"
    );
    assert_eq!(
        reused,
        ["1\n", "2\n", "3\n", "1\n", "2\n", "3\n"],
        "3 requests per instance"
    );

    // A trap ends a reused instance: the trap takes the idle instance (its
    // count at 1) and the next request gets a fresh one.
    assert_eq!(
        wisp.invoke("GET", "/function/reused/count", "")
            .await
            .text(),
        "1\n"
    );
    let trapped = wisp.invoke("GET", "/function/reused/trap", "").await;
    assert_eq!(trapped.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        wisp.invoke("GET", "/function/reused/count", "")
            .await
            .text(),
        "1\n"
    );

    // Only wasi:http components reuse instances.
    let err = wisp
        .deploy_with("cgi", artifacts::CGI_ECHO, |d| d.instance_reuse = Some(2))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("400"), "{err}");
}
