"""The phase watchdog: when an ActorGroup call outlives its limit (``runtime.phase_timeout_s``), say which
ranks have not answered and where each one is stuck.

Worker side, ``snapshot``: the Python stack of every thread of the actor's process (the thread running the
actor call first) and of every pending asyncio task on the worker's event loops. ``BaseWorker.stacks``
returns it from its own Ray concurrency group, so it answers while the actor's call is busy in Python code
that sleeps, waits or runs C code that releases the GIL.

Driver side, ``collect_sections`` asks every silent rank for its snapshot (bounded wait); a rank that cannot
answer (dead, or its process frozen with the GIL held) is named as such, with a ``py-spy dump`` of its
process when py-spy is installed and the actor runs on the driver's node. ``format_report`` (pure) builds
the message of ``PhaseTimeoutError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

WATCHDOG_GROUP = "watchdog"  # the Ray concurrency group of BaseWorker.stacks
CONCURRENCY_GROUPS = {WATCHDOG_GROUP: 1}  # give to ray.remote(...) (Ray refuses it in .options())
KEEP_FRAMES = 25  # the innermost frames shown per stack
STACKS_WAIT_S = 10.0  # how long the driver waits for the silent ranks' stacks
PY_SPY_TIMEOUT_S = 10.0
TIMEOUT_FIELD = "runtime.phase_timeout_s"

_TASK_MARKER = "in actor_method_executor"  # Ray's frame under every actor call (ray/_private/function_manager.py)
_RAY_INTERNAL = "/ray/_private/"  # in the path of Ray's own code (its main loop, its GC thread)


# ---------------------------------------------------------------------------------------------------------
# Worker side


def is_actor_call(frames: Sequence[str]) -> bool:
    """Whether a formatted stack runs an actor call (Ray's ``actor_method_executor`` frame is in it)."""
    return any(_TASK_MARKER in f.partition("\n")[0] for f in frames)


def thread_stacks(frames: Mapping[int, FrameType] | None = None, names: Mapping[int, str] | None = None,
                  skip: Iterable[int] = ()) -> list[dict[str, Any]]:
    """One entry per thread, ``{"kind": "thread", "name", "actor_call", "frames"}`` (``frames``: the lines of
    ``traceback.format_stack``, outermost first), threads running an actor call first. Defaults: every
    thread of this process (``sys._current_frames()``, names from ``threading.enumerate()``)."""
    frames = sys._current_frames() if frames is None else frames
    names = {t.ident: t.name for t in threading.enumerate() if t.ident} if names is None else names
    skipped = set(skip)
    out = []
    for ident, frame in frames.items():
        if ident in skipped:
            continue
        lines = traceback.format_stack(frame)
        out.append({"kind": "thread", "name": names.get(ident, f"thread {ident}"), "actor_call": is_actor_call(lines),
                    "frames": lines})
    out.sort(key=lambda e: not e["actor_call"])  # stable: otherwise the order of sys._current_frames()
    return out


def asyncio_stacks(loops: Iterable[asyncio.AbstractEventLoop]) -> list[dict[str, Any]]:
    """The pending tasks of running event loops (a coroutine that awaits, e.g. an HTTP call, is on no thread's
    stack). Read from another thread, so best effort: a loop whose tasks cannot be listed is skipped."""
    out = []
    for loop in loops:
        try:
            tasks = list(asyncio.all_tasks(loop))
        except RuntimeError:  # the task set changed while it was copied
            continue
        for task in tasks:
            summary = traceback.StackSummary.extract((f, f.f_lineno) for f in task.get_stack())
            out.append({"kind": "asyncio task", "name": task.get_name(), "actor_call": False,
                        "frames": summary.format()})
    return out


def event_loops(obj: Any) -> list[asyncio.AbstractEventLoop]:
    """Running event loops held by ``obj``'s attributes, directly or as ``attr.loop`` (rewards.aio.LoopThread)."""
    found = []
    for value in list(vars(obj).values()):
        loop = value if isinstance(value, asyncio.AbstractEventLoop) else getattr(value, "loop", None)
        if isinstance(loop, asyncio.AbstractEventLoop) and loop.is_running() and loop not in found:
            found.append(loop)
    return found


def snapshot(rank: int | None, class_name: str, loops: Iterable[asyncio.AbstractEventLoop] = ()) -> dict[str, Any]:
    """What ``BaseWorker.stacks`` returns: pid, node, rank, class and the stacks of every thread but the
    calling one (the watchdog's), then of the loops' pending asyncio tasks."""
    import os

    import ray

    node, node_id = "?", ""
    if ray.is_initialized():  # else get_runtime_context() would start a local cluster (unit tests)
        with contextlib.suppress(Exception):
            node, node_id = ray.util.get_node_ip_address(), ray.get_runtime_context().get_node_id()
    stacks = thread_stacks(skip=[threading.get_ident()]) + asyncio_stacks(loops)
    return {"pid": os.getpid(), "node": node, "node_id": node_id, "rank": rank, "class": class_name,
            "stacks": stacks}


# ---------------------------------------------------------------------------------------------------------
# Report (pure)


def trim(frames: Sequence[str], keep: int = KEEP_FRAMES) -> list[str]:
    """The innermost ``keep`` frames, after a line saying how many outer ones were left out."""
    if len(frames) <= keep:
        return list(frames)
    return [f"  ... {len(frames) - keep} outer frames left out\n", *frames[-keep:]]


def format_stack_entry(entry: Mapping[str, Any], method: str = "") -> str:
    """``thread "name" (running the actor call 'method'):`` and its trimmed frames, indented."""
    label = f'{entry["kind"]} "{entry["name"]}"'
    if entry.get("actor_call"):
        label += f" (running the actor call{f' {method!r}' if method else ''})"
    body = "".join(trim(entry["frames"])).rstrip("\n")
    return f"{label}:\n" + "\n".join("  " + line for line in body.splitlines())


def is_ray_housekeeping(entry: Mapping[str, Any]) -> bool:
    """A thread of Ray's own that runs no actor call (the task loop on MainThread, the GC thread)."""
    return (entry.get("kind") == "thread" and not entry.get("actor_call")
            and any(_RAY_INTERNAL in f.partition("\n")[0] for f in entry["frames"]))


def format_snapshot(snap: Mapping[str, Any], method: str = "") -> str:
    """One silent rank: its class, pid and node, then every stack (actor-call threads first, then the other
    threads and asyncio tasks); Ray's housekeeping threads are only named, on the last line."""
    node_id = snap.get("node_id") or ""
    head = (f"--- rank {snap.get('rank')}: {snap.get('class', '?')}, pid {snap.get('pid', '?')} on "
            f"{snap.get('node', '?')}{f' (node {node_id[:8]})' if node_id else ''}")
    entries = sorted(snap.get("stacks") or [], key=lambda e: not e.get("actor_call"))
    shown = [e for e in entries if not is_ray_housekeeping(e)]
    ray_own = [e["name"] for e in entries if is_ray_housekeeping(e)]
    lines = [head, *(format_stack_entry(e, method) for e in shown)]
    if not shown:
        lines.append("(no Python stacks besides Ray's own)")
    if ray_own:
        lines.append(f"Ray's own threads (stacks left out): {', '.join(ray_own)}")
    return "\n".join(lines)


def format_unreachable(rank: int, why: str, where: str = "", dump: str = "") -> str:
    """A silent rank that could not give its stacks: why, and a py-spy dump (or why there is none)."""
    lines = [f"--- rank {rank}: no stacks: {why}" + (f" ({where})" if where else "")]
    if dump:
        lines.append(dump.rstrip("\n"))
    return "\n".join(lines)


def _ranks(ranks: Sequence[int]) -> str:
    return ", ".join(map(str, ranks)) if ranks else "none"


def format_report(what: str, limit_s: float, answered: Sequence[int], silent: Sequence[int],
                  sections: Mapping[int, str], limit_field: str = TIMEOUT_FIELD) -> str:
    """The watchdog's message: the phase (``group.method``), the limit and the field that sets it, the ranks
    that answered and those that did not, then one section per silent rank."""
    total = len(answered) + len(silent)
    lines = [
        f"{what}: no answer within {limit_s:g}s from rank(s) {_ranks(silent)} of the {total} called "
        f"(the limit is {limit_field}). If this phase is only slow, raise {limit_field} (0: no limit); "
        "otherwise the stacks below show where each silent rank is stuck.",
        f"answered: {_ranks(answered)}; silent: {_ranks(silent)}",
    ]
    lines += [sections[r] for r in silent if r in sections]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------
# Driver side (Ray)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


def actor_location(actor: Any) -> tuple[int | None, str, str]:
    """(pid, node id, state) of an actor from the GCS (no dashboard needed); (None, "", "") if unknown."""
    actor_id = actor._actor_id.hex()
    try:
        from ray._private import state

        info = state.actors(actor_id=actor_id)
        return (info.get("Pid") or None), info.get("Address", {}).get("NodeID", ""), info.get("State", "")
    except Exception:
        pass
    try:
        from ray.util.state import get_actor

        st = get_actor(actor_id)
        if st is not None:
            return st.pid, st.node_id or "", st.state or ""
    except Exception:
        pass
    return None, "", ""


def find_py_spy() -> str | None:
    """py-spy on PATH, else beside this Python (a virtual environment's bin/)."""
    found = shutil.which("py-spy")
    if found:
        return found
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else None


def py_spy_dump(pid: int, timeout_s: float = PY_SPY_TIMEOUT_S) -> str:
    """``py-spy dump --pid PID`` (every thread's Python stack, also of a process that holds the GIL), or why
    there is none."""
    exe = find_py_spy()
    if exe is None:
        return "(py-spy is not installed: `pip install py-spy` to get the stacks of a frozen process)"
    try:
        res = subprocess.run([exe, "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return f"(py-spy dump --pid {pid} did not finish within {timeout_s:g}s)"
    except OSError as e:
        return f"(py-spy dump --pid {pid} could not run: {e})"
    out = (res.stdout + res.stderr).strip()
    return f"py-spy dump --pid {pid} (exit {res.returncode}):\n{out}"


def _unreachable_section(rank: int, actor: Any, why: str, local_node: str) -> str:
    pid, node_id, state = actor_location(actor)
    where = ", ".join(x for x in (f"pid {pid}" if pid else "", f"node {node_id[:8]}" if node_id else "",
                                   f"state {state}" if state else "") if x)
    if state == "DEAD" or not pid:
        return format_unreachable(rank, why, where)
    if node_id and node_id != local_node:
        return format_unreachable(rank, why, where, "(on another node: run `py-spy dump --pid "
                                                    f"{pid}` there, or `ray stack` on that node)")
    return format_unreachable(rank, why, where, py_spy_dump(pid))


def collect_sections(actors: Mapping[int, Any], method: str = "", wait_s: float | None = None
                     ) -> dict[int, str]:
    """One report section per rank in ``actors`` (rank -> handle): its stacks from ``BaseWorker.stacks``, all
    asked at once and waited for at most ``wait_s`` together (None: ``STACKS_WAIT_S``); for a rank that
    cannot answer, why, and a py-spy dump where possible."""
    import ray

    wait_s = STACKS_WAIT_S if wait_s is None else wait_s
    refs = {}
    for rank, actor in actors.items():
        try:
            refs[rank] = actor.stacks.remote()
        except Exception as e:  # not a BaseWorker
            refs[rank] = e
    pending = [r for r in refs.values() if not isinstance(r, Exception)]
    with contextlib.suppress(Exception):
        ray.wait(pending, num_returns=len(pending), timeout=wait_s)
    try:
        local_node = ray.get_runtime_context().get_node_id()
    except Exception:
        local_node = ""
    sections = {}
    for rank, ref in refs.items():
        if isinstance(ref, Exception):
            sections[rank] = format_unreachable(rank, f"cannot ask for stacks: {_first_line(ref)}")
            continue
        try:
            sections[rank] = format_snapshot(ray.get(ref, timeout=0), method)
            continue
        except ray.exceptions.GetTimeoutError:
            why = f"did not answer the stack request within {wait_s:g}s (frozen, or holding the GIL)"
            with contextlib.suppress(Exception):
                ray.cancel(ref)
        except Exception as e:  # RayActorError: dead
            why = f"the actor is unreachable: {_first_line(e)}"
        sections[rank] = _unreachable_section(rank, actors[rank], why, local_node)
    return sections


def watchdog_report(what: str, limit_s: float, actors: Sequence[Any], silent: Sequence[int],
                    limit_field: str = TIMEOUT_FIELD) -> str:
    """The full report for ``what`` (``group.method``) whose ranks ``silent`` (indices into ``actors``) did
    not answer within ``limit_s``; also printed to stderr at once, so it is in the log whatever the caller
    does with the error."""
    t0 = time.monotonic()
    method = what.rpartition(".")[2]
    sections = collect_sections({r: actors[r] for r in silent}, method)
    answered = [r for r in range(len(actors)) if r not in set(silent)]
    report = format_report(what, limit_s, answered, sorted(silent), sections, limit_field)
    print(f"[raylhf] watchdog ({time.monotonic() - t0:.1f}s to collect the stacks):\n{report}", file=sys.stderr,
          flush=True)
    return report
