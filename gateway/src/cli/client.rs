//! A small client of wisp's HTTP API, used by the CLI (and the end-to-end
//! tests): one connection pool, the token on every `/system/*` call, errors
//! that say which gateway and what it answered.

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use wisp_runner::backend::{Body, full_body};

use crate::api::{ArtifactUploaded, FunctionDeployment, FunctionStatus, GatewayInfo};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach the wisp gateway at {gateway}: {detail} (is `wisp serve` running? set --gateway or WISP_GATEWAY)"
    )]
    Unreachable { gateway: String, detail: String },
    #[error("invalid request to {gateway}: {detail}")]
    Request { gateway: String, detail: String },
    #[error("{status}: {body}")]
    Status { status: StatusCode, body: String },
    #[error("unexpected answer from {gateway}: {detail}")]
    Decode { gateway: String, detail: String },
}

/// A fully read response.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

#[derive(Clone)]
pub struct Client {
    http: HyperClient<HttpConnector, Body>,
    gateway: String,
    token: Option<String>,
    /// The namespace function and secret calls name (`None`: the
    /// server's default for the token).
    namespace: Option<String>,
}

/// A hyper client with a connection pool of its own, `TCP_NODELAY` set.
fn http_client() -> HyperClient<HttpConnector, Body> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    HyperClient::builder(TokioExecutor::new()).build(connector)
}

impl Client {
    /// `gateway` is a base URL such as `http://127.0.0.1:8080`.
    pub fn new(gateway: &str, token: Option<String>) -> Self {
        Client {
            http: http_client(),
            gateway: gateway.trim_end_matches('/').to_owned(),
            token,
            namespace: None,
        }
    }

    /// The same client with a connection pool of its own (the bench gives
    /// each of its event loops one).
    pub fn with_own_connections(&self) -> Self {
        Client {
            http: http_client(),
            ..self.clone()
        }
    }

    pub fn gateway(&self) -> &str {
        &self.gateway
    }

    /// This client acting in `namespace` (`None`: the server's default
    /// for the token: its namespace, or `openfaas-fn` for the admin).
    pub fn in_namespace(mut self, namespace: Option<String>) -> Self {
        self.namespace = namespace.filter(|ns| !ns.is_empty());
        self
    }

    /// `path` with `namespace=` added to its query when one is set.
    pub fn scoped(&self, path: &str) -> String {
        match &self.namespace {
            None => path.to_owned(),
            Some(ns) => {
                let sep = if path.contains('?') { '&' } else { '?' };
                let query: String = form_urlencoded::Serializer::new(String::new())
                    .append_pair("namespace", ns)
                    .finish();
                format!("{path}{sep}{query}")
            }
        }
    }

    /// How invocation paths name the function `name`: `{name}`, or
    /// `{name}.{namespace}` outside the default namespace.
    pub fn qualified(&self, name: &str) -> String {
        match crate::namespaces::other(self.namespace.as_deref()) {
            None => name.to_owned(),
            Some(ns) => format!("{name}.{ns}"),
        }
    }

