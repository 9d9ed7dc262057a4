"""Typed data that crosses actor boundaries: rollouts, the generic train batch, the objective spec.

The policy worker does not know which algorithm runs: it receives a ``TrainBatch`` (token ids,
per-token loss mask, per-token advantages, optional reference / old / rollout log-probs, optional
per-token cross-entropy weights) and an ``Objective`` (term weights and clip settings).
GRPO, RLOO, PPO and SFT differ only in how the driver fills these.

Per-sequence tensors are 1-D and aligned with ``input_ids``: entry ``t`` of a log-prob / mask /
advantage tensor refers to predicting token ``t`` from tokens ``< t`` (entry 0 is always unused).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch


@dataclass
class Rollout:
    """One sampled completion of one prompt."""

    prompt_index: int  # index into the step's prompt list
    prompt_ids: list[int]
    response_ids: list[int]
    logprobs: list[float]  # sampling log-prob of every response token (vLLM, processed)
    finish_reason: str  # "stop" | "length"
    text: str = ""
    # multi-turn episodes (raylhf/agent): per response token 1.0 sampled by the model, 0.0 written by the
    # environment (tool answers: no loss); None: every response token was sampled
    response_mask: list[float] | None = None
    episode: dict[str, Any] | None = None  # turns, tool_calls, tool_errors (and env_reward) of an agent episode
    version: int = 0  # the policy weight version (weight syncs done) that sampled it (raylhf/driver/producer.py)
    # partial rollouts (rollout.partial): the weight version that sampled each response token, when a weight sync
    # landed while the request was in flight; None: every token has ``version``
    versions: list[int] | None = None

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"


@dataclass
class TrainBatch:
    input_ids: list[torch.Tensor]  # [L_i] long
    loss_mask: list[torch.Tensor]  # [L_i] float: 1 where the token is trained on
    advantages: list[torch.Tensor] | None = None  # [L_i] float (policy-gradient term)
    old_logprobs: list[torch.Tensor] | None = None  # [L_i] trainer log-probs before this update
    rollout_logprobs: list[torch.Tensor] | None = None  # [L_i] sampler log-probs (IS correction)
    ref_logprobs: list[torch.Tensor] | None = None  # [L_i] reference log-probs (KL term)
    ce_weights: list[torch.Tensor] | None = None  # [L_i] cross-entropy weights (loss_scale)

    def __len__(self) -> int:
        return len(self.input_ids)

    def select(self, idx: list[int]) -> TrainBatch:
        kw: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            kw[f.name] = None if v is None else [v[i] for i in idx]
        return type(self)(**kw)  # subclasses (a trainer's extra per-sequence fields) keep their type

    def shard(self, rank: int, world: int) -> TrainBatch:
        n = len(self)
        if n % world:
            raise ValueError(f"batch of {n} sequences does not split evenly over {world} ranks")
        per = n // world
        return self.select(list(range(rank * per, (rank + 1) * per)))

    def num_tokens(self) -> int:
        return int(sum(float(m.sum()) for m in self.loss_mask))

    def num_trained_seqs(self) -> int:
        """Sequences with at least one trained token (a fully masked one is no sequence of the loss)."""
        return sum(1 for m in self.loss_mask if float(m.sum()) > 0)


@dataclass
class Objective:
    """Weights and settings of the generic per-token objective the policy worker runs."""

    pg_coef: float = 1.0
    kl_coef: float = 0.0
    kl_estimator: str = "k3"
    ce_coef: float = 0.0
    entropy_coef: float = 0.0
    clip_low: float = 0.2
    clip_high: float = 0.2
    dual_clip: float | None = None
    is_level: str = "token"  # "token" | "sequence" (GSPO)
    tis_cap: float | None = None
    # off-policy IS correction on the rollout log-probs (raylhf.algos.is_correction): its mode and its ratio
    # thresholds; is_high None means tis_cap, and no threshold at all means no correction (the default)
    is_correction: str = "token_tis"
    is_low: float | None = None
    is_high: float | None = None
    loss_agg: str = "token-mean"
    norm_const: float | None = None  # Dr.GRPO constant (max response length)
    temperature: float = 1.0  # logits are divided by it (matches the sampler)
    # global normalizers for the whole optimizer step (all ranks, all micro-batches)
    global_tokens: float | None = None
    global_seqs: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def with_counts(self, batch: TrainBatch) -> Objective:
        """This objective with the global normalizers of one optimizer step over ``batch``.

        They match :func:`raylhf.algos.aggregate.count_tokens_and_seqs`: trained tokens, and sequences with
        at least one trained token (fully masked ones, e.g. ``grpo.overlong=mask``, count for nothing).
        """
        return replace(self, global_tokens=float(batch.num_tokens()), global_seqs=float(batch.num_trained_seqs()))
