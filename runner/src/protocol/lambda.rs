//! The AWS Lambda mapping of an HTTP request and its answer: a request
//! becomes a Lambda function URL (API Gateway HTTP API v2) event
//! ([`event`]), and what the function returns becomes the response
//! ([`response`]): a result with `statusCode` is an HTTP response
//! described in JSON, anything else is a 200 `application/json` body, as
//! AWS does. A streamed result with the HTTP integration content type
//! starts with a JSON prelude ended by 8 NUL bytes ([`split_prelude`]).
//!
//! The Runtime API that carries events to the runtime and results back is
//! the container executor's (`crate::container::lambda`).

use std::collections::BTreeMap;

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use serde::Deserialize;
use serde_json::{Map, Value, json};

/// Where a runtime finds the Runtime API: `127.0.0.1:9001` in its own
/// network namespace, as in AWS's runtime interface emulator.
pub const RUNTIME_API_PORT: u16 = 9001;
/// The content type of a streamed HTTP response with a prelude.
pub const HTTP_INTEGRATION: &str = "application/vnd.awslambda.http-integration-response";
/// What ends a streamed response's prelude.
pub const PRELUDE_END: [u8; 8] = [0; 8];
/// Largest prelude read before the body.
pub const MAX_PRELUDE_BYTES: usize = 64 * 1024;

/// The environment Lambda runtimes expect (`lambda_runtime` panics
/// without some of it), before the image's own and the function's, which
/// may override any of it (`AWS_REGION`, say). `handler` is the image's
/// CMD, as Lambda's `_HANDLER` is.
pub fn environment(
    function: &str,
    memory_bytes: u64,
    handler: &str,
) -> Vec<(&'static str, String)> {
    let memory_mib = (memory_bytes / (1024 * 1024)).max(1);
    vec![
        (
            "AWS_LAMBDA_RUNTIME_API",
            format!("127.0.0.1:{RUNTIME_API_PORT}"),
        ),
        ("_HANDLER", handler.to_owned()),
        ("AWS_LAMBDA_FUNCTION_NAME", function.to_owned()),
        ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", memory_mib.to_string()),
        ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST".to_owned()),
        (
            "AWS_LAMBDA_LOG_GROUP_NAME",
            format!("/aws/lambda/{function}"),
        ),
        (
            "AWS_LAMBDA_LOG_STREAM_NAME",
            format!("wisp/[$LATEST]{function}"),
        ),
        ("AWS_LAMBDA_INITIALIZATION_TYPE", "on-demand".to_owned()),
        ("AWS_REGION", DEFAULT_REGION.to_owned()),
        ("AWS_DEFAULT_REGION", DEFAULT_REGION.to_owned()),
        ("AWS_EXECUTION_ENV", "AWS_Lambda_wisp".to_owned()),
        ("LAMBDA_TASK_ROOT", "/var/task".to_owned()),
        ("LAMBDA_RUNTIME_DIR", "/var/runtime".to_owned()),
        ("TZ", ":UTC".to_owned()),
    ]
}

/// Most invocations a sandbox takes at once when the function sets
/// `AWS_LAMBDA_MAX_CONCURRENCY` (Lambda Managed Instances' setting, which
/// runtimes such as `lambda_runtime`'s concurrent mode read).
pub const MAX_CONCURRENCY: usize = 64;

/// How many invocations a sandbox of a function with `env` takes at once:
/// 1, as on Lambda, or its `AWS_LAMBDA_MAX_CONCURRENCY` (at most
/// [`MAX_CONCURRENCY`]).
pub fn max_concurrency(env: &std::collections::BTreeMap<String, String>) -> usize {
    env.get("AWS_LAMBDA_MAX_CONCURRENCY")
        .and_then(|n| n.trim().parse::<usize>().ok())
        .map_or(1, |n| n.clamp(1, MAX_CONCURRENCY))
}

/// The region a function is told it runs in, unless its env says another.
pub const DEFAULT_REGION: &str = "us-east-1";

