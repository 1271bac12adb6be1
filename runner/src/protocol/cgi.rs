//! The CGI protocol (RFC 3875), as WAGI runs it for wasm modules and as
//! wisp runs it for container images: the request body on stdin, the
//! meta-variables ([`variables`]) in the environment beside the function's
//! own, and the response on stdout as a header block (`Status:`,
//! `Content-Type:`, `Location:` …), a blank line and the body
//! ([`parse_response`], [`response`]).
//!
//! Both executors read the request body with [`read_body`] (capped by the
//! function's body limit). The container executor streams the response:
//! it parses the head with [`parse_response`] as soon as the header block
//! is in and sends the rest of stdout as it comes. The wasm executor
//! gathers at most [`MAX_OUTPUT_BYTES`] of output and gives it to
//! [`response`].

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};

use crate::backend::{Body, InvokeError, RequestInfo, full_body};
use crate::spec::FunctionName;

/// Largest response a CGI program may write to stdout.
pub const MAX_OUTPUT_BYTES: usize = 32 * 1024 * 1024;
/// Largest header block of a CGI response.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Why a CGI program's output is not a response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    #[error("the CGI program wrote nothing to stdout")]
    Empty,
    #[error("the CGI output has no blank line ending its headers")]
    NoBlankLine,
    #[error("the CGI header block is longer than {MAX_HEADER_BYTES} bytes")]
    HeadersTooLong,
    #[error("the CGI output is longer than {MAX_OUTPUT_BYTES} bytes")]
    TooLong,
    #[error("a CGI header line is not UTF-8")]
    NotUtf8,
    #[error("CGI header line {0:?} has no ':'")]
    NoColon(String),
    #[error("invalid CGI Status {0:?}")]
    BadStatus(String),
    #[error("CGI Status {0} is informational (1xx); a CGI response must be final")]
    Informational(u16),
    #[error("invalid CGI header name {0:?}")]
    BadHeaderName(String),
    #[error("invalid value for CGI header {0}")]
    BadHeaderValue(HeaderName),
    #[error("the CGI output starts with a blank line: no headers")]
    NoHeaders,
}

/// The head of a CGI response: its status, its headers and where its body
/// starts in the output.
#[derive(Debug)]
pub struct Head {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body_start: usize,
}

/// Reads the whole request body for a CGI program, within the function's
/// body limit (413 past it).
pub async fn read_body(
    body: Body,
    function: &FunctionName,
    limit: u64,
) -> Result<Bytes, InvokeError> {
    crate::body::collect(body, limit).await.map_err(|e| {
        match e.downcast_ref::<crate::body::BodyTooLarge>() {
            Some(_) => InvokeError::BodyTooLarge {
                function: function.clone(),
                limit_bytes: limit,
            },
            None => InvokeError::BadRequest {
                function: function.clone(),
                detail: format!("reading the request body: {e}"),
            },
        }
    })
}

/// The HTTP response a CGI program's whole stdout stands for.
pub fn response(function: &FunctionName, out: Bytes) -> Result<Response<Body>, InvokeError> {
    let invalid = |e: ResponseError| InvokeError::BadResponse {
        function: function.clone(),
        detail: e.to_string(),
    };
    if out.len() > MAX_OUTPUT_BYTES {
        return Err(invalid(ResponseError::TooLong));
    }
    let head = parse_response(&out).map_err(invalid)?;
    let mut response = Response::new(full_body(out.slice(head.body_start..)));
    *response.status_mut() = head.status;
    *response.headers_mut() = head.headers;
    Ok(response)
}

