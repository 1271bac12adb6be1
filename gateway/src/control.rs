//! The control API under `/system/*` (the caller is already authorized):
//! deploy, update, list, inspect and delete functions, upload artifacts,
//! pull, list, name and remove images, save registry logins, prune (see
//! [`crate::prune`]), list the pulls in flight, report the gateway's
//! version. A deploy by registry reference pulls in a task of its own,
//! without the deploy lock, and may be answered 202 before it is done (see
//! [`crate::pending`]). Deploys are atomic: the artifact is checked and
//! compiled first, then the registry is written in one transaction, then
//! routing switches to the new version while the old one drains. A deploy
//! holds its artifact from before it is checked, and an old version what
//! it runs until it has drained, so that no prune takes them away.

use std::num::IntErrorKind;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::StreamExt;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use serde::Serialize;
use serde::de::DeserializeOwned;
use wisp_runner::backend::{Body, PrepareError, PullFailure, PulledArtifact, full_body};
use wisp_runner::image::pull::PullPhase;
use wisp_runner::image::pull::{self, Credentials, PullOptions, Reference};
use wisp_runner::image::{ImageStore, StoreError};
use wisp_runner::pool::StopReason;
use wisp_runner::spec::{Digest, FunctionKind, FunctionSpec, ImageSource};

use crate::api::{
    ArtifactUploaded, DeleteFunctionRequest, DeployingStatus, FunctionDeployment, FunctionState,
    FunctionStatus, GatewayInfo, ImageRef, ImageSummary, LayerSummary, LoginRequest, LogoutRequest,
    PullRequest, PullResponse, RemoveImageRequest, RemovedImage, ScaleRequest, ServerPullSettings,
    TagRequest,
};
use crate::namespaces::{Caller, of};
use crate::pending::{DeployState, PendingDeploy};
use crate::registry::{RegistryError, StoredFunction};
use crate::rescue::GatewayError;
use crate::route::Route;
use crate::server::{App, Function, declares_more_than, text};

/// Largest JSON body the control API reads.
const MAX_JSON_BYTES: u64 = 1024 * 1024;

