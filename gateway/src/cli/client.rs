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
}

impl Client {
    /// `gateway` is a base URL such as `http://127.0.0.1:8080`.
    pub fn new(gateway: &str, token: Option<String>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Client {
            http: HyperClient::builder(TokioExecutor::new()).build(connector),
            gateway: gateway.trim_end_matches('/').to_owned(),
            token,
        }
    }

    pub fn gateway(&self) -> &str {
        &self.gateway
    }

    /// Sends a request and returns the response with its body unread.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: HeaderMap,
        body: Body,
    ) -> Result<Response<Incoming>, ClientError> {
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
        let request = builder.body(body).map_err(|e| ClientError::Request {
            gateway: self.gateway.clone(),
            detail: e.to_string(),
        })?;
        self.http
            .request(request)
            .await
            .map_err(|e| ClientError::Unreachable {
                gateway: self.gateway.clone(),
                detail: error_chain(&e),
            })
    }

    /// Sends a request and reads the whole response.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        headers: HeaderMap,
        body: impl Into<Bytes>,
    ) -> Result<Answer, ClientError> {
        let response = self.send(method, path, headers, full_body(body)).await?;
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
        let body = self.encode(deployment)?;
        self.system(Method::POST, "/system/functions", body)
            .await
            .map(drop)
    }

    pub async fn list(&self) -> Result<Vec<FunctionStatus>, ClientError> {
        let answer = self
            .system(Method::GET, "/system/functions", Bytes::new())
            .await?;
        self.decode(&answer)
    }

    pub async fn function(&self, name: &str) -> Result<FunctionStatus, ClientError> {
        let answer = self
            .system(
                Method::GET,
                &format!("/system/function/{name}"),
                Bytes::new(),
            )
            .await?;
        self.decode(&answer)
    }

    pub async fn delete(&self, name: &str) -> Result<(), ClientError> {
        let body = serde_json::json!({ "functionName": name }).to_string();
        self.system(Method::DELETE, "/system/functions", body)
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
                &format!("/system/scale-function/{name}"),
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

    pub async fn info(&self) -> Result<GatewayInfo, ClientError> {
        let answer = self
            .system(Method::GET, "/system/info", Bytes::new())
            .await?;
        self.decode(&answer)
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
