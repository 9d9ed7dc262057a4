"""The encoder trainers end to end on a real local Ray cluster (DeepSpeed on gloo), from data files: a few steps
each, resumed from a checkpoint (the resumed step repeats the uninterrupted one), the export with its task card,
and `raylhf eval`'s trainer evaluation of the export giving the trainer's last held-out numbers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoConfig

from raylhf.config import build_config
from raylhf.config.encoders import EmbeddingConfig, GenerativeRerankerConfig, RerankerConfig, SeqClsConfig
from raylhf.data.retrieval import TaskCard
from raylhf.demo.tasks.retrieval_data import animal_rows, scene_rows, topic_texts
from raylhf.driver.lifecycle import RunResult
from raylhf.evaluate import main as eval_main
from raylhf.trainers import embedding, reranker, seq_cls

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]
NAMES = ["animals", "food", "weather", "tools"]


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _base(tmp_path: Path, model: Path, name: str, section: str, files: str) -> dict[str, Any]:
    return {"model.path": str(model), "data.train_files": files, f"{section}.num_steps": 3,
            f"{section}.batch_size": 4, f"{section}.eval_fraction": 0.25, f"{section}.max_length": 48,
            "policy.micro_batch_size": 8, "policy.lr": 1e-3, "policy.num_cpus_per_worker": 1,
            "checkpoint.save_every": 2, "logging.run_dir": str(tmp_path / "runs"), "logging.run_name": name,
            "logging.progress": False}


def _resumed_step3(run: Any, cls: type, base: dict[str, Any], res: RunResult, tmp_path: Path, name: str) -> None:
    step2 = tmp_path / "runs" / name / "checkpoints" / "step-000002"
    again = run(build_config(cls, overrides=[*base.items(), ("checkpoint.resume", str(step2)),
                                             ("checkpoint.save_final", False)]))
    first = [h for h in res.history if h.get("step") == 3 and "loss/total" in h][-1]
    resumed = [h for h in again.history if h.get("step") == 3 and "loss/total" in h][-1]
    assert first["loss/total"] != 0.0
    assert resumed["loss/total"] == pytest.approx(first["loss/total"], rel=1e-4)


def test_seq_cls_trains_resumes_exports_and_evaluates(tmp_path: Path, tiny_model_dir: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    rows = [{"text": t.messages[0]["content"], "label": NAMES[t.label]} for t in topic_texts(24, 3)]
    base = _base(tmp_path, tiny_model_dir, "cls", "seq_cls", _jsonl(tmp_path / "cls.jsonl", rows))
    res = seq_cls.run_seq_cls(build_config(SeqClsConfig, overrides=list(base.items())))
    train = [h for h in res.history if "loss/total" in h]
    assert [h["step"] for h in train] == [1, 2, 3] and "accuracy" in train[-1] and "f1" in train[-1]
    assert set(res.eval_after) == {"eval/accuracy", "eval/f1", "eval/loss"}
    assert res.eval_after["eval/loss"] != res.eval_before["eval/loss"]  # the model moved
    _resumed_step3(seq_cls.run_seq_cls, SeqClsConfig, base, res, tmp_path, "cls")

    assert res.checkpoint
    exported = AutoConfig.from_pretrained(res.checkpoint)
    assert exported.num_labels == 4 and exported.architectures == ["LlamaForSequenceClassification"]
    card = TaskCard.load(res.checkpoint)
    assert card and card.task == "seq_cls" and card.labels == sorted(NAMES)
    # raylhf eval seq_cls on the export: the trainer's last held-out numbers
    over = [f"--{k}={v}" for k, v in base.items() if k not in ("model.path", "checkpoint.save_every")]
    capsys.readouterr()
    assert eval_main(["seq_cls", "--model.path", res.checkpoint, *over]) == 0
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for k, v in res.eval_after.items():
        assert got[k] == pytest.approx(v, abs=1e-6), k


def test_embedding_and_rerankers_train_from_files(tmp_path: Path, tiny_model_dir: Path) -> None:
    train, _ = scene_rows(16, 4, 5)
    old_shape = [{"query": r.query[0]["content"], "response": r.positives[0][0]["content"],
                  "rejected_response": [n[0]["content"] for n in r.negatives]} for r in train]
    files = _jsonl(tmp_path / "emb.jsonl", old_shape)
    base = _base(tmp_path, tiny_model_dir, "emb", "embedding", files)
    res = embedding.run_embedding(build_config(EmbeddingConfig, overrides=[*base.items(),
                                                                           ("checkpoint.save_every", 0)]))
    assert "acc" in res.history[-1] or any("acc" in h for h in res.history)
    assert {"eval/recall@1", "eval/recall@5", "eval/cos_pos", "eval/cos_neg"} <= set(res.eval_after)
    assert res.checkpoint and (card := TaskCard.load(res.checkpoint)) and card.pooling == "last"
    assert AutoConfig.from_pretrained(res.checkpoint).architectures == ["LlamaModel"]

    rows, _ = animal_rows(16, 4, 6, negatives=2)
    new_shape = [{"messages": r.query, "positive_messages": r.positives, "negative_messages": r.negatives}
                 for r in rows]
    files = _jsonl(tmp_path / "rr.jsonl", new_shape)
    base = _base(tmp_path, tiny_model_dir, "rr", "reranker", files)
    res = reranker.run_reranker(build_config(RerankerConfig, overrides=[*base.items(), ("reranker.loss", "pointwise"),
                                                                        ("reranker.num_negatives", 3),
                                                                        ("checkpoint.save_every", 0)]))
    assert {"eval/top1_acc", "eval/mrr", "eval/accuracy"} <= set(res.eval_after)
    assert AutoConfig.from_pretrained(res.checkpoint).num_labels == 1  # type: ignore[arg-type]

    # the generative reranker with LoRA (the causal LM's tuners apply): trains, resumes, exports merged
    base = {**_base(tmp_path, tiny_model_dir, "gen", "reranker", files), "policy.tuner.type": "lora"}
    res = reranker.run_reranker(build_config(GenerativeRerankerConfig, overrides=list(base.items())))
    assert [h["step"] for h in res.history if "loss/listwise" in h] == [1, 2, 3]
    _resumed_step3(reranker.run_reranker, GenerativeRerankerConfig, base, res, tmp_path, "gen")
    card = TaskCard.load(res.checkpoint)  # type: ignore[arg-type]
    assert card and card.task == "generative_reranker" and (card.yes_token, card.no_token) == ("yes", "no")
    assert AutoConfig.from_pretrained(res.checkpoint).architectures == ["LlamaForCausalLM"]  # type: ignore[arg-type]
    assert (Path(res.checkpoint) / "adapter" / "adapter_config.json").is_file()  # type: ignore[arg-type]
