"""Reward-model training without Ray: pairs, tokenization as the reward actor renders it, the worker's pair
batching and loss normalization, and the export scored by rewards/model.py exactly as training scores it."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from actors.reward_trainer import PairBatch, RewardModelWorker, pair_batch
from raylhf.algos.dpo import bradley_terry_loss
from raylhf.assets import load_tokenizer, write_tiny_reward_model
from raylhf.config import RMConfig, build_config
from raylhf.core.batch import Objective
from raylhf.data import DataError, PreferenceExample
from raylhf.demo.tasks.demo_data import INSTRUCTION
from raylhf.demo.tasks.rm_pairs import KINDS, arithmetic_pair_splits
from raylhf.trainers.rm import column_margins, conversation_ids, encode_scored_pairs
from rewards.base import RewardBatch
from rewards.model import SequenceRewardModel

ROOT = Path(__file__).resolve().parents[2]
MESSAGES = [{"role": "user", "content": "What is 2+3? Reply with the equation, like 2+3=5."}]


class ShimEngine(torch.nn.Module):
    """What the worker uses of a DeepSpeed engine (ZeRO-0, one rank): ``module``, ``device``, the forward."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module
        self.device = torch.device("cpu")

    def forward(self, **kw: object) -> object:
        return self.module(**kw)


def worker_for(path: Path, micro: int = 4) -> RewardModelWorker:
    w = RewardModelWorker(model_path=str(path), policy={"micro_batch_size": micro})
    torch.manual_seed(0)
    w.engine = ShimEngine(w.build_model())  # type: ignore[assignment]
    w.micro = micro
    return w


def test_pairs_are_right_equation_vs_wrong_answer_or_style() -> None:
    train, heldout = arithmetic_pair_splits(300, 40, max_operand=20)
    assert len(train) == 300 and len(heldout) == 40
    question = lambda p: p.example.messages[0]["content"].split("?")[0]  # noqa: E731
    assert not {question(p) for p in heldout} & {question(p) for p in train}
    assert {p.kind for p in train} == set(KINDS)
    assert 0.3 < sum(INSTRUCTION in p.example.messages[0]["content"] for p in train) / 300 < 0.7  # both forms
    for p in train + heldout:
        ex = p.example
        q, answer = ex.chosen.split("=")
        assert sum(map(int, q.split("+"))) == int(answer)
        if p.kind == "wrong_equation":
            rq, wrong = ex.rejected.split("=")
            assert rq == q and 1 <= abs(int(wrong) - int(answer)) <= 9 and int(wrong) >= 0
        else:
            number = re.findall(r"\d+", ex.rejected)[-1]
            assert "=" not in ex.rejected and (number == answer) == (p.kind == "right_number_other_style")


def test_conversation_ids_are_what_the_reward_actor_scores(tmp_path: Path) -> None:
    rm = SequenceRewardModel({"name": "rm", "path": str(write_tiny_reward_model(tmp_path / "rm"))})
    tok = load_tokenizer()
    for reply in ("2+3=5", "The answer is 5.", ""):
        batch = RewardBatch(prompts=[MESSAGES[0]["content"]], completions=[reply], prompt_messages=[MESSAGES])
        ids, cut = conversation_ids(tok, MESSAGES, reply, 512)
        assert ids == rm.encode(batch, 0) and not cut
    short, cut = conversation_ids(tok, MESSAGES, "2+3=5", 6)  # cut on the left: the scored end stays
    assert cut and short == conversation_ids(tok, MESSAGES, "2+3=5", 512)[0][-6:]


def test_encode_pairs_carries_margins_and_kinds() -> None:
    train, _ = arithmetic_pair_splits(4, 2, max_operand=9)
    plain = [PreferenceExample(MESSAGES, "2+3=5", "5")]
    enc, cut = encode_scored_pairs(load_tokenizer(), [*train, *plain], [0.5] * 5, 512)
    assert cut == 0 and [e.kind for e in enc] == [p.kind for p in train] + [None]
    assert all(e.margin == 0.5 for e in enc) and enc[-1].chosen != enc[-1].rejected


def test_margin_column_is_checked(tmp_path: Path) -> None:
    f = tmp_path / "pairs.jsonl"
    f.write_text('{"prompt": "q", "chosen": "a", "rejected": "b", "gap": 2}\n'
                 '{"prompt": "q", "chosen": "a", "rejected": "b", "gap": "big"}\n')
    cfg = build_config(RMConfig, overrides=[("data.train_files", str(f)), ("rm.margin", 0.5),
                                            ("rm.margin_column", "gap"), ("data.max_samples", 1)])
    assert column_margins(cfg, "train") == [2.5]
    cfg = build_config(RMConfig, overrides=[("data.train_files", str(f)), ("rm.margin_column", "gap")])
    with pytest.raises(DataError, match=r"pairs\.jsonl, row 2: rm\.margin_column='gap' needs a number.*'big'"):
        column_margins(cfg, "train")


