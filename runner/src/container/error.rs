//! The container backend's errors, typed down to their causes; the
//! backend hands them to the pool inside [`crate::backend::StartError`]
//! and [`crate::backend::PrepareError`] as a [`crate::backend::Cause`],
//! so the chain survives.

use std::path::PathBuf;
use std::time::Duration;

use crate::container::cgroup::CgroupError;
use crate::container::plan::PlanError;
use crate::container::proto::Stage;
use crate::container::spawner::{LaunchError, SpawnError};
use crate::container::users::UserError;
use crate::image::StoreError;
use crate::spec::Digest;

/// Why this server cannot run container functions at all.
#[derive(Debug, thiserror::Error)]
pub enum UnavailableError {
    /// There is no spawner (not root, …).
    #[error("{0}")]
    NoSpawner(#[source] LaunchError),
    #[error("cgroups: {0}")]
    Cgroups(#[source] CgroupError),
    #[error("spawner: {0}")]
    Spawner(#[source] std::io::Error),
    #[error("creating {}: {source}", path.display())]
    Scratch {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Why a sandbox could not be made, or could not start its handler.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("{0}")]
    Unavailable(#[source] std::sync::Arc<UnavailableError>),
    #[error("the function has no container settings")]
    NoContainerSettings,
    #[error("the image store: {0}")]
    Images(#[source] StoreError),
    #[error("image {0} is no longer in the image store; deploy the function again")]
    ImageMissing(Digest),
    #[error("{0}")]
    User(#[source] UserError),
    #[error("{0}")]
    Plan(#[source] PlanError),
    #[error("{0}")]
    Cgroup(#[source] CgroupError),
    #[error("{0}")]
    Spawn(#[source] SpawnError),
    #[error("the sandbox's control socket: {0}")]
    Control(#[source] std::io::Error),
    #[error("the sandbox went away: {0}")]
    Gone(#[source] std::io::Error),
    #[error("the sandbox's init went away: {0}")]
    InitGone(#[source] std::io::Error),
    /// Init reported a failed set-up step (its own process: the cause is
    /// its text).
    #[error("{stage}: {error}")]
    Setup { stage: Stage, error: String },
    #[error("init did not report within {0:?}")]
    NoReport(Duration),
}
