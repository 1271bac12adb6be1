//! Closing a client connection without losing its last answer.
//!
//! The gateway may answer before it has read a request's body: a 413 for a
//! `Content-Length` past the function's limit, a 404 for an unknown
//! function. hyper then closes the connection with the rest of the body
//! unread, and closing a socket with unread bytes makes the kernel send a
//! reset instead of a FIN. A client still sending its body gets "broken
//! pipe" or "connection reset", often before it has read the answer that
//! said why (RFC 9112 §9.6 warns of this). Like nginx's lingering close
//! and Go's `net/http`, a [`Lingering`] socket whose client has not closed
//! its side when the connection is dropped is kept open a little longer:
//! its write side is shut (the answer, then a FIN, reach the client) and
//! what the client still sends is read and thrown away, until it closes,
//! [`LINGER_FOR`] has passed or [`LINGER_BYTES`] have been read.
//!
//! A lingering socket keeps a descriptor, so the number lingering at once
//! is capped at a quarter of the connection cap ([`limit_to`]); past that
//! they close at once, as before. A connection the gateway closes on
//! purpose (idle, evicted to make room, shutting down) does not linger:
//! those closes are how the connection cap frees descriptors.

use std::io;
use std::net::Shutdown;
use std::os::fd::AsFd;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// How long a closed connection's socket may keep reading.
pub(crate) const LINGER_FOR: Duration = Duration::from_secs(2);
/// How much it may read and throw away.
pub(crate) const LINGER_BYTES: u64 = 64 << 20;

/// Sockets lingering now, and the most allowed, in this process (whose
/// descriptors they hold).
static LINGERING: AtomicUsize = AtomicUsize::new(0);
static MAX_LINGERING: AtomicUsize = AtomicUsize::new(256);

/// Caps the sockets lingering at once at a quarter of `max_connections`.
pub(crate) fn limit_to(max_connections: usize) {
    MAX_LINGERING.store((max_connections / 4).max(1), Ordering::Relaxed);
}

/// A client connection's socket that lingers when dropped while its client
/// may still be sending (see the module's documentation).
pub(crate) struct Lingering {
    stream: TcpStream,
    wanted: Arc<AtomicBool>,
}

impl Lingering {
    /// The socket, and the switch that stops it lingering (for a close
    /// the gateway chose).
    pub(crate) fn new(stream: TcpStream) -> (Lingering, Arc<AtomicBool>) {
        let wanted = Arc::new(AtomicBool::new(true));
        let socket = Lingering {
            stream,
            wanted: wanted.clone(),
        };
        (socket, wanted)
    }
}

impl Drop for Lingering {
    fn drop(&mut self) {
        if !self.wanted.load(Ordering::Relaxed) {
            return;
        }
        // A second descriptor keeps the socket open once `stream` closes
        // its own (tokio deregisters that one from the reactor first).
        let Ok(fd) = self.stream.as_fd().try_clone_to_owned() else {
            return;
        };
        let socket = std::net::TcpStream::from(fd);
        // Non-blocking, as the descriptor it shares its file with. A client
        // that has closed its side sends nothing more; any other may still
        // be sending (hyper may have read what had arrived), and a byte
        // arriving after the close would reset the connection too.
        let mut probe = [0u8; 1];
        match socket.peek(&mut probe) {
            Ok(n) if n > 0 => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            _ => return,
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if LINGERING.fetch_add(1, Ordering::AcqRel) >= MAX_LINGERING.load(Ordering::Relaxed) {
            LINGERING.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        runtime.spawn(async move {
            let _ = linger(socket).await;
            LINGERING.fetch_sub(1, Ordering::AcqRel);
        });
    }
}

/// Shuts `socket`'s write side, then reads until the client closes or
/// the limits are reached; the socket closes when this returns.
async fn linger(socket: std::net::TcpStream) -> io::Result<()> {
    socket.shutdown(Shutdown::Write)?;
    let mut socket = TcpStream::from_std(socket)?;
    let mut buf = vec![0u8; 64 << 10];
    let mut read = 0u64;
    let drain = async {
        while read < LINGER_BYTES {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => read += n as u64,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_FOR, drain).await;
    Ok(())
}

impl AsyncRead for Lingering {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Lingering {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
