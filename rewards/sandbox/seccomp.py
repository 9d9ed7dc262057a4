"""A seccomp deny-list for the sandbox, as the classic-BPF program bubblewrap loads with ``--seccomp FD``.

Programs keep every ordinary system call; the ones that only widen the kernel's attack surface or reach beyond
the sandbox fail with EPERM: debugging other processes (ptrace, process_vm_*), kernel modules and kexec, bpf,
perf events, userfaultfd, the kernel keyring, mounts and the new mount API, namespaces (unshare, setns), io_uring,
raw I/O ports, swap, reboot, accounting, quotas, the kernel log, file handles. System calls of another ABI (32-bit
``int 0x80`` on x86_64, x32) kill the process: they would bypass the numbers below.

Built here (no libseccomp) for x86_64 only; on other architectures :func:`deny_list_program` returns None and the
sandbox runs without a filter (docs/sandbox.md says so).
"""

from __future__ import annotations

import platform
import struct

AUDIT_ARCH_X86_64 = 0xC000003E
X32_BIT = 0x40000000
_LD_W_ABS, _JEQ_K, _JGE_K, _RET_K = 0x20, 0x15, 0x35, 0x06
_RET_ALLOW, _RET_KILL_PROCESS = 0x7FFF0000, 0x80000000
_RET_EPERM = 0x00050000 | 1  # SECCOMP_RET_ERRNO | EPERM

DENIED_X86_64 = {
    "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311, "kcmp": 312,
    "kexec_load": 246, "kexec_file_load": 320, "init_module": 175, "finit_module": 313, "delete_module": 176,
    "bpf": 321, "perf_event_open": 298, "userfaultfd": 323,
    "add_key": 248, "request_key": 249, "keyctl": 250,
    "mount": 165, "umount2": 166, "pivot_root": 155, "open_tree": 428, "move_mount": 429, "fsopen": 430,
    "fsconfig": 431, "fsmount": 432, "fspick": 433, "mount_setattr": 442,
    "unshare": 272, "setns": 308,
    "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
    "iopl": 172, "ioperm": 173, "swapon": 167, "swapoff": 168, "reboot": 169, "acct": 163, "quotactl": 179,
    "syslog": 103, "name_to_handle_at": 303, "open_by_handle_at": 304, "lookup_dcookie": 212,
}


def _insn(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("<HBBI", code, jt, jf, k)


def deny_list_program(machine: str | None = None) -> bytes | None:
    """The filter as bytes (an array of ``struct sock_filter``), or None where no table exists for the CPU."""
    if (machine or platform.machine()) not in ("x86_64", "amd64"):
        return None
    numbers = sorted(set(DENIED_X86_64.values()))
    prog = [_insn(_LD_W_ABS, 0, 0, 4),  # seccomp_data.arch
            _insn(_JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
            _insn(_RET_K, 0, 0, _RET_KILL_PROCESS),
            _insn(_LD_W_ABS, 0, 0, 0),  # seccomp_data.nr
            _insn(_JGE_K, 0, 1, X32_BIT),
            _insn(_RET_K, 0, 0, _RET_KILL_PROCESS)]
    for i, nr in enumerate(numbers):  # a match jumps to the EPERM return after the ALLOW one
        prog.append(_insn(_JEQ_K, len(numbers) - i, 0, nr))
    prog += [_insn(_RET_K, 0, 0, _RET_ALLOW), _insn(_RET_K, 0, 0, _RET_EPERM)]
    return b"".join(prog)
