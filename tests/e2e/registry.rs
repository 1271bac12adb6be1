//! Deploying from an OCI registry: a real `docker-registry` (distribution
//! 2.8) on loopback, images pushed with skopeo or over the distribution
//! API, and the real server pulling them.

use std::path::Path;
use std::time::Duration;

use http::StatusCode;
use wisp_e2e::registry::{GatedProxy, PASSWORD, TestRegistry, USER};
use wisp_e2e::{FunctionDeployment, Wisp, WispBuilder, artifacts, eventually};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// A server to be that may reach `host` (`host:port`) over plain HTTP.
fn reaching(host: &str) -> WispBuilder {
    Wisp::builder().arg("--insecure-registry").arg(host)
}

/// A server that may reach `registry` over plain HTTP.
fn wisp_for(registry: &TestRegistry) -> Wisp {
    reaching(&registry.host).start().expect("start wisp")
}

/// Pushes the example ping image as `repo:tag` (once per repo and tag).
fn push_ping(registry: &TestRegistry, name_tag: &str) -> String {
    registry.push(Path::new(artifacts::PING_DOCKER_ARCHIVE), name_tag);
    registry.reference(name_tag)
}

async fn pong(wisp: &Wisp, name: &str) {
    let got = wisp
        .invoke("GET", &format!("/function/{name}/ping"), "")
        .await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text());
    assert_eq!(got.text().trim(), "pong");
}

#[tokio::test]
async fn deploy_by_tag_and_by_digest_and_keep_the_digest_across_a_restart() {
    let registry = TestRegistry::open();
    let reference = push_ping(registry, "ping:1");
    let dir = tempfile::tempdir().unwrap();
    let mut wisp = Wisp::builder()
        .data_dir(dir.path())
        .start()
        .expect("start wisp");

    // Named on the command line, the registry is reached over plain HTTP.
    let out = wisp
        .cli(&[
            "deploy",
            "by-tag",
            "--image",
            &reference,
            "--insecure-registry",
            &registry.host,
        ])
        .expect_success();
    assert!(out.contains("@sha256:"), "{out}");
    pong(&wisp, "by-tag").await;
    let status = wisp.client.function("by-tag").await.unwrap();
    assert_eq!(status.image, reference);
    let digest = status.image_digest.clone().expect("the pinned digest");
    assert_eq!(status.container_image.as_deref(), Some(digest.as_str()));

    // By digest, through the OpenFaaS JSON.
    let pinned = format!("{}@{digest}", registry.reference("ping"));
    let deployment = FunctionDeployment {
        service: "by-digest".into(),
        image: pinned.clone(),
        insecure_registries: Some(vec![registry.host.clone()]),
        ..FunctionDeployment::default()
    };
    wisp.client.deploy(&deployment).await.unwrap();
    pong(&wisp, "by-digest").await;

    // A pull of what the store holds downloads nothing.
    let out = wisp
        .cli(&["pull", &reference, "--insecure-registry", &registry.host])
        .expect_success();
    assert!(out.contains("0 blobs downloaded"), "{out}");
    // Each pull is in the metrics (the first downloaded the image).
    let metrics = wisp.metrics().await;
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} in\n{metrics}"))
    };
    assert_eq!(value("wisp_image_pull_seconds_count{outcome=\"ok\"}"), 3.0);
    assert!(value("wisp_image_pull_bytes_total") > 100_000.0);

    // After a restart the functions run the digest they were deployed with.
    wisp.kill();
    let wisp = Wisp::builder()
        .data_dir(dir.path())
        .start()
        .expect("restart wisp");
    let status = wisp.client.function("by-tag").await.unwrap();
    assert_eq!(status.image_digest.as_deref(), Some(digest.as_str()));
    pong(&wisp, "by-tag").await;
    pong(&wisp, "by-digest").await;
}

