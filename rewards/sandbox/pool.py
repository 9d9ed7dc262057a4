"""A bounded pool of sandbox runs inside one process (a reward actor, the reward server, an agent env): at most
``sandbox.concurrency`` programs at once, the rest queued; counters for the metrics."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from rewards.sandbox.runner import probe, run_program, warn_unisolated
from rewards.sandbox.spec import RunResult, SandboxSpec

T = TypeVar("T")
_pools: dict[SandboxSpec, SandboxPool] = {}
_pools_lock = threading.Lock()


class SandboxPool:
    """At most ``spec.workers`` sandboxes at once (a semaphore; callers queue), and ``map`` to spread work
    over threads. Creating one checks that the sandbox can run here (:class:`SandboxUnavailable` otherwise)
    and warns when ``isolation`` is ``none``."""

    def __init__(self, spec: SandboxSpec, where: str = "sandbox") -> None:
        self.spec = spec
        warn_unisolated(spec, where)
        probe(spec)
        self._slots = threading.BoundedSemaphore(spec.workers)
        # the callers' side: enough threads to keep every slot busy while others compare or wait on a judge
        self._executor = ThreadPoolExecutor(max_workers=2 * spec.workers, thread_name_prefix="sandbox")
        self._lock = threading.Lock()
        self.statuses: Counter[str] = Counter()
        self.wall_s = 0.0

    @classmethod
    def shared(cls, spec: SandboxSpec, where: str = "sandbox") -> SandboxPool:
        """One pool per spec in this process (the reward's and the tool's calls share the concurrency)."""
        with _pools_lock:
            if spec not in _pools:
                _pools[spec] = cls(spec, where)
            return _pools[spec]

    def run(self, files: dict[str, str | bytes], command: list[str] | None = None, **kwargs: Any) -> RunResult:
        """One run in the calling thread, once a slot is free (``kwargs``: ``run_program``'s)."""
        with self._slots:
            res = run_program(files, command, spec=kwargs.pop("spec", self.spec), **kwargs)
        with self._lock:
            self.statuses[res.status] += 1
            self.wall_s += res.wall_s
        return res

    async def arun(self, files: dict[str, str | bytes], command: list[str] | None = None,
                   **kwargs: Any) -> RunResult:
        return await asyncio.wrap_future(self.submit(self.run, files, command, **kwargs))

    def submit(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> Future[T]:
        """``fn`` on the pool's threads (it may call :meth:`run`: runs wait for slots, never for threads)."""
        return self._executor.submit(fn, *args, **kwargs)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
