"""Sequence packing on real DeepSpeed policy ranks: one train_step packed (token-budget micro-batches) and one
unpacked (micro_batch_size sequences) from the same weights give the same loss and grad norm, for SFT and for
a GRPO-style objective (advantages, old / rollout / reference log-probs).

Tolerances: losses within 1e-5 relative, grad norms within 1e-4 relative (fp32; the packed forward sums the
same terms in another order and in other micro-batches). The learning rate is 1e-12, so the first step leaves
both policies on the same weights for the second.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from actors.group import ActorGroup
from raylhf.config.sections import PolicyConfig
from raylhf.core.batch import Objective, TrainBatch
from raylhf.driver.startup import start_policy

from .helpers import tiny_batch

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]


def _grpo_batch(group: ActorGroup, n: int, seed: int) -> TrainBatch:
    """tiny_batch plus old / rollout / reference log-probs near the policy's own (ratios != 1, KL != 0)."""
    batch = tiny_batch(n, seed=seed)
    own = group.call("logprobs", batch.input_ids)[0]
    g = torch.Generator().manual_seed(seed + 1)

    def near(scale: float) -> list[torch.Tensor]:
        return [(lp + scale * torch.randn(lp.shape, generator=g)) * m for lp, m in zip(own, batch.loss_mask,
                                                                                       strict=True)]

    batch.old_logprobs, batch.rollout_logprobs, batch.ref_logprobs = near(0.05), near(0.1), near(0.2)
    return batch


def test_packed_train_step_equals_unpacked(tiny_model_dir: Path) -> None:
    sft = tiny_batch(12, seed=21)
    sft.advantages = None
    sft_obj = Objective(pg_coef=0.0, ce_coef=1.0).with_counts(sft)
    grpo_obj = Objective(pg_coef=1.0, kl_coef=0.1, entropy_coef=0.01, clip_low=0.1, clip_high=0.1, tis_cap=2.0,
                         loss_agg="seq-mean-token-mean")
    settings = {"unpacked": dict(packing=False, micro_batch_size=3),
                "packed": dict(packing=True, max_tokens_per_micro_batch=40)}
    out: dict[str, dict[str, dict[str, float]]] = {}
    lps: dict[str, list[torch.Tensor]] = {}
    grpo: TrainBatch | None = None
    for name, kw in settings.items():
        group = start_policy(PolicyConfig(lr=1e-12, num_cpus_per_worker=1, **kw), str(tiny_model_dir),
                                "float32", 10, 0, "PACK")
        try:
            lps[name] = group.call("logprobs", sft.input_ids)[0]
            if grpo is None:  # built once, from the unpacked policy's log-probs, and fed to both
                grpo = _grpo_batch(group, 12, seed=22)
            out[name] = {"sft": group.call_split("train_step", sft, sft_obj)[0],
                         "grpo": group.call_split("train_step", grpo, grpo_obj.with_counts(grpo))[0]}
        finally:
            group.shutdown()
    a, b = out["unpacked"], out["packed"]
    print({k: (a[k]["loss/total"], b[k]["loss/total"], a[k]["grad_norm"], b[k]["grad_norm"]) for k in a})
    assert max(float((x - y).abs().max()) for x, y in zip(lps["unpacked"], lps["packed"], strict=True)) < 1e-5
    for kind in ("sft", "grpo"):
        assert b[kind]["loss/total"] == pytest.approx(a[kind]["loss/total"], rel=1e-5), kind
        assert b[kind]["grad_norm"] == pytest.approx(a[kind]["grad_norm"], rel=1e-4), kind
        assert b[kind]["train_tokens"] == a[kind]["train_tokens"]
        assert a[kind]["grad_norm"] > 1e-3
    assert b["grpo"]["loss/kl"] == pytest.approx(a["grpo"]["loss/kl"], rel=1e-5)
    assert a["grpo"]["pg/ratio_max"] != pytest.approx(1.0, abs=1e-4), "old log-probs differ: the ratio is exercised"
