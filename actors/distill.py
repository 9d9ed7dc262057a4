"""DistillWorker: a PolicyWorker rank trained to match a teacher's next-token distributions (GKD).

The loss is the generalized Jensen-Shannon divergence (``raylhf/algos/token_losses.py::generalized_jsd``)
between the student's full-vocabulary distribution and the teacher's at every trained token of a
:class:`DistillBatch`, summed and divided by the step's global trained-token count. The teacher's side
arrives with the batch (``actors/teacher.py``: top-k log-probs plus the evenly spread rest, or full rows).
The student is a causal LM, so its weights sync into the rollout engines as the policy's do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F

from actors.common import pad
from actors.policy import PolicyWorker
from actors.teacher import TeacherDists
from raylhf.algos.token_losses import generalized_jsd
from raylhf.core.batch import Objective, TrainBatch


@dataclass
class DistillBatch(TrainBatch):
    """Sequences to distil on: ``loss_mask[t] = 1`` where token ``t`` is trained; ``teacher[i]`` holds the
    teacher's distributions over exactly those tokens of sequence ``i``, in order. ``prompt_lens``: where each
    prompt ends; ``sampled``: whether the response is (to be) the student's own sample (on-policy)."""

    teacher: list[TeacherDists] | None = None
    prompt_lens: list[int] | None = None
    sampled: list[bool] | None = None

    def select(self, idx: list[int]) -> DistillBatch:
        kw: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            kw[f.name] = None if v is None else [v[i] for i in idx]
        return DistillBatch(**kw)


def trained_positions(loss_mask: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The positions ``t >= 1`` with ``loss_mask[t] > 0`` of each sequence (what the teacher is asked for)."""
    out = []
    for m in loss_mask:
        pos = (m > 0).nonzero().flatten()
        out.append(pos[pos >= 1])
    return out


class DistillWorker(PolicyWorker):
    def __init__(self, *args: Any, beta: float = 0.5, temperature: float = 1.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.beta, self.temperature = beta, temperature

    def token_logits(self, input_ids: Sequence[torch.Tensor]) -> torch.Tensor:
        """Full next-token logits ``[B, L, V]`` (float32) of a right-padded micro-batch: ``[:, t]`` predicts
        token ``t + 1``."""
        dev = self.engine.device
        ids = pad(list(input_ids), 0).to(dev)
        attn = pad([torch.ones_like(x) for x in input_ids], 0).to(dev)
        return self.engine(input_ids=ids, attention_mask=attn, use_cache=False).logits.float()

    def _student_and_teacher(self, sub: DistillBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Student logits / temperature and teacher log-probs, ``[N, V]`` each, over the N trained tokens."""
        assert sub.teacher is not None, "a DistillBatch needs the teacher's distributions"
        logits = self.token_logits(sub.input_ids)
        vocab = logits.shape[-1]
        rows, teacher = [], []
        for b, (pos, dists) in enumerate(zip(trained_positions(sub.loss_mask), sub.teacher, strict=True)):
            if len(pos) != dists.values.shape[0]:
                raise ValueError(f"sequence {b}: {len(pos)} trained tokens but teacher distributions for "
                                 f"{dists.values.shape[0]}")
            rows.append(logits[b, pos.to(logits.device) - 1])
            teacher.append(dists.dense(vocab))
        student = torch.cat(rows) / self.temperature
        return student, torch.cat(teacher).to(student.device)

    def micro_loss(self, sub: TrainBatch, obj: Objective) -> tuple[torch.Tensor, dict[str, float], float]:
        """``sum_t JSD_beta(teacher_t, student_t) / N`` with N the step's trained tokens (``obj.global_tokens``);
        metrics: the loss, the token-mean JSD and forward KL(teacher || student); weight: trained tokens."""
        assert isinstance(sub, DistillBatch)
        student, teacher = self._student_and_teacher(sub)
        n = student.shape[0]
        if n == 0:
            zero = student.sum() * 0.0
            return zero, {"loss/total": 0.0, "loss/jsd": 0.0}, 0.0
        # the teacher rows are log-probs at the temperature already, the student's logits were divided by it
        loss, m = generalized_jsd(student[None], teacher[None], beta=self.beta, temperature=1.0,
                                  global_count=obj.global_tokens or n)
        with torch.no_grad():
            t_logp = teacher
            kl = (t_logp.exp() * (t_logp - F.log_softmax(student.detach(), -1))).sum(-1).mean()
        assert sub.teacher is not None
        metrics = {"loss/total": float(loss.detach()), "loss/jsd": float(loss.detach()), "distill/jsd": m["jsd"],
                   "distill/kl_teacher_student": float(kl),
                   "distill/teacher_bytes_per_token": sum(d.nbytes() for d in sub.teacher) / n,
                   "distill/response_len": n / len(sub)}
        if sub.sampled is not None:
            metrics["distill/on_policy"] = sum(map(float, sub.sampled)) / len(sub.sampled)
        return loss, metrics, float(n)

    @torch.no_grad()
    def divergences(self, batch: DistillBatch) -> dict[str, float]:
        """Summed forward KL(teacher || student), JSD_beta and the trained-token count over ``batch`` (no
        update; the driver divides the sums over ranks by the count)."""
        self.engine.eval()
        kl_sum = jsd_sum = 0.0
        count = 0
        for idx in self.micro_batches(batch):
            student, teacher = self._student_and_teacher(batch.select(idx))
            if not len(student):
                continue
            s_logp = F.log_softmax(student, -1)
            kl_sum += float((teacher.exp() * (teacher - s_logp)).sum())
            _, m = generalized_jsd(student[None], teacher[None], beta=self.beta, temperature=1.0)
            jsd_sum += m["jsd"] * len(student)
            count += len(student)
        return {"kl_sum": kl_sum, "jsd_sum": jsd_sum, "tokens": float(count)}
