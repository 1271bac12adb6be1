//! The messages between the gateway, the spawner and each container's
//! init: JSON documents, one per `SOCK_SEQPACKET` packet, with file
//! descriptors riding along as `SCM_RIGHTS`. Both sides are wisp, built
//! together, so there is no versioning.

use std::io::IoSlice;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use nix::sys::socket::{self, ControlMessage, ControlMessageOwned, MsgFlags};
use serde::{Deserialize, Serialize};

use crate::container::plan::{Filesystems, SandboxPlan};

/// Largest packet either side sends (a plan with a big environment).
pub const MAX_PACKET: usize = 1 << 20;
/// Most descriptors one packet carries.
const MAX_FDS: usize = 4;

/// Gateway → spawner.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToSpawner {
    /// Make a sandbox; answered with a [`SpawnReply`].
    Spawn(SpawnRequest),
    /// The sandbox whose init is `pid` has ended: its cgroup is empty. The
    /// network namespace the spawner handed over with it
    /// ([`SpawnReply::Spawned`]) rides along, to be kept for another
    /// sandbox once its init is reaped and it is found empty. Not answered.
    Ended { pid: i32 },
}

/// Make a sandbox (namespaces, cgroup, loopback) that then waits for its
/// function ([`ToInit::Run`]).
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpawnRequest {
    /// The sandbox's cgroup directories, which the container joins itself.
    pub cgroup_dirs: Vec<PathBuf>,
    /// Made ahead of demand: the sandbox sets itself up at `SCHED_IDLE`
    /// priority, so that it never takes a CPU from a cold start in
    /// progress; the gateway raises it when it takes the sandbox.
    pub background: bool,
    /// Where container root maps to: the owner of what the sandbox mounts
    /// ahead of its function (its standard `/proc`, `/dev`, `/tmp`, kept
    /// detached until its root filesystem exists, and its scratch tmpfs).
    pub id_map: crate::container::plan::IdMap,
    /// An empty host directory the sandbox mounts its scratch tmpfs on
    /// (inside its own mount namespace, so every sandbox uses the same one).
    pub scratch: PathBuf,
    /// The host directories a sandbox uses before its `pivot_root` (the
    /// data dir, wisp's cgroup directories): with the first request, the
    /// spawner moves into a mount namespace that holds only these and
    /// `/proc` ([`crate::container::host_view`]). Empty: the host's whole
    /// mount table, as sandboxes had it before.
    #[serde(default)]
    pub host_dirs: Vec<PathBuf>,
}

/// Spawner → gateway. With `Spawned`, the descriptors are the control
/// socket to the container's init, a pidfd of it and, when the spawner
/// keeps network namespaces for reuse, the sandbox's network namespace: the
/// gateway holds it while the sandbox lives (so the spawner, whose
/// descriptor table every new sandbox copies, holds none per sandbox) and
/// hands it back with [`ToSpawner::Ended`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SpawnReply {
    /// `netns_reused`: the sandbox got a kept network namespace.
    Spawned {
        pid: i32,
        netns_reused: bool,
    },
    Failed {
        error: String,
    },
}

/// Init → gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FromInit {
    /// The filesystems of `ToInit::Mount` are in place.
    Mounted,
    /// The sandbox is ready; for `http`, a connected socket rides along,
    /// for `lambda` the Runtime API's listening socket.
    Ready { timings: Timings },
    /// Setting the sandbox up failed at `stage`.
    SetupFailed { stage: Stage, error: String },
    /// The handler (for `http`) exited; the sandbox is gone.
    Exited(ExitReport),
    /// A new connection to the handler's port rides along.
    Connection,
    /// No connection could be made.
    ConnectFailed { error: String },
    /// A CGI process ended.
    CgiDone { id: u64, status: ExitStatus },
    /// A CGI process could not be started.
    CgiFailed { id: u64, error: String },
    /// Output of the handler.
    Output { stream: Stream, text: String },
}

