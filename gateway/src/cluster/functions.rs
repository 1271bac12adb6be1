//! The functions' registry of record in etcd: `/wisp/<cluster>/functions/<key>`
//! holds each function's [`StoredFunction`] (spec, revision, scaling).
//!
//! A node writes there first — a deploy, a scaling change, a delete — in a
//! transaction that holds only if the key is still at the etcd revision
//! this node last saw (so two nodes deploying one name at once cannot both
//! number their deploy N: the second gets 409 and tries again), and then
//! applies the change to its own redb copy and pools as a node alone does.
//! Every node follows the prefix (snapshot at R, watch from R+1, a new
//! snapshot when the watch breaks or was compacted) and applies what other
//! nodes wrote: the artifact is fetched from a peer that has it (digest
//! verified) if this node lacks it, a container image is imported from it,
//! and the function's new version is made and routed to while the old one
//! drains — the same steps as a local deploy. With etcd out of reach,
//! writes answer 503 and the node serves what it last saw.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use etcd_client::{
    Compare, CompareOp, DeleteOptions, EventType, GetOptions, Txn, TxnOp, WatchOptions,
};
use futures::StreamExt as _;
use http_body_util::BodyExt as _;
use tokio::sync::mpsc;

use super::records::{Kind, Record};
use super::secrets::SealedSecret;
use super::{ATTEMPTS, Cluster};
use crate::registry::StoredFunction;
use crate::rescue::GatewayError;
use crate::server::App;
use wisp_runner::spec::Digest;

/// A change to the functions another node (or this one) made.
#[derive(Debug)]
pub enum Change {
    /// Everything etcd holds, after a (re)start of the watch: functions
    /// and secrets not in it were deleted meanwhile.
    Snapshot {
        functions: Vec<StoredFunction>,
        secrets: Vec<SealedSecret>,
        records: Vec<Record>,
        revisions: Vec<StoredFunction>,
    },
    Put(Box<StoredFunction>),
    Delete(String),
    SecretPut(SealedSecret),
    SecretDelete {
        namespace: String,
        name: String,
    },
    /// A function's revision recorded.
    Revision(Box<StoredFunction>),
    /// A function's revision dropped from its history.
    RevisionGone {
        key: String,
        revision: u64,
    },
    /// A namespace or token written (`json`) or deleted (`None`).
    Record {
        kind: Kind,
        id: String,
        json: Option<Vec<u8>>,
    },
}

impl Cluster {
    fn functions_prefix(&self) -> String {
        format!("{}functions/", self.registry_prefix())
    }

    fn revisions_prefix(&self) -> String {
        format!("{}revisions/", self.registry_prefix())
    }

    fn revision_path(&self, key: &str, revision: u64) -> String {
        format!("{}{key}/{revision:020}", self.revisions_prefix())
    }

    fn seen(&self, key: &str) -> i64 {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .copied()
            .unwrap_or(0)
    }

    /// Whether etcd held the function `key` when this node last looked.
    pub fn holds_function(&self, key: &str) -> bool {
        self.seen(key) > 0
    }

    /// Writes `stored` (a deploy or a scaling change) unless another node
    /// changed the function since this node saw it. A deploy (`history`:
    /// the revisions kept) also records its revision, in the same
    /// transaction, and drops the revisions past that many.
    pub async fn put_function(
        &self,
        stored: &StoredFunction,
        history: Option<usize>,
    ) -> Result<(), GatewayError> {
        let key = stored.spec.name.to_string();
        let json = serde_json::to_vec(stored)
            .map_err(|e| GatewayError::NotReady(format!("encoding {key}: {e}")))?;
        let path = format!("{}{key}", self.functions_prefix());
        let mut ops = vec![TxnOp::put(path.as_str(), json.clone(), None)];
        if let Some(keep) = history {
            ops.push(TxnOp::put(
                self.revision_path(&key, stored.revision),
                json,
                None,
            ));
            // Kept: the newest `keep`, this one included.
            let oldest_kept = stored.revision.saturating_sub(keep.max(1) as u64 - 1);
            if oldest_kept > 1 {
                ops.push(TxnOp::delete(
                    self.revision_path(&key, 0),
                    Some(DeleteOptions::new().with_range(self.revision_path(&key, oldest_kept))),
                ));
            }
        }
        let txn = Txn::new()
            .when([Compare::mod_revision(
                path.as_str(),
                CompareOp::Equal,
                self.seen(&key),
            )])
            .and_then(ops);
        self.commit(&key, txn).await
    }

