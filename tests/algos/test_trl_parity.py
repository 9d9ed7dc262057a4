"""Numerical parity with TRL (installed, trl 1.x) on random inputs.

Where TRL exposes the computation as a function (``GKDTrainer.generalized_jsd_loss``, ``CPOTrainer.cpo_loss``,
``ORPOTrainer.odds_ratio_loss``) it is called directly, with a ``SimpleNamespace`` standing in for ``self``.
DPO, KTO and the reward-model loss only exist inside ``_compute_loss`` / ``compute_loss``; those methods are
called on a stand-in ``self`` with a stand-in *model* that returns the given per-token log-probs (or
reward logits) -- the loss code that runs is TRL's own. GRPO / RLOO advantages are inline in TRL's
``_generate_and_score_completions`` (not callable without a model and generation); the formula is
reproduced below from TRL 1.x and compared, using TRL's own ``nanstd`` helper.

If TRL's internals change so that a stand-in no longer fits, the comparison is skipped (with the reason)
rather than failing the suite; a numerical mismatch always fails.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from raylhf.algos import (
    bradley_terry_loss,
    cpo_loss,
    dpo_loss,
    generalized_jsd,
    grpo_advantages,
    kto_loss,
    kto_reference_point,
    orpo_loss,
    rloo_advantages,
    simpo_loss,
)

trl = pytest.importorskip("trl")

CPU = torch.device("cpu")


class _Accelerator:
    """Single-process stand-in for ``accelerate.Accelerator``: gathers are identities."""

    device = CPU

    @staticmethod
    def gather(x: torch.Tensor) -> torch.Tensor:
        return x

    @staticmethod
    def gather_for_metrics(x: torch.Tensor) -> torch.Tensor:
        return x


def _metrics_store() -> defaultdict:
    return defaultdict(lambda: defaultdict(list))


def _call_trl(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except (AttributeError, KeyError, TypeError, ImportError) as exc:  # stand-in no longer matches TRL
        pytest.skip(f"TRL internals changed, stand-in does not fit: {type(exc).__name__}: {exc}")


def _fake_lm(per_token_logps: torch.Tensor) -> Callable[..., SimpleNamespace]:
    """A 'model' whose fused-LM-head output carries fixed per-token log-probs (and zero side outputs)."""

    def model(**_: Any) -> SimpleNamespace:
        z = torch.zeros_like(per_token_logps)
        return SimpleNamespace(log_probs=per_token_logps, entropy=z, mean_logits=z, is_top1=z.bool())

    return model


def _random_completions(n: int, t: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs ``[n, t]`` (0 outside the completion) and completion masks ``[n, t + 1]``
    (column 0 is a prompt token, so the shifted and unshifted masks have the same row sums)."""
    lengths = torch.randint(1, t + 1, (n,), generator=gen)
    shift_mask = torch.arange(t)[None, :] < lengths[:, None]
    logps = -torch.rand(n, t, generator=gen, dtype=torch.float64) * 2.0 * shift_mask
    completion_mask = torch.cat([torch.zeros(n, 1, dtype=torch.long), shift_mask.long()], dim=1)
    return logps, completion_mask


# ------------------------------------------------------------------------------------------------ DPO