    /// Sends a request and returns the response with its body unread.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: HeaderMap,
        body: Body,
    ) -> Result<Response<Incoming>, ClientError> {
        self.send_once(method, path, headers, body)
            .await
            .map_err(|e| e.into_client(&self.gateway))
    }

    async fn send_once(
        &self,
        method: Method,
        path: &str,
        headers: HeaderMap,
        body: Body,
    ) -> Result<Response<Incoming>, SendError> {
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.gateway));
        if let Some(h) = builder.headers_mut() {
            *h = headers;
            if path.starts_with("/system/")
                && let Some(token) = &self.token
                && let Ok(value) = format!("Bearer {token}").parse()
            {
                h.insert(header::AUTHORIZATION, value);
            }
        }
        let request = builder.body(body).map_err(|e| SendError::Request {
            gateway: self.gateway.clone(),
            detail: e.to_string(),
        })?;
        Ok(self.http.request(request).await?)
    }

    /// Sends a request and reads the whole response.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        headers: HeaderMap,
        body: impl Into<Bytes>,
    ) -> Result<Answer, ClientError> {
        let body = body.into();
        let mut sent = self
            .send_once(
                method.clone(),
                path,
                headers.clone(),
                full_body(body.clone()),
            )
            .await;
        // A kept-alive connection the server closed as idle just as the
        // request went out fails without an answer. A safe request is sent
        // again, once, on a new connection (as Go's and curl's clients do).
        if method.is_safe() && sent.as_ref().is_err_and(SendError::closed_unanswered) {
            sent = self.send_once(method, path, headers, full_body(body)).await;
        }
        let response = sent.map_err(|e| e.into_client(&self.gateway))?;
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| ClientError::Decode {
                gateway: self.gateway.clone(),
                detail: format!("reading the response body: {e}"),
            })?
            .to_bytes();
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    async fn system(
        &self,
        method: Method,
        path: &str,
        body: impl Into<Bytes>,
    ) -> Result<Answer, ClientError> {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        let answer = self.call(method, path, headers, body).await?;
        if !answer.status.is_success() {
            return Err(ClientError::Status {
                status: answer.status,
                body: answer.text().trim().to_owned(),
            });
        }
        Ok(answer)
    }

    fn encode(&self, value: &impl serde::Serialize) -> Result<Vec<u8>, ClientError> {
        serde_json::to_vec(value).map_err(|e| ClientError::Request {
            gateway: self.gateway.clone(),
            detail: e.to_string(),
        })
    }

    fn decode<T: serde::de::DeserializeOwned>(&self, answer: &Answer) -> Result<T, ClientError> {
        serde_json::from_slice(&answer.body).map_err(|e| ClientError::Decode {
            gateway: self.gateway.clone(),
            detail: e.to_string(),
        })
    }

    pub async fn upload_artifact(
        &self,
        bytes: impl Into<Bytes>,
    ) -> Result<ArtifactUploaded, ClientError> {
        let answer = self
            .system(Method::POST, "/system/artifacts", bytes)
            .await?;
        self.decode(&answer)
    }

    pub async fn deploy(&self, deployment: &FunctionDeployment) -> Result<(), ClientError> {
        let body = match (&deployment.namespace, &self.namespace) {
            (None, Some(ns)) => self.encode(&FunctionDeployment {
                namespace: Some(ns.clone()),
                ..deployment.clone()
            })?,
            _ => self.encode(deployment)?,
        };
        self.system(Method::POST, "/system/functions", body)
            .await
            .map(drop)
    }

    pub async fn list(&self) -> Result<Vec<FunctionStatus>, ClientError> {
        let answer = self
            .system(Method::GET, &self.scoped("/system/functions"), Bytes::new())
            .await?;
        self.decode(&answer)
    }

    pub async fn function(&self, name: &str) -> Result<FunctionStatus, ClientError> {
        let answer = self
            .system(
                Method::GET,
                &self.scoped(&format!("/system/function/{name}")),
                Bytes::new(),
            )
            .await?;
        self.decode(&answer)
    }

    pub async fn delete(&self, name: &str) -> Result<(), ClientError> {
        let body = serde_json::json!({ "functionName": name }).to_string();
        self.system(Method::DELETE, &self.scoped("/system/functions"), body)
            .await
            .map(drop)
    }

    /// `POST /system/scale-function/{name}`; returns the gateway's summary.
    pub async fn scale(
        &self,
        name: &str,
        request: &crate::api::ScaleRequest,
    ) -> Result<String, ClientError> {
        let body = self.encode(request)?;
        let answer = self
            .system(
                Method::POST,
                &self.scoped(&format!("/system/scale-function/{name}")),
                body,
            )
            .await?;
        Ok(answer.text())
    }

    /// `POST /system/images`: the server pulls an image by reference.
    pub async fn pull(
        &self,
        request: &crate::api::PullRequest,
    ) -> Result<crate::api::PullResponse, ClientError> {
        let body = self.encode(request)?;
        let answer = self.system(Method::POST, "/system/images", body).await?;
        self.decode(&answer)
    }

    /// `PUT /system/images`; returns the gateway's answer.
    pub async fn tag(&self, request: &crate::api::TagRequest) -> Result<String, ClientError> {
        let body = self.encode(request)?;
        let answer = self.system(Method::PUT, "/system/images", body).await?;
        Ok(answer.text())
    }

    /// `DELETE /system/images`.
    pub async fn remove_image(
        &self,
        request: &crate::api::RemoveImageRequest,
    ) -> Result<crate::api::RemovedImage, ClientError> {
        let body = self.encode(request)?;
        let answer = self.system(Method::DELETE, "/system/images", body).await?;
        self.decode(&answer)
    }

    /// `POST /system/registries`; returns the gateway's answer.
    pub async fn login(&self, request: &crate::api::LoginRequest) -> Result<String, ClientError> {
        let body = self.encode(request)?;
        let answer = self
            .system(Method::POST, "/system/registries", body)
            .await?;
        Ok(answer.text())
    }

    /// `DELETE /system/registries`; returns the gateway's answer.
    pub async fn logout(&self, request: &crate::api::LogoutRequest) -> Result<String, ClientError> {
        let body = self.encode(request)?;
        let answer = self
            .system(Method::DELETE, "/system/registries", body)
            .await?;
        Ok(answer.text())
    }

    /// `GET /system/revisions/{name}`: its kept revisions, oldest first.
    pub async fn revisions(
        &self,
        name: &str,
    ) -> Result<Vec<crate::api::RevisionSummary>, ClientError> {
        let answer = self
            .system(
                Method::GET,
                &self.scoped(&format!("/system/revisions/{name}")),
                Bytes::new(),
            )
            .await?;
        self.decode(&answer)
    }

    /// `POST /system/rollback/{name}`.
    pub async fn rollback(&self, name: &str, revision: Option<u64>) -> Result<String, ClientError> {
        let body = self.encode(&crate::api::RollbackRequest { revision })?;
        let answer = self
            .system(
                Method::POST,
                &self.scoped(&format!("/system/rollback/{name}")),
                body,
            )
            .await?;
        Ok(answer.text())
    }

    /// `POST /system/secrets` (`update`: `PUT`).
    pub async fn put_secret(
        &self,
        secret: &crate::api::Secret,
        update: bool,
    ) -> Result<String, ClientError> {
        let body = self.encode(secret)?;
        let method = if update { Method::PUT } else { Method::POST };
        let answer = self
            .system(method, &self.scoped("/system/secrets"), body)
            .await?;
        Ok(answer.text())
    }

    /// `GET /system/secrets`: names, never values.
    pub async fn secrets(&self) -> Result<Vec<crate::api::SecretDescription>, ClientError> {
        let answer = self
            .system(Method::GET, &self.scoped("/system/secrets"), Bytes::new())
            .await?;
        self.decode(&answer)
    }

    /// `DELETE /system/secrets`; `force` deletes one that functions use.
    pub async fn delete_secret(&self, name: &str, force: bool) -> Result<(), ClientError> {
        let body = self.encode(&crate::api::SecretDescription {
            name: name.to_owned(),
            namespace: None,
        })?;
        let path = if force {
            "/system/secrets?force=true"
        } else {
            "/system/secrets"
        };
        self.system(Method::DELETE, &self.scoped(path), body)
            .await?;
        Ok(())
    }

    /// `GET /system/namespaces`.
    pub async fn namespaces(&self) -> Result<Vec<String>, ClientError> {
        let answer = self
            .system(Method::GET, "/system/namespaces", Bytes::new())
            .await?;
        self.decode(&answer)
    }

    /// `POST /system/namespace/{name}` (the admin's).
    pub async fn create_namespace(&self, name: &str) -> Result<String, ClientError> {
        let body = self.encode(&crate::namespaces::FunctionNamespace {
            name: Some(name.to_owned()),
            ..Default::default()
        })?;
        let answer = self
            .system(Method::POST, &format!("/system/namespace/{name}"), body)
            .await?;
        Ok(answer.text())
    }

    /// `DELETE /system/namespace/{name}` (the admin's): an empty one.
    pub async fn delete_namespace(&self, name: &str) -> Result<(), ClientError> {
        self.system(
            Method::DELETE,
            &format!("/system/namespace/{name}"),
            Bytes::new(),
        )
        .await
        .map(drop)
    }

    /// `POST /system/tokens` (the admin's): a token for `namespace`.
    pub async fn create_token(
        &self,
        namespace: &str,
        description: &str,
    ) -> Result<crate::namespaces::NewToken, ClientError> {
        let body = self.encode(&crate::namespaces::TokenRequest {
            namespace: namespace.to_owned(),
            description: description.to_owned(),
        })?;
        let answer = self.system(Method::POST, "/system/tokens", body).await?;
        self.decode(&answer)
    }

    /// `GET /system/tokens` (the admin's): the namespace tokens, without
    /// the tokens themselves.
    pub async fn tokens(&self) -> Result<Vec<crate::registry::TokenRecord>, ClientError> {
        let answer = self
            .system(Method::GET, "/system/tokens", Bytes::new())
            .await?;
        self.decode(&answer)
    }

    /// `DELETE /system/tokens/{id}` (the admin's).
    pub async fn delete_token(&self, id: &str) -> Result<(), ClientError> {
        self.system(
            Method::DELETE,
            &format!("/system/tokens/{id}"),
            Bytes::new(),
        )
        .await
        .map(drop)
    }

    /// `GET /system/pulls`: the pulls the server is running.
    pub async fn pulls(&self) -> Result<Vec<crate::api::PullStatus>, ClientError> {
        let answer = self
            .system(Method::GET, "/system/pulls", Bytes::new())
            .await?;
        self.decode(&answer)
    }

    pub async fn images(&self) -> Result<Vec<crate::api::ImageSummary>, ClientError> {
        let answer = self
            .system(Method::GET, "/system/images", Bytes::new())
            .await?;
        self.decode(&answer)
    }

    /// `POST /system/prune`: removes (with `dry_run`, lists) what no
    /// function uses.
    pub async fn prune(&self, dry_run: bool) -> Result<crate::api::PruneReport, ClientError> {
        let path = if dry_run {
            "/system/prune?dryRun=true"
        } else {
            "/system/prune"
        };
        let answer = self.system(Method::POST, path, Bytes::new()).await?;
        self.decode(&answer)
    }

    /// `GET /system/nodes` (the admin's).
    pub async fn nodes(&self) -> Result<crate::cluster::NodesView, ClientError> {
        let answer = self
            .system(Method::GET, "/system/nodes", Bytes::new())
            .await?;
        self.decode(&answer)
    }

    pub async fn info(&self) -> Result<GatewayInfo, ClientError> {
        let answer = self
            .system(Method::GET, "/system/info", Bytes::new())
            .await?;
        self.decode(&answer)
    }
}

