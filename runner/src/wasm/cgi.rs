//! WASI preview1 command modules run CGI-style, as WAGI does: the request
//! body on stdin, the CGI/1.1 meta-variables (RFC 3875) in the environment
//! beside the function's own variables, and the response on stdout as a
//! header block (`Status:`, `Content-Type:`, `Location:` …), a blank line and
//! the body. stdout is buffered up to [`MAX_CGI_OUTPUT_BYTES`]; stderr keeps
//! its tail for the log.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use tokio::time::Instant;
use wasmtime::{Linker, Module, Store};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::{MemoryInputPipe, MemoryOutputPipe};

use super::guest::{MemoryCap, TailPipe, arm_deadline, classify, wasi_builder};
use crate::backend::{Body, Instance, InvokeError, RequestInfo, full_body};
use crate::spec::FunctionSpec;

/// Largest response a CGI guest may write to stdout.
pub const MAX_CGI_OUTPUT_BYTES: usize = 32 * 1024 * 1024;
/// Largest header block of a CGI response.
const MAX_CGI_HEADER_BYTES: usize = 64 * 1024;

pub type CgiLinker = Linker<CgiState>;

pub struct CgiState {
    wasi: WasiP1Ctx,
    memory: MemoryCap,
}

pub fn linker(engine: &wasmtime::Engine) -> wasmtime::Result<CgiLinker> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p1::add_to_linker_async(&mut linker, |state: &mut CgiState| &mut state.wasi)?;
    Ok(linker)
}

/// A pre-linked preview1 command module; each request runs `_start` in a
/// fresh store.
pub struct CgiInstance {
    pre: wasmtime::InstancePre<CgiState>,
    spec: Arc<FunctionSpec>,
}

pub type CgiPre = wasmtime::InstancePre<CgiState>;

/// Links a module; fails unless it is a WASI command (exports `_start`) and
/// imports nothing beyond `wasi_snapshot_preview1`.
pub fn pre(linker: &CgiLinker, module: &Module) -> wasmtime::Result<CgiPre> {
    if module.get_export("_start").is_none() {
        wasmtime::bail!("the module exports no `_start` function (it is not a WASI command)");
    }
    linker.instantiate_pre(module)
}

impl CgiInstance {
    pub fn new(pre: CgiPre, spec: Arc<FunctionSpec>) -> Self {
        CgiInstance { pre, spec }
    }

    async fn run(&self, req: Request<Body>, deadline: Instant) -> Result<Bytes, InvokeError> {
        let spec = &self.spec;
        let (parts, body) = req.into_parts();
        let body = crate::body::collect(body, spec.limits.max_body_bytes)
            .await
            .map_err(|e| match e.downcast_ref::<crate::body::BodyTooLarge>() {
                Some(_) => InvokeError::BodyTooLarge {
                    function: spec.name.clone(),
                    limit_bytes: spec.limits.max_body_bytes,
                },
                None => InvokeError::BadRequest {
                    function: spec.name.clone(),
                    detail: format!("reading the request body: {e}"),
                },
            })?;
        let info = parts
            .extensions
            .get::<RequestInfo>()
            .cloned()
            .unwrap_or_default();
        let vars = cgi_variables(&parts, &info, body.len());
        let stdout = MemoryOutputPipe::new(MAX_CGI_OUTPUT_BYTES);
        let stderr = TailPipe::default();
        let mut builder = wasi_builder(spec);
        builder
            .envs(&vars)
            .stdin(MemoryInputPipe::new(body))
            .stdout(stdout.clone())
            .stderr(stderr.clone());
        let (memory, memory_hit) = MemoryCap::new(spec.limits.memory_bytes);
        let mut store = Store::new(
            self.pre.module().engine(),
            CgiState {
                wasi: builder.build_p1(),
                memory,
            },
        );
        store.limiter(|state| &mut state.memory);
        arm_deadline(&mut store, deadline);
        let result = async {
            let instance = self.pre.instantiate_async(&mut store).await?;
            let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
            start.call_async(&mut store, ()).await
        };
        let result = tokio::time::timeout_at(deadline, result).await;
        stderr.log(spec, "stderr");
        match result {
            Err(_) => Err(InvokeError::Timeout {
                function: spec.name.clone(),
                timeout: spec.limits.timeout(),
            }),
            Ok(Ok(())) => Ok(stdout.contents()),
            Ok(Err(e)) => match e.downcast_ref::<wasmtime_wasi::I32Exit>() {
                Some(wasmtime_wasi::I32Exit(0)) => Ok(stdout.contents()),
                _ => Err(classify(spec, &e, &memory_hit)),
            },
        }
    }
}

