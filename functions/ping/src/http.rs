//! The HTTP/1.1 wire format as `ping` needs it: reading one request (head,
//! then a `Content-Length` or chunked body) from a buffered stream and
//! writing one response with a known length.
//!
//! Anything malformed becomes a [`ReadError::Reject`] with the status to
//! answer, never a panic. Limits: the head is at most [`MAX_HEAD_BYTES`] and
//! [`MAX_HEADERS`] fields, the body at most [`MAX_BODY_BYTES`]; obsolete line
//! folding, request smuggling shapes (both `Transfer-Encoding` and
//! `Content-Length`, differing lengths) and transfer codings other than
//! `chunked` are refused; chunk trailers are read and dropped; a missing
//! `Host` is tolerated.

use std::io::{self, BufRead, Read, Write};

/// Cap on the request line plus all header lines.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Cap on the number of header fields (and of chunk trailer fields).
pub const MAX_HEADERS: usize = 100;
/// Cap on a request body.
pub const MAX_BODY_BYTES: u64 = 16 << 20;
/// Cap on one chunk-size line of a chunked body.
const MAX_CHUNK_LINE: usize = 1024;
/// Empty lines tolerated before a request line (RFC 9112 §2.2).
const MAX_LEADING_EMPTY_LINES: usize = 8;

/// One parsed request with its whole body.
#[derive(Debug, PartialEq)]
pub struct Request {
    pub method: String,
    /// The origin-form target: path and query (absolute-form is reduced to it).
    pub target: String,
    pub http10: bool,
    /// Header fields in the order received, names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Whether the connection stays open after the response.
    pub keep_alive: bool,
}

