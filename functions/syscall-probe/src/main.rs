//! `syscall-probe`: a test fixture, a container CGI function that makes
//! system calls a wisp sandbox must refuse (and a few it must allow) and
//! answers with what the kernel said, one line each: `<call>: ok`,
//! `<call>: EPERM`, `<call>: killed by signal 31`, ….
//!
//! A call that kills the caller (one of another ABI: x32, or i386 through
//! `int 0x80`) is made by a child: the program runs itself with the
//! call's name as its argument and reports how that child ended. A call
//! that should have been refused but ran is undone where it can be (the
//! descriptor closed, the child of a `clone` ended at once).

use std::io::Write;
use std::os::unix::process::ExitStatusExt;

use libc::c_long;

/// Makes system call `nr` with `args`.
///
/// # Safety
///
/// `args` must be what call `nr` takes: integers, or pointers to memory
/// that stays valid, and is big enough, for the call's duration.
unsafe fn raw(nr: c_long, args: [c_long; 5]) -> c_long {
    // SAFETY: the caller vouches for the arguments.
    unsafe { libc::syscall(nr, args[0], args[1], args[2], args[3], args[4]) }
}

/// Makes a call that takes only integers.
fn ints(nr: c_long, args: [c_long; 5]) -> c_long {
    // SAFETY: integers only; no memory is handed to the kernel.
    unsafe { raw(nr, args) }
}

/// What a call's return value says: `ok`, or the errno's name.
fn outcome(ret: c_long) -> String {
    if ret >= 0 {
        return "ok".to_owned();
    }
    let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
    let name = match errno {
        libc::EPERM => "EPERM",
        libc::ENOSYS => "ENOSYS",
        libc::EINVAL => "EINVAL",
        libc::EACCES => "EACCES",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        libc::EFAULT => "EFAULT",
        _ => return format!("errno {errno}"),
    };
    name.to_owned()
}

/// Closes a descriptor a call returned, if it returned one.
fn close(ret: c_long) -> c_long {
    if let Ok(fd) = i32::try_from(ret)
        && fd >= 0
    {
        // SAFETY: the descriptor was just returned to this process and
        // nothing else refers to it.
        unsafe { libc::close(fd) };
    }
    ret
}

/// A fork-like call's result: in the child (0), exits at once; in the
/// parent, reaps the child.
fn end_child(ret: c_long) -> c_long {
    if ret == 0 {
        // SAFETY: `_exit` ends this (child) process; it takes no pointers.
        unsafe { libc::_exit(0) }
    }
    if let Ok(pid) = i32::try_from(ret)
        && pid > 0
    {
        let mut status = 0;
        // SAFETY: `status` outlives the call.
        unsafe { libc::waitpid(pid, &mut status, 0) };
    }
    ret
}

fn socket(domain: c_long, kind: c_long) -> c_long {
    close(ints(libc::SYS_socket, [domain, kind, 0, 0, 0]))
}

fn personality(persona: c_long) -> c_long {
    let ret = ints(libc::SYS_personality, [persona, 0, 0, 0, 0]);
    // Back to the default persona, should it have been set.
    ints(libc::SYS_personality, [0, 0, 0, 0, 0]);
    ret
}

fn io_uring_setup() -> c_long {
    // struct io_uring_params: 120 bytes, zeroed for defaults.
    let mut params = [0u64; 15];
    // SAFETY: `params` is as big as the kernel's struct and outlives the call.
    close(unsafe {
        raw(
            libc::SYS_io_uring_setup,
            [1, params.as_mut_ptr() as c_long, 0, 0, 0],
        )
    })
}

fn clone3() -> c_long {
    // struct clone_args (88 bytes): no flags, SIGCHLD as exit signal.
    let mut args = [0u64; 11];
    args[4] = libc::SIGCHLD as u64;
    // SAFETY: `args` is as big as the size passed and outlives the call;
    // without CLONE_VM the child runs on a copy of this stack and exits.
    end_child(unsafe { raw(libc::SYS_clone3, [args.as_mut_ptr() as c_long, 88, 0, 0, 0]) })
}

fn clone(flags: c_long) -> c_long {
    // No new stack: like fork, the child runs on a copy of this one.
    end_child(ints(
        libc::SYS_clone,
        [flags | libc::SIGCHLD as c_long, 0, 0, 0, 0],
    ))
}

fn mount() -> c_long {
    let (source, target, fstype) = (c"none", c"/tmp", c"tmpfs");
    // SAFETY: three C strings that outlive the call, no data.
    unsafe {
        raw(
            libc::SYS_mount,
            [
                source.as_ptr() as c_long,
                target.as_ptr() as c_long,
                fstype.as_ptr() as c_long,
                0,
                0,
            ],
        )
    }
}

