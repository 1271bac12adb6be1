//! The control API under `/system/*` (the caller is already authorized):
//! deploy, update, list, inspect and delete functions, upload artifacts,
//! list images, prune (see [`crate::prune`]), report the gateway's
//! version. Deploys are atomic: the artifact is checked and compiled first,
//! then the registry is written in one transaction, then routing switches
//! to the new version while the old one drains. A deploy holds its
//! artifact from before it is checked, and an old version what it runs
//! until it has drained, so that no prune takes them away.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::StreamExt;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use serde::Serialize;
use serde::de::DeserializeOwned;
use wisp_runner::backend::{Body, full_body};
use wisp_runner::image::{ImageStore, StoreError};
use wisp_runner::pool::{Pool, StopReason};
use wisp_runner::spec::{Digest, FunctionKind};

use crate::api::{
    ArtifactUploaded, DeleteFunctionRequest, FunctionDeployment, FunctionStatus, GatewayInfo,
    ImageSummary, LayerSummary, ScaleRequest,
};
use crate::registry::StoredFunction;
use crate::rescue::GatewayError;
use crate::route::Route;
use crate::server::{App, Function, declares_more_than, text};

/// Largest JSON body the control API reads.
const MAX_JSON_BYTES: u64 = 1024 * 1024;

impl App {
    pub(crate) async fn control(
        &self,
        route: Route<'_>,
        req: Request<Body>,
    ) -> Result<Response<Body>, GatewayError> {
        let method = req.method().clone();
        match (route, method) {
            (Route::SystemInfo, Method::GET) => json(StatusCode::OK, &GatewayInfo::current()),
            (Route::SystemInfo, _) => Err(GatewayError::MethodNotAllowed { allow: "GET" }),
            (Route::Functions, Method::GET) => {
                let mut list: Vec<FunctionStatus> =
                    self.functions.iter().map(|f| status(f.value())).collect();
                list.sort_by(|a, b| a.name.cmp(&b.name));
                json(StatusCode::OK, &list)
            }
            (Route::Functions, Method::POST) => self.deploy(req, false).await,
            (Route::Functions, Method::PUT) => self.deploy(req, true).await,
            (Route::Functions, Method::DELETE) => {
                let request: DeleteFunctionRequest = read_json(req).await?;
                self.delete(&request.function_name).await
            }
            (Route::Functions, _) => Err(GatewayError::MethodNotAllowed {
                allow: "GET, POST, PUT, DELETE",
            }),
            (Route::Function(name), Method::GET) => {
                json(StatusCode::OK, &status(&*self.function(name)?))
            }
            (Route::Function(_), _) => Err(GatewayError::MethodNotAllowed { allow: "GET" }),
            (Route::Artifacts, Method::POST) => self.upload(req).await,
            (Route::Logs, Method::GET) => self.logs(req.uri().query().unwrap_or("")),
            (Route::Logs, _) => Err(GatewayError::MethodNotAllowed { allow: "GET" }),
            (Route::Artifacts, _) => Err(GatewayError::MethodNotAllowed { allow: "POST" }),
            (Route::ScaleFunction(name), Method::POST) => {
                let request: ScaleRequest = read_json(req).await?;
                self.scale(name, request).await
            }
            (Route::ScaleFunction(_), _) => Err(GatewayError::MethodNotAllowed { allow: "POST" }),
            (Route::Images, Method::GET) => json(StatusCode::OK, &self.images().await?),
            (Route::Images, _) => Err(GatewayError::MethodNotAllowed { allow: "GET" }),
            (Route::Prune, Method::POST) => {
                let dry_run = dry_run(req.uri().query().unwrap_or(""))?;
                json(StatusCode::OK, &self.prune(dry_run).await?)
            }
            (Route::Prune, _) => Err(GatewayError::MethodNotAllowed { allow: "POST" }),
            (_, _) => Err(GatewayError::NotFound(req.uri().path().to_owned())),
        }
    }

    async fn deploy(
        &self,
        req: Request<Body>,
        update: bool,
    ) -> Result<Response<Body>, GatewayError> {
        let deployment: FunctionDeployment = read_json(req).await?;
        // Validate everything cheap before compiling anything.
        let draft = deployment.to_spec(FunctionKind::WasmHttp)?;
        // Under the lock, so that a prune either sees the hold or has
        // finished (and `prepare` finds the artifact gone).
        let _hold = {
            let _serial = self.deploy_lock.lock().await;
            self.holds.hold(draft.artifact.clone(), None)
        };
        let prepared = self.backend.prepare(&draft.artifact).await?;
        let spec = deployment.with_prepared(draft, prepared)?;
        let kind = spec.kind;
        let name = spec.name.to_string();

        let _serial = self.deploy_lock.lock().await;
        let previous = self.functions.get(&name).map(|f| f.clone());
        if update && previous.is_none() {
            return Err(GatewayError::UnknownFunction(name));
        }
        let stored = StoredFunction::new(spec);
        self.registry.put(&stored)?;
        let carried = previous
            .as_ref()
            .map_or(0, |f| f.invocations.load(Ordering::Relaxed));
        let function = Arc::new(Function {
            pool: Arc::new(Pool::new(
                stored.spec.clone(),
                self.backend.clone(),
                Arc::new(self.metrics.function(&name)),
            )),
            metrics: self.metrics.function(&name),
            stored,
            invocations: AtomicU64::new(carried),
        });
        tracing::info!(function = %name, kind = kind.as_str(), artifact = %function.stored.spec.artifact, replaced = previous.is_some(), "deployed");
        self.functions.insert(name.clone(), function);
        if let Some(old) = previous {
            // Requests already routed to the old version finish on it.
            self.retire(old);
        }
        let status = if update {
            StatusCode::OK
        } else {
            StatusCode::ACCEPTED
        };
        Ok(text(status, format!("deployed {name}\n")))
    }

