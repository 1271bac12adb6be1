//! Namespaces and namespace tokens: two teams share a gateway, each with
//! a function and a secret of the same names; a team's token manages its
//! namespace and is refused (403) everywhere else; everything survives a
//! restart, and revoking a token or deleting a namespace ends its access.

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use wisp::cli::client::Client;
use wisp_e2e::{Wisp, artifacts};

/// A request with `token` as its bearer token.
pub(crate) async fn call_as(
    wisp: &Wisp,
    token: &str,
    method: Method,
    path: &str,
    body: &str,
) -> (StatusCode, String) {
    let client = Client::new(wisp.client.gateway(), Some(token.to_owned()));
    let answer = client
        .call(method, path, HeaderMap::new(), Bytes::from(body.to_owned()))
        .await
        .unwrap();
    (answer.status, answer.text())
}

/// What the function at `path` reads as its secret `db`.
async fn read(wisp: &Wisp, path: &str) -> (StatusCode, String) {
    let answer = wisp
        .invoke(
            "GET",
            &format!("{path}/read?path=/var/openfaas/secrets/db"),
            "",
        )
        .await;
    (answer.status, answer.text())
}

/// Runs the CLI with a namespace token instead of the admin's.
pub(crate) fn cli_as(wisp: &Wisp, token: &str, args: &[&str]) -> wisp_e2e::CliOutput {
    wisp.cli_command(args)
        .env("WISP_TOKEN", token)
        .output()
        .unwrap()
        .into()
}

