//! Revisions and rollback. Every deploy of a name is recorded as its next
//! revision ([`crate::registry::Registry::deploy`]); the newest
//! `--revision-history` are kept, and what they run (artifacts, images) is
//! spared by prunes. `GET /system/revisions/{name}` lists them, and
//! `POST /system/rollback/{name}` deploys an earlier one again, as a new
//! revision and atomically like any deploy: requests in flight finish on
//! the version they started on. A rollback restores what was deployed
//! (artifact, image, environment, limits, secrets' names) but keeps the
//! current scaling settings, which are tuned live (`wisp scale`) rather
//! than deployed, as a Kubernetes rollout undo keeps the replica count.

use std::sync::Arc;

use http::{Request, Response, StatusCode};
use wisp_runner::backend::{Body, PrepareError};
use wisp_runner::spec::FunctionKind;

use crate::api::{RevisionSummary, RollbackRequest};
use crate::rescue::GatewayError;
use crate::server::{App, text};

impl App {
    /// `GET /system/revisions/{name}`: its kept revisions, oldest first.
    pub(crate) fn revisions(&self, name: &str) -> Result<Response<Body>, GatewayError> {
        let current = self.function(name)?.stored.revision;
        let list: Vec<RevisionSummary> = self
            .registry
            .revisions(name)?
            .iter()
            .map(|r| RevisionSummary::new(r, current))
            .collect();
        crate::control::json(StatusCode::OK, &list)
    }

    /// `POST /system/rollback/{name}`: deploys revision `revision` (else
    /// the one before the current) again.
    pub(crate) async fn rollback(
        self: &Arc<Self>,
        name: &str,
        req: Request<Body>,
    ) -> Result<Response<Body>, GatewayError> {
        let request: RollbackRequest = crate::control::read_optional_json(req)
            .await?
            .unwrap_or_default();
        let current = self.function(name)?;
        let now = current.stored.revision;
        let revisions = self.registry.revisions(name)?;
        let kept = || {
            let numbers: Vec<String> = revisions.iter().map(|r| r.revision.to_string()).collect();
            numbers.join(", ")
        };
        let target = match request.revision {
            Some(wanted) => revisions
                .iter()
                .find(|r| r.revision == wanted)
                .ok_or_else(|| {
                    GatewayError::Missing(format!(
                        "function {name} has no revision {wanted}; kept: {}",
                        kept()
                    ))
                })?,
            None => revisions
                .iter()
                .rev()
                .find(|r| r.revision < now)
                .ok_or_else(|| {
                    GatewayError::Missing(format!(
                        "function {name} has no revision before {now} to go back to"
                    ))
                })?,
        };
        if target.revision == now {
            return Err(GatewayError::Conflict(format!(
                "revision {now} is the one {name} runs"
            )));
        }
        let from = target.revision;
        let mut spec = target.spec.clone();
        spec.scaling = current.stored.spec.scaling;
        spec.secrets_dir = None;
        let image = spec.container.as_ref().map(|c| c.image.clone());
        let _hold = {
            let _serial = self.deploy_lock.lock().await;
            self.holds.hold(spec.artifact.clone(), image.clone())
        };
        // What it ran must still be here (a prune spares kept revisions,
        // but `wisp rmi` may have removed an image by hand).
        let gone = |what: String| {
            GatewayError::Conflict(format!(
                "revision {from} of {name} cannot be restored: {what} is gone; deploy it again"
            ))
        };
        if self.cluster.get().is_some() {
            // Recorded on another node: its code may have to come here.
            // (Unless it is gone everywhere: the checks below say so.)
            if let Err(e) = self.ensure_code(target).await {
                tracing::debug!(function = %name, from, error = %e, "fetching an old revision's code");
            }
        }
        let stored = match image.clone() {
            Some(digest) => self.on_images(move |store| store.image(&digest)).await?,
            None => None,
        };
        match (&image, &spec.source) {
            (Some(_), _) if stored.is_some() => {}
            (Some(image), Some(source)) => {
                return Err(gone(format!(
                    "its image {image} (pulled from {})",
                    source.reference
                )));
            }
            // An upload: its artifact is imported again, or compiled again.
            _ => match self.backend.prepare(&spec.artifact).await {
                Ok(prepared)
                    if prepared.kind == spec.kind
                        && (spec.kind != FunctionKind::Container || prepared.image == image) => {}
                Ok(_) => {
                    return Err(gone(format!(
                        "the image it ran ({})",
                        image.map_or_else(|| spec.artifact.to_string(), |i| i.to_string())
                    )));
                }
                Err(PrepareError::MissingArtifact { digest }) => {
                    return Err(gone(format!("its artifact {digest}")));
                }
                Err(e) => return Err(e.into()),
            },
        }
        self.install(spec, true, None, &[]).await?;
        let revision = self.function(name)?.stored.revision;
        tracing::info!(function = %name, from, revision, "rolled back");
        Ok(text(
            StatusCode::OK,
            format!("rolled {name} back to revision {from}, deployed as revision {revision}\n"),
        ))
    }
}
