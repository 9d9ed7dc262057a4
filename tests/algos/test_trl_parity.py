"""Numerical parity with TRL (installed, pinned to ``TRL_TESTED``) on random inputs.

Where TRL exposes the computation as a function (``GKDTrainer.generalized_jsd_loss``, ``CPOTrainer.cpo_loss``,
``ORPOTrainer.odds_ratio_loss``) it is called directly, with a ``SimpleNamespace`` standing in for ``self``.
DPO, KTO and the reward-model loss only exist inside ``_compute_loss`` / ``compute_loss``; those methods are
called on a stand-in ``self`` with a stand-in *model* that returns the given per-token log-probs (or
reward logits) -- the loss code that runs is TRL's own.

The stand-ins mirror TRL's internals as of ``TRL_TESTED``. If a TRL upgrade changes them so that a stand-in
no longer fits, the test FAILS (never skips) with a message naming the version and what to update, and
``test_installed_trl_is_the_tested_version`` fails as soon as the installed major.minor differs, so moving
to a new TRL is a deliberate act (bump ``TRL_TESTED``, the ``dev`` pin in pyproject.toml, and the stand-ins).
TRL is a hard dependency: without it this module errors at collection instead of being skipped.

GRPO / RLOO advantages are inline in TRL's ``_generate_and_score_completions`` (not callable without a
model and generation), so they are pinned by hand-derived values in ``test_advantages.py``
(``test_*_trl_convention_by_hand``); here only the convention they rely on (TRL's ``nanstd`` is the
Bessel-corrected std) is checked against TRL itself.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import trl  # a hard dependency of raylhf: a missing TRL must error, not skip the module

from raylhf.algos import (
    bradley_terry_loss,
    cpo_loss,
    dpo_loss,
    generalized_jsd,
    kto_loss,
    kto_reference_point,
    orpo_loss,
    simpo_loss,
)

TRL_TESTED = "1.16"  # the TRL major.minor the stand-ins below are written against (keep the dev pin in sync)

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


def _trl_major_minor(version: str) -> str:
    return ".".join(version.split("+")[0].split(".")[:2])


def _call_trl(fn: Callable[[], Any], what: str) -> Any:
    """Run TRL code on a stand-in; if the stand-in no longer fits TRL's internals, FAIL (never skip)."""
    try:
        return fn()
    except (AttributeError, KeyError, TypeError, ImportError) as exc:  # stand-in no longer matches TRL
        pytest.fail(
            f"{what}: the stand-in no longer fits TRL's internals ({type(exc).__name__}: {exc}). "
            f"These parity tests are written against TRL {TRL_TESTED}.x, installed is trl {trl.__version__}. "
            f"Update the stand-in in {Path(__file__).name} to the installed TRL's {what} "
            "(and TRL_TESTED plus the dev pin in pyproject.toml), do not skip the comparison."
        )


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
    trl_loss = _call_trl(
        lambda: DPOTrainer._compute_loss(stand_in, _fake_lm(logps), inputs, False), "DPOTrainer._compute_loss"
    )

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
    trl_losses, trl_c, trl_r = _call_trl(lambda: CPOTrainer.cpo_loss(ns, pc, pr), "CPOTrainer.cpo_loss")
    if loss_type == "simpo":  # TRL's simpo: -log sigmoid(beta * (c - r) - gamma), on averaged log-probs
        ours, m = simpo_loss(pc, pr, beta=beta, gamma=gamma, label_smoothing=smoothing)
    elif loss_type == "sigmoid":
        ours, m = cpo_loss(pc, pr, beta=beta, label_smoothing=smoothing)
        # conservative DPO: the same smoothed logistic on the reference-adjusted margin
        ref_c, ref_r = -torch.rand(2, 6, generator=gen, dtype=torch.float64)
        trl_cdpo, _, _ = _call_trl(
            lambda: CPOTrainer.cpo_loss(ns, pc - ref_c, pr - ref_r), "CPOTrainer.cpo_loss"
        )
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
    trl_terms, trl_c, _, trl_ratio, trl_log_odds = _call_trl(
        lambda: ORPOTrainer.odds_ratio_loss(ns, pc, pr), "ORPOTrainer.odds_ratio_loss"
    )
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
    trl_loss = _call_trl(
        lambda: KTOTrainer._compute_loss(stand_in, _fake_lm(logps), inputs, False), "KTOTrainer._compute_loss"
    )
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

    trl_loss = _call_trl(
        lambda: RewardTrainer.compute_loss(stand_in, model, inputs), "RewardTrainer.compute_loss"
    )
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
        ),
        "GKDTrainer.generalized_jsd_loss",
    )
    ours, _ = generalized_jsd(student, teacher, labels != -100, beta=beta, temperature=temperature)
    torch.testing.assert_close(ours, trl_loss)
    # the global-count normalizer matches TRL's num_items_in_batch
    trl_global = _call_trl(
        lambda: GKDTrainer.generalized_jsd_loss(
            student, teacher, labels=labels, beta=beta, temperature=temperature, num_items_in_batch=11
        ),
        "GKDTrainer.generalized_jsd_loss",
    )
    ours_global, _ = generalized_jsd(
        student, teacher, labels != -100, beta=beta, temperature=temperature, global_count=11
    )
    torch.testing.assert_close(ours_global, trl_global)