#[tokio::test]
async fn namespaces_keep_teams_apart_and_their_tokens_in_their_own() {
    let dir = tempfile::tempdir().unwrap();
    let mut wisp = Wisp::builder().data_dir(dir.path()).start().unwrap();

    wisp.cli(&["namespace", "create", "team-a"])
        .expect_success();
    wisp.cli(&["namespace", "create", "team-b"])
        .expect_success();
    assert_eq!(
        wisp.cli(&["namespace", "ls"]).expect_success(),
        "openfaas-fn\nteam-a\nteam-b\n"
    );
    let token_a = wisp
        .cli(&["token", "create", "--namespace", "team-a"])
        .expect_success()
        .trim()
        .to_owned();
    let token_b = wisp
        .cli(&[
            "token",
            "create",
            "--namespace",
            "team-b",
            "--description",
            "ci",
        ])
        .expect_success()
        .trim()
        .to_owned();
    assert_eq!(token_a.len(), 64);

    // Team A deploys with its token and names no namespace: it lands in
    // its own. The admin deploys a function of the same name in the
    // default namespace; each reads its own namespace's secret `db`.
    cli_as(
        &wisp,
        &token_a,
        &["secret", "create", "db", "--from-literal", "a-value"],
    )
    .expect_success();
    wisp.cli(&["secret", "create", "db", "--from-literal", "default-value"])
        .expect_success();
    let out = cli_as(
        &wisp,
        &token_a,
        &["deploy", "app", artifacts::MISBEHAVE, "--secret", "db"],
    )
    .expect_success();
    assert!(out.contains("/function/app"), "{out}");
    wisp.cli(&["deploy", "app", artifacts::MISBEHAVE, "--secret", "db"])
        .expect_success();
    assert_eq!(
        read(&wisp, "/function/app.team-a").await,
        (StatusCode::OK, "a-value".to_owned())
    );
    assert_eq!(
        read(&wisp, "/function/app").await,
        (StatusCode::OK, "default-value".to_owned())
    );
    assert_eq!(
        read(&wisp, "/function/app.openfaas-fn").await,
        (StatusCode::OK, "default-value".to_owned())
    );
    assert_eq!(
        read(&wisp, "/function/app.team-b").await.0,
        StatusCode::NOT_FOUND
    );
    // The CLI invokes in the namespace it is given.
    let out = wisp
        .cli(&[
            "invoke",
            "app",
            "--namespace",
            "team-a",
            "--path",
            "/read?path=/var/openfaas/secrets/db",
        ])
        .expect_success();
    assert_eq!(out, "a-value");

    // Listings are per namespace.
    assert_eq!(
        cli_as(&wisp, &token_a, &["ls"])
            .expect_success()
            .lines()
            .count(),
        2,
        "a header and team A's function"
    );
    let (status, body) = call_as(&wisp, &token_b, Method::GET, "/system/functions", "").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "[]"));
    let listed = wisp.client.clone().in_namespace(Some("team-a".into()));
    let team_a = listed.list().await.unwrap();
    assert_eq!(team_a.len(), 1);
    assert_eq!(
        (team_a[0].name.as_str(), team_a[0].namespace.as_str()),
        ("app", "team-a")
    );
    let default = wisp.client.list().await.unwrap();
    assert_eq!(
        (default[0].name.as_str(), default[0].namespace.as_str()),
        ("app", "openfaas-fn")
    );
    assert_eq!(
        cli_as(&wisp, &token_b, &["secret", "ls"]).expect_success(),
        ""
    );
    assert_eq!(
        cli_as(&wisp, &token_a, &["namespace", "ls"]).expect_success(),
        "team-a\n"
    );

    // Everything outside its namespace is a 403 for a namespace token.
    for (method, path, body) in [
        (Method::GET, "/system/functions?namespace=team-b", ""),
        (Method::GET, "/system/functions?namespace=openfaas-fn", ""),
        (
            Method::GET,
            "/system/function/app?namespace=openfaas-fn",
            "",
        ),
        (
            Method::DELETE,
            "/system/functions?namespace=openfaas-fn",
            r#"{"functionName":"app"}"#,
        ),
        (
            Method::DELETE,
            "/system/functions",
            r#"{"functionName":"app","namespace":"team-b"}"#,
        ),
        (
            Method::POST,
            "/system/scale-function/app",
            r#"{"serviceName":"app","namespace":"openfaas-fn","replicas":1}"#,
        ),
        (
            Method::POST,
            "/system/secrets",
            r#"{"name":"x","namespace":"team-b","value":"v"}"#,
        ),
        (Method::GET, "/system/secrets?namespace=openfaas-fn", ""),
        (
            Method::GET,
            "/system/logs?name=app&namespace=openfaas-fn",
            "",
        ),
        (Method::GET, "/system/revisions/app?namespace=team-b", ""),
        (Method::GET, "/system/images", ""),
        (Method::POST, "/system/prune", ""),
        (Method::GET, "/system/registries", ""),
        (Method::GET, "/system/tokens", ""),
        (Method::POST, "/system/tokens", r#"{"namespace":"team-a"}"#),
        (Method::POST, "/system/namespace/team-c", ""),
        (Method::DELETE, "/system/namespace/team-a", ""),
        (Method::GET, "/system/namespace/team-b", ""),
    ] {
        let (status, body) = call_as(&wisp, &token_a, method.clone(), path, body).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}: {body}");
        assert!(body.contains("team-a"), "{method} {path}: {body}");
    }
    let deploy_b = cli_as(
        &wisp,
        &token_a,
        &[
            "deploy",
            "intruder",
            artifacts::HELLO,
            "--namespace",
            "team-b",
        ],
    )
    .expect_failure();
    assert!(deploy_b.contains("403"), "{deploy_b}");
    // Team B cannot reach team A's secret by naming it in a deploy.
    let borrowed = cli_as(
        &wisp,
        &token_b,
        &["deploy", "thief", artifacts::MISBEHAVE, "--secret", "db"],
    )
    .expect_failure();
    assert!(
        borrowed.contains("does not exist in namespace team-b"),
        "{borrowed}"
    );
    // A made-up token is no one's.
    let (status, _) = call_as(&wisp, &"0".repeat(64), Method::GET, "/system/functions", "").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Metrics name a function by name and namespace, as OpenFaaS does.
    let metrics = wisp.metrics().await;
    assert!(
        metrics.contains(r#"function_name="app.team-a""#),
        "{metrics}"
    );

    // Names that would collide, and namespaces that do not exist or are
    // not DNS labels, are refused with the reason.
    let clash = wisp
        .cli(&["deploy", "app.team-b", artifacts::HELLO])
        .expect_failure();
    assert!(clash.contains("namespace team-b"), "{clash}");
    wisp.cli(&["deploy", "svc.later", artifacts::HELLO])
        .expect_success();
    let taken = wisp.cli(&["namespace", "create", "later"]).expect_failure();
    assert!(taken.contains("svc.later"), "{taken}");
    for (namespace, says) in [
        ("nowhere", "does not exist"),
        ("Team_A", "invalid namespace"),
    ] {
        let out = wisp
            .cli(&["deploy", "x", artifacts::HELLO, "--namespace", namespace])
            .expect_failure();
        assert!(out.contains(says), "{namespace}: {out}");
    }

    // A restart keeps namespaces, their functions, secrets and tokens.
    wisp.kill();
    let wisp = Wisp::builder().data_dir(dir.path()).start().unwrap();
    assert_eq!(
        read(&wisp, "/function/app.team-a").await,
        (StatusCode::OK, "a-value".to_owned())
    );
    let (status, body) = call_as(&wisp, &token_b, Method::GET, "/system/functions", "").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "[]"));

    // A namespace is deleted only once empty, and its tokens go with it.
    let busy = wisp.cli(&["namespace", "rm", "team-a"]).expect_failure();
    assert!(
        busy.contains("function app") && busy.contains("secret db"),
        "{busy}"
    );
    cli_as(&wisp, &token_a, &["rm", "app"]).expect_success();
    cli_as(&wisp, &token_a, &["secret", "rm", "db"]).expect_success();
    assert_eq!(
        read(&wisp, "/function/app.team-a").await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        read(&wisp, "/function/app").await,
        (StatusCode::OK, "default-value".to_owned()),
        "the default namespace's function of the same name stays"
    );
    wisp.cli(&["namespace", "rm", "team-a"]).expect_success();
    let (status, _) = call_as(&wisp, &token_a, Method::GET, "/system/functions", "").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Revoking a token ends it at once.
    let listed = wisp.cli(&["token", "ls"]).expect_success();
    let id = listed
        .lines()
        .find(|l| l.contains("team-b"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_owned();
    assert!(listed.contains("ci"), "{listed}");
    assert!(!listed.contains(&token_b), "a listing never shows a token");
    wisp.cli(&["token", "rm", &id]).expect_success();
    let (status, _) = call_as(&wisp, &token_b, Method::GET, "/system/functions", "").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}
