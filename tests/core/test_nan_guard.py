"""NaN/Inf guard: the rank-side decision and the driver-side bad-step count (pure, no Ray).

The skip itself (weights, optimizer state and LR schedule untouched; ZeRO 0, 2 and 3) and the drivers'
stop are tested end to end in tests/e2e/test_grpo_ray.py.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from raylhf.config import GRPOConfig, SFTConfig, build_config
from raylhf.config.run import RuntimeConfig
from raylhf.core.batch import Objective, TrainBatch
from raylhf.core.guard import BadStepGuard, NonFiniteTrainingError, guard_metrics, is_bad_step, local_flags

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    ("losses", "grad_norm", "grads_nonfinite", "expected"),
    [
        ([0.5, 1.0], 2.0, False, [0.0, 0.0]),
        ([0.5, NAN], 2.0, False, [1.0, 0.0]),  # one micro-batch's loss is enough
        ([-INF], 2.0, False, [1.0, 0.0]),
        ([0.5], NAN, False, [0.0, 1.0]),
        ([0.5], INF, False, [0.0, 1.0]),
        ([0.5], None, False, [0.0, 0.0]),  # ZeRO-1/2/3: no global norm before the step ...
        ([0.5], None, True, [0.0, 1.0]),  # ... the rank's gradient partition is checked instead
        ([], None, False, [0.0, 0.0]),
    ],
)
def test_local_flags(losses: list[float], grad_norm: float | None, grads_nonfinite: bool,
                     expected: list[float]) -> None:
    assert local_flags(losses, grad_norm, grads_nonfinite) == expected


def test_guard_metrics_skip_on_either_flag() -> None:
    assert guard_metrics([0.0, 0.0]) == {"guard/skipped": 0.0, "guard/nonfinite_loss": 0.0,
                                         "guard/nonfinite_grad_norm": 0.0}
    assert guard_metrics([1.0, 0.0])["guard/skipped"] == 1.0
    assert guard_metrics([0.0, 1.0])["guard/skipped"] == 1.0
    assert guard_metrics([1.0, 1.0]) == {"guard/skipped": 1.0, "guard/nonfinite_loss": 1.0,
                                         "guard/nonfinite_grad_norm": 1.0}


def test_ranks_agree_after_the_max_reduce() -> None:
    """Rank 1 alone sees a NaN loss: after the all-reduce (max) every rank skips, rank 0 included."""
    per_rank = [local_flags([0.3], None), local_flags([NAN], None)]
    reduced = [max(col) for col in zip(*per_rank, strict=True)]  # what dist.all_reduce(op=MAX) returns
    decisions = [guard_metrics(reduced) for _ in per_rank]
    assert all(d["guard/skipped"] == 1.0 and d["guard/nonfinite_loss"] == 1.0 for d in decisions)


def test_is_bad_step_on_averaged_steps() -> None:
    """grpo averages guard/skipped over a step's optimizer steps: one skipped update of four is a bad step."""
    assert is_bad_step({"guard/skipped": 0.25})
    assert not is_bad_step({"guard/skipped": 0.0})
    assert not is_bad_step({})


def _batch() -> TrainBatch:
    buf = torch.arange(1000, dtype=torch.float32)
    return TrainBatch(input_ids=[torch.tensor([1, 2, 3]), torch.tensor([4, 5])],
                      loss_mask=[torch.ones(3), torch.ones(2)],
                      advantages=[torch.tensor([0.0, NAN, 1.0]), torch.zeros(2)],
                      ref_logprobs=[buf[:3], buf[3:5]])  # views into a larger buffer


def _ok() -> dict[str, float]:
    return guard_metrics([0.0, 0.0])


def _bad() -> dict[str, float]:
    return {**guard_metrics([1.0, 1.0]), "loss/total": NAN}


def test_bad_steps_in_a_row_end_the_run(tmp_path: Path) -> None:
    guard = BadStepGuard(3, tmp_path, "grpo")
    assert guard.check(1, _bad(), _batch())
    assert guard.check(2, _bad(), _batch())
    with pytest.raises(NonFiniteTrainingError,
                       match=r"3 steps in a row \(up to step 3\)[\s\S]*runtime\.max_bad_steps"):
        guard.check(3, _bad(), _batch())
    saved = sorted(p.name for p in (tmp_path / "bad_batches").iterdir())
    assert saved == ["step-1.pt", "step-2.pt", "step-3.pt"]


def test_a_good_step_resets_the_count(tmp_path: Path) -> None:
    guard = BadStepGuard(2, tmp_path)
    for step, m in enumerate([_bad(), _ok(), _bad(), {"time/step": 1.0}, _ok(), _bad()], start=1):
        guard.check(step, m, _batch())  # never two bad steps in a row: no error
    assert guard.in_a_row == 1
    with pytest.raises(NonFiniteTrainingError):
        guard.check(7, _bad(), _batch())


def test_a_step_without_an_update_keeps_the_count(tmp_path: Path) -> None:
    """A step that trained nothing (no guard/* metrics) is neither good nor bad."""
    guard = BadStepGuard(2, tmp_path)
    guard.check(1, _bad(), _batch())
    assert not guard.check(2, {"reward/mean": 0.0})
    with pytest.raises(NonFiniteTrainingError):
        guard.check(3, _bad(), _batch())


