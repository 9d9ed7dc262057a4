"""ReferenceWorker: the frozen start policy; forward passes only (skipped when the KL coefficient is 0)."""

from __future__ import annotations

from typing import Any

import torch

from actors.common import (
    batched_logprobs,
    device,
    load_causal_lm,
    logprob_chunk_size,
    packing_options,
    resolve_dtype,
    set_threads,
)
from actors.group import BaseWorker


class ReferenceWorker(BaseWorker):
    def __init__(
        self,
        rank: int = 0,
        world_size: int = 1,
        master_addr: str = "",
        master_port: int = 0,
        *,
        model_path: str = "",
        reference: dict[str, Any] | None = None,
        dtype: str = "auto",
        trust_remote_code: bool = False,
    ) -> None:
        super().__init__(rank, world_size, master_addr, master_port)
        self.model_path, self.cfg, self.dtype, self.trust = model_path, dict(reference or {}), dtype, trust_remote_code

    def setup(self) -> None:
        set_threads(self.cfg.get("num_cpus", 1))
        # the driver passes policy.attn_implementation and policy.logprob_chunk_size (as it does policy.packing)
        self.model = load_causal_lm(self.model_path, resolve_dtype(self.dtype), self.trust,
                                    attn_implementation=self.cfg.get("attn_implementation")).to(device()).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def logprobs(self, input_ids: list[torch.Tensor], temperature: float = 1.0) -> list[torch.Tensor]:
        packing, max_tokens = packing_options(self.cfg)  # the driver passes policy.packing (default: on)
        return batched_logprobs(self.model, input_ids, int(self.cfg.get("micro_batch_size", 16)), temperature,
                                packing=packing, max_tokens=max_tokens, chunk_size=logprob_chunk_size(self.cfg))
