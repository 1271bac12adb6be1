//! Misbehaving guests are contained: the caller gets a clear 4xx/5xx, the
//! server keeps serving.

use bytes::Bytes;
use futures::SinkExt;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use wisp_e2e::{Wisp, artifacts};

async fn misbehave(wisp: &Wisp) {
    wisp.deploy_with("misbehave", artifacts::MISBEHAVE, |d| {
        d.timeout = Some("1s".into());
        d.limits = Some(wisp::api::FunctionResources {
            memory: Some("64Mi".into()),
            ..Default::default()
        });
        d.max_body_size = Some("1Ki".into());
    })
    .await
    .unwrap();
}

async fn still_serves(wisp: &Wisp) {
    let ok = wisp
        .invoke("GET", "/function/misbehave/sleep?ms=1", "")
        .await;
    assert_eq!(
        ok.status,
        StatusCode::OK,
        "server no longer serves: {}",
        ok.text()
    );
}

#[tokio::test]
async fn a_spinning_guest_is_stopped_at_its_timeout() {
    let wisp = Wisp::start();
    misbehave(&wisp).await;
    let answer = wisp.invoke("GET", "/function/misbehave/loop", "").await;
    assert_eq!(
        answer.status,
        StatusCode::GATEWAY_TIMEOUT,
        "{}",
        answer.text()
    );
    assert!(
        answer.text().contains("misbehave") && answer.text().contains("1s"),
        "{}",
        answer.text()
    );
    let slow = wisp
        .invoke("GET", "/function/misbehave/sleep?ms=3000", "")
        .await;
    assert_eq!(slow.status, StatusCode::GATEWAY_TIMEOUT);
    still_serves(&wisp).await;
}

#[tokio::test]
async fn a_memory_hungry_guest_fails_cleanly() {
    let wisp = Wisp::start();
    misbehave(&wisp).await;
    let small = wisp
        .invoke("GET", "/function/misbehave/alloc?mb=8", "")
        .await;
    assert_eq!(small.status, StatusCode::OK, "{}", small.text());
    let big = wisp
        .invoke("GET", "/function/misbehave/alloc?mb=200", "")
        .await;
    assert_eq!(big.status, StatusCode::BAD_GATEWAY, "{}", big.text());
    assert!(big.text().contains("out of memory"), "{}", big.text());
    still_serves(&wisp).await;
}

#[tokio::test]
async fn a_trap_is_a_500_with_details_only_in_the_log() {
    let wisp = Wisp::start();
    misbehave(&wisp).await;
    let answer = wisp.invoke("GET", "/function/misbehave/trap", "").await;
    assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        answer.text().contains("function misbehave failed"),
        "{}",
        answer.text()
    );
    assert!(
        !answer.text().contains("asked to trap"),
        "trap details leaked: {}",
        answer.text()
    );
    // The panic message reaches the server log (guest stderr and the trap).
    let log = wisp.log();
    assert!(log.contains("misbehave was asked to trap"), "{log}");
    still_serves(&wisp).await;
}

#[tokio::test]
async fn a_guest_that_never_responds_is_a_502() {
    let wisp = Wisp::start();
    misbehave(&wisp).await;
    let answer = wisp.invoke("GET", "/function/misbehave/silent", "").await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    assert!(
        answer.text().contains("without setting a response"),
        "{}",
        answer.text()
    );
}

