"""Actor recovery: dead rollout / reward / reference ranks are restarted and the phase retried; a dead
policy rank becomes PolicyRankDied naming the checkpoint to resume from. See docs/reliability.md."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from actors.calls import WorkerError
from raylhf.core.errors import RunError
from raylhf.driver.startup import Workers
from raylhf.driver.weight_sync import SyncOptions, sync_weights

T = TypeVar("T")


class PolicyRankDied(RuntimeError, RunError):
    """A policy rank died: training state is lost beyond the last checkpoint; the message says how to resume."""

    @classmethod
    def from_error(cls, e: WorkerError, last_checkpoint: Any) -> PolicyRankDied:
        where = (f"resume from {last_checkpoint} with --resume auto (or --resume {last_checkpoint})" if last_checkpoint
                 else "no checkpoint was written yet (set checkpoint.save_every to make runs resumable); start again")
        cause = type(e.__cause__).__name__ if e.__cause__ is not None else "actor died"
        return cls(f"{e.group} rank {e.rank} died in {e.what} ({cause}; its log is in the Ray session logs); the "
                   f"ranks' training state is lost beyond the last checkpoint: {where}")


class Recovery:
    """Restarts rollout engines, reward workers and reference ranks that died and retries the phase.

    A dead engine is replaced in its placement-group bundle, set up, and given the policy's current
    weights before the retry (a reference rank is frozen: it reloads its model); at most ``max_restarts``
    restarts per run. Any other failure, and a dead policy rank, propagates (the driver turns a dead policy
    rank into ``PolicyRankDied``).
    """

    def __init__(self, workers: Workers, max_restarts: int, sync: SyncOptions, name: str = "raylhf") -> None:
        self.workers, self.max_restarts, self.sync, self.name = workers, max_restarts, sync, name
        self.restarts = 0
        self.retried = 0

    def run(self, phase: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)``, retried after restarting the dead rollout / reward ranks that made it fail."""
        while True:
            try:
                return fn(*args, **kwargs)
            except WorkerError as e:
                group = {"rollout": self.workers.rollout, "reward": self.workers.reward,
                         "reference": self.workers.reference}.get(e.group)
                if not e.died or group is None or self.restarts >= self.max_restarts:
                    raise
                print(f"[{self.name}] {e.what}: rank {e.rank} died during {phase}; restarting it "
                      f"({self.restarts + 1} of runtime.max_actor_restarts={self.max_restarts})", flush=True)
                restarted = group.restart_dead()
                self.restarts += max(1, len(restarted))
                if group is self.workers.rollout and phase != "sync":
                    assert self.workers.policy is not None
                    sync_weights(self.workers.policy, group, **self.sync.kwargs())  # the engines lag no update
                self.retried += 1

    def metrics(self) -> dict[str, float]:
        return {"recovery/restarts": float(self.restarts), "recovery/retried_phases": float(self.retried)}
