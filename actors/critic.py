"""CriticWorker: the PPO value model, one data-parallel rank on DeepSpeed (its own optimizer, LR, ZeRO stage).

A token-classification head with one output on the language model (``AutoModelForTokenClassification``,
``num_labels=1``), initialised from the policy checkpoint or from a reward model (a Llama-style
sequence-classification checkpoint's ``score`` head loads as this head). ``values`` are aligned like
log-probs: entry ``t`` is the value of the state before token ``t`` (the head on the hidden state at
``t - 1``); entry 0 is 0. It trains with the clipped value loss (``raylhf.algos.value``) on a
:class:`ValueBatch` (returns and the rollout-time values per token).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from actors.common import check_attn_implementation, micro_batches, pad
from actors.policy import PolicyWorker
from raylhf.algos.aggregate import aggregate
from raylhf.algos.value import value_loss
from raylhf.core.batch import Objective, TrainBatch


@dataclass
class ValueBatch(TrainBatch):
    returns: list[torch.Tensor] | None = None  # [L_i] value targets (GAE returns), 0 outside the loss mask
    old_values: list[torch.Tensor] | None = None  # [L_i] the critic's values when the rollout was scored


class CriticWorker(PolicyWorker):
    fault_group = "critic"

    def build_model(self) -> torch.nn.Module:
        from transformers import AutoConfig, AutoModelForTokenClassification

        config = AutoConfig.from_pretrained(self.model_path, trust_remote_code=self.trust_remote_code)
        config.num_labels = 1
        impl = self.cfg.get("attn_implementation")
        check_attn_implementation(impl, "critic.attn_implementation")
        extra = {} if impl is None else {"attn_implementation": impl}
        try:  # in self.load_dtype and, under ZeRO-3, partitioned as it loads (PolicyWorker.setup)
            return AutoModelForTokenClassification.from_pretrained(
                self.model_path, config=config, dtype=self.load_dtype, trust_remote_code=self.trust_remote_code,
                **extra)
        except (OSError, ValueError) as e:
            raise FileNotFoundError(f"cannot load a value model from critic.model_path={self.model_path!r} "
                                    f"(a causal LM or a sequence-classification checkpoint): {e}") from e

    def _forward_values(self, input_ids: list[torch.Tensor]) -> torch.Tensor:
        dev = self.engine.device
        ids = pad(input_ids, 0).to(dev)
        attn = pad([torch.ones_like(x) for x in input_ids], 0).to(dev)
        head = self.engine(input_ids=ids, attention_mask=attn).logits.squeeze(-1).float()  # [B, L]
        values = torch.zeros_like(head)
        values[:, 1:] = head[:, :-1]
        return values

    @torch.no_grad()
    def values(self, input_ids: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per-sequence values ``[L_i]`` (CPU), computed in length-sorted micro-batches."""
        self.engine.eval()
        out: list[torch.Tensor] = [torch.empty(0)] * len(input_ids)
        for idx in micro_batches([len(x) for x in input_ids], self.micro):
            v = self._forward_values([input_ids[i] for i in idx])
            for row, i in enumerate(idx):
                out[i] = v[row, : len(input_ids[i])].cpu()
        return out

    def micro_loss(self, sub: TrainBatch, obj: Objective) -> tuple[torch.Tensor, dict[str, float], float]:
        if not isinstance(sub, ValueBatch) or sub.returns is None or sub.old_values is None:
            raise TypeError("CriticWorker.train_step takes a ValueBatch with returns and old_values")
        dev = self.engine.device
        values = self._forward_values(sub.input_ids)
        mask = pad(sub.loss_mask, 0.0).to(dev, torch.float32)
        returns = pad(sub.returns, 0.0).to(dev, torch.float32)
        old = pad(sub.old_values, 0.0).to(dev, torch.float32)
        per_tok, m = value_loss(values, old, returns, mask, clip=obj.extra.get("value_clip"))
        loss = aggregate(per_tok, mask, "token-mean", global_tokens=obj.global_tokens)
        m["loss/value"] = float(loss.detach())
        m["loss/total"] = float(loss.detach())
        return loss, m, float(mask.sum())