@pytest.mark.parametrize("loss_type", ["sigmoid", "hinge", "ipo"])
def test_dpo_matches_trl(loss_type: str) -> None:
    from trl import DPOTrainer

    gen = torch.Generator().manual_seed(1)
    b, t, beta = 4, 5, 0.3
    logps, completion_mask = _random_completions(2 * b, t, gen)  # rows: [chosen..., rejected...]
    ref = -torch.rand(2 * b, generator=gen, dtype=torch.float64) * 6.0
    stand_in = SimpleNamespace(
        model=SimpleNamespace(training=True),
        accelerator=_Accelerator(),
        aux_loss_enabled=False,
        ld_alpha=None,
        precompute_ref_logps=True,
        f_divergence_type="reverse_kl",
        loss_types=[loss_type],
        loss_weights=[1.0],
        beta=beta,
        label_smoothing=0.0,
        use_weighting=False,
        _metrics=_metrics_store(),
        _total_train_tokens=0,
        _tp_size=1,
        args=SimpleNamespace(),
    )
    inputs = {
        "input_ids": torch.zeros(2 * b, t + 1, dtype=torch.long),
        "attention_mask": torch.ones(2 * b, t + 1, dtype=torch.long),
        "completion_mask": completion_mask,
        "ref_chosen_logps": ref[:b],
        "ref_rejected_logps": ref[b:],
    }
    trl_loss = _call_trl(lambda: DPOTrainer._compute_loss(stand_in, _fake_lm(logps), inputs, False))

    seq = logps.sum(dim=1)
    if loss_type == "ipo":  # TRL's IPO works on per-token averaged log-ratios
        n = completion_mask.sum(dim=1).to(seq.dtype)
        seq, ref = seq / n, ref / n
    losses, metrics = dpo_loss(seq[:b], seq[b:], ref[:b], ref[b:], beta=beta, loss_type=loss_type)
    torch.testing.assert_close(losses.mean(), trl_loss)
    if loss_type != "ipo":
        trl_metrics = stand_in._metrics["train"]
        for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
            assert metrics[key] == pytest.approx(trl_metrics[key][-1], abs=1e-6), key


@pytest.mark.parametrize("loss_type", ["sigmoid", "simpo", "hinge", "ipo"])
def test_cpo_family_matches_trl_cpo_loss(loss_type: str) -> None:
    """CPO (+ cDPO smoothing) and SimPO vs ``CPOTrainer.cpo_loss``; cDPO also via the margin identity."""
    from trl.experimental.cpo import CPOTrainer

    gen = torch.Generator().manual_seed(2)
    pc, pr = -torch.rand(2, 6, generator=gen, dtype=torch.float64) * 3.0
    beta, eps, gamma = 0.7, 0.15, 0.4
    smoothing = eps if loss_type in ("sigmoid", "simpo") else 0.0
    ns = SimpleNamespace(
        alpha=0.0,
        beta=beta,
        loss_type=loss_type,
        label_smoothing=smoothing,
        simpo_gamma=gamma,
        accelerator=_Accelerator(),
    )
    trl_losses, trl_c, trl_r = _call_trl(lambda: CPOTrainer.cpo_loss(ns, pc, pr))
    if loss_type == "simpo":  # TRL's simpo: -log sigmoid(beta * (c - r) - gamma), on averaged log-probs
        ours, m = simpo_loss(pc, pr, beta=beta, gamma=gamma, label_smoothing=smoothing)
    elif loss_type == "sigmoid":
        ours, m = cpo_loss(pc, pr, beta=beta, label_smoothing=smoothing)
        # conservative DPO: the same smoothed logistic on the reference-adjusted margin
        ref_c, ref_r = -torch.rand(2, 6, generator=gen, dtype=torch.float64)
        trl_cdpo, _, _ = CPOTrainer.cpo_loss(ns, pc - ref_c, pr - ref_r)
        cdpo, _ = dpo_loss(pc, pr, ref_c, ref_r, beta=beta, label_smoothing=smoothing)
        torch.testing.assert_close(cdpo, trl_cdpo)
    else:  # hinge / ipo without a reference == DPO with a zero reference
        ours, m = dpo_loss(pc, pr, torch.zeros_like(pc), torch.zeros_like(pr), beta=beta, loss_type=loss_type)
    torch.testing.assert_close(ours, trl_losses)
    if loss_type != "hinge" and loss_type != "ipo":
        assert m["rewards/chosen"] == pytest.approx(trl_c.mean().item())
        assert m["rewards/rejected"] == pytest.approx(trl_r.mean().item())


