//! Cluster mode: wisp nodes that share one etcd (`wisp serve --etcd …`).
//!
//! What is built so far is membership. Each node keeps a key
//! `/wisp/<cluster>/nodes/<node>` on an etcd lease of `--lease-ttl`
//! (default 10 s), holding its address, version, CPUs and load
//! ([`NodeRecord`]), renewed at a third of the TTL and rewritten then when
//! its load changed. A node that dies stops renewing and its key expires
//! with the lease; one that stops cleanly revokes its lease and drops out
//! at once. Every node follows the member list from a snapshot at etcd
//! revision R and a watch from R+1, and starts over from a new snapshot
//! when the watch breaks or its start was compacted away; with etcd out of
//! reach it keeps the last list it saw. [`ring`] ranks the members for a
//! function key (rendezvous hashing).
//!
//! The functions' registry of record is in etcd ([`functions`]), and so
//! are secrets ([`secrets`]), namespaces and their tokens ([`records`])
//! and asynchronous calls ([`calls`]); invocations go to their function's
//! home node ([`forward`]), which also keeps the function's `--min`.
//! Requests to etcd that a join or a client's write waits on are retried
//! across its members ([`Cluster::persist`]).

pub mod calls;
pub mod forward;
pub mod functions;
pub mod records;
pub mod ring;
pub mod secrets;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use etcd_client::{
    Certificate, Client, ConnectOptions, EventType, GetOptions, Identity, PutOptions, TlsOptions,
    Txn, TxnResponse, WatchOptions,
};
use serde::{Deserialize, Serialize};

/// How a node reaches etcd and presents itself to the other nodes.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// etcd client URLs (`http://h1:2379`, `https://…`).
    pub endpoints: Vec<String>,
    /// Keys live under `/wisp/<name>/`: clusters may share one etcd.
    pub name: String,
    /// This node's name, unique in the cluster.
    pub node: String,
    /// The base URL other nodes reach this node's gateway at.
    pub advertise: String,
    /// A dead node drops out this long after its last renewal.
    pub lease_ttl: Duration,
    /// TLS to etcd: a CA to trust, and a client certificate and key.
    pub ca: Option<std::path::PathBuf>,
    pub cert: Option<std::path::PathBuf>,
    pub key: Option<std::path::PathBuf>,
    /// etcd's own authentication (user, password).
    pub user: Option<(String, String)>,
}

/// What a node tells the others about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeRecord {
    pub name: String,
    /// Base URL of its gateway.
    pub address: String,
    pub version: String,
    pub cpus: usize,
    /// Unix seconds it joined at.
    pub started: u64,
    /// Its load at its last renewal.
    pub load: NodeLoad,
}

/// A node's load, as its last renewal reported it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeLoad {
    /// Function requests in flight.
    pub in_flight: usize,
    /// Running instances of all its functions.
    pub instances: usize,
    /// Functions it has pools for.
    pub functions: usize,
}

/// Reads this node's load when its record is renewed.
pub type LoadFn = Arc<dyn Fn() -> NodeLoad + Send + Sync>;

/// This node's membership and its view of the others.
pub struct Cluster {
    config: ClusterConfig,
    client: Client,
    me: RwLock<NodeRecord>,
    members: RwLock<BTreeMap<String, NodeRecord>>,
    /// Counts the changes to the set of members (not their records'
    /// updates): what moves functions' homes.
    moved: tokio::sync::watch::Sender<u64>,
    /// Whether the last exchange with etcd succeeded.
    reachable: AtomicBool,
    lease: std::sync::Mutex<Option<i64>>,
    /// The etcd revision each function's key was at when this node last
    /// saw it: a write holds only if it still is.
    seen: std::sync::Mutex<std::collections::HashMap<String, i64>>,
}

/// Why a node could not join its cluster.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("reading {path}: {source}")]
    Tls {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot reach etcd at {endpoints}: {source}")]
    Connect {
        endpoints: String,
        source: etcd_client::Error,
    },
    #[error("registering node {node} in etcd: {source}")]
    Register {
        node: String,
        source: etcd_client::Error,
    },
    #[error(
        "node {node} is already a live member of cluster {cluster} (at {address}); give each node its own --node-name"
    )]
    Taken {
        node: String,
        cluster: String,
        address: String,
    },
}