/// Why no request came out of the stream.
#[derive(Debug, PartialEq)]
pub enum ReadError {
    /// The peer closed the connection, timed out or failed: nothing to answer.
    Closed,
    /// The request is refused with `status`; the connection is then closed.
    Reject { status: u16, detail: &'static str },
}

fn reject(status: u16, detail: &'static str) -> ReadError {
    ReadError::Reject { status, detail }
}

fn bad(detail: &'static str) -> ReadError {
    reject(400, detail)
}

/// Reads the next request. `interim` receives `100 Continue` when the client
/// asked for it and the body is acceptable.
pub fn read_request(
    reader: &mut impl BufRead,
    interim: &mut impl Write,
) -> Result<Request, ReadError> {
    let mut budget = MAX_HEAD_BYTES;
    let mut empty_lines = 0;
    let line = loop {
        let line = read_line(reader, &mut budget, 431)?;
        if !line.is_empty() {
            break line;
        }
        empty_lines += 1;
        if empty_lines > MAX_LEADING_EMPTY_LINES {
            return Err(bad("no request line"));
        }
    };
    let (method, target, http10) = parse_request_line(&line)?;
    let headers = read_fields(reader, &mut budget)?;

    let mut keep_alive = !http10;
    let mut content_length: Option<u64> = None;
    let mut chunked = false;
    let mut expect_continue = false;
    for (name, value) in &headers {
        match name.as_str() {
            "connection" => {
                for token in value.split(',').map(str::trim) {
                    if token.eq_ignore_ascii_case("close") {
                        keep_alive = false;
                    } else if token.eq_ignore_ascii_case("keep-alive") && http10 {
                        keep_alive = true;
                    }
                }
            }
            "content-length" => {
                for item in value.split(',').map(str::trim) {
                    let length = parse_content_length(item)?;
                    if content_length.is_some_and(|known| known != length) {
                        return Err(bad("conflicting content-length"));
                    }
                    content_length = Some(length);
                }
            }
            "transfer-encoding" => {
                if http10 {
                    return Err(bad("transfer-encoding in an HTTP/1.0 request"));
                }
                for coding in value.split(',').map(str::trim) {
                    if chunked || !coding.eq_ignore_ascii_case("chunked") {
                        return Err(reject(501, "only the chunked transfer coding is supported"));
                    }
                    chunked = true;
                }
            }
            "expect" => expect_continue = value.eq_ignore_ascii_case("100-continue") && !http10,
            _ => {}
        }
    }
    if chunked && content_length.is_some() {
        return Err(bad("both transfer-encoding and content-length"));
    }
    let length = content_length.unwrap_or(0);
    if length > MAX_BODY_BYTES {
        return Err(reject(413, "request body too large"));
    }
    if expect_continue && (chunked || length > 0) {
        interim
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .and_then(|()| interim.flush())
            .map_err(|_| ReadError::Closed)?;
    }
    let body = if chunked {
        read_chunked(reader)?
    } else {
        read_exact_body(reader, length)?
    };
    Ok(Request {
        method,
        target,
        http10,
        headers,
        body,
        keep_alive,
    })
}

/// Reads one line ending in LF (CRLF or a bare LF), without its end. A line
/// longer than the remaining `budget` is refused with `too_long`.
fn read_line(
    reader: &mut impl BufRead,
    budget: &mut usize,
    too_long: u16,
) -> Result<Vec<u8>, ReadError> {
    let mut line = Vec::new();
    let limit = u64::try_from(*budget).unwrap_or(u64::MAX).saturating_add(1);
    let read = Read::take(&mut *reader, limit)
        .read_until(b'\n', &mut line)
        .map_err(|_| ReadError::Closed)?;
    if read > *budget {
        return Err(reject(too_long, "request head too large"));
    }
    if line.last() != Some(&b'\n') {
        // End of stream before the line ended.
        return Err(ReadError::Closed);
    }
    *budget -= read;
    line.pop();
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    Ok(line)
}

fn parse_request_line(line: &[u8]) -> Result<(String, String, bool), ReadError> {
    let line = std::str::from_utf8(line).map_err(|_| bad("request line is not ASCII"))?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("malformed request line"));
    };
    if method.is_empty() || !method.bytes().all(is_tchar) {
        return Err(bad("malformed method"));
    }
    if target.is_empty() || !target.bytes().all(|b| (0x21..0x7f).contains(&b)) {
        return Err(bad("malformed request target"));
    }
    let http10 = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        _ => {
            let digits = version
                .strip_prefix("HTTP/")
                .and_then(|v| v.split_once('.'))
                .is_some_and(|(major, minor)| {
                    [major, minor]
                        .iter()
                        .all(|n| n.len() == 1 && n.bytes().all(|b| b.is_ascii_digit()))
                });
            return Err(if digits {
                reject(505, "only HTTP/1.0 and HTTP/1.1 are supported")
            } else {
                bad("malformed HTTP version")
            });
        }
    };
    let target = if target.starts_with('/') || (target == "*" && method == "OPTIONS") {
        target.to_owned()
    } else if let Some((_scheme, rest)) = target.split_once("://") {
        // absolute-form: keep the path and query after the authority.
        match rest.find(['/', '?']) {
            Some(at) if rest.as_bytes().get(at) == Some(&b'/') => rest[at..].to_owned(),
            Some(at) => format!("/{}", &rest[at..]),
            None => "/".to_owned(),
        }
    } else {
        return Err(bad("unsupported request target form"));
    };
    Ok((method.to_owned(), target, http10))
}

/// Reads header (or trailer) fields up to the empty line that ends them.
fn read_fields(
    reader: &mut impl BufRead,
    budget: &mut usize,
) -> Result<Vec<(String, String)>, ReadError> {
    let mut fields = Vec::new();
    loop {
        let line = read_line(reader, budget, 431)?;
        if line.is_empty() {
            return Ok(fields);
        }
        if fields.len() == MAX_HEADERS {
            return Err(reject(431, "too many header fields"));
        }
        if line[0] == b' ' || line[0] == b'\t' {
            return Err(bad("obsolete line folding"));
        }
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or_else(|| bad("header line without a colon"))?;
        let (name, value) = line.split_at(colon);
        if name.is_empty() || !name.iter().copied().all(is_tchar) {
            return Err(bad("malformed header name"));
        }
        let value = value[1..].trim_ascii();
        if value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return Err(bad("control character in a header value"));
        }
        fields.push((
            String::from_utf8_lossy(name).to_ascii_lowercase(),
            String::from_utf8_lossy(value).into_owned(),
        ));
    }
}

