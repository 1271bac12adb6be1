//! Secrets, as OpenFaaS has them: values kept in the registry
//! ([`crate::registry::Registry::put_secret`]), managed through
//! `/system/secrets` (which lists names, never values), and read by the
//! functions that name them as files in `/var/openfaas/secrets`.
//!
//! A function version gets a directory of its own, [`SecretsDir`], made
//! when the version is installed and removed once the version is gone;
//! the container backend binds it read-only into each sandbox, the wasm
//! backend preopens it read-only. So updating a secret rolls the functions
//! that use it: each gets a new version with a new directory, and the old
//! version drains with the values it started with. Nothing here logs a
//! value, and no error quotes one.

use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use http::{Request, Response, StatusCode};
use wisp_runner::backend::Body;

use wisp_runner::spec::FunctionSpec;

use crate::api::{Secret, SecretDescription};
use crate::cluster::Cluster;
use crate::cluster::secrets::{SealedSecret, Sealer};
use crate::namespaces::{Caller, of};
use crate::registry::{Registry, RegistryError, SecretWrite};
use crate::rescue::GatewayError;
use crate::server::{App, Function, text};

/// Where the versions' secret directories are made.
pub struct SecretFiles {
    root: PathBuf,
    next: AtomicU64,
}

/// One function version's secrets, one read-only file each; removed when
/// dropped (when the version is gone).
#[derive(Debug)]
pub struct SecretsDir {
    path: PathBuf,
}

impl SecretsDir {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SecretsDir {
    fn drop(&mut self) {
        // The directory is read-only: a server that is not root could not
        // empty it otherwise.
        let _ = std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(0o700));
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            tracing::warn!(dir = %self.path.display(), error = %e, "removing a function's secrets");
        }
    }
}

impl SecretFiles {
    /// Opens `root` (in the data dir, which only the server may enter),
    /// removing the directories a previous server left.
    pub fn open(root: PathBuf) -> io::Result<SecretFiles> {
        if root.exists() {
            for entry in std::fs::read_dir(&root)? {
                let path = entry?.path();
                let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700));
                std::fs::remove_dir_all(&path)?;
            }
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&root)?;
        Ok(SecretFiles {
            root,
            next: AtomicU64::new(1),
        })
    }

    /// Writes the secrets of the function `spec` (from its namespace)
    /// into a new directory, or `None` if it has none. A secret missing
    /// from the registry is an error naming it on a deploy (`deploying`);
    /// otherwise (a restart, a roll, after a forced delete) it is left out
    /// and logged.
    pub fn make(
        &self,
        registry: &Registry,
        spec: &FunctionSpec,
        deploying: bool,
    ) -> Result<Option<SecretsDir>, GatewayError> {
        let (function, names) = (spec.name.as_str(), &spec.secrets);
        if names.is_empty() {
            return Ok(None);
        }
        let mut values = Vec::with_capacity(names.len());
        for name in names {
            match registry.secret(of(spec), name)? {
                Some(value) => values.push((name, value)),
                None if deploying => return Err(missing(of(spec), name)),
                None => {
                    tracing::warn!(function, secret = %name, "the function's secret was deleted: its instances start without it");
                }
            }
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let dir = SecretsDir {
            path: self.root.join(format!("{function}.{n}")),
        };
        let write = || -> io::Result<()> {
            std::fs::DirBuilder::new().mode(0o700).create(&dir.path)?;
            for (name, value) in &values {
                // Readable by the handler whatever uid it runs as: nothing
                // else reaches this directory (the data dir is 0700).
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o444)
                    .open(dir.path.join(name))?;
                io::Write::write_all(&mut file, value)?;
            }
            std::fs::set_permissions(&dir.path, std::fs::Permissions::from_mode(0o555))
        };
        write().map_err(|e| {
            GatewayError::Conflict(format!("writing the secrets of function {function}: {e}"))
        })?;
        Ok(Some(dir))
    }
}

