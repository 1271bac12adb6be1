//! Secrets: made through the API and the CLI, read by container and wasm
//! functions as read-only files in /var/openfaas/secrets, rolled on
//! update, kept across a restart, and never shown anywhere.

use std::io::Write as _;
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use wisp_e2e::{Wisp, artifacts, busybox_rootfs, eventually};

/// The value no answer, log line or listing may contain.
const VALUE: &str = "s3cr3t-db-pw";
const NEW_VALUE: &str = "r0tated-db-pw";

async fn call(wisp: &Wisp, method: Method, path: &str, body: &str) -> (StatusCode, String) {
    let answer = wisp
        .client
        .call(method, path, HeaderMap::new(), Bytes::from(body.to_owned()))
        .await
        .unwrap();
    (answer.status, answer.text())
}

/// A busybox CGI function that prints its secrets directory, the secret
/// `db` and whether it could overwrite it.
fn deploy_reader(wisp: &Wisp, rootfs: &std::path::Path) {
    let script = "printf 'Content-Type: text/plain\\r\\n\\r\\n'; \
        ls /var/openfaas/secrets | tr '\\n' ' '; echo; \
        cat /var/openfaas/secrets/db; echo; \
        (echo x > /var/openfaas/secrets/db) 2>/dev/null && echo writable || echo read-only";
    let rootfs_str = rootfs.to_str().unwrap();
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/tr")).unwrap();
    let out = wisp.cli(&[
        "deploy",
        "reader",
        "--rootfs",
        rootfs_str,
        "--secret",
        "db",
        "--secret",
        "api-key",
        "--protocol",
        "cgi",
        "--",
        "/bin/sh",
        "-c",
        script,
    ]);
    assert!(out.success, "{}{}", out.stdout, out.stderr);
}

