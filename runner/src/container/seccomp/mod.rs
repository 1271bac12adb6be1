//! The seccomp filter every handler runs under: Docker's default profile,
//! an allow-list.
//!
//! [`profile`] resolves the profile (kept as data, `default.json`) for the
//! host's architecture, the running kernel and the capabilities wisp
//! grants a handler, none: about 330 system calls are allowed, some only
//! with certain arguments (`socket` without `AF_ALG` or `AF_VSOCK`,
//! `personality` with Docker's values but the 32-bit ones, `clone`
//! without namespace flags; wisp also leaves out `ptrace` and
//! `process_vm_readv`/`writev`); `clone3` fails with `ENOSYS`, so that libcs fall back to
//! `clone`, whose flags a filter can see; every other call, including any
//! call newer than the profile, fails with `EPERM`. [`syscalls`] gives the
//! names their numbers.
//!
//! A call made through another ABI kills the process. A 32-bit call
//! (`int 0x80` on x86_64, AArch32 on aarch64) reports another audit
//! architecture. An x32 call on x86_64 reports the native one, with bit 30
//! set in its number (`__X32_SYSCALL_BIT`): seccompiler's programs never
//! look at that bit, so a deny-list built with it let every x32 call
//! through; here the bit is tested first (an allow-list would also refuse
//! such numbers, none being listed, but should not depend on it). [`bpf`]
//! writes the program: a binary search over the numbers, because
//! seccompiler's one comparison per call made installing it cost ~1.1 ms.
//!
//! The filter is compiled once, in the spawner, and installed by each
//! handler's process: the zygote before it waits for its command, a CGI
//! process just before `execve`. What those processes still do after it
//! (read the command, `setresuid`, `capset`, `chdir`, `execve`) is in the
//! allow-list.

mod bpf;
mod profile;
mod syscalls;

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule,
};

use bpf::Leaf;
pub use profile::ProfileError;
use profile::{Action, Arch, ArgCheck, ArgWidth, CmpOp, KernelVersion, Profile, ProfilePlan, When};

/// The capabilities a handler's bounding set holds: none.
const HANDLER_CAPABILITIES: &[&str] = &[];

/// Where the running kernel's release is.
const OSRELEASE: &str = "/proc/sys/kernel/osrelease";

/// The compiled filter: one BPF program.
#[derive(Debug, Clone)]
pub struct Filters {
    program: BpfProgram,
}

