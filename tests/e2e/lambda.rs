//! AWS Lambda functions run unchanged: a custom runtime built with AWS's
//! `lambda_runtime` (an image whose entrypoint is `/var/runtime/bootstrap`)
//! is found to be one at deploy, fetches function URL events from the
//! Runtime API wisp serves inside its sandbox, and its results, errors,
//! crashes and overruns come back as Lambda's would.

use std::path::PathBuf;
use std::time::Duration;

use http::StatusCode;
use wisp_e2e::{Wisp, artifacts};

#[tokio::test]
async fn a_lambda_runtime_function_runs_unchanged() {
    let wisp = Wisp::builder()
        .env("WISP_LAMBDA_REGION", "eu-west-1")
        .start()
        .unwrap();
    let out = wisp
        .cli(&[
            "deploy",
            "hello-lambda",
            "--image",
            artifacts::LAMBDA_HELLO_DOCKER_ARCHIVE,
            "--timeout",
            "2s",
        ])
        .expect_success();
    assert!(
        out.contains("lambda protocol, found a Lambda runtime in the image"),
        "{out}"
    );

    // A request becomes a v2 event; the described response comes back,
    // cookies as Set-Cookie.
    let mut headers = http::HeaderMap::new();
    headers.insert("cookie", "s=1; t=2".parse().unwrap());
    let answer = wisp
        .client
        .call(
            http::Method::POST,
            "/function/hello-lambda/items/7?a=1",
            headers,
            bytes::Bytes::from_static(b"payload"),
        )
        .await
        .unwrap();
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert_eq!(
        answer.text(),
        r#"hello from lambda: POST /items/7?a=1 cookies=["s=1","t=2"] base64=false body=payload"#
    );
    assert_eq!(answer.headers["x-handled-by"], "lambda_runtime");
    assert_eq!(answer.headers["content-type"], "text/plain");
    let cookies: Vec<_> = answer.headers.get_all("set-cookie").iter().collect();
    assert_eq!(cookies, ["a=1", "b=2"]);
    let timing = answer.headers["server-timing"].to_str().unwrap();
    assert!(timing.starts_with("cold"), "{timing}");

    // Binary bodies travel base64, as in AWS.
    let binary = wisp
        .client
        .call(
            http::Method::POST,
            "/function/hello-lambda/bin",
            http::HeaderMap::new(),
            bytes::Bytes::from_static(&[0xff, 0x00, 0x01]),
        )
        .await
        .unwrap();
    assert!(
        binary.text().ends_with("base64=true body=/wAB"),
        "{}",
        binary.text()
    );

    // No statusCode: the result is a JSON body.
    let plain = wisp.invoke("GET", "/function/hello-lambda/plain", "").await;
    assert_eq!(plain.status, StatusCode::OK);
    assert_eq!(plain.headers["content-type"], "application/json");
    assert_eq!(plain.text(), r#"{"message":"no statusCode here"}"#);

    // What the runtime was told.
    let context = wisp
        .invoke("GET", "/function/hello-lambda/context", "")
        .await;
    let context: serde_json::Value = serde_json::from_str(&context.text()).unwrap();
    assert_eq!(context["functionName"], "hello-lambda");
    assert_eq!(context["memory"], 128, "{context}");
    assert_eq!(context["version"], "1", "the revision");
    assert_eq!(
        context["region"], "eu-west-1",
        "the server's --lambda-region"
    );
    assert_eq!(context["taskRoot"], "/var/task");
    assert_eq!(context["runtimeApi"], "127.0.0.1:9001");
    assert!(
        context["arn"]
            .as_str()
            .unwrap()
            .ends_with(":function:hello-lambda")
    );
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let deadline = context["deadlineMs"].as_u64().unwrap();
    assert!(
        deadline > now_ms && deadline <= now_ms + 2_500,
        "the deadline is the function's timeout away: {deadline} vs now {now_ms}"
    );

    // An error the handler returns: a 502 (as a function URL answers)
    // naming its type, not its message; the sandbox is kept (the next
    // request is warm).
    let error = wisp.invoke("GET", "/function/hello-lambda/error", "").await;
    assert_eq!(error.status, StatusCode::BAD_GATEWAY);
    assert!(
        error.text().contains("returned an error") && !error.text().contains("on purpose"),
        "{}",
        error.text()
    );
    assert!(wisp.log().contains("the handler failed on purpose"));
    let after = wisp.invoke("GET", "/function/hello-lambda/plain", "").await;
    assert!(
        after.headers["server-timing"]
            .to_str()
            .unwrap()
            .starts_with("warm")
    );

    // A crash in the middle of an invocation: 502, and a new sandbox.
    let crash = wisp.invoke("GET", "/function/hello-lambda/exit", "").await;
    assert_eq!(crash.status, StatusCode::BAD_GATEWAY, "{}", crash.text());
    let next = wisp.invoke("GET", "/function/hello-lambda/plain", "").await;
    assert_eq!(next.status, StatusCode::OK);

    // Past its timeout: 504, the sandbox replaced.
    let slow = wisp
        .invoke("GET", "/function/hello-lambda/sleep?ms=5000", "")
        .await;
    assert_eq!(slow.status, StatusCode::GATEWAY_TIMEOUT, "{}", slow.text());
    let quick = wisp
        .invoke("GET", "/function/hello-lambda/sleep?ms=1", "")
        .await;
    assert_eq!(
        (quick.status, quick.text()),
        (StatusCode::OK, "slept 1 ms".to_owned())
    );

    // One invocation at a time per sandbox: two at once take two.
    let (a, b) = tokio::join!(
        wisp.invoke("GET", "/function/hello-lambda/sleep?ms=300", ""),
        wisp.invoke("GET", "/function/hello-lambda/sleep?ms=300", ""),
    );
    assert_eq!((a.status, b.status), (StatusCode::OK, StatusCode::OK));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(wisp.replicas("hello-lambda").await >= 2);
}

#[tokio::test]
async fn a_lambda_http_function_sees_the_request_the_client_made_and_streams() {
    let wisp = Wisp::start();
    wisp.cli(&[
        "deploy",
        "web",
        "--image",
        artifacts::LAMBDA_HTTP_DOCKER_ARCHIVE,
    ])
    .expect_success();
    // lambda_http reads the event back into an http::Request: it must be
    // the request sent (v2, not mistaken for v1).
    let mut headers = http::HeaderMap::new();
    headers.insert("x-thing", "42".parse().unwrap());
    headers.insert("cookie", "c1=a; c2=b".parse().unwrap());
    let answer = wisp
        .client
        .call(
            http::Method::PUT,
            "/function/web/a/b?x=1&y=two",
            headers,
            bytes::Bytes::from_static(b"text body"),
        )
        .await
        .unwrap();
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    let mut seen: serde_json::Value = serde_json::from_str(&answer.text()).unwrap();
    // Beside the client's: the gateway's X-Forwarded-For, Lambda's trace id.
    let headers = seen["headers"].take();
    assert_eq!(headers["x-thing"], "42", "{headers}");
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1", "{headers}");
    assert!(headers["x-amzn-trace-id"].is_string(), "{headers}");
    assert_eq!(
        seen,
        serde_json::json!({
            "method": "PUT",
            "path": "/a/b",
            "query": {"x": "1", "y": "two"},
            "headers": null,
            "cookies": ["c1=a; c2=b"],
            "body": "text body",
        })
    );
    let cookies: Vec<_> = answer.headers.get_all("set-cookie").iter().collect();
    assert_eq!(cookies, ["one=1", "two=2"]);
    let binary = wisp
        .client
        .call(
            http::Method::POST,
            "/function/web/",
            http::HeaderMap::new(),
            bytes::Bytes::from_static(&[0, 159, 146, 150]),
        )
        .await
        .unwrap();
    let seen: serde_json::Value = serde_json::from_str(&binary.text()).unwrap();
    assert_eq!(seen["body"], "4 bytes");
    let teapot = wisp.invoke("GET", "/function/web/status/418", "").await;
    assert_eq!(teapot.status, StatusCode::IM_A_TEAPOT);

    // Streamed: the head from the prelude, the chunks as they are made.
    wisp.cli(&[
        "deploy",
        "stream",
        "--image",
        artifacts::LAMBDA_HTTP_DOCKER_ARCHIVE,
        "--env",
        "STREAM=1",
    ])
    .expect_success();
    let started = std::time::Instant::now();
    let response = wisp.stream("/function/stream/").await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(response.headers()["x-streamed"], "yes");
    assert_eq!(response.headers()["set-cookie"], "s=1");
    let mut body = response.into_body();
    let mut chunks = Vec::new();
    let mut first_at = None;
    while let Some(frame) = http_body_util::BodyExt::frame(&mut body).await {
        if let Ok(data) = frame.unwrap().into_data() {
            first_at.get_or_insert(started.elapsed());
            chunks.push(String::from_utf8_lossy(&data).into_owned());
        }
    }
    let whole = chunks.concat();
    assert_eq!(
        whole, "chunk 0\nchunk 1\nchunk 2\nchunk 3\nchunk 4\n",
        "{chunks:?}"
    );
    assert!(
        chunks.len() > 1,
        "the chunks arrive as they are made: {chunks:?}"
    );
    // A stream the function breaks off ends the response with an error,
    // not as if it were whole (when it breaks at once, the connection may
    // close before the head is out).
    let sent = wisp
        .client
        .send(
            http::Method::GET,
            "/function/stream/fail",
            http::HeaderMap::new(),
            wisp_runner::backend::empty_body(),
        )
        .await;
    let mut failed = sent.is_err();
    if let Ok(response) = sent {
        let mut body = response.into_body();
        while let Some(frame) = http_body_util::BodyExt::frame(&mut body).await {
            if frame.is_err() {
                failed = true;
                break;
            }
        }
    }
    assert!(failed, "a broken stream must not end cleanly");
}

/// A call to Lambda's Invoke API.
async fn invoke_api(
    wisp: &Wisp,
    name: &str,
    headers: &[(&str, &str)],
    payload: &str,
) -> wisp::cli::client::Answer {
    let mut map = http::HeaderMap::new();
    for (k, v) in headers {
        map.insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    wisp.client
        .call(
            http::Method::POST,
            &format!("/2015-03-31/functions/{name}/invocations"),
            map,
            bytes::Bytes::from(payload.to_owned()),
        )
        .await
        .unwrap()
}

#[tokio::test]
async fn the_invoke_api_answers_as_lambda_does() {
    let wisp = Wisp::start();
    wisp.cli(&[
        "deploy",
        "hello-lambda",
        "--image",
        artifacts::LAMBDA_HELLO_DOCKER_ARCHIVE,
        "--timeout",
        "1s",
    ])
    .expect_success();

    // RequestResponse: the event as sent, the result as returned.
    let answer = invoke_api(&wisp, "hello-lambda", &[], r#"{"rawPath":"/plain"}"#).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert_eq!(answer.text(), r#"{"message":"no statusCode here"}"#);
    assert!(answer.headers.get("x-amz-function-error").is_none());
    let arn = "arn:aws:lambda:us-east-1:123456789012:function:hello-lambda:$LATEST";
    let by_arn = invoke_api(&wisp, arn, &[], r#"{"rawPath":"/plain"}"#).await;
    assert_eq!(by_arn.status, StatusCode::OK);

    // A function's error: 200, X-Amz-Function-Error, the error's JSON.
    let failed = invoke_api(&wisp, "hello-lambda", &[], r#"{"rawPath":"/error"}"#).await;
    assert_eq!(failed.status, StatusCode::OK);
    assert_eq!(failed.headers["x-amz-function-error"], "Unhandled");
    let error: serde_json::Value = serde_json::from_str(&failed.text()).unwrap();
    assert_eq!(error["errorMessage"], "the handler failed on purpose");

    // A timeout, as Lambda words it.
    let slow = invoke_api(
        &wisp,
        "hello-lambda",
        &[],
        r#"{"rawPath":"/sleep","queryStringParameters":{"ms":"3000"}}"#,
    )
    .await;
    assert_eq!(slow.status, StatusCode::OK);
    assert_eq!(slow.headers["x-amz-function-error"], "Unhandled");
    assert!(
        slow.text().contains("Task timed out after 1.00 seconds"),
        "{}",
        slow.text()
    );

    // Event: accepted, run through the asynchronous queue.
    let queued = invoke_api(
        &wisp,
        "hello-lambda",
        &[("x-amz-invocation-type", "Event")],
        r#"{"rawPath":"/plain"}"#,
    )
    .await;
    assert_eq!(queued.status, StatusCode::ACCEPTED, "{}", queued.text());
    assert!(queued.headers.contains_key("x-amzn-requestid"));
    wisp_e2e::eventually("the Event call ran", Duration::from_secs(10), async || {
        wisp.metrics().await.contains(
            r#"wisp_async_calls_total{function_name="hello-lambda",outcome="succeeded"} 1"#,
        )
    })
    .await;

    // DryRun, an unknown function, a payload that is not JSON, an
    // unknown invocation type.
    let dry = invoke_api(
        &wisp,
        "hello-lambda",
        &[("x-amz-invocation-type", "DryRun")],
        "",
    )
    .await;
    assert_eq!(dry.status, StatusCode::NO_CONTENT);
    let missing = invoke_api(&wisp, "nope", &[], "{}").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(
        missing.headers["x-amzn-errortype"],
        "ResourceNotFoundException"
    );
    let not_json = invoke_api(&wisp, "hello-lambda", &[], "{not json").await;
    assert_eq!(
        not_json.status,
        StatusCode::BAD_REQUEST,
        "{}",
        not_json.text()
    );
    let odd = invoke_api(
        &wisp,
        "hello-lambda",
        &[("x-amz-invocation-type", "Sometimes")],
        "{}",
    )
    .await;
    assert_eq!(odd.status, StatusCode::BAD_REQUEST);
}

/// The virtualenv with boto3 that `scripts/setup.sh` makes in the cargo
/// target dir (`target/<profile>/deps/e2e-…` → `target/aws`).
fn aws_python() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let python = exe.ancestors().nth(3).unwrap().join("aws/bin/python");
    assert!(
        python.exists(),
        "{} does not exist: run scripts/setup.sh",
        python.display()
    );
    python
}

#[tokio::test(flavor = "multi_thread")]
async fn boto3_invokes_functions_as_on_aws() {
    let wisp = Wisp::start();
    wisp.cli(&[
        "deploy",
        "hello-lambda",
        "--image",
        artifacts::LAMBDA_HELLO_DOCKER_ARCHIVE,
    ])
    .expect_success();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("aws/invoke.py");
    let out = tokio::process::Command::new(aws_python())
        .arg(&script)
        .arg(wisp.client.gateway())
        .arg("hello-lambda")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.trim() == "ok",
        "boto3: {stdout}{stderr}"
    );
}

/// A root filesystem running a Python function with AWS's runtime
/// interface client: the host's Python (its binary, standard library and
/// the shared libraries they load, at the paths the host has them),
/// `awslambdaric` from `scripts/setup.sh`, and `tests/aws/app.py` in
/// `/var/task`. Returns it and the interpreter's path.
fn python_lambda_rootfs() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let probe = std::process::Command::new("python3")
        .args([
            "-c",
            "import os, sys, sysconfig; print(os.path.realpath(sys.executable)); print(sysconfig.get_paths()['stdlib'])",
        ])
        .output()
        .unwrap();
    let probe = String::from_utf8(probe.stdout).unwrap();
    let mut lines = probe.lines();
    let (python, stdlib) = (
        lines.next().unwrap().to_owned(),
        lines.next().unwrap().to_owned(),
    );
    let inside = |host: &str| root.join(host.trim_start_matches('/'));
    let copy = |host: &std::path::Path| {
        let to = inside(host.to_str().unwrap());
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        if !to.exists() {
            std::fs::copy(host, &to).unwrap();
        }
    };
    copy(std::path::Path::new(&python));
    // The standard library, without what a function does not import.
    let skip = [
        "site-packages",
        "test",
        "__pycache__",
        "idlelib",
        "tkinter",
        "turtledemo",
        "ensurepip",
        "lib2to3",
    ];
    let mut objects = vec![PathBuf::from(&python)];
    let mut dirs = vec![PathBuf::from(&stdlib)];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if skip.contains(&name.as_str()) {
                continue;
            }
            if path.is_dir() {
                dirs.push(path);
            } else {
                copy(&path);
                if name.ends_with(".so") {
                    objects.push(path);
                }
            }
        }
    }
    // The function and the runtime interface client.
    let task = root.join("var/task");
    std::fs::create_dir_all(&task).unwrap();
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    std::fs::copy(manifest.join("aws/app.py"), task.join("app.py")).unwrap();
    let ric = aws_python()
        .ancestors()
        .nth(3)
        .unwrap()
        .join("awslambdaric");
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", ric.display()))
        .arg(&task)
        .status()
        .unwrap();
    assert!(status.success());
    for entry in std::fs::read_dir(&ric).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "so") {
            objects.push(path);
        }
    }
    // The shared libraries all of it loads.
    for object in &objects {
        let out = std::process::Command::new("ldd")
            .arg(object)
            .output()
            .unwrap();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let path = match line.split_once("=>") {
                Some((_, to)) => to.trim().split(' ').next().unwrap_or(""),
                None => line.trim().split(' ').next().unwrap_or(""),
            };
            if path.starts_with('/') {
                copy(std::path::Path::new(path));
            }
        }
    }
    std::fs::create_dir_all(root.join("tmp")).unwrap();
    (dir, python)
}

#[tokio::test]
async fn a_python_function_runs_on_awslambdaric() {
    let wisp = Wisp::start();
    let (rootfs, python) = python_lambda_rootfs();
    let rootfs = rootfs.path().to_str().unwrap();
    let out = wisp
        .cli(&[
            "deploy",
            "py",
            "--rootfs",
            rootfs,
            "--protocol",
            "lambda",
            "--memory",
            "256Mi",
            "--env",
            "PYTHONPATH=/var/task",
            "--",
            &python,
            "-m",
            "awslambdaric",
            "app.handler",
        ])
        .expect_success();
    assert!(out.contains("lambda protocol"), "{out}");
    let answer = wisp.invoke("POST", "/function/py/greet", "hi").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert_eq!(
        answer.text(),
        "hello from python: POST /greet function=py memory=256 body=hi"
    );
    // The Python client reports errors without an error-type header.
    let failed = wisp.invoke("GET", "/function/py/error", "").await;
    assert_eq!(failed.status, StatusCode::BAD_GATEWAY, "{}", failed.text());
    assert!(failed.text().contains("ValueError"), "{}", failed.text());
    let again = wisp.invoke("POST", "/function/py/again", "").await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text());
}
