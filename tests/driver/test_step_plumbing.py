"""The training step's plumbing, pinned by value: global counts, metric reduction (micro-batches, ranks,
optimizer steps), the LR schedule, the KL term, the phase timer and micro-batched log-probs.

Expected numbers are derived by hand in the comments; no actors, no DeepSpeed (a fake engine stands in).
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from raylhf.core.batch import Objective, TrainBatch
from raylhf.core.objective import objective_loss

LN2 = math.log(2.0)
LN4 = math.log(4.0)


# ---- defect 1: the global sequence count -------------------------------------------------------------


def _three_rows() -> TrainBatch:
    # row 0: 2 trained tokens, advantage 2; row 1: 1 trained token, advantage 4; row 2: fully masked
    # (e.g. a truncated response under grpo.overlong=mask)
    return TrainBatch(
        input_ids=[torch.tensor([1, 2, 3]), torch.tensor([1, 2, 3]), torch.tensor([1, 2, 3])],
        loss_mask=[torch.tensor([0.0, 1.0, 1.0]), torch.tensor([0.0, 0.0, 1.0]), torch.tensor([0.0, 0.0, 0.0])],
        advantages=[torch.tensor([0.0, 2.0, 2.0]), torch.tensor([0.0, 0.0, 4.0]), torch.tensor([0.0, 9.0, 9.0])],
    )


def test_with_counts_counts_only_sequences_with_trained_tokens() -> None:
    b = _three_rows()
    obj = Objective(loss_agg="seq-mean-token-mean").with_counts(b)
    assert obj.global_tokens == 3.0  # 2 + 1 + 0
    assert obj.global_seqs == 2.0  # the fully masked row is no sequence of the loss


def test_seq_mean_loss_ignores_a_fully_masked_sequence() -> None:
    b = _three_rows()
    logp = torch.zeros(3, 3)  # ratio 1 everywhere: per-token loss = -advantage
    mask = torch.stack(b.loss_mask)
    adv = torch.stack(b.advantages or [])
    obj = Objective(loss_agg="seq-mean-token-mean").with_counts(b)
    loss, m = objective_loss(logp, None, mask, obj, advantages=adv)
    # sequence means: row 0 -(2+2)/2 = -2, row 1 -4/1 = -4; over 2 sequences: (-2 - 4) / 2 = -3
    assert float(loss) == pytest.approx(-3.0)
    assert m["loss/pg"] == pytest.approx(-3.0)
    # the same as the loss of the batch without the masked row, and as aggregate's local counts
    kept = b.select([0, 1])
    loss_kept, _ = objective_loss(logp[:2], None, mask[:2], Objective(loss_agg="seq-mean-token-mean").with_counts(kept),
                                  advantages=adv[:2])
    local, _ = objective_loss(logp, None, mask, Objective(loss_agg="seq-mean-token-mean"), advantages=adv)
    assert float(loss_kept) == pytest.approx(-3.0) and float(local) == pytest.approx(-3.0)


def test_global_counts_make_rank_losses_add_up_with_a_masked_row() -> None:
    # two "ranks" of 2 rows each; rank 1 holds the fully masked row. Summed rank losses = whole-batch loss.
    b = _three_rows()
    b = b.select([0, 2, 1, 0])  # rows: 0, masked, 1, 0 -> sequences -2, (none), -4, -2: mean -8/3
    obj = Objective(loss_agg="seq-mean-token-mean").with_counts(b)
    total = 0.0
    for r in range(2):
        s = b.shard(r, 2)
        loss, _ = objective_loss(torch.zeros(2, 3), None, torch.stack(s.loss_mask), obj,
                                 advantages=torch.stack(s.advantages or []))
        total += float(loss)
    assert total == pytest.approx(-8.0 / 3.0)


# ---- defect 3: maxima / minima / sums / means, at every level --------------------------------------------


def test_reduce_metrics_rules() -> None:
    from raylhf.core.metrics import reduce_metrics

    rows = [{"pg/ratio_max": 2.0, "pg/ratio_min": 0.9, "pg/clip_frac": 0.5, "loss/pg": -0.3, "entropy": 0.4},
            {"pg/ratio_max": 1.5, "pg/ratio_min": 0.5, "pg/clip_frac": 0.0, "loss/pg": -0.2, "entropy": 0.6},
            {"pg/ratio_max": 0.0, "pg/ratio_min": 0.0, "pg/clip_frac": 0.0, "loss/pg": 0.0, "entropy": 0.0}]
    out = reduce_metrics(rows, weights=[4.0, 6.0, 0.0], sum_prefixes=("loss/", "entropy"))
    assert out["pg/ratio_max"] == 2.0  # max over rows that saw tokens
    assert out["pg/ratio_min"] == 0.5  # min; the empty row's placeholder 0.0 is ignored (weight 0)
    assert out["pg/clip_frac"] == pytest.approx(0.2)  # (0.5*4 + 0*6) / 10
    assert out["loss/pg"] == pytest.approx(-0.5)  # -0.3 - 0.2 + 0
    assert out["entropy"] == pytest.approx(1.0)
    # unweighted: plain mean; no sum prefixes: losses average; keys missing from a row average over the others
    plain = reduce_metrics([{"loss/pg": 1.0, "x_max": 1.0, "a": 1.0}, {"loss/pg": 3.0, "x_max": 5.0}])
    assert plain == {"loss/pg": 2.0, "x_max": 5.0, "a": 1.0}
    assert reduce_metrics([]) == {}
    # all rows empty (weight 0): fall back to the plain rule rather than dividing by zero
    assert reduce_metrics([{"m": 0.0, "r_min": 0.0}], weights=[0.0]) == {"m": 0.0, "r_min": 0.0}


def test_reduce_ranks_sums_losses_maxes_maxima_and_token_weights_means() -> None:
    from raylhf.driver.phases import reduce_ranks

    r0 = {"loss/pg": -0.3, "entropy": 0.4, "pg/ratio_max": 2.0, "pg/ratio_min": 0.5, "pg/clip_frac": 0.5,
          "train_tokens": 4.0, "grad_norm": 1.5, "lr": 1e-3}
    r1 = {"loss/pg": -0.2, "entropy": 0.6, "pg/ratio_max": 3.0, "pg/ratio_min": 0.8, "pg/clip_frac": 0.0,
          "train_tokens": 6.0, "grad_norm": 1.5, "lr": 1e-3}
    out = reduce_ranks([r0, r1])
    assert out["loss/pg"] == pytest.approx(-0.5)  # globally normalized pieces add up
    assert out["entropy"] == pytest.approx(1.0)
    assert out["train_tokens"] == 10.0
    assert out["pg/ratio_max"] == 3.0  # was (2 + 3) / 2 = 2.5
    assert out["pg/ratio_min"] == 0.5  # was (0.5 + 0.8) / 2 = 0.65
    assert out["pg/clip_frac"] == pytest.approx(0.2)  # token-weighted: (0.5*4 + 0*6) / 10
    assert out["grad_norm"] == pytest.approx(1.5) and out["lr"] == pytest.approx(1e-3)


class _FakeGroup:
    """Stands in for the policy ActorGroup: records the objective, returns canned per-rank metrics."""

    def __init__(self, replies: list[list[dict[str, float]]]) -> None:
        self.replies = iter(replies)
        self.objectives: list[Objective] = []

    def call_split(self, method: str, batch: TrainBatch, obj: Objective) -> list[dict[str, float]]:
        assert method == "train_step"
        self.objectives.append(obj)
        return next(self.replies)


def test_train_reduces_over_optimizer_steps_with_max_min_and_mean() -> None:
    from raylhf.driver.phases import train

    b = _three_rows().select([0, 2, 1, 0])  # 4 rows; train_size 2 -> 2 optimizer steps of 2 rows, 1 per rank
    step1 = [{"loss/pg": -0.2, "pg/ratio_max": 1.5, "pg/ratio_min": 0.9, "pg/clip_frac": 0.5, "train_tokens": 2.0},
             {"loss/pg": 0.0, "pg/ratio_max": 0.0, "pg/ratio_min": 0.0, "pg/clip_frac": 0.0, "train_tokens": 0.0}]
    step2 = [{"loss/pg": -0.4, "pg/ratio_max": 1.1, "pg/ratio_min": 0.7, "pg/clip_frac": 0.0, "train_tokens": 1.0},
             {"loss/pg": -0.6, "pg/ratio_max": 3.0, "pg/ratio_min": 0.8, "pg/clip_frac": 1.0, "train_tokens": 2.0}]
    group = _FakeGroup([step1, step2])
    out = train(group, b, Objective(loss_agg="seq-mean-token-mean"), train_size=2, updates=1, world=2)  # type: ignore[arg-type]
    # global counts of each step: step 1 = rows (0, masked) -> 2 tokens, 1 sequence; step 2 = rows (1, 0) -> 3, 2
    assert [(o.global_tokens, o.global_seqs) for o in group.objectives] == [(2.0, 1.0), (3.0, 2.0)]
    # step losses: -0.2 + 0 = -0.2 and -0.4 - 0.6 = -1.0 (sum over ranks); mean over steps: -0.6
    assert out["loss/pg"] == pytest.approx(-0.6)
    # extremes over both steps and all ranks; rank 1 of step 1 trained no token, so its 0.0 placeholders are ignored
    assert out["pg/ratio_max"] == 3.0  # was the mean of rank means: ((1.5 + 0)/2 + (1.1 + 3)/2) / 2 = 1.4
    assert out["pg/ratio_min"] == 0.7  # was ((0.9 + 0)/2 + (0.7 + 0.8)/2) / 2 = 0.6
    # token-weighted over ranks (step 1: 0.5; step 2: (0*1 + 1*2)/3 = 2/3), then a mean over steps: 7/12
    assert out["pg/clip_frac"] == pytest.approx(7.0 / 12.0)
    assert out["train_tokens"] == pytest.approx(2.5)  # tokens per optimizer step: (2 + 3) / 2


# ---- the policy worker's accumulation over micro-batches (fake engine, no DeepSpeed) ------------------


class _UniformLM(torch.nn.Module):
    """All-zero logits over a vocabulary of 4: every token has log-prob -ln 4 and the entropy is ln 4."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(4, 4)
        torch.nn.init.zeros_(self.emb.weight)

    def forward(self, input_ids: torch.Tensor, attention_mask: Any = None, use_cache: bool = False,
                position_ids: Any = None) -> Any:  # position_ids: what a packed forward (policy.packing) sends
        return SimpleNamespace(logits=self.emb(input_ids))


