"""RewardWorker: scores completions with the configured reward functions (weighted sum)."""

from __future__ import annotations

import time
from typing import Any

from actors.group import BaseWorker
from rewards.registry import RewardFn, resolve_reward


class RewardWorker(BaseWorker):
    def __init__(
        self,
        rank: int = 0,
        world_size: int = 1,
        master_addr: str = "",
        master_port: int = 0,
        *,
        functions: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(rank, world_size, master_addr, master_port)
        self.specs = list(functions or [])

    def setup(self) -> None:
        self.fns: list[tuple[str, float, RewardFn]] = []
        for s in self.specs:
            label = s["name"].rsplit(":", 1)[-1]  # 'path/file.py:func' is logged as 'func'
            while label in {name for name, _, _ in self.fns}:
                label += "_"
            self.fns.append((label, float(s.get("weight", 1.0)), resolve_reward(s)))

    def score(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        """``items``: ``{"prompt", "completion", "completion_ids", **extras}``; returns total and per-function rewards."""
        t0 = time.perf_counter()
        prompts = [it["prompt"] for it in items]
        completions = [it["completion"] for it in items]
        completion_ids = [it["completion_ids"] for it in items]
        extra_keys = sorted({k for it in items for k in it} - {"prompt", "completion", "completion_ids"})
        columns = {k: [it.get(k) for it in items] for k in extra_keys}
        total = [0.0] * len(items)
        per_fn: dict[str, list[float]] = {}
        for name, weight, fn in self.fns:
            values = fn(prompts=prompts, completions=completions, completion_ids=completion_ids, **columns)
            values = [float("nan") if v is None else float(v) for v in values]
            if len(values) != len(items):
                raise ValueError(f"reward function {name!r} returned {len(values)} values for {len(items)} completions")
            per_fn[name] = values
            total = [t + weight * v for t, v in zip(total, values, strict=True)]
        return {"total": total, "per_function": per_fn, "time": time.perf_counter() - t0}
