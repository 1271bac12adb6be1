//! Paths of the example functions, built for their wasm targets by this
//! crate's `build.rs`: depend on it and the guests are fresh.

include!(concat!(env!("OUT_DIR"), "/paths.rs"));

/// Every example function: (name, path).
pub fn all() -> [(&'static str, &'static str); 3] {
    [
        ("hello", HELLO),
        ("cgi-echo", CGI_ECHO),
        ("misbehave", MISBEHAVE),
    ]
}
