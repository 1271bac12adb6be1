//! Namespaces and the tokens scoped to them, as OpenFaaS has them.
//!
//! Functions and secrets live in a namespace. `openfaas-fn` (the default,
//! [`NAMESPACE`]) always exists; the admin makes others with
//! `POST /system/namespace/{name}` (`wisp namespace create`).
//!
//! A function's *key* — its name in the registry, the pools, the metrics,
//! the logs and the async queue — is its name in the default namespace and
//! `{name}.{namespace}` in another, which is also how it is invoked
//! (`/function/{name}.{namespace}`): one lookup routes it, and nothing
//! keyed by function names needed to change. Two rules keep a key naming
//! one function: no namespace is made while a default-namespace function's
//! name ends in `.{it}`, and no such function is deployed while the
//! namespace exists. Every lookup by name and namespace also checks the
//! namespace the function records (`App::key_for`).
//!
//! Tokens: the admin token (`<data dir>/token`) may do anything. A
//! namespace token, made by the admin (`wisp token create --namespace NS`),
//! manages that namespace's functions and secrets and nothing else
//! ([`Caller`]): another namespace is a 403, and so are images, registry
//! logins, prunes, namespaces and tokens. Only the token's SHA-256 is kept.

use http::{Method, Request, Response, StatusCode};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use wisp_runner::backend::Body;
use wisp_runner::spec::FunctionSpec;

use crate::api::NAMESPACE;
use crate::cluster::Cluster;
use crate::cluster::records::{Expect, Kind, Record};
use crate::control::{json, read_optional_json};
use crate::registry::{NamespaceRecord, TokenRecord, now_secs};
use crate::rescue::GatewayError;
use crate::server::App;

/// Whether `namespace` is a DNS label, as Kubernetes names namespaces.
pub fn is_valid(namespace: &str) -> bool {
    let bytes = namespace.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

/// The namespace a request names if it is not the default one (absent and
/// empty mean the default).
pub fn other(namespace: Option<&str>) -> Option<&str> {
    namespace.filter(|ns| !ns.is_empty() && *ns != NAMESPACE)
}

/// The key of the function `name` in `namespace`.
pub fn key(name: &str, namespace: &str) -> String {
    match other(Some(namespace)) {
        None => name.to_owned(),
        Some(ns) => format!("{name}.{ns}"),
    }
}

/// The namespace of a function.
pub fn of(spec: &FunctionSpec) -> &str {
    spec.namespace.as_deref().unwrap_or(NAMESPACE)
}

/// A function's name within its namespace (its key without `.{namespace}`).
pub fn name_of(spec: &FunctionSpec) -> &str {
    let key = spec.name.as_str();
    match &spec.namespace {
        Some(ns) => key
            .strip_suffix(ns.as_str())
            .and_then(|k| k.strip_suffix('.'))
            .unwrap_or(key),
        None => key,
    }
}

/// Who a control request comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The data dir's token: anything.
    Admin,
    /// A namespace token: that namespace's functions and secrets.
    Tenant(String),
}

impl Caller {
    /// The namespace a request acts in: the one it names, else the
    /// caller's own (the default one for the admin). A namespace token
    /// naming another namespace is refused.
    pub fn namespace(&self, requested: Option<&str>) -> Result<String, GatewayError> {
        let requested = requested.filter(|ns| !ns.is_empty());
        match (self, requested) {
            (Caller::Admin, None) => Ok(NAMESPACE.to_owned()),
            (Caller::Admin, Some(ns)) => Ok(ns.to_owned()),
            (Caller::Tenant(own), None) => Ok(own.clone()),
            (Caller::Tenant(own), Some(ns)) if ns == own => Ok(own.clone()),
            (Caller::Tenant(own), Some(ns)) => Err(GatewayError::Forbidden(format!(
                "this token manages namespace {own}, not {}",
                ns.chars().take(80).collect::<String>()
            ))),
        }
    }

    /// Refuses a namespace token: the request is the admin's to make.
    pub fn admin(&self, what: &str) -> Result<(), GatewayError> {
        match self {
            Caller::Admin => Ok(()),
            Caller::Tenant(own) => Err(GatewayError::Forbidden(format!(
                "{what} needs the admin token: this token manages namespace {own} only"
            ))),
        }
    }
}

/// `POST`/`PUT /system/namespace/{name}`'s body, and `GET`'s answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionNamespace {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<std::collections::BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<std::collections::BTreeMap<String, String>>,
}

/// `POST /system/tokens`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRequest {
    pub namespace: String,
    #[serde(default)]
    pub description: String,
}

