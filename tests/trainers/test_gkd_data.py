"""GKD without Ray: teacher distributions (top-k + spread rest, or full), their alignment with the trained
tokens, the student's JSD micro-losses adding up to the batch loss, the resumable on-policy draws."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from actors.distill import DistillBatch, DistillWorker, trained_positions
from actors.teacher import TeacherWorker, compress
from raylhf.algos.token_losses import generalized_jsd
from raylhf.config import GKDConfig, build_config
from raylhf.core.batch import Objective, Rollout
from raylhf.trainers.gkd import Encoded, GKDBatches, padded_for_ranks, with_samples


class ShimEngine(torch.nn.Module):
    """What the worker uses of a DeepSpeed engine (ZeRO-0, one rank): ``module``, ``device``, the forward."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module
        self.device = torch.device("cpu")

    def forward(self, **kw: object) -> object:
        return self.module(**kw)


def test_topk_with_spread_rest_keeps_the_topk_and_the_total_mass() -> None:
    logp = F.log_softmax(torch.randn(5, 512, generator=torch.Generator().manual_seed(0)) * 3, -1)
    d = compress(logp, 32)
    assert d.values.shape == (5, 32) and d.ids is not None and d.ids.dtype == torch.int32
    assert d.nbytes() == 5 * (32 * 4 + 32 * 4 + 4)  # 260 bytes per token
    dense = d.dense(512)
    assert torch.allclose(dense.logsumexp(-1), torch.zeros(5), atol=1e-5)  # still a distribution
    top = logp.topk(32, -1)
    assert torch.equal(dense.gather(-1, top.indices), top.values)
    rest = (1 - top.values.exp().sum(-1)) / (512 - 32)  # every other token: an even share of the rest
    assert torch.allclose(dense[0].exp().sort().values[0], rest[0], rtol=1e-4)
    full = compress(logp, 0)
    assert full.ids is None and full.nbytes() == 5 * 512 * 4 and torch.equal(full.dense(512), logp)


def test_a_peaked_teacher_keeps_a_finite_rest() -> None:
    logp = F.log_softmax(torch.tensor([[80.0] + [0.0] * 9]), -1)  # the top-1 holds all the mass in float32
    dense = compress(logp, 1).dense(10)
    assert torch.isfinite(dense).all() and dense[0, 0] == pytest.approx(0.0, abs=1e-6)


def test_teacher_distributions_sit_on_the_trained_tokens(tiny_model_dir: Path) -> None:
    t = TeacherWorker(model_path=str(tiny_model_dir), teacher={"micro_batch_size": 2, "dtype": "float32"})
    t.setup()
    ids = [torch.tensor([5, 9, 12, 40, 41]), torch.tensor([7, 8, 100]), torch.tensor([3, 4, 5, 6])]
    masks = [torch.tensor([0.0, 0, 1, 1, 1]), torch.tensor([0.0, 1, 1]), torch.tensor([0.0, 0, 0, 1])]
    targets = trained_positions(masks)
    assert [x.tolist() for x in targets] == [[2, 3, 4], [1, 2], [3]]
    out = t.distributions(ids, targets, top_k=0, temperature=2.0)
    with torch.no_grad():
        alone = F.log_softmax(t.model(input_ids=ids[0][None]).logits[0].float() / 2.0, -1)
    assert torch.allclose(out[0].values, alone[[1, 2, 3]], atol=1e-5)  # logits at t-1 predict token t
    assert [d.values.shape[0] for d in out] == [3, 2, 1] and t.vocab_size() == out[0].values.shape[1]


def _worker(path: Path, micro: int, beta: float = 0.5, temperature: float = 1.0) -> DistillWorker:
    w = DistillWorker(model_path=str(path), policy={"micro_batch_size": micro}, beta=beta, temperature=temperature)
    torch.manual_seed(0)
    w.engine = ShimEngine(w.build_model())  # type: ignore[assignment]
    w.micro = micro
    return w


def _batch(teacher: TeacherWorker, top_k: int) -> DistillBatch:
    g = torch.Generator().manual_seed(1)
    ids = [torch.randint(3, 500, (n,), generator=g) for n in (6, 9, 5, 7)]
    masks = [torch.cat([torch.zeros(3), torch.ones(len(x) - 3)]) for x in ids]
    b = DistillBatch(input_ids=ids, loss_mask=masks)
    b.teacher = teacher.distributions(ids, trained_positions(masks), top_k, 1.0)
    return b