impl JoinError {
    /// Whether etcd could not be reached (rather than refusing this node).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, JoinError::Connect { .. } | JoinError::Register { .. })
    }
}

impl Cluster {
    /// Connects to etcd, registers this node on a lease and starts following
    /// the member list; `load` is read at each renewal.
    pub async fn join(config: ClusterConfig, load: LoadFn) -> Result<Arc<Cluster>, JoinError> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_timeout(Duration::from_secs(5))
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3))
            .with_keep_alive_while_idle(true);
        if let Some((user, password)) = &config.user {
            options = options.with_user(user.clone(), password.clone());
        }
        if config.ca.is_some() || config.cert.is_some() {
            let read = |path: &std::path::Path| {
                std::fs::read(path).map_err(|source| JoinError::Tls {
                    path: path.display().to_string(),
                    source,
                })
            };
            let mut tls = TlsOptions::new();
            if let Some(ca) = &config.ca {
                tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
            }
            if let (Some(cert), Some(key)) = (&config.cert, &config.key) {
                tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            options = options.with_tls(tls);
        }
        let client = Client::connect(&config.endpoints, Some(options))
            .await
            .map_err(|source| JoinError::Connect {
                endpoints: config.endpoints.join(","),
                source,
            })?;
        let me = NodeRecord {
            name: config.node.clone(),
            address: config.advertise.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            cpus: std::thread::available_parallelism().map_or(1, usize::from),
            started: crate::registry::now_secs(),
            load: load(),
        };
        let cluster = Arc::new(Cluster {
            config,
            client,
            me: RwLock::new(me),
            members: RwLock::new(BTreeMap::new()),
            moved: tokio::sync::watch::Sender::new(0),
            reachable: AtomicBool::new(false),
            lease: std::sync::Mutex::new(None),
            seen: std::sync::Mutex::default(),
        });
        // A second node of the same name would steal the first one's
        // functions and drop it from the list at its own exit. The name
        // held at another address may be this node's own previous run,
        // killed before its lease expired (a pod restarted with a new IP):
        // wait out one lease before refusing.
        let key = cluster.node_key(&cluster.config.node);
        let patience = tokio::time::Instant::now() + cluster.config.lease_ttl + RETRY_PAUSE * 10;
        let refused = |source| JoinError::Register {
            node: cluster.config.node.clone(),
            source,
        };
        loop {
            let existing = cluster
                .persist(|mut client| {
                    let key = key.clone();
                    async move { client.get(key, None).await }
                })
                .await
                .map_err(refused)?;
            let Some(record) = existing
                .kvs()
                .first()
                .and_then(|kv| serde_json::from_slice::<NodeRecord>(kv.value()).ok())
                .filter(|record| record.address != cluster.config.advertise)
            else {
                break;
            };
            if tokio::time::Instant::now() >= patience {
                return Err(JoinError::Taken {
                    node: cluster.config.node.clone(),
                    cluster: cluster.config.name.clone(),
                    address: record.address,
                });
            }
            tracing::info!(node = %cluster.config.node, held_at = %record.address, "the node name is held; waiting for that lease to expire");
            tokio::time::sleep(RETRY_PAUSE * 5).await;
        }
        cluster.register().await.map_err(refused)?;
        // The members as they are now, before anything routes or fetches
        // from a peer; the follower keeps them current from here.
        let prefix = format!("{}nodes/", cluster.prefix());
        if let Ok(snapshot) = cluster
            .persist(|mut client| {
                let prefix = prefix.clone();
                async move {
                    client
                        .get(prefix, Some(GetOptions::new().with_prefix()))
                        .await
                }
            })
            .await
        {
            *cluster
                .members
                .write()
                .unwrap_or_else(PoisonError::into_inner) = snapshot
                .kvs()
                .iter()
                .filter_map(|kv| serde_json::from_slice::<NodeRecord>(kv.value()).ok())
                .map(|record| (record.name.clone(), record))
                .collect();
        }
        tokio::spawn(renew(Arc::downgrade(&cluster), load));
        tokio::spawn(follow_members(Arc::downgrade(&cluster)));
        tracing::info!(
            cluster = %cluster.config.name,
            node = %cluster.config.node,
            address = %cluster.config.advertise,
            etcd = %cluster.config.endpoints.join(","),
            ttl = ?cluster.config.lease_ttl,
            "joined the cluster"
        );
        Ok(cluster)
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.config.node
    }

    /// Whether the last exchange with etcd succeeded.
    pub fn reachable(&self) -> bool {
        self.reachable.load(Ordering::Relaxed)
    }

    /// The live members as last seen, this node among them.
    pub fn members(&self) -> Vec<NodeRecord> {
        let mut members: BTreeMap<String, NodeRecord> = self
            .members
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        // This node serves whatever etcd says of it (its key may have
        // expired while etcd was out of reach).
        let me = self
            .me
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        members.insert(me.name.clone(), me);
        members.into_values().collect()
    }

    /// The members in the order requests for the function `key` try them.
    pub fn rank(&self, key: &str) -> Vec<NodeRecord> {
        let members = self.members();
        let order = ring::rank(key, members.iter().map(|m| m.name.as_str()));
        let order: Vec<String> = order.into_iter().map(str::to_owned).collect();
        let mut by_name: BTreeMap<String, NodeRecord> =
            members.into_iter().map(|m| (m.name.clone(), m)).collect();
        order
            .into_iter()
            .filter_map(|name| by_name.remove(&name))
            .collect()
    }

    /// Told each time a node joins or leaves (functions' homes move).
    pub fn homes_moved(&self) -> tokio::sync::watch::Receiver<u64> {
        self.moved.subscribe()
    }

    /// Whether this node is the home of function `key`: with no view of
    /// the members yet, it counts as its own home.
    pub fn is_home(&self, key: &str) -> bool {
        self.rank(key)
            .first()
            .is_none_or(|home| home.name == self.node())
    }

    fn prefix(&self) -> String {
        format!("/wisp/{}/", self.config.name)
    }

    fn node_key(&self, node: &str) -> String {
        format!("{}nodes/{node}", self.prefix())
    }

    fn record(&self) -> Vec<u8> {
        let me = self.me.read().unwrap_or_else(PoisonError::into_inner);
        serde_json::to_vec(&*me).unwrap_or_default()
    }

    /// A new lease and this node's key on it.
    async fn register(&self) -> Result<i64, etcd_client::Error> {
        let ttl = i64::try_from(self.config.lease_ttl.as_secs().max(1)).unwrap_or(10);
        let lease = self
            .persist(|mut client| async move { client.lease_grant(ttl, None).await })
            .await?
            .id();
        let key = self.node_key(&self.config.node);
        let record = self.record();
        self.persist(|mut client| {
            let (key, record) = (key.clone(), record.clone());
            async move {
                client
                    .put(key, record, Some(PutOptions::new().with_lease(lease)))
                    .await
            }
        })
        .await?;
        *self.lease.lock().unwrap_or_else(PoisonError::into_inner) = Some(lease);
        self.reachable.store(true, Ordering::Relaxed);
        Ok(lease)
    }

    /// Runs one etcd request until it succeeds or `PATIENCE` has passed:
    /// the client's balancer may send a request to a member that is down,
    /// and moves off it only after a failure there, so a single try (or a
    /// few quick ones) fails now and then while one member of three is down.
    /// Every request a join or a client's write makes goes through here.
    /// A request that reached etcd but whose answer was lost is sent again,
    /// so a write under compares may then find its own earlier commit and
    /// answer "changed meanwhile".
    async fn persist<T, F, Fut>(&self, mut call: F) -> Result<T, etcd_client::Error>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let error = match tokio::time::timeout(left, call(self.client.clone())).await {
                Ok(Ok(answer)) => return Ok(answer),
                Ok(Err(e)) => e,
                Err(_) => etcd_client::Error::InvalidArgs(format!(
                    "no answer from etcd within {PATIENCE:?}"
                )),
            };
            if tokio::time::Instant::now() + RETRY_PAUSE >= deadline {
                return Err(error);
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    /// Commits `txn` through [`Cluster::persist`].
    async fn persist_txn(&self, txn: Txn) -> Result<TxnResponse, etcd_client::Error> {
        self.persist(|mut client| {
            let txn = txn.clone();
            async move { client.txn(txn).await }
        })
        .await
    }

    /// Leaves the cluster at once (a clean shutdown): the lease is revoked,
    /// so the other nodes move this node's functions now rather than when
    /// the lease would have expired.
    pub async fn leave(&self) {
        let lease = self
            .lease
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(lease) = lease {
            let mut client = self.client.clone();
            match tokio::time::timeout(Duration::from_secs(2), client.lease_revoke(lease)).await {
                Ok(Ok(_)) => tracing::info!(node = %self.config.node, "left the cluster"),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "leaving the cluster: the lease expires instead")
                }
                Err(_) => {
                    tracing::warn!("leaving the cluster timed out: the lease expires instead")
                }
            }
        }
    }
}