impl App {
    pub(crate) async fn control(
        self: &Arc<Self>,
        route: Route<'_>,
        caller: &Caller,
        req: Request<Body>,
    ) -> Result<Response<Body>, GatewayError> {
        let method = req.method().clone();
        let namespace = query_param(req.uri().query(), "namespace");
        let namespace = namespace.as_deref();
        // The server's stores and logins are the admin's; a namespace
        // token may upload artifacts (content-addressed) to deploy them.
        if matches!(
            route,
            Route::Images | Route::Pulls | Route::Prune | Route::Registries
        ) {
            caller.admin("managing images, registry logins and prunes")?;
        }
        // A cluster member not joined yet changes nothing the cluster
        // keeps (what is the node's own — its stores, logins — it may).
        if self.joining.load(Ordering::Acquire)
            && !matches!(method, Method::GET | Method::HEAD)
            && !matches!(
                route,
                Route::Artifacts | Route::Images | Route::Pulls | Route::Prune | Route::Registries
            )
        {
            return Err(GatewayError::NotReady(
                "the cluster's store (etcd) has been out of reach since this node started, so nothing can be changed now; this node serves what it last saw".into(),
            ));
        }
        match (route, method) {
            (Route::SystemInfo, Method::GET) => json(StatusCode::OK, &GatewayInfo::current()),
            (Route::SystemInfo, _) => Err(GatewayError::MethodNotAllowed { allow: "GET" }),
            (Route::Functions, Method::GET) => {
                let namespace = caller.namespace(namespace)?;
                self.existing_namespace(&namespace)?;
                let mut list: Vec<FunctionStatus> = self
                    .functions
                    .iter()
                    .filter(|f| of(&f.stored.spec) == namespace)
                    .map(|f| self.status(f.value()))
                    .collect();
                list.extend(
                    self.pending
                        .iter()
                        .filter(|p| {
                            of(&p.draft) == namespace && !self.functions.contains_key(p.key())
                        })
                        .map(|p| self.pending_status(p.value())),
                );
                list.sort_by(|a, b| a.name.cmp(&b.name));
                json(StatusCode::OK, &list)
            }
            (Route::Functions, Method::POST) => self.deploy(caller, req, false).await,
            (Route::Functions, Method::PUT) => self.deploy(caller, req, true).await,
            (Route::Functions, Method::DELETE) => {
                let query = namespace.map(str::to_owned);
                let request: DeleteFunctionRequest = read_json(req).await?;
                let key = self.key_for(
                    caller,
                    &request.function_name,
                    query.as_deref().or(request.namespace.as_deref()),
                )?;
                self.delete(&key).await
            }
            (Route::Functions, _) => Err(GatewayError::MethodNotAllowed {
                allow: "GET, POST, PUT, DELETE",
            }),
            (Route::Function(name), Method::GET) => {
                let name = &self.key_for(caller, name, namespace)?;
                let status = match self.function(name) {
                    Ok(function) => self.status(&function),
                    Err(unknown) => match self.pending.get(name) {
                        Some(pending) => self.pending_status(&pending),
                        None => return Err(unknown),
                    },
                };
                json(StatusCode::OK, &status)
            }
            (Route::Function(_), _) => Err(GatewayError::MethodNotAllowed { allow: "GET" }),
            (Route::Artifacts, Method::POST) => self.upload(req).await,
            (Route::Logs, Method::GET) => self.logs(caller, req.uri().query().unwrap_or("")),
            (Route::Logs, _) => Err(GatewayError::MethodNotAllowed { allow: "GET" }),
            (Route::Artifacts, _) => Err(GatewayError::MethodNotAllowed { allow: "POST" }),
            (Route::ScaleFunction(name), Method::POST) => {
                // The path names the function (and `?namespace=`, else the
                // body's namespace): an unknown one is a 404 whatever the
                // body says. The body is optional (the spec).
                let query = namespace.map(str::to_owned);
                let request = parse_optional_json::<ScaleRequest>(&read_body(req).await?);
                let in_body = match &request {
                    Ok(Some(r)) => r.namespace.clone(),
                    _ => None,
                };
                let key = self.key_for(caller, name, query.as_deref().or(in_body.as_deref()))?;
                self.function(&key)?;
                match request? {
                    Some(request) => {
                        request.check_complete()?;
                        self.scale(&key, request).await
                    }
                    None => self.scale(&key, ScaleRequest::default()).await,
                }
            }
            (Route::ScaleFunction(_), _) => Err(GatewayError::MethodNotAllowed { allow: "POST" }),
            (Route::Images, Method::GET) => json(StatusCode::OK, &self.images().await?),
            (Route::Pulls, Method::GET) => json(StatusCode::OK, &self.pulls.list()),
            (Route::Pulls, _) => Err(GatewayError::MethodNotAllowed { allow: "GET" }),
            (Route::Images, Method::POST) => self.pull(req).await,
            (Route::Images, Method::PUT) => self.tag(req).await,
            (Route::Images, Method::DELETE) => self.remove_image(req).await,
            (Route::Images, _) => Err(GatewayError::MethodNotAllowed {
                allow: "GET, POST, PUT, DELETE",
            }),
            (Route::Prune, Method::POST) => {
                let dry_run = dry_run(req.uri().query().unwrap_or(""))?;
                json(StatusCode::OK, &self.prune(dry_run).await?)
            }
            (Route::Prune, _) => Err(GatewayError::MethodNotAllowed { allow: "POST" }),
            (Route::Registries, Method::GET) => json(StatusCode::OK, &self.logins.registries()),
            (Route::Registries, Method::POST) => self.login(req).await,
            (Route::Registries, Method::DELETE) => {
                let request: LogoutRequest = read_json(req).await?;
                let key = crate::credentials::registry_key(&request.registry);
                if !self.logins.remove(&key).map_err(GatewayError::Logins)? {
                    return Err(GatewayError::NotFound(format!("no login saved for {key}")));
                }
                tracing::info!(registry = %key, "registry login removed");
                Ok(text(StatusCode::OK, format!("logged out of {key}\n")))
            }
            (Route::Registries, _) => Err(GatewayError::MethodNotAllowed {
                allow: "GET, POST, DELETE",
            }),
            (Route::Secrets, _) => self.secrets(caller, req).await,
            (Route::Revisions(name), Method::GET) => {
                self.revisions(&self.key_for(caller, name, namespace)?)
            }
            (Route::Revisions(_), _) => Err(GatewayError::MethodNotAllowed { allow: "GET" }),
            (Route::Rollback(name), Method::POST) => {
                let key = self.key_for(caller, name, namespace)?;
                self.rollback(&key, req).await
            }
            (Route::Rollback(_), _) => Err(GatewayError::MethodNotAllowed { allow: "POST" }),
            (Route::Namespaces, Method::GET) => self.list_namespaces(caller),
            (Route::Namespaces, _) => Err(GatewayError::MethodNotAllowed { allow: "GET" }),
            (Route::Nodes, Method::GET) => {
                caller.admin("listing the cluster's nodes")?;
                json(StatusCode::OK, &self.nodes())
            }
            (Route::Nodes, _) => Err(GatewayError::MethodNotAllowed { allow: "GET" }),
            (Route::Blob(digest), Method::GET) => {
                caller.admin("reading artifacts (the nodes' own route)")?;
                let digest = wisp_runner::spec::Digest::parse(digest)
                    .map_err(|e| GatewayError::BadRequest(e.to_string()))?;
                if !self.artifacts.contains(&digest) {
                    return Err(GatewayError::NotFound(format!("artifact {digest}")));
                }
                let file = tokio::fs::File::open(self.artifacts.blob_path(&digest))
                    .await
                    .map_err(|e| GatewayError::NotFound(format!("artifact {digest}: {e}")))?;
                let length = file
                    .metadata()
                    .await
                    .map_err(|e| GatewayError::NotFound(format!("artifact {digest}: {e}")))?
                    .len();
                let mut response = Response::new(file_body(file));
                response.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/octet-stream"),
                );
                response.headers_mut().insert(
                    http::header::CONTENT_LENGTH,
                    http::HeaderValue::from(length),
                );
                Ok(response)
            }
            (Route::Blob(_), _) => Err(GatewayError::MethodNotAllowed { allow: "GET" }),
            (Route::Namespace(name), _) => self.namespace_route(name, caller, req).await,
            (Route::Tokens, _) => self.tokens_route(None, caller, req).await,
            (Route::Token(id), _) => self.tokens_route(Some(id), caller, req).await,
            (_, _) => Err(GatewayError::NotFound(req.uri().path().to_owned())),
        }
    }

    async fn deploy(
        self: &Arc<Self>,
        caller: &Caller,
        req: Request<Body>,
        update: bool,
    ) -> Result<Response<Body>, GatewayError> {
        let mut deployment: FunctionDeployment = read_json(req).await?;
        let namespace = caller.namespace(deployment.namespace.as_deref())?;
        self.existing_namespace(&namespace)?;
        deployment.namespace = Some(namespace);
        let ignored = deployment.ignored_fields();
        let artifact = match deployment.source()? {
            ImageRef::Artifact(artifact) => artifact,
            ImageRef::Registry(reference) => {
                return self
                    .deploy_reference(deployment, *reference, update, ignored)
                    .await;
            }
        };
        // Validate everything cheap before compiling anything.
        let draft = deployment.to_spec_with(FunctionKind::WasmHttp, artifact)?;
        self.check_key_free(&draft)?;
        self.check_secrets(of(&draft), &draft.secrets)?;
        crate::calls::RetryPolicy::parse(&draft.annotations).map_err(GatewayError::BadRequest)?;
        // Under the lock, so that a prune either sees the hold or has
        // finished (and `prepare` finds the artifact gone).
        let _hold = {
            let _serial = self.deploy_lock.lock().await;
            self.holds.hold(draft.artifact.clone(), None)
        };
        let prepared = self.backend.prepare(&draft.artifact).await?;
        let spec = deployment.with_prepared(draft, prepared)?;
        let name = spec.name.to_string();
        self.install(spec, update, None, &ignored).await?;
        Ok(deployed(&name, update, &ignored))
    }

    /// A deploy by registry reference: pulled in a task of its own (see
    /// [`crate::pending`]), answered when it is done, when it fails while
    /// the reference is resolved (an unknown tag, refused credentials), or
    /// with 202 after `deploy_wait` of downloading.
    async fn deploy_reference(
        self: &Arc<Self>,
        deployment: FunctionDeployment,
        reference: Reference,
        update: bool,
        ignored: Vec<String>,
    ) -> Result<Response<Body>, GatewayError> {
        let name = crate::namespaces::key(
            &deployment.service,
            deployment.namespace.as_deref().unwrap_or_default(),
        );
        let StartedDeploy {
            pending,
            mut task,
            mut progress,
            kept,
        } = self.start_deploy(deployment, reference, update)?;
        let answer = |joined: Result<Result<(), GatewayError>, tokio::task::JoinError>| {
            match joined {
                Ok(Ok(())) => Ok(deployed(&name, update, &ignored)),
                Ok(Err(e)) => {
                    // The caller hears of it: nothing stays behind.
                    if self
                        .pending
                        .remove_if(&name, |_, p| Arc::ptr_eq(p, &pending))
                        .is_some()
                        && let Err(e) = self.registry.remove_deploy(&name)
                    {
                        tracing::warn!(function = %name, error = %e, "forgetting a failed deploy");
                    }
                    Err(e)
                }
                Err(_) => Err(GatewayError::Conflict(format!(
                    "the deploy of {name} was replaced or deleted while it pulled {}",
                    pending.reference
                ))),
            }
        };
        // Errors while the reference is resolved are the answer.
        tokio::select! {
            joined = &mut task => return answer(joined),
            _ = progress.wait_for(|p| p.phase != PullPhase::Resolving) => {}
        }
        if let Ok(joined) = tokio::time::timeout(self.deploy_wait, &mut task).await {
            return answer(joined);
        }
        // Answered 202 from here: the deploy is kept, so that a restart
        // takes it up, unless it ended meanwhile (`install` stores the
        // function under the same lock).
        let still_pulling = {
            let _serial = self.deploy_lock.lock().await;
            let current = self
                .pending
                .get(&name)
                .is_some_and(|p| Arc::ptr_eq(&p, &pending))
                && pending.current() == DeployState::Pulling;
            if current {
                let key = name.clone();
                self.registry
                    .write(move |r| r.put_deploy(&key, &kept))
                    .await?;
            }
            current
        };
        if !still_pulling {
            return answer(task.await);
        }
        Ok(text(
            StatusCode::ACCEPTED,
            format!(
                "deploying {name}: pulling {}; `wisp ls` shows when it is ready, and its requests wait for it\n{}",
                pending.reference,
                ignored_note(&ignored)
            ),
        ))
    }

    /// Checks a deploy by reference and starts its pull. `update` refuses a name
    /// that has neither a function nor a deploy.
    fn start_deploy(
        self: &Arc<Self>,
        deployment: FunctionDeployment,
        reference: Reference,
        update: bool,
    ) -> Result<StartedDeploy, GatewayError> {
        let mut options = deployment.pull_options(&reference, &self.pull_settings())?;
        // Validated before anything is downloaded; the artifact is what
        // the pull finds.
        let placeholder = Digest::from_sha256(&[0; 32]);
        let draft = deployment.to_spec_with(FunctionKind::WasmHttp, placeholder)?;
        self.check_key_free(&draft)?;
        self.check_secrets(of(&draft), &draft.secrets)?;
        crate::calls::RetryPolicy::parse(&draft.annotations).map_err(GatewayError::BadRequest)?;
        let name = draft.name.to_string();
        if update && !self.functions.contains_key(&name) && !self.pending.contains_key(&name) {
            return Err(GatewayError::UnknownFunction(name));
        }
        // What is kept if the deploy outlives its request: the request
        // without its credentials (a restart pulls with the saved logins).
        let kept = FunctionDeployment {
            registry_auth: None,
            ..deployment.clone()
        };
        let kept =
            serde_json::to_vec(&kept).map_err(|e| GatewayError::BadRequest(e.to_string()))?;
        let (sink, progress, tracked) = self.pulls.track(reference.whole(), Some(name.clone()));
        options.progress = sink;
        let pending = Arc::new(PendingDeploy::new(draft.clone(), reference.whole()));
        if let Some(replaced) = self.pending.insert(name, pending.clone()) {
            replaced.cancel();
        }
        let task = tokio::spawn({
            let (app, pending) = (self.clone(), pending.clone());
            async move {
                let _tracked = tracked;
                let ignored = deployment.ignored_fields();
                let result = app
                    .pull_and_install(deployment, draft, reference, options, &pending, &ignored)
                    .await;
                pending.state.send_replace(match &result {
                    Ok(()) => DeployState::Done,
                    Err(e) => {
                        tracing::warn!(function = %pending.draft.name, image = %pending.reference, error = %e, "deploy failed");
                        DeployState::Failed(e.public_message())
                    }
                });
                result
            }
        });
        pending.set_task(task.abort_handle());
        Ok(StartedDeploy {
            pending,
            task,
            progress,
            kept,
        })
    }

    /// Takes up the deploys a previous server accepted and did not finish.
    pub(crate) fn resume_deploys(self: &Arc<Self>) {
        let deploys = match self.registry.deploys() {
            Ok(deploys) => deploys,
            Err(e) => {
                tracing::error!(error = %e, "reading the unfinished deploys");
                return;
            }
        };
        for (name, request) in deploys {
            let resumed = serde_json::from_slice::<FunctionDeployment>(&request)
                .map_err(|e| GatewayError::BadRequest(e.to_string()))
                .and_then(|deployment| match deployment.source()? {
                    ImageRef::Registry(reference) => {
                        tracing::info!(function = %name, image = %reference, "taking up an unfinished deploy");
                        self.start_deploy(deployment, *reference, false).map(drop)
                    }
                    ImageRef::Artifact(_) => Err(GatewayError::BadRequest(
                        "not a deploy by reference".into(),
                    )),
                });
            if let Err(e) = resumed {
                tracing::error!(function = %name, error = %e, "an unfinished deploy cannot be taken up; it is dropped");
                let _ = self.registry.remove_deploy(&name);
            }
        }
    }

    /// Pulls `reference` and installs what it is as `draft`'s function,
    /// unless `pending` was replaced meanwhile.
    async fn pull_and_install(
        &self,
        deployment: FunctionDeployment,
        mut draft: FunctionSpec,
        reference: Reference,
        options: PullOptions,
        pending: &Arc<PendingDeploy>,
        ignored: &[String],
    ) -> Result<(), GatewayError> {
        // Pulled without the deploy lock: a large image holds up no other
        // deploy. A prune meanwhile spares what the pull just stored (its
        // cutoff), and the hold below keeps it. OpenFaaS's spec answers a
        // deploy with 400 for what the caller got wrong; an image that is
        // not there is that.
        let pulled = self
            .pull_counted(&reference, &options)
            .await
            .map_err(|e| match e {
                PrepareError::Pull {
                    failure: PullFailure::NotFound,
                    cause,
                } => PrepareError::Pull {
                    failure: PullFailure::Invalid,
                    cause,
                },
                other => other,
            })?;
        let _hold = {
            let _serial = self.deploy_lock.lock().await;
            self.holds
                .hold(pulled.artifact.clone(), pulled.prepared.image.clone())
        };
        draft.artifact = pulled.artifact;
        draft.source = Some(ImageSource {
            reference: reference.whole(),
            manifest: pulled.report.manifest_digest,
        });
        let spec = deployment.with_prepared(draft, pulled.prepared)?;
        self.install(spec, false, Some(pending), ignored).await
    }

    /// Stores `spec` and routes its function's requests to it; the old
    /// version drains. `update` refuses a name that has no function; a
    /// `pending` deploy installs only if it is still the name's latest.
    pub(crate) async fn install(
        &self,
        spec: FunctionSpec,
        update: bool,
        pending: Option<&Arc<PendingDeploy>>,
        ignored: &[String],
    ) -> Result<(), GatewayError> {
        let kind = spec.kind;
        let name = spec.name.to_string();
        let _serial = self.deploy_lock.lock().await;
        if let Some(pending) = pending
            && !self
                .pending
                .get(&name)
                .is_some_and(|current| Arc::ptr_eq(&current, pending))
        {
            return Err(GatewayError::Conflict(format!(
                "the deploy of {name} was replaced or deleted while it pulled {}",
                pending.reference
            )));
        }
        // A namespace made while this deploy was checked or pulled.
        self.check_key_free(&spec)?;
        let previous = self.functions.get(&name).map(|f| f.clone());
        if update && previous.is_none() && !self.pending.contains_key(&name) {
            return Err(GatewayError::UnknownFunction(name));
        }
        // Its secrets are written (and found to exist) before it is stored.
        // Its revision is known before its sandboxes are (a Lambda function
        // is told it): `deploy` records this one, under the same lock.
        let mut stored = StoredFunction::new(spec);
        stored.revision = self.registry.next_revision(&name)?;
        let mut function = self.new_function(stored, previous.as_deref(), true)?;
        // In a cluster the deploy is the store's first, then this node's.
        if let Some(cluster) = self.cluster.get() {
            cluster
                .put_function(&function.stored, Some(self.revision_history))
                .await?;
        }
        let (mut stored, keep) = (function.stored.clone(), self.revision_history);
        function.stored = self
            .registry
            .write(move |r| r.deploy(&mut stored, keep).map(|()| stored))
            .await?;
        let function = Arc::new(function);
        tracing::info!(function = %name, kind = kind.as_str(), artifact = %function.stored.spec.artifact, replaced = previous.is_some(), ?ignored, "deployed");
        self.functions.insert(name.clone(), function);
        // This deploy is the name's latest: one still pulling is replaced.
        if let Some((_, replaced)) = self.pending.remove(&name)
            && !pending.is_some_and(|p| Arc::ptr_eq(p, &replaced))
        {
            replaced.cancel();
        }
        if let Some(old) = previous {
            // Requests already routed to the old version finish on it.
            self.retire(old);
        }
        Ok(())
    }

    /// The stored image `name_or_digest` names, or 404.
    async fn find_image(
        &self,
        name_or_digest: &str,
    ) -> Result<(Digest, Option<String>), GatewayError> {
        let unknown = || GatewayError::Missing(format!("no image {name_or_digest:?} in the store"));
        if let Ok(digest) = Digest::parse(name_or_digest) {
            let found = {
                let digest = digest.clone();
                self.on_images(move |store| store.image(&digest)).await?
            };
            return found.map(|_| (digest, None)).ok_or_else(unknown);
        }
        let name = pull::parse_reference(name_or_digest)
            .map_err(GatewayError::BadRequest)?
            .whole();
        let lookup = name.clone();
        let digest = self
            .on_images(move |store| store.named(&lookup))
            .await?
            .ok_or_else(unknown)?;
        Ok((digest, Some(name)))
    }

    /// `PUT /system/images`: names a stored image.
    async fn tag(&self, req: Request<Body>) -> Result<Response<Body>, GatewayError> {
        let request: TagRequest = read_json(req).await?;
        let (digest, _) = self.find_image(&request.source).await?;
        let target = pull::parse_reference(&request.target).map_err(GatewayError::BadRequest)?;
        let name = pull::local_name(&target)
            .ok_or_else(|| GatewayError::BadRequest("a name has a tag, not a digest".into()))?;
        let (key, image) = (name.clone(), digest.clone());
        if !self
            .on_images(move |store| store.name(&key, &image))
            .await?
        {
            return Err(GatewayError::Missing(format!(
                "no image {digest} in the store"
            )));
        }
        tracing::info!(%name, image = %digest, "image named");
        Ok(text(StatusCode::OK, format!("{name} → {digest}\n")))
    }

    /// `DELETE /system/images`: removes a name, and the image once no name
    /// and no function is left on it; refused while functions run it,
    /// unless forced (then only the names go).
    async fn remove_image(&self, req: Request<Body>) -> Result<Response<Body>, GatewayError> {
        let request: RemoveImageRequest = read_json(req).await?;
        let _serial = self.deploy_lock.lock().await;
        let (digest, name) = self.find_image(&request.image).await?;
        let users: Vec<String> = self
            .images_in_use()
            .into_iter()
            .filter(|(_, d)| *d == digest)
            .map(|(function, _)| function)
            .collect();
        let names = {
            let image = digest.clone();
            self.on_images(move |store| {
                Ok(store
                    .names()?
                    .into_iter()
                    .filter(|(_, d)| *d == image)
                    .map(|(n, _)| n)
                    .collect::<Vec<_>>())
            })
            .await?
        };
        // A name goes alone while the image has others; a digest (or the
        // last name) takes the image with it, which functions may not lose.
        let total = names.len();
        let untag: Vec<String> = match &name {
            Some(name) if total > 1 => vec![name.clone()],
            _ => names,
        };
        let takes_the_image = untag.len() == total;
        let mut users = users;
        if self.holds.holds_image(&digest) {
            users.push("a version still draining (or a deploy under way)".into());
        }
        if takes_the_image && !users.is_empty() && !request.force {
            return Err(GatewayError::Conflict(format!(
                "image {digest} is in use by {} (wisp rmi --force removes its names; the image goes once no function runs it)",
                users.join(", ")
            )));
        }
        for name in &untag {
            let key = name.clone();
            self.on_images(move |store| store.unname(&key)).await?;
        }
        let mut removed = RemovedImage {
            untagged: untag.clone(),
            deleted: None,
            bytes: 0,
        };
        if takes_the_image && users.is_empty() {
            let image = digest.clone();
            let pruned = self.on_images(move |store| store.remove(&image)).await?;
            removed.bytes = pruned
                .images
                .iter()
                .chain(&pruned.blobs)
                .chain(&pruned.layers)
                .map(|r| r.bytes)
                .sum();
            removed.deleted = Some(digest.to_string());
        }
        tracing::info!(image = %digest, untagged = ?removed.untagged, deleted = removed.deleted.is_some(), "image removed");
        json(StatusCode::OK, &removed)
    }

    /// `POST /system/registries`: checks a login against its registry,
    /// then saves it for later pulls.
    async fn login(&self, req: Request<Body>) -> Result<Response<Body>, GatewayError> {
        let request: LoginRequest = read_json(req).await?;
        let key = crate::credentials::registry_key(&request.registry);
        if key.is_empty() || key.contains('/') {
            return Err(GatewayError::BadRequest(format!(
                "{:?} is not a registry: expected host[:port]",
                request.registry.chars().take(100).collect::<String>()
            )));
        }
        let credentials = Credentials::Basic {
            username: request.username.clone(),
            password: request.password.clone(),
        };
        let mut insecure = self.insecure_registries.clone();
        if request.insecure {
            insecure.push(key.clone());
        }
        let host = if key == "docker.io" {
            "registry-1.docker.io"
        } else {
            key.as_str()
        };
        wisp_runner::image::pull::check_login(host, &credentials, &insecure)
            .await
            .map_err(PrepareError::from)?;
        self.logins
            .save(&key, &request.username, &request.password)
            .map_err(GatewayError::Logins)?;
        tracing::info!(registry = %key, username = %request.username, "registry login saved");
        Ok(text(StatusCode::OK, format!("logged in to {key}\n")))
    }

    /// Pulls through the backend, counting it in the metrics; a request
    /// without credentials uses the saved login or the docker config's.
    pub(crate) async fn pull_counted(
        &self,
        reference: &Reference,
        options: &PullOptions,
    ) -> Result<PulledArtifact, PrepareError> {
        let started = std::time::Instant::now();
        let mut options = options.clone();
        if matches!(options.auth, Credentials::Anonymous) {
            options.auth = self.logins.resolve(reference.registry()).await;
        }
        let result = self.backend.pull(reference, &options).await;
        let (outcome, downloaded) = match &result {
            Ok(pulled) => ("ok", pulled.report.downloaded),
            Err(PrepareError::Pull { failure, .. }) => (failure.as_str(), 0),
            Err(_) => ("invalid", 0),
        };
        self.metrics.pulled(started.elapsed(), outcome, downloaded);
        result
    }

    pub(crate) fn pull_settings(&self) -> ServerPullSettings {
        ServerPullSettings {
            insecure_registries: self.insecure_registries.clone(),
            registry_mirrors: self.registry_mirrors.clone(),
            max_artifact_bytes: self.max_artifact_bytes,
        }
    }

    /// `POST /system/images`: pulls an image (or wasm component) into the
    /// stores without deploying it.
    async fn pull(&self, req: Request<Body>) -> Result<Response<Body>, GatewayError> {
        let request: PullRequest = read_json(req).await?;
        let reference = request.reference()?;
        let mut options = request.pull_options(&reference, &self.pull_settings())?;
        let (sink, _, _tracked) = self.pulls.track(reference.whole(), None);
        options.progress = sink;
        let pulled = self.pull_counted(&reference, &options).await?;
        json(
            StatusCode::OK,
            &PullResponse::new(reference.whole(), &pulled),
        )
    }

    async fn delete(&self, name: &str) -> Result<Response<Body>, GatewayError> {
        let _serial = self.deploy_lock.lock().await;
        // A deploy in flight stops; a function that never ran is gone.
        let pending = self.pending.remove(name).map(|(_, p)| p);
        if let Some(pending) = &pending {
            pending.cancel();
        }
        // In a cluster, a function this node could not apply (its artifact
        // out of reach, say) is still deleted where it is recorded.
        if !self.functions.contains_key(name)
            && pending.is_none()
            && let Some(cluster) = self.cluster.get()
            && cluster.holds_function(name)
        {
            cluster.delete_function(name).await?;
            self.unstore(name).await?;
            tracing::info!(function = %name, "deleted (from the cluster; this node did not run it)");
            return Ok(text(StatusCode::OK, format!("deleted {name}\n")));
        }
        if !self.functions.contains_key(name) {
            return match pending {
                Some(_) => {
                    self.unstore(name).await?;
                    tracing::info!(function = %name, "deleted while it was pulling");
                    Ok(text(StatusCode::OK, format!("deleted {name}\n")))
                }
                None => Err(GatewayError::UnknownFunction(name.to_owned())),
            };
        }
        if let Some(cluster) = self.cluster.get() {
            cluster.delete_function(name).await?;
        }
        self.unstore(name).await?;
        if let Some((_, old)) = self.functions.remove(name) {
            old.metrics.silence();
            self.metrics.forget(&old.metrics);
            self.retire(old);
        }
        self.logs.remove(name);
        tracing::info!(function = %name, "deleted");
        Ok(text(StatusCode::OK, format!("deleted {name}\n")))
    }

    /// Removes the function `name` from the registry, with its revisions
    /// and an unfinished deploy; whether it was stored.
    pub(crate) async fn unstore(&self, name: &str) -> Result<bool, RegistryError> {
        let key = name.to_owned();
        self.registry.write(move |r| r.remove(&key)).await
    }

    /// Stops `old` once its requests are done (in the background); what it
    /// runs is held from prunes until then. Call it under the deploy lock.
    pub(crate) fn retire(&self, old: Arc<Function>) {
        let spec = &old.stored.spec;
        let image = spec.container.as_ref().map(|c| c.image.clone());
        let hold = self.holds.hold(spec.artifact.clone(), image);
        tokio::spawn(async move {
            old.pool.retire(StopReason::Deleted).await;
            drop(hold);
        });
    }

    /// `GET /system/logs?name=&tail=&follow=&since=&instance=`: the
    /// function's kept output as NDJSON, then (with `follow`) new lines as
    /// they are written.
    fn logs(&self, caller: &Caller, query: &str) -> Result<Response<Body>, GatewayError> {
        let query = LogQuery::parse(query)?;
        let name = self.key_for(caller, &query.name, query.namespace.as_deref())?;
        if !self.functions.contains_key(&name) {
            return Err(GatewayError::UnknownFunction(name));
        }
        // Subscribe first, so no line falls between the tail and the follow.
        let live = query.follow.then(|| self.logs.follow(&name));
        let mut kept = self
            .logs
            .tail(&name, None)
            .map_err(|e| GatewayError::BadRequest(format!("reading the log: {e}")))?;
        kept.retain(|line| query.selects(line));
        if let Some(n) = query.tail {
            kept.drain(..kept.len().saturating_sub(n));
        }
        let mut head = Vec::new();
        for line in &kept {
            if let Ok(json) = serde_json::to_vec(line) {
                head.extend_from_slice(&json);
                head.push(b'\n');
            }
        }
        let body = match live {
            None => full_body(head),
            Some(rx) => {
                let first = futures::stream::once(async move { bytes::Bytes::from(head) });
                let rest = futures::stream::unfold((rx, query), |(mut rx, query)| async move {
                    loop {
                        match rx.recv().await {
                            Ok(line) if query.selects(&line) => {
                                let mut json = serde_json::to_vec(&line).unwrap_or_default();
                                json.push(b'\n');
                                return Some((bytes::Bytes::from(json), (rx, query)));
                            }
                            Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                                continue;
                            }
                            Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                        }
                    }
                });
                let frames = first
                    .chain(rest)
                    .map(|b| Ok::<_, wisp_runner::backend::BodyError>(http_body::Frame::data(b)));
                http_body_util::StreamBody::new(frames).boxed_unsync()
            }
        };
        let mut response = Response::new(body);
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/x-ndjson"),
        );
        Ok(response)
    }

    /// Changes a function's scaling settings live (and in the registry).
    async fn scale(
        &self,
        name: &str,
        request: ScaleRequest,
    ) -> Result<Response<Body>, GatewayError> {
        // As in OpenFaaS, the path names the function, whatever serviceName
        // says.
        let _serial = self.deploy_lock.lock().await;
        let function = self.function(name)?;
        let mut spec = function.stored.spec.clone();
        request.apply(&mut spec.scaling)?;
        let stored = StoredFunction {
            spec,
            ..function.stored.clone()
        };
        if let Some(cluster) = self.cluster.get() {
            cluster.put_function(&stored, None).await?;
        }
        let copy = stored.clone();
        self.registry.write(move |r| r.put(&copy)).await?;
        let scaling = stored.spec.scaling();
        self.rescaled(&function, stored);
        let ignored: Vec<String> = request.unknown.keys().cloned().collect();
        let capped = if request.replicas_capped() {
            format!(
                "replicas {} capped at wisp's limit of {} instances\n",
                request.replicas.unwrap_or_default(),
                wisp_runner::spec::MAX_INSTANCES
            )
        } else {
            String::new()
        };
        tracing::info!(function = %name, min = scaling.min_instances, max = scaling.max_instances, ?ignored, "scaled");
        Ok(text(
            StatusCode::ACCEPTED,
            format!(
                "scaled {name}: min {} max {} concurrency {}\n{}{}",
                scaling.min_instances,
                scaling.max_instances,
                scaling.concurrency,
                capped,
                ignored_note(&ignored)
            ),
        ))
    }

    /// Routes to `function` with `stored`'s scaling from now on: the same
    /// pool and instances, its limits changed. Under the deploy lock.
    pub(crate) fn rescaled(&self, function: &Function, stored: StoredFunction) {
        function.pool.set_scaling(self.scaling_here(&stored.spec));
        let name = stored.spec.name.to_string();
        let updated = Arc::new(Function {
            stored,
            pool: function.pool.clone(),
            invocations: AtomicU64::new(function.invocations.load(Ordering::Relaxed)),
            metrics: function.metrics.clone(),
            script_name: function.script_name.clone(),
            secrets: function.secrets.clone(),
        });
        self.functions.insert(name, updated);
    }

    /// The image each deployed container function runs, by function.
    fn images_in_use(&self) -> Vec<(String, Digest)> {
        self.functions
            .iter()
            .filter_map(|f| {
                let image = f.stored.spec.container.as_ref()?.image.clone();
                Some((f.key().clone(), image))
            })
            .collect()
    }

    /// Runs `op` on the image store in tokio's blocking pool.
    pub(crate) async fn on_images<T: Send + 'static>(
        &self,
        op: impl FnOnce(&ImageStore) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, GatewayError> {
        let store = self.images.clone();
        let result = tokio::task::spawn_blocking(move || op(&store))
            .await
            .map_err(GatewayError::StoreTask)?;
        Ok(result?)
    }

    async fn images(&self) -> Result<Vec<ImageSummary>, GatewayError> {
        let (images, names) = self
            .on_images(|store| Ok((store.list()?, store.names()?)))
            .await?;
        let in_use = self.images_in_use();
        Ok(images
            .into_iter()
            .map(|image| {
                let mut functions: Vec<String> = in_use
                    .iter()
                    .filter(|(_, d)| *d == image.manifest_digest)
                    .map(|(name, _)| name.clone())
                    .collect();
                functions.sort();
                ImageSummary {
                    names: names
                        .iter()
                        .filter(|(_, d)| **d == image.manifest_digest)
                        .map(|(name, _)| name.clone())
                        .collect(),
                    digest: image.manifest_digest.to_string(),
                    size: image.layers.iter().map(|l| l.size).sum(),
                    layers: image
                        .layers
                        .iter()
                        .map(|l| LayerSummary {
                            diff_id: l.diff_id.to_string(),
                            size: l.size,
                        })
                        .collect(),
                    entrypoint: image.config.entrypoint,
                    cmd: image.config.cmd,
                    functions,
                }
            })
            .collect())
    }

    async fn upload(&self, req: Request<Body>) -> Result<Response<Body>, GatewayError> {
        let limit = self.max_artifact_bytes;
        if declares_more_than(req.headers(), limit) {
            return Err(GatewayError::PayloadTooLarge { limit });
        }
        let stream = req
            .into_body()
            .into_data_stream()
            .map(|chunk| chunk.map_err(|e| e.to_string()));
        let digest = self.artifacts.put_stream(stream, limit).await?;
        let size = std::fs::metadata(self.artifacts.blob_path(&digest)).map_or(0, |m| m.len());
        tracing::info!(%digest, size, "artifact stored");
        json(
            StatusCode::CREATED,
            &ArtifactUploaded {
                digest: digest.to_string(),
                size,
            },
        )
    }
}