def test_saved_batch_loads_back_small(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    guard = BadStepGuard(5, tmp_path, "sft")
    guard.check(7, _bad(), _batch())
    out = capsys.readouterr().out
    assert "[sft] step 7: update skipped, non-finite loss and grad norm (1 of runtime.max_bad_steps=5" in out
    path = tmp_path / "bad_batches" / "step-7.pt"
    assert str(path) in out
    saved = torch.load(path)
    assert saved["step"] == 7
    # fields that are None are left out
    assert set(saved["batch"]) == {"input_ids", "loss_mask", "advantages", "ref_logprobs"}
    assert torch.equal(saved["batch"]["input_ids"][1], torch.tensor([4, 5]))
    assert math.isnan(float(saved["batch"]["advantages"][0][1]))
    assert saved["metrics"]["guard/skipped"] == 1.0
    # the rows were views into a 1000-float buffer: cloned, each saves only its own elements
    assert saved["batch"]["ref_logprobs"][0].untyped_storage().nbytes() == 3 * 4


def test_no_run_dir_saves_nothing(tmp_path: Path) -> None:
    guard = BadStepGuard(2)
    assert guard.check(1, _bad(), _batch())
    assert not list(tmp_path.iterdir())


def test_runtime_config() -> None:
    assert RuntimeConfig().max_bad_steps == 3
    assert GRPOConfig().runtime.max_bad_steps == 3
    assert build_config(SFTConfig, overrides=[("runtime.max_bad_steps", 1)]).runtime.max_bad_steps == 1
    with pytest.raises(Exception, match="max_bad_steps"):
        build_config(GRPOConfig, overrides=[("runtime.max_bad_steps", 0)])


# ---- the rank side with a stand-in engine (ZeRO-0: a torch optimizer), no Ray, no DeepSpeed ----------------


class _LM(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.Embedding(8, 8)

    def forward(self, input_ids: torch.Tensor, attention_mask: Any = None, use_cache: bool = False,
                position_ids: Any = None) -> Any:  # position_ids: what a packed forward (policy.packing) sends
        return SimpleNamespace(logits=self.emb(input_ids))


class _Engine(torch.nn.Module):
    """The slice of DeepSpeedEngine that ``PolicyWorker.train_step`` uses: AdamW + a warm-up LambdaLR."""

    def __init__(self) -> None:
        from actors.policy import lr_lambda

        super().__init__()
        self.module = _LM()
        self.device = torch.device("cpu")
        self.optimizer = torch.optim.AdamW(self.module.parameters(), lr=0.1)
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda("linear", 2, 4))
        self.steps = 0

    def forward(self, **kw: Any) -> Any:
        return self.module(**kw)

    def set_gradient_accumulation_boundary(self, flag: bool) -> None:
        pass

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> None:
        self.optimizer.step()
        self.zero_grad()
        self.lr_scheduler.step()
        self.steps += 1

    def zero_grad(self) -> None:  # type: ignore[override]
        for p in self.module.parameters():
            p.grad = None

    def was_step_applied(self) -> bool:
        return True

    def get_global_grad_norm(self) -> float | None:
        return None


def test_worker_skips_a_nonfinite_step_without_touching_weights_optimizer_or_schedule() -> None:
    from actors.policy import PolicyWorker

    w = PolicyWorker(policy={"micro_batch_size": 2, "zero_stage": 0})
    w.engine = engine = _Engine()
    w.scheduler, w.micro = engine.lr_scheduler, 2
    ids = [torch.tensor([1, 2, 3, 4]), torch.tensor([5, 6, 7]), torch.tensor([2, 4, 6])]
    mask = [torch.tensor([0.0, 1.0, 1.0, 1.0]), torch.tensor([0.0, 1.0, 1.0]), torch.tensor([0.0, 1.0, 1.0])]
    good = TrainBatch(input_ids=ids, loss_mask=mask, advantages=[m * 0.5 for m in mask])
    bad = TrainBatch(input_ids=ids, loss_mask=mask, advantages=[m * 0.5 for m in mask])
    assert bad.advantages is not None
    bad.advantages[2] = torch.tensor([0.0, 1.0, float("nan")])  # one token of the second micro-batch
    start = engine.module.emb.weight.detach().clone()
    out = w.train_step(bad, Objective().with_counts(bad))
    assert out["guard/skipped"] == out["guard/nonfinite_loss"] == out["guard/nonfinite_grad_norm"] == 1.0
    assert math.isnan(out["grad_norm"])
    assert torch.equal(engine.module.emb.weight, start)
    assert engine.module.emb.weight.grad is None  # the NaN gradient is gone, not left to accumulate
    assert (engine.steps, w.steps_done, engine.lr_scheduler.last_epoch) == (0, 0, 0)
    assert engine.optimizer.state == {}  # Adam never saw the step

    out = w.train_step(good, Objective().with_counts(good))
    assert out["guard/skipped"] == 0.0 and math.isfinite(out["grad_norm"])
    assert out["lr"] == pytest.approx(0.05)  # still warm-up step 1 of 2
    assert not torch.equal(engine.module.emb.weight, start)
    assert (engine.steps, w.steps_done) == (1, 1)