/// The RFC 3875 meta-variables for one request, plus WAGI's `X_*` extras.
pub fn variables(
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
        ("SCRIPT_NAME".to_owned(), info.script_name.to_string()),
        ("PATH_INFO".to_owned(), path.to_owned()),
        ("QUERY_STRING".to_owned(), query.to_owned()),
        ("CONTENT_LENGTH".to_owned(), content_length.to_string()),
        ("X_MATCHED_ROUTE".to_owned(), info.script_name.to_string()),
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

/// Headers a CGI program's own are dropped: the framing is wisp's (a
/// buffered body's length is known, a streamed one is chunked; hyper
/// trusts a `Content-Length` header over the body, and a client would read
/// the body wrongly) and connection-scoped fields are not the program's to set
/// (RFC 9110 §7.6.1).
const NOT_THE_PROGRAMS: [HeaderName; 7] = [
    http::header::CONTENT_LENGTH,
    http::header::TRANSFER_ENCODING,
    http::header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    http::header::TE,
    http::header::TRAILER,
    http::header::UPGRADE,
];

/// Parses a CGI response: returns its status, headers and where the body
/// starts in `out`. Lines may end in `\n` or `\r\n`; `Status:` sets the
/// status (default 200, or 302 with a `Location:`). Framing and
/// connection headers are dropped ([`NOT_THE_PROGRAMS`]).
pub fn parse_response(out: &[u8]) -> Result<Head, ResponseError> {
    let mut headers = HeaderMap::new();
    let mut status = None;
    let mut lines = 0;
    let mut pos = 0;
    loop {
        if pos >= MAX_HEADER_BYTES {
            return Err(ResponseError::HeadersTooLong);
        }
        let Some(nl) = out[pos..].iter().position(|&b| b == b'\n') else {
            return Err(if out.is_empty() {
                ResponseError::Empty
            } else {
                ResponseError::NoBlankLine
            });
        };
        let line = &out[pos..pos + nl];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        pos += nl + 1;
        if line.is_empty() {
            break;
        }
        lines += 1;
        let text = std::str::from_utf8(line).map_err(|_| ResponseError::NotUtf8)?;
        let (name, value) = text
            .split_once(':')
            .ok_or_else(|| ResponseError::NoColon(truncate(text)))?;
        // Optional whitespace around the name is allowed; anything else
        // (a stray `\r`, say) leaves a name that is not a token and is refused.
        let name = name.trim_matches([' ', '\t']);
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value.split_whitespace().next().unwrap_or("");
            let code = code
                .parse::<u16>()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .filter(|c| c.as_u16() >= 100)
                .ok_or_else(|| ResponseError::BadStatus(truncate(value)))?;
            // A CGI program writes one, final response: a 1xx here would
            // reach the client as an interim answer with no final one after
            // it (a `101` would even end the client's HTTP/1.1 connection).
            if code.is_informational() {
                return Err(ResponseError::Informational(code.as_u16()));
            }
            status = Some(code);
            continue;
        }
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| ResponseError::BadHeaderName(truncate(name)))?;
        let value = HeaderValue::from_str(value)
            .map_err(|_| ResponseError::BadHeaderValue(name.clone()))?;
        if !NOT_THE_PROGRAMS.contains(&name) {
            headers.append(name, value);
        }
    }
    if lines == 0 {
        return Err(ResponseError::NoHeaders);
    }
    let status = status.unwrap_or(if headers.contains_key(http::header::LOCATION) {
        StatusCode::FOUND
    } else {
        StatusCode::OK
    });
    Ok(Head {
        status,
        headers,
        body_start: pos,
    })
}

