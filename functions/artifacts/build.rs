//! Builds the example functions with a nested cargo and writes their paths
//! into `$OUT_DIR/paths.rs`: the wasm guests into `target/wasm-guests`, the
//! static `x86_64-unknown-linux-musl` programs into `target/native-guests`,
//! and from each of those an OCI image layout directory and a `docker save`
//! archive under `$OUT_DIR/images` (written with `wisp-oci-writer`).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};
use wisp_oci_writer::{Blob, DEFAULT_PATH, Layer, Layout, media_type};

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

/// The target of the container examples: static, so an image needs nothing
/// but the binary.
const NATIVE_TARGET: &str = "x86_64-unknown-linux-musl";

/// The creation time written into the images' configs: the epoch, for
/// reproducibility.
const EPOCH: &str = "1970-01-01T00:00:00Z";

/// A container example: a static program and the images made of it.
struct Native {
    package: &'static str,
    /// Prefix of its constants: `<PREFIX>_BIN`, `_OCI_LAYOUT`, `_DOCKER_ARCHIVE`.
    constant: &'static str,
    exposed_ports: &'static [&'static str],
    /// Where the program goes in its image (its entrypoint) [default: `/{package}`].
    entrypoint: Option<&'static str>,
}

const NATIVES: &[Native] = &[
    Native {
        package: "ping",
        constant: "PING",
        exposed_ports: &["8080/tcp"],
        entrypoint: None,
    },
    Native {
        package: "cgi-echo-native",
        constant: "CGI_NATIVE",
        exposed_ports: &[],
        entrypoint: None,
    },
    // A test fixture (CGI): which system calls the sandbox refuses.
    Native {
        package: "syscall-probe",
        constant: "SYSCALL_PROBE",
        exposed_ports: &[],
        entrypoint: None,
    },
    // A Lambda custom runtime, where AWS's `provided` images keep one.
    Native {
        package: "lambda-hello",
        constant: "LAMBDA_HELLO",
        exposed_ports: &[],
        entrypoint: Some("/var/runtime/bootstrap"),
    },
    // The same, built with AWS's HTTP adapter (`lambda_http`).
    Native {
        package: "lambda-http",
        constant: "LAMBDA_HTTP",
        exposed_ports: &[],
        entrypoint: Some("/var/runtime/bootstrap"),
    },
];