/// `dryRun` of `POST /system/prune?dryRun=true`.
fn dry_run(query: &str) -> Result<bool, GatewayError> {
    let mut dry_run = false;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=').unwrap_or((pair, "")) {
            ("dryRun", "" | "true" | "1") => dry_run = true,
            ("dryRun", "false" | "0") => dry_run = false,
            _ => {
                let pair: String = pair.chars().take(80).collect();
                return Err(GatewayError::BadRequest(format!(
                    "unknown prune parameter {pair:?} (expected dryRun=true or dryRun=false)"
                )));
            }
        }
    }
    Ok(dry_run)
}

/// The query of `GET /system/logs`, OpenFaaS's log provider parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LogQuery {
    name: String,
    namespace: Option<String>,
    /// Only this instance's lines.
    instance: Option<String>,
    /// The last N kept lines; `None`: all of them (`tail` ≤ 0 or absent).
    tail: Option<usize>,
    follow: bool,
    /// Only lines written at or after this time (Unix milliseconds).
    since_ms: Option<i64>,
}

impl LogQuery {
    /// Parses a (percent-encoded) query. `name` is required; a repeated
    /// parameter counts with its last value and unknown ones are ignored, as
    /// OpenFaaS's provider does; a value of the wrong type is refused.
    fn parse(query: &str) -> Result<LogQuery, GatewayError> {
        let bad = |key: &str, value: &str, expected: &str| {
            let value: String = value.chars().take(40).collect();
            GatewayError::BadRequest(format!("{key}={value:?} is not {expected}"))
        };
        let mut name = None;
        let mut parsed = LogQuery {
            name: String::new(),
            namespace: None,
            instance: None,
            tail: None,
            follow: false,
            since_ms: None,
        };
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            match &*key {
                "name" => name = Some(value.into_owned()),
                "namespace" => parsed.namespace = Some(value.into_owned()),
                "instance" => parsed.instance = Some(value.into_owned()),
                "tail" => {
                    // Past i64 a tail still means "all" (beyond any log) or
                    // "unlimited" (≤ 0): the spec's integer has no bounds.
                    let n = match value.parse::<i64>() {
                        Ok(n) => n,
                        Err(e) if *e.kind() == IntErrorKind::PosOverflow => i64::MAX,
                        Err(e) if *e.kind() == IntErrorKind::NegOverflow => 0,
                        Err(_) => return Err(bad("tail", &value, "a whole number")),
                    };
                    parsed.tail = usize::try_from(n).ok().filter(|&n| n > 0);
                }
                "follow" => {
                    parsed.follow = match &*value {
                        "true" => true,
                        "false" => false,
                        other => return Err(bad("follow", other, "true or false")),
                    }
                }
                "since" => {
                    let since = wisp_runner::store::logs::parse_rfc3339(&value)
                        .ok_or_else(|| bad("since", &value, "an RFC 3339 date-time"))?;
                    parsed.since_ms = Some(since);
                }
                _ => {}
            }
        }
        parsed.name = name.ok_or_else(|| GatewayError::BadRequest("name= is required".into()))?;
        Ok(parsed)
    }

    /// Whether `line` passes the `instance` and `since` filters.
    fn selects(&self, line: &wisp_runner::store::logs::LogLine) -> bool {
        let instance = self.instance.as_deref().is_none_or(|i| i == line.instance);
        let since = self.since_ms.is_none_or(|since| {
            wisp_runner::store::logs::parse_rfc3339(&line.timestamp).is_none_or(|at| at >= since)
        });
        instance && since
    }
}

