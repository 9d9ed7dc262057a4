"""The trusted program that runs inside the sandbox for the ``code_tests`` reward (stdlib only; the sandbox's
python3 runs it from a read-only mount). It never runs the candidate's code in its own process:

* ``calls``: for each test, a forked child runs the test's setup, the candidate's code, then one call
  expression (``f(2)``), and sends the value back as tagged plain data (int, float, str, list, tuple, dict,
  set, ...; an object of any other type, e.g. one whose ``__eq__`` is always true, is an error);
* ``stdio``: for each test, the candidate program runs with the test's stdin; its stdout comes back;
* ``judge``: no candidate code at all: the test's own expressions (``sorted(__v[0]) == [1, 2]``) are evaluated
  on the decoded values.

Expected values never enter a sandbox that runs candidate code. Each test has its own time limit; between tests
every other process of the sandbox is killed. Results go to the report descriptor given on the command line,
one JSON line per test, never to stdout (which the candidate shares).
"""

import contextlib
import ctypes
import json
import os
import select
import signal
import subprocess
import sys
import time

_MAX_ITEMS = 100_000
_type, _len, _repr, _isinstance = type, len, repr, isinstance


class Unsupported(Exception):
    pass


def encode(x, depth=0, budget=None):
    """``x`` as tagged JSON; only exact built-in types (subclasses could override ``__eq__``)."""
    budget = budget if budget is not None else [_MAX_ITEMS]
    budget[0] -= 1
    if depth > 100 or budget[0] < 0:
        raise Unsupported("value too large or too deeply nested")
    t = _type(x)
    if x is None:
        return ["n"]
    if t is bool:
        return ["B", x]
    if t is int:
        return ["i", str(x)]
    if t is float:
        return ["f", _repr(x)]
    if t is complex:
        return ["c", _repr(x.real), _repr(x.imag)]
    if t is str:
        return ["s", x]
    if t is bytes:
        return ["b", x.hex()]
    if t in (list, tuple, set, frozenset):
        tag = {list: "l", tuple: "t", set: "S", frozenset: "F"}[t]
        return [tag, [encode(v, depth + 1, budget) for v in x]]
    if t is dict:
        return ["d", [[encode(k, depth + 1, budget), encode(v, depth + 1, budget)] for k, v in x.items()]]
    raise Unsupported(f"the value is a {t.__module__}.{t.__qualname__}, not plain data")


def decode(v):
    tag = v[0]
    if tag == "n":
        return None
    if tag in ("B", "s"):
        return v[1]
    if tag == "i":
        return int(v[1])
    if tag == "f":
        return float(v[1])
    if tag == "c":
        return complex(float(v[1]), float(v[2]))
    if tag == "b":
        return bytes.fromhex(v[1])
    if tag == "d":
        return {decode(k): decode(x) for k, x in v[1]}
    items = [decode(x) for x in v[1]]
    return {"l": list, "t": tuple, "S": set, "F": frozenset}[tag](items)


def _no_dumping():
    """Children (same uid) may not read this process's memory or open its descriptors through /proc."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE = 0


def _kill_others():
    me = os.getpid()
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) not in (1, me):
            with contextlib.suppress(OSError):
                os.kill(int(name), signal.SIGKILL)
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG) == (0, 0):
                break
        except ChildProcessError:
            break


def _status_of(code, err):
    if "MemoryError" in err:
        return "memory"
    if code < 0:
        return "killed"
    return "error"


def _read_until(fd, deadline, cap):
    """The child's answer: one JSON document, taken as soon as it is complete (a process the candidate left
    behind may hold the pipe open), else whatever came before EOF, the deadline or the cap."""
    buf = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return buf, "timeout"
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            return buf, "timeout"
        chunk = os.read(fd, 65536)
        if not chunk:
            return buf, None
        buf += chunk
        if _len(buf) > cap:
            return buf[:cap], "output_limit"
        if buf.endswith(b"}"):
            with contextlib.suppress(ValueError):
                json.loads(buf)
                return buf, None


def _child_call(w, spec, i):
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):  # what the candidate prints is not its answer, and must not fill the sandbox's output
        os.dup2(null, fd)
    try:
        ns = {"__name__": "solution", "__builtins__": __builtins__}
        exec(compile(spec["setup"], "test_setup.py", "exec"), ns)
        exec(compile(spec["code"], "solution.py", "exec"), ns)
        if spec.get("entry_point"):
            ns["candidate"] = ns[spec["entry_point"]]
        if spec.get("args") is not None:
            ns["__args"] = decode(spec["args"][i])
        value = eval(compile(spec["calls"][i], "test.py", "eval"), ns)
        out = {"ok": True, "value": encode(value)}
    except MemoryError:
        out = {"ok": False, "status": "memory", "error": "MemoryError"}
    except BaseException as e:
        out = {"ok": False, "status": "error", "error": f"{_type(e).__name__}: {str(e)[:300]}"}
    data = json.dumps(out).encode()
    while data:
        data = data[os.write(w, data):]
    os._exit(0)


def run_calls(spec, report):
    for i in range(_len(spec["calls"])):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            os.close(report)
            _child_call(w, spec, i)
        os.close(w)
        deadline = time.monotonic() + spec["timeout_s"]
        raw, problem = _read_until(r, deadline, spec["cap"])
        os.close(r)
        _kill_others()
        if problem:
            result = {"status": problem}
        else:
            try:
                result = json.loads(raw)
            except ValueError:
                result = {"status": "error", "error": "the test process ended without an answer"}
            if result.pop("ok", False):
                result["status"] = "ok"
        _report(report, {"test": i, **result})


def run_stdio(spec, report):
    for i, stdin in enumerate(spec["inputs"]):
        t0 = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-B", "main.py"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, close_fds=True)
        try:
            out, err = proc.communicate(stdin.encode(), timeout=spec["timeout_s"])
            if _len(out) > spec["cap"]:
                result = {"status": "output_limit"}
            elif proc.returncode == 0:
                result = {"status": "ok", "stdout": out.decode(errors="replace")}
            else:
                text = err.decode(errors="replace")
                result = {"status": _status_of(proc.returncode, text), "error": text[-300:]}
        except subprocess.TimeoutExpired:
            result = {"status": "timeout"}
        _kill_others()
        result["wall_s"] = round(time.monotonic() - t0, 4)
        _report(report, {"test": i, **result})


def run_judge(spec, report):
    base = {"__name__": "judge"}
    try:
        exec(compile(spec["setup"], "test_setup.py", "exec"), base)
    except BaseException as e:
        _report(report, {"setup_error": f"{_type(e).__name__}: {e}"})
        return
    for i, check in enumerate(spec["checks"]):
        ns = dict(base)
        try:
            ns["__v"] = [decode(v) for v in check["values"]]
            result = {"status": "ok", "passed": bool(eval(compile(check["expr"], "test.py", "eval"), ns))}
        except BaseException as e:
            result = {"status": "error", "error": f"{_type(e).__name__}: {str(e)[:300]}"}
        _report(report, {"test": i, **result})


def _report(fd, obj):
    data = (json.dumps(obj) + "\n").encode()
    while data:
        data = data[os.write(fd, data):]


def main():
    mode, report, spec_path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    _no_dumping()
    with open(spec_path) as f:
        spec = json.load(f)
    {"calls": run_calls, "stdio": run_stdio, "judge": run_judge}[mode](spec, report)


if __name__ == "__main__":
    main()