#[tokio::test]
async fn oversized_bodies_are_413_declared_or_streamed() {
    let wisp = Wisp::start();
    misbehave(&wisp).await;
    wisp.deploy_with("cgi", artifacts::CGI_ECHO, |d| {
        d.max_body_size = Some("1Ki".into())
    })
    .await
    .unwrap();
    let big = "x".repeat(4096);
    for path in ["/function/misbehave/headers", "/function/cgi"] {
        let declared = wisp.invoke("POST", path, &big).await;
        assert_eq!(
            declared.status,
            StatusCode::PAYLOAD_TOO_LARGE,
            "{path}: {}",
            declared.text()
        );
        assert!(declared.text().contains("1024"), "{}", declared.text());
    }
    // Declared past the limit and sent whole: the gateway answers before
    // reading the body, and the client, still sending it, gets the 413,
    // not a reset connection.
    let huge = "x".repeat(8 << 20);
    for _ in 0..3 {
        let declared = wisp.invoke("POST", "/function/cgi", &huge).await;
        assert_eq!(declared.status, StatusCode::PAYLOAD_TOO_LARGE);
    }
    // Chunked, without Content-Length: caught while streaming.
    let (mut tx, rx) = futures::channel::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(8);
    let client = HyperClient::builder(TokioExecutor::new()).build_http();
    let request = Request::post(format!("{}/function/cgi", wisp.addr))
        .body(StreamBody::new(rx))
        .unwrap();
    tokio::spawn(async move {
        for _ in 0..4 {
            let _ = tx
                .send(Ok(Frame::data(Bytes::from(vec![b'y'; 1000]))))
                .await;
        }
    });
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let _ = response.into_body().collect().await;
    let small = wisp.invoke("POST", "/function/cgi", "small").await;
    assert_eq!(small.status, StatusCode::OK);
}

#[tokio::test]
async fn outbound_http_is_denied_unless_allowed() {
    let wisp = Wisp::start();
    misbehave(&wisp).await;
    // Something that would answer if the request were let through: wisp itself.
    let target = format!("{}/healthz", wisp.addr);
    let denied = wisp
        .invoke(
            "GET",
            &format!("/function/misbehave/fetch?url={target}"),
            "",
        )
        .await;
    assert!(
        denied.text().contains("HttpRequestDenied"),
        "{}",
        denied.text()
    );

    wisp.deploy_with("caller", artifacts::MISBEHAVE, |d| {
        d.allow_outbound = Some(vec!["127.0.0.1".into()]);
    })
    .await
    .unwrap();
    let allowed = wisp
        .invoke("GET", &format!("/function/caller/fetch?url={target}"), "")
        .await;
    assert_eq!(allowed.text(), "status: 200", "{}", allowed.text());
}

/// Issue 11, finding 13: with `allow-outbound: ["*"]` a guest fetched the
/// gateway's own `/metrics`. `*` is the network, not this machine: its
/// loopback, link-local and own addresses take an entry naming the host.
#[tokio::test]
async fn a_wildcard_grant_does_not_reach_this_machine() {
    let wisp = Wisp::start();
    wisp.deploy_with("anywhere", artifacts::MISBEHAVE, |d| {
        d.allow_outbound = Some(vec!["*".into()]);
    })
    .await
    .unwrap();
    let port = wisp.addr.rsplit_once(':').unwrap().1.to_owned();
    for target in [
        format!("http://127.0.0.1:{port}/metrics"),
        format!("http://localhost:{port}/metrics"),
        format!("http://[::ffff:127.0.0.1]:{port}/metrics"),
        format!("http://0.0.0.0:{port}/metrics"),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
    ] {
        let denied = wisp
            .invoke("GET", &format!("/function/anywhere/fetch?url={target}"), "")
            .await;
        assert!(
            denied.text().contains("HttpRequestDenied"),
            "{target}: {}",
            denied.text()
        );
    }
    // Named, the same host is reachable.
    wisp.deploy_with("named", artifacts::MISBEHAVE, |d| {
        d.allow_outbound = Some(vec!["*".into(), "localhost".into()]);
    })
    .await
    .unwrap();
    let allowed = wisp
        .invoke(
            "GET",
            &format!("/function/named/fetch?url=http://localhost:{port}/healthz"),
            "",
        )
        .await;
    assert_eq!(allowed.text(), "status: 200", "{}", allowed.text());
}

