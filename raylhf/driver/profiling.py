"""``--profile`` (``runtime.profile``): where a run's step time goes.

The driver's phase timer already times every phase of a step (``time/generate``, ``time/reward``,
``time/train``, ``time/sync``, ...); :class:`PhaseProfile` keeps them per step and writes
``<run dir>/profile/phases.json`` (every step) and ``phases.txt`` (the mean of each phase over the steps after
the first, its share of the step, and what no phase covers: driver overhead such as advantages and batch
building). The policy's train step of ``runtime.profile_step`` runs under the torch profiler on every rank
(``policy-step-rank<R>.json``, a chrome trace for chrome://tracing or ui.perfetto.dev, and the top operators in
``.txt``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class PhaseProfile:
    def __init__(self, run_dir: Path, trace_step: int) -> None:
        self.dir = run_dir / "profile"
        self.trace_step = trace_step
        self.rows: list[dict[str, float]] = []

    def before_step(self, step: int, policy: Any) -> None:
        """Arm the policy ranks' trace for the traced step."""
        if step == self.trace_step:
            self.dir.mkdir(parents=True, exist_ok=True)
            policy.call("trace_next_step", str(self.dir))

    def add(self, step: int, metrics: dict[str, float]) -> None:
        times = {k.removeprefix("time/"): v for k, v in metrics.items() if k.startswith("time/")}
        self.rows.append({"step": step, "total": times.pop("step", 0.0), "phases": times})

    def summary(self) -> str:
        rows = self.rows[1:] or self.rows  # the first step carries start-up costs (compilation, caches)
        if not rows:
            return "no steps profiled"
        total = sum(r["total"] for r in rows) / len(rows)
        names = sorted({k for r in rows for k in r["phases"]})
        lines = [f"mean over steps {rows[0]['step']}-{rows[-1]['step']} ({len(rows)} steps): {total:.3f} s per step",
                 f"{'phase':<24}{'seconds':>10}{'share':>8}"]
        covered = 0.0
        for k in names:
            mean = sum(r["phases"].get(k, 0.0) for r in rows) / len(rows)
            inner = k.endswith("_rank")  # measured inside an actor, part of a driver phase
            covered += 0.0 if inner else mean
            lines.append(f"{('  ' if inner else '') + k:<24}{mean:>10.3f}{mean / max(total, 1e-9):>8.1%}")
        rest = total - covered
        lines.append(f"{'(not in a phase)':<24}{rest:>10.3f}{rest / max(total, 1e-9):>8.1%}")
        return "\n".join(lines)

    def write(self) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "phases.json").write_text(json.dumps(self.rows, indent=1))
        (self.dir / "phases.txt").write_text(self.summary() + "\n")
        return self.dir