impl App {
    fn status(&self, function: &Function) -> FunctionStatus {
        let mut status = FunctionStatus::new(
            &function.stored,
            function.invocations.load(Ordering::Relaxed),
            function.pool.instances() as u64,
        );
        if let Some(pending) = self.pending.get(&status.name) {
            status.deploying = Some(self.deploying(&pending));
        }
        status
    }

    /// A function whose first deploy has not finished.
    fn pending_status(&self, pending: &PendingDeploy) -> FunctionStatus {
        let mut status = FunctionStatus::new(&StoredFunction::new(pending.draft.clone()), 0, 0);
        status.image = pending.reference.clone();
        status.container_image = None;
        let deploying = self.deploying(pending);
        status.state = match deploying.error {
            Some(_) => FunctionState::Failed,
            None => FunctionState::Pulling,
        };
        status.deploying = Some(deploying);
        status
    }

    fn deploying(&self, pending: &PendingDeploy) -> DeployingStatus {
        DeployingStatus {
            image: pending.reference.clone(),
            error: match pending.current() {
                DeployState::Failed(reason) => Some(reason),
                _ => None,
            },
            pull: self.pulls.of_function(pending.draft.name.as_str()),
        }
    }
}

async fn read_json<T: DeserializeOwned>(req: Request<Body>) -> Result<T, GatewayError> {
    let bytes = read_body(req).await?;
    serde_json::from_slice(&bytes)
        .map_err(|e| GatewayError::BadRequest(format!("invalid JSON: {e}")))
}

