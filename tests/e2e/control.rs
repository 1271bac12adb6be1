//! The control API: auth, validation, OpenFaaS shapes, atomic deploys.

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode, header};
use wisp_e2e::{Client, FunctionDeployment, Wisp, artifacts};

fn digest_of_nothing() -> String {
    format!("sha256:{}", "0".repeat(64))
}

#[tokio::test]
async fn system_routes_need_the_token() {
    let wisp = Wisp::start();
    let anonymous = Client::new(&wisp.addr, None);
    let answer = anonymous
        .call(
            Method::GET,
            "/system/functions",
            HeaderMap::new(),
            Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert!(answer.headers.contains_key(header::WWW_AUTHENTICATE));
    let wrong = Client::new(&wisp.addr, Some("nope".into()));
    let answer = wrong
        .call(Method::POST, "/system/artifacts", HeaderMap::new(), "x")
        .await
        .unwrap();
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    // faas-cli style: HTTP Basic with the token as password.
    let mut headers = HeaderMap::new();
    let basic = base64_basic("admin", &wisp.token);
    headers.insert(
        header::AUTHORIZATION,
        format!("Basic {basic}").parse().unwrap(),
    );
    let answer = anonymous
        .call(Method::GET, "/system/functions", headers, Bytes::new())
        .await
        .unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    // Health and invocations are public.
    let health = anonymous
        .call(Method::GET, "/healthz", HeaderMap::new(), Bytes::new())
        .await
        .unwrap();
    assert_eq!(health.status, StatusCode::OK);
}

#[tokio::test]
async fn prune_is_a_post_behind_the_token() {
    let wisp = Wisp::start();
    let anonymous = Client::new(&wisp.addr, None);
    let answer = anonymous
        .call(
            Method::POST,
            "/system/prune",
            HeaderMap::new(),
            Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    let answer = wisp.invoke("GET", "/system/prune", "").await;
    assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED);
    let answer = wisp
        .invoke("POST", "/system/prune?dryRun=perhaps", "")
        .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{}", answer.text());
    let answer = wisp.invoke("POST", "/system/prune?dryRun=true", "").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    let report: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(report["dryRun"], true);
    assert_eq!(report["bytes"], 0);
}

fn base64_basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
}

#[tokio::test]
async fn info_health_and_openfaas_shapes() {
    let wisp = Wisp::start();
    let info = wisp.client.info().await.unwrap();
    assert_eq!(info.provider.provider, "wisp");
    assert!(!info.version.release.is_empty());
    wisp.deploy_with("hello", artifacts::HELLO, |d| {
        d.labels = Some([("com.openfaas.scale.min".to_owned(), "0".to_owned())].into());
        d.env_vars = Some([("A".to_owned(), "1".to_owned())].into());
    })
    .await
    .unwrap();
    // The client adds the token only for /system/ paths; this one is one.
    let raw = wisp.invoke("GET", "/system/function/hello", "").await;
    assert_eq!(raw.status, StatusCode::OK);
    let json: serde_json::Value = serde_json::from_slice(&raw.body).unwrap();
    for field in [
        "name",
        "image",
        "namespace",
        "envVars",
        "labels",
        "invocationCount",
        "replicas",
        "availableReplicas",
        "createdAt",
    ] {
        assert!(json.get(field).is_some(), "missing {field} in {json}");
    }
    assert_eq!(json["envVars"]["A"], "1");
    assert_eq!(json["kind"], "wasm-http");
    let list = wisp.client.list().await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].name, "hello");
}