fn parse_content_length(text: &str) -> Result<u64, ReadError> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("malformed content-length"));
    }
    // Only overflow can fail here; a length past u64 is too large anyway.
    Ok(text.parse().unwrap_or(u64::MAX))
}

fn read_exact_body(reader: &mut impl BufRead, length: u64) -> Result<Vec<u8>, ReadError> {
    let mut body = Vec::with_capacity(usize::try_from(length.min(64 * 1024)).unwrap_or(0));
    let read = Read::take(&mut *reader, length)
        .read_to_end(&mut body)
        .map_err(|_| ReadError::Closed)?;
    if u64::try_from(read).ok() != Some(length) {
        return Err(ReadError::Closed);
    }
    Ok(body)
}

fn read_chunked(reader: &mut impl BufRead) -> Result<Vec<u8>, ReadError> {
    let mut body = Vec::new();
    loop {
        let mut line_budget = MAX_CHUNK_LINE;
        let line = read_line(reader, &mut line_budget, 400)?;
        let size = line
            .split(|&b| b == b';')
            .next()
            .unwrap_or_default()
            .trim_ascii();
        if size.is_empty() || size.len() > 15 || !size.iter().all(u8::is_ascii_hexdigit) {
            return Err(bad("malformed chunk size"));
        }
        let size = std::str::from_utf8(size)
            .ok()
            .and_then(|s| u64::from_str_radix(s, 16).ok())
            .ok_or_else(|| bad("malformed chunk size"))?;
        if size == 0 {
            let mut trailer_budget = MAX_HEAD_BYTES;
            read_fields(reader, &mut trailer_budget)?;
            return Ok(body);
        }
        let total = u64::try_from(body.len())
            .unwrap_or(u64::MAX)
            .saturating_add(size);
        if total > MAX_BODY_BYTES {
            return Err(reject(413, "request body too large"));
        }
        body.extend(read_exact_body(reader, size)?);
        let mut crlf_budget = 2;
        if !read_line(reader, &mut crlf_budget, 400)?.is_empty() {
            return Err(bad("chunk data longer than its size"));
        }
    }
}