/// Which of a handler's output streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    /// The name handlers' logs use.
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// The steps of a sandbox's set-up, as init reports a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stage {
    Signals,
    Pdeathsig,
    Cgroup,
    CgroupNamespace,
    NetworkNamespace,
    Loopback,
    MakePrivate,
    Hostname,
    Setgroups,
    UserNamespace,
    Setresgid,
    Setresuid,
    BoundingSet,
    ScratchTmpfs,
    ScratchDirs,
    Overlay,
    PivotRoot,
    DetachHostRoot,
    Mounts,
    Devices,
    Pipes,
    Fork,
    Poll,
    RuntimeApi,
    Exec,
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stage::Signals => "signals",
            Stage::Pdeathsig => "pdeathsig",
            Stage::Cgroup => "cgroup",
            Stage::CgroupNamespace => "cgroup namespace",
            Stage::NetworkNamespace => "network namespace",
            Stage::Loopback => "loopback",
            Stage::MakePrivate => "making / private",
            Stage::Hostname => "hostname",
            Stage::Setgroups => "setgroups",
            Stage::UserNamespace => "user namespace",
            Stage::Setresgid => "setresgid",
            Stage::Setresuid => "setresuid",
            Stage::BoundingSet => "capability bounding set",
            Stage::ScratchTmpfs => "scratch tmpfs",
            Stage::ScratchDirs => "scratch dirs",
            Stage::Overlay => "overlay",
            Stage::PivotRoot => "pivot_root",
            Stage::DetachHostRoot => "detaching the host root",
            Stage::Mounts => "mounts",
            Stage::Devices => "devices",
            Stage::Pipes => "pipes",
            Stage::Fork => "fork",
            Stage::Poll => "poll",
            Stage::RuntimeApi => "the Lambda Runtime API's socket",
            Stage::Exec => "exec",
        })
    }
}

/// Gateway → init.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToInit {
    /// Mount these filesystems and `pivot_root` into them now, ahead of a
    /// function that will ask for them (at most once, to a waiting
    /// sandbox, before `Run`); answered `Mounted` or `SetupFailed`.
    Mount { filesystems: Box<Filesystems> },
    /// Become this function's sandbox (sent once, to a waiting sandbox).
    Run { plan: Box<SandboxPlan> },
    /// The sandbox's cgroup limits are in place: start the handler. Sent
    /// after `Run`, so that the gateway writes the limits while the
    /// sandbox mounts its root filesystem.
    Start,
    /// Open a connection to the handler's port.
    Connect,
    /// Run one CGI process; its stdin, stdout and stderr ride along.
    Cgi { id: u64, env: Vec<String> },
    /// Ask the handler to stop (SIGTERM), kill it after `grace_ms`.
    Stop { grace_ms: u64 },
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitStatus::Code(c) => write!(f, "exit status {c}"),
            ExitStatus::Signal(s) => {
                let name = nix::sys::signal::Signal::try_from(*s)
                    .map_or_else(|_| format!("signal {s}"), |sig| sig.as_str().to_owned());
                write!(f, "killed by {name}")
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitReport {
    pub status: ExitStatus,
    /// The last bytes the handler wrote to stderr.
    pub stderr_tail: String,
    /// Whether it exited before it became ready.
    pub before_ready: bool,
}

/// `CLOCK_MONOTONIC` nanoseconds at the steps of a start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timings {
    /// The container process began (after the spawner's clone).
    pub cloned: u64,
    /// cgroup joined, namespaces and loopback done: waiting for a function.
    pub sandbox: u64,
    /// The function's plan arrived.
    pub assigned: u64,
    /// Rootfs mounted, root pivoted, user namespace entered.
    pub rootfs: u64,
    /// `Start` arrived: the gateway has written the cgroup's limits.
    pub started: u64,
    /// The handler was exec'd.
    pub exec: u64,
    /// The handler accepted a connection (or, for CGI, init was ready).
    pub ready: u64,
}

/// `CLOCK_MONOTONIC` now, in nanoseconds.
pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_or(0, |t| {
        u64::try_from(t.tv_sec()).unwrap_or(0) * 1_000_000_000
            + u64::try_from(t.tv_nsec()).unwrap_or(0)
    })
}

