"""NaN/Inf guard: skip an update whose loss or gradient is not finite, stop a run that keeps producing them.

Two halves, both small and pure so they are unit-tested without Ray (``tests/test_nan_guard.py``):

* the policy rank (``actors/policy.py``): :func:`local_flags` says whether this rank saw a non-finite
  loss or gradient; the flags are all-reduced (max) so every rank takes the same decision, then
  :func:`guard_metrics` turns them into the step's ``guard/*`` metrics and ``guard/skipped`` says whether
  the optimizer step is dropped;
* the driver (``raylhf/trainers/grpo.py``, ``raylhf/trainers/sft.py``): :class:`BadStepGuard` counts bad steps in a row,
  saves each offending batch under ``<run_dir>/bad_batches/step-<N>.pt`` and raises
  :class:`NonFiniteTrainingError` after ``runtime.max_bad_steps`` of them; a good step resets the count.

No torch at import time (like ``raylhf.core.metrics``): importable from the actors and from the driver.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from raylhf.core.errors import RunError

__all__ = ["BadStepGuard", "NonFiniteTrainingError", "guard_metrics", "is_bad_step", "local_flags",
           "save_bad_batch"]

SKIPPED = "guard/skipped"
NONFINITE_LOSS = "guard/nonfinite_loss"
NONFINITE_GRAD = "guard/nonfinite_grad_norm"


class NonFiniteTrainingError(RuntimeError, RunError):
    """Too many optimizer updates in a row were skipped for a non-finite loss or gradient norm."""


def local_flags(losses: Iterable[float], grad_norm: float | None,
                grads_nonfinite: bool = False) -> list[float]:
    """``[nonfinite_loss, nonfinite_grad]`` (1.0 / 0.0) of one rank, ready for an all-reduce with max.

    ``losses``: this rank's micro-batch losses; ``grad_norm``: the global norm when the rank knows it
    (ZeRO-0: full gradients on every rank), else None; ``grads_nonfinite``: a non-finite value found in
    the rank's own gradient partition (ZeRO-1/2/3, where no rank holds the whole gradient).
    """
    bad_loss = any(not math.isfinite(v) for v in losses)
    bad_grad = grads_nonfinite or (grad_norm is not None and not math.isfinite(grad_norm))
    return [float(bad_loss), float(bad_grad)]


def guard_metrics(flags: Iterable[float]) -> dict[str, float]:
    """The step's guard metrics from the all-reduced ``[nonfinite_loss, nonfinite_grad]`` flags.

    Any non-finite loss on any rank or a non-finite gradient norm skips the update (``guard/skipped=1``).
    """
    loss, grad = (1.0 if f > 0 else 0.0 for f in flags)
    return {SKIPPED: max(loss, grad), NONFINITE_LOSS: loss, NONFINITE_GRAD: grad}


def is_bad_step(metrics: Mapping[str, float]) -> bool:
    """Whether a driver step skipped any of its updates (``guard/skipped`` is their mean over the step's
    optimizer steps, so any value above 0)."""
    return metrics.get(SKIPPED, 0.0) > 0


def save_bad_batch(run_dir: Path, step: int, batch: Any, metrics: Mapping[str, float] | None = None) -> Path:
    """``<run_dir>/bad_batches/step-<step>.pt``: the batch's tensor fields (``torch.load`` gives a dict of
    lists of tensors, fields that are None are left out) and the step's metrics.

    Every tensor is cloned, so a row that is a view into a larger buffer (log-probs cut out of a padded
    micro-batch) saves only its own elements.
    """
    import torch

    data: dict[str, Any] = {}
    for f in fields(batch):
        value = getattr(batch, f.name)
        if value is not None:
            data[f.name] = [t.detach().cpu().clone() for t in value]
    out = Path(run_dir) / "bad_batches" / f"step-{step}.pt"
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"step": step, "batch": data, "metrics": dict(metrics or {})}, out)
    return out


@dataclass
class BadStepGuard:
    """Counts bad steps in a row on the driver; :meth:`check` after every logged step.

    ``max_bad_steps``: bad steps in a row that end the run; ``run_dir``: where bad batches are saved
    (None: not saved); ``name``: the log prefix (``grpo``, ``sft``).
    """

    max_bad_steps: int
    run_dir: Path | None = None
    name: str = "raylhf"
    in_a_row: int = 0

    def check(self, step: int, metrics: Mapping[str, float], batch: Any = None) -> bool:
        """Update the count with one driver step; save and report a bad one, raise
        :class:`NonFiniteTrainingError` when the count reaches ``max_bad_steps``. Returns whether it was
        bad."""
        if SKIPPED not in metrics:  # no update this step (e.g. every group filtered out): the count stays
            return False
        if not is_bad_step(metrics):
            self.in_a_row = 0
            return False
        self.in_a_row += 1
        saved = ""
        if self.run_dir is not None and batch is not None:
            saved = f"; batch saved to {save_bad_batch(self.run_dir, step, batch, metrics)}"
        what = " and ".join(label for k, label in ((NONFINITE_LOSS, "loss"), (NONFINITE_GRAD, "grad norm"))
                            if metrics.get(k, 0.0) > 0)
        print(f"[{self.name}] step {step}: update skipped, non-finite {what or 'loss / grad norm'} "
              f"({self.in_a_row} of runtime.max_bad_steps={self.max_bad_steps} in a row){saved}", flush=True)
        if self.in_a_row >= self.max_bad_steps:
            where = f" (batches in {Path(self.run_dir) / 'bad_batches'})" if self.run_dir is not None else ""
            raise NonFiniteTrainingError(
                f"{self.in_a_row} steps in a row (up to step {step}) had a non-finite loss or gradient norm "
                f"and were skipped{where}. Look at those batches (torch.load) for NaN/inf inputs, lower "
                "policy.lr or policy.grad_clip, use policy.precision=fp32, or raise runtime.max_bad_steps"
            )
        return True