#[tokio::test]
async fn the_openfaas_api_deploys_references_from_allowed_registries_and_mirrors() {
    let registry = TestRegistry::open();
    let reference = push_ping(registry, "faas/ping:latest");
    let wisp = wisp_for(registry);
    let body = serde_json::json!({ "service": "faas-ping", "image": reference }).to_string();
    let got = wisp.invoke("POST", "/system/functions", &body).await;
    assert_eq!(got.status, StatusCode::ACCEPTED, "{}", got.text());
    pong(&wisp, "faas-ping").await;

    // Docker Hub's short names, pulled from a mirror of docker.io.
    push_ping(registry, "team/ping:2");
    let mirrored = Wisp::builder()
        .arg("--registry-mirror")
        .arg(&format!("docker.io=http://{}", registry.host))
        .start()
        .expect("start wisp");
    let body = serde_json::json!({ "service": "hub", "image": "team/ping:2" }).to_string();
    let got = mirrored.invoke("POST", "/system/functions", &body).await;
    assert_eq!(got.status, StatusCode::ACCEPTED, "{}", got.text());
    let status = mirrored.client.function("hub").await.unwrap();
    assert_eq!(status.image, "docker.io/team/ping:2");
    pong(&mirrored, "hub").await;
}

#[tokio::test]
async fn bad_references_get_clear_errors() {
    let registry = TestRegistry::open();
    push_ping(registry, "errors/ping:1");
    let wisp = wisp_for(registry);
    let deploy = async |image: &str| {
        let body = serde_json::json!({ "service": "f", "image": image }).to_string();
        wisp.invoke("POST", "/system/functions", &body).await
    };

    // A deploy answers 400 (what OpenFaaS's spec declares for a request
    // it cannot carry out), a pull 404; both name the reference.
    let missing_tag = registry.reference("errors/ping:nope");
    let got = deploy(&missing_tag).await;
    assert_eq!(got.status, StatusCode::BAD_REQUEST, "{}", got.text());
    assert!(got.text().contains(&missing_tag), "{}", got.text());
    assert!(got.text().contains("not found"), "{}", got.text());
    let body = serde_json::json!({ "image": missing_tag }).to_string();
    let got = wisp.invoke("POST", "/system/images", &body).await;
    assert_eq!(got.status, StatusCode::NOT_FOUND, "{}", got.text());

    let missing_repo = registry.reference("no/such/repo:1");
    let got = deploy(&missing_repo).await;
    assert_eq!(got.status, StatusCode::BAD_REQUEST, "{}", got.text());

    // Not named as insecure: TLS, which a plain-HTTP registry cannot speak.
    let plain = Wisp::start();
    let body = serde_json::json!({ "service": "f", "image": registry.reference("errors/ping:1") })
        .to_string();
    let got = plain.invoke("POST", "/system/functions", &body).await;
    assert_eq!(got.status, StatusCode::GATEWAY_TIMEOUT, "{}", got.text());
    assert!(got.text().contains("--insecure-registry"), "{}", got.text());

    // Nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let host = closed.local_addr().unwrap().to_string();
    drop(closed);
    let body = serde_json::json!({
        "service": "f",
        "image": format!("{host}/x:1"),
        "insecureRegistries": [host],
    })
    .to_string();
    let got = wisp.invoke("POST", "/system/functions", &body).await;
    assert_eq!(got.status, StatusCode::GATEWAY_TIMEOUT, "{}", got.text());
    assert!(got.text().contains(&host), "{}", got.text());

    let got = deploy("Not A Reference!").await;
    assert_eq!(got.status, StatusCode::BAD_REQUEST, "{}", got.text());
    assert!(got.text().contains("registry reference"), "{}", got.text());

    let err = wisp
        .cli(&["deploy", "f", "--image", "./no/such/file.tar"])
        .expect_failure();
    assert!(err.contains("archive"), "{err}");
    assert!(wisp.function_names().await.is_empty());
}

