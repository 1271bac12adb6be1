//! `wasi:http/proxy` components: request parts in, response parts out,
//! streamed both ways, over HTTP/1.1 and h2.

use bytes::Bytes;
use futures::SinkExt;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use wisp_e2e::{Wisp, artifacts};

#[tokio::test]
async fn hello_sees_method_path_query_body_and_env() {
    let wisp = Wisp::start();
    wisp.deploy_with("hello", artifacts::HELLO, |d| {
        d.env_vars = Some([("GREETING".to_owned(), "Howdy".to_owned())].into());
    })
    .await
    .unwrap();
    let answer = wisp
        .invoke("PUT", "/function/hello/a/b?name=ann&x=1", "the body")
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    let text = answer.text();
    assert!(text.starts_with("Howdy, ann!"), "{text}");
    assert!(text.contains("method: PUT\n"), "{text}");
    assert!(text.contains("path: /a/b\n"), "{text}");
    assert!(text.contains("query: name=ann&x=1\n"), "{text}");
    assert!(text.contains("body: the body\n"), "{text}");
    assert_eq!(answer.headers["content-type"], "text/plain; charset=utf-8");

    let root = wisp.invoke("GET", "/function/hello", "").await;
    assert!(root.text().contains("path: /\n"), "{}", root.text());
}

#[tokio::test]
async fn headers_reach_the_guest_and_status_comes_back() {
    let wisp = Wisp::start();
    wisp.deploy("misbehave", artifacts::MISBEHAVE).await;
    let mut headers = http::HeaderMap::new();
    headers.insert("x-custom", "value-1".parse().unwrap());
    let answer = wisp
        .client
        .call(
            Method::GET,
            "/function/misbehave/headers",
            headers,
            Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    assert!(
        answer.text().contains("x-custom: value-1"),
        "{}",
        answer.text()
    );
    assert!(
        answer.text().contains("x-forwarded-for: 127.0.0.1"),
        "{}",
        answer.text()
    );
    let missing = wisp
        .invoke("GET", "/function/misbehave/no-such-thing", "")
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn large_bodies_round_trip() {
    let wisp = Wisp::start();
    wisp.deploy("hello", artifacts::HELLO).await;
    let body: String = (0..5 * 1024 * 1024)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let answer = wisp.invoke("POST", "/function/hello", &body).await;
    assert_eq!(answer.status, StatusCode::OK);
    let text = answer.text();
    let echoed = text.split_once("body: ").unwrap().1;
    assert_eq!(echoed.len(), body.len() + 1);
    assert!(echoed.starts_with(&body[..1000]) && echoed.trim_end() == body);
}

#[tokio::test]
async fn response_streams_before_the_guest_finishes() {
    let wisp = Wisp::start();
    wisp.deploy("misbehave", artifacts::MISBEHAVE).await;
    let response = wisp
        .stream("/function/misbehave/stream?chunks=3&ms=400")
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, "chunk 0\n", "the first chunk arrives on its own");
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(rest, "chunk 1\nchunk 2\n");
}

#[tokio::test]
async fn request_streams_into_the_guest() {
    let wisp = Wisp::start();
    wisp.deploy("hello", artifacts::HELLO).await;
    let (mut tx, rx) = futures::channel::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
    let body = StreamBody::new(rx);
    let client = HyperClient::builder(TokioExecutor::new()).build_http();
    let request = Request::post(format!("{}/function/hello", wisp.addr))
        .body(body)
        .unwrap();
    tx.send(Ok(Frame::data(Bytes::from_static(b"first-part "))))
        .await
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    // The guest echoes the first part while the client still holds the rest.
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("first-part") {
        let frame = body.frame().await.expect("more body").unwrap();
        seen.extend_from_slice(&frame.into_data().unwrap_or_default());
    }
    tx.send(Ok(Frame::data(Bytes::from_static(b"second-part"))))
        .await
        .unwrap();
    drop(tx);
    let rest = body.collect().await.unwrap().to_bytes();
    seen.extend_from_slice(&rest);
    assert!(String::from_utf8_lossy(&seen).ends_with("first-part second-part\n"));
}

#[tokio::test]
async fn http2_prior_knowledge_works() {
    let wisp = Wisp::start();
    wisp.deploy("hello", artifacts::HELLO).await;
    let client = HyperClient::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Full<Bytes>>();
    let request = Request::post(format!("{}/function/hello/h2?name=h2", wisp.addr))
        .body(http_body_util::Full::new(Bytes::from_static(b"over h2")))
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.status(), StatusCode::OK);
    let text = String::from_utf8(
        response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    assert!(
        text.contains("Hello, h2!") && text.contains("path: /h2") && text.contains("body: over h2"),
        "{text}"
    );
}

#[tokio::test]
async fn first_request_reports_a_cold_start() {
    let wisp = Wisp::start();
    wisp.deploy("hello", artifacts::HELLO).await;
    let first = wisp.invoke("GET", "/function/hello", "").await;
    assert!(
        first.headers["server-timing"]
            .to_str()
            .unwrap()
            .starts_with("cold")
    );
    let second = wisp.invoke("GET", "/function/hello", "").await;
    assert_eq!(second.headers["server-timing"], "warm");
}
