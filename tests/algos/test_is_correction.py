"""Off-policy IS corrections (raylhf.algos.is_correction): every mode by hand, policy_loss parity, config."""

from __future__ import annotations

import math
from typing import get_args

import pytest
import torch

from raylhf.algos.is_correction import IS_MODES, is_weights
from raylhf.algos.policy_loss import policy_loss
from raylhf.algos.utils import masked_mean, to_float
from raylhf.config import ConfigError, GRPOAlgoConfig, GRPOConfig, build_config
from raylhf.config.loader import parse_argv
from raylhf.core.batch import Objective
from raylhf.core.objective import objective_loss

NAN = float("nan")


def close(actual: torch.Tensor, expected: list) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype), atol=1e-6, rtol=1e-6)


def token_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One row, trainer/sampler ratios r = exp(old - rollout) = (3, 0.25, 1.5) and a padded 4th token.

    old = 0 and rollout = -ln r, so d = old - rollout = (ln 3, ln 0.25, ln 1.5); the padded token's
    rollout log-prob is nan (it must be ignored and get weight 1).
    """
    old = torch.zeros(1, 4)
    rollout = -torch.log(torch.tensor([[3.0, 0.25, 1.5, NAN]]))
    mask = torch.tensor([[1, 1, 1, 0]])
    return old, rollout, mask


# k3 of KL(rollout || old) per token, r - 1 - ln r, averaged over the 3 trained tokens:
#   (3 - 1 - ln 3) + (0.25 - 1 - ln 0.25) + (1.5 - 1 - ln 1.5) = 1.75 - ln(3 * 0.25 * 1.5)
TOKEN_KL = (1.75 - math.log(3 * 0.25 * 1.5)) / 3


def seq_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two rows of trainer/sampler ratios: (2, 0.5, 4) and (0.5, 0.25, padded).

    Row 0: sum d = ln(2 * 0.5 * 4) = ln 4, sequence ratio R = 4, geometric mean G = 4^(1/3) ~ 1.587.
    Row 1: sum d = ln(0.5 * 0.25) = ln 0.125, R = 0.125, G = sqrt(0.125) ~ 0.354. 5 trained tokens.
    """
    old = torch.zeros(2, 3)
    rollout = -torch.log(torch.tensor([[2.0, 0.5, 4.0], [0.5, 0.25, NAN]]))
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    return old, rollout, mask


def test_none_is_all_ones_without_metrics() -> None:
    w, m = is_weights(*token_case(), mode="none", high=2.0)
    assert torch.equal(w, torch.ones(1, 4))
    assert m == {}


def test_token_tis_by_hand() -> None:
    w, m = is_weights(*token_case(), mode="token_tis", high=2.0)
    # min((3, 0.25, 1.5), 2) = (2, 0.25, 1.5); padded token exp(0) = 1
    close(w, [[2.0, 0.25, 1.5, 1.0]])
    assert m["is_weight_mean"] == pytest.approx(3.75 / 3)  # (2 + 0.25 + 1.5) / 3
    assert m["tis_weight_mean"] == m["is_weight_mean"]
    assert m["is_capped_frac"] == pytest.approx(1 / 3)  # only r = 3 is capped
    assert m["tis_frac_capped"] == m["is_capped_frac"]
    assert m["is_masked_frac"] == 0.0
    assert m["rollout_mismatch_kl"] == pytest.approx(TOKEN_KL)


def test_token_mis_by_hand() -> None:
    w, m = is_weights(*token_case(), mode="token_mis", high=2.0)
    # r = 3 > 2 is masked to 0, the others keep their ratio: (0, 0.25, 1.5)
    close(w, [[0.0, 0.25, 1.5, 1.0]])
    assert m["is_weight_mean"] == pytest.approx(1.75 / 3)
    assert m["is_masked_frac"] == pytest.approx(1 / 3)
    assert m["is_capped_frac"] == 0.0
    assert m["rollout_mismatch_kl"] == pytest.approx(TOKEN_KL)
    assert "tis_weight_mean" not in m