/// token characters of RFC 9110 §5.6.2.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Writes a complete `text/plain` response. `head_only` leaves the body out
/// (a HEAD request); `close` announces that the connection ends after it.
pub fn write_response(
    out: &mut impl Write,
    status: u16,
    body: &[u8],
    head_only: bool,
    close: bool,
    http10: bool,
) -> io::Result<()> {
    let connection = match (close, http10) {
        (true, _) => "Connection: close\r\n",
        (false, true) => "Connection: keep-alive\r\n",
        (false, false) => "",
    };
    let mut message = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n{connection}\r\n",
        reason(status),
        body.len()
    )
    .into_bytes();
    if !head_only {
        message.extend_from_slice(body);
    }
    out.write_all(&message)?;
    out.flush()
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(input: &[u8]) -> (Result<Request, ReadError>, Vec<u8>) {
        let mut interim = Vec::new();
        let result = read_request(&mut &input[..], &mut interim);
        (result, interim)
    }

    fn status(input: &[u8]) -> u16 {
        match read(input).0 {
            Err(ReadError::Reject { status, .. }) => status,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    #[test]
    fn reads_keep_alive_requests_in_turn() {
        let input = b"POST /a?x=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabcGET /ping HTTP/1.1\r\nConnection: close\r\n\r\n";
        let mut reader = &input[..];
        let first = read_request(&mut reader, &mut io::sink()).unwrap();
        assert_eq!(first.method, "POST");
        assert_eq!(first.target, "/a?x=1");
        assert_eq!(first.body, b"abc");
        assert!(first.keep_alive);
        let second = read_request(&mut reader, &mut io::sink()).unwrap();
        assert_eq!(second.target, "/ping");
        assert!(!second.keep_alive);
        assert_eq!(
            read_request(&mut reader, &mut io::sink()),
            Err(ReadError::Closed)
        );
    }

    #[test]
    fn reads_a_chunked_body_and_answers_expect() {
        let (request, interim) = read(
            b"PUT / HTTP/1.1\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nTrailer: t\r\n\r\n",
        );
        assert_eq!(request.unwrap().body, b"abcde");
        assert_eq!(interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    }

    #[test]
    fn http10_closes_unless_asked() {
        let (request, _) = read(b"GET / HTTP/1.0\r\n\r\n");
        assert!(!request.unwrap().keep_alive);
        let (request, _) = read(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n");
        assert!(request.unwrap().keep_alive);
    }

    #[test]
    fn absolute_form_is_reduced_to_the_path() {
        let (request, _) = read(b"GET http://example.com:8080/p?q HTTP/1.1\r\n\r\n");
        assert_eq!(request.unwrap().target, "/p?q");
        let (request, _) = read(b"GET http://example.com?q HTTP/1.1\r\n\r\n");
        assert_eq!(request.unwrap().target, "/?q");
    }

    #[test]
    fn refuses_malformed_requests() {
        assert_eq!(status(b"garbage\r\n\r\n"), 400);
        assert_eq!(status(b"GET /\r\n\r\n"), 400);
        assert_eq!(status(b"GET  / HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(status(b"G(T / HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(status(b"GET x HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/2.0\r\n\r\n"), 505);
        assert_eq!(status(b"GET / HTTQ/1.1\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.1\r\nNoColon\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.1\r\nBad Name: b\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.1\r\nA: b\x00c\r\n\r\n"), 400);
        assert_eq!(
            status(b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"),
            400
        );
        assert_eq!(
            status(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            400
        );
        assert_eq!(
            status(b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n"),
            413
        );
        assert_eq!(
            status(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n"),
            501
        );
        assert_eq!(
            status(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n"),
            400
        );
        assert_eq!(
            status(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"),
            400
        );
        assert_eq!(
            status(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nabc\r\n"),
            400
        );
        assert_eq!(status(b"\xff / HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(status(&[b'\n'; 20]), 400);
    }

    #[test]
    fn caps_the_head() {
        let mut big = b"GET / HTTP/1.1\r\n".to_vec();
        big.extend(format!("A: {}\r\n\r\n", "x".repeat(MAX_HEAD_BYTES)).as_bytes());
        assert_eq!(status(&big), 431);
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend(format!("H{i}: v\r\n").as_bytes());
        }
        many.extend(b"\r\n");
        assert_eq!(status(&many), 431);
    }

    #[test]
    fn truncated_input_is_a_close() {
        assert_eq!(read(b"").0, Err(ReadError::Closed));
        assert_eq!(read(b"GET / HT").0, Err(ReadError::Closed));
        assert_eq!(
            read(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nab").0,
            Err(ReadError::Closed)
        );
    }

    #[test]
    fn writes_a_response_with_its_length() {
        let mut out = Vec::new();
        write_response(&mut out, 200, b"pong", false, false, false).unwrap();
        assert_eq!(
            out,
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 4\r\n\r\npong"
        );
        let mut out = Vec::new();
        write_response(&mut out, 400, b"bad", true, true, false).unwrap();
        assert!(out.ends_with(b"Content-Length: 3\r\nConnection: close\r\n\r\n"));
    }
}
