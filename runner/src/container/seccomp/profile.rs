//! Docker's default seccomp profile (`default.json`, from the Moby project:
//! see `NOTICE`) and its resolution, a pure function, into a
//! [`ProfilePlan`]: for one architecture, kernel and set of capabilities,
//! the system calls a handler may make, by name, each with the action and
//! the argument conditions Docker gives it. Everything else gets the
//! profile's default, `EPERM`.
//!
//! Resolution follows Moby's `setupSeccomp`: an entry applies unless its
//! `excludes` names the architecture, a capability the container has, or
//! a kernel at most as new as the running one; and only if its `includes`
//! name the architecture, every capability it needs and a kernel no newer
//! than the running one. Two differences, both narrowings: Docker's
//! sub-architectures (x86 and x32 on x86_64, arm on aarch64) are left out,
//! so a call through another ABI never reaches these rules (the parent
//! module kills it); and an argument the kernel reads as a 32-bit integer
//! is compared as one, where libseccomp compares all 64 bits of the
//! register: `socket(1 << 32 | AF_VSOCK, …)` passes Docker's "domain
//! greater than 40" rule but is an `AF_VSOCK` socket to the kernel.
//!
//! The parser knows every field, action and operator the profile uses and
//! refuses any other, so that a newer profile with a construct wisp does
//! not apply fails the unit tests instead of being half applied.
//!
//! wisp then narrows the result ([`narrow`]): no `ptrace` or
//! `process_vm_readv`/`writev`, and no 32-bit `personality`.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry as MapEntry;

use serde::Deserialize;
use serde::de::IgnoredAny;

/// The profile as the Moby project ships it.
const DEFAULT_JSON: &str = include_str!("default.json");

/// Docker's profile format (the fields its default profile uses).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct Profile {
    default_action: ProfileAction,
    default_errno_ret: Option<u32>,
    /// Which sub-architectures Docker adds to each architecture's filter;
    /// wisp adds none.
    #[serde(rename = "archMap")]
    _arch_map: IgnoredAny,
    syscalls: Vec<ProfileEntry>,
}

/// One rule of the profile: `names` get `action` when the filters and
/// the argument conditions hold.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ProfileEntry {
    names: Vec<String>,
    action: ProfileAction,
    errno_ret: Option<u32>,
    /// All of them must hold.
    args: Option<Vec<ProfileArg>>,
    #[serde(rename = "comment")]
    _comment: Option<IgnoredAny>,
    includes: Option<ProfileFilter>,
    excludes: Option<ProfileFilter>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
enum ProfileAction {
    #[serde(rename = "SCMP_ACT_ALLOW")]
    Allow,
    #[serde(rename = "SCMP_ACT_ERRNO")]
    Errno,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ProfileFilter {
    /// Go's names: `amd64`, `arm64`, `x32`, …
    #[serde(default)]
    arches: Vec<String>,
    #[serde(default)]
    caps: Vec<String>,
    min_kernel: Option<String>,
}

/// A condition on one argument, as libseccomp spells it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ProfileArg {
    index: u8,
    value: u64,
    /// The expected value of `MASKED_EQ` (whose `value` is the mask).
    #[serde(default)]
    value_two: u64,
    op: ProfileOp,
}

#[derive(Debug, Clone, Copy, Deserialize)]
enum ProfileOp {
    #[serde(rename = "SCMP_CMP_NE")]
    Ne,
    #[serde(rename = "SCMP_CMP_LT")]
    Lt,
    #[serde(rename = "SCMP_CMP_LE")]
    Le,
    #[serde(rename = "SCMP_CMP_EQ")]
    Eq,
    #[serde(rename = "SCMP_CMP_GE")]
    Ge,
    #[serde(rename = "SCMP_CMP_GT")]
    Gt,
    #[serde(rename = "SCMP_CMP_MASKED_EQ")]
    MaskedEq,
}

/// An architecture wisp's filter supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Arch {
    X86_64,
    Aarch64,
}

impl Arch {
    /// The architecture this program runs on, if it is one of them.
    pub(super) fn host() -> Option<Arch> {
        match std::env::consts::ARCH {
            "x86_64" => Some(Arch::X86_64),
            "aarch64" => Some(Arch::Aarch64),
            _ => None,
        }
    }