/// Where an image keeps a Lambda runtime: a custom runtime's `bootstrap`,
/// or the AWS base images' entrypoint. An image holding one of these is
/// deployed with the `lambda` protocol unless another is asked for.
pub const BOOTSTRAP_PATHS: [&str; 4] = [
    "/var/runtime/bootstrap",
    "/var/task/bootstrap",
    "/opt/bootstrap",
    "/lambda-entrypoint.sh",
];

/// A request extension: the request comes through Lambda's Invoke API,
/// so its body is the event itself and the response is the raw result
/// (and an error is a 200 with `X-Amz-Function-Error: Unhandled`), rather
/// than an HTTP request mapped to a function URL event and back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Direct;

/// The header of a function's error in the Invoke API's answer.
pub const FUNCTION_ERROR_HEADER: &str = "x-amz-function-error";

/// What [`event`] needs beside the request's parts and body.
#[derive(Debug, Clone)]
pub struct EventContext<'a> {
    /// The path the function sees (after `/function/{name}`).
    pub path: &'a str,
    pub request_id: &'a str,
    pub source_ip: String,
    /// Wall-clock time of the request, in milliseconds since the epoch.
    pub epoch_ms: u64,
}

/// The function URL (payload format 2.0) event of a request.
pub fn event(parts: &http::request::Parts, body: &[u8], ctx: &EventContext<'_>) -> Value {
    let query = parts.uri.query().unwrap_or("");
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    let mut cookies: Vec<String> = Vec::new();
    for (name, value) in &parts.headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        if name == header::COOKIE {
            cookies.extend(
                value
                    .split(';')
                    .map(str::trim)
                    .filter(|c| !c.is_empty())
                    .map(str::to_owned),
            );
            continue;
        }
        headers
            .entry(name.as_str().to_owned())
            .and_modify(|v| {
                v.push(',');
                v.push_str(&value);
            })
            .or_insert(value);
    }
    let mut parameters: BTreeMap<String, String> = BTreeMap::new();
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        parameters
            .entry(key.into_owned())
            .and_modify(|v| {
                v.push(',');
                v.push_str(&value);
            })
            .or_insert_with(|| value.into_owned());
    }
    let host = headers.get("host").cloned().unwrap_or_default();
    let user_agent = headers.get("user-agent").cloned().unwrap_or_default();
    let protocol = match parts.version {
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2.0",
        _ => "HTTP/1.1",
    };
    let mut event = json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": ctx.path,
        "rawQueryString": query,
        "headers": headers,
        "requestContext": {
            "accountId": "anonymous",
            "apiId": "wisp",
            "domainName": host,
            "domainPrefix": host.split('.').next().unwrap_or(""),
            "http": {
                "method": parts.method.as_str(),
                "path": ctx.path,
                "protocol": protocol,
                "sourceIp": ctx.source_ip,
                "userAgent": user_agent,
            },
            "requestId": ctx.request_id,
            "routeKey": "$default",
            "stage": "$default",
            "time": clf_time(ctx.epoch_ms / 1000),
            "timeEpoch": ctx.epoch_ms,
        },
        "isBase64Encoded": false,
    });
    if !cookies.is_empty() {
        event["cookies"] = json!(cookies);
    }
    if !parameters.is_empty() {
        event["queryStringParameters"] = json!(parameters);
    }
    if !body.is_empty() {
        match std::str::from_utf8(body) {
            Ok(text) => event["body"] = json!(text),
            Err(_) => {
                event["body"] = json!(base64::engine::general_purpose::STANDARD.encode(body));
                event["isBase64Encoded"] = json!(true);
            }
        }
    }
    event
}

