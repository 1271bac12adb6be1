//! `misbehave`: a test fixture, not an example. A `wasi:http` function that
//! misbehaves on request so the tests can check that wisp contains it:
//!
//! - `/trap` panics (a wasm trap); `/loop` spins forever;
//! - `/alloc?mb=N` allocates and touches N MiB;
//! - `/sleep?ms=N` answers after N ms; `/stream?chunks=N&ms=M` streams N
//!   chunks M ms apart;
//! - `/fetch?url=U` makes an outbound HTTP GET and reports what happened;
//! - `/env?name=K` prints an environment variable; `/stderr` writes to stderr;
//! - `/read?path=P` prints a file (or why it cannot be read), `/write?path=P`
//!   tries to write one;
//! - `/headers` echoes the request headers;
//! - `/silent` returns without setting a response.

use std::io::Write as _;

use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingRequest, OutgoingResponse, ResponseOutparam,
    Scheme,
};

struct Misbehave;

wasip2::http::proxy::export!(Misbehave);

fn param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key).then_some(v)
    })
}

fn sleep_ms(ms: u64) {
    wasip2::clocks::monotonic_clock::subscribe_duration(ms * 1_000_000).block();
}

fn respond(out: ResponseOutparam, status: u16, chunks: &[&[u8]], pause_ms: u64) {
    let response = OutgoingResponse::new(Fields::new());
    let _ = response.set_status_code(status);
    let Ok(body) = response.body() else { return };
    ResponseOutparam::set(out, Ok(response));
    let Ok(mut stream) = body.write() else { return };
    for (i, chunk) in chunks.iter().enumerate() {
        if i > 0 && pause_ms > 0 {
            sleep_ms(pause_ms);
        }
        if stream.write_all(chunk).is_err() || stream.flush().is_err() {
            return;
        }
    }
    drop(stream);
    let _ = OutgoingBody::finish(body, None);
}

fn fetch(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some(("https", rest)) => (Scheme::Https, rest),
        Some((_, rest)) => (Scheme::Http, rest),
        None => (Scheme::Http, url),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let request = OutgoingRequest::new(Fields::new());
    let _ = request.set_scheme(Some(&scheme));
    let _ = request.set_authority(Some(authority));
    let _ = request.set_path_with_query(Some(path));
    match outgoing_handler::handle(request, None) {
        Err(e) => format!("error: {e:?}"),
        Ok(future) => {
            future.subscribe().block();
            match future.get() {
                Some(Ok(Ok(response))) => format!("status: {}", response.status()),
                Some(Ok(Err(e))) => format!("error: {e:?}"),
                other => format!("error: {other:?}"),
            }
        }
    }
}

impl wasip2::exports::http::incoming_handler::Guest for Misbehave {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let pq = request.path_with_query().unwrap_or_default();
        let (path, query) = pq.split_once('?').unwrap_or((pq.as_str(), ""));
        let num = |key: &str, default: u64| {
            param(query, key)
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        match path {
            "/trap" => panic!("misbehave was asked to trap"),
            "/loop" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "/alloc" => {
                let mb = num("mb", 1) as usize;
                let mut v = vec![0u8; mb << 20];
                for i in (0..v.len()).step_by(4096) {
                    v[i] = 1;
                }
                let msg = format!("allocated {mb} MiB\n");
                respond(out, 200, &[msg.as_bytes()], 0);
            }
            "/sleep" => {
                sleep_ms(num("ms", 100));
                respond(out, 200, &[b"slept\n"], 0);
            }
            "/stream" => {
                let chunks: Vec<String> = (0..num("chunks", 3))
                    .map(|i| format!("chunk {i}\n"))
                    .collect();
                let refs: Vec<&[u8]> = chunks.iter().map(|c| c.as_bytes()).collect();
                respond(out, 200, &refs, num("ms", 100));
            }
            "/fetch" => {
                let result = fetch(param(query, "url").unwrap_or("http://example.com/"));
                respond(out, 200, &[result.as_bytes()], 0);
            }
            "/env" => {
                let value = std::env::var(param(query, "name").unwrap_or("")).unwrap_or_default();
                respond(out, 200, &[value.as_bytes()], 0);
            }
            "/read" => {
                let path = param(query, "path").unwrap_or("");
                let bytes = std::fs::read(path).unwrap_or_else(|e| format!("error: {e}").into());
                respond(out, 200, &[&bytes], 0);
            }
            "/write" => {
                let path = param(query, "path").unwrap_or("");
                let text = match std::fs::write(path, b"overwritten") {
                    Ok(()) => "written".to_owned(),
                    Err(e) => format!("error: {e}"),
                };
                respond(out, 200, &[text.as_bytes()], 0);
            }
            "/stderr" => {
                eprintln!("misbehave wrote this to stderr");
                respond(out, 200, &[b"wrote to stderr\n"], 0);
            }
            "/silent" => drop(out),
            "/count" => {
                // Global state: 1 on every request with a fresh instance,
                // 1, 2, … while an instance is reused.
                static COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                respond(out, 200, &[format!("{n}\n").as_bytes()], 0);
            }
            "/headers" => {
                let mut text = String::new();
                for (name, value) in request.headers().entries() {
                    text.push_str(&format!("{name}: {}\n", String::from_utf8_lossy(&value)));
                }
                respond(out, 200, &[text.as_bytes()], 0);
            }
            _ => respond(out, 404, &[b"unknown misbehaviour\n"], 0),
        }
    }
}