# ------------------------------------------------------------------------------------------------ GRPO / RLOO


def test_trl_nanstd_is_bessel_corrected() -> None:
    """TRL's GRPO/RLOO advantages (inline code, not callable) scale by ``nanstd``; the hand-derived values in
    ``test_advantages.py::test_grpo_trl_convention_by_hand`` assume it is the unbiased (n - 1) std."""
    from trl.trainer.utils import nanstd

    rewards = torch.tensor([[4.0, 0.0, 2.0], [5.0, 11.0, 8.0]], dtype=torch.float64)
    # row 0: mean 2, squares 4 + 4 + 0 = 8, 8 / (3 - 1) = 4 -> 2  (biased would be sqrt(8 / 3) = 1.633)
    # row 1: mean 8, squares 9 + 9 + 0 = 18, 18 / 2 = 9 -> 3
    # all 6: mean 5, squares 1 + 25 + 9 + 0 + 36 + 9 = 80, 80 / 5 = 16 -> 4
    per_group = _call_trl(lambda: nanstd(rewards, dim=1), "trl.trainer.utils.nanstd")
    torch.testing.assert_close(per_group, torch.tensor([2.0, 3.0], dtype=torch.float64))
    torch.testing.assert_close(
        _call_trl(lambda: nanstd(rewards), "trl.trainer.utils.nanstd"), torch.tensor(4.0, dtype=torch.float64)
    )


# --------------------------------------------------------------------------------------------- the pin itself


def _check_trl_version(installed: str) -> None:
    if _trl_major_minor(installed) != TRL_TESTED:
        pytest.fail(
            f"installed trl {installed} is not the TRL these parity tests are written against "
            f"(TRL_TESTED = {TRL_TESTED!r}). Upgrading TRL is deliberate: check the stand-ins in "
            f"{Path(__file__).name} against the new TRL internals, then bump TRL_TESTED and the "
            "trl pin in the dev extras of pyproject.toml."
        )


def test_installed_trl_is_the_tested_version() -> None:
    _check_trl_version(trl.__version__)


def test_version_check_names_the_versions() -> None:
    _check_trl_version(f"{TRL_TESTED}.3")
    _check_trl_version(f"{TRL_TESTED}.0.dev0")
    with pytest.raises(pytest.fail.Exception, match=rf"trl 99\.0\.0 .*TRL_TESTED = '{TRL_TESTED}'"):
        _check_trl_version("99.0.0")


def _outcome(fn: Callable[[], Any]) -> BaseException | None:
    """What ``fn`` raised, including pytest's ``Skipped`` / ``Failed`` outcomes (BaseException subclasses)."""
    try:
        fn()
    except BaseException as exc:  # the point is to see skips too
        return exc
    return None


def test_stand_in_that_no_longer_fits_trl_fails_not_skips() -> None:
    """Regression: a stand-in mismatch used to be turned into ``pytest.skip``, so a TRL upgrade that renamed
    an attribute silently turned the parity tests into skips. Here real TRL code
    (``ORPOTrainer.odds_ratio_loss``) runs on a stand-in that lacks an attribute it reads (as after a rename
    in TRL): the test must fail."""
    from trl.experimental.orpo import ORPOTrainer

    pc = torch.tensor([-0.5, -1.0], dtype=torch.float64)
    broken = SimpleNamespace(accelerator=_Accelerator())  # no ``beta``
    exc = _outcome(lambda: _call_trl(lambda: ORPOTrainer.odds_ratio_loss(broken, pc, pc), "odds_ratio_loss"))
    assert isinstance(exc, pytest.fail.Exception), f"expected a test failure, got {exc!r}"
    msg = str(exc)
    assert f"TRL {TRL_TESTED}.x" in msg and f"trl {trl.__version__}" in msg
    assert "AttributeError" in msg and "beta" in msg and "odds_ratio_loss" in msg


@pytest.mark.parametrize("error", [AttributeError("a"), KeyError("k"), TypeError("t"), ImportError("i")])
def test_every_stand_in_mismatch_fails_not_skips(error: Exception) -> None:
    def trl_code() -> None:
        raise error

    exc = _outcome(lambda: _call_trl(trl_code, "SomeTrainer.some_loss"))
    assert isinstance(exc, pytest.fail.Exception), f"expected a test failure, got {exc!r}"
    assert type(error).__name__ in str(exc) and "SomeTrainer.some_loss" in str(exc)