#[tokio::test]
async fn an_index_resolves_to_this_hosts_platform() {
    let registry = TestRegistry::open();
    // Two real images: ping for this host's platform, the CGI echo image
    // for another one.
    push_ping(registry, "multi/ping:src");
    registry.push(
        Path::new(artifacts::CGI_NATIVE_DOCKER_ARCHIVE),
        "multi/other:src",
    );
    let wisp = wisp_for(registry);
    let digest_of = async |name: &str| {
        let pulled = wisp
            .cli(&[
                "pull",
                &registry.reference(name),
                "--insecure-registry",
                &registry.host,
            ])
            .expect_success();
        pulled
            .split('@')
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .expect("the digest")
            .to_owned()
    };
    let ping = digest_of("multi/ping:src").await;
    let other = digest_of("multi/other:src").await;
    let (here, elsewhere) = match std::env::consts::ARCH {
        "x86_64" => ("amd64", "arm64"),
        _ => ("arm64", "amd64"),
    };
    let manifest_size = |digest: &str| -> u64 {
        let image = wisp.data_dir.join("images/blobs/sha256").join(&digest[7..]);
        std::fs::metadata(image).expect("the pulled manifest").len()
    };
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {
                "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "digest": other,
                "size": manifest_size(&other),
                "platform": { "os": "linux", "architecture": elsewhere },
            },
            {
                "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "digest": ping,
                "size": manifest_size(&ping),
                "platform": { "os": "linux", "architecture": here },
            },
        ],
    });
    // The manifests must be in the index's repository too.
    registry.push(Path::new(artifacts::PING_DOCKER_ARCHIVE), "multi/both:a");
    registry.push(
        Path::new(artifacts::CGI_NATIVE_DOCKER_ARCHIVE),
        "multi/both:b",
    );
    registry
        .push_manifest("multi/both", "latest", OCI_INDEX, &index)
        .await;
    let reference = registry.reference("multi/both");
    wisp.cli(&["deploy", "both", "--image", &reference])
        .expect_success();
    let status = wisp.client.function("both").await.unwrap();
    assert_eq!(status.image_digest.as_deref(), Some(ping.as_str()));
    pong(&wisp, "both").await;
}

#[tokio::test]
async fn basic_credentials_are_used_and_never_echoed() {
    credentials_are_used_and_never_echoed(TestRegistry::with_auth()).await;
}

#[tokio::test]
async fn the_bearer_token_flow_gets_a_token_with_the_credentials() {
    let registry = TestRegistry::with_token();
    credentials_are_used_and_never_echoed(registry).await;
    assert!(registry.tokens_issued() > 0, "the token server was asked");
}

async fn credentials_are_used_and_never_echoed(registry: &TestRegistry) {
    let reference = push_ping(registry, "private/ping:1");
    let wisp = wisp_for(registry);

    let out = wisp
        .cli(&["deploy", "private", "--image", &reference])
        .expect_failure();
    assert!(out.contains("401"), "{out}");
    assert!(out.contains(&registry.host), "{out}");

    let wrong = format!("{USER}:not-the-password");
    let out = wisp
        .cli(&[
            "deploy", "private", "--image", &reference, "--creds", &wrong,
        ])
        .expect_failure();
    assert!(out.contains("401"), "{out}");
    assert!(!out.contains("not-the-password"), "{out}");

    let right = format!("{USER}:{PASSWORD}");
    wisp.cli(&[
        "deploy", "private", "--image", &reference, "--creds", &right,
    ])
    .expect_success();
    pong(&wisp, "private").await;
    // Neither the API nor the log shows the password.
    let listed = wisp.invoke("GET", "/system/function/private", "").await;
    assert!(!listed.text().contains(PASSWORD), "{}", listed.text());
    assert!(!wisp.log().contains(PASSWORD));
}

/// A wasm component published as an OCI artifact (as `wkg` and
/// `oci-wasm` push them).
async fn push_component(registry: &TestRegistry, repo: &str, wasm: &[u8]) -> String {
    let layer = registry.push_blob(repo, wasm).await;
    let config = br#"{"architecture":"wasm","os":"wasip2","layerDigests":[]}"#;
    let config_digest = registry.push_blob(repo, config).await;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.wasm.config.v0+json",
            "digest": config_digest,
            "size": config.len(),
        },
        "layers": [{
            "mediaType": "application/wasm",
            "digest": layer,
            "size": wasm.len(),
        }],
    });
    registry
        .push_manifest(repo, "1.0", OCI_MANIFEST, &manifest)
        .await;
    layer
}