/// A time as API Gateway writes it: `02/Dec/2026:16:46:31 +0000`.
fn clf_time(secs: u64) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    // `YYYY-MM-DDTHH:MM:SSZ`
    let iso = crate::store::logs::rfc3339(secs, None);
    let month = iso
        .get(5..7)
        .and_then(|m| m.parse::<usize>().ok())
        .and_then(|m| MONTHS.get(m.wrapping_sub(1)))
        .copied()
        .unwrap_or("Jan");
    format!(
        "{}/{month}/{}:{} +0000",
        iso.get(8..10).unwrap_or("01"),
        iso.get(0..4).unwrap_or("1970"),
        iso.get(11..19).unwrap_or("00:00:00")
    )
}

/// Why a function's result is not a response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResultError {
    #[error("statusCode {0} is not an HTTP status")]
    Status(String),
    #[error("the body is marked base64 and is not")]
    Base64,
    #[error("invalid header {0:?}")]
    Header(String),
    #[error("the streamed response's prelude is not JSON: {0}")]
    Prelude(String),
}

/// An HTTP response as a function describes it in JSON.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Described {
    status_code: Value,
    #[serde(default)]
    headers: Option<Map<String, Value>>,
    #[serde(default)]
    multi_value_headers: Option<Map<String, Value>>,
    #[serde(default)]
    cookies: Option<Vec<Value>>,
    #[serde(default)]
    body: Option<Value>,
    #[serde(default)]
    is_base64_encoded: Option<bool>,
}

/// The head and body of the response a function's (whole) result stands
/// for.
pub fn response(payload: &[u8]) -> Result<(StatusCode, HeaderMap, Bytes), ResultError> {
    let described = serde_json::from_slice::<Value>(payload)
        .ok()
        .filter(|v| v.get("statusCode").is_some())
        .and_then(|v| serde_json::from_value::<Described>(v).ok());
    let Some(described) = described else {
        // Not a described response: the result is the body, as AWS has it.
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        return Ok((StatusCode::OK, headers, Bytes::copy_from_slice(payload)));
    };
    let status = status(&described.status_code)?;
    let mut headers = HeaderMap::new();
    add_headers(
        &mut headers,
        described.headers.as_ref(),
        described.multi_value_headers.as_ref(),
        described.cookies.as_deref(),
    )?;
    let body = match described.body {
        None | Some(Value::Null) => Bytes::new(),
        Some(Value::String(text)) if described.is_base64_encoded == Some(true) => {
            base64::engine::general_purpose::STANDARD
                .decode(text.as_bytes())
                .map(Bytes::from)
                .map_err(|_| ResultError::Base64)?
        }
        Some(Value::String(text)) => Bytes::from(text),
        // A body that is not a string is sent as its JSON.
        Some(other) => Bytes::from(other.to_string()),
    };
    Ok((status, headers, body))
}

/// The head a streamed response's prelude describes.
pub fn prelude(prelude: &[u8]) -> Result<(StatusCode, HeaderMap), ResultError> {
    let described: Described = if prelude.iter().all(u8::is_ascii_whitespace) {
        Described::default()
    } else {
        serde_json::from_slice(prelude).map_err(|e| ResultError::Prelude(e.to_string()))?
    };
    let status = match &described.status_code {
        Value::Null => StatusCode::OK,
        code => status(code)?,
    };
    let mut headers = HeaderMap::new();
    add_headers(
        &mut headers,
        described.headers.as_ref(),
        described.multi_value_headers.as_ref(),
        described.cookies.as_deref(),
    )?;
    Ok((status, headers))
}

/// Where the prelude ends in what a streamed response sent so far: the
/// prelude's length and where the body starts.
pub fn split_prelude(sent: &[u8]) -> Option<(usize, usize)> {
    sent.windows(PRELUDE_END.len())
        .position(|w| w == PRELUDE_END)
        .map(|at| (at, at + PRELUDE_END.len()))
}

fn status(code: &Value) -> Result<StatusCode, ResultError> {
    let number = match code {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    };
    number
        .and_then(|n| u16::try_from(n).ok())
        .filter(|n| (200..=599).contains(n))
        .and_then(|n| StatusCode::from_u16(n).ok())
        .ok_or_else(|| ResultError::Status(code.to_string().chars().take(40).collect()))
}

