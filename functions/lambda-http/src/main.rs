//! `lambda-http`: an AWS Lambda function written with `lambda_http`, AWS's
//! HTTP adapter for Rust, nothing in it made for wisp. `lambda_http`
//! deserialises the event into an `http::Request` (it tries API Gateway
//! v1, v2, ALB and WebSocket shapes), so this function checks that what
//! wisp sends is the request the client made.
//!
//! Buffered (the default): answers 200 with JSON describing the request —
//! method, path, query parameters, the `x-*` headers, cookies, body (as
//! UTF-8 or its byte count) — and sets two cookies. `GET /status/N`
//! answers with status N.
//!
//! Streamed (`STREAM=1`): answers 201 with `x-streamed: yes` and a cookie,
//! then `chunk 0` … `chunk 4`, one line every 50 ms; `GET /fail` fails
//! after its first chunk.

use std::time::Duration;

use lambda_http::{Body, Error, Request, RequestExt, Response, service_fn};
use serde_json::{Map, Value, json};

async fn buffered(req: Request) -> Result<Response<Body>, Error> {
    if let Some(code) = req.uri().path().strip_prefix("/status/") {
        let code: u16 = code.parse().unwrap_or(400);
        return Ok(Response::builder()
            .status(code)
            .body(Body::Text(format!("status {code}")))?);
    }
    let query: Map<String, Value> = req
        .query_string_parameters()
        .iter()
        .map(|(k, v)| (k.to_owned(), json!(v)))
        .collect();
    let headers: Map<String, Value> = req
        .headers()
        .iter()
        .filter(|(name, _)| name.as_str().starts_with("x-"))
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                json!(String::from_utf8_lossy(value.as_bytes())),
            )
        })
        .collect();
    let cookies: Vec<String> = req
        .headers()
        .get_all("cookie")
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    let body = match req.body() {
        Body::Empty => json!(null),
        Body::Text(text) => json!(text),
        Body::Binary(bytes) => json!(format!("{} bytes", bytes.len())),
        _ => json!("?"),
    };
    let described = json!({
        "method": req.method().as_str(),
        "path": req.uri().path(),
        "query": query,
        "headers": headers,
        "cookies": cookies,
        "body": body,
    });
    Ok(Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .header("set-cookie", "one=1")
        .header("set-cookie", "two=2")
        .body(Body::Text(described.to_string()))?)
}

async fn streamed(
    req: Request,
) -> Result<Response<lambda_http::lambda_runtime::streaming::Body>, Error> {
    let fail = req.uri().path() == "/fail";
    let (mut tx, body) = lambda_http::lambda_runtime::streaming::channel();
    tokio::spawn(async move {
        for i in 0..5 {
            if tx.send_data(format!("chunk {i}\n").into()).await.is_err() {
                return;
            }
            if fail {
                tx.abort();
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    Ok(Response::builder()
        .status(201)
        .header("content-type", "text/plain")
        .header("x-streamed", "yes")
        .header("set-cookie", "s=1")
        .body(body)?)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    if std::env::var("STREAM").is_ok_and(|v| v == "1") {
        lambda_http::run_with_streaming_response(service_fn(streamed)).await
    } else {
        lambda_http::run(service_fn(buffered)).await
    }
}
