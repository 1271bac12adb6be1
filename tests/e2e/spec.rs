//! The control API against OpenFaaS's published OpenAPI spec
//! (`tests/openapi/`): schemathesis generates requests for every operation
//! wisp serves, valid and invalid, and runs every check on the answers —
//! no 5xx, statuses and bodies as the spec declares them, 405 with `Allow`
//! for undeclared methods, auth enforced, schema-valid data accepted and
//! invalid data refused. `tests/openapi/schemathesis.toml` says what is
//! excluded and why; `scripts/setup.sh` installs the pinned schemathesis.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use http::StatusCode;
use wisp_e2e::registry::TestRegistry;
use wisp_e2e::{Wisp, artifacts};

const OPENAPI: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi");

/// The run's seed, so that it is the same run each time (a failure it
/// prints names the seed it used). `WISP_SPEC_SEED=<n>` picks another,
/// `WISP_SPEC_SEED=random` a new one per run, to look further.
const SEED: &str = "146474017944470249599207924962382821423";

/// An empty CGI module (an exported `_start` that returns): the artifact
/// the generated deployments name; schemathesis.toml knows it by digest.
const EMPTY_MODULE: &[u8] = b"\0asm\x01\0\0\0\x01\x04\x01\x60\0\0\x03\x02\x01\0\
\x07\x0a\x01\x06_start\0\0\x0a\x04\x01\x02\0\x0b";

/// `$WISP_SCHEMATHESIS`, or the virtualenv `scripts/setup.sh` makes in the
/// cargo target dir (`target/<profile>/deps/e2e-…` → `target/schemathesis`).
fn schemathesis_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("WISP_SCHEMATHESIS") {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .ancestors()
        .nth(3)
        .unwrap()
        .join("schemathesis/bin/schemathesis");
    assert!(
        bin.exists(),
        "{} does not exist: run scripts/setup.sh (or set WISP_SCHEMATHESIS)",
        bin.display()
    );
    bin
}

#[tokio::test]
async fn the_control_api_meets_the_openfaas_spec() {
    let schemathesis = schemathesis_bin();
    // The spec's example deployment names `functions/nodeinfo:latest` on
    // Docker Hub, which this machine does not reach: a local registry
    // mirrors docker.io, and serves the ping image under that name.
    let registry = TestRegistry::open();
    registry.push(
        std::path::Path::new(artifacts::PING_DOCKER_ARCHIVE),
        "functions/nodeinfo:latest",
    );
    let wisp = Wisp::builder()
        .arg("--registry-mirror")
        .arg(&format!("docker.io=http://{}", registry.host))
        .start()
        .unwrap();
    // The functions of the `deployed` dictionary; `talker` has log lines.
    wisp.deploy("hello", artifacts::HELLO).await;
    wisp.deploy("cgi-echo", artifacts::CGI_ECHO).await;
    // A second namespace (the `namespace` dictionary's), holding `hello`
    // too: `{name}.{namespace}` and `?namespace=` reach it.
    wisp.cli(&["namespace", "create", "team-a"])
        .expect_success();
    wisp.deploy_with("hello", artifacts::HELLO, |d| {
        d.namespace = Some("team-a".into());
    })
    .await
    .unwrap();
    // The stateful phase deploys it again with a secret (hooks.py's links).
    let cgi = wisp.upload(artifacts::CGI_ECHO).await.unwrap();
    wisp.deploy("talker", artifacts::MISBEHAVE).await;
    for _ in 0..2 {
        let said = wisp.invoke("GET", "/function/talker/stderr", "").await;
        assert_eq!(said.status, StatusCode::OK, "{}", said.text());
    }
    let empty = wisp
        .client
        .upload_artifact(EMPTY_MODULE.to_vec())
        .await
        .unwrap();
    let config = format!("{OPENAPI}/schemathesis.toml");
    assert!(
        std::fs::read_to_string(&config)
            .unwrap()
            .contains(&empty.digest),
        "schemathesis.toml's `artifact` dictionary must name {}",
        empty.digest
    );

    let work = tempfile::tempdir().unwrap();
    let mut command = Command::new(&schemathesis);
    command
        .current_dir(work.path())
        .env("SCHEMATHESIS_HOOKS", format!("{OPENAPI}/hooks.py"))
        .env("WISP_TOKEN", &wisp.token)
        .env("WISP_SPEC_CGI_ARTIFACT", &cgi)
        .args(["--config-file", &config, "--no-color", "run"])
        .arg(format!("{OPENAPI}/openfaas-gateway.yml"))
        .args(["--url", &wisp.addr, "--checks", "all"])
        .args(["--request-timeout", "20"]);
    match std::env::var("WISP_SPEC_SEED").as_deref() {
        Ok("random") => {}
        Ok(seed) => {
            command.args(["--seed", seed]);
        }
        Err(_) => {
            command.args(["--seed", SEED]);
        }
    }
    let started = Instant::now();
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("running {}: {e}", schemathesis.display()));
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "schemathesis found failures ({}):\n{report}",
        output.status
    );
    // The stateful phase made a secret and deployed a function with it.
    let secret_user = wisp.client.function("secret-user").await;
    assert!(
        secret_user.is_ok_and(|f| !f.secrets.is_empty()),
        "the stateful phase deployed no function with a secret:\n{report}"
    );
    let lines: Vec<&str> = report.lines().collect();
    eprintln!(
        "schemathesis passed in {:.1} s:\n{}",
        started.elapsed().as_secs_f64(),
        lines[lines.len().saturating_sub(6)..].join("\n")
    );
}