    /// Deletes the function `key` unless another node changed it since this
    /// node saw it.
    pub async fn delete_function(&self, key: &str) -> Result<(), GatewayError> {
        let path = format!("{}{key}", self.functions_prefix());
        let txn = Txn::new()
            .when([Compare::mod_revision(
                path.as_str(),
                CompareOp::Equal,
                self.seen(key),
            )])
            .and_then([
                TxnOp::delete(path.as_str(), None),
                TxnOp::delete(
                    format!("{}{key}/", self.revisions_prefix()),
                    Some(DeleteOptions::new().with_prefix()),
                ),
            ]);
        self.commit(key, txn).await
    }

    async fn commit(&self, key: &str, txn: Txn) -> Result<(), GatewayError> {
        let answer = self.persist_txn(txn).await;
        match answer {
            Ok(response) if response.succeeded() => {
                let revision = response.header().map_or(0, |h| h.revision());
                self.seen
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(key.to_owned(), revision);
                self.reachable.store(true, Ordering::Relaxed);
                Ok(())
            }
            Ok(_) => Err(GatewayError::Conflict(format!(
                "function {key} was changed on another node meanwhile; try again"
            ))),
            Err(e) => {
                let e = e.to_string();
                self.unreachable(&e);
                Err(GatewayError::NotReady(format!(
                    "the cluster's store (etcd) is out of reach, so nothing can be changed now ({e}); this node serves what it last saw"
                )))
            }
        }
    }

