"""The one run lifecycle every trainer runs on (online and offline alike). See docs/architecture.md."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class RunResult:
    """What every trainer returns: the run dir, the final HF export, the metric rows, the held-out evaluations
    before / after, the last step run and, if a callback ended the run early, which one."""

    run_dir: Path
    checkpoint: str | None
    history: list[dict[str, Any]]
    eval_before: dict[str, float] = field(default_factory=dict)
    eval_after: dict[str, float] = field(default_factory=dict)
    final_step: int = 0
    stopped_by: str | None = None
    placement: dict[str, list[str]] = field(default_factory=dict)  # each actor group's node ids, rank by rank
