"""The watchdog's stack extraction and report (pure: no Ray cluster)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest
import ray

from actors import watchdog
from rewards.aio import LoopThread


def parked_here(ev: threading.Event) -> None:
    ev.wait(30)


def actor_method_executor(ev: threading.Event) -> None:  # the name of Ray's frame under every actor call
    parked_here(ev)


@pytest.fixture
def two_threads() -> Iterator[tuple[threading.Thread, threading.Thread]]:
    """An idle helper thread and one that looks like it runs an actor call, both parked in parked_here."""
    ev = threading.Event()
    idle = threading.Thread(target=parked_here, args=(ev,), name="idle-helper", daemon=True)
    busy = threading.Thread(target=actor_method_executor, args=(ev,), name="Dummy-1", daemon=True)
    idle.start()
    busy.start()
    try:
        yield idle, busy
    finally:
        ev.set()
        idle.join(5)
        busy.join(5)


def test_thread_stacks_names_threads_and_puts_the_actor_call_first(two_threads: tuple[threading.Thread, ...]) -> None:
    stacks = watchdog.thread_stacks(skip=[threading.get_ident()])
    names = [e["name"] for e in stacks]
    assert names[0] == "Dummy-1" and stacks[0]["actor_call"], names
    assert "idle-helper" in names and "MainThread" not in names  # the calling thread is skipped
    helper = next(e for e in stacks if e["name"] == "idle-helper")
    assert not helper["actor_call"] and any("in parked_here" in f for f in helper["frames"]), helper["frames"]


def test_is_actor_call_looks_only_at_frame_lines() -> None:
    assert watchdog.is_actor_call(['  File "ray/_private/function_manager.py", line 740, in actor_method_executor\n'
                                   "    return method(__ray_actor, *args, **kwargs)\n"])
    assert not watchdog.is_actor_call(['  File "x.py", line 1, in f\n    s = "in actor_method_executor"\n'])


def test_asyncio_tasks_awaiting_show_their_coroutine() -> None:
    class Holder:
        def __init__(self) -> None:
            self.loop = LoopThread("test-loop")

    async def awaiting_endpoint() -> None:
        await asyncio.sleep(30)

    h = Holder()
    fut = asyncio.run_coroutine_threadsafe(awaiting_endpoint(), h.loop.loop)
    try:
        loops = watchdog.event_loops(h)
        assert loops == [h.loop.loop]
        for _ in range(100):  # the task starts on the loop thread
            tasks = watchdog.asyncio_stacks(loops)
            if tasks:
                break
            threading.Event().wait(0.01)
        assert tasks and tasks[0]["kind"] == "asyncio task"
        assert any("in awaiting_endpoint" in f for f in tasks[0]["frames"]), tasks
    finally:
        fut.cancel()
        h.loop.run(asyncio.sleep(0.05))  # let the cancellation land before the loop stops
        h.loop.close()


def test_snapshot_outside_ray(two_threads: tuple[threading.Thread, ...]) -> None:
    snap = watchdog.snapshot(3, "FakeWorker")
    assert snap["rank"] == 3 and snap["class"] == "FakeWorker" and snap["pid"] > 0
    assert snap["node"] == "?" and not ray.is_initialized()  # no Ray here: no cluster started for the node id
    assert snap["stacks"][0]["name"] == "Dummy-1"


def test_trim_keeps_the_innermost_frames() -> None:
    frames = [f"frame {i}\n" for i in range(40)]
    out = watchdog.trim(frames, keep=25)
    assert out[0] == "  ... 15 outer frames left out\n" and out[1:] == frames[15:]
    assert watchdog.trim(frames[:3]) == frames[:3]


SNAP = {
    "pid": 4242, "node": "10.0.0.7", "node_id": "abcdef0123456789", "rank": 1, "class": "RewardWorker",
    "stacks": [
        {"kind": "thread", "name": "asyncio_0", "actor_call": False,
         "frames": ['  File "plugin.py", line 3, in slow_reward\n    time.sleep(60)\n']},
        {"kind": "thread", "name": "Dummy-1", "actor_call": True,
         "frames": ['  File "function_manager.py", line 740, in actor_method_executor\n    return method()\n',
                    '  File "aio.py", line 21, in run\n    return fut.result(timeout_s)\n']},
    ],
}


def test_format_snapshot_puts_the_actor_call_first() -> None:
    text = watchdog.format_snapshot(SNAP, "score")
    lines = text.splitlines()
    assert lines[0] == "--- rank 1: RewardWorker, pid 4242 on 10.0.0.7 (node abcdef01)"
    assert lines[1] == "thread \"Dummy-1\" (running the actor call 'score'):"
    assert text.index("actor_method_executor") < text.index('thread "asyncio_0":') < text.index("slow_reward")
    assert '    File "plugin.py", line 3, in slow_reward' in lines  # frames indented under their thread


def test_rays_own_idle_threads_are_only_named() -> None:
    main = {"kind": "thread", "name": "MainThread", "actor_call": False,
            "frames": ['  File "/x/ray/_private/worker.py", line 1069, in main_loop\n    self.run_task_loop()\n']}
    text = watchdog.format_snapshot({**SNAP, "stacks": [*SNAP["stacks"], main]}, "score")
    assert "main_loop" not in text and text.splitlines()[-1] == "Ray's own threads (stacks left out): MainThread"
    assert watchdog.is_ray_housekeeping(main) and not watchdog.is_ray_housekeeping(SNAP["stacks"][1])


def test_format_report_names_the_phase_limit_field_and_ranks() -> None:
    sections = {1: watchdog.format_snapshot(SNAP, "score"),
                2: watchdog.format_unreachable(2, "the actor is unreachable: RayActorError: died", "pid 7, state DEAD")}
    report = watchdog.format_report("reward.score", 3.0, [0], [1, 2], sections)
    first, second, *rest = report.splitlines()
    assert first.startswith("reward.score: no answer within 3s from rank(s) 1, 2 of the 3 called")
    assert "raise runtime.phase_timeout_s (0: no limit)" in first
    assert second == "answered: 0; silent: 1, 2"
    assert rest[0].startswith("--- rank 1: RewardWorker")
    assert "--- rank 2: no stacks: the actor is unreachable: RayActorError: died (pid 7, state DEAD)" in rest
    explicit = watchdog.format_report("policy.setup", 600, [], [0], {}, limit_field="this call's timeout_s")
    assert "answered: none; silent: 0" in explicit and "raise this call's timeout_s" in explicit


def test_format_unreachable_appends_the_dump() -> None:
    text = watchdog.format_unreachable(0, "did not answer", "pid 9", "py-spy dump --pid 9 (exit 0):\nThread 9")
    assert text.splitlines() == ["--- rank 0: no stacks: did not answer (pid 9)", "py-spy dump --pid 9 (exit 0):",
                                 "Thread 9"]


def test_py_spy_missing_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(watchdog, "find_py_spy", lambda: None)
    assert "pip install py-spy" in watchdog.py_spy_dump(1)