    /// Its name in the profile's `arches` (Go's `GOARCH`).
    fn profile_name(self) -> &'static str {
        match self {
            Arch::X86_64 => "amd64",
            Arch::Aarch64 => "arm64",
        }
    }
}

/// A kernel release, as `major.minor.patch` numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct KernelVersion(u32, u32, u32);

impl KernelVersion {
    /// Reads the numbers at the start of a release string such as
    /// `6.18.44-fc-v669` or `4.8`; missing ones are 0.
    pub(super) fn parse(release: &str) -> Option<KernelVersion> {
        let numeric = release
            .split(|c: char| !c.is_ascii_digit() && c != '.')
            .next()?;
        let mut parts = numeric.split('.').map(str::parse::<u32>);
        let major = parts.next()?.ok()?;
        let minor = parts.next().unwrap_or(Ok(0)).ok()?;
        let patch = parts.next().unwrap_or(Ok(0)).ok()?;
        Some(KernelVersion(major, minor, patch))
    }
}

/// What a system call gets when its conditions hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Action {
    Allow,
    /// Fails with this errno without running.
    Errno(u32),
}

/// When a system call's rule holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum When {
    Always,
    /// When every check of one of the lists holds.
    AnyOf(Vec<Vec<ArgCheck>>),
}

/// How many bits of an argument the kernel reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ArgWidth {
    /// An `int` or `unsigned int`: the low 32 bits.
    Dword,
    /// A `long` or a pointer.
    Qword,
}

/// A comparison of an argument with a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    /// `argument & mask == value`.
    MaskedEq(u64),
}

/// One condition on one argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ArgCheck {
    pub(super) index: u8,
    pub(super) width: ArgWidth,
    pub(super) op: CmpOp,
    pub(super) value: u64,
}

/// A system call's rule after resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct CallRule {
    pub(super) action: Action,
    pub(super) when: When,
}

/// The profile resolved for one architecture, kernel and set of
/// capabilities: every system call not named here gets `default_errno`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ProfilePlan {
    pub(super) default_errno: u32,
    pub(super) calls: BTreeMap<String, CallRule>,
}

/// Why the profile could not be read or resolved.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("reading Docker's seccomp profile: {0}")]
    Parse(#[source] serde_json::Error),
    #[error("the seccomp profile's default action is not an errno")]
    DefaultNotErrno,
    #[error("the seccomp profile gives {name} both {first:?} and {second:?}")]
    Conflict {
        name: String,
        first: Action,
        second: Action,
    },
    #[error(
        "the seccomp profile compares argument {index} of {name}, whose width wisp does not know"
    )]
    ArgWidth { name: String, index: u8 },
    #[error("the seccomp profile puts two conditions on argument {index} of {name} in one rule")]
    SameArgTwice { name: String, index: u8 },
    #[error("the seccomp profile names kernel {0:?}, which is not a version")]
    MinKernel(String),
}

/// How wide the kernel reads the arguments that the profile's conditions
/// compare (from each call's `SYSCALL_DEFINE`); a condition on any other
/// argument is refused until its width is written here.
fn arg_width(name: &str, index: u8) -> Option<ArgWidth> {
    match (name, index) {
        // int family; unsigned int personality.
        ("socket", 0) | ("personality", 0) => Some(ArgWidth::Dword),
        // unsigned long clone_flags.
        ("clone", 0) => Some(ArgWidth::Qword),
        _ => None,
    }
}

impl Profile {
    /// Docker's default profile, as stored in this crate.
    pub(super) fn docker_default() -> Result<Profile, ProfileError> {
        serde_json::from_str(DEFAULT_JSON).map_err(ProfileError::Parse)
    }