#[tokio::test]
async fn a_wasm_component_deploys_by_reference() {
    let registry = TestRegistry::open();
    let wasm = std::fs::read(artifacts::HELLO).unwrap();
    let layer = push_component(registry, "components/hello", &wasm).await;
    let wisp = wisp_for(registry);
    let out = wisp
        .cli(&[
            "deploy",
            "hello",
            "--image",
            &registry.reference("components/hello:1.0"),
        ])
        .expect_success();
    assert!(out.contains("wasm-http"), "{out}");
    let got = wisp
        .invoke("GET", "/function/hello?name=registry", "")
        .await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text());
    assert!(got.text().contains("Hello, registry!"), "{}", got.text());
    // The component is the artifact, as an upload of the file would be.
    let uploaded = wisp.upload(artifacts::HELLO).await.unwrap();
    assert_eq!(uploaded, layer);
}

#[tokio::test]
async fn a_blob_that_does_not_match_its_digest_is_refused_and_not_stored() {
    let registry = TestRegistry::open();
    // Content no other test pushes, so tampering with it harms none.
    let mut wasm = std::fs::read(artifacts::HELLO).unwrap();
    wasm.extend_from_slice(b"\0\x08tampered");
    let layer = push_component(registry, "components/tampered", &wasm).await;
    registry.tamper(&layer);
    let wisp = wisp_for(registry);
    let reference = registry.reference("components/tampered:1.0");
    let body = serde_json::json!({ "service": "t", "image": reference }).to_string();
    let got = wisp.invoke("POST", "/system/functions", &body).await;
    assert_eq!(got.status, StatusCode::BAD_REQUEST, "{}", got.text());
    assert!(got.text().contains("digest"), "{}", got.text());
    let stored = wisp
        .data_dir
        .join("artifacts/sha256")
        .join(&layer["sha256:".len()..]);
    assert!(!stored.exists(), "nothing is stored");
    assert!(wisp.function_names().await.is_empty());
}

#[tokio::test]
async fn an_image_layer_that_does_not_match_its_digest_is_refused_and_not_stored() {
    let registry = TestRegistry::open();
    // An image of its own (a unique file), so tampering harms no other test.
    let dir = tempfile::tempdir().unwrap();
    let rootfs = dir.path().join("rootfs");
    std::fs::create_dir(&rootfs).unwrap();
    std::fs::write(rootfs.join("unique"), b"only the tamper test has this").unwrap();
    let archive = dir.path().join("image.tar");
    std::fs::write(
        &archive,
        wisp_e2e::rootfs_image_as(&rootfs, &["/unique"], "0"),
    )
    .unwrap();
    registry.copy(
        &format!("oci-archive:{}", archive.display()),
        "tampered/image:1",
    );
    let manifest = registry.manifest("tampered/image", "1").await;
    let layer = manifest["layers"][0]["digest"].as_str().unwrap().to_owned();
    registry.tamper(&layer);

    let wisp = wisp_for(registry);
    let reference = registry.reference("tampered/image:1");
    let body = serde_json::json!({ "service": "t", "image": reference }).to_string();
    let got = wisp.invoke("POST", "/system/functions", &body).await;
    assert_eq!(got.status, StatusCode::BAD_REQUEST, "{}", got.text());
    assert!(got.text().contains(&layer), "{}", got.text());
    assert_no_image_stored(&wisp);
}

#[tokio::test]
async fn a_moved_tag_is_pulled_again_at_deploy() {
    let registry = TestRegistry::open();
    let wasm = std::fs::read(artifacts::HELLO).unwrap();
    push_component(registry, "moving/app", &wasm).await;
    let wisp = wisp_for(registry);
    let reference = registry.reference("moving/app:1.0");
    wisp.cli(&["deploy", "app", "--image", &reference])
        .expect_success();
    let first = wisp.client.function("app").await.unwrap();
    assert_eq!(first.kind.as_str(), "wasm-http");

    // The tag now names the ping image; a deploy asks the registry again.
    push_ping(registry, "moving/app:1.0");
    wisp.cli(&["deploy", "app", "--image", &reference])
        .expect_success();
    let second = wisp.client.function("app").await.unwrap();
    assert_eq!(second.kind.as_str(), "container");
    assert_ne!(second.image_digest, first.image_digest);
    pong(&wisp, "app").await;

    // `never` uses only what the store holds: the tag's local name (the
    // image pulled last), and nothing for a tag it has no name for.
    wisp.cli(&["deploy", "app", "--image", &reference, "--pull", "never"])
        .expect_success();
    let third = wisp.client.function("app").await.unwrap();
    assert_eq!(third.image_digest, second.image_digest);
    let unknown = registry.reference("moving/app:2.0");
    let out = wisp
        .cli(&["deploy", "app", "--image", &unknown, "--pull", "never"])
        .expect_failure();
    assert!(out.contains("never"), "{out}");
}

