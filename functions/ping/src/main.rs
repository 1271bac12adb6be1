//! `ping`: wisp's example container function, a static HTTP/1.1 server in the
//! shape of OpenFaaS's of-watchdog `http` mode.
//!
//! Listens on `0.0.0.0:$PORT` (default 8080). `GET /ping` answers `pong`;
//! any other request is echoed back as text: a greeting (`?name=` picks who,
//! `$GREETING` the word, as in `hello`), then method, path, query, headers
//! and body. One thread per connection, at most [`MAX_CONNECTIONS`] (more
//! get a 503), with keep-alive and an idle timeout; malformed requests get a
//! 4xx/5xx and the connection is closed. SIGTERM and SIGINT exit at once,
//! which matters when it runs as PID 1 of a container. Only `std`.

mod http;

use std::io::{self, BufReader, Read};
use std::net::{Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

const DEFAULT_PORT: u16 = 8080;
/// Connections served at once; further ones are answered 503 and closed.
const MAX_CONNECTIONS: usize = 512;
/// How long a connection may sit idle (or stall mid-request) before it is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long, after refusing a request, unread input is drained so that the
/// refusal is not lost to a reset.
const LINGER: Duration = Duration::from_millis(500);

fn main() -> ExitCode {
    signal::exit_on_term();
    let port = match std::env::var("PORT") {
        Err(_) => DEFAULT_PORT,
        Ok(text) => match text.parse::<u16>() {
            Ok(port) => port,
            Err(_) => {
                eprintln!("ping: PORT={text:?} is not a port number");
                return ExitCode::from(2);
            }
        },
    };
    let listener = match TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("ping: cannot listen on 0.0.0.0:{port}: {e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!("ping: listening on 0.0.0.0:{port}");
    let open = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(stream) => stream,
            Err(e) => {
                // Out of file descriptors, say: back off instead of spinning.
                eprintln!("ping: accept failed: {e}");
                thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let Some(slot) = Slot::take(&open) else {
            refuse_busy(&stream);
            continue;
        };
        let spawned = thread::Builder::new()
            .name("ping-conn".into())
            .spawn(move || {
                let _slot = slot;
                serve(&stream);
            });
        if let Err(e) = spawned {
            eprintln!("ping: cannot start a connection thread: {e}");
        }
    }
    ExitCode::SUCCESS
}

/// One of the [`MAX_CONNECTIONS`] places, given back when dropped.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(open: &Arc<AtomicUsize>) -> Option<Slot> {
        open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < MAX_CONNECTIONS).then_some(n + 1)
        })
        .ok()
        .map(|_| Slot(Arc::clone(open)))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves the requests of one connection until it closes or fails.
fn serve(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(IDLE_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IDLE_TIMEOUT));
    let mut reader = BufReader::new(stream);
    let mut writer = stream;
    loop {
        match http::read_request(&mut reader, &mut writer) {
            Ok(request) => {
                let (status, body) = respond(&request);
                let head_only = request.method == "HEAD";
                let written = http::write_response(
                    &mut writer,
                    status,
                    &body,
                    head_only,
                    !request.keep_alive,
                    request.http10,
                );
                if written.is_err() || !request.keep_alive {
                    return;
                }
            }
            Err(http::ReadError::Closed) => return,
            Err(http::ReadError::Reject { status, detail }) => {
                let body = format!("{detail}\n");
                let _ =
                    http::write_response(&mut writer, status, body.as_bytes(), false, true, false);
                // Closing with unread input would reset the connection and
                // could discard the answer: drain a little first.
                let _ = stream.shutdown(Shutdown::Write);
                let _ = stream.set_read_timeout(Some(LINGER));
                let _ = io::copy(&mut reader.take(1 << 20), &mut io::sink());
                return;
            }
        }
    }
}

/// The response to one request: `pong`, or the request echoed.
fn respond(request: &http::Request) -> (u16, Vec<u8>) {
    let (path, query) = request
        .target
        .split_once('?')
        .unwrap_or((request.target.as_str(), ""));
    if path == "/ping" && (request.method == "GET" || request.method == "HEAD") {
        return (200, b"pong".to_vec());
    }
    let name = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("name="))
        .filter(|name| !name.is_empty())
        .unwrap_or("world");
    let greeting = std::env::var("GREETING").unwrap_or_else(|_| "Hello".into());
    let mut body = format!(
        "{greeting}, {name}! (from wisp's ping function)\nmethod: {}\npath: {path}\nquery: {query}\n",
        request.method
    );
    for (name, value) in &request.headers {
        body.push_str(&format!("header: {name}: {value}\n"));
    }
    body.push_str("body: ");
    let mut body = body.into_bytes();
    body.extend_from_slice(&request.body);
    body.push(b'\n');
    (200, body)
}

/// Answers 503 to a connection over the limit, without waiting on it.
fn refuse_busy(stream: &TcpStream) {
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    let mut writer = stream;
    let _ = http::write_response(
        &mut writer,
        503,
        b"too many connections\n",
        false,
        true,
        false,
    );
}

/// Exit on SIGTERM and SIGINT. As PID 1 of a PID namespace the process gets
/// no default action for them, so without handlers a stop would have to
/// wait for SIGKILL.
mod signal {
    const SIGINT: i32 = 2;
    const SIGTERM: i32 = 15;

    unsafe extern "C" {
        fn signal(signum: i32, handler: extern "C" fn(i32)) -> usize;
        fn _exit(status: i32) -> !;
    }

    extern "C" fn exit_now(_signum: i32) {
        // SAFETY: `_exit` is async-signal-safe and takes no pointers.
        unsafe { _exit(0) }
    }

    pub fn exit_on_term() {
        for signum in [SIGINT, SIGTERM] {
            // SAFETY: `exit_now` has the C handler signature, lives for the
            // whole process and only calls the async-signal-safe `_exit`.
            unsafe {
                signal(signum, exit_now);
            }
        }
    }
}