#[async_trait]
impl Instance for CgiInstance {
    async fn invoke(&self, req: Request<Body>) -> Result<Response<Body>, InvokeError> {
        let deadline = req
            .extensions()
            .get::<crate::pool::Deadline>()
            .map_or_else(|| Instant::now() + self.spec.limits.timeout(), |d| d.0);
        let out = self.run(req, deadline).await?;
        let (status, headers, body_start) =
            parse_cgi_response(&out).map_err(|detail| InvokeError::BadResponse {
                function: self.spec.name.clone(),
                detail,
            })?;
        let mut response = Response::new(full_body(out.slice(body_start..)));
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        Ok(response)
    }

    fn concurrency(&self) -> usize {
        usize::MAX
    }

    async fn stop(self: Box<Self>) {}
}

/// The RFC 3875 meta-variables for one request, plus WAGI's `X_*` extras.
pub(crate) fn cgi_variables(
    parts: &http::request::Parts,
    info: &RequestInfo,
    content_length: usize,
) -> Vec<(String, String)> {
    let path = parts.uri.path();
    let query = parts.uri.query().unwrap_or("");
    let host = parts
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let (server_name, server_port) = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => (name, port),
        _ => (host, "80"),
    };
    let protocol = match parts.version {
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2.0",
        _ => "HTTP/1.1",
    };
    let mut vars = vec![
        ("GATEWAY_INTERFACE".to_owned(), "CGI/1.1".to_owned()),
        (
            "SERVER_SOFTWARE".to_owned(),
            concat!("wisp/", env!("CARGO_PKG_VERSION")).to_owned(),
        ),
        ("SERVER_PROTOCOL".to_owned(), protocol.to_owned()),
        ("SERVER_NAME".to_owned(), server_name.to_owned()),
        ("SERVER_PORT".to_owned(), server_port.to_owned()),
        ("REQUEST_METHOD".to_owned(), parts.method.to_string()),
        ("SCRIPT_NAME".to_owned(), info.script_name.clone()),
        ("PATH_INFO".to_owned(), path.to_owned()),
        ("QUERY_STRING".to_owned(), query.to_owned()),
        ("CONTENT_LENGTH".to_owned(), content_length.to_string()),
        ("X_MATCHED_ROUTE".to_owned(), info.script_name.clone()),
        ("X_RAW_PATH_INFO".to_owned(), path.to_owned()),
        (
            "X_FULL_URL".to_owned(),
            format!(
                "http://{host}{}{}",
                info.script_name,
                parts.uri.path_and_query().map_or("", |pq| pq.as_str())
            ),
        ),
    ];
    if let Some(addr) = info.remote_addr {
        vars.push(("REMOTE_ADDR".to_owned(), addr.ip().to_string()));
        vars.push(("REMOTE_HOST".to_owned(), addr.ip().to_string()));
    }
    for (name, value) in &parts.headers {
        let Ok(value) = value.to_str() else { continue };
        let var = match name.as_str() {
            "content-type" => "CONTENT_TYPE".to_owned(),
            "content-length" => continue,
            // httpoxy: a client must not be able to set HTTP_PROXY.
            "proxy" => continue,
            other => format!("HTTP_{}", other.to_ascii_uppercase().replace('-', "_")),
        };
        vars.push((var, value.to_owned()));
    }
    vars
}