#[tokio::test]
async fn wisp_login_saves_checked_credentials_and_logout_forgets_them() {
    let registry = TestRegistry::with_auth();
    let reference = push_ping(registry, "login/ping:1");
    let wisp = wisp_for(registry);
    let login = |password: &str| {
        wisp.cli(&[
            "login",
            &registry.host,
            "-u",
            USER,
            "-p",
            password,
            "--insecure",
        ])
    };

    let out = login("wrong-password").expect_failure();
    assert!(out.contains("401"), "{out}");
    assert!(!out.contains("wrong-password"), "{out}");
    let saved = wisp.invoke("GET", "/system/registries", "").await;
    assert_eq!(saved.text(), "[]");

    let out = login(PASSWORD).expect_success();
    assert!(out.contains("logged in"), "{out}");
    let saved = wisp.invoke("GET", "/system/registries", "").await;
    assert_eq!(saved.text(), format!("[\"{}\"]", registry.host));
    assert!(!saved.text().contains(PASSWORD));
    let file = wisp.data_dir.join("registries.json");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&file).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);

    // Deploys without credentials of their own use the saved login.
    wisp.cli(&["deploy", "logged-in", "--image", &reference])
        .expect_success();
    pong(&wisp, "logged-in").await;
    assert!(!wisp.log().contains(PASSWORD));

    wisp.cli(&["logout", &registry.host]).expect_success();
    let out = wisp
        .cli(&["deploy", "logged-out", "--image", &reference])
        .expect_failure();
    assert!(out.contains("401"), "{out}");
}

#[tokio::test]
async fn the_servers_docker_config_and_credential_helpers_are_used() {
    use base64::Engine as _;
    let registry = TestRegistry::with_auth();
    let reference = push_ping(registry, "dockercfg/ping:1");
    let dir = tempfile::tempdir().unwrap();

    // `auths` in config.json, as `docker login` writes it.
    let plain = dir.path().join("plain");
    std::fs::create_dir(&plain).unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
    let config = serde_json::json!({ "auths": { registry.host.clone(): { "auth": auth } } });
    std::fs::write(plain.join("config.json"), config.to_string()).unwrap();
    let wisp = reaching(&registry.host)
        .env("DOCKER_CONFIG", plain.to_str().unwrap())
        .start()
        .unwrap();
    wisp.cli(&["deploy", "cfg", "--image", &reference])
        .expect_success();
    pong(&wisp, "cfg").await;
    drop(wisp);

    // A credential helper: a program on the server's PATH.
    let helped = dir.path().join("helped");
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&helped).unwrap();
    std::fs::create_dir_all(&bin).unwrap();
    let config = serde_json::json!({ "credHelpers": { registry.host.clone(): "wisp-test" } });
    std::fs::write(helped.join("config.json"), config.to_string()).unwrap();
    let helper = bin.join("docker-credential-wisp-test");
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\nread server\nprintf '{{\"ServerURL\":\"%s\",\"Username\":\"{USER}\",\"Secret\":\"{PASSWORD}\"}}' \"$server\"\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&helper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let wisp = reaching(&registry.host)
        .env("DOCKER_CONFIG", helped.to_str().unwrap())
        .env("PATH", &path)
        .start()
        .unwrap();
    wisp.cli(&["deploy", "helped", "--image", &reference])
        .expect_success();
    pong(&wisp, "helped").await;
}

