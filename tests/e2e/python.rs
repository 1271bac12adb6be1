//! A component from another toolchain: Python via componentize-py (installed
//! by scripts/setup.sh) runs unchanged, like it would under `wasmtime serve`.

use std::path::Path;
use std::process::Command;

use http::StatusCode;
use wisp_e2e::Wisp;

#[tokio::test]
async fn a_componentize_py_component_runs_unchanged() {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../functions/hello-py");
    let out = tempfile::tempdir().unwrap();
    let wasm = out.path().join("hello-py.wasm");
    let tool = std::env::var("COMPONENTIZE_PY").unwrap_or_else(|_| "componentize-py".into());
    let status = Command::new(&tool)
        .current_dir(out.path())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .arg("-d")
        .arg(source.join("wit"))
        .args(["-w", "wisp:examples/hello-py", "componentize", "-p"])
        .arg(&source)
        .args(["app", "-o"])
        .arg(&wasm)
        .status()
        .unwrap_or_else(|e| {
            panic!("cannot run {tool} ({e}): run ./scripts/setup.sh, which installs it")
        });
    assert!(status.success(), "componentize-py failed");

    let wisp = Wisp::start();
    wisp.deploy_with("hello-py", wasm.to_str().unwrap(), |d| {
        d.env_vars = Some([("GREETING".to_owned(), "Hiya".to_owned())].into());
    })
    .await
    .unwrap();
    let answer = wisp
        .invoke("POST", "/function/hello-py/snake?x=1", "hiss")
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert_eq!(
        answer.text(),
        "Hiya from Python! method: POST path: /snake?x=1 body: hiss\n"
    );
}
