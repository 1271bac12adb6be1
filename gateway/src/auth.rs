//! The control API's token: 32 random bytes, hex-encoded, made on the first
//! start and kept in `<data dir>/token` (mode 0600). Requests to `/system/*`
//! carry it as `Authorization: Bearer <token>`, or as the password of HTTP
//! Basic auth (any user name), which is how `faas-cli` and other OpenFaaS
//! clients send their credentials. Namespace tokens, which the admin
//! makes, are checked in [`crate::namespaces`].

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use http::HeaderMap;

pub const TOKEN_FILE: &str = "token";

/// Where the token of a data dir lives.
pub fn token_path(data_dir: &Path) -> PathBuf {
    data_dir.join(TOKEN_FILE)
}

/// Reads the data dir's token, making one if there is none. Returns the
/// token and whether it was just made (so the caller prints it once).
pub fn load_or_create(data_dir: &Path) -> std::io::Result<(String, bool)> {
    let path = token_path(data_dir);
    match std::fs::read_to_string(&path) {
        Ok(token) if !token.trim().is_empty() => return Ok((token.trim().to_owned(), false)),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| std::io::Error::other(e.to_string()))?;
    let token = hex::encode(bytes);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)?;
    file.write_all(token.as_bytes())?;
    file.sync_all()?;
    Ok((token, true))
}

/// Makes `token` the data dir's token (a cluster's nodes share one, given
/// to each with `--token-file`).
pub fn install(data_dir: &Path, token: &str) -> std::io::Result<()> {
    let token = token.trim();
    if token.len() < 16 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the token must be at least 16 characters",
        ));
    }
    let path = token_path(data_dir);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)?;
    file.write_all(token.as_bytes())?;
    file.sync_all()
}

/// Reads the token of a data dir, for the CLI.
pub fn read(data_dir: &Path) -> std::io::Result<String> {
    Ok(std::fs::read_to_string(token_path(data_dir))?
        .trim()
        .to_owned())
}

/// The token a request presents, as a Bearer token or as the password of
/// Basic auth.
pub fn presented(headers: &HeaderMap) -> Option<String> {
    let value = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())?;
    if let Some(bearer) = strip_scheme(value, "bearer") {
        Some(bearer.trim().to_owned())
    } else if let Some(basic) = strip_scheme(value, "basic") {
        base64::engine::general_purpose::STANDARD
            .decode(basic.trim())
            .ok()
            .and_then(|raw| String::from_utf8(raw).ok())
            .and_then(|pair| pair.split_once(':').map(|(_, pw)| pw.to_owned()))
    } else {
        None
    }
}

/// Whether the request's credentials carry `token`.
#[cfg(test)]
fn is_authorized(headers: &HeaderMap, token: &str) -> bool {
    presented(headers).is_some_and(|p| constant_time_eq(p.as_bytes(), token.as_bytes()))
}

fn strip_scheme<'a>(value: &'a str, scheme: &str) -> Option<&'a str> {
    let (given, rest) = value.split_once(' ')?;
    given.eq_ignore_ascii_case(scheme).then_some(rest)
}

/// Compares without an early exit, so that timing says nothing of where
/// a guess went wrong.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::AUTHORIZATION,
            HeaderValue::from_str(auth).unwrap(),
        );
        h
    }

    #[test]
    fn bearer_and_basic() {
        assert!(is_authorized(&headers("Bearer s3cret"), "s3cret"));
        assert!(is_authorized(&headers("bearer s3cret"), "s3cret"));
        assert!(!is_authorized(&headers("Bearer wrong"), "s3cret"));
        // admin:s3cret
        assert!(is_authorized(&headers("Basic YWRtaW46czNjcmV0"), "s3cret"));
        assert!(!is_authorized(&headers("Basic YWRtaW46d3Jvbmc="), "s3cret"));
        assert!(!is_authorized(&headers("Basic !!!"), "s3cret"));
        assert!(!is_authorized(&HeaderMap::new(), "s3cret"));
    }

    #[test]
    fn token_is_made_once() {
        let dir = tempfile::tempdir().unwrap();
        let (t1, new1) = load_or_create(dir.path()).unwrap();
        let (t2, new2) = load_or_create(dir.path()).unwrap();
        assert!(new1 && !new2);
        assert_eq!(t1, t2);
        assert_eq!(t1.len(), 64);
        let mode = std::fs::metadata(token_path(dir.path()))
            .unwrap()
            .permissions();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(mode.mode() & 0o777, 0o600);
    }
}