class _FakeEngine(torch.nn.Module):
    """The slice of DeepSpeedEngine that ``PolicyWorker.train_step`` touches; steps an SGD + LambdaLR pair."""

    def __init__(self, lr: float, schedule: Any) -> None:
        super().__init__()
        self.module = _UniformLM()
        self.device = torch.device("cpu")
        self.opt = torch.optim.SGD(self.module.parameters(), lr=lr)
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(self.opt, schedule)
        self.boundaries: list[bool] = []

    def forward(self, **kw: Any) -> Any:
        return self.module(**kw)

    def set_gradient_accumulation_boundary(self, flag: bool) -> None:
        self.boundaries.append(flag)

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> None:  # DeepSpeed steps the LR scheduler inside engine.step()
        self.opt.step()
        self.opt.zero_grad()
        self.lr_scheduler.step()

    def get_global_grad_norm(self) -> float:
        return float("nan")

    def was_step_applied(self) -> bool:  # DeepSpeed's public API: False when its own overflow check skipped
        return True


def _worker(lr: float = 1e-3, warmup: int = 0) -> Any:
    from actors.policy import PolicyWorker, lr_lambda

    w = PolicyWorker(policy={"micro_batch_size": 2, "zero_stage": 0})
    w.engine = _FakeEngine(lr, lr_lambda("linear", warmup, 4))
    w.scheduler = w.engine.lr_scheduler
    w.micro = 2
    return w