/// The error for a secret that does not exist.
pub fn missing(namespace: &str, name: &str) -> GatewayError {
    GatewayError::BadRequest(format!(
        "secret {name:?} does not exist in namespace {namespace}: create it first (`wisp secret create {name}`)"
    ))
}

/// Reads a secret request's JSON without quoting any of it in an error:
/// serde's messages may hold a piece of the value.
fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, GatewayError> {
    serde_json::from_slice(bytes).map_err(|e| {
        let message = e.to_string();
        let detail = if message.starts_with("missing field") {
            message
                .split(" at line")
                .next()
                .unwrap_or("a field is missing")
                .to_owned()
        } else {
            match e.classify() {
                serde_json::error::Category::Data => {
                    "name, namespace, value and rawValue are strings".to_owned()
                }
                _ => format!("not JSON (line {}, column {})", e.line(), e.column()),
            }
        };
        GatewayError::BadRequest(format!("invalid secret: {detail}"))
    })
}

impl App {
    /// `GET/POST/PUT/DELETE /system/secrets`.
    /// The secret's namespace is the body's (or `?namespace=`), else the
    /// caller's.
    pub(crate) async fn secrets(
        &self,
        caller: &Caller,
        req: Request<Body>,
    ) -> Result<Response<Body>, GatewayError> {
        let method = req.method().clone();
        let force = crate::control::flag(req.uri().query(), "force")?;
        let query = crate::control::query_param(req.uri().query(), "namespace");
        let namespace_of = |named: Option<&str>| -> Result<String, GatewayError> {
            let namespace = caller.namespace(query.as_deref().or(named))?;
            self.existing_namespace(&namespace)?;
            Ok(namespace)
        };
        match method {
            http::Method::GET => {
                let namespace = namespace_of(None)?;
                let list: Vec<SecretDescription> = self
                    .registry
                    .secret_names(&namespace)?
                    .into_iter()
                    .map(|name| SecretDescription {
                        name,
                        namespace: Some(namespace.clone()),
                    })
                    .collect();
                crate::control::json(StatusCode::OK, &list)
            }
            http::Method::POST | http::Method::PUT => {
                let secret: Secret = parse(&crate::control::read_body(req).await?)?;
                let value = secret.checked_value()?;
                let namespace = namespace_of(secret.namespace.as_deref())?;
                self.write_secret(
                    &namespace,
                    &secret.name,
                    &value,
                    method == http::Method::PUT,
                )
                .await
            }
            http::Method::DELETE => {
                let secret: SecretDescription = parse(&crate::control::read_body(req).await?)?;
                secret.check()?;
                let namespace = namespace_of(secret.namespace.as_deref())?;
                self.delete_secret(&namespace, &secret.name, force).await
            }
            _ => Err(GatewayError::MethodNotAllowed {
                allow: "GET, POST, PUT, DELETE",
            }),
        }
    }

    async fn write_secret(
        &self,
        namespace: &str,
        name: &str,
        value: &[u8],
        update: bool,
    ) -> Result<Response<Body>, GatewayError> {
        let _serial = self.deploy_lock.lock().await;
        let write = if update {
            SecretWrite::Update
        } else {
            SecretWrite::Create
        };
        // The cluster's record first (it decides), then this node's copy.
        let (go, write) = match self.cluster.get() {
            Some(cluster) => {
                let sealed = SealedSecret {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                    sealed: Sealer::new(&self.token, cluster.name())?
                        .seal(namespace, name, value)?,
                };
                let held = cluster.write_secret(&sealed, update).await?;
                (held, SecretWrite::Replace)
            }
            None => (true, write),
        };
        let (ns, key, copy) = (namespace.to_owned(), name.to_owned(), value.to_vec());
        let written = go
            && self
                .registry
                .write(move |r| r.put_secret(&ns, &key, &copy, write))
                .await?;
        if !written {
            return Err(if update {
                GatewayError::Missing(format!(
                    "secret {name:?} does not exist in namespace {namespace}"
                ))
            } else {
                GatewayError::Conflict(format!(
                    "secret {name:?} already exists in namespace {namespace}: update it with PUT (`wisp secret update {name}`)"
                ))
            });
        }
        if !update {
            tracing::info!(secret = %name, %namespace, "secret created");
            return Ok(text(
                StatusCode::CREATED,
                format!("created secret {name}\n"),
            ));
        }
        let rolled = self.roll_users(namespace, name)?;
        tracing::info!(secret = %name, %namespace, ?rolled, "secret updated");
        let note = if rolled.is_empty() {
            String::new()
        } else {
            format!("; new instances of {} read it", rolled.join(", "))
        };
        Ok(text(
            StatusCode::OK,
            format!("updated secret {name}{note}\n"),
        ))
    }

