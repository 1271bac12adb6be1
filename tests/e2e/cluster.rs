//! Clusters on a real 3-member etcd. Membership: three `wisp serve --etcd`
//! nodes see each other; a node killed with SIGKILL drops out when its
//! lease expires, one stopped cleanly at once; a second node under a live
//! node's name is refused; with one etcd member down nothing changes.
//! Functions: a deploy on one node serves through every node, from one
//! warm home; scaling and deletes reach every node.

use std::time::Duration;

use wisp_e2e::etcd::TestEtcd;
use wisp_e2e::{Wisp, artifacts, eventually};

/// The token every node of the test clusters answers to.
const TOKEN: &str = "cluster-test-token-0123456789abcdef";

fn token_file() -> std::path::PathBuf {
    static FILE: std::sync::OnceLock<tempfile::NamedTempFile> = std::sync::OnceLock::new();
    FILE.get_or_init(|| {
        let file = tempfile::NamedTempFile::new().expect("token file");
        std::fs::write(file.path(), TOKEN).expect("write token");
        file
    })
    .path()
    .to_owned()
}

/// A node of `cluster` named `name`, on the shared etcd, with a 2 s lease.
fn node(etcd: &TestEtcd, cluster: &str, name: &str) -> Wisp {
    node_with(etcd, cluster, name, &[])
}

/// [`node`], with more arguments to `wisp serve`.
fn node_with(etcd: &TestEtcd, cluster: &str, name: &str, more: &[&str]) -> Wisp {
    more.iter()
        .fold(Wisp::builder(), |builder, arg| builder.arg(arg))
        .arg("--token-file")
        .arg(&token_file().display().to_string())
        .arg("--etcd")
        .arg(&etcd.endpoints())
        .arg("--cluster-name")
        .arg(cluster)
        .arg("--node-name")
        .arg(name)
        .arg("--lease-ttl")
        .arg("2s")
        .start()
        .expect("start a cluster node")
}