    /// Follows the functions' prefix, sending what changes to `changes`.
    pub(crate) async fn follow_functions(self: Arc<Self>, changes: mpsc::UnboundedSender<Change>) {
        let mut failures = 0;
        loop {
            match self.functions_round(&changes).await {
                Err(e) if failures + 1 >= ATTEMPTS => {
                    self.unreachable(&e);
                    failures += 1;
                }
                Err(_) => failures += 1,
                Ok(()) => failures = 0,
            }
            if changes.is_closed() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn functions_round(&self, changes: &mpsc::UnboundedSender<Change>) -> Result<(), String> {
        let prefix = self.registry_prefix();
        let functions_prefix = self.functions_prefix();
        let mut client = self.client.clone();
        let snapshot = client
            .get(prefix.as_str(), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|e| e.to_string())?;
        let revision = snapshot.header().map_or(0, |h| h.revision());
        let mut functions = Vec::new();
        let mut secrets = Vec::new();
        let mut records = Vec::new();
        let mut revisions = Vec::new();
        let revisions_prefix = self.revisions_prefix();
        {
            let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
            let mut now = HashMap::new();
            for kv in snapshot.kvs() {
                let key = String::from_utf8_lossy(kv.key());
                if let Some(secret) = self.secret_of(&key, kv.value()) {
                    secrets.push(secret);
                    continue;
                }
                if let Some(record) = self.record_of(&key, kv.value()) {
                    records.push(record);
                    continue;
                }
                if key.starts_with(revisions_prefix.as_str()) {
                    match serde_json::from_slice::<StoredFunction>(kv.value()) {
                        Ok(stored) => revisions.push(stored),
                        Err(e) => {
                            tracing::warn!(%key, error = %e, "an unreadable revision in etcd; skipped")
                        }
                    }
                    continue;
                }
                if !key.starts_with(functions_prefix.as_str()) {
                    continue;
                }
                match serde_json::from_slice::<StoredFunction>(kv.value()) {
                    Ok(stored) => {
                        now.insert(stored.spec.name.to_string(), kv.mod_revision());
                        functions.push(stored);
                    }
                    Err(e) => {
                        tracing::warn!(%key, error = %e, "an unreadable function in etcd; skipped")
                    }
                }
            }
            *seen = now;
        }
        let snapshot = Change::Snapshot {
            functions,
            secrets,
            records,
            revisions,
        };
        if changes.send(snapshot).is_err() {
            return Ok(());
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
                return Ok(());
            };
            if response.canceled() || response.compact_revision() > 0 {
                return Err(format!(
                    "the registry's watch was cancelled ({}); reading it again",
                    response.cancel_reason()
                ));
            }
            for event in response.events() {
                let Some(kv) = event.kv() else { continue };
                let path = String::from_utf8_lossy(kv.key());
                let change = if let Some(secret) = self.secret_of(&path, kv.value()) {
                    match event.event_type() {
                        EventType::Put => Change::SecretPut(secret),
                        EventType::Delete => Change::SecretDelete {
                            namespace: secret.namespace,
                            name: secret.name,
                        },
                    }
                } else if let Some(record) = self.record_of(&path, kv.value()) {
                    Change::Record {
                        kind: record.kind,
                        id: record.id,
                        json: (event.event_type() == EventType::Put).then_some(record.json),
                    }
                } else if let Some(rest) = path.strip_prefix(revisions_prefix.as_str()) {
                    match event.event_type() {
                        EventType::Put => {
                            match serde_json::from_slice::<StoredFunction>(kv.value()) {
                                Ok(stored) => Change::Revision(Box::new(stored)),
                                Err(e) => {
                                    tracing::warn!(key = %path, error = %e, "an unreadable revision in etcd; skipped");
                                    continue;
                                }
                            }
                        }
                        EventType::Delete => {
                            let Some((key, revision)) = rest
                                .rsplit_once('/')
                                .and_then(|(k, r)| Some((k.to_owned(), r.parse::<u64>().ok()?)))
                            else {
                                continue;
                            };
                            Change::RevisionGone { key, revision }
                        }
                    }
                } else if let Some(key) = path.strip_prefix(functions_prefix.as_str()) {
                    let key = key.to_owned();
                    self.seen
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(key.clone(), kv.mod_revision());
                    match event.event_type() {
                        EventType::Put => {
                            match serde_json::from_slice::<StoredFunction>(kv.value()) {
                                Ok(stored) => Change::Put(Box::new(stored)),
                                Err(e) => {
                                    tracing::warn!(%key, error = %e, "an unreadable function in etcd; skipped");
                                    continue;
                                }
                            }
                        }
                        EventType::Delete => {
                            self.seen
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .insert(key.clone(), 0);
                            Change::Delete(key)
                        }
                    }
                } else {
                    continue;
                };
                if changes.send(change).is_err() {
                    return Ok(());
                }
            }
        }
    }
}

/// Whether `stored` runs a container image pulled from a registry: its
/// artifact is the image's manifest, in the image store (no archive to
/// import, none a peer could give).
fn pulled_image(stored: &StoredFunction) -> bool {
    stored.spec.source.is_some()
        && stored
            .spec
            .container
            .as_ref()
            .is_some_and(|c| c.image == stored.spec.artifact)
}

/// In a node's data dir once it has joined a cluster: the cluster's name.
/// A node without it (its first join) publishes the functions it has that
/// the cluster lacks; a node with it takes their absence as their deletion
/// while it was away.
pub const MEMBER_FILE: &str = "cluster-member";

impl App {
    /// Applies the functions' changes as the cluster's store reports them.
    pub(crate) async fn apply_changes(
        self: Arc<Self>,
        mut changes: mpsc::UnboundedReceiver<Change>,
        marker: std::path::PathBuf,
    ) {
        let Some(cluster) = self.cluster.get().cloned() else {
            return;
        };
        let mut joined =
            std::fs::read_to_string(&marker).is_ok_and(|name| name.trim() == cluster.name());
        while let Some(change) = changes.recv().await {
            match change {
                Change::Snapshot {
                    functions: all,
                    secrets,
                    records,
                    revisions,
                } => {
                    // Namespaces and secrets first: the functions are in
                    // them and read them.
                    self.apply_records_snapshot(&cluster, records, joined).await;
                    self.apply_secrets_snapshot(&cluster, secrets, joined).await;
                    let keys: std::collections::HashSet<String> =
                        all.iter().map(|s| s.spec.name.to_string()).collect();
                    let gone: Vec<Arc<crate::server::Function>> = self
                        .functions
                        .iter()
                        .filter(|f| !keys.contains(f.key()))
                        .map(|f| f.value().clone())
                        .collect();
                    for function in gone {
                        let key = function.stored.spec.name.to_string();
                        if joined {
                            self.apply_delete(&key).await;
                            continue;
                        }
                        // A node's first join: what it ran alone joins the cluster.
                        match cluster
                            .put_function(&function.stored, Some(self.revision_history))
                            .await
                        {
                            Ok(()) => {
                                tracing::info!(function = %key, "published to the cluster at this node's first join")
                            }
                            Err(e) => {
                                tracing::warn!(function = %key, error = %e, "could not publish to the cluster; it stays on this node")
                            }
                        }
                    }
                    if !joined {
                        match std::fs::write(&marker, cluster.name()) {
                            Ok(()) => joined = true,
                            Err(e) => {
                                tracing::warn!(path = %marker.display(), error = %e, "cannot record this node's membership")
                            }
                        }
                    }
                    self.apply_revisions_snapshot(revisions, joined);
                    for stored in all {
                        self.apply_put(stored).await;
                    }
                }
                Change::Put(stored) => self.apply_put(*stored).await,
                Change::Delete(key) => self.apply_delete(&key).await,
                Change::SecretPut(secret) => self.apply_secret(&cluster, &secret).await,
                Change::SecretDelete { namespace, name } => {
                    self.apply_secret_delete(&namespace, &name).await;
                }
                Change::Record { kind, id, json } => self.apply_record(kind, &id, json).await,
                Change::Revision(stored) => {
                    let name = stored.spec.name.clone();
                    if let Err(e) = self.registry.write(move |r| r.put_revision(&stored)).await {
                        tracing::warn!(function = %name, error = %e, "recording a revision from the cluster");
                    }
                }
                Change::RevisionGone { key, revision } => {
                    let gone = key.clone();
                    if let Err(e) = self
                        .registry
                        .write(move |r| r.remove_revision(&gone, revision))
                        .await
                    {
                        tracing::warn!(function = %key, error = %e, "dropping a revision the cluster dropped");
                    }
                }
            }
        }
    }