def test_icepop_by_hand() -> None:
    w, m = is_weights(*token_case(), mode="icepop", low=0.5, high=2.0)
    # band [0.5, 2]: r = 3 (above) and r = 0.25 (below) are masked: (0, 0, 1.5)
    close(w, [[0.0, 0.0, 1.5, 1.0]])
    assert m["is_weight_mean"] == pytest.approx(0.5)  # 1.5 / 3
    assert m["is_masked_frac"] == pytest.approx(2 / 3)
    assert m["is_capped_frac"] == 0.0
    # low defaults to 1 / high: with high = 4 the band is [0.25, 4] and nothing is masked
    w2, m2 = is_weights(*token_case(), mode="icepop", high=4.0)
    close(w2, [[3.0, 0.25, 1.5, 1.0]])
    assert m2["is_masked_frac"] == 0.0


def test_seq_tis_by_hand() -> None:
    w, m = is_weights(*seq_case(), mode="seq_tis", high=2.0)
    # row 0: min(4, 2) = 2 on its 3 tokens (capped); row 1: min(0.125, 2) = 0.125, broadcast to every
    # position of the row (the padded one included: the loss masks it anyway)
    close(w, [[2.0, 2.0, 2.0], [0.125, 0.125, 0.125]])
    assert m["is_weight_mean"] == pytest.approx((3 * 2 + 2 * 0.125) / 5)  # 1.25
    assert m["is_capped_frac"] == pytest.approx(3 / 5)
    assert m["is_masked_frac"] == 0.0
    assert "tis_frac_capped" not in m


def test_seq_mis_by_hand() -> None:
    w, m = is_weights(*seq_case(), mode="seq_mis", high=2.0)
    # row 0: R = 4 > 2, the whole sequence is masked; row 1: R = 0.125 kept
    close(w, [[0.0, 0.0, 0.0], [0.125, 0.125, 0.125]])
    assert m["is_weight_mean"] == pytest.approx(2 * 0.125 / 5)  # 0.05
    assert m["is_masked_frac"] == pytest.approx(3 / 5)
    assert m["is_capped_frac"] == 0.0
    # with high = 8 both sequences are kept with their ratio: (3 * 4 + 2 * 0.125) / 5 = 2.45
    w8, m8 = is_weights(*seq_case(), mode="seq_mis", high=8.0)
    close(w8, [[4.0, 4.0, 4.0], [0.125, 0.125, 0.125]])
    assert m8["is_weight_mean"] == pytest.approx(2.45)
    assert m8["is_masked_frac"] == 0.0


