//! Garbage collection of the data dir: `POST /system/prune` (`wisp prune`)
//! and a background sweep remove the uploaded artifacts and the images
//! (records, blobs, unpacked layers) that nothing uses.
//!
//! In use, and never removed: what a deployed function names (its artifact
//! and, for a container, its image), what its kept revisions name (so that
//! a rollback finds it; `--revision-history`), what a deploy under way names (held
//! from before its artifact is checked until the registry has it), and what
//! an old version still draining its requests names (held until its pool
//! has stopped). The rest goes once it is older than the grace period
//! (`--prune-grace`): an artifact counts from its upload (or its last
//! upload again), an image from its import, so an upload that is about to
//! be deployed, or an image just imported for a deploy, is not taken away
//! in between. An image imported after the oldest deploy under way began
//! is kept as well, whatever the grace.
//!
//! A prune holds the deploy lock while it decides and removes, so the
//! functions it reads are the registry's; a deploy takes the same lock to
//! declare what it holds, so either the prune sees the hold or the deploy
//! finds its artifact gone and says so (upload it again).
//!
//! Limits: the sweep runs every `--prune-interval` (0 turns it off), first
//! one interval after the start; code compiled for another wasmtime is only
//! removed with its artifact.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use wisp_runner::spec::Digest;
use wisp_runner::store::Removed;

use crate::api::{PruneReport, PrunedEntry};
use crate::rescue::GatewayError;
use crate::server::App;

/// Default interval of the background sweep.
pub const DEFAULT_PRUNE_INTERVAL: Duration = Duration::from_secs(60 * 60);
/// Default age below which an unused artifact or image is kept.
pub const DEFAULT_PRUNE_GRACE: Duration = Duration::from_secs(10 * 60);

/// Operator settings of garbage collection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PruneConfig {
    /// How often the background sweep runs; zero turns it off.
    pub interval: Duration,
    /// How old an unused artifact or image must be to be removed.
    pub grace: Duration,
}

impl Default for PruneConfig {
    fn default() -> Self {
        PruneConfig {
            interval: DEFAULT_PRUNE_INTERVAL,
            grace: DEFAULT_PRUNE_GRACE,
        }
    }
}

/// What is in use beyond the deployed functions: deploys under way and
/// old versions draining.
#[derive(Debug, Default)]
pub(crate) struct Holds {
    next: AtomicU64,
    held: Mutex<HashMap<u64, Held>>,
}

#[derive(Debug, Clone)]
struct Held {
    artifact: Digest,
    image: Option<Digest>,
    since: SystemTime,
}

/// Keeps its artifact and image from prunes until dropped.
#[derive(Debug)]
pub(crate) struct Hold {
    holds: Arc<Holds>,
    id: u64,
}

impl Holds {
    /// Holds `artifact` (and `image`) until the returned guard is dropped.
    /// Take it under the deploy lock, so that no prune is half done.
    pub(crate) fn hold(self: &Arc<Self>, artifact: Digest, image: Option<Digest>) -> Hold {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let held = Held {
            artifact,
            image,
            since: SystemTime::now(),
        };
        self.lock().insert(id, held);
        Hold {
            holds: self.clone(),
            id,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Held>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn snapshot(&self) -> Vec<Held> {
        self.lock().values().cloned().collect()
    }

    /// Whether a deploy under way or a version still draining holds `image`.
    pub(crate) fn holds_image(&self, image: &Digest) -> bool {
        self.lock()
            .values()
            .any(|h| h.image.as_ref() == Some(image))
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.holds.lock().remove(&self.id);
    }
}

impl App {
    /// Removes (with `dry_run`, lists) the artifacts and images nothing
    /// uses and that are past the grace period. Deploys wait meanwhile.
    pub(crate) async fn prune(&self, dry_run: bool) -> Result<PruneReport, GatewayError> {
        let _serial = self.deploy_lock.lock().await;
        let now = SystemTime::now();
        let cutoff = now.checked_sub(self.prune.grace).unwrap_or(UNIX_EPOCH);
        let mut artifacts = HashSet::new();
        let mut images = Vec::new();
        for function in self.functions.iter() {
            let spec = &function.stored.spec;
            artifacts.insert(spec.artifact.clone());
            images.extend(spec.container.as_ref().map(|c| c.image.clone()));
        }
        // What the kept revisions ran, so that a rollback finds it.
        for revision in self.registry.all_revisions()? {
            let spec = &revision.spec;
            artifacts.insert(spec.artifact.clone());
            images.extend(spec.container.as_ref().map(|c| c.image.clone()));
        }
        let mut image_cutoff = cutoff;
        for held in self.holds.snapshot() {
            artifacts.insert(held.artifact);
            images.extend(held.image);
            // What a deploy under way imported is younger than the deploy.
            image_cutoff = image_cutoff.min(held.since);
        }
        let (artifact_store, image_store) = (self.artifacts.clone(), self.images.clone());
        let (artifacts, images) = tokio::task::spawn_blocking(move || {
            let artifacts = artifact_store.prune(&artifacts, cutoff, dry_run)?;
            let images = image_store.prune(&images, image_cutoff, dry_run)?;
            Ok::<_, GatewayError>((artifacts, images))
        })
        .await
        .map_err(GatewayError::StoreTask)??;
        let entries = |list: Vec<Removed>| -> Vec<PrunedEntry> {
            list.into_iter()
                .map(|r| PrunedEntry {
                    digest: r.digest,
                    bytes: r.bytes,
                })
                .collect()
        };
        let mut report = PruneReport {
            dry_run,
            artifacts: entries(artifacts),
            images: entries(images.images),
            layers: entries(images.layers),
            blobs: entries(images.blobs),
            bytes: 0,
        };
        report.bytes = report.entries().map(|(_, e)| e.bytes).sum();
        if !dry_run && !report.is_empty() {
            tracing::info!(
                artifacts = report.artifacts.len(),
                images = report.images.len(),
                layers = report.layers.len(),
                blobs = report.blobs.len(),
                bytes = report.bytes,
                "pruned what no function uses"
            );
        }
        Ok(report)
    }
}

/// Prunes every `interval`, for as long as the server runs.
pub(crate) async fn sweep(app: Arc<App>, interval: Duration) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if let Err(error) = app.prune(false).await {
            tracing::warn!(%error, detail = ?error, "the background prune failed");
        }
    }
}
