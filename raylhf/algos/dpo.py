"""Offline preference-optimization losses and the Bradley-Terry reward-model loss.

Inputs are per-sequence log-probs ``[B]`` of the chosen / rejected responses: *summed* over the response
tokens unless a function says it wants them *averaged* (SimPO, ORPO). Every function returns the
per-example losses ``[B]`` (take ``.mean()``, or divide the sum by a global pair count for micro-batch
invariance) and a metrics dict with at least ``rewards/chosen``, ``rewards/rejected``,
``rewards/margins`` and ``rewards/accuracies`` (batch means of the implicit rewards, their difference and
the fraction of pairs where the chosen reward is larger).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from raylhf.algos.utils import to_float, upcast

__all__ = [
    "bradley_terry_loss",
    "cpo_loss",
    "dpo_loss",
    "kto_loss",
    "kto_reference_point",
    "log1mexp",
    "orpo_loss",
    "simpo_loss",
]

DPOLossType = Literal["sigmoid", "ipo", "hinge"]


def _pair_metrics(chosen_rewards: Tensor, rejected_rewards: Tensor) -> dict[str, float]:
    with torch.no_grad():
        c, r = chosen_rewards.detach().float(), rejected_rewards.detach().float()
        return {
            "rewards/chosen": to_float(c.mean()),
            "rewards/rejected": to_float(r.mean()),
            "rewards/margins": to_float((c - r).mean()),
            "rewards/accuracies": to_float((c > r).float().mean()),
        }


def _smoothed_logistic(z: Tensor, label_smoothing: float) -> Tensor:
    """``-(1 - eps) * log(sigmoid(z)) - eps * log(sigmoid(-z))``."""
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    loss = -F.logsigmoid(z)
    if label_smoothing > 0:
        loss = (1.0 - label_smoothing) * loss - label_smoothing * F.logsigmoid(-z)
    return loss


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float = 0.1,
    loss_type: DPOLossType | str = "sigmoid",
    label_smoothing: float = 0.0,
) -> tuple[Tensor, dict[str, float]]:
    """DPO-family pairwise losses on the log-ratio margin ``h = (pi_c - ref_c) - (pi_r - ref_r)``.

    * ``"sigmoid"``: DPO (Rafailov et al., 2023), ``L = -log sigmoid(beta * h)``; with
      ``label_smoothing = eps > 0`` it is conservative DPO (cDPO, Mitchell, 2023, "A note on DPO with
      noisy preferences"): ``L = -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h)``;
    * ``"ipo"``: IPO (Azar et al., 2023, Eq. 17), ``L = (h - 1 / (2 beta))^2`` (``beta`` is the paper's
      ``tau``). The IPO authors' results use per-token *averaged* log-probs -- pass averages for that;
    * ``"hinge"``: SLiC-style hinge (Zhao et al., 2023), ``L = max(0, 1 - beta * h)``.

    Implicit rewards (Rafailov et al.): ``beta * (pi - ref)`` for chosen and rejected.
    """
    if loss_type != "sigmoid" and label_smoothing:
        raise ValueError(f"label_smoothing only applies to loss_type='sigmoid' (got {loss_type!r})")
    chosen_logratios = policy_chosen_logps - ref_chosen_logps.detach()
    rejected_logratios = policy_rejected_logps - ref_rejected_logps.detach()
    h = chosen_logratios - rejected_logratios
    if loss_type == "sigmoid":
        losses = _smoothed_logistic(beta * h, label_smoothing)
    elif loss_type == "ipo":
        losses = (h - 1.0 / (2.0 * beta)) ** 2
    elif loss_type == "hinge":
        losses = torch.relu(1.0 - beta * h)
    else:
        raise ValueError(f"unknown DPO loss_type {loss_type!r}; expected 'sigmoid', 'ipo' or 'hinge'")
    metrics = _pair_metrics(beta * chosen_logratios, beta * rejected_logratios)
    return losses, metrics


def simpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    *,
    beta: float = 2.0,
    gamma: float = 1.0,
    label_smoothing: float = 0.0,
    chosen_lengths: Tensor | None = None,
    rejected_lengths: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """SimPO (Meng et al., 2024): reference-free, length-normalized, with a target reward margin ``gamma``.

    ``L = -log sigmoid(beta * avg_c - beta * avg_r - gamma)`` where ``avg = logp(y|x) / |y|``, the per-token
    *average* log-prob. Pass averages, or summed log-probs together with ``chosen_lengths`` /
    ``rejected_lengths`` (token counts). ``label_smoothing`` gives the conservative (cDPO-style) variant.
    Rewards: ``beta * avg``.
    """
    c, r = policy_chosen_logps, policy_rejected_logps
    if chosen_lengths is not None:
        c = c / chosen_lengths.to(c.dtype).clamp(min=1)
    if rejected_lengths is not None:
        r = r / rejected_lengths.to(r.dtype).clamp(min=1)
    losses = _smoothed_logistic(beta * (c - r) - gamma, label_smoothing)
    return losses, _pair_metrics(beta * c, beta * r)


def cpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    chosen_nll: Tensor | None = None,
    alpha: float = 1.0,
) -> tuple[Tensor, dict[str, float]]:
    """CPO (Xu et al., 2024, "Contrastive Preference Optimization"): DPO without the reference model plus a
    behaviour-cloning NLL term on the chosen response.

    ``L = -log sigmoid(beta * (pi_c - pi_r)) + alpha * NLL_c`` (with ``label_smoothing`` the cDPO-style
    smoothed logistic). ``chosen_nll``: per-example NLL ``[B]`` (e.g. the token-mean cross-entropy of the
    chosen response); ``None`` drops the NLL term. Rewards: ``beta * pi``.
    """
    pref = _smoothed_logistic(beta * (policy_chosen_logps - policy_rejected_logps), label_smoothing)
    losses = pref if chosen_nll is None else pref + alpha * chosen_nll
    metrics = _pair_metrics(beta * policy_chosen_logps, beta * policy_rejected_logps)
    metrics["pref_loss"] = to_float(pref.detach().mean())
    if chosen_nll is not None:
        metrics["nll_loss"] = to_float(chosen_nll.detach().float().mean())
    return losses, metrics


def log1mexp(x: Tensor) -> Tensor:
    """``log(1 - exp(x))`` for ``x < 0``, numerically stable (Maechler, 2012): ``log(-expm1(x))`` for
    ``x > -log 2``, else ``log1p(-exp(x))``. ``x`` is clamped to ``<= -1e-7`` (``x = 0`` would be ``-inf``)."""
    x = x.clamp(max=-1e-7)
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def orpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    *,
    beta: float = 0.1,
    chosen_nll: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """ORPO (Hong et al., 2024, "Monolithic Preference Optimization without Reference Model").

    Inputs are per-token *averaged* log-probs ``a = log P(y|x) / |y|``. With ``odds(y) = P / (1 - P)``::

        log_odds = (a_c - a_r) - (log(1 - exp(a_c)) - log(1 - exp(a_r)))
        L        = NLL_c - beta * log sigmoid(log_odds)          (beta = the paper's lambda)

    ``chosen_nll`` defaults to ``-a_c`` (the token-mean NLL of the chosen response). Rewards:
    ``beta * a``; extra metrics ``log_odds_ratio`` (mean ``log sigmoid(log_odds)``), ``log_odds_chosen``
    (mean ``log_odds``) and ``nll_loss``.
    """
    c, r = upcast(policy_chosen_logps), upcast(policy_rejected_logps)
    log_odds = (c - r) - (log1mexp(c) - log1mexp(r))
    ratio = F.logsigmoid(log_odds)
    nll = -c if chosen_nll is None else upcast(chosen_nll)
    losses = nll - beta * ratio
    metrics = _pair_metrics(beta * c, beta * r)
    metrics["log_odds_ratio"] = to_float(ratio.detach().mean())
    metrics["log_odds_chosen"] = to_float(log_odds.detach().mean())
    metrics["nll_loss"] = to_float(nll.detach().mean())
    return losses, metrics


def kto_reference_point(policy_kl_logps: Tensor, ref_kl_logps: Tensor) -> Tensor:
    """KTO reference point ``z0 = max(0, mean(pi(y'|x) - ref(y'|x)))`` over mismatched pairs ``(x, y')``.

    Detached (Ethayarajh et al., 2024, Sec. 4.1). With data parallelism, all-reduce (average) the mean
    across ranks before clamping.
    """
    return upcast(policy_kl_logps.detach() - ref_kl_logps.detach()).mean().clamp(min=0.0)


def kto_loss(
    policy_logps: Tensor,
    ref_logps: Tensor,
    desirable: Tensor,
    kl_ref_point: Tensor | float,
    *,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[Tensor, dict[str, float]]:
    """KTO (Ethayarajh et al., 2024, "KTO: Model Alignment as Prospect Theoretic Optimization", Eq. 7).

    Unpaired examples, ``desirable: [B]`` bool. With ``r = pi - ref`` (summed log-probs) and the
    reference point ``z0`` (see :func:`kto_reference_point`)::

        L = w_D * (1 - sigmoid(beta * (r - z0)))     for desirable examples
        L = w_U * (1 - sigmoid(beta * (z0 - r)))     for undesirable examples

    Rewards ``beta * r``; ``rewards/chosen`` / ``rewards/rejected`` are means over the desirable /
    undesirable examples (``0`` when there are none), ``rewards/margins`` their difference, and
    ``rewards/accuracies`` the fraction of examples whose reward sign matches the label. Also ``kl`` (``z0``).
    """
    d = desirable.bool()
    z0 = torch.as_tensor(kl_ref_point, dtype=policy_logps.dtype, device=policy_logps.device).detach()
    logratio = policy_logps - ref_logps.detach()
    loss_d = desirable_weight * (1.0 - torch.sigmoid(beta * (logratio - z0)))
    loss_u = undesirable_weight * (1.0 - torch.sigmoid(beta * (z0 - logratio)))
    losses = torch.where(d, loss_d, loss_u)
    with torch.no_grad():
        rewards = (beta * logratio).detach().float()
        n_d, n_u = int(d.sum().item()), int((~d).sum().item())
        chosen = to_float(rewards[d].mean()) if n_d else 0.0
        rejected = to_float(rewards[~d].mean()) if n_u else 0.0
        correct = torch.where(d, rewards > 0, rewards < 0).float().mean()
        metrics = {
            "rewards/chosen": chosen,
            "rewards/rejected": rejected,
            "rewards/margins": chosen - rejected,
            "rewards/accuracies": to_float(correct),
            "kl": to_float(z0),
            "count/desirable": float(n_d),
            "count/undesirable": float(n_u),
        }
    return losses, metrics


def bradley_terry_loss(
    chosen_rewards: Tensor,
    rejected_rewards: Tensor,
    *,
    margin: Tensor | float | None = None,
    center_coef: float | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Bradley-Terry (1952) reward-model loss, as in InstructGPT (Ouyang et al., 2022).

    ``L = -log sigmoid(r_c - r_r - m)`` with the optional preference margin ``m`` (Llama 2, Touvron et al.,
    2023). ``center_coef`` adds ``c * (r_c + r_r)^2`` to keep rewards centred (Eisenstein et al., 2023).
    Inputs are scalar reward-head outputs ``[B]``; metrics use them as the rewards.
    """
    diff = chosen_rewards - rejected_rewards
    if margin is not None:
        diff = diff - margin
    losses = -F.logsigmoid(diff)
    if center_coef:
        losses = losses + center_coef * (chosen_rewards + rejected_rewards) ** 2
    return losses, _pair_metrics(chosen_rewards, rejected_rewards)
