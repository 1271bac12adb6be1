//! Kept-alive HTTP/1.1 connections to one container's handler, driven by
//! the request that uses them.
//!
//! hyper's pooled client runs each connection in a task of its own: a
//! request is handed to that task over a channel and its response comes
//! back over another, so every request wakes a second task, often on the
//! other worker thread. Here a connection has no task. The request's own
//! future polls the connection until the response head is in, and the
//! response body polls it until the body is whole; then the connection goes
//! back to the idle list for the next request. A connection whose request
//! or body is dropped part-way is closed with it (HTTP/1.1 cannot abandon
//! one message and go on), as hyper's client does.
//!
//! The connection is polled with a waker of its own ([`QuietWaker`]): hyper's
//! dispatcher wakes the request's future when it hands over the response,
//! from inside the poll that drives it. Passed to the task, that wake would
//! reschedule it as if it had yielded, and tokio then wakes the other
//! worker thread to look for work: two futex calls and two context switches
//! a request, for nothing. Counted on the warm `ping` hop, one connection:
//! 3.94 futex calls a request against none with hyper's pooled client.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, Uri, header};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;

use crate::backend::{Body, BodyError};
use crate::container::init_link::InitLink;
use crate::quiet::QuietWaker;

type Io = TokioIo<tokio::net::TcpStream>;

/// One connection: the half that sends requests and the dispatcher that
/// moves bytes, polled by whoever holds it, with a waker of its own.
struct Conn {
    http: Http,
    quiet: QuietWaker,
}

struct Http {
    send: http1::SendRequest<Body>,
    conn: http1::Connection<Io, Body>,
}

impl Http {
    /// Moves the connection's bytes; `true` while it can carry more
    /// messages.
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        matches!(self.conn.poll_without_shutdown(cx), Poll::Pending)
    }
}

impl Conn {
    fn new(send: http1::SendRequest<Body>, conn: http1::Connection<Io, Body>) -> Conn {
        Conn {
            http: Http { send, conn },
            quiet: QuietWaker::default(),
        }
    }

    /// Runs `section` with wakes of the connection's waker held back: the
    /// caller polls the connection right after, which sees what they were
    /// for (sending a request wakes the dispatcher waiting for one).
    fn quietly<R>(&mut self, section: impl FnOnce(&mut Http) -> R) -> R {
        let http = &mut self.http;
        self.quiet.hold(|| section(http))
    }