/// Runs this program again to make the call `name` (see [`in_child`]);
/// how the child ended.
fn child(name: &str) -> String {
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return format!("cannot find myself: {e}"),
    };
    match std::process::Command::new(exe).arg(name).status() {
        Ok(status) => match (status.signal(), status.code()) {
            (Some(signal), _) => format!("killed by signal {signal}"),
            (None, Some(0)) => "ok".to_owned(),
            (None, code) => format!("exit {code:?}"),
        },
        Err(e) => format!("cannot run myself: {e}"),
    }
}

/// In the child: makes the call `name`, which should kill it; exits 0 if
/// it returned success, 1 if it returned an error.
fn in_child(name: &str) -> ! {
    let ret = match name {
        // getpid (39) through x32's numbering.
        "x32" => ints(0x4000_0000 | libc::SYS_getpid, [0; 5]),
        "i386" => i386_getpid(),
        _ => -1,
    };
    std::process::exit(if ret >= 0 { 0 } else { 1 })
}

/// getpid (20 on i386) through the 32-bit entry point.
#[cfg(target_arch = "x86_64")]
fn i386_getpid() -> c_long {
    let ret: i64;
    // SAFETY: getpid reads and writes no memory; `int 0x80` from a 64-bit
    // process returns in rax and clobbers r8–r11.
    unsafe {
        std::arch::asm!(
            "int 0x80",
            inlateout("rax") 20i64 => ret,
            out("r8") _, out("r9") _, out("r10") _, out("r11") _,
            options(nostack),
        );
    }
    ret
}

#[cfg(not(target_arch = "x86_64"))]
fn i386_getpid() -> c_long {
    -1
}

fn main() {
    if let Some(name) = std::env::args().nth(1) {
        in_child(&name);
    }
    let ns = |flag: i32| c_long::from(flag);
    let calls: Vec<(&str, String)> = vec![
        ("io_uring_setup", outcome(io_uring_setup())),
        (
            "unshare(CLONE_NEWUSER)",
            outcome(ints(
                libc::SYS_unshare,
                [ns(libc::CLONE_NEWUSER), 0, 0, 0, 0],
            )),
        ),
        (
            "unshare(CLONE_NEWNET)",
            outcome(ints(
                libc::SYS_unshare,
                [ns(libc::CLONE_NEWNET), 0, 0, 0, 0],
            )),
        ),
        (
            "clone(CLONE_NEWUSER)",
            outcome(clone(ns(libc::CLONE_NEWUSER))),
        ),
        ("clone()", outcome(clone(0))),
        ("clone3", outcome(clone3())),
        (
            "socket(AF_VSOCK)",
            outcome(socket(
                c_long::from(libc::AF_VSOCK),
                c_long::from(libc::SOCK_STREAM),
            )),
        ),
        (
            "socket(AF_ALG)",
            outcome(socket(
                c_long::from(libc::AF_ALG),
                c_long::from(libc::SOCK_SEQPACKET),
            )),
        ),
        // The kernel reads an int: this is AF_VSOCK too.
        (
            "socket(1<<32|AF_VSOCK)",
            outcome(socket(
                1 << 32 | c_long::from(libc::AF_VSOCK),
                c_long::from(libc::SOCK_STREAM),
            )),
        ),
        (
            "socket(AF_INET)",
            outcome(socket(
                c_long::from(libc::AF_INET),
                c_long::from(libc::SOCK_STREAM),
            )),
        ),
        (
            "socket(AF_UNIX)",
            outcome(socket(
                c_long::from(libc::AF_UNIX),
                c_long::from(libc::SOCK_STREAM),
            )),
        ),
        ("personality(PER_LINUX32)", outcome(personality(0x0008))),
        (
            "personality(ADDR_NO_RANDOMIZE)",
            outcome(personality(c_long::from(libc::ADDR_NO_RANDOMIZE))),
        ),
        (
            "personality(READ_IMPLIES_EXEC)",
            outcome(personality(c_long::from(libc::READ_IMPLIES_EXEC))),
        ),
        ("mount", outcome(mount())),
        ("bpf", outcome(ints(libc::SYS_bpf, [0; 5]))),
        ("keyctl", outcome(ints(libc::SYS_keyctl, [0; 5]))),
        (
            "userfaultfd",
            outcome(close(ints(libc::SYS_userfaultfd, [0; 5]))),
        ),
        // A number no kernel has yet: the kernel itself would say ENOSYS.
        ("call 1000", outcome(ints(1000, [0; 5]))),
        ("x32 getpid", child("x32")),
        ("i386 getpid", child("i386")),
    ];
    let mut out = std::io::stdout().lock();
    let _ = write!(out, "Content-Type: text/plain\r\n\r\n");
    for (name, result) in calls {
        let _ = writeln!(out, "{name}: {result}");
    }
}
