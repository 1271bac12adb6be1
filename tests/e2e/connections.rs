//! Client connections that do nothing: they are closed within their
//! timeouts and, however many there are, never lock others out.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wisp_e2e::Wisp;
use wisp_function_artifacts as artifacts;

/// Connections held open by the test: more than the server's cap (half of
/// its 256 file descriptors) and more than its descriptor limit.
const HELD: usize = 300;

/// What a held connection sends before going silent.
fn opening(i: usize) -> &'static [u8] {
    match i % 3 {
        0 => b"",
        // Half an h2 preface: the protocol is never decided.
        1 => b"PRI * HTTP/2.0\r\n",
        // Half a request head.
        _ => b"GET /healthz HTTP/1.1\r\nHost: x\r\n",
    }
}

/// Whether the server has closed `stream`, waiting until `deadline`.
async fn closed_by(stream: &mut TcpStream, deadline: Instant) -> bool {
    let mut buf = Vec::new();
    let left = deadline.saturating_duration_since(Instant::now());
    // EOF (possibly after a 408) or a reset: closed; still waiting: not.
    tokio::time::timeout(left, stream.read_to_end(&mut buf))
        .await
        .is_ok()
}

#[tokio::test]
async fn silent_and_half_open_connections_neither_starve_the_gateway_nor_stay_open() {
    let wisp = Wisp::builder()
        .fd_limit(256)
        .arg("--header-read-timeout")
        .arg("3s")
        .arg("--idle-timeout")
        .arg("3s")
        .start()
        .unwrap();
    wisp.deploy("hello", artifacts::HELLO).await;
    let addr = wisp.addr.trim_start_matches("http://").to_owned();

    // A keep-alive connection that made one request and then idles.
    let mut idle = TcpStream::connect(&addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 12];
    idle.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");

    let mut held = Vec::with_capacity(HELD);
    for i in 0..HELD {
        let mut stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(&addr))
            .await
            .unwrap_or_else(|_| panic!("connection {i}: connect timed out"))
            .unwrap();
        // A refused or evicted connection may already be closed: ignore.
        let _ = stream.write_all(opening(i)).await;
        held.push(stream);
    }
    let started = Instant::now();

    // The gateway still answers new connections, at once: each evicts a
    // silent one. (Not the client's kept-alive one: the gateway may have
    // closed it to make room, and a POST is not sent again.) While the
    // evicted ones close (up to a second), a few more than the cap may be
    // open; past that slack a new connection is closed on arrival, and the
    // next try gets in.
    let call = async |method: Method, path: &str| loop {
        let fresh = wisp_e2e::Client::new(&wisp.addr, None);
        match fresh
            .call(method.clone(), path, HeaderMap::new(), Bytes::new())
            .await
        {
            Ok(answer) => return answer,
            Err(e) => {
                eprintln!("{method} {path}: {e}; trying again");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let health = tokio::time::timeout(Duration::from_secs(2), call(Method::GET, "/healthz"))
        .await
        .expect("/healthz did not answer within 2 s with the connections held");
    assert_eq!(health.status, StatusCode::OK);
    let hello = tokio::time::timeout(
        Duration::from_secs(10),
        call(Method::POST, "/function/hello?name=held"),
    )
    .await
    .expect("an invocation did not answer within 10 s with the connections held");
    assert_eq!(hello.status, StatusCode::OK, "{}", hello.text());

    // Every silent connection is closed within the 3 s timeout (plus the
    // watchdog's slack and a loaded machine's).
    let deadline = started + Duration::from_secs(10);
    for (i, stream) in held.iter_mut().enumerate() {
        assert!(
            closed_by(stream, deadline).await,
            "connection {i} (sent {:?}) was still open after 10 s",
            String::from_utf8_lossy(opening(i))
        );
    }
    assert!(
        closed_by(&mut idle, deadline).await,
        "the idle keep-alive connection was still open after 10 s"
    );
    let metrics = wisp.metrics().await;
    for reason in ["idle", "evicted"] {
        let zero = format!("wisp_http_connections_closed_total{{reason=\"{reason}\"}} 0\n");
        assert!(
            !metrics.contains(&zero),
            "no {reason} closes counted: {metrics}"
        );
    }
}

#[tokio::test]
async fn a_full_cap_of_busy_connections_refuses_newcomers() {
    let wisp = Wisp::builder()
        .arg("--max-connections")
        .arg("2")
        .start()
        .unwrap();
    wisp.deploy_slow("slow", "2", &[]);
    let addr = wisp.addr.trim_start_matches("http://").to_owned();
    let mut busy = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        stream
            .write_all(b"GET /function/slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        busy.push(stream);
    }
    // Both requests are in flight before the newcomer arrives.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut newcomer = TcpStream::connect(&addr).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(1), newcomer.read_to_end(&mut answer))
        .await
        .expect("the newcomer was not closed at once")
        .ok();
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    // The busy ones are served in full.
    for mut stream in busy {
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.unwrap();
        assert!(
            answer.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&answer)
        );
    }
    let metrics = wisp.metrics().await;
    assert!(
        metrics.contains("wisp_http_connections_refused_total 1"),
        "{metrics}"
    );
}
