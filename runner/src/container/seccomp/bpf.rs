//! The BPF program of a filter: a binary search over system call numbers.
//!
//! seccompiler lays a filter out as one comparison per call, one after the
//! other. For an allow-list of ~330 calls that is ~1600 instructions, and
//! the kernel runs the program for every call number when the filter is
//! installed (to cache the calls it always allows): ~1.1 ms per handler
//! process on the development machine. Here the numbers are cut into
//! ranges with one outcome each and searched with `JGE`, so a call costs
//! about ten instructions and the install ~50 µs; seccompiler still
//! compiles the argument conditions of the few calls that have them (its
//! rules, in the layout its own filters use) and installs the program.
//!
//! The program: load the architecture and kill the process unless it is
//! the native one; load the number; on x86_64, kill an x32 call (bit 30
//! set, see the parent module); then the search, whose every leaf ends in
//! a `RET`.

use std::collections::BTreeMap;

use seccompiler::{BackendError, BpfProgram, SeccompRule, sock_filter};

use super::profile::Arch;

/// What the program answers for one call number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Leaf {
    /// This seccomp return value, whatever the arguments.
    Return(u32),
    /// `on_match` if one of the rules holds, else the default.
    Checked {
        rules: Vec<SeccompRule>,
        on_match: u32,
    },
}

/// The kernel's limit on a program's length (`BPF_MAXINSNS`).
const MAX_LEN: usize = 4096;
/// Offsets in `struct seccomp_data`.
const DATA_NR: u32 = 0;
const DATA_ARCH: u32 = 4;
/// `AUDIT_ARCH_*`: `EM_*` | `__AUDIT_ARCH_64BIT` | `__AUDIT_ARCH_LE`.
const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
const AUDIT_ARCH_AARCH64: u32 = 0xC000_00B7;
/// The bit of an x32 system call's number (`__X32_SYSCALL_BIT`).
pub(super) const X32_SYSCALL_BIT: u32 = 0x4000_0000;

// Classic BPF opcodes (<linux/bpf_common.h>); they fit in 16 bits.
const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const JA: u16 = (libc::BPF_JMP | libc::BPF_JA) as u16;
const JEQ: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const JGE: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
const JSET: u16 = (libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K) as u16;
const RET: u16 = (libc::BPF_RET | libc::BPF_K) as u16;

