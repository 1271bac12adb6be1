//! Builds the example functions for their wasm targets with a nested cargo,
//! into `target/wasm-guests`, and writes their paths into `$OUT_DIR/paths.rs`.

use std::path::PathBuf;
use std::process::Command;

/// (package, target, artifact file name, constant name)
const GUESTS: &[(&str, &str, &str, &str)] = &[
    ("hello", "wasm32-wasip2", "hello.wasm", "HELLO"),
    ("misbehave", "wasm32-wasip2", "misbehave.wasm", "MISBEHAVE"),
    ("cgi-echo", "wasm32-wasip1", "cgi-echo.wasm", "CGI_ECHO"),
    // The same program as a wasi:cli command component: a component of the
    // wrong world, which deploy must refuse.
    (
        "cgi-echo",
        "wasm32-wasip2",
        "cgi-echo.wasm",
        "CLI_COMPONENT",
    ),
];

fn main() {
    let manifest_dir = PathBuf::from(env("CARGO_MANIFEST_DIR"));
    let functions = manifest_dir.parent().expect("functions/ dir");
    let workspace = functions.parent().expect("workspace root");
    let out_dir = PathBuf::from(env("OUT_DIR"));
    // OUT_DIR is <target>/<profile>/build/<pkg>-<hash>/out: share one guest
    // target dir across profiles so each guest is compiled once.
    let target_dir = out_dir
        .ancestors()
        .nth(4)
        .map(|t| t.join("wasm-guests"))
        .unwrap_or_else(|| out_dir.join("wasm-guests"));

    for (package, _, _, _) in GUESTS {
        println!(
            "cargo:rerun-if-changed={}",
            functions.join(package).display()
        );
    }
    println!(
        "cargo:rerun-if-changed={}",
        workspace.join("Cargo.lock").display()
    );

    let mut paths = String::new();
    for target in ["wasm32-wasip2", "wasm32-wasip1"] {
        let packages: Vec<_> = GUESTS.iter().filter(|g| g.1 == target).collect();
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.current_dir(workspace)
            .args(["build", "--release", "--locked", "--target", target])
            .env("CARGO_TARGET_DIR", &target_dir)
            .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
            .env("CARGO_PROFILE_RELEASE_STRIP", "debuginfo")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env_remove("RUSTFLAGS")
            .env_remove("RUSTC_WORKSPACE_WRAPPER")
            .env_remove("RUSTC_WRAPPER")
            .env_remove("CARGO_BUILD_TARGET");
        for (package, ..) in &packages {
            cmd.args(["-p", package]);
        }
        let status = cmd.status().expect("run cargo for the example functions");
        assert!(
            status.success(),
            "building the example functions for {target} failed; is the target installed? (rustup target add {target})"
        );
        for (_, target, file, constant) in packages {
            let path = target_dir
                .join(target)
                .join("release")
                .join(file.replace('-', "_"));
            let path = if path.exists() {
                path
            } else {
                target_dir.join(target).join("release").join(file)
            };
            assert!(path.exists(), "missing {}", path.display());
            paths.push_str(&format!(
                "pub const {constant}: &str = {:?};\n",
                path.display().to_string()
            ));
        }
    }
    std::fs::write(out_dir.join("paths.rs"), paths).expect("write paths.rs");
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"))
}