#[tokio::test]
async fn bad_deployments_are_400_and_change_nothing() {
    let wisp = Wisp::start();
    wisp.deploy("hello", artifacts::HELLO).await;
    let before = wisp.client.list().await.unwrap();

    let not_wasm = wisp
        .client
        .upload_artifact(Bytes::from_static(b"#!/bin/sh\necho hi\n"))
        .await
        .unwrap();
    let empty_module = wisp
        .client
        .upload_artifact(Bytes::from_static(b"\0asm\x01\0\0\0"))
        .await
        .unwrap();
    let cli_component = wisp.upload(artifacts::CLI_COMPONENT).await.unwrap();
    let truncated_bytes = std::fs::read(artifacts::HELLO).unwrap()[..5000].to_vec();
    let truncated = wisp.client.upload_artifact(truncated_bytes).await.unwrap();

    let long_name = "x".repeat(64);
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "hello",
            not_wasm.digest.clone(),
            "neither a WebAssembly binary nor",
        ),
        ("hello", empty_module.digest.clone(), "_start"),
        ("hello", cli_component, "wasi:http/proxy"),
        ("hello", truncated.digest.clone(), "failed to compile"),
        ("hello", digest_of_nothing(), "not in the artifact store"),
        ("hello", "Not An Image!".into(), "nor a registry reference"),
        ("", not_wasm.digest.clone(), "empty"),
        ("a/b", not_wasm.digest.clone(), "path separator"),
        ("Hello", not_wasm.digest.clone(), "lower-case"),
        (&long_name, not_wasm.digest.clone(), "longer than 63"),
    ];
    for (name, image, expected) in cases {
        let deployment = FunctionDeployment {
            service: name.to_owned(),
            image,
            ..Default::default()
        };
        let err = wisp
            .client
            .deploy(&deployment)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("400"), "{name}: {err}");
        assert!(
            err.contains(expected),
            "{name}: expected {expected:?} in {err}"
        );
    }

    // Limits past wisp's bounds (issue 11, finding 11: "1000Gi" was taken).
    let hello = wisp.upload(artifacts::HELLO).await.unwrap();
    for (max_body_size, memory, timeout, expected) in [
        (Some("1000Gi"), None, None, "body limit"),
        (Some("2Gi"), None, None, "1..=1Gi"),
        (None, Some("64Gi"), None, "memory limit"),
        (None, None, Some("48h"), "timeout"),
    ] {
        let deployment = FunctionDeployment {
            service: "hello".to_owned(),
            image: hello.clone(),
            max_body_size: max_body_size.map(str::to_owned),
            limits: memory.map(|m| wisp::api::FunctionResources {
                memory: Some(m.to_owned()),
                ..Default::default()
            }),
            timeout: timeout.map(str::to_owned),
            ..Default::default()
        };
        let err = wisp
            .client
            .deploy(&deployment)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("400") && err.contains(expected), "{err}");
    }

    // Malformed JSON, or not a deployment.
    for body in ["{", r#"{"service":"hello","imagee":"y"}"#, "[]"] {
        let answer = wisp.invoke("POST", "/system/functions", body).await;
        assert_eq!(
            answer.status,
            StatusCode::BAD_REQUEST,
            "{body}: {}",
            answer.text()
        );
    }
    assert_eq!(wisp.client.list().await.unwrap(), before);
    let still = wisp.invoke("GET", "/function/hello", "").await;
    assert_eq!(still.status, StatusCode::OK);
}

#[tokio::test]
async fn unknown_functions_and_routes_are_404() {
    let wisp = Wisp::start();
    let answer = wisp.invoke("GET", "/function/ghost/x", "").await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert!(answer.text().contains("\"ghost\""), "{}", answer.text());
    assert_eq!(
        wisp.invoke("GET", "/nothing-here", "").await.status,
        StatusCode::NOT_FOUND
    );
    let err = wisp.client.function("ghost").await.unwrap_err().to_string();
    assert!(err.starts_with("404"), "{err}");
    let err = wisp.client.delete("ghost").await.unwrap_err().to_string();
    assert!(err.starts_with("404"), "{err}");
    let update = FunctionDeployment {
        service: "ghost".into(),
        image: digest_of_nothing(),
        ..Default::default()
    };
    let body = serde_json::to_vec(&update).unwrap();
    let update = FunctionDeployment {
        image: wisp.upload(artifacts::HELLO).await.unwrap(),
        ..update
    };
    let answer = wisp
        .invoke(
            "PUT",
            "/system/functions",
            &serde_json::to_string(&update).unwrap(),
        )
        .await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND, "{}", answer.text());
    let _ = body;
    let answer = wisp.invoke("PATCH", "/system/functions", "").await;
    assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(answer.headers.contains_key(header::ALLOW));
}