/// Keeps this node's lease alive and its record current; registers again
/// (a new lease) after losing etcd for longer than the lease.
async fn renew(cluster: std::sync::Weak<Cluster>, load: LoadFn) {
    let Some(ttl) = cluster.upgrade().map(|c| c.config.lease_ttl) else {
        return;
    };
    let every = (ttl / 3).max(Duration::from_millis(500));
    loop {
        tokio::time::sleep(every).await;
        let Some(cluster) = cluster.upgrade() else {
            return;
        };
        let lease = *cluster.lease.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(lease) = lease else {
            // Left the cluster.
            return;
        };
        let now = load();
        let changed = {
            let mut me = cluster.me.write().unwrap_or_else(PoisonError::into_inner);
            let changed = me.load != now;
            me.load = now;
            changed
        };
        // A member that is down fails the request the client's balancer
        // sent it; the next try goes to another.
        let mut renewed = Err(etcd_client::Error::InvalidArgs("not tried".into()));
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            match tokio::time::timeout(every, renew_once(&cluster, lease, changed)).await {
                Ok(Ok(alive)) => {
                    renewed = Ok(alive);
                    break;
                }
                Ok(Err(e)) => renewed = Err(e),
                Err(_) => {
                    renewed = Err(etcd_client::Error::InvalidArgs(
                        "renewing the lease timed out".into(),
                    ))
                }
            }
        }
        match renewed {
            Ok(true) => {
                if !cluster.reachable.swap(true, Ordering::Relaxed) {
                    tracing::info!("etcd is reachable again");
                }
            }
            Ok(false) => {
                // The lease expired (etcd was out of reach for longer than
                // it): join again under a new one.
                tracing::warn!(node = %cluster.config.node, "this node's lease expired; registering again");
                if let Err(e) = cluster.register().await {
                    tracing::warn!(error = %e, "registering again failed; retrying");
                }
            }
            Err(e) => cluster.unreachable(&e.to_string()),
        }
    }
}