#[tokio::test]
async fn functions_read_their_secrets_as_read_only_files_and_updates_roll_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut wisp = Wisp::builder().data_dir(dir.path()).start().unwrap();

    // Three ways in: a literal, standard input, a file (binary kept whole).
    wisp.cli(&["secret", "create", "db", "--from-literal", VALUE])
        .expect_success();
    let mut child = wisp
        .cli_command(&["secret", "create", "api-key"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"key-from-stdin")
        .unwrap();
    assert!(child.wait_with_output().unwrap().status.success());
    let binary = dir.path().join("binary");
    std::fs::write(&binary, [0u8, 159, 146, 150, 255]).unwrap();
    wisp.cli(&[
        "secret",
        "create",
        "blob",
        "--from-file",
        binary.to_str().unwrap(),
    ])
    .expect_success();
    let listed = wisp.cli(&["secret", "ls"]).expect_success();
    assert_eq!(listed, "api-key\nblob\ndb\n");

    let rootfs = busybox_rootfs();
    deploy_reader(&wisp, rootfs.path());
    wisp.deploy_with("misbehave", artifacts::MISBEHAVE, |d| {
        d.secrets = Some(vec!["db".into(), "blob".into()]);
    })
    .await
    .unwrap();

    let container = wisp.invoke("GET", "/function/reader", "").await;
    assert_eq!(container.status, StatusCode::OK, "{}", container.text());
    assert_eq!(
        container.text(),
        format!("api-key db \n{VALUE}\nread-only\n")
    );
    let wasm = |path: &str| {
        let path = format!("/function/misbehave/{path}");
        let wisp = &wisp;
        async move { wisp.invoke("GET", &path, "").await.text() }
    };
    assert_eq!(wasm("read?path=/var/openfaas/secrets/db").await, VALUE);
    assert!(
        wasm("write?path=/var/openfaas/secrets/db")
            .await
            .starts_with("error:"),
        "a wasm guest may not write its secrets"
    );
    assert!(
        wasm("read?path=/var/openfaas/secrets/api-key")
            .await
            .starts_with("error:"),
        "a function sees only the secrets it names"
    );

    // Updating a secret rolls the functions that use it.
    let (status, text) = call(
        &wisp,
        Method::PUT,
        "/system/secrets",
        &format!(r#"{{"name":"db","value":"{NEW_VALUE}"}}"#),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert!(
        text.contains("misbehave") && text.contains("reader"),
        "{text}"
    );
    assert_eq!(wasm("read?path=/var/openfaas/secrets/db").await, NEW_VALUE);
    assert!(
        wisp.invoke("GET", "/function/reader", "")
            .await
            .text()
            .contains(NEW_VALUE)
    );

    // Names only, anywhere; never a value.
    let (_, listing) = call(&wisp, Method::GET, "/system/secrets", "").await;
    assert_eq!(
        listing,
        r#"[{"name":"api-key","namespace":"openfaas-fn"},{"name":"blob","namespace":"openfaas-fn"},{"name":"db","namespace":"openfaas-fn"}]"#
    );
    let (_, status) = call(&wisp, Method::GET, "/system/function/reader", "").await;
    assert!(status.contains(r#""secrets":["api-key","db"]"#), "{status}");
    let ls = wisp.cli(&["ls"]).expect_success();
    let metrics = wisp.metrics().await;
    for (what, text) in [
        ("the log", wisp.log()),
        ("the function's status", status),
        ("wisp ls", ls),
        ("the metrics", metrics),
    ] {
        for value in [VALUE, NEW_VALUE, "key-from-stdin"] {
            assert!(!text.contains(value), "{what} shows a secret's value");
        }
    }

    // A restart keeps secrets and the functions reading them.
    wisp.kill();
    let wisp = Wisp::builder().data_dir(dir.path()).start().unwrap();
    assert_eq!(
        wisp.invoke(
            "GET",
            "/function/misbehave/read?path=/var/openfaas/secrets/blob",
            ""
        )
        .await
        .body,
        Bytes::from_static(&[0u8, 159, 146, 150, 255])
    );
    assert!(
        wisp.invoke("GET", "/function/reader", "")
            .await
            .text()
            .contains(NEW_VALUE)
    );

    // One in use is deleted only when forced.
    let refused = wisp.cli(&["secret", "rm", "db"]).expect_failure();
    assert!(refused.contains("used by misbehave, reader"), "{refused}");
    wisp.cli(&["secret", "rm", "db", "--force"])
        .expect_success();
    wisp.client.delete("reader").await.unwrap();
    wisp.client.delete("misbehave").await.unwrap();
    // Each version's files go with it, once it has drained.
    let secrets_dir = dir.path().join("run/secrets");
    eventually(
        "the deleted functions' secret files to go",
        Duration::from_secs(10),
        async || std::fs::read_dir(&secrets_dir).unwrap().count() == 0,
    )
    .await;
}

#[tokio::test]
async fn bad_secret_requests_get_clear_errors() {
    let wisp = Wisp::start();
    let cases: &[(Method, &str, StatusCode, &str)] = &[
        (
            Method::POST,
            r#"{"name":"a/b","value":"v"}"#,
            StatusCode::BAD_REQUEST,
            "invalid secret name",
        ),
        (
            Method::POST,
            r#"{"name":"..","value":"v"}"#,
            StatusCode::BAD_REQUEST,
            "starts with '.'",
        ),
        (
            Method::POST,
            r#"{"name":"","value":"v"}"#,
            StatusCode::BAD_REQUEST,
            "empty",
        ),
        (
            Method::POST,
            &format!(r#"{{"name":"{}"}}"#, "a".repeat(254)),
            StatusCode::BAD_REQUEST,
            "253",
        ),
        (
            Method::POST,
            r#"{"name":"a","rawValue":"not base64!"}"#,
            StatusCode::BAD_REQUEST,
            "not base64",
        ),
        (
            Method::POST,
            r#"{"name":"a","namespace":"team-b","value":"v"}"#,
            StatusCode::BAD_REQUEST,
            "namespace",
        ),
        (
            Method::POST,
            r#"{"value":"v"}"#,
            StatusCode::BAD_REQUEST,
            "missing field `name`",
        ),
        (Method::POST, "{", StatusCode::BAD_REQUEST, "not JSON"),
        (
            Method::PUT,
            r#"{"name":"nope","value":"v"}"#,
            StatusCode::NOT_FOUND,
            "does not exist",
        ),
        (
            Method::DELETE,
            r#"{"name":"nope"}"#,
            StatusCode::NOT_FOUND,
            "does not exist",
        ),
        (Method::PATCH, "", StatusCode::METHOD_NOT_ALLOWED, "allowed"),
    ];
    for (method, body, status, says) in cases {
        let (got, text) = call(&wisp, method.clone(), "/system/secrets", body).await;
        assert_eq!((got, method, *body), (*status, method, *body), "{text}");
        assert!(text.contains(says), "{method} {body}: {text}");
    }
    // An error never quotes the value it could not read.
    let (status, text) = call(
        &wisp,
        Method::POST,
        "/system/secrets",
        r#"{"name":"a","value":31415926535}"#,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(!text.contains("31415926535"), "{text}");

    let (status, _) = call(
        &wisp,
        Method::POST,
        "/system/secrets",
        r#"{"name":"a","value":"1"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, text) = call(
        &wisp,
        Method::POST,
        "/system/secrets",
        r#"{"name":"a","value":"2"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{text}");

    // A deploy naming a secret that does not exist is refused, naming it.
    let err = wisp
        .deploy_with("hello", artifacts::HELLO, |d| {
            d.secrets = Some(vec!["a".into(), "missing-one".into()]);
        })
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("\"missing-one\" does not exist"), "{err}");
    assert!(wisp.function_names().await.is_empty());

    let (status, text) = call(&wisp, Method::GET, "/system/namespaces", "").await;
    assert_eq!(
        (status, text.as_str()),
        (StatusCode::OK, r#"["openfaas-fn"]"#)
    );
}