/// [`read_json`] of an optional body: `None` if there is none.
pub(crate) async fn read_optional_json<T: DeserializeOwned>(
    req: Request<Body>,
) -> Result<Option<T>, GatewayError> {
    parse_optional_json(&read_body(req).await?)
}

/// An optional JSON body: `None` when empty.
fn parse_optional_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<Option<T>, GatewayError> {
    if bytes.is_empty() {
        return Ok(None);
    }
    serde_json::from_slice(bytes)
        .map(Some)
        .map_err(|e| GatewayError::BadRequest(format!("invalid JSON: {e}")))
}

pub(crate) async fn read_body(req: Request<Body>) -> Result<bytes::Bytes, GatewayError> {
    wisp_runner::body::collect(req.into_body(), MAX_JSON_BYTES)
        .await
        .map_err(
            |e| match e.downcast_ref::<wisp_runner::body::BodyTooLarge>() {
                Some(_) => GatewayError::PayloadTooLarge {
                    limit: MAX_JSON_BYTES,
                },
                None => GatewayError::BadRequest(format!("reading the body: {e}")),
            },
        )
}

/// The line an answer adds when a request had fields no one defines
/// (ignored, as the spec's open objects allow, but named so that a misspelt
/// one is noticed); empty if it had none.
/// A deploy by reference whose pull has started.
struct StartedDeploy {
    pending: Arc<PendingDeploy>,
    task: tokio::task::JoinHandle<Result<(), GatewayError>>,
    progress: tokio::sync::watch::Receiver<wisp_runner::image::pull::PullProgress>,
    /// The request as the registry keeps it once it is answered 202.
    kept: Vec<u8>,
}

