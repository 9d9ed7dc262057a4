"""Reward models (rewards/model.py) on tiny random checkpoints: batching, order, truncation, PRM step scores."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from raylhf.assets import write_tiny_reward_model
from rewards.base import RewardBatch
from rewards.model import SequenceRewardModel, StepTagPRM, load_reward_model

TOL = 1e-5
PRM_KW: dict[str, Any] = {"kind": "prm", "step_separator": "\n\n", "step_tag": "\n", "positive_token": "+",
                          "negative_token": "-"}

PROMPTS = ["What is 2+2?", "hi", "Compute the sum of the first ten odd numbers, then explain.", "x", "Why?",
           "Name a prime.", "ok"]
COMPLETIONS = [
    "Step 1: 2+2 = 4.\n\nThe answer is 4.",
    "hello",
    "The odd numbers are 1, 3, 5, 7, 9, 11, 13, 15, 17, 19.\n\nTheir sum is 100.\n\nBecause n odd numbers sum to n^2.",
    "y\n\nz",
    "Because.",
    "Seven is prime\nsince it has no divisors\n\nSo: 7.\n\nDone\n\nReally done.",
    "fine",
]


@pytest.fixture(scope="module")
def orm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_reward_model(tmp_path_factory.mktemp("rm") / "orm", kind="orm")


@pytest.fixture(scope="module")
def prm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_reward_model(tmp_path_factory.mktemp("rm") / "prm", kind="prm")


def orm(path: Path, **kw: Any) -> SequenceRewardModel:
    return SequenceRewardModel({"name": "rm", "path": str(path), **kw})


def prm(path: Path, **kw: Any) -> StepTagPRM:
    return StepTagPRM({"name": "prm", "path": str(path), **{**PRM_KW, **kw}})


def batch(prompts: list[str] = PROMPTS, completions: list[str] = COMPLETIONS, **kw: Any) -> RewardBatch:
    return RewardBatch(prompts=list(prompts), completions=list(completions), **kw)


def score(scorer: Any, b: RewardBatch) -> list[Any]:
    return asyncio.run(scorer.score(b))


@torch.no_grad()
def orm_reference(scorer: SequenceRewardModel, ids: list[int]) -> float:
    """The head applied to the final hidden state of the last token, without padding or HF pooling."""
    model = scorer.model
    hidden = model.model(input_ids=torch.tensor([ids])).last_hidden_state[0, -1]
    return float(model.score(hidden)[0])


def prm_ids(scorer: StepTagPRM, prompt: str, steps: list[str]) -> tuple[list[int], list[int]]:
    """``prompt + step_1 + "\\n" + step_2 + "\\n" ...`` as ids, and where the tags sit."""
    tok = scorer.tokenizer
    ids, tags = list(tok(prompt)["input_ids"]), []
    for s in steps:
        ids += tok(s, add_special_tokens=False)["input_ids"] + [tok.convert_tokens_to_ids("Ċ")]
        tags.append(len(ids) - 1)
    return ids, tags


@torch.no_grad()
def prm_reference(scorer: StepTagPRM, ids: list[int], tags: list[int], negative: bool = True) -> list[float]:
    pos, neg = scorer.tokenizer.convert_tokens_to_ids(["+", "-"])
    logits = scorer.model(input_ids=torch.tensor([ids])).logits[0, tags].double()
    if negative:
        p, n = logits[:, pos].exp(), logits[:, neg].exp()
        return (p / (p + n)).tolist()
    return logits.softmax(-1)[:, pos].tolist()


# ---- SequenceRewardModel -------------------------------------------------------------------------------------


def test_orm_batched_equals_one_by_one_in_input_order(orm_dir: Path) -> None:
    b = batch()
    lengths = [len(c) for c in COMPLETIONS]
    assert lengths != sorted(lengths) and lengths != sorted(lengths, reverse=True)  # sorting must reorder
    batched = score(orm(orm_dir, batch_size=3), b)
    single = orm(orm_dir, batch_size=1)
    one_by_one = [score(single, b.slice(i, i + 1))[0] for i in range(len(b))]
    assert len(set(one_by_one)) == len(b)  # distinct scores: a permutation would be caught
    assert batched == pytest.approx(one_by_one, abs=TOL)


def test_orm_scores_the_chat_template_conversation(orm_dir: Path) -> None:
    scorer = orm(orm_dir)
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}]
    b = RewardBatch(prompts=["What is 2+2?"], completions=["4"], prompt_messages=[msgs])
    text = scorer.tokenizer.apply_chat_template([*msgs, {"role": "assistant", "content": "4"}], tokenize=False)
    assert text.startswith("<|im_start|>system\nBe brief.") and text.endswith("<|im_start|>assistant\n4<|im_end|>\n")
    expected = orm_reference(scorer, scorer.tokenizer(text, add_special_tokens=False)["input_ids"])
    assert score(scorer, b) == pytest.approx([expected], abs=TOL)


def test_orm_without_chat_template_scores_rendered_prompt_plus_completion(orm_dir: Path) -> None:
    scorer = orm(orm_dir)
    scorer.tokenizer.chat_template = None
    b = batch(["q"], ["the answer"], rendered_prompts=["<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n"])
    ids = scorer.tokenizer("<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\nthe answer")["input_ids"]
    assert score(scorer, b) == pytest.approx([orm_reference(scorer, ids)], abs=TOL)


def test_orm_reads_the_last_token_even_when_it_is_the_pad_token(orm_dir: Path) -> None:
    scorer = orm(orm_dir, batch_size=4)
    scorer.tokenizer.chat_template = None
    pad = scorer.tokenizer.pad_token
    assert pad == "<|endoftext|>" and scorer.model.config.pad_token_id == scorer.tokenizer.pad_token_id
    b = batch(["a", "a much longer prompt here"], [f"done{pad}", "short"])
    ids = scorer.tokenizer(f"adone{pad}")["input_ids"]
    assert ids[-1] == scorer.tokenizer.pad_token_id
    got = score(scorer, b)
    assert got[0] == pytest.approx(orm_reference(scorer, ids), abs=TOL)
    assert got[0] != pytest.approx(orm_reference(scorer, ids[:-1]), abs=TOL)  # HF pooling would read this one


def test_orm_left_truncation_keeps_the_completion_end(orm_dir: Path) -> None:
    scorer = orm(orm_dir, max_length=6)  # the tail alone is 8 tokens
    scorer.tokenizer.chat_template = None
    tail = " and the final answer is 42"
    b = batch(["A" * 40, "B" * 40, "A" * 40], [tail, tail, tail[:-1] + "3"])
    full = scorer.tokenizer("A" * 40 + tail)["input_ids"]
    assert len(full) > 40
    got = score(scorer, b)
    assert got[0] == pytest.approx(orm_reference(scorer, full[-6:]), abs=TOL)
    assert got[0] == pytest.approx(got[1], abs=TOL)  # the prompt start fell off the window
    assert abs(got[0] - got[2]) > TOL  # the completion end did not
    assert scorer.metrics() == {"truncated": 3.0}
    assert scorer.metrics() == {}


@pytest.mark.parametrize("kind, labels", [("orm", 2), ("prm", None)])
def test_orm_rejects_checkpoints_without_a_single_output(tmp_path: Path, kind: str, labels: int | None) -> None:
    path = write_tiny_reward_model(tmp_path / "m", kind=kind, num_labels=labels or 1)
    with pytest.raises(ValueError, match=r"num_labels=2 .*exactly one output"):
        orm(path)


def test_pad_token_defaults_to_eos(tmp_path: Path) -> None:
    path = write_tiny_reward_model(tmp_path / "m")
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        data = json.loads((path / name).read_text())
        data.pop("pad_token", None)
        (path / name).write_text(json.dumps(data))
    scorer = orm(path, batch_size=4)
    assert scorer.tokenizer.pad_token == scorer.tokenizer.eos_token == "<|im_end|>"
    b = batch(PROMPTS[:4], COMPLETIONS[:4])
    single = [score(scorer, b.slice(i, i + 1))[0] for i in range(4)]
    assert score(scorer, b) == pytest.approx(single, abs=TOL)


def test_kind_mismatch_empty_batch_and_dispatch(orm_dir: Path, prm_dir: Path) -> None:
    with pytest.raises(ValueError, match="kind='prm'"):
        SequenceRewardModel({"name": "rm", "path": str(orm_dir), "kind": "prm"})
    assert isinstance(load_reward_model({"name": "p", "path": str(prm_dir), **PRM_KW}), StepTagPRM)
    scorer = load_reward_model({"name": "o", "path": str(orm_dir)})
    assert isinstance(scorer, SequenceRewardModel) and scorer.kind == "orm" and scorer.name == "o"
    assert score(scorer, batch([], [])) == []
    assert asyncio.run(scorer.aclose()) is None


# ---- StepTagPRM ----------------------------------------------------------------------------------------------


def test_prm_batched_equals_one_by_one_in_input_order(prm_dir: Path) -> None:
    b = batch()
    batched = prm(prm_dir, batch_size=3).score_steps(b)
    single = prm(prm_dir, batch_size=1)
    one_by_one = [single.score_steps(b.slice(i, i + 1))[0] for i in range(len(b))]
    assert [len(s) for s in batched] == [len(s) for s in one_by_one] == [2, 1, 3, 2, 1, 4, 1]
    assert len({s[0] for s in one_by_one}) == len(b)
    for got, want in zip(batched, one_by_one, strict=True):
        assert got == pytest.approx(want, abs=TOL)


def test_prm_one_score_per_step_in_unit_interval_and_tags_inside_steps(prm_dir: Path) -> None:
    scorer = prm(prm_dir)  # the tag "\n" also occurs inside the first step: positions must not be searched
    steps = scorer.score_steps(batch(["p"], ["first line\nsecond line\n\nthird\n\n\n\nfourth"]))[0]
    assert steps is not None and len(steps) == 3
    assert all(0.0 < s < 1.0 for s in steps)


def test_prm_ratio_matches_a_manual_forward(prm_dir: Path) -> None:
    scorer = prm(prm_dir)
    got = scorer.score_steps(batch(["What is 2+2?", "hi"], [COMPLETIONS[0], "hello"]))
    want = prm_reference(scorer, *prm_ids(scorer, "What is 2+2?", ["Step 1: 2+2 = 4.", "The answer is 4."]))
    assert got[0] == pytest.approx(want, abs=TOL)
    assert abs(want[0] - want[1]) > TOL


def test_prm_without_negative_token_uses_softmax_over_the_vocab(prm_dir: Path) -> None:
    scorer = prm(prm_dir, negative_token=None)
    got = scorer.score_steps(batch(["What is 2+2?"], [COMPLETIONS[0]]))[0]
    ids, tags = prm_ids(scorer, "What is 2+2?", ["Step 1: 2+2 = 4.", "The answer is 4."])
    want = prm_reference(scorer, ids, tags, negative=False)
    assert got == pytest.approx(want, abs=TOL)
    assert all(0.0 < s < 0.5 for s in got)  # a random 512-token model: far from the two-token ratio


@pytest.mark.parametrize("mode, reduce", [
    ("min", min), ("last", lambda s: s[-1]), ("mean", lambda s: sum(s) / len(s)), ("prod", math.prod),
])
def test_prm_score_aggregates_the_steps(prm_dir: Path, mode: str, reduce: Any) -> None:
    scorer = prm(prm_dir, aggregate=mode)
    b = batch(PROMPTS[:3], COMPLETIONS[:3])
    got = score(scorer, b)
    steps = scorer.score_steps(b)
    assert scorer.last_steps == steps and len(steps[2]) == 3
    assert got == pytest.approx([reduce(s) for s in steps], abs=1e-9)


def test_prm_aggregates_differ_between_modes(prm_dir: Path) -> None:
    b = batch(["q"], ["x = 1\n\ny = 2\n\nx + y = 3"])  # on this model its last step is not its minimum
    values = {mode: score(prm(prm_dir, aggregate=mode), b)[0] for mode in ("min", "last", "mean", "prod")}
    assert len(set(values.values())) == 4


def test_prm_zero_step_completion_is_none(prm_dir: Path) -> None:
    scorer = prm(prm_dir, batch_size=2)
    b = batch(["a", "b", "c"], ["one\n\ntwo", "", "\n\n\n\n"])
    steps = scorer.score_steps(b)
    assert steps[1] is None and steps[2] is None and steps[0] is not None and len(steps[0]) == 2
    got = score(scorer, b)
    assert got[1] is None and got[2] is None and isinstance(got[0], float)
    assert scorer.metrics() == {"unscored": 4.0}  # two calls, two each


def test_prm_left_truncation_keeps_the_last_steps(prm_dir: Path) -> None:
    full = prm(prm_dir).score_steps(batch(["q"], ["aaaa\n\nbbbb\n\ncccc\n\ndddd"]))[0]
    scorer = prm(prm_dir, max_length=6)  # tokens "c c <tag> dd dd <tag>": the last two tags survive
    cut = scorer.score_steps(batch(["q"], ["aaaa\n\nbbbb\n\ncccc\n\ndddd"]))[0]
    assert full is not None and cut is not None and len(full) == 4
    assert len(cut) == 2 and abs(cut[-1] - full[-1]) > TOL  # the tail is scored without its left context
    ids, tags = prm_ids(scorer, "q", ["aaaa", "bbbb", "cccc", "dddd"])
    window = len(ids) - 6
    assert cut == pytest.approx(prm_reference(scorer, ids[window:], [t - window for t in tags[-2:]]), abs=TOL)
    assert scorer.metrics() == {"truncated": 1.0, "dropped_steps": 2.0}


@pytest.mark.parametrize("field, value", [("step_tag", "ки"), ("positive_token", "<step>"), ("negative_token", "ab c")])
def test_prm_tokens_must_be_single_tokens(prm_dir: Path, field: str, value: str) -> None:
    with pytest.raises(ValueError, match=rf"{field}=.*tokenizes to \d+ tokens \["):
        prm(prm_dir, **{field: value})


def test_prm_rejects_equal_positive_and_negative(prm_dir: Path) -> None:
    with pytest.raises(ValueError, match="same token"):
        prm(prm_dir, negative_token="+")
