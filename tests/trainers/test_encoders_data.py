"""The encoder trainers' data rules without Ray: labels resolved and checked per row, the group shapes the worker
gets, config rules, and a bad file is one clear line from the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from raylhf.assets import load_tokenizer
from raylhf.config import build_config
from raylhf.config.encoders import EmbeddingConfig, SeqClsConfig
from raylhf.data import DataError
from raylhf.data.retrieval import LabelledText, RetrievalRow
from raylhf.trainers.embedding import training_groups
from raylhf.trainers.reranker import rerank_groups
from raylhf.trainers.seq_cls import label_of, resolve_labels


def _t(label: object) -> LabelledText:
    return LabelledText([{"role": "user", "content": "x"}], label)


def test_labels_resolve_and_bad_ones_name_the_row(tiny_model_dir: Path) -> None:
    cfg = build_config(SeqClsConfig)
    assert resolve_labels(cfg, [_t("b"), _t("a")], str(tiny_model_dir)) == ("single_label_classification", 2,
                                                                              ["a", "b"])
    assert resolve_labels(cfg, [_t([0, 2]), _t([1])], str(tiny_model_dir))[:2] == ("multi_label_classification", 3)
    assert resolve_labels(cfg, [_t(0.5)], str(tiny_model_dir))[:2] == ("regression", 1)
    assert label_of(_t([0, 2]), "multi_label_classification", 3, None, "row 1") == [1.0, 0.0, 1.0]
    assert label_of(_t("b"), "single_label_classification", 2, ["a", "b"], "row 1") == 1
    with pytest.raises(DataError, match=r"row 7: a single-label label is a class id in \[0, 2\)"):
        label_of(_t(5), "single_label_classification", 2, None, "row 7")
    with pytest.raises(DataError, match=r"row 2: label 'c' is not one of the training labels"):
        label_of(_t("c"), "single_label_classification", 2, ["a", "b"], "row 2")


def _row(q: str, pos: str, negs: list[str]) -> RetrievalRow:
    side = lambda s: [{"role": "user", "content": s}]  # noqa: E731
    return RetrievalRow(side(q), [side(pos)], [side(n) for n in negs])


def test_groups_have_the_shapes_the_losses_expect() -> None:
    tok = load_tokenizer()
    rows = [_row("q1", "p1", ["n1", "n2"]), _row("q2", "p2", [])]
    info = training_groups(rows[:1], "infonce", 1, tok, 32, 0)
    assert len(info) == 1 and len(info[0].seqs) == 3 and info[0].labels is None
    pairs = training_groups(rows, "contrastive", 0, tok, 32, 0)
    assert [g.labels for g in pairs] == [[1.0, 1.0], [0.0, 0.0], [0.0, 0.0], [1.0, 1.0]]
    # the second row has no negatives: it borrows the other row's positive
    groups = rerank_groups(rows, 2, lambda q, d: [ord(c) for c in q[0]["content"] + d[0]["content"]], 0)
    assert [len(g.seqs) for g in groups] == [3, 3] and groups[1].labels == [1.0, 0.0, 0.0]
    assert all(bytes(s).decode().startswith("q2") for s in groups[1].seqs)


def test_config_rules() -> None:
    with pytest.raises(Exception, match=r"embedding\.batch_size \(5\) must be divisible by policy\.num_workers"):
        build_config(EmbeddingConfig, overrides=[("embedding.batch_size", 5), ("policy.num_workers", 2)])
    with pytest.raises(Exception, match=r"leave data\.format at auto"):
        build_config(SeqClsConfig, overrides=[("data.format", "sft")])


def test_cli_bad_data_is_one_clear_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"sentence": "hi", "label": 1}) + "\n")
    r = subprocess.run([sys.executable, "-m", "raylhf.seq_cls", "--data.train_files", str(bad)], capture_output=True,
                       text=True, timeout=120)
    lines = [x for x in r.stderr.splitlines() if x.startswith("raylhf.seq_cls: error")]
    assert r.returncode == 2 and lines == [f"raylhf.seq_cls: error: {bad}, line 1: no text column: expected one of "
                                           "['messages', 'text', 'query', 'prompt']; columns present: ['label', "
                                           "'sentence']; map yours with data.columns, e.g. {text: sentence}"], r.stderr
