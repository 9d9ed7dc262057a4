"""SFT data: multi-turn tokenization, loss_scale strategies on token weights, per-message overrides, the
held-out split, the weighted cross-entropy normaliser. No Ray."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from raylhf.assets import load_tokenizer
from raylhf.config import SFTConfig, build_config
from raylhf.config.loader import ConfigError
from raylhf.core.batch import Objective
from raylhf.core.objective import objective_loss
from raylhf.data import DataError, SFTExample, load_sft_dataset, render_prompt, tokenize_sft
from raylhf.data.loss_scale import LOSS_SCALES, ContextType, LossScale, get_loss_scale, register_loss_scale
from raylhf.trainers.sft import collate, split_rows

SYSTEM = {"role": "system", "content": "Be brief."}
CHAT = [
    {"role": "user", "content": "What is 2+3?"},
    {"role": "assistant", "content": "2+3=5"},
    {"role": "user", "content": "Now add 4 to that."},
    {"role": "assistant", "content": "5+4=9"},
]


@pytest.fixture(scope="module")
def tok() -> Any:
    return load_tokenizer()


def chat(loss: list[bool | None] | None = None) -> SFTExample:
    return SFTExample([SYSTEM, *CHAT[:-1]], CHAT[-1]["content"], loss)


def trained_text(tok: Any, ids: list[int], weights: list[float]) -> str:
    return tok.decode([t for t, w in zip(ids, weights, strict=True) if w > 0])


def spans(tok: Any, ex: SFTExample) -> tuple[int, int, int]:
    """(start of reply 1, start of the second prompt part, start of reply 2) in the token sequence."""
    first = len(render_prompt(tok, ex.turns()[:2]))
    second = len(render_prompt(tok, ex.turns()[:4]))
    return first, first + len(tok("2+3=5", add_special_tokens=False)["input_ids"]) + 1, second


def test_multi_turn_ids_are_the_rendered_conversation(tok: Any) -> None:
    ex = chat()
    ids, weights = tokenize_sft(tok, ex, max_length=512)
    full = tok.apply_chat_template(ex.turns(), tokenize=False, add_generation_prompt=False)
    assert full.endswith("<|im_end|>\n")
    assert ids == tok(full[: -len("\n")], add_special_tokens=False)["input_ids"]  # the template's tail is dropped
    assert len(weights) == len(ids)
    assert tok.decode(ids[: len(render_prompt(tok, ex.turns()[:4]))]) == tok.apply_chat_template(
        ex.turns()[:4], tokenize=False, add_generation_prompt=True)


def test_default_trains_every_assistant_reply_and_its_end_of_turn(tok: Any) -> None:
    ids, weights = tokenize_sft(tok, chat(), max_length=512)
    assert trained_text(tok, ids, weights) == "2+3=5<|im_end|>5+4=9<|im_end|>"
    r1, ctx2, r2 = spans(tok, chat())
    assert weights[:r1] == [0.0] * r1
    assert weights[r1:ctx2] == [1.0] * (ctx2 - r1)
    assert weights[ctx2:r2] == [0.0] * (r2 - ctx2)
    assert weights[r2:] == [1.0] * (len(ids) - r2)


def test_last_round_gives_zero_weight_to_earlier_replies(tok: Any) -> None:
    ids, weights = tokenize_sft(tok, chat(), max_length=512, loss_scale="last_round")
    _, _, r2 = spans(tok, chat())
    assert weights[:r2] == [0.0] * r2  # the first reply and its <|im_end|> included
    assert weights[r2:] == [1.0] * (len(ids) - r2)
    assert trained_text(tok, ids, weights) == "5+4=9<|im_end|>"
    # a single-turn example: last_round == default
    single = SFTExample([CHAT[0]], "2+3=5")
    assert tokenize_sft(tok, single, 512, loss_scale="last_round") == tokenize_sft(tok, single, 512)


def test_all_trains_every_token_and_train_on_prompt_means_all(tok: Any) -> None:
    ids, weights = tokenize_sft(tok, chat(), max_length=512, loss_scale="all")
    assert weights == [1.0] * len(ids)
    assert tokenize_sft(tok, chat(), 512, train_on_prompt=True) == (ids, weights)


def test_per_message_loss_overrides_the_strategy(tok: Any) -> None:
    # default, but the last reply switched off
    ids, w = tokenize_sft(tok, chat([None, None, None, None, False]), 512)
    assert trained_text(tok, ids, w) == "2+3=5<|im_end|>"
    # last_round, but the first reply switched on
    ids, w = tokenize_sft(tok, chat([None, None, True, None, None]), 512, loss_scale="last_round")
    assert trained_text(tok, ids, w) == "2+3=5<|im_end|>5+4=9<|im_end|>"
    # an override does not touch prompt tokens under 'all'
    ids, w = tokenize_sft(tok, chat([None, None, False, None, None]), 512, loss_scale="all")
    r1, ctx2, _ = spans(tok, chat())
    assert w[:r1] == [1.0] * r1 and w[r1:ctx2] == [0.0] * (ctx2 - r1) and w[ctx2:] == [1.0] * (len(w) - ctx2)


def test_truncation_cuts_the_tail(tok: Any) -> None:
    ids, w = tokenize_sft(tok, chat(), 512)
    cut_ids, cut_w = tokenize_sft(tok, chat(), 20)
    assert (cut_ids, cut_w) == (ids[:20], w[:20])


def test_loader_reads_per_message_loss(tmp_path: Path) -> None:
    rows = [{"messages": [*CHAT[:1], {**CHAT[1], "loss": False}, *CHAT[2:]]}, {"messages": CHAT}]
    src = tmp_path / "chat.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    a, b = load_sft_dataset([str(src)], system_prompt="Be brief.")
    sft = tmp_path / "sft.jsonl"  # prompt / response given as message lists
    sft.write_text(json.dumps({"prompt": [CHAT[0]], "response": [
        {**CHAT[1], "loss": True}, CHAT[2], {**CHAT[3], "loss": False}]}) + "\n")
    (c,) = load_sft_dataset([str(sft)], system_prompt="Be brief.")
    assert a.messages == [SYSTEM, *CHAT[:3]] and a.response == "5+4=9"
    assert a.loss == [None, None, False, None, None]
    assert b.loss is None  # no override anywhere
    assert c.messages == [SYSTEM, *CHAT[:3]] and c.loss == [None, None, True, None, False]


@pytest.mark.parametrize(("turn", "match"), [
    ({**CHAT[0], "loss": True}, "only assistant turns take a 'loss' override"),
    ({**CHAT[1], "loss": "yes"}, "'loss' must be true, false or null"),
])
def test_loader_rejects_bad_loss_keys(tmp_path: Path, turn: dict[str, Any], match: str) -> None:
    msgs = [*CHAT]
    msgs[0 if turn["role"] == "user" else 1] = turn
    src = tmp_path / "bad.jsonl"
    src.write_text(json.dumps({"messages": msgs}) + "\n")
    with pytest.raises(DataError, match=match) as e:
        load_sft_dataset([str(src)])
    assert "bad.jsonl, line 1" in str(e.value)


def test_loader_rejects_a_conversation_starting_with_the_assistant(tmp_path: Path) -> None:
    src = tmp_path / "a.jsonl"
    src.write_text(json.dumps({"messages": [CHAT[1], *CHAT[:2]]}) + "\n")
    with pytest.raises(DataError, match="starts with an assistant turn"):
        load_sft_dataset([str(src)])


def test_a_template_that_rewrites_past_turns_is_a_clear_error(tok: Any) -> None:
    t = copy.deepcopy(tok)  # a template that drops the content of every reply but the last, like reasoning templates
    t.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
                       "{% if m['role'] == 'assistant' and not loop.last %}{% else %}{{ m['content'] }}{% endif %}"
                       "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    with pytest.raises(DataError, match="renders an earlier part of this conversation differently"):
        tokenize_sft(t, chat(), 512)
    tokenize_sft(t, SFTExample([CHAT[0]], "2+3=5"), 512)  # single-turn rows still work


class _Weighted(LossScale):
    """Weight 2 on the digits after '=' of a reply, 1 on the rest of it; a test of splitting contexts."""

    def get_loss_scale(self, context: str, context_type: ContextType, is_last_round: bool, *,
                       query: str | None = None) -> tuple[list[str], list[float]]:
        if context_type == ContextType.RESPONSE and "=" in context:
            head, tail = context.split("=", 1)
            return [head + "=", tail], [1.0, 2.0]
        return super().get_loss_scale(context, context_type, is_last_round, query=query)


def test_a_registered_strategy_splits_contexts_and_weights_them(tok: Any) -> None:
    register_loss_scale("test_weighted")(_Weighted)
    try:
        register_loss_scale("test_weighted")(_Weighted)  # the same class again is fine
        with pytest.raises(ValueError, match="registered twice"):
            register_loss_scale("test_weighted")(LossScale)
        ids, w = tokenize_sft(tok, chat(), 512, loss_scale="test_weighted")
        assert sorted(set(w)) == [0.0, 1.0, 2.0]
        assert tok.decode([t for t, x in zip(ids, w, strict=True) if x == 2.0]) == "59"
        assert isinstance(get_loss_scale("test_weighted"), _Weighted)
    finally:
        LOSS_SCALES.unregister("test_weighted")


def test_a_strategy_whose_pieces_do_not_join_back_is_rejected(tok: Any) -> None:
    class Lossy(LossScale):
        def get_loss_scale(self, context: str, context_type: ContextType, is_last_round: bool, *,
                           query: str | None = None) -> tuple[list[str], list[float]]:
            return [context[:1]], [1.0]

    with pytest.raises(ValueError, match="do not join back"):
        tokenize_sft(tok, chat(), 512, loss_scale=Lossy())
    with pytest.raises(ValueError, match=r"unknown loss scale 'nope' in sft\.loss_scale; registered: all, default"):
        get_loss_scale("nope")


def test_weighted_ce_is_normalised_by_trained_tokens() -> None:
    """Weights [0, 1, 2, 0.5] on NLLs [_, 1, 2, 4]: sum(w * nll) = 1 + 4 + 2 = 7 over 3 trained tokens."""
    batch = collate([([5, 6, 7, 8], [0.0, 1.0, 2.0, 0.5])])
    assert batch.ce_weights is not None and batch.loss_mask[0].tolist() == [0.0, 1.0, 1.0, 1.0]
    logp = torch.tensor([[0.0, -1.0, -2.0, -4.0]])
    obj = Objective(pg_coef=0.0, ce_coef=1.0)
    for o in (obj, obj.with_counts(batch)):  # the fallback normaliser agrees with the global one
        _, m = objective_loss(logp, None, batch.loss_mask[0][None], o, ce_weights=batch.ce_weights[0][None])
        assert m["loss/ce"] == pytest.approx(7 / 3)
    assert collate([([5, 6], [0.0, 1.0])]).ce_weights is None  # 0/1 weights travel as the mask only


def test_split_rows_is_seeded_and_disjoint() -> None:
    rows = [([i], [1.0]) for i in range(20)]
    train, held = split_rows(rows, 0.1, seed=3)
    assert len(held) == 2 and len(train) == 18
    assert sorted(r[0][0] for r in train + held) == list(range(20))
    assert split_rows(rows, 0.1, seed=3) == (train, held)
    assert split_rows(rows, 0.0, seed=3) == (rows, [])


def test_sft_config_rules() -> None:
    with pytest.raises(ConfigError, match=r"sft\.eval_fraction holds out training rows"):
        build_config(SFTConfig, overrides=[("sft.eval_fraction", 0.1), ("data.eval_files", ["x.jsonl"])])
    with pytest.raises(ConfigError, match="unknown loss scale 'lastround'"):
        build_config(SFTConfig, overrides=[("sft.loss_scale", "lastround")])
    with pytest.raises(ConfigError, match=r"train_on_prompt=true means sft\.loss_scale=all"):
        build_config(SFTConfig, overrides=[("sft.train_on_prompt", True), ("sft.loss_scale", "last_round")])
    cfg = build_config(SFTConfig, overrides=[("policy.tuner.type", "lora"), ("policy.tuner.lora_rank", 4)])
    assert cfg.policy.tuner.type == "lora" and cfg.policy.tuner.target_modules == ["all-linear"]