def test_micro_losses_add_up_to_the_batch_jsd(tiny_model_dir: Path, tmp_path: Path) -> None:
    from raylhf.assets import write_tiny_model
    from raylhf.config.sections import TinyModelConfig

    teacher = TeacherWorker(model_path=str(write_tiny_model(tmp_path / "t", TinyModelConfig(seed=7))),
                            teacher={"dtype": "float32"})
    teacher.setup()
    w = _worker(tiny_model_dir, micro=2, beta=0.3)
    batch = _batch(teacher, top_k=0)
    n = batch.num_tokens()
    obj = Objective(pg_coef=0.0).with_counts(batch)
    parts = [w.micro_loss(batch.select(idx), obj) for idx in w.micro_batches(batch)]
    assert sum(p[2] for p in parts) == n
    with torch.no_grad():
        logits = w.token_logits(batch.input_ids)
    student = torch.cat([logits[b, p - 1] for b, p in enumerate(trained_positions(batch.loss_mask))])
    whole, _ = generalized_jsd(student[None], torch.cat([d.values for d in batch.teacher])[None], beta=0.3)
    assert sum(float(p[0].detach()) for p in parts) == pytest.approx(float(whole), rel=1e-5)
    m = parts[0][1]
    assert m["distill/teacher_bytes_per_token"] == 512 * 4 and m["distill/kl_teacher_student"] > 0
    div = w.divergences(batch)
    assert div["tokens"] == n and div["jsd_sum"] / n == pytest.approx(float(whole), rel=1e-5)
    # the student against itself: no divergence
    own = DistillBatch(input_ids=batch.input_ids, loss_mask=batch.loss_mask)
    own.teacher = [compress(F.log_softmax(logits[b, p - 1], -1), 0)
                   for b, p in enumerate(trained_positions(batch.loss_mask))]
    assert w.divergences(own)["kl_sum"] == pytest.approx(0.0, abs=1e-4)
    topk = _batch(teacher, top_k=16)  # the compressed teacher costs 8k + 4 bytes per token
    assert w.micro_loss(topk, Objective(pg_coef=0.0).with_counts(topk))[1]["distill/teacher_bytes_per_token"] == 132


def test_on_policy_draws_resume_and_samples_replace_responses() -> None:
    rows = [Encoded([1, 2, 3, 10 + k, 11], [0, 0, 0, 1, 1], 3) for k in range(10)]
    src = GKDBatches(rows, 4, True, 0, lmbda=0.5)
    src.next_batch()
    state = src.state_dict()
    a = [src.next_batch() for _ in range(6)]
    again = GKDBatches(rows, 4, True, 0, lmbda=0.5)
    again.load_state_dict(state)
    b = [again.next_batch() for _ in range(6)]
    assert [x.sampled for x in a] == [x.sampled for x in b]
    assert [[t.tolist() for t in x.input_ids] for x in a] == [[t.tolist() for t in x.input_ids] for x in b]
    assert {x.sampled[0] for x in a} == {True, False} and again.step == 7
    assert not any(GKDBatches(rows, 4, True, 0, lmbda=0.0).next_batch().sampled)
    batch = GKDBatches(rows, 2, False, 0, lmbda=1.0).next_batch()
    rolls = [Rollout(0, [1, 2, 3], [7, 8, 9], [0.0] * 3, "stop"), Rollout(1, [1, 2, 3], [6], [0.0], "stop")]
    out = with_samples(batch, rolls)
    assert [x.tolist() for x in out.input_ids] == [[1, 2, 3, 7, 8, 9], [1, 2, 3, 6]]
    assert [x.tolist() for x in out.loss_mask] == [[0, 0, 0, 1, 1, 1], [0, 0, 0, 1]]


def test_padding_for_ranks_trains_no_token() -> None:
    b = DistillBatch(input_ids=[torch.tensor([1, 2, 3])] * 3, loss_mask=[torch.tensor([0.0, 1, 1])] * 3)
    b.teacher = [compress(torch.zeros(2, 8), 4)] * 3
    p = padded_for_ranks(b, 2)
    assert len(p) == 4 and p.num_tokens() == b.num_tokens() and p.teacher[-1].values.shape[0] == 0
    assert padded_for_ranks(b, 3) is b


def test_config_rules() -> None:
    with pytest.raises(Exception, match=r"gkd\.batch_size \(5\) must be divisible by policy\.num_workers \(2\)"):
        build_config(GKDConfig, overrides=[("gkd.batch_size", 5), ("policy.num_workers", 2)])
    assert build_config(GKDConfig, overrides=[("gkd.lmbda", 1.0)]).gkd.lmbda == 1.0
    assert math.isclose(GKDConfig().gkd.beta, 0.5)


def test_cli_without_a_teacher_is_one_clear_line(tmp_path: Path) -> None:
    rows = tmp_path / "sft.jsonl"
    rows.write_text('{"prompt": "q", "response": "a"}\n')
    r = subprocess.run([sys.executable, "-m", "raylhf.gkd", "--data.train_files", str(rows)], capture_output=True,
                       text=True, cwd=Path(__file__).resolve().parents[2], timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.strip().splitlines() == [
        "raylhf.gkd: error: no teacher: set teacher.path (the embedded default's teacher only goes with its own "
        "data, when data.train_files is empty)"]
