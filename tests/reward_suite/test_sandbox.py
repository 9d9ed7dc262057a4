"""Hostile programs in the sandbox: each is contained, ends with the expected status, and leaves nothing behind.

Needs bubblewrap (the README's setup installs it); without it these tests fail with the sandbox's own message,
never skip: a machine that cannot sandbox must not look green.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rewards.sandbox import SandboxPool, SandboxSpec, SandboxUnavailable, run_program
from rewards.sandbox.runner import _UID_BASE

ROOT = Path(__file__).resolve().parents[2]
SPEC = SandboxSpec(timeout_s=5.0, memory_mb=256, max_processes=32, max_output_kb=64)


def sandbox_processes() -> list[int]:
    """Live processes running as a sandbox uid (started as root, every run has its own uid >= _UID_BASE)."""
    out = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid >= _UID_BASE:
                    state = Path(f"/proc/{entry.name}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
                    if state not in (b"Z", b"X"):
                        out.append(int(entry.name))
            except (OSError, IndexError):
                continue
    return out


def run(code: str, **kw: object) -> object:
    return run_program({"main.py": code}, spec=kw.pop("spec", SPEC), **kw)  # type: ignore[arg-type]


def test_plain_program_and_its_view_of_the_machine() -> None:
    res = run("import os, sys\nprint(os.getuid() != 0, sorted(os.environ), sorted(os.listdir('/')), input())",
              stdin="hi")
    assert res.status == "ok" and res.exit_code == 0, res
    assert res.stdout.split("\n")[0] == ("True ['HOME', 'LANG', 'PATH', 'PWD', 'PYTHONDONTWRITEBYTECODE', "
                                         "'PYTHONHASHSEED'] ['bin', 'dev', 'lib', 'lib64', 'proc', 'sbin', 'tmp', "
                                         "'usr', 'work'] hi")
    assert res.wall_s < 2.0


def test_infinite_loop_times_out() -> None:
    spec = SandboxSpec(timeout_s=1.0, memory_mb=256)
    t0 = time.perf_counter()
    res = run("while True:\n    pass", spec=spec)
    assert res.status == "timeout" and res.exit_code is None
    assert time.perf_counter() - t0 < 3.0
    assert not sandbox_processes()


def test_fork_bomb_is_contained_and_leaves_no_process() -> None:
    bomb = ("import os, time\nfor _ in range(2000):\n    os.fork()\n    time.sleep(0.001)\ntime.sleep(30)\n")
    res = run(bomb, spec=SandboxSpec(timeout_s=3.0, memory_mb=256, max_processes=32))
    assert res.status != "ok", res
    assert not sandbox_processes()


def test_big_allocation_is_a_memory_status() -> None:
    res = run("x = bytearray(4 << 30)\nprint('allocated')")
    assert res.status == "memory", res
    assert "allocated" not in res.stdout


def test_flood_of_output_is_cut_and_the_json_line_stays_small() -> None:
    flood = "import sys\nchunk = 'x' * 1_000_000\nfor _ in range(200):\n    sys.stdout.write(chunk)\n"
    res = run(flood)
    assert res.status == "output_limit", res
    assert len(json.dumps(res.to_json())) < 2 * (SPEC.max_output_kb << 10)


def test_writes_outside_the_working_directory_change_nothing(tmp_path: Path) -> None:
    planted = tmp_path / "planted.txt"
    planted.write_text("original")
    before = sorted(os.listdir(tmp_path))
    targets = [str(planted), str(tmp_path / "new.txt"), str(ROOT / "sandbox_was_here"), "/tmp/sandbox_was_here",
               os.path.expanduser("~/sandbox_was_here"), "/usr/sandbox_was_here"]
    code = (f"import os\nfor p in {targets!r}:\n    try:\n        os.makedirs(os.path.dirname(p), exist_ok=True)\n"
            "        open(p, 'w').write('pwned')\n        print('wrote', p)\n    except OSError as e:\n"
            "        print('refused', p, e.errno)\n")
    res = run(code)
    assert res.status == "ok", res
    assert planted.read_text() == "original"
    assert sorted(os.listdir(tmp_path)) == before
    for p in targets[2:]:
        assert not os.path.exists(p), p


def test_environment_and_other_processes_secrets_stay_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "s3cr3t-" + secrets.token_hex(8)
    monkeypatch.setenv("RAYLHF_REWARD_TOKEN", secret)
    code = ("import os, glob\nprint(dict(os.environ))\nfor p in glob.glob('/proc/*/environ'):\n    try:\n"
            "        print(p, open(p, 'rb').read())\n    except OSError as e:\n        print(p, e)\n"
            "print(os.listdir('/proc'))\n")
    res = run(code)
    assert res.status == "ok", res
    assert secret not in res.stdout + res.stderr


def test_a_secret_file_of_the_checkout_is_not_visible() -> None:
    secret = "checkout-secret-" + secrets.token_hex(8)
    path = ROOT / f".sandbox-test-secret-{os.getpid()}"
    path.write_text(secret)
    try:
        code = (f"import os\nfor p in [{str(path)!r}, '/work', '/']:\n    try:\n        print(open(p).read())\n"
                "    except OSError as e:\n        print('no', p, e.errno)\n"
                "for d, dirs, files in os.walk('/'):\n"
                "    dirs[:] = [x for x in dirs if os.path.join(d, x) not in ('/proc', '/usr', '/sys', '/dev')]\n"
                "    for f in files:\n        try:\n            print(open(os.path.join(d, f), 'rb').read(200))\n"
                "        except OSError:\n            pass\n")
        res = run(code)
        assert res.status == "ok", res
        assert secret not in res.stdout + res.stderr
    finally:
        path.unlink()


def test_network_is_unreachable_from_the_sandbox() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(0.5)
    port = listener.getsockname()[1]
    code = ("import socket\nfor host in ('127.0.0.1', 'localhost', '10.0.2.2'):\n    s = socket.socket()\n"
            "    s.settimeout(1)\n    try:\n        s.connect((host, PORT))\n        s.sendall(b'leak')\n"
            "        print('connected', host)\n    except OSError as e:\n        print('refused', host, e)\n"
            ).replace("PORT", str(port))
    try:
        res = run(code)
        assert res.status == "ok", res
        assert "connected" not in res.stdout
        with pytest.raises(TimeoutError):
            listener.accept()
    finally:
        listener.close()


def test_a_setsid_child_outliving_its_parent_is_gone() -> None:
    code = ("import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        time.sleep(60)\n"
            "    os._exit(0)\nprint('parent leaves')\n")
    res = run(code)
    assert res.status == "ok" and "parent leaves" in res.stdout
    assert not sandbox_processes()


def test_a_program_that_kills_its_parents_cannot_stop_the_cli(tmp_path: Path) -> None:
    prog = tmp_path / "killer.py"
    prog.write_text("import os, signal\nfor pid in [os.getppid(), 1] + [int(p) for p in os.listdir('/proc') "
                    "if p.isdigit()]:\n    if pid != os.getpid():\n        try:\n"
                    "            os.kill(pid, signal.SIGKILL)\n        except OSError:\n            pass\n"
                    "print('still here')\n")
    out = subprocess.run([sys.executable, "-m", "raylhf.sandbox_run", str(prog), "--timeout-s", "5"],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    line = json.loads(out.stdout.strip().splitlines()[-1])
    assert line["status"] in ("ok", "killed", "error"), line
    assert not sandbox_processes()


def test_sandbox_run_cli_prints_one_json_line(tmp_path: Path) -> None:
    prog = tmp_path / "p.py"
    prog.write_text("import sys\nprint(sys.stdin.read().upper())\nsys.exit(3)\n")
    stdin = tmp_path / "in.txt"
    stdin.write_text("abc")
    out = subprocess.run([sys.executable, "-m", "raylhf.sandbox_run", str(prog), "--stdin", str(stdin),
                          "--memory-mb", "128"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0
    line = json.loads(out.stdout)
    assert (line["status"], line["exit_code"], line["stdout"]) == ("error", 3, "ABC\n")
    assert set(line) == {"status", "exit_code", "stdout", "stderr", "wall_s"}


def test_missing_bubblewrap_refuses_with_the_fix(tmp_path: Path) -> None:
    spec = SandboxSpec(bwrap=str(tmp_path / "no-bwrap"))
    for _ in range(2):  # every time, not only the first
        with pytest.raises(SandboxUnavailable, match="apt-get install bubblewrap"):
            SandboxPool(spec, "test")
    prog = tmp_path / "p.py"
    prog.write_text("print(1)")
    env = {**os.environ, "PATH": "/nonexistent"}
    out = subprocess.run([sys.executable, "-m", "raylhf.sandbox_run", str(prog)], capture_output=True, text=True,
                         timeout=60, cwd=ROOT, env=env)
    assert out.returncode == 2 and "bubblewrap" in out.stderr and not out.stdout


def test_isolation_none_warns_every_time(capsys: pytest.CaptureFixture[str]) -> None:
    spec = SandboxSpec(isolation="none", timeout_s=5.0)
    with pytest.warns(UserWarning, match="WITHOUT isolation"):
        pool = SandboxPool(spec, "test")
    res = pool.run({"main.py": "import os\nprint(os.getcwd().startswith('/tmp/raylhf-unsandboxed-'))"})
    assert res.status == "ok" and res.stdout.strip() == "True", res
    assert "WITHOUT isolation" in capsys.readouterr().out


def test_interpreter_inside_the_checkout_or_home_is_refused() -> None:
    fake = ROOT / f".sandbox-test-python-{os.getpid()}" / "bin" / "python3"
    fake.parent.mkdir(parents=True)
    fake.write_text("#!/bin/sh\n")
    try:
        with pytest.raises(SandboxUnavailable, match="checkout"):
            run_program({"main.py": "print(1)"}, spec=SandboxSpec(python=str(fake)))
    finally:
        fake.unlink()
        fake.parent.rmdir()
        fake.parent.parent.rmdir()
    home_python = Path.home() / ".local" / "bin" / "python3"
    if home_python.exists():
        with pytest.raises(SandboxUnavailable, match="HOME"):
            run_program({"main.py": "print(1)"}, spec=SandboxSpec(python=str(home_python)))


def test_kernel_surface_calls_are_refused_by_the_seccomp_filter() -> None:
    code = ("import ctypes, errno\nlibc = ctypes.CDLL(None, use_errno=True)\n"
            "for name, nr, args in [('ptrace', 101, (16, 1, 0, 0)), ('unshare', 272, (0x10000000,)),\n"
            "                       ('keyctl', 250, (0, 0, 0)), ('bpf', 321, (0, 0, 0)), ('mount', 165, (0,) * 5),\n"
            "                       ('io_uring_setup', 425, (1, 0)), ('perf_event_open', 298, (0,) * 5)]:\n"
            "    ctypes.set_errno(0)\n    r = libc.syscall(nr, *args)\n"
            "    print(name, r, errno.errorcode.get(ctypes.get_errno()))\n"
            "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('Seccomp:')][0])\n")
    res = run(code)
    assert res.status == "ok", res
    lines = res.stdout.splitlines()
    assert lines[:-1] == [f"{n} -1 EPERM" for n in ("ptrace", "unshare", "keyctl", "bpf", "mount", "io_uring_setup",
                                                      "perf_event_open")]
    assert lines[-1] == "2"  # SECCOMP_MODE_FILTER


def test_only_the_standard_descriptors_are_inherited() -> None:
    held = os.open("/dev/null", os.O_RDONLY)  # an open descriptor of the caller (not inheritable by default)
    os.set_inheritable(held, True)  # even an inheritable one stays outside
    try:
        res = run("import os\nprint(sorted(int(x) for x in os.listdir('/proc/self/fd')))")
    finally:
        os.close(held)
    assert res.status == "ok", res
    assert res.stdout.strip() == "[0, 1, 2, 3]"  # 3: the directory listdir itself opened
