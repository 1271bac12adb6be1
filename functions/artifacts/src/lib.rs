//! Paths of the example functions, built by this crate's `build.rs`: the
//! wasm guests, the static `x86_64-unknown-linux-musl` programs of the
//! container examples, and their images as an OCI layout directory and a
//! `docker save` archive. Depend on it and they are all fresh.

include!(concat!(env!("OUT_DIR"), "/paths.rs"));

/// Every example function and image: (name, path). `hello` and `cgi-echo`
/// are the names the demo script deploys.
pub fn all() -> &'static [(&'static str, &'static str)] {
    &[
        ("hello", HELLO),
        ("cgi-echo", CGI_ECHO),
        ("misbehave", MISBEHAVE),
        ("ping", PING_BIN),
        ("ping-oci", PING_OCI_LAYOUT),
        ("ping-docker", PING_DOCKER_ARCHIVE),
        ("cgi-echo-native", CGI_NATIVE_BIN),
        ("cgi-echo-native-oci", CGI_NATIVE_OCI_LAYOUT),
        ("cgi-echo-native-docker", CGI_NATIVE_DOCKER_ARCHIVE),
        ("syscall-probe", SYSCALL_PROBE_BIN),
        ("lambda-hello-docker", LAMBDA_HELLO_DOCKER_ARCHIVE),
        ("lambda-http-docker", LAMBDA_HTTP_DOCKER_ARCHIVE),
    ]
}
