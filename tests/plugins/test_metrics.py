"""Eval metrics without Ray: ``acc`` equals a hand count, the example plugin's metrics give hand-computable values
through the real loader, predictions joined from two ranks drop the filler rows, ``nlg`` scores generated text,
and check-plugin rejects wrong signatures."""

from __future__ import annotations

import io
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from raylhf.algos.text_metrics import (
    METRICS,
    EvalPrediction,
    check_plugin_entry,
    compute_metrics,
    merge_outputs,
    metric_request,
    preprocess_logits_for_acc,
    reply_span,
    trim_outputs,
)
from raylhf.plugins import registry
from raylhf.plugins.registry import PluginCheckError

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples/plugins/metric_top2.py"

# two held-out rows of different lengths: (ids, weights); weight 0 = prompt (not a label)
ROWS = [([5, 1, 2, 3, 4], [0.0, 0.0, 1.0, 1.0, 1.0]), ([6, 7, 2], [0.0, 1.0, 1.0])]
# argmax / second choice at every position (position t predicts token t + 1)
BEST = [[9, 2, 3, 0, 7], [7, 5, 1]]
SECOND = [[1, 1, 1, 4, 1], [3, 2, 4]]


def logits_for(best: list[int], second: list[int], vocab: int = 10) -> torch.Tensor:
    x = torch.zeros(len(best), vocab)
    for t, (b, s) in enumerate(zip(best, second, strict=True)):
        x[t, b], x[t, s] = 3.0, 2.0
    return x


def worker_outputs(names: list[str]) -> dict:
    """What the ranks return: rank 0 has row A, rank 1 row B plus a filler row (the shards are padded)."""
    out = []
    for rows in ([0], [1, 1]):
        part: dict = {"preprocessed": {}, "generated": []}
        for name in names:
            fn = METRICS.get_entry(name)[1]
            reduced = []
            for i in rows:
                logits = logits_for(BEST[i], SECOND[i])[None]
                labels = torch.tensor([[t if w else -100 for t, w in zip(*ROWS[i], strict=True)]])
                reduced.append(fn(logits, labels)[0])
            part["preprocessed"][name] = reduced
        out.append(part)
    return trim_outputs(merge_outputs(out), len(ROWS))


@pytest.fixture
def example_plugin() -> Iterator[types.ModuleType]:
    module = registry.load_plugin(str(EXAMPLE))
    yield module
    for name in ("top2_acc", "reply_exact"):
        METRICS.unregister(name)
    registry.forget(str(EXAMPLE))


def test_acc_equals_a_hand_count() -> None:
    # row A: labels 2, 3, 4 (positions 2-4) predicted from positions 1-3: 2 ok, 3 ok, 0 != 4 -> 2 of 3
    # row B: labels 7, 2 (positions 1-2) predicted from positions 0-1: 7 ok, 5 != 2 -> 1 of 2;  total 3 / 5
    assert compute_metrics(["acc"], ROWS, worker_outputs(["acc"])) == {"eval/acc": pytest.approx(0.6)}
    assert metric_request(["acc"]) == {"preprocess": ["acc"], "generate": False}
    # the preprocess reduces [B, L, V] logits to the argmax ids [B, L]
    assert preprocess_logits_for_acc(logits_for(BEST[0], SECOND[0])[None], None).tolist() == [BEST[0]]


def test_example_plugin_metrics_through_the_loader(example_plugin: types.ModuleType) -> None:
    assert "top2_acc" in METRICS and "reply_exact" in METRICS
    # top-2 at the predicting positions: row A (2,1) has 2, (3,1) has 3, (0,4) has 4 -> 3 of 3;
    # row B (7,3) has 7, (5,2) has 2 -> 2 of 2; and acc stays 3/5
    got = compute_metrics(["acc", "top2_acc"], ROWS, worker_outputs(["acc", "top2_acc"]))
    assert got == {"eval/acc": pytest.approx(0.6), "eval/top2_acc": pytest.approx(1.0), "eval/scored_tokens": 5.0}
    # generation metrics: replies are the rows' last trained runs (A: 2 3 4, B: 7 2); the decoder maps ids to words
    words = {2: "the", 3: "cat", 4: "sat", 7: "a", 9: "ran"}

    def decode(ids: list[int]) -> str:
        return " ".join(words[i] for i in ids)

    outputs = {"preprocessed": {}, "generated": [[2, 3, 9], [7, 2]]}  # "the cat ran" vs "the cat sat"; exact
    got = compute_metrics(["reply_exact", "nlg"], ROWS, outputs, decode)
    assert got["eval/reply_exact"] == 0.5
    # ROUGE-L F1: row A LCS 2 of 3 words -> 2/3, row B 1 -> mean 5/6 (x100)
    assert got["eval/rouge-l"] == pytest.approx(100 * 5 / 6)
    import sacrebleu

    assert got["eval/bleu"] == pytest.approx(sacrebleu.corpus_bleu(["the cat ran", "a the"],
                                                                   [["the cat sat", "a the"]]).score)
    assert metric_request(["acc", "reply_exact"]) == {"preprocess": ["acc"], "generate": True}


