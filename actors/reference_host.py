"""The frozen reference model on the policy's own ranks (``reference.placement: policy``): no GPU of its own.

Under ZeRO-3 it is partitioned like the policy (built inside ``zero.Init`` while the policy's ``HfDeepSpeedConfig``
lives, then wrapped in a DeepSpeed engine without an optimizer, which gathers each layer for its forward): each rank
holds 1/N of it. Under ZeRO 0-2 each rank holds a full frozen copy on its device. Its log-probs are computed with the
reference section's micro-batch size and the policy's packing / chunking, as a ReferenceWorker would, on each rank's
share of the batch (ranks in lockstep under ZeRO-3, ``actors/lockstep.py``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from actors.common import batched_logprobs, device, load_causal_lm, logprob_chunk_size, packing_options


class ReferenceHost:
    """Mixin of the policy worker (needs its ``cfg``, ``model_path``, ``load_dtype``, ``trust_remote_code``)."""

    cfg: dict[str, Any]
    model_path: str
    load_dtype: torch.dtype
    trust_remote_code: bool

    def setup_reference(self, reference: Mapping[str, Any]) -> None:
        """Load the start checkpoint as this rank's frozen reference (``reference``: ``PolicyConfig.reference_config``)."""
        import deepspeed

        self.reference_cfg = dict(reference)
        self._reference_zero3 = int(self.cfg.get("zero_stage", 0)) == 3
        model = load_causal_lm(self.model_path, self.load_dtype, self.trust_remote_code,
                               attn_implementation=self.reference_cfg.get("attn_implementation"))
        model.requires_grad_(False)
        if self._reference_zero3:  # partitioned as it loaded (the policy's HfDeepSpeedConfig is alive)
            config = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
                      "zero_optimization": {"stage": 3},
                      "bf16": {"enabled": self.load_dtype == torch.bfloat16}, "steps_per_print": 10**9}
            self.reference_model: Any = deepspeed.initialize(model=model, config=config)[0]
        else:
            self.reference_model = model.to(device())
        self.reference_model.eval()

    def reference_numel(self) -> tuple[int, int]:
        """``(elements this rank holds, elements of the whole model)`` of the reference's parameters."""
        held = full = 0
        for p in self.reference_model.parameters():
            part = getattr(p, "ds_tensor", None)  # ZeRO-3: this rank's partition; p itself is empty
            held += part.numel() if part is not None else p.numel()
            full += int(getattr(p, "ds_numel", p.numel()))
        return held, full

    @torch.no_grad()
    def reference_logprobs(self, input_ids: list[torch.Tensor], temperature: float = 1.0) -> list[torch.Tensor]:
        """What ``ReferenceWorker.logprobs`` returns, for this rank's share of the sequences."""
        packing, max_tokens = packing_options(self.reference_cfg)
        return batched_logprobs(self.reference_model, input_ids, int(self.reference_cfg.get("micro_batch_size", 16)),
                                temperature, packing=packing, max_tokens=max_tokens,
                                chunk_size=logprob_chunk_size(self.reference_cfg), lockstep=self._reference_zero3)