fn stmt(code: u16, k: u32) -> sock_filter {
    sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

/// The program that answers `calls` by number and `default` for every
/// other number of `arch`, and kills a call of any other ABI.
pub(super) fn program(
    arch: Arch,
    calls: &BTreeMap<u32, Leaf>,
    default: u32,
) -> Result<BpfProgram, BackendError> {
    let audit_arch = match arch {
        Arch::X86_64 => AUDIT_ARCH_X86_64,
        Arch::Aarch64 => AUDIT_ARCH_AARCH64,
    };
    let kill = libc::SECCOMP_RET_KILL_PROCESS;
    let mut program = vec![
        stmt(LD_W_ABS, DATA_ARCH),
        jump(JEQ, audit_arch, 1, 0),
        stmt(RET, kill),
        stmt(LD_W_ABS, DATA_NR),
    ];
    if arch == Arch::X86_64 {
        program.push(jump(JSET, X32_SYSCALL_BIT, 0, 1));
        program.push(stmt(RET, kill));
    }
    program.extend(search(&ranges(calls, default), default)?);
    if program.len() > MAX_LEN {
        return Err(BackendError::FilterTooLarge(program.len()));
    }
    Ok(program)
}

/// The numbers cut into ranges: each `(start, leaf)` holds up to the next
/// start; neighbours that return the same value are one range.
fn ranges(calls: &BTreeMap<u32, Leaf>, default: u32) -> Vec<(u32, Leaf)> {
    let mut ranges: Vec<(u32, Leaf)> = Vec::new();
    let mut push = |start: u32, leaf: &Leaf| match (ranges.last(), leaf) {
        (Some((_, Leaf::Return(last))), Leaf::Return(value)) if last == value => {}
        _ => ranges.push((start, leaf.clone())),
    };
    let mut next = 0;
    for (&nr, leaf) in calls {
        if nr > next {
            push(next, &Leaf::Return(default));
        }
        push(nr, leaf);
        next = nr.saturating_add(1);
    }
    if calls.last_key_value().is_none_or(|(&nr, _)| nr < u32::MAX) {
        push(next, &Leaf::Return(default));
    }
    ranges
}

/// The search over `ranges` (the number is in the accumulator and at
/// least the first range's start).
fn search(ranges: &[(u32, Leaf)], default: u32) -> Result<Vec<sock_filter>, BackendError> {
    let [(_, leaf)] = ranges else {
        let mid = ranges.len() / 2;
        let left = search(&ranges[..mid], default)?;
        let right = search(&ranges[mid..], default)?;
        let pivot = ranges[mid].0;
        let mut out = Vec::with_capacity(left.len() + right.len() + 2);
        match u8::try_from(left.len()) {
            // number >= pivot: over the left half.
            Ok(skip) => out.push(jump(JGE, pivot, skip, 0)),
            // Too far for a conditional jump: through an unconditional one.
            Err(_) => {
                let skip = u32::try_from(left.len())
                    .map_err(|_| BackendError::FilterTooLarge(left.len()))?;
                out.push(jump(JGE, pivot, 0, 1));
                out.push(stmt(JA, skip));
            }
        }
        out.extend(left);
        out.extend(right);
        return Ok(out);
    };
    Ok(match leaf {
        Leaf::Return(value) => vec![stmt(RET, *value)],
        // As in seccompiler's own filters: each rule, then the value it
        // returns when it holds; a failed condition jumps past that value
        // to the next rule, and past the last one to the default.
        Leaf::Checked { rules, on_match } => {
            let mut out = Vec::new();
            for rule in rules {
                out.extend(BpfProgram::from(rule.clone()));
                out.push(stmt(RET, *on_match));
            }
            out.push(stmt(RET, default));
            out
        }
    })
}

/// A classic-BPF interpreter for the instructions seccomp programs use,
/// for tests: runs `program` on a call and returns what it answers.
/// Panics on an instruction it does not know or a jump out of the program.
#[cfg(test)]
pub(super) fn run(program: &[sock_filter], arch: u32, nr: u32, args: [u64; 6]) -> u32 {
    let mut data = Vec::with_capacity(64);
    data.extend(nr.to_le_bytes());
    data.extend(arch.to_le_bytes());
    data.extend(0u64.to_le_bytes());
    for arg in args {
        data.extend(arg.to_le_bytes());
    }
    let word = |k: u32| {
        let k = k as usize;
        u32::from_le_bytes(data[k..k + 4].try_into().unwrap())
    };
    let (mut a, mut pc) = (0u32, 0usize);
    let and = (libc::BPF_ALU | libc::BPF_AND | libc::BPF_K) as u16;
    loop {
        let insn = &program[pc];
        pc += 1;
        let cond = |taken: bool| usize::from(if taken { insn.jt } else { insn.jf });
        match insn.code {
            LD_W_ABS => a = word(insn.k),
            c if c == and => a &= insn.k,
            JA => pc += insn.k as usize,
            JEQ => pc += cond(a == insn.k),
            JGE => pc += cond(a >= insn.k),
            JSET => pc += cond(a & insn.k != 0),
            c if c == (libc::BPF_JMP | libc::BPF_JGT | libc::BPF_K) as u16 => {
                pc += cond(a > insn.k)
            }
            RET => return insn.k,
            other => panic!("instruction {other:#x} at {}", pc - 1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use seccompiler::{SeccompCmpArgLen, SeccompCmpOp, SeccompCondition};

    const ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
    const EPERM: u32 = libc::SECCOMP_RET_ERRNO | 1;
    const KILL: u32 = libc::SECCOMP_RET_KILL_PROCESS;

    fn eq(index: u8, value: u64) -> SeccompRule {
        SeccompRule::new(vec![
            SeccompCondition::new(index, SeccompCmpArgLen::Qword, SeccompCmpOp::Eq, value).unwrap(),
        ])
        .unwrap()
    }

    #[test]
    fn ranges_merge_neighbours_with_one_answer() {
        let calls: BTreeMap<u32, Leaf> = [
            (0, Leaf::Return(ALLOW)),
            (1, Leaf::Return(ALLOW)),
            (3, Leaf::Return(ALLOW)),
            (4, Leaf::Return(EPERM)),
        ]
        .into();
        assert_eq!(
            ranges(&calls, EPERM),
            vec![
                (0, Leaf::Return(ALLOW)),
                (2, Leaf::Return(EPERM)),
                (3, Leaf::Return(ALLOW)),
                (4, Leaf::Return(EPERM)),
            ]
        );
    }

    #[test]
    fn the_search_answers_every_number() {
        // Every other number allowed, 7 only with arg 0 == 42 or == 43.
        let mut calls: BTreeMap<u32, Leaf> = (0..500)
            .step_by(2)
            .map(|n| (n, Leaf::Return(ALLOW)))
            .collect();
        calls.insert(
            7,
            Leaf::Checked {
                rules: vec![eq(0, 42), eq(0, 43)],
                on_match: ALLOW,
            },
        );
        calls.insert(9, Leaf::Return(libc::SECCOMP_RET_ERRNO | 38));
        let program = program(Arch::X86_64, &calls, EPERM).unwrap();
        for nr in 0..1000 {
            let expected = match nr {
                9 => libc::SECCOMP_RET_ERRNO | 38,
                7 => EPERM,
                n if n < 500 && n % 2 == 0 => ALLOW,
                _ => EPERM,
            };
            assert_eq!(
                run(&program, AUDIT_ARCH_X86_64, nr, [0; 6]),
                expected,
                "{nr}"
            );
        }
        assert_eq!(
            run(&program, AUDIT_ARCH_X86_64, 7, [42, 0, 0, 0, 0, 0]),
            ALLOW
        );
        assert_eq!(
            run(&program, AUDIT_ARCH_X86_64, 7, [43, 0, 0, 0, 0, 0]),
            ALLOW
        );
        assert_eq!(
            run(&program, AUDIT_ARCH_X86_64, 7, [44, 0, 0, 0, 0, 0]),
            EPERM
        );
        assert_eq!(run(&program, AUDIT_ARCH_X86_64, u32::MAX, [0; 6]), KILL);
        assert_eq!(
            run(&program, AUDIT_ARCH_X86_64, X32_SYSCALL_BIT | 2, [0; 6]),
            KILL
        );
        // i386 (AUDIT_ARCH_I386) and aarch64 calls.
        assert_eq!(run(&program, 0x4000_0003, 2, [0; 6]), KILL);
        assert_eq!(run(&program, AUDIT_ARCH_AARCH64, 2, [0; 6]), KILL);
        // Short: a balanced search, not a list.
        assert!(program.len() < 1100, "{}", program.len());
    }

    #[test]
    fn far_halves_are_reached_through_an_unconditional_jump() {
        // A call with 100 rules: its leaf alone is longer than 255.
        let rules = (0..100).map(|v| eq(1, v)).collect();
        let calls: BTreeMap<u32, Leaf> = [
            (1, Leaf::Return(ALLOW)),
            (
                2,
                Leaf::Checked {
                    rules,
                    on_match: ALLOW,
                },
            ),
            (3, Leaf::Return(ALLOW)),
            (5, Leaf::Return(ALLOW)),
        ]
        .into();
        let program = program(Arch::Aarch64, &calls, EPERM).unwrap();
        assert!(program.iter().any(|i| i.code == JA && i.k > 255));
        let answer = |nr, arg| run(&program, AUDIT_ARCH_AARCH64, nr, [0, arg, 0, 0, 0, 0]);
        for (nr, arg, expected) in [
            (0, 0, EPERM),
            (1, 0, ALLOW),
            (2, 99, ALLOW),
            (2, 100, EPERM),
            (3, 0, ALLOW),
            (4, 0, EPERM),
            (5, 0, ALLOW),
            (6, 0, EPERM),
        ] {
            assert_eq!(answer(nr, arg), expected, "{nr} {arg}");
        }
        // No x32 on aarch64: a large number is just not allowed.
        assert_eq!(answer(X32_SYSCALL_BIT | 1, 0), EPERM);
    }
}
