"""The encoder trainers' rows: ms-swift's two embedding / reranker shapes, seq_cls rows, clear errors naming the
file and row, the task card, and the generated demo rows (held-out scenes never trained on)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from raylhf.assets import load_tokenizer
from raylhf.data import DataError
from raylhf.data.retrieval import (
    TaskCard,
    encode_generative,
    encode_pair,
    load_labelled_texts,
    load_retrieval_rows,
    single_token_id,
)
from raylhf.demo.tasks.retrieval_data import animal_rows, scene_rows, topic_texts


def _jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_both_ms_swift_shapes_read_the_same(tmp_path: Path) -> None:
    new = _jsonl(tmp_path / "new.jsonl", [{
        "messages": [{"role": "user", "content": "red fox"}],
        "positive_messages": [[{"role": "user", "content": "a fox, red"}]],
        "negative_messages": [[{"role": "user", "content": "a cat"}], [{"role": "user", "content": "a dog"}]],
    }])
    old = _jsonl(tmp_path / "old.jsonl", [{"query": "red fox", "response": "a fox, red",
                                            "rejected_response": ["a cat", "a dog"], "label": 1}])
    a, b = load_retrieval_rows([new])[0], load_retrieval_rows([old])[0]
    assert (a.query, a.positives, a.negatives) == (b.query, b.positives, b.negatives)
    assert (a.label, b.label) == (None, 1.0)


def test_bad_rows_name_the_file_and_row(tmp_path: Path) -> None:
    f = _jsonl(tmp_path / "r.jsonl", [{"query": "q", "response": "d"}, {"query": "q"}])
    with pytest.raises(DataError, match=r"r\.jsonl, line 2: missing or empty 'response'"):
        load_retrieval_rows([f])
    with pytest.raises(DataError, match=r"line 1: missing or empty 'rejected_response'.*at least one negative"):
        load_retrieval_rows([f], need_negatives=True, kind="reranker")
    g = _jsonl(tmp_path / "c.jsonl", [{"sentence": "hi", "label": 0}])
    with pytest.raises(DataError, match=r"c\.jsonl, line 1: no text column.*data\.columns"):
        load_labelled_texts([g])
    rows = load_labelled_texts([g], columns={"text": "sentence"})
    assert rows[0].messages == [{"role": "user", "content": "hi"}] and rows[0].label == 0
    h = _jsonl(tmp_path / "l.jsonl", [{"text": "hi", "label": {"x": 1}}])
    with pytest.raises(DataError, match="'label' must be a class id"):
        load_labelled_texts([h])


def test_task_card_round_trip_and_token_checks(tmp_path: Path) -> None:
    card = TaskCard(task="seq_cls", max_length=64, problem_type="single_label_classification", labels=["a", "b"])
    card.save(tmp_path)
    assert TaskCard.load(tmp_path) == card and TaskCard.load(tmp_path / "none") is None
    tok = load_tokenizer()
    assert single_token_id(tok, "yes", "reranker.yes_token") != single_token_id(tok, "no", "reranker.no_token")
    with pytest.raises(DataError, match=r"reranker\.yes_token='crimson' is \d+ tokens"):
        single_token_id(tok, "crimson", "reranker.yes_token")
    q, d = [{"role": "user", "content": "fox"}], [{"role": "user", "content": "a red fox"}]
    with pytest.raises(DataError, match=r"only \{query\} and \{document\}"):
        encode_generative(tok, "{question}: {document}", q, d, 64)
    ids = encode_pair(tok, q, d, 8)
    assert len(ids) == 8 and ids == encode_pair(tok, q, d, 64)[-8:]  # cut on the left: the head reads the end


def test_demo_rows_hold_out_scenes() -> None:
    texts = topic_texts(50, 1)
    assert {t.label for t in texts} == {0, 1, 2, 3}
    train, held = scene_rows(300, 40, 1)
    seen = {r.positives[0][0]["content"] for r in train}
    assert len(held) == 40 and all(len(r.negatives) == 3 for r in train + held)
    assert not any(r.positives[0][0]["content"] in seen for r in held)
    a_train, a_held = animal_rows(100, 20, 1, negatives=3)
    for r in a_train + a_held:
        animal = r.query[0]["content"].split()[-1].strip("?")
        assert animal in r.positives[0][0]["content"]
        assert all(f" {animal}" not in n[0]["content"] for n in r.negatives)