def test_geo_seq_by_hand() -> None:
    w, m = is_weights(*seq_case(), mode="geo_seq", low=0.5, high=2.0)
    # row 0: G = 4^(1/3) ~ 1.587 in [0.5, 2] -> weight 1; row 1: G = sqrt(0.125) ~ 0.354 < 0.5 -> 0
    close(w, [[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    assert m["is_weight_mean"] == pytest.approx(3 / 5)
    assert m["is_masked_frac"] == pytest.approx(2 / 5)
    assert m["is_capped_frac"] == 0.0
    # with high = 1.5 row 0 (G ~ 1.587) is rejected too
    w15, _ = is_weights(*seq_case(), mode="geo_seq", low=0.3, high=1.5)
    close(w15, [[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])


def test_seq_mismatch_kl_matches_token_k3() -> None:
    # rollout_mismatch_kl is the per-token k3 in every mode: ratios 2, 0.5, 4, 0.5, 0.25
    expected = sum(r - 1 - math.log(r) for r in (2, 0.5, 4, 0.5, 0.25)) / 5
    for mode in ("seq_tis", "seq_mis", "geo_seq", "token_tis"):
        assert is_weights(*seq_case(), mode=mode, low=0.5, high=2.0)[1]["rollout_mismatch_kl"] == pytest.approx(expected)


@pytest.mark.parametrize("mode", [m for m in IS_MODES if m != "none"])
def test_extreme_log_ratios_stay_finite(mode: str) -> None:
    # d = +-100 per token and sequence sums of 300: clamped to [-20, 20] before exp, so no inf / nan
    old = torch.zeros(2, 3)
    rollout = torch.tensor([[-100.0, -100.0, -100.0], [100.0, 100.0, 100.0]])
    mask = torch.ones(2, 3)
    w, m = is_weights(old, rollout, mask, mode=mode, low=0.5, high=2.0)
    assert torch.isfinite(w).all()
    assert all(math.isfinite(v) for v in m.values())
    assert not w.requires_grad


def test_weights_are_detached() -> None:
    old = torch.zeros(1, 3, requires_grad=True)
    w, _ = is_weights(old, torch.full((1, 3), -0.1), torch.ones(1, 3), mode="token_tis", high=2.0)
    assert not w.requires_grad


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown IS correction mode 'tis'"):
        is_weights(*token_case(), mode="tis", high=2.0)
    with pytest.raises(ValueError, match="high > 0"):
        is_weights(*token_case(), mode="seq_tis", high=None)
    with pytest.raises(ValueError, match="0 < low < high"):
        is_weights(*token_case(), mode="icepop", low=2.0, high=2.0)


def _previous_policy_loss(
    logp: torch.Tensor, old: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor, rollout: torch.Tensor,
    cap: float, clip_low: float, clip_high: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The TIS policy loss as it was before raylhf.algos.is_correction (token ratios, no dual clip)."""
    m = mask.bool()
    ratio = torch.exp(torch.where(m, logp - old, torch.zeros_like(logp)).clamp(-20.0, 20.0))
    a = adv.to(logp.dtype).expand_as(logp)
    loss = torch.maximum(-a * ratio, -a * ratio.clamp(1.0 - clip_low, 1.0 + clip_high))
    mismatch = torch.where(m, old - rollout, torch.zeros_like(old))
    raw = torch.exp(mismatch.clamp(-20.0, 20.0))
    weight = raw.clamp(max=cap)
    metrics = {
        "tis_weight_mean": to_float(masked_mean(weight, m)),
        "tis_frac_capped": to_float(masked_mean((raw > cap).float(), m)),
        "rollout_mismatch_kl": to_float(masked_mean(raw - 1.0 - mismatch, m)),
    }
    return torch.where(m, loss * weight, torch.zeros_like(loss)), metrics


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_token_tis_is_bit_identical_to_the_previous_loss(dtype: torch.dtype, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    shape = (4, 7)
    old = (-torch.rand(shape, generator=g) * 3).to(dtype)
    logp = (old + 0.3 * torch.randn(shape, generator=g).to(dtype)).requires_grad_()
    rollout = old + torch.randn(shape, generator=g).to(dtype)  # ratios well past the cap of 2
    rollout[0, 0] = old[0, 0] + 30.0  # d = -30: clamped to -20
    rollout[1, 1] = old[1, 1] - 30.0  # d = +30: clamped to 20, capped
    mask = torch.rand(shape, generator=g) > 0.25
    rollout[~mask] = float("nan")  # padding never leaks
    adv = torch.randn(shape[0], 1, generator=g)
    ref_loss, ref_tis = _previous_policy_loss(logp.detach(), old, adv, mask, rollout, 2.0, 0.2, 0.28)
    _, ref_clip = policy_loss(logp, old, adv, mask, clip_low=0.2, clip_high=0.28)  # the clip metrics did not change
    for kwargs in ({"tis_cap": 2.0}, {"is_mode": "token_tis", "is_high": 2.0}, {"is_high": 2.0}):
        loss, m = policy_loss(logp, old, adv, mask, clip_low=0.2, clip_high=0.28, rollout_logp=rollout, **kwargs)
        assert torch.equal(loss.detach(), ref_loss)
        assert {k: m[k] for k in ref_tis} == ref_tis
        assert {k: m[k] for k in ref_clip} == ref_clip


def test_policy_loss_modes_and_off_switches() -> None:
    logp = torch.zeros(1, 4, requires_grad=True)
    old, rollout, mask = token_case()
    adv = torch.ones(1, 4)
    # icepop with band [0.5, 2]: weights (0, 0, 1.5) on L = -A * rho = -1
    loss, m = policy_loss(logp, old, adv, mask, rollout_logp=rollout, is_mode="icepop", is_low=0.5, is_high=2.0)
    close(loss, [[0.0, 0.0, -1.5, 0.0]])
    assert m["is_masked_frac"] == pytest.approx(2 / 3)
    # is_high falls back to tis_cap
    loss2, _ = policy_loss(logp, old, adv, mask, rollout_logp=rollout, is_mode="token_mis", tis_cap=2.0)
    close(loss2, [[0.0, -0.25, -1.5, 0.0]])
    # no threshold, mode none, or no rollout log-probs: no correction and no IS metrics
    for kwargs in ({"rollout_logp": rollout, "is_mode": "icepop"}, {"rollout_logp": rollout, "is_mode": "none",
                                                                  "tis_cap": 2.0}, {"tis_cap": 2.0}):
        plain, pm = policy_loss(logp, old, adv, mask, **kwargs)
        close(plain, [[-1.0, -1.0, -1.0, 0.0]])
        assert "is_weight_mean" not in pm and "rollout_mismatch_kl" not in pm


def test_objective_passes_the_mode_through() -> None:
    logp = torch.zeros(1, 4, requires_grad=True)
    old, rollout, mask = token_case()
    adv = torch.ones(1, 4)

    def run(obj: Objective) -> dict[str, float]:
        return objective_loss(logp, None, mask, obj, advantages=adv, old_logp=old, rollout_logp=rollout)[1]

    assert "pg/is_weight_mean" not in run(Objective())  # default: no threshold, no correction
    assert run(Objective(tis_cap=2.0))["pg/tis_frac_capped"] == pytest.approx(1 / 3)  # token_tis as before
    # token-mean over the 3 tokens of -A * w: seq_mis -> R = 3 * 0.25 * 1.5 = 1.125 <= 2, kept
    assert run(Objective(is_correction="seq_mis", is_high=2.0))["loss/pg"] == pytest.approx(-1.125)
    assert run(Objective(is_correction="icepop", is_low=0.5, tis_cap=2.0))["loss/pg"] == pytest.approx(-0.5)


# ---- config ---------------------------------------------------------------------------------------------


def test_config_modes_match_the_algorithm() -> None:
    assert get_args(GRPOAlgoConfig.model_fields["is_correction"].annotation) == IS_MODES


def test_config_defaults_keep_token_tis_at_two() -> None:
    g = GRPOConfig().grpo
    assert g.objective_is_fields() == {"tis_cap": 2.0, "is_correction": "token_tis", "is_low": 0.5, "is_high": None}
    assert g.effective_is_high == 2.0


def test_config_rejects_an_empty_band() -> None:
    with pytest.raises(ConfigError, match=r"grpo\.is_low \(2\.5\) must be smaller than grpo\.is_high.*tis_cap"):
        build_config(GRPOConfig, overrides=[("grpo.is_correction", "icepop"), ("grpo.is_low", 2.5)])
    with pytest.raises(ConfigError, match=r"grpo\.is_low \(0\.5\) must be smaller than grpo\.is_high \(0\.4\).*lower"):
        build_config(GRPOConfig, overrides=[("grpo.is_high", 0.4)])
    ok = build_config(GRPOConfig, overrides=[("grpo.is_correction", "geo_seq"), ("grpo.is_low", 0.8),
                                             ("grpo.is_high", 1.25)]).grpo
    assert (ok.is_low, ok.effective_is_high) == (0.8, 1.25)
    # a small tis_cap stays valid where is_low is unused (as before is_low existed)
    assert build_config(GRPOConfig, overrides=[("grpo.tis_cap", 0.4)]).grpo.tis_cap == 0.4
    with pytest.raises(ConfigError, match="is_low"):
        build_config(GRPOConfig, overrides=[("grpo.is_low", 0.0)])


def test_config_tis_cap_null_disables_every_mode() -> None:
    args = parse_argv(["--grpo.tis_cap", "null", "--grpo.is_correction", "icepop", "--grpo.is_high", "3"])
    g = build_config(GRPOConfig, overrides=args.overrides).grpo
    fields = g.objective_is_fields()
    assert fields["is_correction"] == "none"
    logp = torch.zeros(1, 4, requires_grad=True)
    old, rollout, mask = token_case()
    _, m = objective_loss(logp, None, mask, Objective(**fields), advantages=torch.ones(1, 4), old_logp=old,
                          rollout_logp=rollout)
    assert m["loss/pg"] == pytest.approx(-1.0)
    assert not any(k.startswith(("pg/is_", "pg/tis_", "pg/rollout_")) for k in m)