/// The answer to a deploy that is done: 202 for a new function (OpenFaaS's),
/// 200 for an update.
fn deployed(name: &str, update: bool, ignored: &[String]) -> Response<Body> {
    let status = if update {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    text(
        status,
        format!("deployed {name}\n{}", ignored_note(ignored)),
    )
}

fn ignored_note(fields: &[String]) -> String {
    if fields.is_empty() {
        return String::new();
    }
    let names: Vec<String> = fields
        .iter()
        .take(10)
        .map(|f| format!("{:?}", f.chars().take(40).collect::<String>()))
        .collect();
    let more = if fields.len() > names.len() {
        ", …"
    } else {
        ""
    };
    format!("ignored unknown fields: {}{more}\n", names.join(", "))
}

/// The last value of `key` in a (percent-encoded) query.
/// A yes/no query parameter (`key`, `key=true`, `key=1`; `key=false`,
/// `key=0`), `false` when absent.
pub(crate) fn flag(query: Option<&str>, key: &str) -> Result<bool, GatewayError> {
    match query_param(query, key).as_deref() {
        None | Some("false" | "0") => Ok(false),
        Some("" | "true" | "1") => Ok(true),
        Some(other) => {
            let other: String = other.chars().take(40).collect();
            Err(GatewayError::BadRequest(format!(
                "{key}={other:?}: expected true or false"
            )))
        }
    }
}

pub(crate) fn query_param(query: Option<&str>, key: &str) -> Option<String> {
    form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .filter(|(k, _)| k == key)
        .last()
        .map(|(_, v)| v.into_owned())
}

pub(crate) fn json<T: Serialize>(
    status: StatusCode,
    value: &T,
) -> Result<Response<Body>, GatewayError> {
    let bytes = serde_json::to_vec(value)
        .map_err(|e| GatewayError::BadRequest(format!("encoding the response: {e}")))?;
    let mut response = Response::new(full_body(bytes));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

/// `file`'s bytes as a body, read as it is sent (an artifact may be large).
fn file_body(file: tokio::fs::File) -> Body {
    use tokio::io::AsyncReadExt as _;
    const CHUNK: usize = 64 * 1024;
    let chunks = futures::stream::unfold(Some(file), |file| async move {
        let mut file = file?;
        let mut chunk = bytes::BytesMut::with_capacity(CHUNK);
        match file.read_buf(&mut chunk).await {
            Ok(0) => None,
            Ok(_) => Some((Ok(hyper::body::Frame::data(chunk.freeze())), Some(file))),
            // The error ends the body (and the peer's digest check fails).
            Err(e) => Some((Err(wisp_runner::backend::BodyError::from(e)), None)),
        }
    });
    http_body_util::StreamBody::new(chunks).boxed_unsync()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn log_queries_parse() {
        let q = LogQuery::parse("name=hello&tail=5&follow=true&instance=i%201").unwrap();
        assert_eq!(
            q,
            LogQuery {
                name: "hello".into(),
                namespace: None,
                instance: Some("i 1".into()),
                tail: Some(5),
                follow: true,
                since_ms: None,
            }
        );
        // The spec: tail <= 0 means unlimited. Unknown parameters are ignored.
        let all = LogQuery::parse("name=f&tail=3069321237141139264372736").unwrap();
        assert_eq!(all.tail, usize::try_from(i64::MAX).ok());
        for unlimited in [
            "name=f&tail=0",
            "name=f&tail=-3",
            "name=f&tail=-99999999999999999999",
            "name=f&x-other=1",
        ] {
            assert_eq!(
                LogQuery::parse(unlimited).unwrap().tail,
                None,
                "{unlimited}"
            );
        }
        let q = LogQuery::parse("name=f&since=1970-01-01T00%3A00%3A01%2B00%3A00&name=g").unwrap();
        assert_eq!((q.name.as_str(), q.since_ms), ("g", Some(1000)));
        for bad in [
            "",
            "tail=1",
            "name=f&tail=x",
            "name=f&tail=",
            "name=f&follow=yes",
            "name=f&follow=1",
            "name=f&since=yesterday",
        ] {
            let err = LogQuery::parse(bad).unwrap_err();
            assert_eq!(err.status(), StatusCode::BAD_REQUEST, "{bad}: {err}");
        }
        assert_eq!(
            LogQuery::parse("name=f&namespace=team-a")
                .unwrap()
                .namespace
                .as_deref(),
            Some("team-a")
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn any_query_parses_or_is_a_400(query in "\\PC{0,64}", pairs in "([a-z]{1,6}=[a-z0-9%+:-]{0,12}&?){0,6}") {
            for q in [query.as_str(), pairs.as_str()] {
                if let Err(e) = LogQuery::parse(q) {
                    prop_assert_eq!(e.status(), StatusCode::BAD_REQUEST);
                }
            }
        }

        #[test]
        fn encoded_queries_decode(name in "\\PC{1,20}", tail in -5i64..100, follow: bool) {
            let query: String = form_urlencoded::Serializer::new(String::new())
                .append_pair("name", &name)
                .append_pair("tail", &tail.to_string())
                .append_pair("follow", &follow.to_string())
                .finish();
            let q = LogQuery::parse(&query).unwrap();
            prop_assert_eq!(q.name, name);
            prop_assert_eq!(q.tail, usize::try_from(tail).ok().filter(|&n| n > 0));
            prop_assert_eq!(q.follow, follow);
        }
    }
}