/// Parses a CGI response: returns its status, headers and where the body
/// starts in `out`. Lines may end in `\n` or `\r\n`; `Status:` sets the
/// status (default 200, or 302 with a `Location:`).
pub fn parse_cgi_response(out: &[u8]) -> Result<(StatusCode, HeaderMap, usize), String> {
    let mut headers = HeaderMap::new();
    let mut status = None;
    let mut pos = 0;
    loop {
        if pos >= MAX_CGI_HEADER_BYTES {
            return Err(format!(
                "the CGI header block is longer than {MAX_CGI_HEADER_BYTES} bytes"
            ));
        }
        let Some(nl) = out[pos..].iter().position(|&b| b == b'\n') else {
            return Err(if out.is_empty() {
                "the CGI program wrote nothing to stdout".into()
            } else {
                "the CGI output has no blank line ending its headers".into()
            });
        };
        let line = &out[pos..pos + nl];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        pos += nl + 1;
        if line.is_empty() {
            break;
        }
        let text =
            std::str::from_utf8(line).map_err(|_| "a CGI header line is not UTF-8".to_owned())?;
        let (name, value) = text
            .split_once(':')
            .ok_or_else(|| format!("CGI header line {:?} has no ':'", truncate(text)))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value.split_whitespace().next().unwrap_or("");
            let code = code
                .parse::<u16>()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .filter(|c| c.as_u16() >= 100)
                .ok_or_else(|| format!("invalid CGI Status {:?}", truncate(value)))?;
            status = Some(code);
            continue;
        }
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| format!("invalid CGI header name {:?}", truncate(name)))?;
        let value = HeaderValue::from_str(value)
            .map_err(|_| format!("invalid value for CGI header {name}"))?;
        headers.append(name, value);
    }
    if headers.is_empty() && status.is_none() {
        return Err("the CGI output starts with a blank line: no headers".into());
    }
    let status = status.unwrap_or(if headers.contains_key(http::header::LOCATION) {
        StatusCode::FOUND
    } else {
        StatusCode::OK
    });
    Ok((status, headers, pos))
}

fn truncate(s: &str) -> String {
    s.chars().take(60).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_status_headers_and_body() {
        let out = b"Content-Type: text/plain\r\nStatus: 404 Not Found\r\nX-A: 1\r\n\r\nnope";
        let (status, headers, start) = parse_cgi_response(out).unwrap();
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(headers["content-type"], "text/plain");
        assert_eq!(headers["x-a"], "1");
        assert!(!headers.contains_key("status"));
        assert_eq!(&out[start..], b"nope");
    }

    #[test]
    fn defaults_and_redirects() {
        let (status, _, start) = parse_cgi_response(b"Content-Type: text/html\n\n").unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(start, 25);
        let (status, headers, _) = parse_cgi_response(b"Location: /x\n\n").unwrap();
        assert_eq!(status, StatusCode::FOUND);
        assert_eq!(headers["location"], "/x");
    }

    #[test]
    fn refuses_malformed_output() {
        assert!(parse_cgi_response(b"").unwrap_err().contains("nothing"));
        assert!(
            parse_cgi_response(b"hello world")
                .unwrap_err()
                .contains("blank line")
        );
        assert!(
            parse_cgi_response(b"no colon here\n\n")
                .unwrap_err()
                .contains("no ':'")
        );
        assert!(
            parse_cgi_response(b"Status: abc\n\n")
                .unwrap_err()
                .contains("Status")
        );
        assert!(parse_cgi_response(b"Status: 99\n\n").is_err());
        assert!(parse_cgi_response(b"\nbody").is_err());
        assert!(parse_cgi_response(b"Bad Name: x\n\n").is_err());
    }

    proptest! {
        #[test]
        fn never_panics(out in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok((_, _, start)) = parse_cgi_response(&out) {
                prop_assert!(start <= out.len());
            }
        }

        #[test]
        fn round_trips(
            code in 200u16..600,
            headers in proptest::collection::vec(("[a-z][a-z0-9-]{0,15}", "[ -~]{0,30}"), 0..8),
            body in proptest::collection::vec(any::<u8>(), 0..64),
            crlf in any::<bool>(),
        ) {
            let eol = if crlf { "\r\n" } else { "\n" };
            let mut out = format!("Status: {code}{eol}");
            let headers: Vec<_> = headers.into_iter().filter(|(n, _)| n != "status").collect();
            for (n, v) in &headers {
                out.push_str(&format!("{n}: {v}{eol}"));
            }
            out.push_str(eol);
            let mut out = out.into_bytes();
            out.extend_from_slice(&body);
            let (status, parsed, start) = parse_cgi_response(&out).unwrap();
            prop_assert_eq!(status.as_u16(), code);
            prop_assert_eq!(&out[start..], &body[..]);
            for (n, v) in &headers {
                prop_assert!(parsed.get_all(n.as_str()).iter().any(|x| x == v.trim()));
            }
        }
    }
}
