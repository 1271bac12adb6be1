//! Asynchronous invocations: accepted with 202, run, retried as the
//! function's annotations say, called back; kept across a crash; refused
//! with a clear error when they cannot be taken.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt as _;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::sync::mpsc;
use wisp_e2e::{Wisp, artifacts, eventually};

/// A callback as the receiver got it.
pub(crate) struct Received {
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

/// An HTTP server on loopback that takes callbacks.
pub(crate) struct Receiver {
    addr: SocketAddr,
    pub(crate) got: mpsc::UnboundedReceiver<Received>,
}

impl Receiver {
    pub(crate) async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, got) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let tx = tx.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            let tx = tx.clone();
                            async move {
                                let (parts, body) = req.into_parts();
                                let body = body
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes())
                                    .unwrap_or_default();
                                let _ = tx.send(Received {
                                    headers: parts.headers,
                                    body,
                                });
                                Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Receiver { addr, got }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}/done", self.addr)
    }

    pub(crate) async fn next(&mut self) -> Received {
        tokio::time::timeout(Duration::from_secs(20), self.got.recv())
            .await
            .expect("a callback within 20 s")
            .expect("the receiver runs")
    }
}

pub(crate) async fn post_async(
    wisp: &Wisp,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (StatusCode, HeaderMap, String) {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        map.insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    let answer = wisp
        .client
        .call(Method::POST, path, map, Bytes::from(body.to_owned()))
        .await
        .unwrap();
    let text = answer.text();
    (answer.status, answer.headers, text)
}

pub(crate) fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

#[tokio::test]
async fn async_calls_run_retry_and_call_back() {
    let wisp = Wisp::builder()
        .arg("--allow-local-callbacks")
        .start()
        .unwrap();
    let mut receiver = Receiver::start().await;
    wisp.deploy("hello", artifacts::HELLO).await;
    wisp.deploy_with("flaky", artifacts::MISBEHAVE, |d| {
        d.annotations = Some(
            [
                ("com.openfaas.retry.attempts", "3"),
                ("com.openfaas.retry.codes", "500"),
                ("com.openfaas.retry.min_wait", "50ms"),
                ("com.openfaas.retry.max_wait", "100ms"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        );
    })
    .await
    .unwrap();

    let sync = wisp
        .invoke("POST", "/function/hello/some/path?name=async", "payload")
        .await
        .text();
    let (status, headers, _) = post_async(
        &wisp,
        "/async-function/hello/some/path?name=async",
        &[("x-callback-url", &receiver.url()), ("x-call-id", "call-1")],
        "payload",
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(header(&headers, "x-call-id"), "call-1");
    assert!(header(&headers, "x-start-time").parse::<u64>().is_ok());
    let back = receiver.next().await;
    assert_eq!(header(&back.headers, "x-function-status"), "200");
    assert_eq!(header(&back.headers, "x-function-name"), "hello");
    assert_eq!(header(&back.headers, "x-call-id"), "call-1");
    assert!(
        header(&back.headers, "x-duration-seconds")
            .parse::<f64>()
            .is_ok()
    );
    assert_eq!(
        String::from_utf8_lossy(&back.body),
        sync,
        "the function's own response"
    );

    // Retried as the annotations say: three runs, then the callback.
    let (status, headers, _) = post_async(
        &wisp,
        "/async-function/flaky/trap",
        &[("x-callback-url", &receiver.url())],
        "",
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let id = header(&headers, "x-call-id").to_owned();
    assert_eq!(id.len(), 36, "a new UUID: {id}");
    let back = receiver.next().await;
    assert_eq!(header(&back.headers, "x-function-status"), "500");
    assert_eq!(header(&back.headers, "x-call-id"), id);
    let metrics = wisp.metrics().await;
    for series in [
        r#"wisp_async_retries_total{function_name="flaky"} 2"#,
        r#"wisp_async_calls_total{function_name="flaky",outcome="failed"} 1"#,
        r#"wisp_async_calls_total{function_name="hello",outcome="succeeded"} 1"#,
        r#"wisp_async_callbacks_total{function_name="hello",outcome="delivered"} 1"#,
        r#"wisp_async_queue_depth{function_name="hello"} 0"#,
    ] {
        assert!(metrics.contains(series), "{series} in\n{metrics}");
    }

    // OpenFaaS's `name.namespace` form, in wisp's one namespace.
    let qualified = wisp
        .invoke(
            "POST",
            "/function/hello.openfaas-fn/some/path?name=async",
            "payload",
        )
        .await;
    assert_eq!(
        (qualified.status, qualified.text()),
        (StatusCode::OK, sync.clone())
    );
    let other = wisp.invoke("POST", "/function/hello.team-a", "").await;
    assert_eq!(other.status, StatusCode::NOT_FOUND);
    let (status, _, _) = post_async(
        &wisp,
        "/async-function/hello.openfaas-fn",
        &[("x-callback-url", &receiver.url())],
        "",
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let back = receiver.next().await;
    assert_eq!(header(&back.headers, "x-function-name"), "hello");

    // From the CLI, without a callback.
    let out = wisp
        .cli(&["invoke", "hello", "--async", "-d", "x"])
        .expect_success();
    assert!(out.starts_with("queued call "), "{out}");
    eventually(
        "the CLI's call to run",
        Duration::from_secs(10),
        async || {
            wisp.metrics()
                .await
                .contains(r#"wisp_async_calls_total{function_name="hello",outcome="succeeded"} 3"#)
        },
    )
    .await;
}

#[tokio::test]
async fn bad_async_calls_get_clear_errors_and_callbacks_stay_off_the_host() {
    // No --allow-local-callbacks: the host is off limits.
    let wisp = Wisp::builder()
        .arg("--async-queue-max")
        .arg("2")
        .start()
        .unwrap();
    wisp.deploy_with("slow", artifacts::MISBEHAVE, |d| {
        d.max_body_size = Some("1Ki".into());
        d.scaling.max_instances = Some(1);
        d.scaling.concurrency = Some(1);
    })
    .await
    .unwrap();
    for url in [
        "http://127.0.0.1:9/x",
        "http://localhost:9/x",
        "http://[::1]:9/x",
        "http://169.254.169.254/latest/meta-data",
    ] {
        let (status, _, text) = post_async(
            &wisp,
            "/async-function/slow/sleep",
            &[("x-callback-url", url)],
            "",
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{url}: {text}");
        assert!(text.contains("--allow-local-callbacks"), "{text}");
    }
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], String, StatusCode);
    let cases: &[Case<'_>] = &[
        (
            "/async-function/nope",
            &[],
            String::new(),
            StatusCode::NOT_FOUND,
        ),
        (
            "/async-function/slow",
            &[("x-callback-url", "not a url")],
            String::new(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/async-function/slow",
            &[("x-callback-url", "ftp://example.com/")],
            String::new(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/async-function/slow",
            &[],
            "x".repeat(2048),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
    ];
    for (path, headers, body, expected) in cases {
        let (status, _, text) = post_async(&wisp, path, headers, body).await;
        assert_eq!(status, *expected, "{path} {headers:?}: {text}");
    }
    // The queue holds two (one running, one waiting): a third is refused.
    for _ in 0..2 {
        let (status, _, _) = post_async(&wisp, "/async-function/slow/sleep?ms=3000", &[], "").await;
        assert_eq!(status, StatusCode::ACCEPTED);
    }
    let (status, _, text) = post_async(&wisp, "/async-function/slow/sleep", &[], "").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{text}");
    assert!(text.contains("--async-queue-max"), "{text}");
    // A synchronous request is not starved by them for long: it waits
    // for the running call at most (max 1, concurrency 1).
    let sync = wisp.invoke("GET", "/function/slow/env?name=X", "").await;
    assert_eq!(sync.status, StatusCode::OK, "{}", sync.text());
}

/// A server on `dir` whose callbacks may reach the test's receiver.
fn calling_back(dir: &std::path::Path) -> Wisp {
    Wisp::builder()
        .data_dir(dir)
        .arg("--allow-local-callbacks")
        .start()
        .unwrap()
}

/// `one`: misbehave taking one request at a time.
async fn deploy_one_at_a_time(wisp: &Wisp) {
    wisp.deploy_with("one", artifacts::MISBEHAVE, |d| {
        d.scaling.max_instances = Some(1);
        d.scaling.concurrency = Some(1);
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn accepted_calls_survive_a_crash_and_each_runs_once() {
    const CALLS: usize = 1000;
    let dir = tempfile::tempdir().unwrap();
    let start = || calling_back(dir.path());
    let mut wisp = start();
    let mut receiver = Receiver::start().await;
    // One request at a time, and a synchronous one holds it while the
    // calls are accepted: the first call waits for it in the pool, the
    // rest in the queue, and none has run when the server dies. (A call
    // running at a crash runs again after it: its outcome was unknown.)
    deploy_one_at_a_time(&wisp).await;
    let _blocker = wisp.spawn_invoke("GET", "/function/one/sleep?ms=20000", "");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let url = receiver.url();
    let accepted = futures::stream::iter(0..CALLS)
        .map(|i| {
            let (wisp, url) = (&wisp, url.clone());
            async move {
                let id = format!("call-{i}");
                let (status, _, text) = post_async(
                    wisp,
                    "/async-function/one/sleep?ms=5",
                    &[("x-callback-url", &url), ("x-call-id", &id)],
                    "",
                )
                .await;
                assert_eq!(status, StatusCode::ACCEPTED, "{text}");
            }
        })
        .buffer_unordered(16);
    accepted.collect::<Vec<()>>().await;
    wisp.kill();
    let mut seen: HashMap<String, u32> = HashMap::new();
    let count = |seen: &mut HashMap<String, u32>, back: Received| {
        assert_eq!(header(&back.headers, "x-function-status"), "200");
        *seen
            .entry(header(&back.headers, "x-call-id").to_owned())
            .or_default() += 1;
    };
    while let Ok(back) = receiver.got.try_recv() {
        count(&mut seen, back);
    }
    assert!(seen.is_empty(), "calls ran before the crash: {seen:?}");
    let _wisp = start();
    while seen.len() < CALLS {
        let back = receiver.next().await;
        count(&mut seen, back);
    }
    // A little longer, for any repeat still on its way.
    tokio::time::sleep(Duration::from_millis(500)).await;
    while let Ok(back) = receiver.got.try_recv() {
        count(&mut seen, back);
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "calls run twice: {twice:?}");
    assert_eq!(seen.len(), CALLS);
}

// Multi-threaded: the receiver must answer while the test waits for the
// server to exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_lets_running_calls_finish_and_keeps_the_waiting_ones() {
    let dir = tempfile::tempdir().unwrap();
    let start = || calling_back(dir.path());
    let mut wisp = start();
    let mut receiver = Receiver::start().await;
    deploy_one_at_a_time(&wisp).await;
    let url = receiver.url();
    for (id, path) in [
        ("running", "/async-function/one/sleep?ms=1500"),
        ("waiting", "/async-function/one/sleep?ms=10"),
    ] {
        let (status, _, text) = post_async(
            &wisp,
            path,
            &[("x-callback-url", &url), ("x-call-id", id)],
            "",
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{text}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    wisp.signal("TERM");
    let exited = tokio::task::block_in_place(|| wisp.wait(Duration::from_secs(20)));
    assert!(exited.unwrap().success());
    assert!(
        !wisp.log().contains("run again at the next start"),
        "{}",
        wisp.log()
    );

    // The next server runs only the waiting call; both are called back.
    let next = start();
    let mut back = Vec::new();
    for _ in 0..2 {
        let got = receiver.next().await;
        assert_eq!(header(&got.headers, "x-function-status"), "200");
        back.push(header(&got.headers, "x-call-id").to_owned());
    }
    back.sort();
    assert_eq!(back, ["running", "waiting"]);
    eventually(
        "the waiting call to be counted",
        Duration::from_secs(10),
        async || {
            next.metrics()
                .await
                .contains(r#"wisp_async_calls_total{function_name="one",outcome="succeeded"} 1"#)
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        next.metrics()
            .await
            .contains(r#"wisp_async_calls_total{function_name="one",outcome="succeeded"} 1"#),
        "the running call ran again after the restart"
    );
}

#[tokio::test]
async fn the_queues_byte_budget_is_given_back_as_calls_finish() {
    let wisp = Wisp::builder()
        .arg("--allow-local-callbacks")
        .arg("--async-queue-max-bytes")
        .arg("100")
        .start()
        .unwrap();
    let mut receiver = Receiver::start().await;
    wisp.deploy("hello", artifacts::HELLO).await;
    let body = "x".repeat(60);
    // Each fits alone; together they would not: the budget is what waits,
    // not what was ever taken.
    for i in 0..5 {
        let id = format!("budget-{i}");
        let (status, _, text) = post_async(
            &wisp,
            "/async-function/hello",
            &[("x-callback-url", &receiver.url()), ("x-call-id", &id)],
            &body,
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED, "call {i}: {text}");
        let back = receiver.next().await;
        assert_eq!(header(&back.headers, "x-call-id"), id);
    }
}