    /// The functions' histories as etcd holds them: recorded here; and,
    /// unless this is the node's first join, a revision this node keeps of
    /// a function etcd keeps revisions of, but not that one, was dropped
    /// while the node was away.
    fn apply_revisions_snapshot(&self, revisions: Vec<StoredFunction>, joined: bool) {
        let held: std::collections::HashSet<(String, u64)> = revisions
            .iter()
            .map(|r| (r.spec.name.to_string(), r.revision))
            .collect();
        let keys: std::collections::HashSet<&str> = held.iter().map(|(k, _)| k.as_str()).collect();
        if joined {
            for local in self.registry.all_revisions().unwrap_or_default() {
                let key = local.spec.name.to_string();
                if keys.contains(key.as_str()) && !held.contains(&(key.clone(), local.revision)) {
                    let _ = self.registry.remove_revision(&key, local.revision);
                }
            }
        }
        for stored in &revisions {
            if let Err(e) = self.registry.put_revision(stored) {
                tracing::warn!(function = %stored.spec.name, error = %e, "recording a revision from the cluster");
            }
        }
    }

    /// Applies another node's deploy or scaling change; one that cannot be
    /// applied now (its code not yet on a peer, a registry out of reach) is
    /// tried again, with back-off, until it is or a newer change replaces it.
    async fn apply_put(self: &Arc<Self>, stored: StoredFunction) {
        let key = stored.spec.name.to_string();
        self.wanted.insert(key.clone(), stored.clone());
        let Err(e) = self.replicate(stored.clone()).await else {
            return;
        };
        tracing::warn!(function = %key, error = %e, "could not apply another node's deploy yet; trying again");
        let app = self.clone();
        tokio::spawn(async move {
            let mut wait = Duration::from_millis(500);
            loop {
                tokio::time::sleep(wait).await;
                // A newer change, or a delete, is applied on its own.
                if app.wanted.get(&key).is_none_or(|w| *w != stored) {
                    return;
                }
                match app.replicate(stored.clone()).await {
                    Ok(()) => {
                        tracing::info!(function = %key, "applied another node's deploy");
                        return;
                    }
                    Err(e) => {
                        tracing::debug!(function = %key, error = %e, "another node's deploy still cannot be applied");
                    }
                }
                wait = (wait * 2).min(Duration::from_secs(30));
            }
        });
    }