def test_config_rules() -> None:
    with pytest.raises(Exception, match=r"rm\.batch_size \(5\) must be divisible by policy\.num_workers \(2\)"):
        build_config(RMConfig, overrides=[("rm.batch_size", 5), ("policy.num_workers", 2)])
    with pytest.raises(Exception, match=r"policy\.micro_batch_size \(1\) counts sequences"):
        build_config(RMConfig, overrides=[("policy.micro_batch_size", 1)])


def test_pair_batches_keep_pairs_together(tiny_model_dir: Path) -> None:
    triples = [([1] * n, [2] * (12 - n), float(n)) for n in range(2, 10)]  # 8 pairs, lengths differ
    batch = pair_batch(triples)
    assert len(batch) == 16 and batch.num_pairs() == 8
    assert all(float(m.sum()) == 1.0 and float(m[-1]) == 1.0 for m in batch.loss_mask)  # the scored token
    shard = batch.shard(1, 2)
    assert isinstance(shard, PairBatch) and shard.margins == [6.0, 6.0, 7.0, 7.0, 8.0, 8.0, 9.0, 9.0]
    w = RewardModelWorker(model_path=str(tiny_model_dir), policy={"micro_batch_size": 5})
    w.micro = 5  # 2 pairs per micro-batch
    groups = w.micro_batches(batch)
    assert sorted(i for g in groups for i in g) == list(range(16))
    assert all(len(g) == 4 and all(g[k] % 2 == 0 and g[k + 1] == g[k] + 1 for k in (0, 2)) for g in groups)
    with pytest.raises(ValueError, match="whole pairs"):
        w.micro_batches(batch.select([0, 1, 2]))


def test_micro_losses_add_up_to_the_batch_loss(tiny_model_dir: Path) -> None:
    w = worker_for(tiny_model_dir, micro=2)
    g = torch.Generator().manual_seed(0)
    triples = [(torch.randint(3, 400, (int(n),), generator=g).tolist(),
                torch.randint(3, 400, (int(n) + 2,), generator=g).tolist(), 0.3) for n in (5, 7, 9, 4, 6)]
    batch = pair_batch(triples)
    obj = Objective(pg_coef=0.0, global_seqs=5.0, extra={"center_coef": 0.01})
    parts = [w.micro_loss(batch.select(idx), obj) for idx in w.micro_batches(batch)]
    assert [p[2] for p in parts] == [1.0] * 5
    with torch.no_grad():
        r = w.sequence_rewards(batch.input_ids)
    whole, _ = bradley_terry_loss(r[0::2], r[1::2], margin=0.3, center_coef=0.01)
    total = sum(float(p[0].detach()) for p in parts)
    assert total == pytest.approx(float(whole.mean()), rel=1e-5)
    assert sum(p[1]["loss/total"] for p in parts) == pytest.approx(total, rel=1e-6)
    assert {"rewards/accuracies", "rewards/margins", "loss/bt"} <= set(parts[0][1])
    # a batch of several lengths scores each conversation as it would alone (left padding, last position)
    alone = torch.stack([w.sequence_rewards([x])[0] for x in batch.input_ids]).detach()
    assert torch.allclose(r, alone, atol=1e-5)


def test_export_scores_in_the_reward_model_as_in_training(tmp_path: Path, tiny_model_dir: Path) -> None:
    w = worker_for(tiny_model_dir)
    out = w.save(str(tmp_path / "rm"))
    assert out and (Path(out) / "tokenizer.json").exists()
    rm = SequenceRewardModel({"name": "rm", "path": out, "dtype": "float32"})
    assert rm.model.config.num_labels == 1 and rm.model.config.pad_token_id is not None
    replies = ["2+3=5", "5", "The answer is 5.", "2+3=6<|im_end|>"]
    batch = RewardBatch(prompts=[MESSAGES[0]["content"]] * 4, completions=replies, prompt_messages=[MESSAGES] * 4)
    scored = asyncio.run(rm.score(batch))
    tok = load_tokenizer()
    trained = w.rewards([torch.tensor(conversation_ids(tok, MESSAGES, r, 512)[0]) for r in replies])
    assert scored == pytest.approx(trained, abs=1e-5)
    assert len(set(trained)) == 4
    with pytest.raises(RuntimeError, match="not synced into rollout engines"):
        w.export_weights()


def test_a_classifier_with_several_labels_is_refused(tmp_path: Path) -> None:
    path = write_tiny_reward_model(tmp_path / "cls", num_labels=3)
    w = RewardModelWorker(model_path=str(path), policy={})
    with pytest.raises(ValueError, match=r"num_labels=3; a reward model has one output"):
        w.build_model()


def test_cli_bad_data_is_one_clear_line(tmp_path: Path) -> None:
    bad = tmp_path / "pairs.jsonl"
    bad.write_text('{"prompt": "q", "chosen": "a"}\n')
    r = subprocess.run([sys.executable, "-m", "raylhf.rm", "--data.train_files", str(bad)], capture_output=True,
                       text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"raylhf.rm: error: {bad}, line 1: missing column 'rejected' needed by format 'preference'"), lines
