//! Cluster membership on a real 3-member etcd: three `wisp serve --etcd`
//! nodes see each other; a node killed with SIGKILL drops out when its
//! lease expires, one stopped cleanly at once; a second node under a live
//! node's name is refused; with one etcd member down nothing changes.

use std::time::Duration;

use wisp_e2e::etcd::TestEtcd;
use wisp_e2e::{Wisp, eventually};

/// A node of `cluster` named `name`, on the shared etcd, with a 2 s lease.
fn node(etcd: &TestEtcd, cluster: &str, name: &str) -> Wisp {
    Wisp::builder()
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