    async fn delete_secret(
        &self,
        namespace: &str,
        name: &str,
        force: bool,
    ) -> Result<Response<Body>, GatewayError> {
        let _serial = self.deploy_lock.lock().await;
        let mut users: Vec<String> = self
            .users_of(namespace, name)
            .iter()
            .map(|f| f.stored.spec.name.to_string())
            .collect();
        users.extend(
            self.pending
                .iter()
                .filter(|p| of(&p.draft) == namespace && p.draft.secrets.iter().any(|s| s == name))
                .map(|p| p.key().clone()),
        );
        users.sort();
        users.dedup();
        if !users.is_empty() && !force {
            return Err(GatewayError::Conflict(format!(
                "secret {name:?} is used by {}: deploy them without it first, or delete it with ?force=true (`wisp secret rm --force`; their running instances keep it, their next deploy fails)",
                users.join(", ")
            )));
        }
        let held = match self.cluster.get() {
            Some(cluster) => cluster.delete_secret(namespace, name).await?,
            None => false,
        };
        let existed = self.remove_secret_locally(namespace, name).await? || held;
        if !existed {
            return Err(GatewayError::Missing(format!(
                "secret {name:?} does not exist in namespace {namespace}"
            )));
        }
        tracing::info!(secret = %name, %namespace, forced_for = ?users, "secret deleted");
        let mut response = Response::new(wisp_runner::backend::empty_body());
        *response.status_mut() = StatusCode::NO_CONTENT;
        Ok(response)
    }

    /// Gives the functions that read secret `name` of `namespace` a new
    /// version: new instances read its new value, the old ones drain with
    /// the one they started with. Their names.
    fn roll_users(&self, namespace: &str, name: &str) -> Result<Vec<String>, GatewayError> {
        let mut rolled = Vec::new();
        for old in self.users_of(namespace, name) {
            let fresh = Arc::new(self.new_function(old.stored.clone(), Some(&old), false)?);
            let function = old.stored.spec.name.to_string();
            self.functions.insert(function.clone(), fresh);
            self.retire(old);
            rolled.push(function);
        }
        Ok(rolled)
    }