def test_orpo_matches_trl_odds_ratio_loss() -> None:
    from trl.experimental.orpo import ORPOTrainer

    gen = torch.Generator().manual_seed(3)
    pc, pr = -torch.rand(2, 6, generator=gen, dtype=torch.float64) * 2.0 - 0.01  # averaged log-probs < 0
    ns = SimpleNamespace(beta=0.25, accelerator=_Accelerator())
    trl_terms, trl_c, _, trl_ratio, trl_log_odds = _call_trl(lambda: ORPOTrainer.odds_ratio_loss(ns, pc, pr))
    nll = torch.rand(6, generator=gen, dtype=torch.float64)
    ours, m = orpo_loss(pc, pr, beta=0.25, chosen_nll=nll)
    # TRL returns beta * log sigmoid(log_odds), to be subtracted from the NLL (TRL computes in float32)
    torch.testing.assert_close(ours, nll - trl_terms.to(nll.dtype), rtol=1e-5, atol=1e-6)
    assert m["log_odds_ratio"] == pytest.approx(trl_ratio.item(), abs=1e-6)
    assert m["log_odds_chosen"] == pytest.approx(trl_log_odds.item(), abs=1e-6)
    assert m["rewards/chosen"] == pytest.approx(trl_c.mean().item(), abs=1e-6)


# ------------------------------------------------------------------------------------------------ KTO


def test_kto_matches_trl() -> None:
    from trl import KTOTrainer

    gen = torch.Generator().manual_seed(4)
    n, t = 6, 4
    logps, completion_mask = _random_completions(n, t, gen)
    ref = -torch.rand(n, generator=gen, dtype=torch.float64) * 4.0
    labels = torch.tensor([True, False, True, True, False, False])
    kl_policy = -torch.rand(n, generator=gen, dtype=torch.float64) * 4.0
    kl_ref = -torch.rand(n, generator=gen, dtype=torch.float64) * 4.0 - 0.5
    stand_in = SimpleNamespace(
        model=SimpleNamespace(training=True),
        accelerator=_Accelerator(),
        _compute_kl_logps=lambda model, batch: kl_policy,
        aux_loss_enabled=False,
        precompute_ref_logps=True,
        calculate_KL=True,
        loss_type="kto",
        beta=0.2,
        desirable_weight=1.0,
        undesirable_weight=1.5,
        _metrics=_metrics_store(),
        _total_train_tokens=0,
        _tp_size=1,
    )
    inputs = {
        "input_ids": torch.zeros(n, t + 1, dtype=torch.long),
        "attention_mask": torch.ones(n, t + 1, dtype=torch.long),
        "completion_mask": completion_mask,
        "label": labels,
        "ref_logps": ref,
        "ref_KL_logps": kl_ref,
    }
    trl_loss = _call_trl(lambda: KTOTrainer._compute_loss(stand_in, _fake_lm(logps), inputs, False))
    z0 = kto_reference_point(kl_policy, kl_ref)
    losses, m = kto_loss(
        logps.sum(1), ref, labels, z0, beta=0.2, desirable_weight=1.0, undesirable_weight=1.5
    )
    torch.testing.assert_close(losses.mean(), trl_loss)
    trl_metrics = stand_in._metrics["train"]
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "kl"):
        assert m[key] == pytest.approx(trl_metrics[key][-1], abs=1e-6), key


# ------------------------------------------------------------------------------------------------ reward model


@pytest.mark.parametrize("with_margin", [False, True])
def test_bradley_terry_matches_trl_reward_trainer(with_margin: bool) -> None:
    from trl import RewardTrainer

    gen = torch.Generator().manual_seed(5)
    b = 5
    logits = torch.randn(2 * b, 1, generator=gen, dtype=torch.float64)
    margin = torch.rand(b, generator=gen, dtype=torch.float64)
    stand_in = SimpleNamespace(
        model=SimpleNamespace(training=True),
        accelerator=_Accelerator(),
        args=SimpleNamespace(center_rewards_coefficient=0.01),
        _metrics=_metrics_store(),
        _total_train_tokens=0,
        _tp_size=1,
    )
    inputs: dict[str, Any] = {"attention_mask": torch.ones(2 * b, 3, dtype=torch.long)}
    if with_margin:
        inputs["margin"] = margin

    def model(**_: Any) -> SimpleNamespace:
        return SimpleNamespace(logits=logits)

    trl_loss = _call_trl(lambda: RewardTrainer.compute_loss(stand_in, model, inputs))
    rc, rr = logits.squeeze(-1).chunk(2)
    losses, m = bradley_terry_loss(rc, rr, margin=margin if with_margin else None, center_coef=0.01)
    torch.testing.assert_close(losses.mean(), trl_loss)
    assert m["rewards/accuracies"] == pytest.approx(stand_in._metrics["train"]["accuracy"][-1])
    assert m["rewards/margins"] == pytest.approx(stand_in._metrics["train"]["margin"][-1])


