//! `hello`: wisp's example `wasi:http/proxy` function.
//!
//! Greets (`?name=` picks who, the `GREETING` environment variable picks the
//! word), then echoes the method, path, query and request body. The body is
//! streamed back as it arrives, so it works for bodies of any size.

use std::io::Write as _;

use wasip2::http::types::{
    Fields, IncomingBody, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};
use wasip2::io::streams::StreamError;

struct Hello;

wasip2::http::proxy::export!(Hello);

impl wasip2::exports::http::incoming_handler::Guest for Hello {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path_with_query = request.path_with_query().unwrap_or_else(|| "/".into());
        let (path, query) = match path_with_query.split_once('?') {
            Some((path, query)) => (path.to_owned(), query.to_owned()),
            None => (path_with_query.clone(), String::new()),
        };
        let name = query
            .split('&')
            .find_map(|pair| pair.strip_prefix("name="))
            .filter(|n| !n.is_empty())
            .unwrap_or("world")
            .to_owned();
        let greeting = std::env::var("GREETING").unwrap_or_else(|_| "Hello".into());
        let method = match request.method() {
            Method::Get => "GET".to_owned(),
            Method::Head => "HEAD".to_owned(),
            Method::Post => "POST".to_owned(),
            Method::Put => "PUT".to_owned(),
            Method::Delete => "DELETE".to_owned(),
            Method::Connect => "CONNECT".to_owned(),
            Method::Options => "OPTIONS".to_owned(),
            Method::Trace => "TRACE".to_owned(),
            Method::Patch => "PATCH".to_owned(),
            Method::Other(other) => other,
        };

        let headers = Fields::new();
        let _ = headers.set("content-type", &[b"text/plain; charset=utf-8".to_vec()]);
        let response = OutgoingResponse::new(headers);
        let Ok(out_body) = response.body() else {
            return;
        };
        ResponseOutparam::set(response_out, Ok(response));
        let Ok(mut out) = out_body.write() else {
            return;
        };
        let head = format!(
            "{greeting}, {name}! (from wisp's hello function)\nmethod: {method}\npath: {path}\nquery: {query}\nbody: "
        );
        if out.write_all(head.as_bytes()).is_err() {
            return;
        }
        if let Ok(in_body) = request.consume() {
            if let Ok(input) = in_body.stream() {
                loop {
                    match input.blocking_read(64 * 1024) {
                        Ok(chunk) if chunk.is_empty() => continue,
                        Ok(chunk) => {
                            if out.write_all(&chunk).is_err() {
                                return;
                            }
                        }
                        Err(StreamError::Closed) => break,
                        Err(StreamError::LastOperationFailed(_)) => return,
                    }
                }
                drop(input);
            }
            let _ = IncomingBody::finish(in_body);
        }
        let _ = out.write_all(b"\n");
        let _ = out.flush();
        drop(out);
        let _ = OutgoingBody::finish(out_body, None);
    }
}
