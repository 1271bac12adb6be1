//! WASI preview1 modules run CGI-style.

use http::{Method, StatusCode};
use wisp_e2e::{Wisp, artifacts};

#[tokio::test]
async fn cgi_gets_the_request_and_sets_the_status() {
    let wisp = Wisp::start();
    wisp.deploy_with("cgi-echo", artifacts::CGI_ECHO, |d| {
        d.env_vars = Some([("GREETING".to_owned(), "hi".to_owned())].into());
    })
    .await
    .unwrap();
    let mut headers = http::HeaderMap::new();
    headers.insert("x-thing", "42".parse().unwrap());
    headers.insert("content-type", "text/plain".parse().unwrap());
    headers.insert("proxy", "http://evil".parse().unwrap());
    let answer = wisp
        .client
        .call(
            Method::POST,
            "/function/cgi-echo/some/path?status=201&a=b",
            headers,
            "cgi body",
        )
        .await
        .unwrap();
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.text());
    assert_eq!(answer.headers["x-cgi"], "wisp");
    let text = answer.text();
    for expected in [
        "REQUEST_METHOD=POST",
        "SCRIPT_NAME=/function/cgi-echo",
        "PATH_INFO=/some/path",
        "QUERY_STRING=status=201&a=b",
        "CONTENT_TYPE=text/plain",
        "CONTENT_LENGTH=8",
        "HTTP_X_THING=42",
        "GREETING=hi",
        "body=cgi body",
    ] {
        assert!(text.contains(expected), "missing {expected} in\n{text}");
    }
    assert!(!text.contains("HTTP_PROXY"), "httpoxy: {text}");
}