fn truncate(s: &str) -> String {
    s.chars().take(60).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(out: &[u8]) -> Result<(StatusCode, HeaderMap, usize), ResponseError> {
        parse_response(out).map(|h| (h.status, h.headers, h.body_start))
    }

    #[test]
    fn parses_status_headers_and_body() {
        let out = b"Content-Type: text/plain\r\nStatus: 404 Not Found\r\nX-A: 1\r\n\r\nnope";
        let (status, headers, start) = parse(out).unwrap();
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(headers["content-type"], "text/plain");
        assert_eq!(headers["x-a"], "1");
        assert!(!headers.contains_key("status"));
        assert_eq!(&out[start..], b"nope");
    }

    #[test]
    fn defaults_and_redirects() {
        let (status, _, start) = parse(b"Content-Type: text/html\n\n").unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(start, 25);
        let (status, headers, _) = parse(b"Location: /x\n\n").unwrap();
        assert_eq!(status, StatusCode::FOUND);
        assert_eq!(headers["location"], "/x");
    }

    #[test]
    fn refuses_malformed_output() {
        let err = |out: &[u8]| parse(out).unwrap_err();
        assert_eq!(err(b""), ResponseError::Empty);
        assert!(err(b"").to_string().contains("nothing"));
        assert_eq!(err(b"hello world"), ResponseError::NoBlankLine);
        assert!(err(b"hello world").to_string().contains("blank line"));
        assert!(err(b"no colon here\n\n").to_string().contains("no ':'"));
        assert!(err(b"Status: abc\n\n").to_string().contains("Status"));
        assert!(parse(b"Status: 99\n\n").is_err());
        for informational in [100, 101, 103, 199] {
            let out = format!("Status: {informational} Whatever\r\nUpgrade: x\r\n\r\n");
            assert_eq!(
                err(out.as_bytes()),
                ResponseError::Informational(informational)
            );
        }
        assert!(parse(b"\nbody").is_err());
        assert!(parse(b"Bad Name: x\n\n").is_err());
        // A `\r` before a name does not hide a `Status` among the headers.
        assert!(matches!(
            err(b"Content-Length:\n\rStatus:0\n\n"),
            ResponseError::BadHeaderName(_)
        ));
    }

    #[test]
    fn the_programs_framing_is_dropped() {
        let function = FunctionName::new("f").unwrap();
        let out = b"Content-Type: text/plain\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nhello world";
        let response = response(&function, Bytes::from_static(out)).unwrap();
        let names: Vec<&str> = response.headers().keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["content-type"]);
        assert_eq!(
            http_body::Body::size_hint(response.body()).exact(),
            Some(11)
        );
        // A framing header alone still makes a header block.
        let (status, headers, _) = parse(b"Content-Length: abc\n\nbody").unwrap();
        assert_eq!((status, headers.len()), (StatusCode::OK, 0));
    }

    #[test]
    fn caps_the_output() {
        let function = FunctionName::new("f").unwrap();
        let mut out = b"Content-Type: text/plain\n\n".to_vec();
        out.resize(MAX_OUTPUT_BYTES + 1, b'x');
        assert!(matches!(
            response(&function, Bytes::from(out)),
            Err(InvokeError::BadResponse { detail, .. }) if detail.contains("longer than")
        ));
    }

    /// One header line as a CGI program might write it, hostile ones too:
    /// 1xx and odd statuses, framing and hop-by-hop headers, control
    /// characters, obs-text, folded lines, bare CRs, missing colons.
    fn arb_line() -> impl Strategy<Value = Vec<u8>> {
        let name = prop_oneof![
            Just("Status".to_owned()),
            Just("status".to_owned()),
            Just("Content-Length".to_owned()),
            Just("Transfer-Encoding".to_owned()),
            Just("Connection".to_owned()),
            Just("Location".to_owned()),
            Just("Content-Type".to_owned()),
            Just(" X-Padded ".to_owned()),
            "[A-Za-z0-9!#$%&'*+.^_`|~-]{1,12}",
            "[\\x00-\\x7f]{0,6}",
        ];
        let value = prop_oneof![
            (0u32..1200).prop_map(|n| n.to_string()),
            (100u32..200).prop_map(|n| format!("{n} Continue")),
            Just("chunked".to_owned()),
            Just("-1".to_owned()),
            "[ -~]{0,20}",
            "\\PC{0,12}",
            "[\\x00-\\x1f\\x7f]{0,4}",
        ];
        let eol = prop::sample::select(vec!["\n", "\r\n", "\r"]);
        prop_oneof![
            8 => (name, value, eol).prop_map(|(n, v, eol)| format!("{n}:{v}{eol}").into_bytes()),
            1 => "[ \\t][ -~]{0,10}\n".prop_map(String::into_bytes),
            1 => prop::collection::vec(any::<u8>(), 0..12),
        ]
    }

    fn arb_output() -> impl Strategy<Value = Vec<u8>> {
        let lines = prop::collection::vec(arb_line(), 0..8);
        let end = prop::sample::select(vec![&b"\n"[..], b"\r\n", b""]);
        let body = prop::collection::vec(any::<u8>(), 0..32);
        (lines, end, body).prop_map(|(lines, end, body)| {
            let mut out = lines.concat();
            out.extend_from_slice(end);
            out.extend_from_slice(&body);
            out
        })
    }

    /// What hyper will put on the wire for a response with these headers
    /// must be what the body is: no framing or connection headers of the
    /// program's own, every value a valid field value.
    fn assert_sendable(status: StatusCode, headers: &HeaderMap) -> Result<(), TestCaseError> {
        prop_assert!(status.as_u16() >= 200 && status.as_u16() <= 999, "{status}");
        for (name, value) in headers {
            prop_assert!(name != "status");
            prop_assert!(
                !matches!(
                    name.as_str(),
                    "content-length"
                        | "transfer-encoding"
                        | "connection"
                        | "keep-alive"
                        | "upgrade"
                        | "trailer"
                        | "te"
                ),
                "{name} reaches the client"
            );
            let bytes = value.as_bytes();
            prop_assert!(
                bytes
                    .iter()
                    .all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f)),
                "{name}: {value:?}"
            );
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn never_panics(out in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok((_, _, start)) = parse(&out) {
                prop_assert!(start <= out.len());
            }
        }

        #[test]
        fn accepted_output_is_a_final_response_with_valid_headers(out in arb_output()) {
            match parse(&out) {
                Ok((status, headers, start)) => {
                    prop_assert!(start <= out.len());
                    prop_assert!(!status.is_informational(), "{status}");
                    assert_sendable(status, &headers)?;
                }
                Err(e) => prop_assert!(!e.to_string().is_empty()),
            }
        }

        #[test]
        fn the_response_is_framed_by_its_body(out in arb_output()) {
            let function = FunctionName::new("f").unwrap();
            if let Ok(response) = response(&function, Bytes::from(out)) {
                assert_sendable(response.status(), response.headers())?;
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
            let headers: Vec<_> = headers
                .into_iter()
                .filter(|(n, _)| n != "status" && !NOT_THE_PROGRAMS.iter().any(|h| h == n.as_str()))
                .collect();
            for (n, v) in &headers {
                out.push_str(&format!("{n}: {v}{eol}"));
            }
            out.push_str(eol);
            let mut out = out.into_bytes();
            out.extend_from_slice(&body);
            let (status, parsed, start) = parse(&out).unwrap();
            prop_assert_eq!(status.as_u16(), code);
            prop_assert_eq!(&out[start..], &body[..]);
            for (n, v) in &headers {
                prop_assert!(parsed.get_all(n.as_str()).iter().any(|x| x == v.trim()));
            }
        }
    }
}