/// Tries of a lease renewal, and failed rounds of a follower, before etcd
/// counts as out of reach: the client's balancer may send a request to a
/// member that is down, and moves off it only after a failure there.
/// (Requests a client waits on have [`PATIENCE`] instead.)
const ATTEMPTS: usize = 5;
/// The pause between two tries.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// How long [`Cluster::persist`] keeps trying one request: a join's, a
/// registration's, or a write a client waits on.
const PATIENCE: Duration = Duration::from_secs(5);

/// One renewal of `lease`, and this node's record rewritten if its load
/// `changed`; whether the lease is still alive.
async fn renew_once(
    cluster: &Cluster,
    lease: i64,
    changed: bool,
) -> Result<bool, etcd_client::Error> {
    let mut client = cluster.client.clone();
    let (mut keeper, mut stream) = client.lease_keep_alive(lease).await?;
    keeper.keep_alive().await?;
    let alive = matches!(stream.message().await?, Some(r) if r.ttl() > 0);
    if alive && changed {
        client
            .put(
                cluster.node_key(&cluster.config.node),
                cluster.record(),
                Some(PutOptions::new().with_lease(lease)),
            )
            .await?;
    }
    Ok(alive)
}

impl Cluster {
    fn unreachable(&self, why: &str) {
        if self.reachable.swap(false, Ordering::Relaxed) {
            tracing::warn!(reason = %why, "etcd is out of reach; serving from the last view");
        }
    }
}