    /// The rules for a process on `arch` and `kernel` whose bounding set
    /// holds `caps` (names such as `CAP_SYS_ADMIN`).
    pub(super) fn resolve(
        &self,
        arch: Arch,
        caps: &[&str],
        kernel: KernelVersion,
    ) -> Result<ProfilePlan, ProfileError> {
        if self.default_action != ProfileAction::Errno {
            return Err(ProfileError::DefaultNotErrno);
        }
        let default_errno = self.default_errno_ret.unwrap_or(libc::EPERM.unsigned_abs());
        let mut calls: BTreeMap<String, CallRule> = BTreeMap::new();
        for entry in &self.syscalls {
            if !entry.applies(arch, caps, kernel)? {
                continue;
            }
            let action = match entry.action {
                ProfileAction::Allow => Action::Allow,
                // Without errnoRet, libseccomp's ERRNO is EPERM.
                ProfileAction::Errno => {
                    Action::Errno(entry.errno_ret.unwrap_or(libc::EPERM.unsigned_abs()))
                }
            };
            for name in &entry.names {
                let when = entry.conditions(name)?;
                match calls.entry(name.clone()) {
                    MapEntry::Vacant(slot) => {
                        slot.insert(CallRule { action, when });
                    }
                    MapEntry::Occupied(mut slot) => {
                        let rule = slot.get_mut();
                        if rule.action != action {
                            return Err(ProfileError::Conflict {
                                name: name.clone(),
                                first: rule.action,
                                second: action,
                            });
                        }
                        rule.when = match (std::mem::replace(&mut rule.when, When::Always), when) {
                            (When::AnyOf(mut a), When::AnyOf(b)) => {
                                a.extend(b);
                                When::AnyOf(a)
                            }
                            _ => When::Always,
                        };
                    }
                }
            }
        }
        narrow(&mut calls);
        Ok(ProfilePlan {
            default_errno,
            calls,
        })
    }
}

/// Calls Docker allows that a function sandbox has no use for.
const WISP_REMOVES: &[&str] = &[
    // Reading and writing other processes' memory: debuggers, not
    // functions. (Docker allows them from Linux 4.8.)
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
];

/// The `personality` values Docker allows that switch to a 32-bit
/// persona (`PER_LINUX32`, alone and with `UNAME26`): wisp runs no 32-bit
/// code, so only the query, `PER_LINUX` and `UNAME26` remain.
const WISP_REFUSED_PERSONAS: &[u64] = &[0x0008, 0x2_0008];

/// wisp's narrowings of Docker's profile.
fn narrow(calls: &mut BTreeMap<String, CallRule>) {
    for name in WISP_REMOVES {
        calls.remove(*name);
    }
    if let Some(CallRule {
        when: When::AnyOf(alternatives),
        ..
    }) = calls.get_mut("personality")
    {
        alternatives.retain(|checks| {
            !matches!(checks.as_slice(),
                [ArgCheck { index: 0, op: CmpOp::Eq, value, .. }]
                    if WISP_REFUSED_PERSONAS.contains(value))
        });
    }
}