fn add_headers(
    out: &mut HeaderMap,
    single: Option<&Map<String, Value>>,
    multi: Option<&Map<String, Value>>,
    cookies: Option<&[Value]>,
) -> Result<(), ResultError> {
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut put = |name: &str, value: String, append: bool| -> Result<(), ResultError> {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| ResultError::Header(name.chars().take(40).collect()))?;
        let value = HeaderValue::from_str(&value)
            .map_err(|_| ResultError::Header(name.as_str().to_owned()))?;
        if append {
            out.append(name, value);
        } else {
            out.insert(name, value);
        }
        Ok(())
    };
    for (name, values) in multi.into_iter().flatten() {
        for value in values.as_array().into_iter().flatten() {
            put(name, text(value), true)?;
        }
    }
    // `headers` wins over `multiValueHeaders` for a name in both, as in
    // API Gateway.
    for (name, value) in single.into_iter().flatten() {
        put(name, text(value), false)?;
    }
    for cookie in cookies.into_iter().flatten() {
        put("set-cookie", text(cookie), true)?;
    }
    Ok(())
}

/// What a function reports with `POST …/invocation/{id}/error`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FunctionError {
    pub error_type: String,
    pub error_message: String,
}

impl FunctionError {
    /// Reads an error report: its JSON body (`errorType`, `errorMessage`),
    /// with the `Lambda-Runtime-Function-Error-Type` header's type when the
    /// body has none.
    pub fn parse(header_type: Option<&str>, body: &[u8]) -> FunctionError {
        let json: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let field = |name: &str| json.get(name).and_then(Value::as_str).map(str::to_owned);
        FunctionError {
            error_type: field("errorType")
                .or_else(|| header_type.map(str::to_owned))
                .unwrap_or_else(|| "Unhandled".to_owned()),
            error_message: field("errorMessage").unwrap_or_else(|| {
                String::from_utf8_lossy(&body[..body.len().min(4096)]).into_owned()
            }),
        }
    }

    /// The error as Lambda reports it to an invoker.
    pub fn to_json(&self) -> Value {
        json!({"errorType": self.error_type, "errorMessage": self.error_message})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
        let mut builder = http::Request::builder().method("POST").uri(uri);
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        builder.body(()).unwrap().into_parts().0
    }