/// `docker images`' REPOSITORY and TAG: names from pulls, from `docker
/// save` archives' `RepoTags` and from `wisp tag`; `wisp rmi`; names across
/// a restart; `--pull missing` takes a tag the store has a name for.
#[tokio::test]
async fn images_keep_their_names_and_rmi_respects_functions() {
    let registry = TestRegistry::open();
    let reference = push_ping(registry, "names/ping:1");
    let dir = tempfile::tempdir().unwrap();
    let start = || {
        reaching(&registry.host)
            .data_dir(dir.path())
            .start()
            .expect("start wisp")
    };
    let mut wisp = start();
    wisp.cli(&["pull", &reference]).expect_success();
    // An upload of a docker archive is named by its RepoTags.
    wisp.deploy("from-file", artifacts::PING_DOCKER_ARCHIVE)
        .await;
    wisp.cli(&["tag", &reference, "myping:v2"]).expect_success();
    let out = wisp.cli(&["images"]).expect_success();
    for repository in [
        format!("{}/names/ping ", registry.host),
        "docker.io/wisp/ping ".to_owned(),
        "docker.io/library/myping ".to_owned(),
    ] {
        assert!(out.contains(&repository), "{repository} in\n{out}");
    }
    assert!(out.contains(" v2 "), "{out}");
    wisp.client.delete("from-file").await.unwrap();

    // A name the store has: `missing` asks no registry (docker.io is
    // unreachable here).
    wisp.cli(&["deploy", "f", "--image", "myping:v2", "--pull", "missing"])
        .expect_success();
    pong(&wisp, "f").await;

    // Names survive a restart.
    wisp.kill();
    let wisp = start();
    let images = wisp.client.images().await.unwrap();
    let ping = images
        .iter()
        .find(|i| i.names.iter().any(|n| n.ends_with("myping:v2")))
        .expect("the named image");
    assert_eq!(ping.functions, ["f"]);
    let digest = ping.digest.clone();
    let names = async || {
        wisp.client
            .images()
            .await
            .unwrap()
            .into_iter()
            .find(|i| i.digest == digest)
            .map(|i| i.names)
    };

    // One name of several goes alone; the last one would take the image,
    // which `f` runs: refused, unless forced (then the image stays).
    let out = wisp.cli(&["rmi", "myping:v2"]).expect_success();
    assert!(
        out.contains("untagged docker.io/library/myping:v2"),
        "{out}"
    );
    assert_eq!(names().await, Some(vec![reference.clone()]));
    let err = wisp.cli(&["rmi", &reference]).expect_failure();
    assert!(err.contains("409") && err.contains("in use by f"), "{err}");
    wisp.cli(&["rmi", "--force", &reference]).expect_success();
    assert_eq!(names().await, Some(vec![]), "the image stays for f");
    pong(&wisp, "f").await;

    // Once no function runs it, a digest removes it.
    // (Its old version drains first: until then the image is held.)
    wisp.client.delete("f").await.unwrap();
    eventually(
        "rmi once f has drained",
        Duration::from_secs(10),
        async || wisp.cli(&["rmi", &digest]).success,
    )
    .await;
    assert_eq!(names().await, None);
    let err = wisp.cli(&["rmi", &digest]).expect_failure();
    assert!(err.contains("404"), "{err}");
}

/// Pushes, as `name_tag`, a busybox image with the CGI probe and 4 MiB of
/// bytes that do not compress: a pull long enough to hold up halfway.
fn push_large_probe(registry: &TestRegistry, name_tag: &str) {
    let rootfs = wisp_e2e::busybox_rootfs();
    // Its own bytes for each name, so that no two share the layer.
    let mut state = name_tag.bytes().fold(0x9E37_79B9_7F4A_7C15u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01B3)
    });
    let payload: Vec<u8> = (0..4 << 20)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    std::fs::write(rootfs.path().join("payload"), payload).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("image.tar");
    std::fs::write(
        &archive,
        wisp_e2e::rootfs_image_as(rootfs.path(), &["/bin/sh", "/probe.sh"], "0"),
    )
    .unwrap();
    registry.copy(&format!("oci-archive:{}", archive.display()), name_tag);
}

