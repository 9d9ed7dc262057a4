"""PreferenceWorker: a policy rank whose loss is a DPO-family or KTO loss over sequence log-probs.

The math is ``raylhf.algos.dpo`` (already tested); this file only wires it: per-sequence response
log-probs from the one forward pass every trainer uses (``token_logprobs``), summed over the loss mask (the
losses that want per-token averages divide by the response length), matched chosen / rejected by group,
and normalized by the step's global number of pairs (``Objective.global_seqs``) so that the split into
micro-batches and ranks does not change the loss. :func:`preference_loss` is pure and is also what the
driver uses for held-out metrics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from actors.common import packing_options, pad
from actors.policy import PolicyWorker
from raylhf.algos.dpo import cpo_loss, dpo_loss, kto_loss, orpo_loss, simpo_loss
from raylhf.core.batch import Objective, TrainBatch
from raylhf.data.pairs import PreferenceBatch, group_micro_batches

PAIR_LOSSES = ("sigmoid", "ipo", "hinge", "cdpo", "simpo", "orpo", "cpo")
REFERENCE_FREE = ("simpo", "orpo", "cpo")


@dataclass(frozen=True)
class PreferenceLoss:
    """Which loss and its knobs (from ``dpo.*`` / ``kto.*``). ``loss_type`` is one of :data:`PAIR_LOSSES` or
    ``"kto"``; ``rpo_alpha`` adds ``rpo_alpha x`` the chosen replies' token-mean NLL (RPO)."""

    loss_type: str = "sigmoid"
    beta: float = 0.1
    label_smoothing: float = 0.0
    simpo_gamma: float = 1.0
    cpo_alpha: float = 1.0
    rpo_alpha: float | None = None
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0

    @property
    def uses_reference(self) -> bool:
        return self.loss_type not in REFERENCE_FREE