impl ProfileEntry {
    /// Whether the entry is part of the filter for `arch`, `caps` and
    /// `kernel` (Moby's `setupSeccomp`).
    fn applies(
        &self,
        arch: Arch,
        caps: &[&str],
        kernel: KernelVersion,
    ) -> Result<bool, ProfileError> {
        let arch = arch.profile_name();
        if let Some(ex) = &self.excludes {
            if ex.arches.iter().any(|a| a == arch)
                || ex.caps.iter().any(|c| caps.contains(&c.as_str()))
            {
                return Ok(false);
            }
            if let Some(min) = &ex.min_kernel
                && kernel >= min_kernel(min)?
            {
                return Ok(false);
            }
        }
        if let Some(inc) = &self.includes {
            if !inc.arches.is_empty() && !inc.arches.iter().any(|a| a == arch) {
                return Ok(false);
            }
            if !inc.caps.iter().all(|c| caps.contains(&c.as_str())) {
                return Ok(false);
            }
            if let Some(min) = &inc.min_kernel
                && kernel < min_kernel(min)?
            {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The entry's argument conditions for call `name`.
    fn conditions(&self, name: &str) -> Result<When, ProfileError> {
        let args = match &self.args {
            Some(args) if !args.is_empty() => args,
            _ => return Ok(When::Always),
        };
        let mut checks: Vec<ArgCheck> = Vec::with_capacity(args.len());
        for arg in args {
            if checks.iter().any(|c| c.index == arg.index) {
                // runc ORs such conditions, libseccomp would AND them.
                return Err(ProfileError::SameArgTwice {
                    name: name.to_owned(),
                    index: arg.index,
                });
            }
            let width = arg_width(name, arg.index).ok_or_else(|| ProfileError::ArgWidth {
                name: name.to_owned(),
                index: arg.index,
            })?;
            let (op, value) = match arg.op {
                ProfileOp::Eq => (CmpOp::Eq, arg.value),
                ProfileOp::Ne => (CmpOp::Ne, arg.value),
                ProfileOp::Lt => (CmpOp::Lt, arg.value),
                ProfileOp::Le => (CmpOp::Le, arg.value),
                ProfileOp::Gt => (CmpOp::Gt, arg.value),
                ProfileOp::Ge => (CmpOp::Ge, arg.value),
                ProfileOp::MaskedEq => (CmpOp::MaskedEq(arg.value), arg.value_two),
            };
            checks.push(ArgCheck {
                index: arg.index,
                width,
                op,
                value,
            });
        }
        Ok(When::AnyOf(vec![checks]))
    }
}

fn min_kernel(text: &str) -> Result<KernelVersion, ProfileError> {
    KernelVersion::parse(text).ok_or_else(|| ProfileError::MinKernel(text.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(arch: Arch, caps: &[&str], kernel: &str) -> ProfilePlan {
        Profile::docker_default()
            .unwrap()
            .resolve(arch, caps, KernelVersion::parse(kernel).unwrap())
            .unwrap()
    }

    fn dword(index: u8, op: CmpOp, value: u64) -> ArgCheck {
        ArgCheck {
            index,
            width: ArgWidth::Dword,
            op,
            value,
        }
    }

    const ALWAYS: CallRule = CallRule {
        action: Action::Allow,
        when: When::Always,
    };

    #[test]
    fn kernel_versions_parse_like_release_strings() {
        let v = |s| KernelVersion::parse(s);
        assert_eq!(v("6.18.44-fc-v669"), Some(KernelVersion(6, 18, 44)));
        assert_eq!(v("4.8"), Some(KernelVersion(4, 8, 0)));
        assert_eq!(v("5.15.0-91-generic"), Some(KernelVersion(5, 15, 0)));
        assert_eq!(v("6"), Some(KernelVersion(6, 0, 0)));
        assert_eq!(v(""), None);
        assert_eq!(v("linux"), None);
        assert!(v("4.10").unwrap() > v("4.8").unwrap());
    }

    #[test]
    fn without_capabilities_the_privileged_calls_are_left_out() {
        for arch in [Arch::X86_64, Arch::Aarch64] {
            let plan = resolve(arch, &[], "6.8");
            assert_eq!(plan.default_errno, 1, "EPERM");
            for name in ["read", "write", "openat", "execve", "exit_group", "prctl"] {
                assert_eq!(plan.calls.get(name), Some(&ALWAYS), "{name}");
            }
            for name in [
                "unshare",
                "setns",
                "mount",
                "umount2",
                "pivot_root",
                "bpf",
                "io_uring_setup",
                "io_uring_enter",
                "keyctl",
                "add_key",
                "userfaultfd",
                "perf_event_open",
                "kexec_load",
                "init_module",
                "reboot",
                "open_by_handle_at",
                "syslog",
                "fsopen",
                "move_mount",
            ] {
                assert!(!plan.calls.contains_key(name), "{name} on {arch:?}");
            }
        }
    }

    #[test]
    fn argument_filters_are_applied() {
        let plan = resolve(Arch::X86_64, &[], "6.8");
        // No namespace flags: CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET.
        assert_eq!(
            plan.calls["clone"].when,
            When::AnyOf(vec![vec![ArgCheck {
                index: 0,
                width: ArgWidth::Qword,
                op: CmpOp::MaskedEq(0x7E02_0000),
                value: 0,
            }]])
        );
        // clone3's flags are behind a pointer: ENOSYS, so libcs use clone.
        assert_eq!(
            plan.calls["clone3"],
            CallRule {
                action: Action::Errno(38),
                when: When::Always
            }
        );
        // No AF_ALG (38) nor AF_VSOCK (40); compared as the int it is.
        assert_eq!(
            plan.calls["socket"].when,
            When::AnyOf(vec![
                vec![dword(0, CmpOp::Lt, 38)],
                vec![dword(0, CmpOp::Eq, 39)],
                vec![dword(0, CmpOp::Gt, 40)],
            ])
        );
        // PER_LINUX, UNAME26 and the query (Docker also allows
        // PER_LINUX32, wisp does not): no ADDR_NO_RANDOMIZE, no
        // READ_IMPLIES_EXEC.
        assert_eq!(
            plan.calls["personality"].when,
            When::AnyOf(
                [0, 0x20000, 0xffff_ffff]
                    .into_iter()
                    .map(|v| vec![dword(0, CmpOp::Eq, v)])
                    .collect()
            )
        );
    }

    #[test]
    fn architecture_and_kernel_filters_are_applied() {
        let x86 = resolve(Arch::X86_64, &[], "6.8");
        let arm = resolve(Arch::Aarch64, &[], "6.8");
        for name in ["arch_prctl", "modify_ldt"] {
            assert!(x86.calls.contains_key(name), "{name}");
            assert!(!arm.calls.contains_key(name), "{name}");
        }
        for name in ["cacheflush", "set_tls"] {
            assert!(arm.calls.contains_key(name), "{name}");
            assert!(!x86.calls.contains_key(name), "{name}");
        }
        // ptrace could escape seccomp before Linux 4.8: Docker allows it
        // from there on, wisp never.
        assert!(!x86.calls.contains_key("ptrace"));
        assert!(!x86.calls.contains_key("process_vm_writev"));
        // An entry with a minimum kernel is left out on older ones.
        let profile = Profile::docker_default().unwrap();
        let entry = profile
            .syscalls
            .iter()
            .find(|e| e.names.iter().any(|n| n == "ptrace") && e.includes.is_some())
            .unwrap();
        let kernel = |k| KernelVersion::parse(k).unwrap();
        assert!(entry.applies(Arch::X86_64, &[], kernel("6.8")).unwrap());
        assert!(!entry.applies(Arch::X86_64, &[], kernel("4.4.0")).unwrap());
    }

    #[test]
    fn capabilities_would_widen_the_filter() {
        // wisp grants none; this checks the `caps` filters are read.
        let admin = resolve(Arch::X86_64, &["CAP_SYS_ADMIN"], "6.8");
        for name in ["unshare", "setns", "mount", "clone3"] {
            assert_eq!(admin.calls.get(name), Some(&ALWAYS), "{name}");
        }
        assert_eq!(admin.calls["clone"], ALWAYS);
    }

    #[test]
    fn constructs_wisp_cannot_apply_are_refused() {
        let profile = |entry: &str| {
            serde_json::from_str::<Profile>(&format!(
                r#"{{"defaultAction":"SCMP_ACT_ERRNO","archMap":[],"syscalls":[{entry}]}}"#
            ))
        };
        let kernel = KernelVersion(6, 8, 0);
        let resolve = |p: Profile| p.resolve(Arch::X86_64, &[], kernel);
        // An action or field the parser does not know.
        assert!(profile(r#"{"names":["read"],"action":"SCMP_ACT_LOG"}"#).is_err());
        assert!(profile(r#"{"names":["read"],"action":"SCMP_ACT_ALLOW","when":1}"#).is_err());
        // A condition on an argument of unknown width.
        let p = profile(
            r#"{"names":["ioctl"],"action":"SCMP_ACT_ALLOW","args":[{"index":1,"value":1,"op":"SCMP_CMP_EQ"}]}"#,
        )
        .unwrap();
        assert!(matches!(
            resolve(p),
            Err(ProfileError::ArgWidth { index: 1, .. })
        ));
        // Two actions for one call.
        let p = profile(
            r#"{"names":["read"],"action":"SCMP_ACT_ALLOW"},{"names":["read"],"action":"SCMP_ACT_ERRNO"}"#,
        )
        .unwrap();
        assert!(matches!(resolve(p), Err(ProfileError::Conflict { .. })));
        // A kernel version that is not one.
        let p = profile(
            r#"{"names":["read"],"action":"SCMP_ACT_ALLOW","includes":{"minKernel":"new"}}"#,
        )
        .unwrap();
        assert!(matches!(resolve(p), Err(ProfileError::MinKernel(_))));
    }
}