#[tokio::test]
async fn many_concurrent_requests_all_succeed() {
    let wisp = Wisp::start();
    wisp.deploy("hello", artifacts::HELLO).await;
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            wisp.spawn_invoke(
                "POST",
                &format!("/function/hello?name=n{i}"),
                &format!("body {i}"),
            )
        })
        .collect();
    for (i, task) in tasks.into_iter().enumerate() {
        let answer = task.await.unwrap();
        assert_eq!(answer.status, StatusCode::OK);
        assert!(
            answer.text().contains(&format!("Hello, n{i}!"))
                && answer.text().contains(&format!("body: body {i}\n"))
        );
    }
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let wisp = Wisp::builder()
        .arg("--header-read-timeout")
        .arg("1s")
        .start()
        .unwrap();
    let addr = wisp.addr.trim_start_matches("http://").to_owned();
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    // The server closes the connection (possibly after a 408) instead of waiting forever.
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        slow.read_to_end(&mut buf),
    )
    .await;
    assert!(read.is_ok(), "the connection was still open after 10 s");
    let health = wisp.invoke("GET", "/healthz", "").await;
    assert_eq!(health.status, StatusCode::OK);
}

/// Reads a streamed response: its first chunk, then how the rest ended
/// (`Ok` for a clean end, `Err` for a cut one) and when.
async fn first_chunk_then_end(
    response: http::Response<hyper::body::Incoming>,
) -> (Bytes, Result<Bytes, hyper::Error>, std::time::Instant) {
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    let rest = tokio::time::timeout(std::time::Duration::from_secs(15), body.collect())
        .await
        .expect("the body was still streaming 15 s after its 2 s deadline")
        .map(|c| c.to_bytes());
    (first, rest, std::time::Instant::now())
}

#[tokio::test]
async fn a_guest_still_streaming_at_its_deadline_is_cut_off_and_its_slot_freed() {
    // Four instance slots, all taken by guests pausing 45 s mid-body.
    let wisp = Wisp::builder()
        .arg("--max-wasm-instances")
        .arg("4")
        .start()
        .unwrap();
    wisp.deploy_with("streamer", artifacts::MISBEHAVE, |d| {
        d.timeout = Some("2s".into());
    })
    .await
    .unwrap();
    wisp.deploy("hello", artifacts::HELLO).await;
    let started = std::time::Instant::now();
    let streams: Vec<_> = (0..4)
        .map(|_| {
            let client = wisp.client.clone();
            tokio::spawn(async move {
                let response = client
                    .send(
                        http::Method::GET,
                        "/function/streamer/stream?chunks=2&ms=45000",
                        Default::default(),
                        wisp_runner::backend::empty_body(),
                    )
                    .await
                    .unwrap();
                first_chunk_then_end(response).await
            })
        })
        .collect();
    for stream in streams {
        let (first, rest, ended) = stream.await.unwrap();
        assert_eq!(first, "chunk 0\n");
        assert!(
            rest.is_err(),
            "a body cut at the deadline ended cleanly: {rest:?}"
        );
        assert!(ended - started < std::time::Duration::from_secs(10));
    }
    // Their slots are free again.
    let hello = wisp.invoke("GET", "/function/hello", "").await;
    assert_eq!(hello.status, StatusCode::OK, "{}", hello.text());
}

#[tokio::test]
async fn a_container_still_streaming_at_its_deadline_is_cut_off_and_replaced() {
    let wisp = Wisp::start();
    let rootfs = wisp_e2e::busybox_rootfs();
    wisp.deploy_httpd_script(
        "streamer",
        rootfs.path(),
        "stream",
        "printf 'Content-Type: text/plain\\r\\n\\r\\nfirst\\n'\nsleep 45\necho second",
        &["--timeout", "2s", "--max", "1", "--concurrency", "1"],
    );
    let started = std::time::Instant::now();
    let response = wisp.stream("/function/streamer/cgi-bin/stream").await;
    let (first, rest, ended) = first_chunk_then_end(response).await;
    assert_eq!(first, "first\n");
    assert!(
        rest.is_err(),
        "a body cut at the deadline ended cleanly: {rest:?}"
    );
    assert!(ended - started < std::time::Duration::from_secs(10));
    // The sandbox was replaced: the next request gets a fresh one.
    let again = wisp.stream("/function/streamer/cgi-bin/stream").await;
    let (first, _, _) = first_chunk_then_end(again).await;
    assert_eq!(first, "first\n");
    let metrics = wisp.metrics().await;
    assert!(
        metrics
            .contains(r#"wisp_instance_stops_total{function_name="streamer",reason="timeout"} 2"#),
        "{metrics}"
    );
}