    async fn replicate(&self, stored: StoredFunction) -> Result<(), GatewayError> {
        let key = stored.spec.name.to_string();
        if self.functions.get(&key).is_some_and(|f| f.stored == stored) {
            return Ok(());
        }
        // Its code here first (outside the deploy lock: it may download).
        self.ensure_code(&stored).await?;
        let _hold = self.holds.hold(
            stored.spec.artifact.clone(),
            stored.spec.container.as_ref().map(|c| c.image.clone()),
        );
        if stored.spec.container.is_some() && !pulled_image(&stored) {
            self.backend.prepare(&stored.spec.artifact).await?;
        }
        let _serial = self.deploy_lock.lock().await;
        let previous = self.functions.get(&key).map(|f| f.clone());
        if let Some(current) = &previous {
            if current.stored == stored {
                return Ok(());
            }
            if current.stored.revision == stored.revision
                && current.stored.spec.artifact == stored.spec.artifact
            {
                // Only its scaling changed.
                let copy = stored.clone();
                self.registry.write(move |r| r.put(&copy)).await?;
                self.rescaled(current, stored);
                tracing::info!(function = %key, "scaled on another node");
                return Ok(());
            }
        }
        let (copy, keep) = (stored.clone(), self.revision_history);
        self.registry
            .write(move |r| r.replicate(&copy, keep))
            .await?;
        let function = Arc::new(self.new_function(stored, previous.as_deref(), false)?);
        tracing::info!(function = %key, revision = function.stored.revision, "deployed on another node");
        self.functions.insert(key, function);
        if let Some(old) = previous {
            self.retire(old);
        }
        Ok(())
    }

    async fn apply_delete(&self, key: &str) {
        self.wanted.remove(key);
        let _serial = self.deploy_lock.lock().await;
        if let Err(e) = self.unstore(key).await {
            tracing::warn!(function = %key, error = %e, "removing a function deleted on another node");
        }
        if let Some((_, old)) = self.functions.remove(key) {
            old.metrics.silence();
            self.metrics.forget(&old.metrics);
            self.retire(old);
            self.logs.remove(key);
            tracing::info!(function = %key, "deleted on another node");
        }
    }

    /// What `stored` runs, on this node: its artifact from a peer, or —
    /// deployed by reference — its image or component pulled from its
    /// registry, pinned to the manifest the deploying node pulled.
    pub(crate) async fn ensure_code(&self, stored: &StoredFunction) -> Result<(), GatewayError> {
        let spec = &stored.spec;
        if pulled_image(stored) {
            if matches!(self.images.image(&spec.artifact), Ok(Some(_))) {
                return Ok(());
            }
            return self.pull_replica(stored).await;
        }
        match self.ensure_artifact(&spec.artifact).await {
            Err(e) if spec.source.is_some() => self
                .pull_replica(stored)
                .await
                .map_err(|pulling| GatewayError::NotReady(format!("{e}; pulling it: {pulling}"))),
            other => other,
        }
    }