/// Panics unless the image store holds nothing: no blob, layer, image or
/// staging directory (what a refused or interrupted pull must leave).
#[track_caller]
fn assert_no_image_stored(wisp: &Wisp) {
    for dir in [
        "images/blobs/sha256",
        "images/layers",
        "images/images",
        "images/tmp",
    ] {
        let entries = std::fs::read_dir(wisp.data_dir.join(dir)).unwrap().count();
        assert_eq!(entries, 0, "{dir} is empty");
    }
}

/// What the server says of function `name`.
async fn status_of(wisp: &Wisp, name: &str) -> serde_json::Value {
    let got = wisp
        .invoke("GET", &format!("/system/function/{name}"), "")
        .await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text());
    serde_json::from_str(&got.text()).unwrap()
}

/// Deploys `repo_tag` through `proxy` as the CGI function `service`,
/// with the proxy holding the layer after its first MiB: the deploy is
/// answered 202 while it pulls. Returns the answer's text.
async fn deploy_held(wisp: &Wisp, proxy: &GatedProxy, service: &str, repo_tag: &str) -> String {
    proxy.limit(1 << 20);
    let body = serde_json::json!({
        "service": service,
        "image": proxy.reference(repo_tag),
        "protocol": "cgi",
    })
    .to_string();
    let got = wisp.invoke("POST", "/system/functions", &body).await;
    assert_eq!(got.status, StatusCode::ACCEPTED, "{}", got.text());
    got.text()
}

#[tokio::test]
async fn a_deploy_answers_while_it_pulls_and_its_first_requests_wait() {
    let registry = TestRegistry::open();
    push_large_probe(registry, "large/probe:1");
    let proxy = GatedProxy::start(&registry.host).await;
    let wisp = wisp_for_proxy(&proxy);
    // The manifest and config pass; the 4 MiB layer stops after 1 MiB.
    let answer = deploy_held(&wisp, &proxy, "large", "large/probe:1").await;
    assert!(answer.contains("pulling"), "{answer}");

    let status = status_of(&wisp, "large").await;
    assert_eq!(status["state"], "pulling", "{status}");
    let layer = &status["deploying"]["pull"]["layers"][0];
    assert!(
        layer["done"].as_u64().unwrap() < layer["size"].as_u64().unwrap(),
        "{status}"
    );
    let out = wisp.cli(&["ls"]).expect_success();
    assert!(out.contains("large") && out.contains("pulling"), "{out}");
    let pulls = wisp.invoke("GET", "/system/pulls", "").await;
    assert!(
        pulls.text().contains("\"function\":\"large\""),
        "{}",
        pulls.text()
    );

    // Other deploys and requests go on meanwhile.
    wisp.deploy("hello", artifacts::HELLO).await;
    let hello = wisp.invoke("GET", "/function/hello", "").await;
    assert_eq!(hello.status, StatusCode::OK);

    // A request to the function waits for the pull, then is served.
    let waiting = wisp.spawn_invoke("GET", "/function/large", "");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "the request waits for the pull");
    proxy.open();
    let answer = waiting.await.unwrap();
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    let status = status_of(&wisp, "large").await;
    assert_eq!(status["state"], "ready", "{status}");
    assert!(status.get("deploying").is_none(), "{status}");
    let pulls = wisp.invoke("GET", "/system/pulls", "").await;
    assert_eq!(pulls.text().trim(), "[]");
}

#[tokio::test]
async fn a_request_waiting_for_a_replaced_deploy_is_served_by_its_replacement() {
    let registry = TestRegistry::open();
    push_large_probe(registry, "large/swap:1");
    let proxy = GatedProxy::start(&registry.host).await;
    let wisp = wisp_for_proxy(&proxy);
    deploy_held(&wisp, &proxy, "swap", "large/swap:1").await;
    let waiting = wisp.spawn_invoke("GET", "/function/swap/", "");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiting.is_finished(), "the request waits for the pull");
    // A deploy of a file replaces the one still pulling.
    wisp.deploy("swap", artifacts::HELLO).await;
    let answer = waiting.await.unwrap();
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert!(answer.text().contains("Hello"), "{}", answer.text());
    proxy.open();
    let status = status_of(&wisp, "swap").await;
    assert_eq!(status["kind"], "wasm-http", "{status}");
    assert!(status.get("deploying").is_none(), "{status}");
}