# ------------------------------------------------------------------------------------------------ GKD


@pytest.mark.parametrize(("beta", "temperature"), [(0.0, 1.0), (1.0, 1.0), (0.5, 1.0), (0.3, 0.7)])
def test_generalized_jsd_matches_trl_gkd(beta: float, temperature: float) -> None:
    from trl.experimental.gkd import GKDTrainer

    gen = torch.Generator().manual_seed(6)
    student = torch.randn(2, 4, 7, generator=gen, dtype=torch.float64)
    teacher = torch.randn(2, 4, 7, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 7, (2, 4), generator=gen)
    labels[0, 2:] = -100
    trl_loss = _call_trl(
        lambda: GKDTrainer.generalized_jsd_loss(
            student, teacher, labels=labels, beta=beta, temperature=temperature
        )
    )
    ours, _ = generalized_jsd(student, teacher, labels != -100, beta=beta, temperature=temperature)
    torch.testing.assert_close(ours, trl_loss)
    # the global-count normalizer matches TRL's num_items_in_batch
    trl_global = GKDTrainer.generalized_jsd_loss(
        student, teacher, labels=labels, beta=beta, temperature=temperature, num_items_in_batch=11
    )
    ours_global, _ = generalized_jsd(
        student, teacher, labels != -100, beta=beta, temperature=temperature, global_count=11
    )
    torch.testing.assert_close(ours_global, trl_global)


# ------------------------------------------------------------------------------------------------ GRPO / RLOO


def _trl_grpo_advantages(rewards: torch.Tensor, g: int, scale: str) -> torch.Tensor:
    """TRL 1.x ``GRPOTrainer._generate_and_score_completions`` (``multi_objective_aggregation=
    "sum_then_normalize"``), which is inline code, not a function::

        mean = nanmean(rewards.view(-1, G), dim=1).repeat_interleave(G)
        std  = nanstd(rewards.view(-1, G), dim=1).repeat_interleave(G)   # "group" / "none"
             = nanstd(rewards).expand_as(rewards)                         # "batch"
        advantages = rewards - mean
        if scale != "none": advantages = advantages / (std + 1e-4)

    ``nanstd`` (Bessel-corrected) is TRL's own helper.
    """
    from trl.trainer.utils import nanstd

    mean = torch.nanmean(rewards.view(-1, g), dim=1).repeat_interleave(g)
    std = nanstd(rewards.view(-1, g), dim=1).repeat_interleave(g) if scale != "batch" else nanstd(rewards)
    adv = rewards - mean
    return adv if scale == "none" else adv / (std + 1e-4)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_grpo_advantages_match_trl_formula(scale: str) -> None:
    gen = torch.Generator().manual_seed(7)
    rewards = torch.rand(4 * 5, generator=gen, dtype=torch.float64)
    rewards[5:10] = 0.25  # a zero-std group: TRL gives (r - r) / (0 + 1e-4) = 0 as well
    ours = grpo_advantages(rewards, 5, scale=scale, eps=1e-4).advantages  # type: ignore[arg-type]
    torch.testing.assert_close(ours, _trl_grpo_advantages(rewards, 5, scale))


def test_rloo_advantages_match_trl_formula() -> None:
    """TRL 1.x ``RLOOTrainer``: ``baseline = (group_sum - r) / (G - 1)``; ``A = r - baseline`` (inline)."""
    gen = torch.Generator().manual_seed(8)
    rewards = torch.rand(3 * 4, generator=gen, dtype=torch.float64)
    grouped = rewards.view(-1, 4)
    expected = (grouped - (grouped.sum(dim=1, keepdim=True) - grouped) / 3).view(-1)
    torch.testing.assert_close(rloo_advantages(rewards, 4).advantages, expected)