    /// Pulls what `stored` was deployed from, by the digest it resolved to,
    /// with this node's registry settings and saved logins.
    async fn pull_replica(&self, stored: &StoredFunction) -> Result<(), GatewayError> {
        let Some(source) = &stored.spec.source else {
            return Err(GatewayError::NotReady(format!(
                "{} was not deployed from a registry",
                stored.spec.name
            )));
        };
        let named = wisp_runner::image::pull::parse_reference(&source.reference)
            .map_err(GatewayError::NotReady)?;
        let pinned = wisp_runner::image::pull::Reference::with_digest(
            named.registry().to_owned(),
            named.repository().to_owned(),
            source.manifest.to_string(),
        );
        let options =
            crate::api::pull_options(Some("missing"), None, None, &pinned, &self.pull_settings())?;
        let pulled = self.pull_counted(&pinned, &options).await?;
        if pulled.artifact != stored.spec.artifact {
            return Err(GatewayError::NotReady(format!(
                "{pinned} is {} here, not the {} deployed",
                pulled.artifact, stored.spec.artifact
            )));
        }
        tracing::info!(function = %stored.spec.name, image = %pinned, "pulled for a deploy on another node");
        Ok(())
    }

    /// The artifact `digest` in this node's store: fetched from the first
    /// peer that has it, and kept only if its bytes have that digest.
    pub(crate) async fn ensure_artifact(&self, digest: &Digest) -> Result<(), GatewayError> {
        if self.artifacts.contains(digest) {
            return Ok(());
        }
        let Some(cluster) = self.cluster.get() else {
            return Err(GatewayError::NotReady(format!(
                "artifact {digest} is not in this node's store"
            )));
        };
        let mut reasons = Vec::new();
        for peer in cluster.members() {
            if peer.name == cluster.node() {
                continue;
            }
            let response = match self.fetch_blob(&peer.address, digest).await {
                Ok(response) => response,
                Err(e) => {
                    reasons.push(format!("{}: {e}", peer.name));
                    continue;
                }
            };
            let stream = response
                .into_body()
                .into_data_stream()
                .map(|c| c.map_err(|e| e.to_string()));
            let stream = Box::pin(stream);
            match self
                .artifacts
                .put_verified(stream, self.max_artifact_bytes, Some(digest))
                .await
            {
                Ok(_) => {
                    tracing::info!(%digest, peer = %peer.name, "artifact fetched from a peer");
                    return Ok(());
                }
                Err(e) => reasons.push(format!("{}: {e}", peer.name)),
            }
        }
        Err(GatewayError::NotReady(format!(
            "no node could give artifact {digest}: {}",
            if reasons.is_empty() {
                "there is no other node".to_owned()
            } else {
                reasons.join("; ")
            }
        )))
    }

    /// Asks the peer at `address` for the blob `digest`: its answer when
    /// that is a success, or why not.
    async fn fetch_blob(
        &self,
        address: &str,
        digest: &Digest,
    ) -> Result<http::Response<hyper::body::Incoming>, String> {
        let empty = http_body_util::Empty::<bytes::Bytes>::new()
            .map_err(|never| match never {})
            .boxed_unsync();
        let request = http::Request::get(format!("{address}/system/blobs/{digest}"))
            .header(
                http::header::AUTHORIZATION,
                format!("Bearer {}", self.token),
            )
            .body(empty)
            .map_err(|e| format!("bad peer address: {e}"))?;
        let response = self
            .forwarder
            .request(request)
            .await
            .map_err(|e| wisp_runner::image::pull::error_chain(&e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = response
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
        Err(format!("{status}: {}", text.trim()))
    }
}
