"""Advantage estimators: outcome-level (GRPO, RLOO, REINFORCE++) and token-level (GAE, discounted returns).

Outcome estimators take one scalar reward per sample, ``rewards: [N]``, where the ``N`` samples are laid
out group by group (``N = num_groups * group_size``; the ``group_size`` completions of one prompt are
contiguous). They return one advantage per sample, ``[N]``; the trainer broadcasts it over the response
tokens. Everything is computed without gradients.

Zero-variance groups (all rewards equal, including groups of size 1) carry no learning signal for the
group-relative estimators: their advantage is exactly ``0`` (never ``nan``), and the fraction of such
groups is reported as ``frac_zero_std_groups``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from raylhf.algos.utils import masked_whiten, to_float, upcast

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "AdvantageResult",
    "GAEResult",
    "compute_advantages",
    "discounted_returns",
    "gae",
    "grpo_advantages",
    "outcome_to_token_rewards",
    "reinforce_pp_advantages",
    "reinforce_pp_baseline_advantages",
    "reinforce_pp_token_advantages",
    "rloo_advantages",
]

AdvantageName = Literal["grpo", "rloo", "reinforce++", "reinforce++-baseline"]
RewardScale = Literal["group", "batch", "none"]
ADVANTAGE_ESTIMATORS: tuple[str, ...] = ("grpo", "rloo", "reinforce++", "reinforce++-baseline")


@dataclass(frozen=True)
class AdvantageResult:
    """Per-sample advantages ``[N]`` and scalar metrics."""

    advantages: Tensor
    metrics: dict[str, float] = field(default_factory=dict)


class GAEResult(NamedTuple):
    """Per-token advantages and returns (value targets), both ``[B, T]``, ``0`` outside the mask."""

    advantages: Tensor
    returns: Tensor


# --------------------------------------------------------------------------------------------------------
# outcome-level estimators
# --------------------------------------------------------------------------------------------------------


def _as_float(x: Tensor) -> Tensor:
    return upcast(x.detach())


def _grouped(rewards: Tensor, group_size: int) -> Tensor:
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [N], got shape {tuple(rewards.shape)}")
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    if rewards.numel() % group_size:
        raise ValueError(
            f"the number of rewards ({rewards.numel()}) must be a multiple of group_size ({group_size})"
        )
    return _as_float(rewards).view(-1, group_size)


def _std(x: Tensor, dim: int | None = None, keepdim: bool = False) -> Tensor:
    """Unbiased (Bessel) std, ``0`` where fewer than two elements (instead of ``nan``)."""
    n = x.numel() if dim is None else x.shape[dim]
    if n < 2:
        if dim is None:
            return x.new_zeros(())
        shape = list(x.shape)
        if keepdim:
            shape[dim] = 1
        else:
            shape.pop(dim)
        return x.new_zeros(shape)
    if dim is None:
        return x.std()
    return x.std(dim=dim, keepdim=keepdim)


def _zero_std_groups(g: Tensor) -> Tensor:
    """``[num_groups]`` bool: every reward of the group is identical (exact, not within a tolerance)."""
    return g.amax(dim=1) == g.amin(dim=1)


def _metrics(rewards: Tensor, zero: Tensor, adv: Tensor) -> dict[str, float]:
    return {
        "reward_mean": to_float(rewards.mean()),
        "reward_std": to_float(_std(rewards)),
        "frac_zero_std_groups": to_float(zero.float().mean()),
        "advantage_mean": to_float(adv.mean()),
        "advantage_std": to_float(_std(adv)),
        "advantage_max": to_float(adv.max()),
        "advantage_min": to_float(adv.min()),
    }


@torch.no_grad()
def grpo_advantages(
    rewards: Tensor, group_size: int, scale: RewardScale = "group", eps: float = 1e-6
) -> AdvantageResult:
    """Group-relative advantages of GRPO (Shao et al., 2024, "DeepSeekMath").

    For sample ``i`` of group ``g`` with rewards ``r_g = (r_g1 .. r_gG)``::

        A_gi = (r_gi - mean(r_g)) / (std + eps)

    ``scale`` picks the ``std``:

    * ``"group"``: ``std(r_g)``, the unbiased std of the group (GRPO);
    * ``"batch"``: ``std(r)``, the unbiased std of all ``N`` rewards -- group mean, batch std
      ("Lite PPO", Liu et al., 2025, "Tricks or Traps? A Deep Dive into RL for LLM Reasoning");
    * ``"none"``: no division, ``A_gi = r_gi - mean(r_g)`` (Dr.GRPO, Liu et al., 2025,
      "Understanding R1-Zero-Like Training").

    Groups whose rewards are all equal (incl. ``group_size == 1``) get ``A = 0`` exactly.
    """
    if scale not in ("group", "batch", "none"):
        raise ValueError(f"scale must be 'group', 'batch' or 'none', got {scale!r}")
    g = _grouped(rewards, group_size)
    zero = _zero_std_groups(g)
    centered = g - g.mean(dim=1, keepdim=True)
    if scale == "group":
        adv = centered / (_std(g, dim=1, keepdim=True) + eps)
    elif scale == "batch":
        adv = centered / (_std(g.flatten()) + eps)
    else:
        adv = centered
    adv = adv.masked_fill(zero[:, None], 0.0).flatten()
    return AdvantageResult(adv, _metrics(g.flatten(), zero, adv))


@torch.no_grad()
def rloo_advantages(rewards: Tensor, group_size: int) -> AdvantageResult:
    """REINFORCE leave-one-out (Kool et al., 2019; Ahmadian et al., 2024, "Back to Basics").

    The baseline of sample ``i`` is the mean reward of the *other* ``G - 1`` samples of its group::

        A_gi = r_gi - (sum_j r_gj - r_gi) / (G - 1)  =  G / (G - 1) * (r_gi - mean(r_g))

    No std scaling. ``group_size == 1`` (no other sample) and constant groups give ``A = 0``.
    """
    g = _grouped(rewards, group_size)
    zero = _zero_std_groups(g)
    if group_size < 2:
        adv = torch.zeros_like(g)
    else:
        baseline = (g.sum(dim=1, keepdim=True) - g) / (group_size - 1)
        adv = g - baseline
    adv = adv.masked_fill(zero[:, None], 0.0).flatten()
    return AdvantageResult(adv, _metrics(g.flatten(), zero, adv))


@torch.no_grad()
def reinforce_pp_advantages(rewards: Tensor, group_size: int = 1, eps: float = 1e-6) -> AdvantageResult:
    """REINFORCE++ outcome advantages (Hu, 2025, "REINFORCE++"): global whitening, no group baseline.

    ``A_i = (r_i - mean(r)) / (std(r) + eps)`` over all ``N`` rewards (unbiased std). ``group_size``
    only serves the ``frac_zero_std_groups`` metric. A constant batch gives ``A = 0``.
    """
    g = _grouped(rewards, group_size)
    zero = _zero_std_groups(g)
    r = g.flatten()
    if bool((r.max() == r.min()).item()):
        adv = torch.zeros_like(r)
    else:
        adv = (r - r.mean()) / (_std(r) + eps)
    return AdvantageResult(adv, _metrics(r, zero, adv))


@torch.no_grad()
def reinforce_pp_baseline_advantages(rewards: Tensor, group_size: int, eps: float = 1e-6) -> AdvantageResult:
    """REINFORCE++-baseline (Hu, 2025): subtract the group mean, then whiten over the batch.

    ``c_gi = r_gi - mean(r_g)``; ``A_gi = (c_gi - mean(c)) / (std(c) + eps)`` with mean/std over all
    ``N`` centred rewards. Constant groups (incl. ``group_size == 1``) get ``A = 0``.
    """
    g = _grouped(rewards, group_size)
    zero = _zero_std_groups(g)
    c = (g - g.mean(dim=1, keepdim=True)).masked_fill(zero[:, None], 0.0).flatten()
    if bool((c.max() == c.min()).item()):
        adv = torch.zeros_like(c)
    else:
        adv = (c - c.mean()) / (_std(c) + eps)
    adv = adv.view_as(g).masked_fill(zero[:, None], 0.0).flatten()
    return AdvantageResult(adv, _metrics(g.flatten(), zero, adv))


def compute_advantages(
    name: AdvantageName | str,
    rewards: Tensor,
    group_size: int,
    scale: RewardScale = "group",
    eps: float = 1e-6,
) -> AdvantageResult:
    """Dispatch to an outcome estimator by name (the trainer's entry point).

    ``name``: ``"grpo"`` (uses ``scale``), ``"rloo"``, ``"reinforce++"``, ``"reinforce++-baseline"``;
    ``scale`` is only meaningful for ``"grpo"`` and ignored otherwise. See the individual functions for
    the formulas and papers. ``rewards``: ``[N]`` laid out group by group, ``N % group_size == 0``.
    """
    if name == "grpo":
        return grpo_advantages(rewards, group_size, scale=scale, eps=eps)
    if name == "rloo":
        return rloo_advantages(rewards, group_size)
    if name == "reinforce++":
        return reinforce_pp_advantages(rewards, group_size, eps=eps)
    if name == "reinforce++-baseline":
        return reinforce_pp_baseline_advantages(rewards, group_size, eps=eps)
    raise ValueError(f"unknown advantage estimator {name!r}; expected one of {ADVANTAGE_ESTIMATORS}")


# --------------------------------------------------------------------------------------------------------
# token-level estimators
# --------------------------------------------------------------------------------------------------------


def _compress_order(mask: Tensor) -> Tensor:
    """Permutation per row that moves the selected tokens to the front, keeping their order."""
    return torch.argsort((~mask).to(torch.int8), dim=1, stable=True)


def _discount_matrix(length: int, discount: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``W[t, l] = discount ** (l - t)`` for ``l >= t`` else ``0`` (``0 ** 0 == 1``)."""
    idx = torch.arange(length, device=device)
    diff = idx[None, :] - idx[:, None]
    base = torch.tensor(discount, dtype=dtype, device=device)
    powers = base.pow(diff.clamp(min=0).to(dtype))
    return torch.where(diff >= 0, powers, torch.zeros_like(powers))


def _suffix_discounted_sum(x_c: Tensor, discount: float) -> Tensor:
    """``y_t = sum_{l >= t} discount^(l - t) x_l`` along dim 1, as one matmul (no loop over tokens)."""
    w = _discount_matrix(x_c.shape[1], discount, x_c.dtype, x_c.device)
    return x_c @ w.T


@torch.no_grad()
def outcome_to_token_rewards(rewards: Tensor, mask: Tensor) -> Tensor:
    """Place each sequence's scalar reward ``[B]`` on its last selected token: ``[B, T]``, zeros elsewhere."""
    m = mask.bool()
    last = m & (m.long().cumsum(dim=1) == m.long().sum(dim=1, keepdim=True))
    r = _as_float(rewards)
    return torch.where(last, r[:, None].expand_as(last), torch.zeros((), dtype=r.dtype, device=r.device))


@torch.no_grad()
def gae(
    token_rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 1.0
) -> GAEResult:
    """Generalized Advantage Estimation (Schulman et al., 2016), per token, over the response mask.

    With ``V`` the value of the *next selected* token (``0`` after the last one, the episode ends)::

        delta_t = r_t + gamma * V_next(t) - V_t
        A_t     = sum_{l >= t} (gamma * lam)^(k(t, l)) * delta_l      (k = selected steps from t to l)
        R_t     = A_t + V_t                                            (value target / returns)

    Unselected tokens (padding, or tool output inside a multi-turn response) are skipped: the recursion
    jumps over them, and their advantage and return are ``0``. Shapes ``[B, T]``. Vectorized: the
    selected tokens are packed to the front of each row and the discounted suffix sums are a single
    ``[B, T] @ [T, T]`` matmul.
    """
    m = mask.bool()
    dtype = torch.promote_types(_as_float(token_rewards).dtype, _as_float(values).dtype)
    r = torch.where(m, token_rewards.detach().to(dtype), torch.zeros((), dtype=dtype, device=m.device))
    v = torch.where(m, values.detach().to(dtype), torch.zeros((), dtype=dtype, device=m.device))
    order = _compress_order(m)
    r_c, v_c, m_c = r.gather(1, order), v.gather(1, order), m.gather(1, order)
    v_next = torch.cat([v_c[:, 1:] * m_c[:, 1:], torch.zeros_like(v_c[:, :1])], dim=1)
    delta = (r_c + gamma * v_next - v_c) * m_c
    adv_c = _suffix_discounted_sum(delta, gamma * lam) * m_c
    adv = torch.empty_like(adv_c).scatter_(1, order, adv_c)
    ret = torch.where(m, adv + v, torch.zeros_like(adv))
    return GAEResult(adv, ret)


@torch.no_grad()
def discounted_returns(token_rewards: Tensor, mask: Tensor, gamma: float = 1.0) -> Tensor:
    """Discounted reward-to-go ``G_t = sum_{l >= t} gamma^(k(t, l)) r_l`` over the selected tokens.

    REINFORCE (Williams, 1992) returns; equal to :func:`gae` with ``V = 0`` and ``lam = 1``. ``[B, T]``.
    """
    return gae(token_rewards, torch.zeros_like(token_rewards), mask, gamma=gamma, lam=1.0).advantages


@torch.no_grad()
def reinforce_pp_token_advantages(
    token_rewards: Tensor, mask: Tensor, gamma: float = 1.0, eps: float = 1e-6
) -> Tensor:
    """Token-level REINFORCE++ (Hu, 2025): discounted returns whitened over every selected token of the batch.

    ``A_t = (G_t - mean(G)) / (std(G) + eps)`` with ``G`` from :func:`discounted_returns`; typically the
    per-token rewards are the outcome reward on the last token minus a per-token KL penalty. ``[B, T]``.
    """
    returns = discounted_returns(token_rewards, mask, gamma)
    return masked_whiten(returns, mask.bool(), eps=eps)