/// `POST /system/tokens`' answer: the only time the token is shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewToken {
    pub id: String,
    pub token: String,
    pub namespace: String,
    pub description: String,
}

/// What is said of a namespace that does not exist.
fn absent(namespace: &str) -> String {
    let namespace: String = namespace.chars().take(80).collect();
    format!("namespace {namespace:?} does not exist (`wisp namespace create {namespace}`)")
}

/// The hex SHA-256 of a token: how the registry keeps it.
fn hash(token: &str) -> String {
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

impl App {
    /// Who sent a control request: the admin token, a namespace token, or
    /// nobody the server knows (401).
    pub(crate) fn caller(&self, headers: &http::HeaderMap) -> Result<Caller, GatewayError> {
        let presented = crate::auth::presented(headers).ok_or(GatewayError::Unauthorized)?;
        if crate::auth::constant_time_eq(presented.as_bytes(), self.token.as_bytes()) {
            return Ok(Caller::Admin);
        }
        // A lookup by hash: its timing says nothing of the token.
        match self.registry.token(&hash(&presented))? {
            Some(record) => Ok(Caller::Tenant(record.namespace)),
            None => Err(GatewayError::Unauthorized),
        }
    }

    /// Whether `namespace` exists.
    pub(crate) fn namespace_exists(&self, namespace: &str) -> Result<bool, GatewayError> {
        Ok(namespace == NAMESPACE || self.registry.namespace(namespace)?.is_some())
    }

    /// Refuses a namespace a request writes to that is not a DNS label or
    /// does not exist (400, as the spec has it for a deploy or a secret).
    pub(crate) fn existing_namespace(&self, namespace: &str) -> Result<(), GatewayError> {
        crate::api::check_namespace(Some(namespace))?;
        if self.namespace_exists(namespace)? {
            Ok(())
        } else {
            Err(GatewayError::BadRequest(absent(namespace)))
        }
    }

    /// The key of the function `name` in the namespace a request names
    /// (else the caller's), refusing a namespace not the caller's; a
    /// function of that key recorded in another namespace is not it.
    pub(crate) fn key_for(
        &self,
        caller: &Caller,
        name: &str,
        namespace: Option<&str>,
    ) -> Result<String, GatewayError> {
        let namespace = caller.namespace(namespace)?;
        // A function in a namespace that is not there is not found (404).
        if !is_valid(&namespace) || !self.namespace_exists(&namespace)? {
            return Err(GatewayError::Missing(absent(&namespace)));
        }
        let key = key(name, &namespace);
        let elsewhere = self
            .functions
            .get(&key)
            .is_some_and(|f| of(&f.stored.spec) != namespace)
            || self
                .pending
                .get(&key)
                .is_some_and(|p| of(&p.draft) != namespace);
        if elsewhere {
            return Err(GatewayError::UnknownFunction(key));
        }
        Ok(key)
    }

    /// Refuses a default-namespace function whose key would be that of a
    /// function in an existing namespace (`a.team` when `team` exists).
    pub(crate) fn check_key_free(&self, spec: &FunctionSpec) -> Result<(), GatewayError> {
        if spec.namespace.is_some() {
            return Ok(());
        }
        if let Some((_, suffix)) = spec.name.as_str().rsplit_once('.')
            && suffix != NAMESPACE
            && self.registry.namespace(suffix)?.is_some()
        {
            return Err(GatewayError::BadRequest(format!(
                "{} would be the name of function {} in namespace {suffix}: deploy it there (namespace: {suffix}) or choose a name that does not end in .{suffix}",
                spec.name,
                spec.name.as_str().trim_end_matches(&format!(".{suffix}"))
            )));
        }
        Ok(())
    }

    /// `GET /system/namespaces`: the namespaces the caller may use.
    pub(crate) fn list_namespaces(&self, caller: &Caller) -> Result<Response<Body>, GatewayError> {
        let names: Vec<String> = match caller {
            Caller::Tenant(own) => vec![own.clone()],
            Caller::Admin => std::iter::once(NAMESPACE.to_owned())
                .chain(self.registry.namespaces()?.into_iter().map(|n| n.name))
                .collect(),
        };
        json(StatusCode::OK, &names)
    }

    /// `GET/POST/PUT/DELETE /system/namespace/{name}`.
    pub(crate) async fn namespace_route(
        &self,
        name: &str,
        caller: &Caller,
        req: Request<Body>,
    ) -> Result<Response<Body>, GatewayError> {
        let method = req.method().clone();
        if method == Method::GET {
            caller.namespace(Some(name))?;
            if !is_valid(name) || !self.namespace_exists(name)? {
                return Err(GatewayError::Missing(absent(name)));
            }
            let record = self.registry.namespace(name)?.unwrap_or_default();
            return json(
                StatusCode::OK,
                &FunctionNamespace {
                    name: Some(name.to_owned()),
                    labels: Some(record.labels),
                    annotations: Some(record.annotations),
                },
            );
        }
        if !matches!(method, Method::POST | Method::PUT | Method::DELETE) {
            return Err(GatewayError::MethodNotAllowed {
                allow: "GET, POST, PUT, DELETE",
            });
        }
        caller.admin("managing namespaces")?;
        crate::api::check_namespace(Some(name))?;
        if name.is_empty() {
            return Err(GatewayError::BadRequest("a namespace needs a name".into()));
        }
        if name == NAMESPACE {
            return Err(GatewayError::Conflict(format!(
                "{NAMESPACE} is the default namespace: it always exists and cannot be changed"
            )));
        }
        let _serial = self.deploy_lock.lock().await;
        if method == Method::DELETE {
            return self.delete_namespace(name).await;
        }
        let body: FunctionNamespace = read_optional_json(req).await?.unwrap_or_default();
        if body.name.as_deref().is_some_and(|n| n != name) {
            return Err(GatewayError::BadRequest(
                "the body's name is not the path's".into(),
            ));
        }
        let create = method == Method::POST;
        if create {
            // `a.team` in the default namespace would be `a` in `team`.
            let suffix = format!(".{name}");
            if let Some(taken) = self
                .functions
                .iter()
                .map(|f| f.stored.spec.clone())
                .chain(self.pending.iter().map(|p| p.draft.clone()))
                .find(|s| s.namespace.is_none() && s.name.as_str().ends_with(&suffix))
            {
                return Err(GatewayError::Conflict(format!(
                    "function {} of the default namespace would be function {} of namespace {name}: remove or rename it first",
                    taken.name,
                    taken.name.as_str().trim_end_matches(&suffix)
                )));
            }
        }
        let created_at = match self.registry.namespace(name)? {
            Some(old) => old.created_at,
            None => now_secs(),
        };
        let record = NamespaceRecord {
            name: name.to_owned(),
            labels: body.labels.unwrap_or_default(),
            annotations: body.annotations.unwrap_or_default(),
            created_at,
        };
        let written = match self.cluster.get() {
            // The cluster's record first, then this node's copy.
            Some(cluster) => {
                let expect = if create {
                    Expect::Absent
                } else {
                    Expect::Present
                };
                let held = cluster
                    .put_record(&Record::of(Kind::Namespace, name, &record)?, expect)
                    .await?;
                if held {
                    let copy = record.clone();
                    self.registry
                        .write(move |r| r.replace_namespace(&copy))
                        .await?;
                }
                held
            }
            None => {
                let copy = record.clone();
                self.registry
                    .write(move |r| r.put_namespace(&copy, create))
                    .await?
            }
        };
        if !written {
            return Err(if create {
                GatewayError::Conflict(format!("namespace {name} already exists"))
            } else {
                GatewayError::Missing(format!("namespace {name} does not exist"))
            });
        }
        tracing::info!(namespace = %name, created = create, "namespace saved");
        if create {
            Ok(crate::server::text(
                StatusCode::CREATED,
                format!("created namespace {name}\n"),
            ))
        } else {
            Ok(crate::server::text(
                StatusCode::ACCEPTED,
                format!("updated namespace {name}\n"),
            ))
        }
    }

    /// Removes an empty namespace and its tokens (the deploy lock held).
    async fn delete_namespace(&self, name: &str) -> Result<Response<Body>, GatewayError> {
        let mut used: Vec<String> = self
            .functions
            .iter()
            .filter(|f| of(&f.stored.spec) == name)
            .map(|f| format!("function {}", name_of(&f.stored.spec)))
            .chain(
                self.pending
                    .iter()
                    .filter(|p| of(&p.draft) == name)
                    .map(|p| format!("function {}", name_of(&p.draft))),
            )
            .chain(
                self.registry
                    .secret_names(name)?
                    .into_iter()
                    .map(|s| format!("secret {s}")),
            )
            .collect();
        used.sort();
        used.dedup();
        if !used.is_empty() {
            return Err(GatewayError::Conflict(format!(
                "namespace {name} still holds {}: remove them first",
                used.join(", ")
            )));
        }
        // The cluster's record first (whether it held one), then this node's.
        let held = match self.cluster.get() {
            Some(cluster) => {
                let tokens: Vec<(Kind, String)> = self
                    .registry
                    .token_entries()?
                    .into_iter()
                    .filter(|(_, token)| token.namespace == name)
                    .map(|(hash, _)| (Kind::Token, hash))
                    .collect();
                cluster
                    .delete_record(Kind::Namespace, name, &tokens)
                    .await?
            }
            None => false,
        };
        let key = name.to_owned();
        let existed = self
            .registry
            .write(move |r| r.remove_namespace(&key))
            .await?
            || held;
        if !existed {
            return Err(GatewayError::Missing(format!(
                "namespace {name} does not exist"
            )));
        }
        tracing::info!(namespace = %name, "namespace deleted, and its tokens revoked");
        let mut response = Response::new(wisp_runner::backend::empty_body());
        *response.status_mut() = StatusCode::NO_CONTENT;
        Ok(response)
    }

    /// `GET/POST /system/tokens` and `DELETE /system/tokens/{id}`: the
    /// admin's.
    pub(crate) async fn tokens_route(
        &self,
        id: Option<&str>,
        caller: &Caller,
        req: Request<Body>,
    ) -> Result<Response<Body>, GatewayError> {
        caller.admin("managing tokens")?;
        match (id, req.method().clone()) {
            (None, Method::GET) => json(StatusCode::OK, &self.registry.tokens()?),
            (None, Method::POST) => {
                let request: TokenRequest = read_optional_json(req).await?.ok_or_else(|| {
                    GatewayError::BadRequest("a token names its namespace".into())
                })?;
                if request.namespace.is_empty() {
                    return Err(GatewayError::BadRequest(
                        "a token names its namespace".into(),
                    ));
                }
                if request.description.len() > 256 {
                    return Err(GatewayError::BadRequest(
                        "a token's description is at most 256 bytes".into(),
                    ));
                }
                self.existing_namespace(&request.namespace)?;
                let mut bytes = [0u8; 32];
                getrandom::fill(&mut bytes)
                    .map_err(|e| GatewayError::Conflict(format!("making a token: {e}")))?;
                let token = hex::encode(bytes);
                let hashed = hash(&token);
                let record = TokenRecord {
                    id: hashed[..12].to_owned(),
                    namespace: request.namespace,
                    description: request.description,
                    created_at: now_secs(),
                };
                if let Some(cluster) = self.cluster.get() {
                    let held = cluster
                        .put_record(&Record::of(Kind::Token, &hashed, &record)?, Expect::Absent)
                        .await?;
                    if !held {
                        return Err(GatewayError::Conflict("that token exists already".into()));
                    }
                }
                let copy = record.clone();
                self.registry
                    .write(move |r| r.put_token(&hashed, &copy))
                    .await?;
                tracing::info!(id = %record.id, namespace = %record.namespace, "namespace token made");
                json(
                    StatusCode::CREATED,
                    &NewToken {
                        id: record.id,
                        token,
                        namespace: record.namespace,
                        description: record.description,
                    },
                )
            }
            (None, _) => Err(GatewayError::MethodNotAllowed { allow: "GET, POST" }),
            (Some(id), Method::DELETE) => {
                let mut held = false;
                if let Some(cluster) = self.cluster.get() {
                    for (hash, _) in self
                        .registry
                        .token_entries()?
                        .into_iter()
                        .filter(|(_, token)| token.id == id)
                    {
                        held |= cluster.delete_record(Kind::Token, &hash, &[]).await?;
                    }
                }
                let key = id.to_owned();
                let removed = self.registry.write(move |r| r.remove_token(&key)).await? || held;
                if !removed {
                    return Err(GatewayError::Missing(format!(
                        "no token has the id {}",
                        id.chars().take(80).collect::<String>()
                    )));
                }
                tracing::info!(%id, "namespace token revoked");
                let mut response = Response::new(wisp_runner::backend::empty_body());
                *response.status_mut() = StatusCode::NO_CONTENT;
                Ok(response)
            }
            (Some(_), _) => Err(GatewayError::MethodNotAllowed { allow: "DELETE" }),
        }
    }
}

impl App {
    /// In a cluster: a namespace or token another node wrote (`json`) or
    /// deleted, applied to this node's copy.
    pub(crate) async fn apply_record(&self, kind: Kind, id: &str, json: Option<Vec<u8>>) {
        let _serial = self.deploy_lock.lock().await;
        let applied = match (kind, json) {
            (Kind::Namespace, Some(json)) => serde_json::from_slice::<NamespaceRecord>(&json)
                .map_err(|e| e.to_string())
                .and_then(|record| {
                    self.registry
                        .replace_namespace(&record)
                        .map_err(|e| e.to_string())
                }),
            (Kind::Namespace, None) => self
                .registry
                .remove_namespace(id)
                .map(drop)
                .map_err(|e| e.to_string()),
            (Kind::Token, Some(json)) => serde_json::from_slice::<TokenRecord>(&json)
                .map_err(|e| e.to_string())
                .and_then(|record| {
                    self.registry
                        .put_token(id, &record)
                        .map_err(|e| e.to_string())
                }),
            (Kind::Token, None) => self
                .registry
                .remove_token_hash(id)
                .map(drop)
                .map_err(|e| e.to_string()),
        };
        if let Err(e) = applied {
            // The id of a token is its hash: not the token, but kept out
            // of the logs all the same.
            let shown = if kind == Kind::Token { "(a token)" } else { id };
            tracing::error!(?kind, id = %shown, error = %e, "applying a change from the cluster");
        }
    }

    /// In a cluster: every namespace and token etcd holds. This node's
    /// that etcd does not hold were deleted while it was away — or, at its
    /// first join (`joined` false), are published to the cluster.
    pub(crate) async fn apply_records_snapshot(
        &self,
        cluster: &Cluster,
        records: Vec<Record>,
        joined: bool,
    ) {
        let held: std::collections::HashSet<(Kind, String)> =
            records.iter().map(|r| (r.kind, r.id.clone())).collect();
        let mut local: Vec<Result<Record, GatewayError>> = Vec::new();
        match self.registry.namespaces() {
            Ok(namespaces) => local.extend(
                namespaces
                    .iter()
                    .map(|n| Record::of(Kind::Namespace, &n.name, n)),
            ),
            Err(e) => tracing::error!(error = %e, "listing this node's namespaces"),
        }
        match self.registry.token_entries() {
            Ok(tokens) => local.extend(
                tokens
                    .iter()
                    .map(|(hash, token)| Record::of(Kind::Token, hash, token)),
            ),
            Err(e) => tracing::error!(error = %e, "listing this node's tokens"),
        }
        for record in local.into_iter().flatten() {
            if held.contains(&(record.kind, record.id.clone())) {
                continue;
            }
            if joined {
                self.apply_record(record.kind, &record.id, None).await;
                continue;
            }
            match cluster.put_record(&record, Expect::Absent).await {
                Ok(_) => {
                    tracing::info!(kind = ?record.kind, "published to the cluster at this node's first join")
                }
                Err(e) => {
                    tracing::warn!(kind = ?record.kind, error = %e, "could not publish to the cluster; it stays on this node")
                }
            }
        }
        // Namespaces before their tokens.
        let mut records = records;
        records.sort_by_key(|r| r.kind == Kind::Token);
        for record in records {
            self.apply_record(record.kind, &record.id, Some(record.json))
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_names_are_dns_labels() {
        for good in ["a", "team-a", "t1", &"x".repeat(63)] {
            assert!(is_valid(good), "{good}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "A",
            "a.b",
            "a/b",
            "..",
            "a_b",
            &"x".repeat(64),
        ] {
            assert!(!is_valid(bad), "{bad}");
        }
    }

    #[test]
    fn keys_elide_the_default_namespace() {
        assert_eq!(key("f", NAMESPACE), "f");
        assert_eq!(key("f", ""), "f");
        assert_eq!(key("f", "team-a"), "f.team-a");
    }

    #[test]
    fn a_tenant_acts_in_its_namespace_only() {
        let tenant = Caller::Tenant("team-a".into());
        assert_eq!(tenant.namespace(None).unwrap(), "team-a");
        assert_eq!(tenant.namespace(Some("")).unwrap(), "team-a");
        assert_eq!(tenant.namespace(Some("team-a")).unwrap(), "team-a");
        let refused = tenant.namespace(Some("team-b")).unwrap_err();
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
        let refused = tenant.namespace(Some(NAMESPACE)).unwrap_err();
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            tenant.admin("x").unwrap_err().status(),
            StatusCode::FORBIDDEN
        );
        assert_eq!(Caller::Admin.namespace(None).unwrap(), NAMESPACE);
        assert_eq!(Caller::Admin.namespace(Some("b")).unwrap(), "b");
        assert!(Caller::Admin.admin("x").is_ok());
    }
}