    fn ctx(path: &str) -> EventContext<'_> {
        EventContext {
            path,
            request_id: "id-1",
            source_ip: "10.0.0.1".into(),
            epoch_ms: 1_764_693_991_123,
        }
    }

    #[test]
    fn a_request_becomes_a_v2_event() {
        let p = parts(
            "/items/7?a=1&b=x%20y&a=2",
            &[
                ("Host", "fn.example"),
                ("User-Agent", "curl/8"),
                ("Cookie", "s=1; t=2"),
                ("X-Multi", "one"),
                ("X-Multi", "two"),
            ],
        );
        let e = event(&p, b"{\"k\":1}", &ctx("/items/7"));
        assert_eq!(e["version"], "2.0");
        assert!(
            e.get("httpMethod").is_none(),
            "lambda_http would take it for v1"
        );
        assert_eq!(e["rawPath"], "/items/7");
        assert_eq!(e["rawQueryString"], "a=1&b=x%20y&a=2");
        assert_eq!(e["queryStringParameters"], json!({"a": "1,2", "b": "x y"}));
        assert_eq!(e["cookies"], json!(["s=1", "t=2"]));
        assert_eq!(e["headers"]["x-multi"], "one,two");
        assert!(e["headers"].get("cookie").is_none());
        assert_eq!(e["requestContext"]["http"]["method"], "POST");
        assert_eq!(e["requestContext"]["http"]["sourceIp"], "10.0.0.1");
        assert_eq!(e["requestContext"]["http"]["userAgent"], "curl/8");
        assert_eq!(e["requestContext"]["stage"], "$default");
        assert_eq!(e["requestContext"]["time"], "02/Dec/2025:16:46:31 +0000");
        assert_eq!(e["requestContext"]["timeEpoch"], 1_764_693_991_123u64);
        assert_eq!(e["body"], "{\"k\":1}");
        assert_eq!(e["isBase64Encoded"], false);
        let binary = event(&p, &[0xff, 0, 1], &ctx("/"));
        assert_eq!(binary["body"], "/wAB");
        assert_eq!(binary["isBase64Encoded"], true);
        let bare = event(&parts("/", &[]), b"", &ctx("/"));
        assert!(bare.get("body").is_none() && bare.get("cookies").is_none());
        assert!(bare.get("queryStringParameters").is_none());
    }

    #[test]
    fn results_map_back_as_aws_maps_them() {
        let (status, headers, body) = response(
            br#"{"statusCode":201,"headers":{"content-type":"text/plain","x-a":"1"},
                "multiValueHeaders":{"x-b":["1","2"]},"cookies":["a=1","b=2"],"body":"made"}"#,
        )
        .unwrap();
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(headers["content-type"], "text/plain");
        assert_eq!(headers.get_all("x-b").iter().count(), 2);
        assert_eq!(headers.get_all("set-cookie").iter().count(), 2);
        assert_eq!(body, "made");
        let (_, _, body) =
            response(br#"{"statusCode":"200","body":"/wAB","isBase64Encoded":true}"#).unwrap();
        assert_eq!(&body[..], &[0xff, 0, 1]);
        // No statusCode: the whole result is a JSON body.
        let (status, headers, body) = response(br#"{"message":"hi"}"#).unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers["content-type"], "application/json");
        assert_eq!(body, r#"{"message":"hi"}"#);
        let (_, _, body) = response(b"\"just a string\"").unwrap();
        assert_eq!(body, "\"just a string\"");
        for bad in [
            &br#"{"statusCode":99}"#[..],
            br#"{"statusCode":"x"}"#,
            br#"{"statusCode":700}"#,
            br#"{"statusCode":200,"body":"!!","isBase64Encoded":true}"#,
            br#"{"statusCode":200,"headers":{"bad name":"v"}}"#,
        ] {
            assert!(response(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn streamed_preludes() {
        let sent = b"{\"statusCode\":404,\"cookies\":[\"c=1\"]}\0\0\0\0\0\0\0\0rest";
        let (end, body) = split_prelude(sent).unwrap();
        let (status, headers) = prelude(&sent[..end]).unwrap();
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(headers["set-cookie"], "c=1");
        assert_eq!(&sent[body..], b"rest");
        assert!(split_prelude(b"{\"statusCode\":200}\0\0\0").is_none());
    }

    #[test]
    fn concurrency_is_one_unless_the_function_says() {
        let env = |v: &str| [("AWS_LAMBDA_MAX_CONCURRENCY".to_owned(), v.to_owned())].into();
        assert_eq!(max_concurrency(&Default::default()), 1);
        assert_eq!(max_concurrency(&env("8")), 8);
        assert_eq!(max_concurrency(&env("0")), 1);
        assert_eq!(max_concurrency(&env("100000")), MAX_CONCURRENCY);
        assert_eq!(max_concurrency(&env("lots")), 1);
    }

    #[test]
    fn errors_are_read_with_or_without_their_header() {
        let e = FunctionError::parse(
            None,
            br#"{"errorMessage":"boom","errorType":"ValueError","stackTrace":[]}"#,
        );
        assert_eq!(
            (e.error_type.as_str(), e.error_message.as_str()),
            ("ValueError", "boom")
        );
        let e = FunctionError::parse(Some("Runtime.Custom"), br#"{"errorMessage":"x"}"#);
        assert_eq!(e.error_type, "Runtime.Custom");
        let e = FunctionError::parse(None, b"not json");
        assert_eq!(
            (e.error_type.as_str(), e.error_message.as_str()),
            ("Unhandled", "not json")
        );
    }
}
