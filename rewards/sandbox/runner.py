"""Run one program in a sandbox: bubblewrap namespaces (user, pid, net, ipc, uts, mount), a filesystem of only
``/usr`` (read-only) plus private tmpfs ``/work`` and ``/tmp``, an empty environment, rlimits (CPU, address space,
processes, file size, open files), an unprivileged uid, a wall clock and an output cap; every process it started
is gone when :func:`run_program` returns. See docs/sandbox.md for what this protects against and what it does not.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import selectors
import shutil
import signal
import subprocess
import threading
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rewards.sandbox.seccomp import deny_list_program
from rewards.sandbox.spec import RunResult, SandboxSpec, SandboxUnavailable, classify
from rewards.sandbox.unisolated import unisolated_argv

WORKDIR = "/work"
_UID_BASE = 3_000_000  # sandbox uids when started as root: unused by any account, one per concurrent run
_uids_in_use: set[int] = set()
_uid_lock = threading.Lock()
_uid_counter = itertools.count()
_probed: dict[tuple[str, str, str], str | None] = {}
_SECCOMP = deny_list_program()


def language_command(language: str, spec: SandboxSpec, main: str) -> list[str]:
    """The argv that runs ``main`` (a file in /work) for ``language``."""
    if language == "python":
        return [spec.interpreter()[0], "-B", "-u", main]
    if language in ("bash", "sh"):
        return [f"/usr/bin/{language}", main]
    raise ValueError(f"unknown sandbox language {language!r}: use python, bash or sh, or give the command "
                     "(argv) yourself")


def _allocate_uid() -> int:
    with _uid_lock:
        while True:
            uid = _UID_BASE + (os.getpid() % 4096) * 1024 + next(_uid_counter) % 1024
            if uid not in _uids_in_use:
                _uids_in_use.add(uid)
                return uid


def _processes_of(uid: int, *, live: bool = False) -> list[int]:
    """Pids owned by ``uid`` (``live``: zombies left out; they hold no resources and cannot be killed)."""
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid != uid:
                    continue
                if live:
                    with open(f"/proc/{entry.name}/stat", "rb") as f:
                        if f.read().rsplit(b")", 1)[1].split()[0] in (b"Z", b"X"):
                            continue
                pids.append(int(entry.name))
            except (OSError, IndexError):
                continue
    return pids


def _mounts(spec: SandboxSpec) -> list[str]:
    args = ["--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/lib", "/lib64", "/sbin", "/lib32", "/libx32"):
        p = Path(top)
        if p.is_symlink():
            args += ["--symlink", os.readlink(top), top]
        elif p.is_dir():
            args += ["--ro-bind", top, top]
    prefix = spec.interpreter()[1]
    extra = [str(prefix)] if prefix is not None else []
    for path in [*extra, *spec.ro_paths]:
        if not Path(path).exists():
            raise SandboxUnavailable(f"sandbox.ro_paths entry {path!r} does not exist")
        args += ["--ro-bind", path, path]
    size = str(spec.disk_mb << 20)
    args += ["--proc", "/proc", "--dev", "/dev", "--size", size, "--tmpfs", "/tmp", "--size", size,
             "--tmpfs", WORKDIR]
    return args


def bwrap_argv(spec: SandboxSpec, files: Mapping[str, int], readonly: Mapping[str, int],
               seccomp_fd: int | None = None) -> list[str]:
    """bubblewrap's arguments before the command; ``files``: name in /work -> fd of its content (writable copy),
    ``readonly``: absolute path -> fd (read-only, e.g. a harness); ``seccomp_fd``: the filter (``seccomp.py``)."""
    args = [spec.bwrap_path(), "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent",
            "--new-session", "--hostname", "sandbox", "--clearenv", "--setenv", "PATH", "/usr/bin:/bin",
            "--setenv", "HOME", WORKDIR, "--setenv", "LANG", "C.UTF-8", "--setenv", "PYTHONHASHSEED", "0",
            "--setenv", "PYTHONDONTWRITEBYTECODE", "1", *_mounts(spec)]
    for name, fd in files.items():
        args += ["--perms", "0644", "--file", str(fd), f"{WORKDIR}/{name}"]
    for dest, fd in readonly.items():
        args += ["--ro-bind-data", str(fd), dest]
    if seccomp_fd is not None:
        args += ["--seccomp", str(seccomp_fd)]
    return [*args, "--chdir", WORKDIR]


def limits_argv(spec: SandboxSpec, nproc: int) -> list[str]:
    """``prlimit`` setting the run's rlimits on itself before it execs the sandbox (no pre-exec hook in this
    process, which runs threads)."""
    cpu, mem, disk = spec.cpu_limit_s, spec.memory_mb << 20, spec.disk_mb << 20
    return ["/usr/bin/prlimit", f"--cpu={cpu}:{cpu + 1}", f"--as={mem}", f"--fsize={disk}", "--nofile=256",
            "--core=0", f"--nproc={nproc}", "--"]


def _memfd(name: str, content: str | bytes) -> int:
    fd = os.memfd_create(name.replace("/", "_"), 0)
    data = content.encode() if isinstance(content, str) else content
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def probe(spec: SandboxSpec) -> None:
    """Run ``true`` once per (bwrap, python, isolation) in this process; :class:`SandboxUnavailable` with the
    reason when the sandbox cannot start here (e.g. user namespaces refused in a container)."""
    key = (spec.bwrap, spec.python, spec.isolation)
    if key not in _probed:
        problem = None
        if spec.isolation == "bwrap":  # a missing binary or interpreter raises here, and is not remembered
            res = run_program({}, ["/usr/bin/true"], spec=spec, _probe=True)
            if res.status != "ok":
                problem = (f"bubblewrap ({spec.bwrap_path()}) cannot start a sandbox here "
                           f"({res.status}, exit {res.exit_code}): {res.stderr.strip()[:300]}; it needs user "
                           "and network namespaces (inside a container: run it with --privileged or allow "
                           "unshare)")
        _probed[key] = problem
    if _probed[key] is not None:
        raise SandboxUnavailable(_probed[key])


def warn_unisolated(spec: SandboxSpec, where: str) -> None:
    if spec.isolation == "none":
        msg = (f"{where}: sandbox.isolation=none: model-written code runs WITHOUT isolation (only rlimits and a "
               "temporary directory): it can read this machine's files and environment and reach the network")
        warnings.warn(msg, stacklevel=2)
        print(f"[sandbox] WARNING {msg}", flush=True)


def run_program(files: Mapping[str, str | bytes], command: Sequence[str] | None = None, *,
                language: str = "python", main: str = "main.py", stdin: str | bytes = b"",
                spec: SandboxSpec | None = None, readonly: Mapping[str, str | bytes] | None = None,
                side_channel: bool = False, _probe: bool = False) -> RunResult:
    """Run ``command`` (default: ``language``'s interpreter on ``main``) in /work holding ``files``.

    ``readonly``: absolute paths in the sandbox -> content, mounted read-only. ``side_channel``: a pipe whose
    bytes come back in ``RunResult.side`` (capped like the output; a harness reports there, apart from the
    program's stdout); its descriptor number replaces ``{side_fd}`` in the command's arguments. Raises :class:`SandboxUnavailable` when the sandbox cannot run;
    whatever the program does, it returns a :class:`RunResult`."""
    spec = spec or SandboxSpec()
    if not _probe:
        probe(spec)
    argv = list(command) if command is not None else language_command(language, spec, main)
    fds: list[int] = []
    scratch = None
    try:
        file_fds = {name: _memfd(name, body) for name, body in files.items()}
        ro_fds = {dest: _memfd(dest, body) for dest, body in (readonly or {}).items()}
        fds = [*file_fds.values(), *ro_fds.values()]
        seccomp_fd = None
        if spec.isolation == "bwrap" and _SECCOMP is not None:
            seccomp_fd = _memfd("seccomp", _SECCOMP)
            fds.append(seccomp_fd)
        if spec.isolation == "none":
            argv, scratch = unisolated_argv(argv, files, readonly or {}, spec)
        else:
            argv = [*bwrap_argv(spec, file_fds, ro_fds, seccomp_fd), "--", *argv]
        return _execute(argv, fds, stdin, spec, side_channel)
    finally:
        for fd in fds:
            os.close(fd)
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def _execute(argv: list[str], fds: list[int], stdin: str | bytes, spec: SandboxSpec,
             side_channel: bool) -> RunResult:
    root = os.geteuid() == 0
    uid = _allocate_uid() if root else None
    nproc = spec.max_processes + 3 if root else len(_processes_of(os.getuid())) + spec.max_processes + 3
    side_r, side_w = os.pipe() if side_channel else (-1, -1)
    if side_channel:
        argv = [a.replace("{side_fd}", str(side_w)) for a in argv]
    t0 = time.perf_counter()
    try:
        pass_fds = [*fds, *([side_w] if side_channel else [])]
        ids: dict[str, Any] = dict(user=uid, group=uid, extra_groups=[]) if uid is not None else {}
        proc = subprocess.Popen(
            [*limits_argv(spec, nproc), *argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, pass_fds=pass_fds, start_new_session=True, close_fds=True, cwd="/", env={},
            **ids)
        if side_channel:
            os.close(side_w)
            side_w = -1
        out = _communicate(proc, stdin if isinstance(stdin, bytes) else stdin.encode(), spec,
                           side_r if side_channel else None)
    finally:
        for fd in (side_r, side_w):
            if fd >= 0:
                os.close(fd)
        if uid is not None:
            _reap(uid)
    code = proc.returncode
    if code is not None and 128 < code < 160:  # bubblewrap reports a signal as 128 + its number
        code = -(code - 128)
    stderr = out.stderr.decode(errors="replace")
    status = classify(exit_code=None if out.killed else code, stderr=stderr, timed_out=out.timed_out,
                      over_output=out.over_output, cpu_exceeded=code == -signal.SIGXCPU)
    return RunResult(status=status, exit_code=None if out.killed else code,
                     stdout=out.stdout.decode(errors="replace"), stderr=stderr, wall_s=time.perf_counter() - t0,
                     side=out.side.decode(errors="replace"))


def _reap(uid: int) -> None:
    """Kill whatever still runs as the run's uid (nothing should: the pid namespace died with the program)."""
    try:
        for _ in range(50):
            pids = _processes_of(uid, live=True)
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.01)
    finally:
        with _uid_lock:
            _uids_in_use.discard(uid)


class _Captured:
    def __init__(self) -> None:
        self.stdout = bytearray()
        self.stderr = bytearray()
        self.side = bytearray()
        self.timed_out = self.over_output = self.killed = False


def _communicate(proc: subprocess.Popen[bytes], stdin: bytes, spec: SandboxSpec, side: int | None) -> _Captured:
    """Feed stdin, read stdout / stderr / the side channel until the program ends, the wall clock runs out
    or the output passes the cap (then the whole process group dies)."""
    got = _Captured()
    cap = spec.max_output_kb << 10
    writer = threading.Thread(target=_feed, args=(proc, stdin), daemon=True)
    writer.start()
    sel = selectors.DefaultSelector()
    assert proc.stdout is not None and proc.stderr is not None
    sel.register(proc.stdout, selectors.EVENT_READ, got.stdout)
    sel.register(proc.stderr, selectors.EVENT_READ, got.stderr)
    if side is not None:
        sel.register(side, selectors.EVENT_READ, got.side)
    deadline = time.monotonic() + spec.timeout_s
    open_streams = len(sel.get_map())
    while open_streams:
        left = deadline - time.monotonic()
        if left <= 0:
            got.timed_out = True
            break
        for key, _ in sel.select(timeout=min(left, 0.5)):
            chunk = os.read(key.fd, 65536)
            if not chunk:
                sel.unregister(key.fileobj)
                open_streams -= 1
                continue
            key.data.extend(chunk)
        if len(got.stdout) + len(got.stderr) > cap or len(got.side) > cap:
            got.over_output = True
            break
    sel.close()
    if got.timed_out or got.over_output:
        got.killed = True
        _kill_group(proc)
    try:
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        got.timed_out = got.killed = True
        _kill_group(proc)
        proc.wait(timeout=10)
    for stream in (proc.stdout, proc.stderr, proc.stdin):
        if stream is not None:
            stream.close()
    del got.stdout[cap:]
    del got.stderr[max(0, cap - len(got.stdout)):]
    del got.side[cap:]
    writer.join(timeout=1)
    return got


def _feed(proc: subprocess.Popen[bytes], data: bytes) -> None:
    assert proc.stdin is not None
    try:
        if data:
            proc.stdin.write(data)
        proc.stdin.close()
    except (BrokenPipeError, OSError, ValueError):
        pass


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