def pair_losses(spec: PreferenceLoss, chosen: torch.Tensor, rejected: torch.Tensor, chosen_len: torch.Tensor,
                rejected_len: torch.Tensor, ref_chosen: torch.Tensor | None = None,
                ref_rejected: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Per-pair losses ``[P]`` and metrics from summed response log-probs ``[P]`` and response lengths ``[P]``.

    IPO, SimPO and ORPO use per-token averages (sum / length; for IPO the reference's too), the others sums.
    """
    t, beta = spec.loss_type, spec.beta
    if t in ("sigmoid", "hinge", "cdpo", "ipo"):
        if ref_chosen is None or ref_rejected is None:
            raise ValueError(f"loss_type {t!r} needs reference log-probs")
        if t == "ipo":
            chosen, rejected = chosen / chosen_len, rejected / rejected_len
            ref_chosen, ref_rejected = ref_chosen / chosen_len, ref_rejected / rejected_len
        return dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=beta,
                        loss_type="sigmoid" if t == "cdpo" else t, label_smoothing=spec.label_smoothing)
    if t == "simpo":
        return simpo_loss(chosen, rejected, beta=beta, gamma=spec.simpo_gamma, label_smoothing=spec.label_smoothing,
                          chosen_lengths=chosen_len, rejected_lengths=rejected_len)
    if t == "orpo":
        return orpo_loss(chosen / chosen_len, rejected / rejected_len, beta=beta)
    if t == "cpo":
        return cpo_loss(chosen, rejected, beta=beta, label_smoothing=spec.label_smoothing,
                        chosen_nll=-chosen / chosen_len, alpha=spec.cpo_alpha)
    raise ValueError(f"unknown preference loss_type {t!r}; expected one of {', '.join(PAIR_LOSSES)} or kto")


def _pair_index(group_ids: list[int], chosen: list[bool]) -> tuple[list[int], list[int]]:
    """Positions of the chosen and the rejected sequence of every group, in first-seen group order."""
    c: dict[int, int] = {}
    r: dict[int, int] = {}
    for i, (g, is_c) in enumerate(zip(group_ids, chosen, strict=True)):
        (c if is_c else r)[g] = i
    if set(c) != set(r):
        raise ValueError(f"incomplete pairs in a micro-batch: groups {sorted(set(c) ^ set(r))[:8]}")
    order = list(dict.fromkeys(group_ids))
    return [c[g] for g in order], [r[g] for g in order]


def preference_loss(spec: PreferenceLoss, sums: torch.Tensor, lengths: torch.Tensor, batch: PreferenceBatch,
                    num_groups: float, chosen_tokens: float) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss of ``batch`` (a micro-batch, or a whole held-out set) normalized by the step's global counts, and its
    metrics: ``loss/pref`` (the per-pair / per-example losses summed, divided by ``num_groups``), ``loss/nll``
    (RPO: chosen-token NLL divided by ``chosen_tokens``), ``loss/total``, ``rewards/*`` (the implicit rewards:
    chosen, rejected, margins, accuracies), ``logps/chosen`` / ``logps/rejected`` (mean summed log-probs),
    ``logps/accuracies`` (pairs: the share whose chosen reply has the higher per-token average log-prob) and the
    loss's own extras under ``<loss_type>/``. ``sums`` / ``lengths``: ``[B]`` per sequence of ``batch``."""
    dev = sums.device
    ref = None if batch.ref_logps is None else torch.tensor(batch.ref_logps, dtype=sums.dtype, device=dev)
    chosen_flags = torch.tensor(batch.chosen, dtype=torch.bool, device=dev)
    if spec.loss_type == "kto":
        if ref is None or batch.kl_ref_point is None:
            raise ValueError("KTO needs reference log-probs and the step's reference point (kl_ref_point)")
        losses, m = kto_loss(sums, ref, chosen_flags, batch.kl_ref_point, beta=spec.beta,
                             desirable_weight=spec.desirable_weight, undesirable_weight=spec.undesirable_weight)
        n_d = m.pop("count/desirable")
        m["kto/desirable_frac"] = n_d / max(1.0, n_d + m.pop("count/undesirable"))
        m["kto/kl"] = m.pop("kl")
    else:
        c, r = _pair_index(batch.group_ids, batch.chosen)
        losses, m = pair_losses(spec, sums[c], sums[r], lengths[c], lengths[r],
                                None if ref is None else ref[c], None if ref is None else ref[r])
        m = {k if k.startswith("rewards/") else f"{spec.loss_type}/{k}": v for k, v in m.items()}
        with torch.no_grad():  # does the policy itself rank the chosen reply first (per-token average log-prob)?
            m["logps/accuracies"] = float((sums[c] / lengths[c] > sums[r] / lengths[r]).float().mean())
    with torch.no_grad():
        m["logps/chosen"] = float(sums[chosen_flags].mean()) if bool(chosen_flags.any()) else 0.0
        m["logps/rejected"] = float(sums[~chosen_flags].mean()) if bool((~chosen_flags).any()) else 0.0
    pref = losses.sum() / max(1.0, num_groups)
    loss = pref
    m["loss/pref"] = float(pref.detach())
    if spec.rpo_alpha:
        nll = -sums[chosen_flags].sum() / max(1.0, chosen_tokens)
        loss = loss + spec.rpo_alpha * nll
        m["loss/nll"] = float(nll.detach())
    m["loss/total"] = float(loss.detach())
    return loss, m


class PreferenceWorker(PolicyWorker):
    """A policy rank with the DPO-family / KTO loss (``preference``: a :class:`PreferenceLoss`)."""

    def __init__(self, *args: Any, preference: PreferenceLoss | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.spec = preference or PreferenceLoss()

    def micro_batches(self, batch: TrainBatch) -> list[list[int]]:
        """Whole pairs (or KTO examples) per micro-batch: at most ``policy.micro_batch_size`` sequences, or
        ``policy.max_tokens_per_micro_batch`` tokens (packed or padded, as ``policy.packing`` says)."""

        assert isinstance(batch, PreferenceBatch)
        packing, max_tokens = packing_options(self.cfg)
        return group_micro_batches(batch.group_ids, [len(x) for x in batch.input_ids], self.micro, max_tokens, packing)

    def micro_loss(self, sub: TrainBatch, obj: Objective) -> tuple[torch.Tensor, dict[str, float], float]:
        """The micro-batch's loss (normalized by the step's pairs ``obj.global_seqs`` and, for the NLL term, the
        chosen tokens ``obj.global_tokens``), its metrics and its weight in the metric means (its pairs)."""
        assert isinstance(sub, PreferenceBatch)
        logp, _, _ = self.token_logprobs(sub.input_ids, obj.temperature)
        mask = pad(sub.loss_mask, 0.0).to(logp.device, torch.float32)
        sums, lengths = (logp * mask).sum(-1), mask.sum(-1).clamp(min=1.0)
        loss, m = preference_loss(self.spec, sums, lengths, sub, obj.global_seqs or float(sub.num_groups()),
                                  obj.global_tokens or float(sub.chosen_tokens()))
        return loss, m, float(sub.num_groups())

    def train_step(self, batch: TrainBatch, obj: Objective) -> dict[str, float]:
        """PolicyWorker.train_step; the metric means inside the rank are weighted by pairs, ``train_tokens`` is
        then set to the trained tokens (it weights the ranks when the driver reduces them)."""
        out = super().train_step(batch, obj)
        out["train_tokens"] = float(batch.num_tokens())
        return out