#[tokio::test]
async fn a_registry_that_goes_away_mid_pull_leaves_nothing_half_stored() {
    let registry = TestRegistry::open();
    push_large_probe(registry, "large/cut:1");
    let proxy = GatedProxy::start(&registry.host).await;
    let wisp = wisp_for_proxy(&proxy);
    let reference = proxy.reference("large/cut:1");
    deploy_held(&wisp, &proxy, "cut", "large/cut:1").await;
    // Some of the layer arrived; then the registry is gone.
    eventually("part of the layer", Duration::from_secs(10), async || {
        let status = status_of(&wisp, "cut").await;
        status["deploying"]["pull"]["layers"][0]["done"].as_u64() > Some(0)
    })
    .await;
    proxy.cut();
    eventually("the deploy to fail", Duration::from_secs(30), async || {
        status_of(&wisp, "cut").await["state"] == "failed"
    })
    .await;
    let status = status_of(&wisp, "cut").await;
    let error = status["deploying"]["error"].as_str().unwrap();
    assert!(
        error.contains("large/cut:1"),
        "the error names the image: {error}"
    );
    let got = wisp.invoke("GET", "/function/cut", "").await;
    assert_eq!(
        got.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        got.text()
    );
    assert!(got.text().contains("large/cut:1"), "{}", got.text());
    let out = wisp.cli(&["ls"]).expect_success();
    assert!(
        out.contains("failed") && out.contains("deploy failed"),
        "{out}"
    );
    assert_no_image_stored(&wisp);

    // The registry is back: the next deploy starts over and runs, and the
    // CLI shows the layer as it arrives.
    proxy.limit(1 << 20);
    let mut command =
        wisp.cli_command(&["deploy", "cut", "--image", &reference, "--protocol", "cgi"]);
    let deploy = tokio::task::spawn_blocking(move || {
        wisp_e2e::CliOutput::from(command.output().expect("run wisp"))
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    proxy.open();
    let out = deploy.await.unwrap();
    assert!(out.success, "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("downloaded"), "{}", out.stderr);
    let got = wisp.invoke("GET", "/function/cut", "").await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text());

    // A deploy still pulling can be deleted: it stops, and is gone.
    push_large_probe(registry, "large/probe-gone:1");
    deploy_held(&wisp, &proxy, "gone", "large/probe-gone:1").await;
    wisp.cli(&["rm", "gone"]).expect_success();
    assert!(!wisp.function_names().await.contains(&"gone".to_owned()));
    let got = wisp.invoke("GET", "/function/gone", "").await;
    assert_eq!(got.status, StatusCode::NOT_FOUND, "{}", got.text());
    proxy.open();
}

#[tokio::test]
async fn a_deploy_accepted_before_a_restart_is_taken_up_after_it() {
    let registry = TestRegistry::open();
    push_large_probe(registry, "large/restart:1");
    let proxy = GatedProxy::start(&registry.host).await;
    let dir = tempfile::tempdir().unwrap();
    let start = || {
        reaching(&proxy.host)
            .data_dir(dir.path())
            .start()
            .expect("start wisp")
    };
    let mut wisp = start();
    deploy_held(&wisp, &proxy, "restarted", "large/restart:1").await;
    wisp.kill();

    // The new server pulls again; the function runs once it has.
    proxy.open();
    let wisp = start();
    let answer = wisp.invoke("GET", "/function/restarted", "").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    let status = status_of(&wisp, "restarted").await;
    assert_eq!(status["state"], "ready", "{status}");
    assert!(wisp.log().contains("taking up an unfinished deploy"));
    // Deployed, it is no longer taken up.
    drop(wisp);
    let wisp = start();
    // (The log is the data dir's, over all three servers.)
    assert_eq!(wisp.log().matches("taking up").count(), 1);
    let answer = wisp.invoke("GET", "/function/restarted", "").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
}

/// A server that may reach the proxy over plain HTTP.
fn wisp_for_proxy(proxy: &GatedProxy) -> Wisp {
    reaching(&proxy.host).start().expect("start wisp")
}