/// Why the filter could not be built or installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("building the seccomp filter: architecture {0} is not supported")]
    Arch(&'static str),
    #[error("building the seccomp filter: reading the kernel release from {OSRELEASE}: {0}")]
    Kernel(#[source] std::io::Error),
    #[error("building the seccomp filter: kernel release {0:?} is not a version")]
    KernelVersion(String),
    #[error("building the seccomp filter: {0}")]
    Profile(#[source] ProfileError),
    #[error("building the seccomp filter: {0}")]
    Build(#[source] seccompiler::BackendError),
    #[error("installing the seccomp filter: {0}")]
    Apply(#[source] seccompiler::Error),
}

impl SeccompError {
    /// The errno an installation failed with (0 for any other error).
    pub fn errno(&self) -> i32 {
        match self {
            SeccompError::Apply(seccompiler::Error::Prctl(e) | seccompiler::Error::Seccomp(e)) => {
                e.raw_os_error().unwrap_or(0)
            }
            SeccompError::Apply(seccompiler::Error::EmptyFilter) => libc::EINVAL,
            _ => 0,
        }
    }
}

impl Filters {
    /// Compiles the filter for the host's architecture and kernel.
    pub fn compile() -> Result<Filters, SeccompError> {
        let arch = Arch::host().ok_or(SeccompError::Arch(std::env::consts::ARCH))?;
        let release = std::fs::read_to_string(OSRELEASE).map_err(SeccompError::Kernel)?;
        let kernel = KernelVersion::parse(release.trim())
            .ok_or_else(|| SeccompError::KernelVersion(release.trim().to_owned()))?;
        let plan = Profile::docker_default()
            .and_then(|p| p.resolve(arch, HANDLER_CAPABILITIES, kernel))
            .map_err(SeccompError::Profile)?;
        Filters::of_plan(&plan, arch)
    }

    /// The filter that carries `plan` out on `arch` (the host's: names
    /// are numbered for it).
    fn of_plan(plan: &ProfilePlan, arch: Arch) -> Result<Filters, SeccompError> {
        let ret = |action: Action| match action {
            Action::Allow => u32::from(SeccompAction::Allow),
            Action::Errno(errno) => u32::from(SeccompAction::Errno(errno)),
        };
        let mut calls = BTreeMap::new();
        for (name, rule) in &plan.calls {
            // Not a call of this architecture: skipped, as Docker does.
            let Some(nr) = syscalls::number(name).and_then(|nr| u32::try_from(nr).ok()) else {
                continue;
            };
            let leaf = match &rule.when {
                When::Always => Leaf::Return(ret(rule.action)),
                When::AnyOf(alternatives) => Leaf::Checked {
                    rules: seccompiler_rules(alternatives).map_err(SeccompError::Build)?,
                    on_match: ret(rule.action),
                },
            };
            calls.insert(nr, leaf);
        }
        let default = ret(Action::Errno(plan.default_errno));
        let program = bpf::program(arch, &calls, default).map_err(SeccompError::Build)?;
        Ok(Filters { program })
    }

    /// Loads the filter into the calling thread. `no_new_privs` must be set.
    pub fn apply(&self) -> Result<(), SeccompError> {
        seccompiler::apply_filter(&self.program).map_err(SeccompError::Apply)
    }
}

/// seccompiler's rules for conditions of which one must hold.
fn seccompiler_rules(
    alternatives: &[Vec<ArgCheck>],
) -> Result<Vec<SeccompRule>, seccompiler::BackendError> {
    alternatives
        .iter()
        .map(|checks| {
            let conditions = checks
                .iter()
                .map(|c| {
                    let width = match c.width {
                        ArgWidth::Dword => SeccompCmpArgLen::Dword,
                        ArgWidth::Qword => SeccompCmpArgLen::Qword,
                    };
                    let op = match c.op {
                        CmpOp::Eq => SeccompCmpOp::Eq,
                        CmpOp::Ne => SeccompCmpOp::Ne,
                        CmpOp::Lt => SeccompCmpOp::Lt,
                        CmpOp::Le => SeccompCmpOp::Le,
                        CmpOp::Gt => SeccompCmpOp::Gt,
                        CmpOp::Ge => SeccompCmpOp::Ge,
                        CmpOp::MaskedEq(mask) => SeccompCmpOp::MaskedEq(mask),
                    };
                    SeccompCondition::new(c.index, width, op, c.value)
                })
                .collect::<Result<Vec<_>, _>>()?;
            SeccompRule::new(conditions)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_compiles_for_this_host() {
        let filters = Filters::compile().unwrap();
        assert!(!filters.program.is_empty());
    }

    /// What `plan` answers for call `nr` with `args`, evaluated directly.
    fn answer(plan: &ProfilePlan, nr: u32, args: [u64; 6]) -> Action {
        let holds = |c: &ArgCheck| {
            let (arg, value) = match c.width {
                ArgWidth::Dword => (
                    args[usize::from(c.index)] & 0xffff_ffff,
                    c.value & 0xffff_ffff,
                ),
                ArgWidth::Qword => (args[usize::from(c.index)], c.value),
            };
            match c.op {
                CmpOp::Eq => arg == value,
                CmpOp::Ne => arg != value,
                CmpOp::Lt => arg < value,
                CmpOp::Le => arg <= value,
                CmpOp::Gt => arg > value,
                CmpOp::Ge => arg >= value,
                CmpOp::MaskedEq(mask) => arg & mask == value & mask,
            }
        };
        let rule = plan
            .calls
            .iter()
            .find(|(name, _)| syscalls::number(name) == Some(i64::from(nr)));
        match rule {
            Some((_, rule)) => match &rule.when {
                When::Always => rule.action,
                When::AnyOf(alternatives) if alternatives.iter().any(|a| a.iter().all(holds)) => {
                    rule.action
                }
                When::AnyOf(_) => Action::Errno(plan.default_errno),
            },
            None => Action::Errno(plan.default_errno),
        }
    }

    /// The program answers what the plan says for every call number and,
    /// for the calls with conditions, for arguments around every value
    /// they compare with (and with the upper half of the register set).
    #[test]
    fn the_program_answers_as_the_plan_says() {
        let Some(arch) = Arch::host() else { return };
        let audit_arch = if arch == Arch::X86_64 {
            0xC000_003E
        } else {
            0xC000_00B7
        };
        let plan = Profile::docker_default()
            .unwrap()
            .resolve(
                arch,
                HANDLER_CAPABILITIES,
                KernelVersion::parse("6.8").unwrap(),
            )
            .unwrap();
        let program = Filters::of_plan(&plan, arch).unwrap().program;
        let ret = |action| match action {
            Action::Allow => libc::SECCOMP_RET_ALLOW,
            Action::Errno(e) => libc::SECCOMP_RET_ERRNO | e,
        };
        let mut probes: Vec<u64> = vec![0, 1, u64::MAX, 0xffff_ffff, 1 << 32];
        for rule in plan.calls.values() {
            if let When::AnyOf(alternatives) = &rule.when {
                for check in alternatives.iter().flatten() {
                    for v in [
                        check.value,
                        check.value.wrapping_add(1),
                        check.value.wrapping_sub(1),
                    ] {
                        probes.extend([v, v | 1 << 32, v | 0x8000_0000_0000_0000]);
                    }
                    if let CmpOp::MaskedEq(mask) = check.op {
                        probes.extend([mask, mask & mask.wrapping_neg(), !mask]);
                    }
                }
            }
        }
        for nr in 0..1024 {
            let conditional = plan.calls.iter().any(|(name, rule)| {
                matches!(rule.when, When::AnyOf(_)) && syscalls::number(name) == Some(i64::from(nr))
            });
            let args: &[u64] = if conditional { &probes } else { &[0, u64::MAX] };
            for &arg in args {
                let args = [arg, arg, 0, 0, 0, arg];
                assert_eq!(
                    bpf::run(&program, audit_arch, nr, args),
                    ret(answer(&plan, nr, args)),
                    "call {nr}, arguments {args:x?}"
                );
            }
        }
        // Other ABIs are killed.
        let kill = libc::SECCOMP_RET_KILL_PROCESS;
        assert_eq!(bpf::run(&program, 0x4000_0003, 20, [0; 6]), kill, "i386");
        if arch == Arch::X86_64 {
            let x32_getpid = bpf::X32_SYSCALL_BIT | 39;
            assert_eq!(
                bpf::run(&program, audit_arch, x32_getpid, [0; 6]),
                kill,
                "x32"
            );
        }
    }

    /// The calls of the profile without a number on x86_64: those of other
    /// architectures. A name that appears here after the profile is
    /// updated is a call that needs a number in `syscalls.rs`.
    #[cfg(target_arch = "x86_64")]
    const NOT_ON_X86_64: &[&str] = &[
        "_llseek",
        "_newselect",
        "arm_fadvise64_64",
        "arm_sync_file_range",
        "breakpoint",
        "cacheflush",
        "chown32",
        "clock_adjtime64",
        "clock_getres_time64",
        "clock_gettime64",
        "clock_nanosleep_time64",
        "clock_settime64",
        "fadvise64_64",
        "fchown32",
        "fcntl64",
        "fstat64",
        "fstatat64",
        "fstatfs64",
        "ftruncate64",
        "futex_time64",
        "getegid32",
        "geteuid32",
        "getgid32",
        "getgroups32",
        "getresgid32",
        "getresuid32",
        "getuid32",
        "io_pgetevents_time64",
        "ipc",
        "lchown32",
        "lstat64",
        "mmap2",
        "mq_timedreceive_time64",
        "mq_timedsend_time64",
        "ppoll_time64",
        "pselect6_time64",
        "recv",
        "recvmmsg_time64",
        "riscv_flush_icache",
        "riscv_hwprobe",
        "rt_sigtimedwait_time64",
        "s390_pci_mmio_read",
        "s390_pci_mmio_write",
        "s390_runtime_instr",
        "sched_rr_get_interval_time64",
        "semtimedop_time64",
        "send",
        "sendfile64",
        "set_tls",
        "setfsgid32",
        "setfsuid32",
        "setgid32",
        "setgroups32",
        "setregid32",
        "setresgid32",
        "setresuid32",
        "setreuid32",
        "setuid32",
        "sigprocmask",
        "sigreturn",
        "socketcall",
        "stat64",
        "statfs64",
        "stime",
        "swapcontext",
        "sync_file_range2",
        "timer_gettime64",
        "timer_settime64",
        "timerfd_gettime64",
        "timerfd_settime64",
        "truncate64",
        "ugetrlimit",
        "umount",
        "utimensat_time64",
        "waitpid",
    ];

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn every_x86_64_call_of_the_profile_has_its_number() {
        let profile = Profile::docker_default().unwrap();
        // Every capability: every name of the profile for the architecture.
        let all_caps: Vec<String> = profile_capabilities();
        let caps: Vec<&str> = all_caps.iter().map(String::as_str).collect();
        let plan = profile
            .resolve(Arch::X86_64, &caps, KernelVersion::parse("7.0").unwrap())
            .unwrap();
        let unnumbered: Vec<&str> = plan
            .calls
            .keys()
            .map(String::as_str)
            .filter(|name| syscalls::number(name).is_none())
            .collect();
        let mut expected: Vec<&str> = NOT_ON_X86_64
            .iter()
            .copied()
            .filter(|n| plan.calls.contains_key(*n))
            .collect();
        expected.sort_unstable();
        assert_eq!(unnumbered, expected);
        // A few numbers, from the kernel's arch/x86/entry/syscalls/syscall_64.tbl.
        for (name, nr) in [
            ("read", 0),
            ("socket", 41),
            ("clone", 56),
            ("personality", 135),
            ("uretprobe", 335),
            ("clone3", 435),
            ("cachestat", 451),
            ("listmount", 458),
            ("mseal", 462),
            ("removexattrat", 466),
        ] {
            assert_eq!(syscalls::number(name), Some(nr), "{name}");
        }
    }

    /// Every capability the profile names.
    #[cfg(target_arch = "x86_64")]
    fn profile_capabilities() -> Vec<String> {
        let json: serde_json::Value = serde_json::from_str(include_str!("default.json")).unwrap();
        let mut caps: Vec<String> = json["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|e| {
                e["includes"]["caps"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .filter_map(|c| c.as_str().map(str::to_owned))
            .collect();
        caps.sort();
        caps.dedup();
        caps
    }
}
