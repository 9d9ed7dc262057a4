"""TeacherWorker: the frozen teacher of on-policy distillation (GKD); forward passes only, like the reference.

For every sequence it returns the teacher's next-token distributions at the positions the student is trained
on, as a :class:`TeacherDists`: the top-k log-probs and their token ids plus, per position, the log-prob each
of the other ``V - k`` tokens gets when the rest of the mass is spread evenly (``tail``); or, with
``top_k=0``, the full log-prob rows. Top-k costs ``8k + 4`` bytes per position (float32 values, int32 ids,
one float32 tail), the full rows ``4 V`` bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from actors.common import device, load_causal_lm, micro_batches, pad, resolve_dtype, set_threads
from actors.group import BaseWorker


@dataclass
class TeacherDists:
    """Teacher log-probs at ``n`` positions of one sequence: ``values [n, k]`` with ``ids [n, k]`` and
    ``tail [n]`` (top-k), or ``values [n, V]`` with ``ids`` / ``tail`` None (full)."""

    values: torch.Tensor
    ids: torch.Tensor | None = None
    tail: torch.Tensor | None = None

    def head(self, n: int) -> TeacherDists:
        """The first ``n`` positions (``head(0)``: none, for a padding sequence that trains no token)."""
        return TeacherDists(self.values[:n], None if self.ids is None else self.ids[:n],
                            None if self.tail is None else self.tail[:n])

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.values, self.ids, self.tail) if t is not None)

    def dense(self, vocab_size: int) -> torch.Tensor:
        """Full log-prob rows ``[n, V]`` (float32): top-k entries as sent, every other token ``tail``."""
        if self.ids is None:
            return self.values.float()
        assert self.tail is not None
        out = self.tail.float().unsqueeze(-1).expand(-1, vocab_size).clone()
        return out.scatter(-1, self.ids.long(), self.values.float())


def compress(logp: torch.Tensor, top_k: int) -> TeacherDists:
    """``TeacherDists`` of log-prob rows ``[n, V]``: the top ``top_k`` and the evenly spread rest (0: all)."""
    vocab = logp.shape[-1]
    if top_k <= 0 or top_k >= vocab:
        return TeacherDists(logp.float().contiguous())
    values, ids = logp.topk(top_k, dim=-1)
    rest = (-torch.logsumexp(values.double(), dim=-1).exp()).log1p().clamp(min=-1e4)  # log(1 - top-k mass)
    tail = (rest - math.log(vocab - top_k)).clamp(min=-1e4)  # log of each other token's share, finite
    return TeacherDists(values.float().contiguous(), ids.to(torch.int32).contiguous(), tail.float())


class TeacherWorker(BaseWorker):
    def __init__(
        self,
        rank: int = 0,
        world_size: int = 1,
        master_addr: str = "",
        master_port: int = 0,
        *,
        model_path: str = "",
        teacher: dict[str, Any] | None = None,
        trust_remote_code: bool = False,
    ) -> None:
        super().__init__(rank, world_size, master_addr, master_port)
        self.model_path, self.cfg, self.trust = model_path, dict(teacher or {}), trust_remote_code

    def setup(self) -> None:
        set_threads(self.cfg.get("num_cpus", 1))
        dtype = resolve_dtype(self.cfg.get("dtype", "auto"))
        self.model = load_causal_lm(self.model_path, dtype, self.trust).to(device()).eval().requires_grad_(False)

    def vocab_size(self) -> int:
        return int(self.model.get_output_embeddings().weight.shape[0])

    @torch.no_grad()
    def distributions(self, input_ids: list[torch.Tensor], targets: list[torch.Tensor], top_k: int,
                      temperature: float = 1.0) -> list[TeacherDists]:
        """Per sequence, the teacher's distributions over token ``t`` (given the tokens before it) for every
        ``t`` in ``targets`` (1-D positions, ``>= 1``), at ``temperature``; see :func:`compress`."""
        out: list[TeacherDists | None] = [None] * len(input_ids)
        dev = device()
        for idx in micro_batches([len(x) for x in input_ids], int(self.cfg.get("micro_batch_size", 32))):
            ids = pad([input_ids[i] for i in idx], 0).to(dev)
            attn = pad([torch.ones_like(input_ids[i]) for i in idx], 0).to(dev)
            logits = self.model(input_ids=ids, attention_mask=attn, use_cache=False).logits
            for row, i in enumerate(idx):
                pos = targets[i].long().to(dev) - 1  # logits at t-1 predict token t
                logp = F.log_softmax(logits[row, pos].float() / temperature, dim=-1)
                out[i] = compress(logp.cpu(), top_k)
        assert all(d is not None for d in out)
        return out  # type: ignore[return-value]