    /// Removes the secret from this node's registry; whether it was there.
    async fn remove_secret_locally(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<bool, RegistryError> {
        let (ns, key) = (namespace.to_owned(), name.to_owned());
        self.registry
            .write(move |r| r.remove_secret(&ns, &key))
            .await
    }

    /// In a cluster: a secret another node wrote (or this one: then it is
    /// the copy already), applied to this node's copy.
    pub(crate) async fn apply_secret(&self, cluster: &Cluster, secret: &SealedSecret) {
        let (namespace, name) = (secret.namespace.as_str(), secret.name.as_str());
        let value = match Sealer::new(&self.token, cluster.name()) {
            Ok(sealer) => match sealer.open(secret) {
                Ok(value) => value,
                Err(e) => {
                    tracing::error!(error = %e, "a secret from the cluster is not applied; this node keeps its copy");
                    return;
                }
            },
            Err(e) => {
                tracing::error!(error = %e, "secrets cannot be opened");
                return;
            }
        };
        let _serial = self.deploy_lock.lock().await;
        let (ns, key) = (namespace.to_owned(), name.to_owned());
        let applied = self
            .registry
            .write(move |r| {
                let current = r.secret(&ns, &key)?;
                if current.as_deref() == Some(value.as_slice()) {
                    return Ok(None);
                }
                r.put_secret(&ns, &key, &value, SecretWrite::Replace)?;
                Ok(Some(current.is_some()))
            })
            .await;
        match applied {
            Ok(None) => {}
            Ok(Some(updated)) => {
                let rolled = if updated {
                    self.roll_users(namespace, name).unwrap_or_else(|e| {
                        tracing::warn!(secret = %name, %namespace, error = %e, "rolling the functions that read a secret");
                        Vec::new()
                    })
                } else {
                    Vec::new()
                };
                tracing::info!(secret = %name, %namespace, ?rolled, "secret written on another node");
            }
            Err(e) => {
                tracing::error!(secret = %name, %namespace, error = %e, "storing a secret from the cluster");
            }
        }
    }

    /// In a cluster: a secret another node deleted.
    pub(crate) async fn apply_secret_delete(&self, namespace: &str, name: &str) {
        let _serial = self.deploy_lock.lock().await;
        match self.remove_secret_locally(namespace, name).await {
            Ok(true) => {
                tracing::info!(secret = %name, %namespace, "secret deleted on another node")
            }
            Ok(false) => {}
            Err(e) => {
                tracing::error!(secret = %name, %namespace, error = %e, "removing a secret deleted on another node")
            }
        }
    }

    /// In a cluster: every secret etcd holds. This node's secrets it does
    /// not hold were deleted while the node was away — or, at the node's
    /// first join (`joined` false), are published to the cluster.
    pub(crate) async fn apply_secrets_snapshot(
        &self,
        cluster: &Cluster,
        secrets: Vec<SealedSecret>,
        joined: bool,
    ) {
        let held: std::collections::HashSet<(String, String)> = secrets
            .iter()
            .map(|s| (s.namespace.clone(), s.name.clone()))
            .collect();
        let local = self.registry.all_secrets().unwrap_or_else(|e| {
            tracing::error!(error = %e, "listing this node's secrets");
            Vec::new()
        });
        for (namespace, name) in local.into_iter().filter(|key| !held.contains(key)) {
            if joined {
                self.apply_secret_delete(&namespace, &name).await;
                continue;
            }
            let published = async {
                let value = self
                    .registry
                    .secret(&namespace, &name)?
                    .ok_or_else(|| missing(&namespace, &name))?;
                let sealed = SealedSecret {
                    sealed: Sealer::new(&self.token, cluster.name())?
                        .seal(&namespace, &name, &value)?,
                    namespace: namespace.clone(),
                    name: name.clone(),
                };
                cluster.write_secret(&sealed, false).await
            };
            match published.await {
                Ok(_) => {
                    tracing::info!(secret = %name, %namespace, "published to the cluster at this node's first join")
                }
                Err(e) => {
                    tracing::warn!(secret = %name, %namespace, error = %e, "could not publish a secret to the cluster; it stays on this node")
                }
            }
        }
        for secret in &secrets {
            self.apply_secret(cluster, secret).await;
        }
    }

    /// The deployed functions that read the secret `name` of `namespace`.
    fn users_of(&self, namespace: &str, name: &str) -> Vec<Arc<Function>> {
        self.functions
            .iter()
            .filter(|f| {
                of(&f.stored.spec) == namespace && f.stored.spec.secrets.iter().any(|s| s == name)
            })
            .map(|f| f.value().clone())
            .collect()
    }

    /// Refuses a deploy that names a secret that does not exist.
    pub(crate) fn check_secrets(
        &self,
        namespace: &str,
        names: &[String],
    ) -> Result<(), GatewayError> {
        for name in names {
            if self.registry.secret(namespace, name)?.is_none() {
                return Err(missing(namespace, name));
            }
        }
        Ok(())
    }
}