/// Follows `/wisp/<cluster>/nodes/`: a snapshot, then a watch from the
/// revision after it; a broken or compacted watch starts over.
async fn follow_members(cluster: std::sync::Weak<Cluster>) {
    let mut failures = 0;
    loop {
        let Some(strong) = cluster.upgrade() else {
            return;
        };
        let result = members_round(&strong).await;
        if strong
            .lease
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_none()
        {
            return;
        }
        // A watch that ran and broke starts over at once; a member that is
        // down may fail a try or two before the balancer finds another.
        match result {
            Err(e) if failures + 1 >= ATTEMPTS => strong.unreachable(&e),
            Err(_) => failures += 1,
            Ok(()) => failures = 0,
        }
        drop(strong);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One snapshot and the watch that follows it, until it breaks.
async fn members_round(cluster: &Cluster) -> Result<(), String> {
    let prefix = format!("{}nodes/", cluster.prefix());
    let mut client = cluster.client.clone();
    let snapshot = client
        .get(prefix.as_str(), Some(GetOptions::new().with_prefix()))
        .await
        .map_err(|e| e.to_string())?;
    let revision = snapshot.header().map_or(0, |h| h.revision());
    let mut members = BTreeMap::new();
    for kv in snapshot.kvs() {
        if let Ok(record) = serde_json::from_slice::<NodeRecord>(kv.value()) {
            members.insert(record.name.clone(), record);
        }
    }
    let previous = std::mem::replace(
        &mut *cluster
            .members
            .write()
            .unwrap_or_else(PoisonError::into_inner),
        members,
    );
    if !previous.keys().eq(cluster
        .members
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .keys())
    {
        cluster.moved.send_modify(|n| *n += 1);
    }
    let mut stream = client
        .watch(
            prefix.as_str(),
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(revision + 1),
            ),
        )
        .await
        .map_err(|e| e.to_string())?;
    loop {
        let Some(response) = stream.message().await.map_err(|e| e.to_string())? else {
            // Ended by the server (a member stopping): start over.
            return Ok(());
        };
        if response.canceled() || response.compact_revision() > 0 {
            return Err(format!(
                "the watch was cancelled ({}); reading the members again",
                response.cancel_reason()
            ));
        }
        let mut members = cluster
            .members
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            let name = String::from_utf8_lossy(kv.key())
                .trim_start_matches(prefix.as_str())
                .to_owned();
            match event.event_type() {
                EventType::Put => {
                    if let Ok(record) = serde_json::from_slice::<NodeRecord>(kv.value()) {
                        if !members.contains_key(&name) {
                            tracing::info!(node = %name, address = %record.address, "a node joined");
                            cluster.moved.send_modify(|n| *n += 1);
                        }
                        members.insert(name, record);
                    }
                }
                EventType::Delete => {
                    if members.remove(&name).is_some() {
                        tracing::info!(node = %name, "a node left");
                        cluster.moved.send_modify(|n| *n += 1);
                    }
                }
            }
        }
    }
}

/// `GET /system/nodes`: the cluster's live members (one node alone lists
/// itself).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodesView {
    /// The cluster's name; `None` for a node on its own.
    pub cluster: Option<String>,
    /// Where the registry of record lives: `etcd` or `local`.
    pub store: String,
    /// Whether this node reached etcd at its last try (always true alone).
    pub reachable: bool,
    /// The node that answered.
    pub this_node: String,
    pub nodes: Vec<NodeRecord>,
}

impl crate::server::App {
    /// This node's load: requests in flight, instances, functions.
    pub(crate) fn load(&self) -> NodeLoad {
        let mut load = NodeLoad::default();
        for function in self.functions.iter() {
            load.in_flight += function.metrics.in_flight();
            load.instances += function.pool.instances();
            load.functions += 1;
        }
        load
    }

    pub(crate) fn nodes(&self) -> NodesView {
        match self.cluster.get() {
            Some(cluster) => NodesView {
                cluster: Some(cluster.name().to_owned()),
                store: "etcd".into(),
                reachable: cluster.reachable(),
                this_node: cluster.node().to_owned(),
                nodes: cluster.members(),
            },
            None => {
                let name = crate::cluster::local_node_name();
                NodesView {
                    cluster: None,
                    store: "local".into(),
                    reachable: true,
                    this_node: name.clone(),
                    nodes: vec![NodeRecord {
                        name,
                        address: String::new(),
                        version: env!("CARGO_PKG_VERSION").to_owned(),
                        cpus: std::thread::available_parallelism().map_or(1, usize::from),
                        started: 0,
                        load: self.load(),
                    }],
                }
            }
        }
    }
}

/// This host's name (`/proc/sys/kernel/hostname`), the default node name.
pub fn local_node_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_ascii_lowercase())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "wisp".to_owned())
}