/// The names of the nodes `wisp` lists.
async fn members(wisp: &Wisp) -> Vec<String> {
    let view = wisp.client.nodes().await.expect("GET /system/nodes");
    view.nodes.into_iter().map(|n| n.name).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn nodes_join_see_each_other_and_leave() {
    let etcd = TestEtcd::shared();
    let one = node(etcd, "membership", "n1");
    let two = node(etcd, "membership", "n2");
    let mut three = node(etcd, "membership", "n3");
    let all = vec!["n1".to_owned(), "n2".to_owned(), "n3".to_owned()];
    for wisp in [&one, &two, &three] {
        eventually(
            "every node to list all three",
            Duration::from_secs(5),
            async || members(wisp).await == all,
        )
        .await;
    }
    let view = one.client.nodes().await.expect("nodes");
    assert_eq!(view.cluster.as_deref(), Some("membership"));
    assert_eq!(view.store, "etcd");
    assert!(view.reachable);
    assert_eq!(view.this_node, "n1");
    let n2 = view
        .nodes
        .iter()
        .find(|n| n.name == "n2")
        .expect("n2 listed");
    assert_eq!(n2.address, two.addr);
    assert_eq!(n2.version, env!("CARGO_PKG_VERSION"));
    assert!(n2.cpus >= 1);

    // The CLI prints the same.
    let out = two.cli(&["nodes"]).expect_success();
    assert!(out.contains("cluster membership"), "{out}");
    for name in &all {
        assert!(out.contains(name.as_str()), "{out}");
    }

    // A second node under a live node's name is refused.
    let taken = Wisp::builder()
        .arg("--token-file")
        .arg(&token_file().display().to_string())
        .arg("--etcd")
        .arg(&etcd.endpoints())
        .arg("--cluster-name")
        .arg("membership")
        .arg("--node-name")
        .arg("n2")
        .start();
    let Err(refused) = taken else {
        panic!("a second n2 joined");
    };
    assert!(
        refused.to_string().contains("already a live member"),
        "{refused:#}"
    );

    // SIGKILL: the others drop it once its lease (2 s) expires.
    let killed_at = std::time::Instant::now();
    three.kill();
    for wisp in [&one, &two] {
        eventually(
            "n3 to drop out after SIGKILL",
            Duration::from_secs(8),
            async || members(wisp).await == ["n1", "n2"],
        )
        .await;
    }
    let gone_after = killed_at.elapsed();
    assert!(
        gone_after >= Duration::from_millis(1500),
        "n3 dropped out after {gone_after:?}, before its lease could expire"
    );

    // A clean stop revokes the lease: the others drop it at once.
    let mut two = two;
    two.signal("TERM");
    two.wait(Duration::from_secs(20)).expect("n2 exits");
    eventually(
        "n2 to drop out after a clean stop",
        Duration::from_secs(1),
        async || members(&one).await == ["n1"],
    )
    .await;

    // A node on its own lists only itself.
    let alone = Wisp::start();
    let view = alone.client.nodes().await.expect("nodes");
    assert_eq!(view.cluster, None);
    assert_eq!(view.store, "local");
    assert_eq!(view.nodes.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn one_etcd_member_down_changes_nothing() {
    // Its own etcd: this test stops a member.
    let etcd = TestEtcd::start().expect("start etcd");
    let one = node(&etcd, "quorum", "a");
    let two = node(&etcd, "quorum", "b");
    for wisp in [&one, &two] {
        eventually("both nodes listed", Duration::from_secs(5), async || {
            members(wisp).await == ["a", "b"]
        })
        .await;
    }
    etcd.stop_member(0);
    // Well past the lease: both stay members, renewing through the others.
    tokio::time::sleep(Duration::from_secs(4)).await;
    for wisp in [&one, &two] {
        assert_eq!(members(wisp).await, ["a", "b"]);
        assert!(wisp.client.nodes().await.expect("nodes").reachable);
    }
    // A node joining now still makes it.
    let three = node(&etcd, "quorum", "c");
    eventually("c listed by a", Duration::from_secs(5), async || {
        members(&one).await == ["a", "b", "c"]
    })
    .await;
    drop(three);
    etcd.start_member(0).expect("restart member");
}

/// The 200s `wisp` counted for `function`, from its `/metrics`.
async fn served(wisp: &Wisp, function: &str) -> u64 {
    answered(wisp, function, 200).await
}

/// The answers with `code` `wisp` counted for `function`.
async fn answered(wisp: &Wisp, function: &str, code: u16) -> u64 {
    let metrics = wisp.metrics().await;
    let series = format!(
        "gateway_function_invocation_total{{code=\"{code}\",function_name=\"{function}\"}} "
    );
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series.as_str()))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deploy_on_one_node_serves_through_every_node_from_one_home() {
    let etcd = TestEtcd::shared();
    let nodes = [
        node(etcd, "functions", "f1"),
        node(etcd, "functions", "f2"),
        node(etcd, "functions", "f3"),
    ];
    for wisp in &nodes {
        eventually("all three listed", Duration::from_secs(5), async || {
            members(wisp).await.len() == 3
        })
        .await;
    }
    // The same token works on every node.
    for wisp in &nodes {
        assert_eq!(wisp.token, TOKEN);
    }

    nodes[0].deploy("hello", artifacts::HELLO).await;
    let deployed = std::time::Instant::now();
    for wisp in &nodes[1..] {
        eventually(
            "hello through another node",
            Duration::from_secs(5),
            async || wisp.invoke("GET", "/function/hello", "").await.status == 200,
        )
        .await;
    }
    println!(
        "deploy on f1 to success on f2 and f3: {:?}",
        deployed.elapsed()
    );
    // Every node knows it (its registry copy), with its revision.
    for wisp in &nodes {
        eventually(
            "hello in every registry",
            Duration::from_secs(2),
            async || {
                wisp.client
                    .function("hello")
                    .await
                    .is_ok_and(|f| f.revision == Some(1))
            },
        )
        .await;
    }

    // Through whichever node, the calls meet one warm home.
    for _ in 0..10 {
        for wisp in &nodes {
            let answer = wisp.invoke("GET", "/function/hello", "").await;
            assert_eq!(answer.status, 200, "{}", answer.text());
            assert!(answer.text().contains("Hello"), "{}", answer.text());
        }
    }
    let mut counts = Vec::new();
    for wisp in &nodes {
        counts.push(served(wisp, "hello").await);
    }
    counts.sort_unstable();
    assert_eq!(counts[..2], [0, 0], "only the home serves: {counts:?}");
    assert!(counts[2] >= 30, "the home served them all: {counts:?}");
    // So does the Lambda Invoke API, through whichever node.
    for wisp in &nodes {
        let answer = wisp
            .client
            .call(
                http::Method::POST,
                "/2015-03-31/functions/hello/invocations",
                http::HeaderMap::new(),
                bytes::Bytes::from_static(b"{}"),
            )
            .await
            .expect("the Invoke API");
        assert_eq!(answer.status, 200, "{}", answer.text());
        assert!(answer.text().contains("Hello"), "{}", answer.text());
    }
    let mut after = Vec::new();
    for wisp in &nodes {
        after.push(served(wisp, "hello").await);
    }
    after.sort_unstable();
    assert_eq!(after[..2], [0, 0], "only the home serves: {after:?}");
    assert_eq!(after[2], counts[2] + 3, "{after:?}");

    // A scaling change on one node reaches the others.
    let out = nodes[1]
        .cli(&["scale", "hello", "--max", "3"])
        .expect_success();
    assert!(out.contains("max 3"), "{out}");
    for wisp in &nodes {
        eventually("max 3 everywhere", Duration::from_secs(2), async || {
            wisp.client
                .function("hello")
                .await
                .is_ok_and(|f| f.scaling.max_instances == 3)
        })
        .await;
    }

    // A new revision deployed on another node replaces it everywhere.
    nodes[2].deploy("hello", artifacts::HELLO).await;
    for wisp in &nodes {
        eventually(
            "revision 2 everywhere",
            Duration::from_secs(2),
            async || {
                wisp.client
                    .function("hello")
                    .await
                    .is_ok_and(|f| f.revision == Some(2))
            },
        )
        .await;
    }

    // A delete on one node ends it everywhere.
    nodes[2].cli(&["rm", "hello"]).expect_success();
    for wisp in &nodes {
        eventually(
            "hello gone everywhere",
            Duration::from_secs(2),
            async || {
                wisp.invoke("GET", "/function/hello", "").await.status == 404
                    && wisp.client.function("hello").await.is_err()
            },
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_alone_never_needs_a_token_file_but_a_cluster_does() {
    let refused = Wisp::builder()
        .arg("--etcd")
        .arg(&TestEtcd::shared().endpoints())
        .start();
    let Err(refused) = refused else {
        panic!("a cluster node started without --token-file");
    };
    assert!(refused.to_string().contains("--token-file"), "{refused:#}");
}

#[tokio::test(flavor = "multi_thread")]
async fn with_etcd_gone_nodes_serve_their_last_view_refuse_writes_and_converge_after() {
    // Its own etcd: this test stops every member.
    let etcd = TestEtcd::start().expect("start etcd");
    let a = node(&etcd, "outage", "a");
    let b = node(&etcd, "outage", "b");
    for wisp in [&a, &b] {
        eventually("both nodes listed", Duration::from_secs(5), async || {
            members(wisp).await == ["a", "b"]
        })
        .await;
    }
    a.deploy("hello", artifacts::HELLO).await;
    eventually("hello through b", Duration::from_secs(5), async || {
        b.invoke("GET", "/function/hello", "").await.status == 200
    })
    .await;

    for i in 0..3 {
        etcd.stop_member(i);
    }
    // Serving goes on from the last view, through either node.
    for _ in 0..5 {
        for wisp in [&a, &b] {
            let answer = wisp.invoke("GET", "/function/hello", "").await;
            assert_eq!(answer.status, 200, "{}", answer.text());
        }
    }
    // Writes are refused with the reason.
    let refused = a.cli(&["scale", "hello", "--max", "4"]).expect_failure();
    assert!(
        refused.contains("etcd") && refused.contains("out of reach"),
        "{refused}"
    );
    let refused = b.cli(&["rm", "hello"]).expect_failure();
    assert!(refused.contains("out of reach"), "{refused}");
    // So are asynchronous calls: they are kept in etcd.
    let refused = a.invoke("POST", "/async-function/hello", "").await;
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert!(refused.text().contains("etcd"), "{}", refused.text());
    eventually("a to see etcd gone", Duration::from_secs(10), async || {
        !a.client.nodes().await.expect("nodes").reachable
    })
    .await;
    assert_eq!(b.invoke("GET", "/function/hello", "").await.status, 200);

    for i in 0..3 {
        etcd.start_member(i).expect("restart member");
    }
    etcd.wait_healthy(Duration::from_secs(20))
        .expect("etcd healthy again");
    eventually(
        "a to reach etcd again",
        Duration::from_secs(10),
        async || a.client.nodes().await.expect("nodes").reachable,
    )
    .await;
    // Writes work again and reach the other node.
    eventually(
        "a scale to go through",
        Duration::from_secs(10),
        async || a.cli(&["scale", "hello", "--max", "4"]).success,
    )
    .await;
    eventually("b to see max 4", Duration::from_secs(5), async || {
        b.client
            .function("hello")
            .await
            .is_ok_and(|f| f.scaling.max_instances == 4)
    })
    .await;
    assert_eq!(members(&b).await, ["a", "b"]);
}

/// Every manifest in `deploy/kubernetes/` validates offline against the
/// Kubernetes schemas (kubernetes-validate, strict: no unknown fields),
/// and the DaemonSet runs wisp as the docs say.
#[test]
fn kubernetes_manifests_validate() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = root.join("deploy/kubernetes");
    let exe = std::env::current_exe().expect("test binary path");
    let bin = exe
        .ancestors()
        .nth(3)
        .expect("target dir")
        .join("k8s-validate/bin/kubernetes-validate");
    assert!(
        bin.exists(),
        "{} does not exist: run scripts/setup.sh",
        bin.display()
    );
    let mut manifests: Vec<std::path::PathBuf> = std::fs::read_dir(&dir)
        .expect("deploy/kubernetes")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    manifests.sort();
    assert!(manifests.len() >= 4, "{manifests:?}");
    let out = std::process::Command::new(&bin)
        .arg("--strict")
        .args(&manifests)
        .output()
        .expect("run kubernetes-validate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    for kind in [
        "daemonset/wisp",
        "service/wisp",
        "statefulset/etcd",
        "configmap/wisp",
    ] {
        assert!(
            text.contains(&format!("passed for resource {kind}")),
            "{text}"
        );
    }
    // The settings the DaemonSet gives are ones `wisp serve` takes.
    let daemonset = std::fs::read_to_string(dir.join("wisp.yaml")).expect("wisp.yaml");
    let config = std::fs::read_to_string(dir.join("config.yaml")).expect("config.yaml");
    let help = std::process::Command::new(wisp_e2e::wisp_bin())
        .args(["serve", "--help"])
        .output()
        .expect("wisp serve --help");
    let help = String::from_utf8_lossy(&help.stdout);
    for text in [&daemonset, &config] {
        for var in text
            .split(|c: char| !(c.is_ascii_uppercase() || c == '_'))
            .filter(|w| w.starts_with("WISP_"))
        {
            assert!(
                help.contains(&format!("env: {var}")),
                "wisp serve takes no {var}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_killed_under_load_costs_only_its_requests_in_flight() {
    let etcd = TestEtcd::shared();
    let mut nodes = vec![
        node(etcd, "killing", "k1"),
        node(etcd, "killing", "k2"),
        node(etcd, "killing", "k3"),
    ];
    for wisp in &nodes {
        eventually("all three listed", Duration::from_secs(5), async || {
            members(wisp).await.len() == 3
        })
        .await;
    }
    nodes[0].deploy("hello", artifacts::HELLO).await;
    for wisp in &nodes {
        eventually(
            "hello through every node",
            Duration::from_secs(5),
            async || wisp.invoke("GET", "/function/hello", "").await.status == 200,
        )
        .await;
        // In its registry too (a node forwards what it has not applied
        // yet; `wisp bench` asks the entry node for the function).
        eventually(
            "hello in every registry",
            Duration::from_secs(5),
            async || wisp.client.function("hello").await.is_ok(),
        )
        .await;
    }
    // The home counts every call.
    let mut home = 0;
    for (i, wisp) in nodes.iter().enumerate() {
        if served(wisp, "hello").await >= 3 {
            home = i;
        }
    }
    let entry = (home + 1) % 3;
    let report = nodes[0].data_dir.join("bench.json");
    let mut bench = nodes[entry].cli_command(&[
        "bench",
        "hello",
        "--mode",
        "rate",
        "--rate",
        "200",
        "--concurrency",
        "16",
        "--duration",
        "6s",
        "--json",
        &report.display().to_string(),
    ]);
    let run = tokio::task::spawn_blocking(move || bench.output().expect("wisp bench"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let killed_at = std::time::Instant::now();
    nodes[home].kill();
    let survivor = &nodes[entry];
    eventually(
        "the killed home to drop out",
        Duration::from_secs(8),
        async || members(survivor).await.len() == 2,
    )
    .await;
    println!(
        "the killed node dropped out after {:?}",
        killed_at.elapsed()
    );
    let out = run.await.expect("bench task");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report).expect("report")).expect("report JSON");
    let requests = report["requests"].as_u64().unwrap_or_default();
    let errors = report["errors"].as_u64().unwrap_or_default();
    let ok = report["statuses"]["200"].as_u64().unwrap_or_default();
    println!(
        "requests {requests}, 200s {ok}, errors {errors}, statuses {}",
        report["statuses"]
    );
    assert!(requests >= 600, "{report}");
    // Only what was in flight on the killed node may fail: at most the
    // bench's 16 requests at once.
    assert!(
        requests - ok <= 16,
        "{} of {requests} failed: {report}",
        requests - ok
    );
    // And the function serves on through the other two.
    for wisp in nodes.iter().filter(|w| w.pid() != 0) {
        assert_eq!(wisp.invoke("GET", "/function/hello", "").await.status, 200);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_that_ran_alone_brings_its_functions_and_later_learns_what_was_deleted() {
    let etcd = TestEtcd::shared();
    let dir = tempfile::tempdir().expect("data dir");
    let in_cluster = |builder: wisp_e2e::WispBuilder, name: &str| {
        builder
            .arg("--token-file")
            .arg(&token_file().display().to_string())
            .arg("--etcd")
            .arg(&etcd.endpoints())
            .arg("--cluster-name")
            .arg("joining")
            .arg("--node-name")
            .arg(name)
            .arg("--lease-ttl")
            .arg("2s")
            .start()
            .expect("start a cluster node")
    };
    {
        let alone = Wisp::builder().data_dir(dir.path()).start().expect("alone");
        alone.deploy("solo", artifacts::HELLO).await;
        alone
            .cli(&["secret", "create", "solo-key", "--from-literal", "v"])
            .expect_success();
    }
    let mut first = in_cluster(Wisp::builder().data_dir(dir.path()), "j1");
    let other = in_cluster(Wisp::builder(), "j2");
    eventually(
        "solo through the other node",
        Duration::from_secs(5),
        async || other.invoke("GET", "/function/solo", "").await.status == 200,
    )
    .await;
    // In the other node's registry too (its artifact fetched from the first).
    eventually(
        "solo in the other node's registry",
        Duration::from_secs(5),
        async || other.client.function("solo").await.is_ok(),
    )
    .await;
    // Its secrets too.
    eventually(
        "solo-key on the other node",
        Duration::from_secs(5),
        async || {
            other
                .cli(&["secret", "ls"])
                .expect_success()
                .contains("solo-key")
        },
    )
    .await;
    // Deleted while the first node is away: gone there when it is back.
    first.kill();
    other.cli(&["rm", "solo"]).expect_success();
    let first = in_cluster(Wisp::builder().data_dir(dir.path()), "j1");
    eventually(
        "solo gone on the returning node",
        Duration::from_secs(5),
        async || first.client.function("solo").await.is_err(),
    )
    .await;
    assert_eq!(other.invoke("GET", "/function/solo", "").await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_calls_live_in_etcd_and_outlive_the_node_that_took_them() {
    use crate::calls::{Receiver, header, post_async};
    const CALLS: usize = 60;
    let etcd = TestEtcd::shared();
    let local = ["--allow-local-callbacks"];
    let mut nodes = vec![
        node_with(etcd, "queue", "q1", &local),
        node_with(etcd, "queue", "q2", &local),
    ];
    for wisp in &nodes {
        eventually("both listed", Duration::from_secs(5), async || {
            members(wisp).await.len() == 2
        })
        .await;
    }
    // One request at a time; failures retried.
    nodes[0]
        .deploy_with("one", artifacts::MISBEHAVE, |d| {
            d.scaling.max_instances = Some(1);
            d.scaling.concurrency = Some(1);
            d.annotations = Some(
                [
                    ("com.openfaas.retry.attempts", "3"),
                    ("com.openfaas.retry.codes", "500"),
                    ("com.openfaas.retry.min_wait", "50ms"),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            );
        })
        .await
        .unwrap();
    for wisp in &nodes {
        eventually("one on both nodes", Duration::from_secs(5), async || {
            wisp.client.function("one").await.is_ok()
                && wisp
                    .invoke("GET", "/function/one/env?name=X", "")
                    .await
                    .status
                    == 200
        })
        .await;
    }
    let home = usize::from(served(&nodes[1], "one").await > served(&nodes[0], "one").await);
    let entry = 1 - home;
    assert_eq!(served(&nodes[entry], "one").await, 0);
    let mut receiver = Receiver::start().await;
    let url = receiver.url();

    // Accepted by the other node, run by the home.
    for i in 0..3 {
        let id = format!("first-{i}");
        let (status, headers, text) = post_async(
            &nodes[entry],
            "/async-function/one/env?name=X",
            &[("x-callback-url", &url), ("x-call-id", &id)],
            "",
        )
        .await;
        assert_eq!(status, 202, "{text}");
        assert_eq!(header(&headers, "x-call-id"), id);
    }
    for _ in 0..3 {
        let back = receiver.next().await;
        assert_eq!(header(&back.headers, "x-function-status"), "200");
        assert!(header(&back.headers, "x-call-id").starts_with("first-"));
    }
    assert_eq!(served(&nodes[entry], "one").await, 0, "the home ran them");
    // Retried by the home under its claim: three runs, one callback.
    let (status, _, text) = post_async(
        &nodes[entry],
        "/async-function/one/trap",
        &[("x-callback-url", &url), ("x-call-id", "failing")],
        "",
    )
    .await;
    assert_eq!(status, 202, "{text}");
    let back = receiver.next().await;
    assert_eq!(header(&back.headers, "x-function-status"), "500");
    assert_eq!(header(&back.headers, "x-call-id"), "failing");
    assert_eq!(answered(&nodes[home], "one", 500).await, 3);
    assert_eq!(answered(&nodes[entry], "one", 500).await, 0);

    // The home busy with a synchronous call: the calls accepted next wait
    // in etcd (half of them taken by the home itself) when it dies.
    let _blocker = nodes[home].spawn_invoke("GET", "/function/one/sleep?ms=20000", "");
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..CALLS {
        let id = format!("call-{i}");
        let through = if i % 2 == 0 { home } else { entry };
        let (status, _, text) = post_async(
            &nodes[through],
            "/async-function/one/sleep?ms=1",
            &[("x-callback-url", &url), ("x-call-id", &id)],
            "",
        )
        .await;
        assert_eq!(status, 202, "{text}");
    }
    let killed = std::time::Instant::now();
    nodes[home].kill();
    let mut seen: std::collections::HashMap<String, u32> = std::collections::HashMap::new();
    while seen.values().sum::<u32>() < CALLS as u32 {
        let back = receiver.next().await;
        assert_eq!(
            header(&back.headers, "x-function-status"),
            "200",
            "{:?}",
            back.body
        );
        *seen
            .entry(header(&back.headers, "x-call-id").to_owned())
            .or_default() += 1;
    }
    println!(
        "{CALLS} calls of a killed home ran on the survivor within {:?}",
        killed.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    while let Ok(back) = receiver.got.try_recv() {
        *seen
            .entry(header(&back.headers, "x-call-id").to_owned())
            .or_default() += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "calls run twice: {twice:?}");
    assert_eq!(seen.len(), CALLS);

    // A body larger than etcd keeps is refused, clearly.
    let big = "x".repeat(2 * 1024 * 1024);
    let (status, _, text) = post_async(&nodes[entry], "/async-function/one/env", &[], &big).await;
    assert_eq!(status, 413, "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_reach_every_node_sealed_and_roll_the_functions_that_read_them() {
    const VALUE: &str = "cluster-s3cr3t";
    const NEW_VALUE: &str = "cluster-r0tated";
    let etcd = TestEtcd::shared();
    let nodes = [node(etcd, "sealed", "s1"), node(etcd, "sealed", "s2")];
    for wisp in &nodes {
        eventually("both listed", Duration::from_secs(5), async || {
            members(wisp).await.len() == 2
        })
        .await;
    }
    nodes[0]
        .cli(&["secret", "create", "db", "--from-literal", VALUE])
        .expect_success();
    // Made on one node, a deploy that reads it works on the other.
    nodes[1]
        .deploy_with("reader", artifacts::MISBEHAVE, |d| {
            d.secrets = Some(vec!["db".to_owned()]);
        })
        .await
        .unwrap();
    // Marked as forwarded: it runs on the node it is sent to, whichever is
    // the function's home.
    let read = async |wisp: &Wisp| {
        let mut here = http::HeaderMap::new();
        here.insert("x-wisp-forwarded", http::HeaderValue::from_static("test"));
        wisp.client
            .call(
                http::Method::GET,
                "/function/reader/read?path=/var/openfaas/secrets/db",
                here,
                bytes::Bytes::new(),
            )
            .await
            .expect("read")
            .text()
    };
    for wisp in &nodes {
        eventually(
            "the secret read through each node",
            Duration::from_secs(5),
            async || read(wisp).await == VALUE,
        )
        .await;
        let listed = wisp.cli(&["secret", "ls"]).expect_success();
        assert!(listed.contains("db") && !listed.contains(VALUE), "{listed}");
    }
    // etcd holds it sealed: the name, never the value.
    let stored = etcd
        .range("/wisp/sealed/registry/secrets/")
        .expect("etcd range");
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(stored[0].0, "/wisp/sealed/registry/secrets/openfaas-fn/db");
    assert!(
        !stored[0]
            .1
            .windows(VALUE.len())
            .any(|w| w == VALUE.as_bytes()),
        "the value is in etcd in the clear"
    );

    // Updated on the other node: every node's copy, and the function's
    // new instances, read the new value.
    nodes[1]
        .cli(&["secret", "update", "db", "--from-literal", NEW_VALUE])
        .expect_success();
    for wisp in &nodes {
        eventually(
            "the new value through each node",
            Duration::from_secs(5),
            async || read(wisp).await == NEW_VALUE,
        )
        .await;
    }
    // Two nodes cannot both make one name.
    let twice = nodes[1]
        .cli(&["secret", "create", "db", "--from-literal", "x"])
        .expect_failure();
    assert!(twice.contains("already exists"), "{twice}");

    // In use: refused on any node unless forced; then gone everywhere.
    let refused = nodes[0].cli(&["secret", "rm", "db"]).expect_failure();
    assert!(refused.contains("used by reader"), "{refused}");
    nodes[0]
        .cli(&["secret", "rm", "db", "--force"])
        .expect_success();
    eventually(
        "db gone on the other node",
        Duration::from_secs(5),
        async || {
            !nodes[1]
                .cli(&["secret", "ls"])
                .expect_success()
                .contains("db")
        },
    )
    .await;
    assert!(
        etcd.range("/wisp/sealed/registry/secrets/")
            .expect("range")
            .is_empty()
    );
    for wisp in &nodes {
        assert!(!wisp.log().contains(VALUE) && !wisp.log().contains(NEW_VALUE));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn namespaces_and_their_tokens_work_on_every_node() {
    use crate::namespaces::{call_as, cli_as};
    let etcd = TestEtcd::shared();
    let nodes = [node(etcd, "tenants", "t1"), node(etcd, "tenants", "t2")];
    for wisp in &nodes {
        eventually("both listed", Duration::from_secs(5), async || {
            members(wisp).await.len() == 2
        })
        .await;
    }
    nodes[0]
        .cli(&["namespace", "create", "team"])
        .expect_success();
    let token = nodes[0]
        .cli(&["token", "create", "--namespace", "team"])
        .expect_success()
        .trim()
        .to_owned();
    // Made on one node, the token opens the other, in its namespace only.
    eventually("the token on t2", Duration::from_secs(5), async || {
        call_as(
            &nodes[1],
            &token,
            http::Method::GET,
            "/system/functions",
            "",
        )
        .await
        .0 == 200
    })
    .await;
    assert_eq!(
        nodes[1].cli(&["namespace", "ls"]).expect_success(),
        "openfaas-fn\nteam\n"
    );
    let out = cli_as(&nodes[1], &token, &["deploy", "app", artifacts::HELLO]).expect_success();
    assert!(out.contains("deployed app"), "{out}");
    for wisp in &nodes {
        eventually(
            "app.team through each node",
            Duration::from_secs(5),
            async || wisp.invoke("GET", "/function/app.team", "").await.status == 200,
        )
        .await;
    }
    let (status, _) = call_as(&nodes[0], &token, http::Method::GET, "/system/tokens", "").await;
    assert_eq!(status, 403, "a namespace token manages no tokens");
    // Two nodes cannot both make one namespace.
    let twice = nodes[1]
        .cli(&["namespace", "create", "team"])
        .expect_failure();
    assert!(twice.contains("already exists"), "{twice}");

    // Revoked on the other node: refused on both.
    let listed = nodes[1].cli(&["token", "ls"]).expect_success();
    let id = listed
        .lines()
        .find(|l| l.contains("team"))
        .and_then(|l| l.split_whitespace().next())
        .expect("the token listed on t2")
        .to_owned();
    nodes[1].cli(&["token", "rm", &id]).expect_success();
    for wisp in &nodes {
        eventually("the token refused", Duration::from_secs(5), async || {
            call_as(wisp, &token, http::Method::GET, "/system/functions", "")
                .await
                .0
                == 401
        })
        .await;
    }
    // An empty namespace deleted on one node is gone on the other.
    nodes[0]
        .cli(&["rm", "app", "--namespace", "team"])
        .expect_success();
    nodes[1].cli(&["namespace", "rm", "team"]).expect_success();
    eventually("team gone on t1", Duration::from_secs(5), async || {
        nodes[0].cli(&["namespace", "ls"]).expect_success() == "openfaas-fn\n"
    })
    .await;
    assert!(
        etcd.range("/wisp/tenants/registry/namespaces/")
            .expect("range")
            .is_empty()
    );
    assert!(
        etcd.range("/wisp/tenants/registry/tokens/")
            .expect("range")
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deploy_by_reference_is_pulled_by_every_node() {
    let registry = wisp_e2e::registry::TestRegistry::open();
    registry.push(
        std::path::Path::new(artifacts::PING_DOCKER_ARCHIVE),
        "cluster-ping:1",
    );
    let reference = registry.reference("cluster-ping:1");
    let etcd = TestEtcd::shared();
    let insecure = ["--insecure-registry", registry.host.as_str()];
    let nodes = [
        node_with(etcd, "pulling", "p1", &insecure),
        node_with(etcd, "pulling", "p2", &insecure),
    ];
    for wisp in &nodes {
        eventually("both listed", Duration::from_secs(5), async || {
            members(wisp).await.len() == 2
        })
        .await;
    }
    nodes[0]
        .cli(&["deploy", "ping", "--image", &reference])
        .expect_success();
    let digest = nodes[0]
        .client
        .function("ping")
        .await
        .expect("ping on p1")
        .image_digest
        .expect("the pinned digest");
    for wisp in &nodes {
        eventually(
            "ping pulled on each node",
            Duration::from_secs(30),
            async || wisp.client.function("ping").await.is_ok(),
        )
        .await;
        let status = wisp.client.function("ping").await.expect("ping");
        assert_eq!(status.image_digest.as_deref(), Some(digest.as_str()));
        // Marked as forwarded: it runs on the node it is sent to.
        let mut here = http::HeaderMap::new();
        here.insert("x-wisp-forwarded", http::HeaderValue::from_static("test"));
        let answer = wisp
            .client
            .call(
                http::Method::GET,
                "/function/ping/ping",
                here,
                bytes::Bytes::new(),
            )
            .await
            .expect("ping");
        assert_eq!(answer.status, 200, "{}", answer.text());
        assert_eq!(answer.text().trim(), "pong");
    }
}

/// The instances `wisp` has of `function`, in every state.
async fn instances(wisp: &Wisp, function: &str) -> u64 {
    let label = format!("function_name=\"{function}\"");
    wisp.metrics()
        .await
        .lines()
        .filter(|l| l.starts_with("wisp_instances{") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test(flavor = "multi_thread")]
async fn min_instances_are_kept_warm_by_the_home_alone_and_move_with_it() {
    let etcd = TestEtcd::shared();
    let mut nodes = vec![node(etcd, "warm", "w1"), node(etcd, "warm", "w2")];
    for wisp in &nodes {
        eventually("both listed", Duration::from_secs(5), async || {
            members(wisp).await.len() == 2
        })
        .await;
    }
    nodes[0]
        .deploy_with("hello", artifacts::HELLO, |d| {
            d.scaling.min_instances = Some(1);
        })
        .await
        .unwrap();
    for wisp in &nodes {
        eventually("hello on both nodes", Duration::from_secs(5), async || {
            wisp.client.function("hello").await.is_ok()
        })
        .await;
    }
    // One warm instance in the cluster, on the home.
    eventually("one instance in all", Duration::from_secs(5), async || {
        instances(&nodes[0], "hello").await + instances(&nodes[1], "hello").await == 1
    })
    .await;
    let home = usize::from(instances(&nodes[1], "hello").await == 1);
    let other = 1 - home;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(instances(&nodes[other], "hello").await, 0);

    // The home dies: the other node warms it.
    nodes[home].kill();
    eventually(
        "the survivor to warm hello",
        Duration::from_secs(8),
        async || instances(&nodes[other], "hello").await == 1,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn revisions_are_one_history_on_every_node_and_roll_back_anywhere() {
    let etcd = TestEtcd::shared();
    let keep = ["--revision-history", "3"];
    let first = [
        node_with(etcd, "history", "h1", &keep),
        node_with(etcd, "history", "h2", &keep),
    ];
    for wisp in &first {
        eventually("both listed", Duration::from_secs(5), async || {
            members(wisp).await.len() == 2
        })
        .await;
    }
    // Revisions 1 (hello) and 2 (misbehave), from different nodes.
    first[0].deploy("app", artifacts::HELLO).await;
    eventually("revision 1 on h2", Duration::from_secs(5), async || {
        first[1]
            .client
            .function("app")
            .await
            .is_ok_and(|f| f.revision == Some(1))
    })
    .await;
    first[1].deploy("app", artifacts::MISBEHAVE).await;
    let late = node_with(etcd, "history", "h3", &keep);
    let numbers = |history: &str| -> Vec<String> {
        history
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
            .collect()
    };
    // A node that joined after both deploys lists both.
    eventually(
        "the whole history on h3",
        Duration::from_secs(5),
        async || {
            late.cli(&["history", "app"])
                .success
                .then(|| numbers(&late.cli(&["history", "app"]).stdout))
                == Some(vec!["1".to_owned(), "2".to_owned()])
        },
    )
    .await;
    // It rolls back to revision 1, whose code it never had (a peer gives
    // it), and that is revision 3 everywhere.
    let out = late.cli(&["rollback", "app", "--to", "1"]).expect_success();
    assert!(out.contains("deployed as revision 3"), "{out}");
    for wisp in first.iter().chain([&late]) {
        eventually(
            "revision 3 everywhere",
            Duration::from_secs(5),
            async || {
                wisp.invoke("GET", "/function/app", "")
                    .await
                    .text()
                    .contains("Hello")
                    && wisp
                        .client
                        .function("app")
                        .await
                        .is_ok_and(|f| f.revision == Some(3))
            },
        )
        .await;
    }
    // Two more: three kept (3, 4, 5), on every node and in etcd.
    first[0].deploy("app", artifacts::HELLO).await;
    first[1].deploy("app", artifacts::HELLO).await;
    let kept = vec!["3".to_owned(), "4".to_owned(), "5".to_owned()];
    for wisp in first.iter().chain([&late]) {
        eventually(
            "3, 4, 5 kept everywhere",
            Duration::from_secs(5),
            async || numbers(&wisp.cli(&["history", "app"]).stdout) == kept,
        )
        .await;
    }
    let stored = etcd
        .range("/wisp/history/registry/revisions/app/")
        .expect("etcd range");
    assert_eq!(
        stored.len(),
        3,
        "{:?}",
        stored.iter().map(|s| &s.0).collect::<Vec<_>>()
    );
    // A delete takes the history with it.
    late.cli(&["rm", "app"]).expect_success();
    assert!(
        etcd.range("/wisp/history/registry/revisions/")
            .expect("etcd range")
            .is_empty()
    );
}

/// Runs `script` under `sh -e` in `dir`.
fn sh(dir: &std::path::Path, script: &str) {
    let out = std::process::Command::new("sh")
        .args(["-ec", script])
        .current_dir(dir)
        .output()
        .expect("run sh");
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_reaches_etcd_over_tls_with_a_client_certificate_and_a_user() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path();
    // A CA, a server certificate for 127.0.0.1 and a client certificate.
    std::fs::write(
        path.join("server.ext"),
        // etcd 3.4 also dials itself with it (its JSON gateway).
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n",
    )
    .unwrap();
    std::fs::write(path.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    sh(
        path,
        "ec='-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes'
         openssl req -x509 $ec -keyout ca.key -out ca.pem -days 2 -subj /CN=wisp-test-ca 2>/dev/null
         for who in server client; do
           openssl req $ec -keyout $who.key -out $who.csr -subj /CN=$who 2>/dev/null
           openssl x509 -req -in $who.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
             -out $who.pem -days 2 -extfile $who.ext 2>/dev/null
         done",
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let peer = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("https://127.0.0.1:{port}");
    // Under a shell that kills it when the test binary's end of its stdin
    // closes (however the test ends).
    let mut etcd = std::process::Command::new("sh")
        .args([
            "-c",
            r#"etcd "$@" & e=$!; read _; kill -9 $e; wait $e"#,
            "sh",
        ])
        .current_dir(path)
        .args(["--name", "tls", "--data-dir", "data"])
        .args([
            "--listen-client-urls",
            &url,
            "--advertise-client-urls",
            &url,
        ])
        .arg("--listen-peer-urls")
        .arg(format!("http://127.0.0.1:{peer}"))
        .arg("--initial-advertise-peer-urls")
        .arg(format!("http://127.0.0.1:{peer}"))
        .arg("--initial-cluster")
        .arg(format!("tls=http://127.0.0.1:{peer}"))
        .args(["--cert-file", "server.pem", "--key-file", "server.key"])
        .args(["--trusted-ca-file", "ca.pem", "--client-cert-auth"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start etcd");
    let curl = |api: &str, body: &str| {
        std::process::Command::new("curl")
            .current_dir(path)
            .args([
                "-fsS",
                "-m",
                "2",
                "--cacert",
                "ca.pem",
                "--cert",
                "client.pem",
            ])
            .args(["--key", "client.key", "-X", "POST", "-d", body])
            .arg(format!("{url}/v3/{api}"))
            .output()
            .is_ok_and(|o| o.status.success())
    };
    eventually("etcd over TLS", Duration::from_secs(10), async || {
        curl("kv/range", r#"{"key":"AA=="}"#)
    })
    .await;
    // etcd's own authentication: a root user, then auth on.
    assert!(curl(
        "auth/user/add",
        r#"{"name":"root","password":"pw-root"}"#
    ));
    assert!(curl("auth/user/grant", r#"{"user":"root","role":"root"}"#));
    assert!(curl("auth/enable", "{}"));

    let tls = |builder: wisp_e2e::WispBuilder| {
        builder
            .arg("--token-file")
            .arg(&token_file().display().to_string())
            .arg("--etcd")
            .arg(&url)
            .arg("--etcd-ca")
            .arg(&path.join("ca.pem").display().to_string())
            .arg("--node-name")
            .arg("secure")
            .arg("--lease-ttl")
            .arg("2s")
    };
    let with_cert = |builder: wisp_e2e::WispBuilder| {
        tls(builder)
            .arg("--etcd-cert")
            .arg(&path.join("client.pem").display().to_string())
            .arg("--etcd-key")
            .arg(&path.join("client.key").display().to_string())
    };
    // Without a client certificate, or with a wrong password: refused at
    // start, saying why.
    let Err(refused) = tls(Wisp::builder())
        .arg("--etcd-user")
        .arg("root")
        .env("WISP_ETCD_PASSWORD", "pw-root")
        .start()
    else {
        panic!("a node joined without a client certificate");
    };
    assert!(refused.to_string().contains("etcd"), "{refused}");
    let Err(refused) = with_cert(Wisp::builder())
        .arg("--etcd-user")
        .arg("root")
        .env("WISP_ETCD_PASSWORD", "wrong")
        .start()
    else {
        panic!("a node joined with a wrong etcd password");
    };
    assert!(refused.to_string().contains("etcd"), "{refused}");
    assert!(!refused.to_string().contains("wrong"), "{refused}");

    let wisp = with_cert(Wisp::builder())
        .arg("--etcd-user")
        .arg("root")
        .env("WISP_ETCD_PASSWORD", "pw-root")
        .start()
        .expect("a node over TLS with its certificate and user");
    assert_eq!(members(&wisp).await, ["secure"]);
    wisp.deploy("hello", artifacts::HELLO).await;
    assert_eq!(wisp.invoke("GET", "/function/hello", "").await.status, 200);
    drop(wisp);
    drop(etcd.stdin.take());
    let _ = etcd.wait();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_member_restarted_while_etcd_is_down_serves_its_last_view_and_joins_later() {
    // Its own etcd: this test stops every member.
    let etcd = TestEtcd::start().expect("start etcd");
    let dir = tempfile::tempdir().expect("data dir");
    let in_cluster = |builder: wisp_e2e::WispBuilder, name: &str| {
        builder
            .arg("--token-file")
            .arg(&token_file().display().to_string())
            .arg("--etcd")
            .arg(&etcd.endpoints())
            .arg("--cluster-name")
            .arg("restarting")
            .arg("--node-name")
            .arg(name)
            .arg("--lease-ttl")
            .arg("2s")
            .start()
    };
    let mut member = in_cluster(Wisp::builder().data_dir(dir.path()), "r1").expect("r1");
    member.deploy("hello", artifacts::HELLO).await;
    member.kill();
    for i in 0..3 {
        etcd.stop_member(i);
    }
    // A node that never joined needs etcd to start.
    assert!(in_cluster(Wisp::builder(), "fresh").is_err());
    // A member starts from its last view, and changes nothing.
    let member = in_cluster(Wisp::builder().data_dir(dir.path()), "r1")
        .expect("a member starts while etcd is down");
    let answer = member.invoke("GET", "/function/hello", "").await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let refused = member
        .cli(&["scale", "hello", "--max", "4"])
        .expect_failure();
    assert!(refused.contains("out of reach"), "{refused}");

    for i in 0..3 {
        etcd.start_member(i).expect("restart member");
    }
    etcd.wait_healthy(Duration::from_secs(20))
        .expect("etcd healthy again");
    eventually("r1 to join", Duration::from_secs(15), async || {
        member
            .client
            .nodes()
            .await
            .is_ok_and(|view| view.cluster.as_deref() == Some("restarting"))
    })
    .await;
    eventually(
        "a change to go through",
        Duration::from_secs(10),
        async || member.cli(&["scale", "hello", "--max", "4"]).success,
    )
    .await;
    assert_eq!(
        member.invoke("GET", "/function/hello", "").await.status,
        200
    );
}
