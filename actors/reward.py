"""RewardWorker: scores completions with every configured reward (functions, plugin classes, remote
endpoints, reward models) as a weighted sum, on one persistent event loop so async rewards overlap."""

from __future__ import annotations

import time
from typing import Any

from actors.faults import maybe_die
from actors.group import BaseWorker
from rewards.aio import LoopThread
from rewards.base import RewardBatch
from rewards.scoring import CombinedScorer, bind_context, build_scorers


class RewardWorker(BaseWorker):
    def __init__(
        self,
        rank: int = 0,
        world_size: int = 1,
        master_addr: str = "",
        master_port: int = 0,
        *,
        functions: list[dict[str, Any]] | None = None,
        remote: list[dict[str, Any]] | None = None,
        models: list[dict[str, Any]] | None = None,
        plugins: list[str] | None = None,
        context: dict[str, Any] | None = None,
        secrets: dict[str, str] | None = None,
    ) -> None:
        super().__init__(rank, world_size, master_addr, master_port)
        self.specs = dict(functions=list(functions or []), remote=list(remote or []), models=list(models or []),
                          plugins=list(plugins or []))
        self.context = dict(context or {})
        self._secrets = dict(secrets or {})  # token_env -> token, from the driver's environment

    def setup(self) -> None:
        import os

        for name, value in self._secrets.items():  # the worker's own environment wins
            os.environ.setdefault(name, value)
        self._secrets.clear()
        self.loop = LoopThread()
        self.combined = CombinedScorer(build_scorers(**self.specs))
        bind_context(self.combined.scorers, self.context)

    def score(self, items: list[dict[str, Any]], step: int | None = None) -> dict[str, Any]:
        """``items``: ``{"prompt", "completion", "completion_ids", "prompt_messages"?, "rendered_prompt"?,
        **columns}``. Returns the total (None where nothing scored), per-reward values, PRM step scores,
        the scorers' metrics and the time taken."""

        maybe_die("reward", "score")
        t0 = time.perf_counter()
        context = {**self.context, **({"step": step} if step is not None else {})}
        batch = RewardBatch.from_items(items, context)
        out = self.loop.run(self.combined.score_all(batch))
        out["metrics"] = self.combined.metrics()
        out["time"] = time.perf_counter() - t0
        return out

    def close(self) -> None:
        self.loop.run(self.combined.aclose(), timeout_s=10)
        self.loop.close()