#[tokio::test]
async fn undeclared_methods_are_405_with_allow() {
    let wisp = Wisp::start();
    wisp.deploy("hello", artifacts::HELLO).await;
    for (method, path, allow) in [
        ("TRACE", "/healthz", "GET, HEAD"),
        ("POST", "/metrics", "GET, HEAD"),
        (
            "TRACE",
            "/function/hello",
            "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS",
        ),
        (
            "PROPFIND",
            "/function/hello/a",
            "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS",
        ),
    ] {
        let answer = wisp.invoke(method, path, "").await;
        assert_eq!(
            answer.status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}: {}",
            answer.text()
        );
        assert_eq!(answer.headers[header::ALLOW], allow, "{method} {path}");
    }
    // The methods OpenFaaS's proxy forwards reach the handler.
    for method in ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] {
        let answer = wisp.invoke(method, "/function/hello", "").await;
        assert!(
            answer.text().contains(&format!("method: {method}")),
            "{method}: {}",
            answer.text()
        );
    }
    let head = wisp.invoke("HEAD", "/healthz", "").await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.body.is_empty());
}

#[tokio::test]
async fn update_and_delete() {
    let wisp = Wisp::start();
    wisp.deploy("fn", artifacts::HELLO).await;
    assert!(
        wisp.invoke("GET", "/function/fn", "")
            .await
            .text()
            .contains("Hello")
    );
    let update = FunctionDeployment {
        service: "fn".into(),
        image: wisp.upload(artifacts::CGI_ECHO).await.unwrap(),
        ..Default::default()
    };
    // A field no one defines is ignored (the spec allows it) and named.
    let mut body = serde_json::to_value(&update).unwrap();
    body["imgae"] = "a typo".into();
    let answer = wisp
        .invoke("PUT", "/system/functions", &body.to_string())
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert!(
        answer.text().contains("ignored unknown fields: \"imgae\""),
        "{}",
        answer.text()
    );
    assert!(
        wisp.invoke("GET", "/function/fn", "")
            .await
            .text()
            .contains("cgi-echo")
    );
    wisp.client.delete("fn").await.unwrap();
    assert_eq!(
        wisp.invoke("GET", "/function/fn", "").await.status,
        StatusCode::NOT_FOUND
    );
    assert!(wisp.client.list().await.unwrap().is_empty());
}

#[tokio::test]
async fn oversized_artifacts_are_413() {
    let wisp = Wisp::builder()
        .arg("--max-artifact-size")
        .arg("1Ki")
        .start()
        .unwrap();
    let err = wisp
        .client
        .upload_artifact(vec![0u8; 4096])
        .await
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("413"), "{err}");
    let err = wisp
        .client
        .upload_artifact(Bytes::new())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("400") && err.contains("empty"), "{err}");
}

