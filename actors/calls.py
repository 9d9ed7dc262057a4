"""Calls on actors: waiting for results with a limit (the watchdog's report on a timeout) and the errors that name
the group, the rank and the phase."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from typing import Any

import ray
from ray.exceptions import RayActorError, RayTaskError

from actors import watchdog
from raylhf.core.errors import RunError


class WorkerError(RuntimeError):
    """A rank failed; the message carries the group name, the rank and the remote error. ``what`` is the
    phase (``group.method``), ``rank`` the failing rank, ``died`` whether its actor process is gone."""

    def __init__(self, message: str, what: str = "", rank: int | None = None, died: bool = False) -> None:
        super().__init__(message)
        self.what, self.rank, self.died = what, rank, died

    @property
    def group(self) -> str:
        return self.what.split(".", 1)[0]


class PhaseTimeoutError(WorkerError, RunError):
    """The watchdog fired: ranks did not answer a call within its limit. The message is the watchdog report
    (which ranks answered, the silent ones' Python stacks; see actors/watchdog.py)."""

    def cli_message(self) -> str:
        return str(self).splitlines()[0] + " (the watchdog report with the stacks is printed above)"


def cancel_calls(refs: Sequence[ray.ObjectRef]) -> None:
    """Best-effort cancel of the other ranks' calls. Actor tasks cannot be force-cancelled (Ray raises
    ValueError for force=True, which used to replace the failing rank's error); a rank stuck in a collective
    stays stuck until the group is shut down (ray.kill)."""
    for r in refs:
        with contextlib.suppress(Exception):
            ray.cancel(r)


class Pending:
    """Calls started on a group's ranks; ``result()`` waits for them once (later calls return the same)."""

    def __init__(self, wait: Callable[[], list[Any]]) -> None:
        self._wait: Callable[[], list[Any]] | None = wait
        self._result: list[Any] | None = None

    def result(self) -> list[Any]:
        if self._wait is not None:
            wait, self._wait = self._wait, None
            self._result = wait()
        assert self._result is not None
        return self._result


def wait_all(refs: Sequence[ray.ObjectRef], what: str, timeout_s: float | None = None,
             actors: Sequence[Any] | None = None, limit_field: str = watchdog.TIMEOUT_FIELD,
             ranks: Sequence[int] | None = None) -> list[Any]:
    """ray.get on every ref, failing as soon as one fails (with its error), not after all finish.

    ``timeout_s`` (None: no limit): given ``actors`` (the BaseWorker running each ref, in the same order), a
    timeout raises PhaseTimeoutError with the watchdog report (also printed to stderr; ``limit_field`` names
    the setting to raise), else WorkerError naming the silent ranks. ``ranks``: the rank running each ref when
    that is not its position (one call per item, ``ActorGroup.submit_routed``)."""
    pending = list(refs)
    index = {r: i for i, r in enumerate(refs)}
    results: list[Any] = [None] * len(refs)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while pending:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        ready, pending = ray.wait(pending, num_returns=1, timeout=left)
        if not ready:
            silent = sorted(index[r] for r in pending)
            if ranks is not None:  # several calls per rank: report each silent rank once
                by_rank = {ranks[i]: (actors[i] if actors is not None else None) for i in range(len(refs))}
                order = sorted(by_rank)
                silent = sorted({order.index(ranks[i]) for i in silent})
                actors = [by_rank[rk] for rk in order] if actors is not None else None
            if actors is not None:  # the stacks first: cancelling may change them
                report = watchdog.watchdog_report(what, timeout_s or 0.0, actors, silent, limit_field)
                cancel_calls(pending)
                raise PhaseTimeoutError(report, what)
            cancel_calls(pending)
            raise WorkerError(f"{what}: no answer within {timeout_s:.0f}s from ranks {silent}", what)
        r = ready[0]
        try:
            results[index[r]] = ray.get(r)
        except (RayTaskError, RayActorError) as e:
            cancel_calls(pending)
            rank = ranks[index[r]] if ranks is not None else index[r]
            raise WorkerError(f"{what} failed on rank {rank}:\n{e}", what, rank, isinstance(e, RayActorError)) from e
    return results