def _ratio_batch() -> TrainBatch:
    """Six sequences, given out of length order; micro-batches of 2 sorted by length:
    (A, B) length 3, 4 trained tokens at ratio 2; (C, D) length 4, 6 trained tokens at ratio 0.5;
    (E, F) length 5, fully masked."""
    lp = -LN4

    def seq(n: int, trained: bool, ratio: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        ids = torch.arange(n) % 4
        mask = torch.tensor([0.0] + [1.0 if trained else 0.0] * (n - 1))
        old = torch.tensor([0.0] + [lp - math.log(ratio)] * (n - 1))  # ratio = exp(logp - old)
        return ids, mask, mask.clone(), old  # advantage 1 on trained tokens

    rows = [seq(4, True, 0.5), seq(5, False, 1.0), seq(3, True, 2.0), seq(4, True, 0.5), seq(5, False, 1.0),
            seq(3, True, 2.0)]  # C, E, A, D, F, B
    return TrainBatch(input_ids=[r[0] for r in rows], loss_mask=[r[1] for r in rows],
                      advantages=[r[2] for r in rows], old_logprobs=[r[3] for r in rows])


def test_policy_train_step_reduces_micro_batch_metrics() -> None:
    w = _worker()
    b = _ratio_batch()
    out = w.train_step(b, Objective().with_counts(b))  # token-mean over 10 global tokens
    assert w.engine.boundaries == [False, False, True]  # three micro-batches, one optimizer step
    assert out["train_tokens"] == 10.0
    # ratio 2 tokens: max(-2, -clip(2) = -1.2) = -1.2 each; ratio 0.5 tokens: max(-0.5, -0.8) = -0.5 each
    # loss = (4 * -1.2 + 6 * -0.5) / 10 = -0.78, summed over micro-batches (each already divided by 10)
    assert out["loss/pg"] == pytest.approx(-0.78)
    assert out["loss/total"] == pytest.approx(-0.78)
    assert out["entropy"] == pytest.approx(LN4)  # uniform: ln 4 per token, (4 + 6) * ln 4 / 10
    assert out["pg/ratio_max"] == pytest.approx(2.0)  # was token-weighted (2*4 + 0.5*6 + 0*0) / 10 = 1.1
    assert out["pg/ratio_min"] == pytest.approx(0.5)  # was 1.1 too; the empty micro-batch's 0.0 is ignored
    assert out["pg/ratio_mean"] == pytest.approx(1.1)  # a mean stays token-weighted
    assert out["pg/clip_frac"] == pytest.approx(0.4)  # the 4 ratio-2 tokens are clipped high: 4 / 10
    # k3 of the token ratios: rho - 1 - ln rho = 1 - ln 2 at rho 2, ln 2 - 0.5 at rho 0.5: (1 + 2 ln 2) / 10
    assert out["pg/approx_kl"] == pytest.approx((4 * (1 - LN2) + 6 * (LN2 - 0.5)) / 10)


def test_policy_train_step_reports_the_lr_it_stepped_with() -> None:
    # warm-up of 2 steps: step 0 trains at lr * 1/2, step 1 at lr * 2/2 (lr_lambda(step) = (step + 1) / warmup)
    w = _worker(lr=1e-3, warmup=2)
    b = _ratio_batch()
    lrs = [w.train_step(b, Objective().with_counts(b))["lr"] for _ in range(3)]
    # then linear decay over total 4: step 2 has progress (2 - 2) / (4 - 2) = 0 -> 1.0
    assert lrs == pytest.approx([5e-4, 1e-3, 1e-3])


# ---- the LR schedule --------------------------------------------------------------------------------


def test_lr_lambda_values() -> None:
    from actors.policy import lr_lambda

    # warm-up 2: (step + 1) / 2 -> 0.5, 1.0; then, over total 6, progress p = (step - 2) / 4 = 0, .25, .5, .75
    assert [lr_lambda("constant", 2, 6)(s) for s in range(6)] == [0.5, 1.0, 1.0, 1.0, 1.0, 1.0]
    assert [lr_lambda("linear", 2, 6)(s) for s in range(6)] == pytest.approx([0.5, 1.0, 1.0, 0.75, 0.5, 0.25])
    # cosine: 0.5 * (1 + cos(pi p)): p=.25 -> 0.5 * (1 + 0.70711) = 0.85355, p=.5 -> 0.5, p=.75 -> 0.14645
    assert [lr_lambda("cosine", 2, 6)(s) for s in range(6)] == pytest.approx(
        [0.5, 1.0, 1.0, 0.8535534, 0.5, 0.1464466])
    # no warm-up: linear from 1 down, clamped at 0 past the end
    assert [lr_lambda("linear", 0, 4)(s) for s in (0, 2, 4, 9)] == pytest.approx([1.0, 0.5, 0.0, 0.0])
    # total <= warmup: constant after warm-up
    assert lr_lambda("cosine", 4, 4)(4) == 1.0


# ---- the KL term enters the loss ----------------------------------------------------------------------


def test_kl_term_enters_the_loss_with_its_coefficient() -> None:
    mask = torch.tensor([[0.0, 1.0, 1.0]])
    adv = torch.tensor([[0.0, 1.0, 1.0]])
    ref = torch.tensor([[0.0, -1.0, -1.0]])
    logp = torch.tensor([[0.0, -1.0 - LN2, -1.0]], requires_grad=True)  # token 1: d = ref - logp = ln 2
    obj = Objective(kl_coef=0.1, global_tokens=2.0, global_seqs=1.0)
    loss, m = objective_loss(logp, None, mask, obj, advantages=adv, ref_logp=ref)
    # k3 = e^d - d - 1 = 2 - ln 2 - 1 = 1 - ln 2 at token 1, 0 at token 2; token-mean: (1 - ln 2) / 2
    kl = (1 - LN2) / 2
    assert m["loss/kl"] == pytest.approx(kl)
    assert m["loss/pg"] == pytest.approx(-1.0)  # ratio 1 (old = logp): -(1 + 1) / 2
    assert loss.item() == pytest.approx(-1.0 + 0.1 * kl)
    no_kl, _ = objective_loss(logp, None, mask, Objective(global_tokens=2.0, global_seqs=1.0), advantages=adv,
                              ref_logp=ref)
    assert loss.item() - no_kl.item() == pytest.approx(0.1 * kl)
    loss.backward()
    # d k3 / d logp = 1 - e^d = -1 at token 1, 0 at token 2; pg gives -A / 2 = -0.5 per token
    assert logp.grad is not None
    assert logp.grad[0].tolist() == pytest.approx([0.0, -0.5 + 0.1 * -1.0 / 2, -0.5])
    same, m0 = objective_loss(ref.clone(), None, mask, obj, advantages=adv, ref_logp=ref)
    assert m0["loss/kl"] == 0.0 and same.item() == pytest.approx(-1.0)


# ---- the phase timer -------------------------------------------------------------------------------------


def test_phase_timer_adds_repeated_phases(monkeypatch: pytest.MonkeyPatch) -> None:
    from raylhf.driver import phases

    clock = iter([100.0, 101.0, 103.0, 110.0, 114.5, 120.0, 121.0, 130.0])
    monkeypatch.setattr(phases.time, "perf_counter", lambda: next(clock))
    timer = phases.PhaseTimer()  # start 100
    with timer("generate"):  # 101 -> 103: 2
        pass
    with timer("reward"):  # 110 -> 114.5: 4.5
        pass
    with timer("generate"):  # 120 -> 121: 1, added to 2
        pass
    assert timer.metrics() == {"time/generate": 3.0, "time/reward": 4.5, "time/step": 30.0}  # 130 - 100


# ---- micro-batched log-probs come back in input order -----------------------------------------------------


def test_batched_logprobs_keep_input_order(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    from actors.common import batched_logprobs, forward_logprobs

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    lengths = [7, 3, 9, 4, 3, 6]  # not sorted; micro-batches of 2 reorder them to (3, 3) (4, 6) (7, 9)
    seqs = [torch.randint(1, vocab, (n,), generator=g) for n in lengths]
    got = batched_logprobs(model, seqs, micro_batch_size=2)
    assert [len(x) for x in got] == lengths
    with torch.no_grad():
        for x, lp in zip(seqs, got, strict=True):
            want = forward_logprobs(model, [x])[0][0]
            assert lp.tolist() == pytest.approx(want.tolist(), abs=1e-5)
    # the two length-3 sequences differ, so a swap inside a micro-batch would be caught as well
    assert not torch.allclose(got[1], got[4])