#[tokio::test]
async fn metrics_count_invocations_and_cold_starts() {
    let wisp = Wisp::start();
    wisp.deploy("hello", artifacts::HELLO).await;
    wisp.deploy_with("slow", artifacts::MISBEHAVE, |d| {
        d.timeout = Some("1s".into())
    })
    .await
    .unwrap();
    for _ in 0..3 {
        assert_eq!(
            wisp.invoke("GET", "/function/hello", "").await.status,
            StatusCode::OK
        );
    }
    assert_eq!(
        wisp.invoke("GET", "/function/slow/loop", "").await.status,
        StatusCode::GATEWAY_TIMEOUT
    );
    let _ = wisp.invoke("GET", "/function/not-deployed-x", "").await;
    let metrics = wisp.invoke("GET", "/metrics", "").await;
    assert_eq!(metrics.status, StatusCode::OK);
    assert!(
        metrics.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = metrics.text();
    for expected in [
        r#"gateway_function_invocation_total{code="200",function_name="hello"} 3"#,
        r#"gateway_function_invocation_total{code="504",function_name="slow"} 1"#,
        r#"gateway_functions_seconds_count{code="200",function_name="hello"} 3"#,
        r#"wisp_cold_start_seconds_count{backend="wasm",function_name="hello"} 1"#,
        r#"gateway_service_count{function_name="hello"} 1"#,
        r#"wisp_requests_in_flight{function_name="hello"} 0"#,
    ] {
        assert!(text.contains(expected), "missing {expected} in\n{text}");
    }
    assert!(
        !text.contains("not-deployed-x"),
        "unknown names must not become labels"
    );
}

#[tokio::test]
async fn scale_and_status_follow_the_path_and_namespace() {
    let wisp = Wisp::start();
    wisp.deploy("hello", artifacts::HELLO).await;
    // The path names the function: an unknown one is a 404 whatever the body.
    let ghost = wisp
        .invoke("POST", "/system/scale-function/ghost", "not json")
        .await;
    assert_eq!(ghost.status, StatusCode::NOT_FOUND, "{}", ghost.text());
    // The body is optional; serviceName does not override the path, as in OpenFaaS.
    let empty = wisp
        .invoke("POST", "/system/scale-function/hello", "")
        .await;
    assert_eq!(empty.status, StatusCode::ACCEPTED, "{}", empty.text());
    let other_name = wisp
        .invoke(
            "POST",
            "/system/scale-function/hello",
            r#"{"serviceName":"nodeinfo","namespace":"openfaas-fn","replicas":0}"#,
        )
        .await;
    assert_eq!(
        other_name.status,
        StatusCode::ACCEPTED,
        "{}",
        other_name.text()
    );
    assert!(
        other_name.text().starts_with("scaled hello"),
        "{}",
        other_name.text()
    );
    for bad in [
        r#"{"serviceName":"hello","replicas":-1}"#,
        r#"{"serviceName":"hello","replicas":9223372036854775808}"#,
        r#"{"replicas":1}"#,
        "{}",
    ] {
        let answer = wisp
            .invoke("POST", "/system/scale-function/hello", bad)
            .await;
        assert_eq!(
            answer.status,
            StatusCode::BAD_REQUEST,
            "{bad}: {}",
            answer.text()
        );
    }
    // The spec's replicas is any int64 >= 0: past wisp's limit, capped.
    let many = wisp
        .invoke(
            "POST",
            "/system/scale-function/hello",
            r#"{"serviceName":"hello","replicas":9223372036854775807}"#,
        )
        .await;
    assert_eq!(many.status, StatusCode::ACCEPTED, "{}", many.text());
    assert!(
        many.text().contains("capped at wisp's limit of 1000"),
        "{}",
        many.text()
    );
    // wisp has one namespace: a function is not found in another.
    let elsewhere = wisp
        .invoke(
            "POST",
            "/system/scale-function/hello",
            r#"{"serviceName":"hello","namespace":"staging","replicas":1}"#,
        )
        .await;
    assert_eq!(
        elsewhere.status,
        StatusCode::NOT_FOUND,
        "{}",
        elsewhere.text()
    );
    for (query, status) in [
        ("", StatusCode::OK),
        ("?namespace=openfaas-fn", StatusCode::OK),
        ("?namespace=staging", StatusCode::NOT_FOUND),
    ] {
        let answer = wisp
            .invoke("GET", &format!("/system/function/hello{query}"), "")
            .await;
        assert_eq!(answer.status, status, "{query}: {}", answer.text());
    }
}