    async fn delete(&self, name: &str) -> Result<Response<Body>, GatewayError> {
        let _serial = self.deploy_lock.lock().await;
        if !self.functions.contains_key(name) {
            return Err(GatewayError::UnknownFunction(name.to_owned()));
        }
        self.registry.remove(name)?;
        if let Some((_, old)) = self.functions.remove(name) {
            self.retire(old);
        }
        self.metrics.forget(name);
        self.logs.remove(name);
        tracing::info!(function = %name, "deleted");
        Ok(text(StatusCode::OK, format!("deleted {name}\n")))
    }

    /// Stops `old` once its requests are done (in the background); what it
    /// runs is held from prunes until then. Call it under the deploy lock.
    fn retire(&self, old: Arc<Function>) {
        let spec = &old.stored.spec;
        let image = spec.container.as_ref().map(|c| c.image.clone());
        let hold = self.holds.hold(spec.artifact.clone(), image);
        tokio::spawn(async move {
            old.pool.retire(StopReason::Deleted).await;
            drop(hold);
        });
    }

    /// `GET /system/logs?name=&tail=&follow=`: the function's kept output
    /// as NDJSON, then (with `follow`) new lines as they are written.
    fn logs(&self, query: &str) -> Result<Response<Body>, GatewayError> {
        let mut name = None;
        let mut tail = None;
        let mut follow = false;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "name" => name = Some(value.to_owned()),
                "tail" => {
                    tail = Some(value.parse::<usize>().map_err(|_| {
                        GatewayError::BadRequest(format!("tail={value:?} is not a number"))
                    })?)
                }
                "follow" => follow = matches!(value, "" | "true" | "1"),
                "namespace" | "since" | "instance" => {}
                other => {
                    return Err(GatewayError::BadRequest(format!(
                        "unknown log parameter {other:?}"
                    )));
                }
            }
        }
        let name = name.ok_or_else(|| GatewayError::BadRequest("name= is required".into()))?;
        if !self.functions.contains_key(&name) {
            return Err(GatewayError::UnknownFunction(name));
        }
        // Subscribe first, so no line falls between the tail and the follow.
        let live = follow.then(|| self.logs.follow(&name));
        let kept = self
            .logs
            .tail(&name, tail)
            .map_err(|e| GatewayError::BadRequest(format!("reading the log: {e}")))?;
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
                let rest = futures::stream::unfold(rx, |mut rx| async move {
                    loop {
                        match rx.recv().await {
                            Ok(line) => {
                                let mut json = serde_json::to_vec(&line).unwrap_or_default();
                                json.push(b'\n');
                                return Some((bytes::Bytes::from(json), rx));
                            }
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
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
        if request.service_name.as_deref().is_some_and(|s| s != name) {
            return Err(GatewayError::BadRequest(format!(
                "serviceName {:?} does not match the path's {name:?}",
                request.service_name.unwrap_or_default()
            )));
        }
        let _serial = self.deploy_lock.lock().await;
        let function = self.function(name)?;
        let mut spec = function.stored.spec.clone();
        request.apply(&mut spec.scaling)?;
        let stored = StoredFunction {
            spec,
            created_at: function.stored.created_at,
        };
        self.registry.put(&stored)?;
        function.pool.set_scaling(stored.spec.scaling());
        let scaling = stored.spec.scaling();
        let updated = Arc::new(Function {
            stored,
            pool: function.pool.clone(),
            invocations: AtomicU64::new(function.invocations.load(Ordering::Relaxed)),
            metrics: function.metrics.clone(),
        });
        self.functions.insert(name.to_owned(), updated);
        tracing::info!(function = %name, min = scaling.min_instances, max = scaling.max_instances, "scaled");
        Ok(text(
            StatusCode::ACCEPTED,
            format!(
                "scaled {name}: min {} max {} concurrency {}\n",
                scaling.min_instances, scaling.max_instances, scaling.concurrency
            ),
        ))
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
    async fn on_images<T: Send + 'static>(
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
        let images = self.on_images(|store| store.list()).await?;
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

fn status(function: &Function) -> FunctionStatus {
    FunctionStatus::new(
        &function.stored,
        function.invocations.load(Ordering::Relaxed),
        function.pool.instances() as u64,
    )
}

async fn read_json<T: DeserializeOwned>(req: Request<Body>) -> Result<T, GatewayError> {
    let bytes = wisp_runner::body::collect(req.into_body(), MAX_JSON_BYTES)
        .await
        .map_err(
            |e| match e.downcast_ref::<wisp_runner::body::BodyTooLarge>() {
                Some(_) => GatewayError::PayloadTooLarge {
                    limit: MAX_JSON_BYTES,
                },
                None => GatewayError::BadRequest(format!("reading the body: {e}")),
            },
        )?;
    serde_json::from_slice(&bytes)
        .map_err(|e| GatewayError::BadRequest(format!("invalid JSON: {e}")))
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Result<Response<Body>, GatewayError> {
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
