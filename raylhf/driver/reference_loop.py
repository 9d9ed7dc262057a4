"""Driver side of the preference trainers (``raylhf.dpo``, ``raylhf.kto``), on the shared offline loop.

* the reference group (the frozen start policy, ``actors/reference.py``) for the losses that have one; its
  summed response log-probs come per batch (``prepare``), or, with ``precompute_ref``, once for the whole
  dataset before training (cached on disk, keyed by the model files and the token ids), after which the
  reference actor is stopped; the held-out set's are always computed once;
* KTO's reference point per step: ``max(0, mean(policy - reference))`` over the batch's KL sequences (each
  prompt with another row's reply), from the policy group before the update;
* held-out metrics (``eval/*``) with the training loss's own function (``actors.dpo_worker.preference_loss``);
* the default runs' generation check: greedy accuracy of a checkpoint on held-out prompts.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from actors.dpo_worker import PreferenceLoss, PreferenceWorker, preference_loss
from actors.group import ActorGroup
from actors.reference import ReferenceWorker
from raylhf.algos.dpo import kto_reference_point as z0_of
from raylhf.core.batch import Objective
from raylhf.data.pairs import (
    EncodedPair,
    EncodedSeq,
    EncodedUnpaired,
    PreferenceBatch,
    model_fingerprint,
    sequence_sums,
)
from raylhf.driver.cluster import cache_root, init_ray
from raylhf.driver.offline import OfflineSpec, RowBatches, run_offline
from raylhf.driver.startup import gpus_per_rank, required_cpus

Row = EncodedPair | EncodedUnpaired


def row_seqs(rows: Sequence[Row]) -> list[EncodedSeq]:
    """Every sequence of the rows that needs reference log-probs (a pair's two replies; a KTO example and its
    KL sequence)."""
    out: list[EncodedSeq] = []
    for r in rows:
        out += [r.chosen, r.rejected] if isinstance(r, EncodedPair) else [r.seq, r.kl]
    return out


def start_reference(cfg: Any, model_path: str) -> Any:
    """One ReferenceWorker on ``model_path`` (the start policy), sized by ``reference.*``."""

    return ActorGroup(
        ReferenceWorker, 1, name="reference", num_cpus=cfg.reference.num_cpus, num_gpus=gpus_per_rank(None),
        init_kwargs=dict(model_path=model_path, reference=cfg.policy.reference_config(cfg.reference), dtype=cfg.model.dtype,
                         trust_remote_code=cfg.model.trust_remote_code),
        sizing="reference.num_cpus", call_timeout_s=cfg.runtime.phase_timeout_s or None,
    )


def group_sums(group: Any, input_ids: Sequence[torch.Tensor], masks: Sequence[torch.Tensor]) -> list[float]:
    """Summed response log-probs of sequences from a policy or reference group (``logprobs`` split over ranks)."""
    if not input_ids:
        return []
    parts = group.call_split("logprobs", list(input_ids), 1.0)
    return sequence_sums([x for part in parts for x in part], masks)


def _tensors(seqs: Sequence[EncodedSeq]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    return ([torch.tensor(s.input_ids, dtype=torch.long) for s in seqs],
            [torch.tensor(s.loss_mask, dtype=torch.float32) for s in seqs])


def _cache_key(model_path: str, seqs: Sequence[EncodedSeq]) -> str:
    h = hashlib.sha256(json.dumps([os.path.abspath(model_path), model_fingerprint(model_path)]).encode())
    for s in seqs:
        h.update(json.dumps([s.input_ids, s.loss_mask]).encode())
    return h.hexdigest()[:16]


def fill_reference(reference: Any, seqs: Sequence[EncodedSeq], model_path: str,
                   cache_dir: str | Path | None = None) -> bool:
    """Set ``ref_logp`` of every sequence from the reference group; with ``cache_dir`` read / write the values in
    a file keyed by the model files and the tokens. Returns whether the cache answered."""
    path = Path(cache_dir) / f"{_cache_key(model_path, seqs)}.pt" if cache_dir is not None else None
    if path is not None and path.is_file():
        values = torch.load(path)
        if len(values) == len(seqs):
            for s, v in zip(seqs, values, strict=True):
                s.ref_logp = float(v)
            return True
    ids, masks = _tensors(seqs)
    values = group_sums(reference, ids, masks)
    for s, v in zip(seqs, values, strict=True):
        s.ref_logp = v
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(values, tmp)
        tmp.replace(path)
    return False


def reference_prepare(reference: Any) -> Callable[[Any, PreferenceBatch], PreferenceBatch]:
    """The per-batch step: the reference's summed log-probs of the batch's sequences (and KL sequences)."""

    def prepare(policy: Any, batch: PreferenceBatch) -> PreferenceBatch:
        if batch.ref_logps is None:
            batch = replace(batch, ref_logps=group_sums(reference, batch.input_ids, batch.loss_mask))
        if batch.kl_input_ids is not None and batch.kl_ref_logps is None:
            assert batch.kl_loss_mask is not None
            batch = replace(batch, kl_ref_logps=group_sums(reference, batch.kl_input_ids, batch.kl_loss_mask))
        return batch

    return prepare


def kto_reference_point(policy: Any, batch: PreferenceBatch) -> PreferenceBatch:
    """The batch with KTO's reference point ``z0`` (policy before the update vs reference, over its KL
    sequences; ``raylhf.algos.dpo.kto_reference_point``) and without the KL sequences."""

    assert batch.kl_input_ids is not None and batch.kl_loss_mask is not None and batch.kl_ref_logps is not None
    pol = group_sums(policy, batch.kl_input_ids, batch.kl_loss_mask)
    z0 = float(z0_of(torch.tensor(pol, dtype=torch.float64), torch.tensor(batch.kl_ref_logps, dtype=torch.float64)))
    return replace(batch, kl_input_ids=None, kl_loss_mask=None, kl_ref_logps=None, kl_ref_point=z0)


def evaluate_heldout(spec: PreferenceLoss, policy: Any, batch: PreferenceBatch) -> dict[str, float]:
    """``eval/*``: the loss and its metrics on the whole held-out batch (policy log-probs now)."""
    if not len(batch):
        return {}
    if spec.loss_type == "kto":
        batch = kto_reference_point(policy, batch)
    sums = torch.tensor(group_sums(policy, batch.input_ids, batch.loss_mask), dtype=torch.float64)
    lengths = torch.tensor([float(m.sum()) for m in batch.loss_mask], dtype=torch.float64).clamp(min=1.0)
    loss, m = preference_loss(spec, sums, lengths, batch, batch.num_groups(), batch.chosen_tokens())
    m["loss"] = float(loss)
    return {f"eval/{k}": v for k, v in m.items() if k != "loss/total"}


def run_preference(cfg: Any, algo: Any, name: str, spec: PreferenceLoss, model_path: str, rows: Sequence[Row],
                   heldout: Sequence[Row], collate: Callable[[Sequence[Any]], PreferenceBatch], summary: str) -> Any:
    """Train ``spec`` on ``rows`` with the shared offline loop (``raylhf.driver.offline.run_offline``); ``algo`` is the
    trainer's section (``num_steps`` / ``epochs`` / ``batch_size`` / ``precompute_ref`` / ``eval_every``).
    Returns the RunResult."""

    num_steps = algo.num_steps or max(1, len(rows) // algo.batch_size) * algo.epochs
    init_ray(cfg.ray, required_cpus(cfg, ["policy", *(["reference"] if spec.uses_reference else [])]))
    reference = start_reference(cfg, model_path) if spec.uses_reference else None
    try:
        prepare: Callable[[Any, PreferenceBatch], PreferenceBatch] | None = None
        if reference is not None:
            fill_reference(reference, row_seqs(heldout), model_path)
            if algo.precompute_ref:
                cache = algo.ref_cache_dir or cache_root() / "ref_logps"
                hit = fill_reference(reference, row_seqs(rows), model_path, cache)
                print(f"[{name}] reference log-probs of {len(rows)} rows {'read from' if hit else 'cached in'} "
                      f"{cache}; reference model stopped", flush=True)
                reference.shutdown()
                reference = None
            else:
                prepare = reference_prepare(reference)
        if spec.loss_type == "kto":
            add_ref = prepare

            def prepare(policy: Any, batch: PreferenceBatch) -> PreferenceBatch:
                return kto_reference_point(policy, add_ref(policy, batch) if add_ref else batch)

        held_batch = collate(list(heldout)) if heldout else None
        run = OfflineSpec(
            name=name, num_steps=num_steps, objective=Objective(pg_coef=0.0),
            batches=RowBatches(list(rows), algo.batch_size, cfg.data.shuffle, cfg.data.seed, collate),
            worker_cls=PreferenceWorker, worker_extra={"preference": spec},
            objective_for=lambda obj, b: replace(obj, global_seqs=float(b.num_groups()),
                                                 global_tokens=float(b.chosen_tokens())),
            prepare=prepare,
            evaluate=(lambda policy, step: evaluate_heldout(spec, policy, held_batch)) if held_batch else None,
            eval_every=algo.eval_every,
            curves=["loss/total", "rewards/accuracies", "eval/rewards/accuracies", "rewards/margins"],
            summary=summary,
        )
        return run_offline(cfg, run, model_path)
    finally:
        if reference is not None:
            reference.shutdown()
