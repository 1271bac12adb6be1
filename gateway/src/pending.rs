//! Pulls in flight, and the deploys that wait for theirs.
//!
//! Every pull the server runs is listed in [`Pulls`] with its progress
//! (`GET /system/pulls`: what the CLI draws its progress bars from). A
//! deploy by reference pulls in a task of its own: the request waits for
//! it up to `--deploy-wait`, then answers 202 while the pull goes on. Until
//! it ends the name has a [`PendingDeploy`]: listed as `pulling` (or as
//! `failed`, with the reason, if the pull fails after the answer), and a
//! request to a function that has no running version yet waits for it
//! within its deadline. An update's old version keeps serving meanwhile.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tokio::sync::watch;
use wisp_runner::image::pull::{ProgressSink, PullProgress};
use wisp_runner::spec::FunctionSpec;

use crate::api::{LayerStatus, PullStatus};

/// The pulls in flight.
#[derive(Default)]
pub(crate) struct Pulls {
    next: AtomicU64,
    active: Arc<DashMap<u64, ActivePull>>,
}

struct ActivePull {
    reference: String,
    function: Option<String>,
    started: Instant,
    progress: watch::Receiver<PullProgress>,
}

/// Keeps a pull listed until it is dropped.
pub(crate) struct Tracked {
    id: u64,
    active: Arc<DashMap<u64, ActivePull>>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.active.remove(&self.id);
    }
}

impl Pulls {
    /// Lists a pull of `reference` (for a deploy of `function`); returns
    /// where it reports, and what keeps it listed.
    pub(crate) fn track(
        &self,
        reference: String,
        function: Option<String>,
    ) -> (ProgressSink, watch::Receiver<PullProgress>, Tracked) {
        let (sink, progress) = ProgressSink::channel();
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.active.insert(
            id,
            ActivePull {
                reference,
                function,
                started: Instant::now(),
                progress: progress.clone(),
            },
        );
        let tracked = Tracked {
            id,
            active: self.active.clone(),
        };
        (sink, progress, tracked)
    }

    /// Every pull in flight, oldest first.
    pub(crate) fn list(&self) -> Vec<PullStatus> {
        let mut pulls: Vec<(u64, PullStatus)> = self
            .active
            .iter()
            .map(|entry| (*entry.key(), status(entry.value())))
            .collect();
        pulls.sort_by_key(|(id, _)| *id);
        pulls.into_iter().map(|(_, status)| status).collect()
    }

    /// The pull in flight for a deploy of `function`.
    pub(crate) fn of_function(&self, function: &str) -> Option<PullStatus> {
        self.active
            .iter()
            .filter(|entry| entry.value().function.as_deref() == Some(function))
            .max_by_key(|entry| *entry.key())
            .map(|entry| status(entry.value()))
    }
}

fn status(pull: &ActivePull) -> PullStatus {
    let progress = pull.progress.borrow();
    PullStatus {
        reference: pull.reference.clone(),
        function: pull.function.clone(),
        phase: progress.phase.as_str().to_owned(),
        seconds: pull.started.elapsed().as_secs_f64(),
        layers: progress
            .layers
            .iter()
            .map(|l| LayerStatus {
                digest: l.digest.to_string(),
                size: l.size,
                done: l.done,
                present: l.present,
            })
            .collect(),
    }
}

/// Where a deploy in flight is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DeployState {
    Pulling,
    /// The pull or the deploy failed after the request was answered.
    Failed(String),
    /// Deployed: the function serves.
    Done,
}

/// A deploy by reference that has not finished.
pub(crate) struct PendingDeploy {
    /// What was asked for (its artifact is not known yet).
    pub(crate) draft: FunctionSpec,
    pub(crate) reference: String,
    pub(crate) state: watch::Sender<DeployState>,
    task: std::sync::Mutex<Option<tokio::task::AbortHandle>>,
}

impl PendingDeploy {
    pub(crate) fn new(draft: FunctionSpec, reference: String) -> Self {
        PendingDeploy {
            draft,
            reference,
            state: watch::channel(DeployState::Pulling).0,
            task: std::sync::Mutex::new(None),
        }
    }

    pub(crate) fn set_task(&self, task: tokio::task::AbortHandle) {
        *self
            .task
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(task);
    }

    /// Stops the pull: the deploy was replaced or its function deleted.
    pub(crate) fn cancel(&self) {
        if let Some(task) = self
            .task
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        {
            task.abort();
        }
        self.state.send_if_modified(|state| {
            if *state == DeployState::Pulling {
                *state = DeployState::Failed("the deploy was replaced or deleted".into());
                true
            } else {
                false
            }
        });
    }

    pub(crate) fn current(&self) -> DeployState {
        self.state.borrow().clone()
    }

    /// Waits up to `within` for the deploy to end; its state then.
    pub(crate) async fn settled(&self, within: Duration) -> DeployState {
        let mut watch = self.state.subscribe();
        let ended = tokio::time::timeout(
            within,
            watch.wait_for(|state| *state != DeployState::Pulling),
        )
        .await;
        match ended {
            Ok(Ok(state)) => state.clone(),
            _ => self.current(),
        }
    }
}
