//! `cgi-echo-native`: wisp's example CGI function for the container backend,
//! the native twin of the wasm `cgi-echo`.
//!
//! Reads the request from the CGI environment (RFC 3875) and stdin and
//! echoes it back as text. `?status=NNN` sets the response status. The body
//! is read up to `CONTENT_LENGTH` when that is set (a CGI program must not
//! read past it), else to the end of stdin.

use std::io::{Read, Write};

fn main() {
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    let query = var("QUERY_STRING");
    let status = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("status="))
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|s| (200..600).contains(s))
        .unwrap_or(200);
    let mut body = Vec::new();
    let mut stdin = std::io::stdin().lock();
    let _ = match var("CONTENT_LENGTH").trim().parse::<u64>() {
        Ok(length) => stdin.take(length).read_to_end(&mut body),
        Err(_) => stdin.read_to_end(&mut body),
    };

    let mut out = std::io::stdout().lock();
    let _ = write!(
        out,
        "Status: {status}\r\nContent-Type: text/plain; charset=utf-8\r\nX-Cgi: wisp\r\n\r\n"
    );
    let _ = writeln!(out, "cgi-echo-native");
    for name in [
        "REQUEST_METHOD",
        "SCRIPT_NAME",
        "PATH_INFO",
        "QUERY_STRING",
        "CONTENT_TYPE",
        "CONTENT_LENGTH",
    ] {
        let _ = writeln!(out, "{name}={}", var(name));
    }
    let mut headers: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.to_string_lossy().into_owned())))
        .filter(|(k, _)| k.starts_with("HTTP_"))
        .collect();
    headers.sort();
    for (name, value) in headers {
        let _ = writeln!(out, "{name}={value}");
    }
    if let Ok(greeting) = std::env::var("GREETING") {
        let _ = writeln!(out, "GREETING={greeting}");
    }
    let _ = write!(out, "body=");
    let _ = out.write_all(&body);
    let _ = writeln!(out);
    let _ = out.flush();
}