    /// Runs `step` (which drives the connection and polls what waits on
    /// it) with the connection's own waker in place of the task's (see
    /// [`QuietWaker::poll`]).
    fn poll_quietly<R>(
        &mut self,
        cx: &mut Context<'_>,
        mut step: impl FnMut(&mut Http, &mut Context<'_>) -> Poll<R>,
    ) -> Poll<R> {
        let http = &mut self.http;
        self.quiet.poll(cx, |cx| step(http, cx))
    }
}

/// Why a request did not get its response head from the handler.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ForwardError {
    #[error("connecting to the handler: {0}")]
    Connect(#[source] std::io::Error),
    #[error("{0}")]
    Http(#[from] hyper::Error),
    #[error("the handler closed the connection before answering")]
    Closed,
}

/// The connections to one handler; idle ones wait in a list, the most
/// recently used first.
pub(crate) struct HandlerConns {
    link: Arc<InitLink>,
    idle: Arc<Mutex<Vec<Conn>>>,
}

impl HandlerConns {
    pub(crate) fn new(link: Arc<InitLink>) -> Self {
        HandlerConns {
            link,
            idle: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Sends `req` (its URI is reduced to origin form, and it gets a
    /// `Host` if it has none) and answers with the response, whose body
    /// carries the connection until it is read whole.
    pub(crate) async fn send(&self, req: Request<Body>) -> Result<Response<Body>, ForwardError> {
        let (mut parts, body) = req.into_parts();
        let mut uri = http::uri::Parts::default();
        uri.path_and_query = Some(
            parts
                .uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
        );
        // Origin form from a path that was already a valid URI's.
        parts.uri = Uri::from_parts(uri).unwrap_or_else(|_| Uri::from_static("/"));
        parts.version = http::Version::HTTP_11;
        if !parts.headers.contains_key(header::HOST) {
            parts
                .headers
                .insert(header::HOST, HeaderValue::from_static("localhost"));
        }
        let mut conn = match self.checkout().await {
            Some(conn) => conn,
            None => self.connect().await?,
        };
        let request = Request::from_parts(parts, body);
        let mut response =
            std::pin::pin!(conn.quietly(move |conn| conn.send.send_request(request)));
        let (response, alive) = std::future::poll_fn(|cx| {
            conn.poll_quietly(cx, |conn, cx| {
                let alive = conn.drive(cx);
                match response.as_mut().poll(cx) {
                    Poll::Pending if !alive => Poll::Ready((Err(ForwardError::Closed), false)),
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(result) => Poll::Ready((result.map_err(ForwardError::Http), alive)),
                }
            })
        })
        .await;
        let response = response?;
        let idle = self.idle.clone();
        // A connection that is done has handed the whole body over already.
        let conn = alive.then_some(conn);
        Ok(response.map(|body| {
            Body::new(DrivenBody {
                body: Some(body),
                conn,
                finished: false,
                idle,
            })
        }))
    }

    /// An idle connection that is ready for a request, if one is; closed
    /// ones are dropped on the way.
    async fn checkout(&self) -> Option<Conn> {
        loop {
            let mut conn = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop()?;
            let ready = std::future::poll_fn(|cx| {
                conn.poll_quietly(cx, |conn, cx| {
                    if !conn.drive(cx) {
                        return Poll::Ready(false);
                    }
                    conn.send.poll_ready(cx).map(|r| r.is_ok())
                })
            })
            .await;
            if ready {
                return Some(conn);
            }
        }
    }

    async fn connect(&self) -> Result<Conn, ForwardError> {
        let fd = self
            .link
            .connect()
            .await
            .map_err(|e| ForwardError::Connect(std::io::Error::other(e)))?;
        let stream = std::net::TcpStream::from(fd);
        stream
            .set_nonblocking(true)
            .map_err(ForwardError::Connect)?;
        stream.set_nodelay(true).map_err(ForwardError::Connect)?;
        let stream = tokio::net::TcpStream::from_std(stream).map_err(ForwardError::Connect)?;
        let (send, conn) = http1::handshake(TokioIo::new(stream)).await?;
        Ok(Conn::new(send, conn))
    }
}

/// A response body that drives its connection while it is read, and
/// gives the connection back once the body is whole.
struct DrivenBody {
    /// `None` only while it is dropped.
    body: Option<Incoming>,
    conn: Option<Conn>,
    /// The body's last frame has been read.
    finished: bool,
    idle: Arc<Mutex<Vec<Conn>>>,
}

impl HttpBody for DrivenBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let Some(body) = &mut this.body else {
            return Poll::Ready(None);
        };
        let frame = match &mut this.conn {
            Some(conn) => {
                let mut done = false;
                let frame = conn.poll_quietly(cx, |conn, cx| {
                    // A connection that is done still hands over what it
                    // read.
                    if !done && !conn.drive(cx) {
                        done = true;
                    }
                    Pin::new(&mut *body).poll_frame(cx)
                });
                if done {
                    this.conn = None;
                }
                ready!(frame)
            }
            None => ready!(Pin::new(body).poll_frame(cx)),
        };
        this.finished |= frame.is_none();
        Poll::Ready(frame.map(|f| f.map_err(|e| -> BodyError { Box::new(e) })))
    }

    fn is_end_stream(&self) -> bool {
        self.body.as_ref().is_none_or(HttpBody::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.body
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), HttpBody::size_hint)
    }
}

impl Drop for DrivenBody {
    fn drop(&mut self) {
        // Only a connection whose response was read whole can carry the
        // next request; the next user drives it to idle before sending.
        let whole = self.finished || self.is_end_stream();
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        // Dropping the body wakes the dispatcher, which is not waiting.
        let body = self.body.take();
        conn.quietly(move |_| drop(body));
        if whole && !conn.http.send.is_closed() {
            self.idle
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(conn);
        }
    }
}
