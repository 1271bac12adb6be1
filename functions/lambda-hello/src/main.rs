//! `lambda-hello`: an AWS Lambda function as AWS's own Rust runtime
//! (`lambda_runtime`) builds one, nothing in it made for wisp. Deployed
//! as an image whose entrypoint is `/var/runtime/bootstrap`.
//!
//! It answers a function URL (payload 2.0) event by its `rawPath`:
//! - `/error`: returns an error (the runtime posts it to `…/error`);
//! - `/exit`: the process exits in the middle of the invocation;
//! - `/sleep?ms=N`: sleeps N ms, then answers;
//! - `/plain`: a result without `statusCode` (AWS makes it a JSON body);
//! - `/context`: what the runtime was told: request id, deadline, ARN,
//!   function name, memory size, version and the Lambda environment;
//! - anything else: a described response with a header, two cookies and
//!   a text body naming the method, path, query, cookies and body.

use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::{Value, json};

async fn handle(event: LambdaEvent<Value>) -> Result<Value, Error> {
    let (event, context) = event.into_parts();
    let path = event["rawPath"].as_str().unwrap_or("");
    let query = event["rawQueryString"].as_str().unwrap_or("");
    match path {
        "/error" => return Err("the handler failed on purpose".into()),
        "/exit" => std::process::exit(3),
        "/sleep" => {
            let ms = event["queryStringParameters"]["ms"]
                .as_str()
                .and_then(|ms| ms.parse().ok())
                .unwrap_or(100);
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            return Ok(json!({"statusCode": 200, "body": format!("slept {ms} ms")}));
        }
        "/plain" => return Ok(json!({"message": "no statusCode here"})),
        "/context" => {
            let env = |name: &str| std::env::var(name).unwrap_or_default();
            return Ok(json!({
                "requestId": context.request_id,
                "deadlineMs": context.deadline,
                "arn": context.invoked_function_arn,
                "functionName": context.env_config.function_name,
                "memory": context.env_config.memory,
                "version": context.env_config.version,
                "handler": env("_HANDLER"),
                "region": env("AWS_REGION"),
                "taskRoot": env("LAMBDA_TASK_ROOT"),
                "runtimeApi": env("AWS_LAMBDA_RUNTIME_API"),
            }));
        }
        _ => {}
    }
    let method = event["requestContext"]["http"]["method"]
        .as_str()
        .unwrap_or("?");
    let body = event["body"].as_str().unwrap_or("");
    let cookies = event["cookies"].to_string();
    Ok(json!({
        "statusCode": 200,
        "headers": {"content-type": "text/plain", "x-handled-by": "lambda_runtime"},
        "cookies": ["a=1", "b=2"],
        "body": format!(
            "hello from lambda: {method} {path}?{query} cookies={cookies} base64={} body={body}",
            event["isBase64Encoded"]
        ),
    }))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    lambda_runtime::run(service_fn(handle)).await
}