#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    #[error("{0}")]
    Sys(#[from] nix::Error),
    #[error("malformed message: {0}")]
    Json(#[from] serde_json::Error),
    #[error("the peer closed the socket")]
    Closed,
    #[error("message of {0} bytes is too large")]
    TooLarge(usize),
}

/// Sends `msg` with `fds` on a `SOCK_SEQPACKET` socket (blocking or not,
/// as the socket is).
pub fn send<T: Serialize>(
    sock: BorrowedFd<'_>,
    msg: &T,
    fds: &[BorrowedFd<'_>],
) -> Result<(), ProtoError> {
    let bytes = serde_json::to_vec(msg)?;
    if bytes.len() > MAX_PACKET {
        return Err(ProtoError::TooLarge(bytes.len()));
    }
    let raw: Vec<RawFd> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
    let cmsgs = if raw.is_empty() {
        Vec::new()
    } else {
        vec![ControlMessage::ScmRights(&raw)]
    };
    socket::sendmsg::<()>(
        sock.as_raw_fd(),
        &[IoSlice::new(&bytes)],
        &cmsgs,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )?;
    Ok(())
}

/// Receives one message and the descriptors that came with it. `buf` is
/// sized to the message (peeked first), so idle processes keep no
/// megabyte buffers.
pub fn recv<T: for<'de> Deserialize<'de>>(
    sock: BorrowedFd<'_>,
    buf: &mut Vec<u8>,
) -> Result<(T, Vec<OwnedFd>), ProtoError> {
    // SOCK_SEQPACKET with MSG_TRUNC reports the packet's real length.
    let peek = || {
        socket::recv(
            sock.as_raw_fd(),
            &mut [],
            MsgFlags::MSG_PEEK | MsgFlags::MSG_TRUNC,
        )
    };
    // A peer that exited with messages of ours unread leaves ECONNRESET
    // pending ahead of what it sent before it exited (init's report of a
    // failed set-up step, a handler's exit): the error is returned once,
    // then those messages, then end of file.
    let len = match peek() {
        Err(nix::errno::Errno::ECONNRESET) => peek()?,
        other => other?,
    };
    if len > MAX_PACKET {
        return Err(ProtoError::TooLarge(len));
    }
    buf.clear();
    buf.resize(len.max(1), 0);
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
    let (len, fds) = {
        let mut iov = [std::io::IoSliceMut::new(buf)];
        let msg = socket::recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )?;
        let mut fds = Vec::new();
        for c in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(received) = c {
                for fd in received {
                    // SAFETY: the kernel just installed `fd` in this
                    // process for us; nothing else owns it.
                    fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
        }
        (msg.bytes, fds)
    };
    if len == 0 {
        return Err(ProtoError::Closed);
    }
    Ok((serde_json::from_slice(&buf[..len])?, fds))
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io::{Read, Write};
    use std::os::fd::AsFd;

    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};

    use super::*;

    /// A connected pair as control sockets are made, with `extra` flags
    /// (the gateway's end is non-blocking).
    pub(crate) fn pair_with(extra: SockFlag) -> (OwnedFd, OwnedFd) {
        socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC | extra,
        )
        .unwrap()
    }

    fn pair() -> (OwnedFd, OwnedFd) {
        pair_with(SockFlag::empty())
    }

    /// Init fails a set-up step after `Run` and exits before reading the
    /// gateway's `Start`: its report is still read, after the reset.
    #[test]
    fn a_report_sent_before_the_peer_exited_is_read_after_its_reset() {
        let (gateway, init) = pair();
        let report = FromInit::SetupFailed {
            stage: Stage::Overlay,
            error: "ENOENT: No such file or directory".into(),
        };
        send(init.as_fd(), &report, &[]).unwrap();
        send(gateway.as_fd(), &ToInit::Start, &[]).unwrap();
        drop(init);
        let mut buf = Vec::new();
        let (got, _) = recv::<FromInit>(gateway.as_fd(), &mut buf).unwrap();
        assert_eq!(got, report);
        assert!(matches!(
            recv::<FromInit>(gateway.as_fd(), &mut buf),
            Err(ProtoError::Closed)
        ));
    }

    #[test]
    fn messages_and_descriptors_round_trip() {
        let (a, b) = pair();
        let (pipe_r, pipe_w) = nix::unistd::pipe().unwrap();
        let msg = FromInit::Output {
            stream: Stream::Stderr,
            text: "hello\n".into(),
        };
        send(a.as_fd(), &msg, &[pipe_w.as_fd()]).unwrap();
        drop(pipe_w);
        let mut buf = Vec::new();
        let (got, fds) = recv::<FromInit>(b.as_fd(), &mut buf).unwrap();
        assert!(matches!(
            got,
            FromInit::Output { stream: Stream::Stderr, ref text } if text == "hello\n"
        ));
        // The descriptor that rode along is the pipe's write end.
        let [fd] = <[OwnedFd; 1]>::try_from(fds).unwrap();
        std::fs::File::from(fd).write_all(b"through").unwrap();
        let mut read = String::new();
        std::fs::File::from(pipe_r)
            .read_to_string(&mut read)
            .unwrap();
        assert_eq!(read, "through");
        assert_eq!(buf.len(), serde_json::to_vec(&msg).unwrap().len());
    }

    #[test]
    fn a_setup_failure_keeps_its_stage() {
        let (a, b) = pair();
        let msg = FromInit::SetupFailed {
            stage: Stage::PivotRoot,
            error: "EINVAL".into(),
        };
        send(a.as_fd(), &msg, &[]).unwrap();
        let (got, fds) = recv::<FromInit>(b.as_fd(), &mut Vec::new()).unwrap();
        assert!(fds.is_empty());
        assert!(matches!(
            got,
            FromInit::SetupFailed { stage: Stage::PivotRoot, ref error } if error == "EINVAL"
        ));
        assert_eq!(Stage::PivotRoot.to_string(), "pivot_root");
    }

    #[test]
    fn closed_and_oversized() {
        let (a, b) = pair();
        let big = "x".repeat(MAX_PACKET);
        assert!(matches!(
            send(a.as_fd(), &big, &[]),
            Err(ProtoError::TooLarge(_))
        ));
        drop(a);
        assert!(matches!(
            recv::<ToInit>(b.as_fd(), &mut Vec::new()),
            Err(ProtoError::Closed)
        ));
    }

    #[test]
    fn garbage_is_refused() {
        let (a, b) = pair();
        nix::unistd::write(&a, b"{not json").unwrap();
        assert!(matches!(
            recv::<ToInit>(b.as_fd(), &mut Vec::new()),
            Err(ProtoError::Json(_))
        ));
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;
        use crate::container::plan::{self, ContainerSettings, IdMap};
        use crate::image::ImageConfig;
        use crate::protocol::Protocol;

        /// Any text, control characters and all.
        fn text() -> impl Strategy<Value = String> {
            prop_oneof!["\\PC{0,24}", ".{0,24}", "[\\x00-\\x1f\"\\\\]{0,8}"]
        }

        fn exit_status() -> impl Strategy<Value = ExitStatus> {
            prop_oneof![
                any::<i32>().prop_map(ExitStatus::Code),
                any::<i32>().prop_map(ExitStatus::Signal),
            ]
        }

        fn stage() -> impl Strategy<Value = Stage> {
            use Stage::*;
            prop::sample::select(vec![
                Signals,
                Pdeathsig,
                Cgroup,
                CgroupNamespace,
                NetworkNamespace,
                Loopback,
                MakePrivate,
                Hostname,
                Setgroups,
                UserNamespace,
                Setresgid,
                Setresuid,
                BoundingSet,
                ScratchTmpfs,
                ScratchDirs,
                Overlay,
                PivotRoot,
                DetachHostRoot,
                Mounts,
                Devices,
                Pipes,
                Fork,
                Poll,
                Exec,
            ])
        }

        fn from_init() -> impl Strategy<Value = FromInit> {
            let timings = any::<[u64; 7]>().prop_map(|t| Timings {
                cloned: t[0],
                sandbox: t[1],
                assigned: t[2],
                rootfs: t[3],
                started: t[4],
                exec: t[5],
                ready: t[6],
            });
            let stream = prop::sample::select(vec![Stream::Stdout, Stream::Stderr]);
            prop_oneof![
                timings.prop_map(|timings| FromInit::Ready { timings }),
                Just(FromInit::Mounted),
                (stage(), text()).prop_map(|(stage, error)| FromInit::SetupFailed { stage, error }),
                (exit_status(), text(), any::<bool>()).prop_map(
                    |(status, stderr_tail, before_ready)| FromInit::Exited(ExitReport {
                        status,
                        stderr_tail,
                        before_ready,
                    })
                ),
                Just(FromInit::Connection),
                text().prop_map(|error| FromInit::ConnectFailed { error }),
                (any::<u64>(), exit_status())
                    .prop_map(|(id, status)| FromInit::CgiDone { id, status }),
                (any::<u64>(), text()).prop_map(|(id, error)| FromInit::CgiFailed { id, error }),
                (stream, text()).prop_map(|(stream, text)| FromInit::Output { stream, text }),
            ]
        }

        /// A plan made by the planner from arbitrary settings and image.
        fn sandbox_plan() -> impl Strategy<Value = Option<SandboxPlan>> {
            let words = || prop::collection::vec(text(), 0..4);
            let pairs = prop::collection::vec((text(), text()), 0..4);
            (
                text(),
                words(),
                pairs,
                words(),
                words(),
                any::<u16>(),
                any::<bool>(),
            )
                .prop_map(|(name, command, env, entrypoint, image_env, port, cgi)| {
                    let settings = ContainerSettings {
                        name,
                        command,
                        env,
                        protocol: if cgi { Protocol::Cgi } else { Protocol::Http },
                        port,
                        memory_bytes: u64::from(port) << 20,
                        cpu_millis: cgi.then_some(500),
                        pids: plan::DEFAULT_PIDS,
                        scratch_bytes: plan::DEFAULT_SCRATCH_BYTES,
                        secrets: None,
                    };
                    let image = ImageConfig {
                        entrypoint,
                        env: image_env,
                        working_dir: Some("/srv".into()),
                        ..ImageConfig::default()
                    };
                    let layers = ["/layers/a".into(), "/layers/b".into()];
                    plan::plan(
                        &settings,
                        &image,
                        &layers,
                        IdMap::default(),
                        crate::container::users::Ids { uid: 0, gid: 0 },
                    )
                    .ok()
                })
        }

        fn to_init() -> impl Strategy<Value = ToInit> {
            prop_oneof![
                sandbox_plan().prop_map(|plan| match plan {
                    Some(plan) => ToInit::Run {
                        plan: Box::new(plan)
                    },
                    None => ToInit::Start,
                }),
                sandbox_plan().prop_map(|plan| match plan {
                    Some(plan) => ToInit::Mount {
                        filesystems: Box::new(plan.filesystems())
                    },
                    None => ToInit::Start,
                }),
                Just(ToInit::Start),
                Just(ToInit::Connect),
                (any::<u64>(), prop::collection::vec(text(), 0..6))
                    .prop_map(|(id, env)| ToInit::Cgi { id, env }),
                any::<u64>().prop_map(|grace_ms| ToInit::Stop { grace_ms }),
            ]
        }

        fn spawn_reply() -> impl Strategy<Value = SpawnReply> {
            prop_oneof![
                (any::<i32>(), any::<bool>())
                    .prop_map(|(pid, netns_reused)| SpawnReply::Spawned { pid, netns_reused }),
                text().prop_map(|error| SpawnReply::Failed { error }),
            ]
        }

        /// Sends `msg` through a socket pair and decodes it on the other side.
        fn through_socket<T: Serialize + for<'de> Deserialize<'de>>(msg: &T) -> T {
            let (a, b) = pair();
            send(a.as_fd(), msg, &[]).unwrap();
            recv::<T>(b.as_fd(), &mut Vec::new()).unwrap().0
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn messages_decode_to_what_was_encoded(
                from in from_init(),
                to in to_init(),
                reply in spawn_reply(),
                cgroups in prop::collection::vec("[a-z/]{1,12}", 0..3),
                background: bool,
            ) {
                prop_assert_eq!(&through_socket(&from), &from);
                prop_assert_eq!(&through_socket(&to), &to);
                prop_assert_eq!(&through_socket(&reply), &reply);
                let request = SpawnRequest {
                    cgroup_dirs: cgroups.into_iter().map(PathBuf::from).collect(),
                    background,
                    id_map: IdMap::default(),
                    scratch: PathBuf::from("/scratch"),
                    host_dirs: vec![PathBuf::from("/data")],
                };
                prop_assert_eq!(&through_socket(&request), &request);
                let spawn = ToSpawner::Spawn(request);
                prop_assert_eq!(&through_socket(&spawn), &spawn);
                let ended = ToSpawner::Ended { pid: 7 };
                prop_assert_eq!(&through_socket(&ended), &ended);
            }

            #[test]
            fn any_packet_decodes_or_is_refused(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
                let (a, b) = pair();
                nix::unistd::write(&a, &bytes).unwrap();
                match recv::<FromInit>(b.as_fd(), &mut Vec::new()) {
                    Ok(_) | Err(ProtoError::Json(_)) => {}
                    // An empty packet reads as the peer's end.
                    Err(ProtoError::Closed) => prop_assert!(bytes.is_empty()),
                    Err(e) => prop_assert!(false, "{e}"),
                }
                let _ = serde_json::from_slice::<ToInit>(&bytes);
                let _ = serde_json::from_slice::<ToSpawner>(&bytes);
                let _ = serde_json::from_slice::<SpawnReply>(&bytes);
            }

            #[test]
            fn damaged_messages_decode_or_are_refused(
                msg in from_init(),
                to in to_init(),
                at in any::<prop::sample::Index>(),
                byte: u8,
                cut in any::<prop::sample::Index>(),
            ) {
                let from = serde_json::to_vec(&msg).unwrap();
                let to = serde_json::to_vec(&to).unwrap();
                // A message cut short is never taken for one.
                prop_assert!(serde_json::from_slice::<FromInit>(&from[..cut.index(from.len())]).is_err());
                prop_assert!(serde_json::from_slice::<ToInit>(&to[..cut.index(to.len())]).is_err());
                // One with a byte changed decodes or is refused.
                for mut bytes in [from, to] {
                    let i = at.index(bytes.len());
                    bytes[i] = byte;
                    let _ = serde_json::from_slice::<FromInit>(&bytes);
                    let _ = serde_json::from_slice::<ToInit>(&bytes);
                }
            }
        }
    }
}
