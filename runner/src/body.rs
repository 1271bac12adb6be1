//! Request bodies with a cap. The cap is enforced while the body streams,
//! so a client that lies about (or omits) `Content-Length` cannot push more
//! than the function's limit into a sandbox; the shared flag lets the caller
//! answer 413 even when the handler swallowed the read error.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;

use crate::backend::{Body, BodyError};

/// The error a capped body yields once more than `limit` bytes arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("request body is larger than the limit of {limit} bytes")]
pub struct BodyTooLarge {
    pub limit: u64,
}

/// Wraps `body` so that it fails after `limit` bytes; the flag turns true
/// when that happens.
pub fn cap(body: Body, limit: u64) -> (Body, Arc<AtomicBool>) {
    let exceeded = Arc::new(AtomicBool::new(false));
    let capped = Capped {
        inner: body,
        remaining: limit,
        limit,
        exceeded: exceeded.clone(),
    };
    (capped.boxed_unsync(), exceeded)
}

/// Reads a whole body into memory, refusing more than `limit` bytes.
pub async fn collect(body: Body, limit: u64) -> Result<Bytes, BodyError> {
    let (body, _) = cap(body, limit);
    Ok(body.collect().await?.to_bytes())
}

struct Capped {
    inner: Body,
    remaining: u64,
    limit: u64,
    exceeded: Arc<AtomicBool>,
}

impl HttpBody for Capped {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            other => return other,
        };
        if let Some(data) = frame.data_ref() {
            let len = data.len() as u64;
            if len > self.remaining {
                self.exceeded.store(true, Ordering::Release);
                self.remaining = 0;
                return Poll::Ready(Some(Err(Box::new(BodyTooLarge { limit: self.limit }))));
            }
            self.remaining -= len;
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::full_body;

    #[tokio::test]
    async fn within_the_cap_passes() {
        let bytes = collect(full_body("hello"), 5).await.unwrap();
        assert_eq!(bytes, "hello");
    }

    #[tokio::test]
    async fn over_the_cap_fails_and_flags() {
        let (body, flag) = cap(full_body("hello!"), 5);
        let err = body.collect().await.unwrap_err();
        assert_eq!(
            err.downcast_ref::<BodyTooLarge>(),
            Some(&BodyTooLarge { limit: 5 })
        );
        assert!(flag.load(Ordering::Acquire));
    }
}