def test_nlg_of_identical_replies_is_100() -> None:
    compute, pre = METRICS["nlg"]
    assert pre is None
    assert compute(EvalPrediction(["12 + 3 = 15", "hello world"], ["12 + 3 = 15", "hello world"])) == {
        "bleu": pytest.approx(100.0), "rouge-l": pytest.approx(100.0)}
    preds, labels = EvalPrediction([1], [2])  # unpacks like transformers' EvalPrediction
    assert (preds, labels) == ([1], [2])


def test_reply_span_is_the_last_trained_run() -> None:
    assert reply_span([0, 1, 1, 0, 0, 1, 1, 0]) == (5, 7)
    assert reply_span([1, 1, 1]) == (0, 3)
    assert reply_span([0, 0]) is None


def test_generation_metrics_need_a_prompt() -> None:
    from raylhf.data import DataError
    from raylhf.trainers.sft import eval_loss_fn

    with pytest.raises(DataError, match="no held-out row has a prompt before its last trained reply"):
        eval_loss_fn([([1, 2, 3], [1.0, 1.0, 1.0])], 4, 1, ["nlg"], None)


def test_config_checks_metric_names(example_plugin: types.ModuleType) -> None:
    from raylhf.config import SFTConfig, build_config

    assert build_config(SFTConfig, overrides=[("sft.metrics", ["acc", "nlg", "top2_acc"])]).sft.metrics == [
        "acc", "nlg", "top2_acc"]
    with pytest.raises(Exception, match=r"unknown metric 'bleu' in sft.metrics; registered: acc, nlg"):
        build_config(SFTConfig, overrides=[("sft.metrics", ["bleu"])])


def two_args(eval_prediction, tokenizer):  # wrong: compute takes one argument
    return {"x": 1.0}


def one_arg_preprocess(logits):  # wrong: preprocess takes (logits, labels)
    return logits.argmax(-1)


def returns_list(eval_prediction):
    return [1.0]


def test_check_plugin_rejects_wrong_signatures() -> None:
    with pytest.raises(PluginCheckError, match=r"metric 'two' .*takes 2 required positional arguments "
                                               r"\(eval_prediction, tokenizer\); expected def compute\("
                                               r"eval_prediction\) -> dict\[str, float\]"):
        check_plugin_entry("two", (two_args, None))
    with pytest.raises(PluginCheckError, match=r"metric 'pre' .*preprocess function takes 1 required positional "
                                               r"arguments \(logits\); expected def preprocess\(logits, labels\)"):
        check_plugin_entry("pre", (returns_list, one_arg_preprocess))
    with pytest.raises(PluginCheckError, match=r"metric 'lst' .*returned list; expected def compute"):
        check_plugin_entry("lst", (returns_list, preprocess_logits_for_acc))
    with pytest.raises(PluginCheckError, match=r"metric 'bare' must be a tuple \(compute_fn, preprocess"):
        check_plugin_entry("bare", returns_list)
    assert check_plugin_entry("acc", METRICS["acc"]).startswith("metric acc: preprocess -> (2, 5); compute -> {'acc'")


def test_check_plugin_cli_on_a_metric_mapping(tmp_path: Path) -> None:
    from raylhf.plugins import check as check_plugin

    f = tmp_path / "bad_metrics.py"
    f.write_text("def two(eval_prediction, tokenizer):\n    return {}\n"
                 "METRIC_MAPPING = {'cp_two_args': (two, None)}\n")
    out = io.StringIO()
    try:
        assert check_plugin.report(str(f), out) == 1
    finally:
        METRICS.unregister("cp_two_args")
    text = out.getvalue()
    assert "FAIL metric 'cp_two_args'" in text and "expected def compute(eval_prediction)" in text