/// Why one attempt at a request failed.
#[derive(Debug, thiserror::Error)]
enum SendError {
    #[error("invalid request to {gateway}: {detail}")]
    Request { gateway: String, detail: String },
    #[error(transparent)]
    Http(#[from] hyper_util::client::legacy::Error),
}

impl SendError {
    /// The connection closed before any of the response arrived.
    fn closed_unanswered(&self) -> bool {
        let SendError::Http(e) = self else {
            return false;
        };
        std::error::Error::source(e)
            .and_then(|s| s.downcast_ref::<hyper::Error>())
            .is_some_and(hyper::Error::is_incomplete_message)
    }

    fn into_client(self, gateway: &str) -> ClientError {
        match self {
            SendError::Request { gateway, detail } => ClientError::Request { gateway, detail },
            SendError::Http(e) => ClientError::Unreachable {
                gateway: gateway.to_owned(),
                detail: wisp_runner::image::pull::error_chain(&e),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

    /// Reads one request head (these requests have no body).
    async fn read_head(stream: &mut TcpStream) -> bool {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match stream.read(&mut byte).await {
                Ok(1) => head.push(byte[0]),
                _ => return false,
            }
        }
        true
    }

    /// A server whose first connection answers one request and then closes
    /// on reading the second, unanswered: the race of a kept-alive connection
    /// closed as idle just as a request goes out. Later connections answer.
    async fn closing_server() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut first, _) = listener.accept().await.unwrap();
            if read_head(&mut first).await {
                let _ = first.write_all(OK).await;
            }
            read_head(&mut first).await;
            drop(first);
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    while read_head(&mut stream).await {
                        let _ = stream.write_all(OK).await;
                    }
                });
            }
        });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn a_safe_request_on_a_connection_closed_unanswered_is_sent_again() {
        let client = Client::new(&closing_server().await, None);
        for _ in 0..2 {
            let answer = client
                .call(Method::GET, "/healthz", HeaderMap::new(), "")
                .await
                .unwrap();
            assert_eq!(answer.status, StatusCode::OK);
        }
    }

    #[tokio::test]
    async fn an_unsafe_request_on_a_connection_closed_unanswered_is_not_sent_again() {
        let client = Client::new(&closing_server().await, None);
        let first = client
            .call(Method::POST, "/function/f", HeaderMap::new(), "")
            .await
            .unwrap();
        assert_eq!(first.status, StatusCode::OK);
        let second = client
            .call(Method::POST, "/function/f", HeaderMap::new(), "")
            .await;
        assert!(
            matches!(second, Err(ClientError::Unreachable { .. })),
            "{second:?}"
        );
    }
}