fn main() {
    let manifest_dir = PathBuf::from(env("CARGO_MANIFEST_DIR"));
    let functions = manifest_dir.parent().expect("functions/ dir");
    let workspace = functions.parent().expect("workspace root");
    let out_dir = PathBuf::from(env("OUT_DIR"));
    // OUT_DIR is <target>/<profile>/build/<pkg>-<hash>/out: share one guest
    // target dir across profiles so each guest is compiled once.
    let target_root = out_dir.ancestors().nth(4).unwrap_or(&out_dir);

    let packages = GUESTS
        .iter()
        .map(|g| g.0)
        .chain(NATIVES.iter().map(|n| n.package));
    for package in packages {
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
    let wasm_dir = target_root.join("wasm-guests");
    for target in ["wasm32-wasip2", "wasm32-wasip1"] {
        let packages: Vec<_> = GUESTS.iter().filter(|g| g.1 == target).collect();
        let names: Vec<_> = packages.iter().map(|g| g.0).collect();
        nested_cargo(workspace, &wasm_dir, target, &names, "debuginfo");
        for (_, target, file, constant) in packages {
            let path = wasm_dir
                .join(target)
                .join("release")
                .join(file.replace('-', "_"));
            let path = if path.exists() {
                path
            } else {
                wasm_dir.join(target).join("release").join(file)
            };
            assert!(path.exists(), "missing {}", path.display());
            push_const(&mut paths, constant, &path);
        }
    }

    let native_dir = target_root.join("native-guests");
    let names: Vec<_> = NATIVES.iter().map(|n| n.package).collect();
    nested_cargo(workspace, &native_dir, NATIVE_TARGET, &names, "symbols");
    let images = out_dir.join("images");
    fs::create_dir_all(&images).unwrap_or_else(|e| panic!("create {}: {e}", images.display()));
    for native in NATIVES {
        let package = native.package;
        let bin = native_dir.join(NATIVE_TARGET).join("release").join(package);
        assert!(bin.exists(), "missing {}", bin.display());
        let (layout, archive) = write_images(native, &bin, &images);
        let constant = native.constant;
        push_const(&mut paths, &format!("{constant}_BIN"), &bin);
        push_const(&mut paths, &format!("{constant}_OCI_LAYOUT"), &layout);
        push_const(&mut paths, &format!("{constant}_DOCKER_ARCHIVE"), &archive);
    }
    fs::write(out_dir.join("paths.rs"), paths).expect("write paths.rs");
}

/// Writes the image of the static program `bin`, `wisp/<package>:latest`,
/// under `images`: as an OCI layout directory `<package>-oci` and a `docker
/// save` archive `<package>-docker.tar`, replacing what is there; returns
/// their paths. Its one layer holds the program as `/<package>` (mode 0755,
/// owner 0:0), which is also the entrypoint. The images are a function of
/// the program alone (tars and gzip without times or owners, JSON keys
/// sorted, the epoch as creation time); only `linux/amd64`; one history
/// entry. Panics with the path on an I/O error.
fn write_images(native: &Native, bin: &Path, images: &Path) -> (PathBuf, PathBuf) {
    let package = native.package;
    let program = fs::read(bin).unwrap_or_else(|e| panic!("read {}: {e}", bin.display()));
    let entrypoint = native
        .entrypoint
        .map_or_else(|| format!("/{package}"), str::to_owned);
    let layer = Layer::from_file(entrypoint.trim_start_matches('/'), &program, 0o755);

    let mut container = json!({
        "Entrypoint": [entrypoint],
        "Env": [DEFAULT_PATH],
        "WorkingDir": "/",
    });
    if !native.exposed_ports.is_empty() {
        let ports: serde_json::Map<String, Value> = native
            .exposed_ports
            .iter()
            .map(|port| ((*port).to_owned(), json!({})))
            .collect();
        container["ExposedPorts"] = Value::Object(ports);
    }
    let mut config = wisp_oci_writer::config("amd64", container, &[layer.diff_id()]);
    config["created"] = json!(EPOCH);
    config["history"] = json!([{
        "created": EPOCH,
        "created_by": format!("wisp-function-artifacts: COPY {package} {entrypoint}"),
    }]);
    let config = Blob::json(media_type::CONFIG, &config);

    let gzip = layer.gzip();
    let manifest = wisp_oci_writer::manifest(&config, &[&gzip]);
    let descriptor = manifest
        .descriptor()
        .platform("linux", "amd64")
        .annotation(
            "io.containerd.image.name",
            &format!("docker.io/wisp/{package}:latest"),
        )
        .annotation("org.opencontainers.image.ref.name", "latest");
    let layout = images.join(format!("{package}-oci"));
    if layout.exists() {
        fs::remove_dir_all(&layout).unwrap_or_else(|e| panic!("remove {}: {e}", layout.display()));
    }
    Layout::new(&[descriptor], vec![gzip, config.clone(), manifest])
        .write_dir(&layout)
        .expect("write the OCI layout");

    let archive = images.join(format!("{package}-docker.tar"));
    let bytes =
        wisp_oci_writer::docker_archive(&format!("wisp/{package}:latest"), &config, &[&layer]);
    let partial = archive.with_extension("tar.partial");
    fs::write(&partial, bytes).unwrap_or_else(|e| panic!("write {}: {e}", partial.display()));
    fs::rename(&partial, &archive)
        .unwrap_or_else(|e| panic!("rename {} to {}: {e}", partial.display(), archive.display()));
    (layout, archive)
}

/// Runs `cargo build --release` for `packages` on `target` into `target_dir`,
/// isolated from the outer build's flags and wrappers.
fn nested_cargo(workspace: &Path, target_dir: &Path, target: &str, packages: &[&str], strip: &str) {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace)
        .args(["build", "--release", "--locked", "--target", target])
        .env("CARGO_TARGET_DIR", target_dir)
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .env("CARGO_PROFILE_RELEASE_STRIP", strip)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("CARGO_BUILD_TARGET");
    for package in packages {
        cmd.args(["-p", package]);
    }
    let status = cmd.status().expect("run cargo for the example functions");
    assert!(
        status.success(),
        "building the example functions for {target} failed; is the target installed? (rustup target add {target})"
    );
}

fn push_const(paths: &mut String, constant: &str, path: &Path) {
    paths.push_str(&format!(
        "pub const {constant}: &str = {:?};\n",
        path.display().to_string()
    ));
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"))
}
