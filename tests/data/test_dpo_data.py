"""Preference data and loss wiring without Ray: pair tokenization, collation, masks, shards, micro-batches, KTO
rows, the micro-batch invariance of the normalized loss, the config rules and the synthetic task."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from actors.dpo_worker import PreferenceLoss, pair_losses, preference_loss
from raylhf.assets import load_tokenizer
from raylhf.config import ConfigError, DPOConfig, KTOConfig, build_config
from raylhf.data import DataError, PreferenceExample, end_of_turn_id, render_prompt
from raylhf.data.pairs import (
    EncodedPair,
    EncodedSeq,
    PreferenceBatch,
    UnpairedExample,
    collate_pairs,
    collate_unpaired,
    encode_pairs,
    encode_unpaired,
    group_micro_batches,
    kl_partners,
    load_unpaired_dataset,
    sequence_sums,
)

USER = [{"role": "user", "content": "What is 12+7? Reply with the equation, like 2+3=5."}]


@pytest.fixture(scope="module")
def tok() -> Any:
    return load_tokenizer()


def test_pair_tokens_and_masks(tok: Any) -> None:
    rows, dropped = encode_pairs(tok, [PreferenceExample(USER, "12+7=19", "The answer is 18.")], 512)
    assert dropped == 0
    (pair,) = rows
    prompt = render_prompt(tok, USER)
    for seq, reply in ((pair.chosen, "12+7=19"), (pair.rejected, "The answer is 18.")):
        reply_ids = tok(reply, add_special_tokens=False)["input_ids"]
        assert seq.input_ids == prompt + reply_ids + [end_of_turn_id(tok)]  # same prompt for both sides
        assert seq.loss_mask == [0] * len(prompt) + [1] * (len(reply_ids) + 1)  # reply + end-of-turn only
        assert seq.ref_logp is None


def test_multi_turn_prompt_masks_only_the_final_reply(tok: Any) -> None:
    chat = [*USER, {"role": "assistant", "content": "12+7=19"}, {"role": "user", "content": "And 1+1?"}]
    (pair,), _ = encode_pairs(tok, [PreferenceExample(chat, "1+1=2", "3")], 512)
    n_reply = len(tok("1+1=2", add_special_tokens=False)["input_ids"]) + 1
    assert sum(pair.chosen.loss_mask) == n_reply and pair.chosen.loss_mask[-n_reply:] == [1] * n_reply


def test_too_long_pairs_are_dropped_and_long_replies_cut(tok: Any) -> None:
    prompt_len = len(render_prompt(tok, USER))
    rows, dropped = encode_pairs(tok, [PreferenceExample(USER, "12+7=19", "18")], prompt_len)  # no reply token fits
    assert (rows, dropped) == ([], 1)
    (pair,), _ = encode_pairs(tok, [PreferenceExample(USER, "12+7=19", "18")], prompt_len + 2)
    assert len(pair.chosen.input_ids) == prompt_len + 2 and sum(pair.chosen.loss_mask) == 2


def _seq(n: int, ref: float | None = None) -> EncodedSeq:
    return EncodedSeq(list(range(1, n + 1)), [0, 0] + [1] * (n - 2), ref)


def test_collate_interleaves_pairs() -> None:
    rows = [EncodedPair(_seq(5, -1.0), _seq(6, -2.0)), EncodedPair(_seq(7, -3.0), _seq(4, -4.0))]
    b = collate_pairs(rows)
    assert [len(x) for x in b.input_ids] == [5, 6, 7, 4]
    assert b.group_ids == [0, 0, 1, 1] and b.chosen == [True, False, True, False]
    assert b.ref_logps == [-1.0, -2.0, -3.0, -4.0]
    assert b.loss_mask[0].tolist() == [0, 0, 1, 1, 1] and b.loss_mask[0].dtype == torch.float32
    assert b.num_groups() == 2 and b.chosen_tokens() == 3 + 5 and b.num_tokens() == 3 + 4 + 5 + 2
    assert collate_pairs([EncodedPair(_seq(5), _seq(6))]).ref_logps is None


def test_select_and_shard_keep_the_subclass_and_whole_pairs() -> None:
    b = collate_pairs([EncodedPair(_seq(5, float(i)), _seq(6, float(-i))) for i in range(4)])
    b.kl_ref_point = 0.25
    sub = b.select([2, 3])
    assert isinstance(sub, PreferenceBatch) and sub.group_ids == [1, 1] and sub.ref_logps == [1.0, -1.0]
    assert sub.kl_ref_point == 0.25  # one number for the whole step, copied
    shards = [b.shard(r, 2) for r in range(2)]
    assert [s.group_ids for s in shards] == [[0, 0, 1, 1], [2, 2, 3, 3]]
    odd = collate_pairs([EncodedPair(_seq(5), _seq(6)) for _ in range(3)])
    with pytest.raises(ValueError, match="pair would be split over ranks"):
        odd.shard(0, 2)


def test_micro_batches_keep_pairs_together() -> None:
    group_ids = [0, 0, 1, 1, 2, 2, 3, 3]
    lengths = [9, 3, 4, 4, 20, 2, 5, 6]
    groups = group_micro_batches(group_ids, lengths, 4)
    assert sorted(i for g in groups for i in g) == list(range(8))
    for g in groups:
        assert len({group_ids[i] for i in g}) * 2 == len(g) <= 4  # whole pairs only
    assert groups == [[2, 3, 6, 7], [0, 1, 4, 5]]  # sorted by the pair's longest sequence: 4, 6 | 9, 20
    assert group_micro_batches(group_ids, lengths, 1) == [[2, 3], [6, 7], [0, 1], [4, 5]]  # a pair beats the size
    # token budget (policy.max_tokens_per_micro_batch): packed = sum of lengths, padded = count x longest
    assert group_micro_batches(group_ids, lengths, 99, max_tokens=20, packed=True) == [[2, 3, 6, 7], [0, 1], [4, 5]]
    assert group_micro_batches(group_ids, lengths, 99, max_tokens=24, packed=False) == [[2, 3, 6, 7], [0, 1], [4, 5]]
    assert group_micro_batches(group_ids, lengths, 99, max_tokens=23, packed=False) == [[2, 3], [6, 7], [0, 1],
                                                                                        [4, 5]]


def test_kl_partners_is_a_seeded_derangement() -> None:
    p = kl_partners(7, seed=3)
    assert sorted(p) == list(range(7)) and all(p[i] != i for i in range(7))
    assert p == kl_partners(7, seed=3) != kl_partners(7, seed=4)
    with pytest.raises(ValueError, match="at least 2"):
        kl_partners(1, seed=0)


def test_unpaired_rows_carry_a_mismatched_kl_sequence(tok: Any) -> None:
    exs = [UnpairedExample([{"role": "user", "content": f"What is {i}+1?"}], f"{i}+1={i + 1}", i % 2 == 0)
           for i in range(4)]
    rows, dropped = encode_unpaired(tok, exs, 512, seed=0)
    assert dropped == 0 and [r.desirable for r in rows] == [True, False, True, False]
    partners = kl_partners(4, seed=0)
    for i, r in enumerate(rows):
        prompt = render_prompt(tok, exs[i].messages)
        other = tok(exs[partners[i]].completion, add_special_tokens=False)["input_ids"]
        assert r.kl.input_ids == prompt + other + [end_of_turn_id(tok)]
        assert r.seq.input_ids[: len(prompt)] == prompt
    b = collate_unpaired(rows)
    assert b.group_ids == [0, 1, 2, 3] and b.chosen == [True, False, True, False]
    assert b.kl_input_ids is not None and len(b.kl_input_ids) == 4 and b.ref_logps is None


def test_load_unpaired_rows_and_unpaired_pairs(tmp_path: Path) -> None:
    f = tmp_path / "kto.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in [
        {"q": "What is 1+1?", "completion": "1+1=2", "label": True},
        {"q": "What is 2+2?", "completion": "5", "label": 0}]) + "\n")
    exs = load_unpaired_dataset([str(f)], columns={"prompt": "q"}, system_prompt="Be exact.")
    assert [e.desirable for e in exs] == [True, False]
    assert exs[0].messages == [{"role": "system", "content": "Be exact."}, {"role": "user", "content": "What is 1+1?"}]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "What is 1+1?", "chosen": "1+1=2", "rejected": "3"}) + "\n")
    assert [(e.completion, e.desirable) for e in load_unpaired_dataset([str(pairs)])] == [("1+1=2", True),
                                                                                           ("3", False)]


@pytest.mark.parametrize(("row", "match"), [
    ({"prompt": "x", "completion": "y", "label": "maybe"}, "'label' must be true"),
    ({"prompt": "x", "completion": "y"}, "missing column 'label'"),
    ({"prompt": "x", "completion": 3, "label": True}, "'completion' must be a string"),
])
def test_bad_unpaired_rows_name_file_and_row(tmp_path: Path, row: dict, match: str) -> None:
    f = tmp_path / "bad.jsonl"
    f.write_text(json.dumps({"prompt": "a", "completion": "b", "label": True}) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(DataError, match=rf"bad\.jsonl, line 2: .*{match}"):
        load_unpaired_dataset([str(f)])


def test_sequence_sums_use_the_response_mask() -> None:
    lp = [torch.tensor([0.0, -1.0, -2.0, -3.0]), torch.tensor([0.0, -0.5])]
    masks = [torch.tensor([0.0, 0.0, 1.0, 1.0]), torch.tensor([0.0, 1.0])]
    assert sequence_sums(lp, masks) == [-5.0, -0.5]


# ---- the loss wiring (pure: actors.dpo_worker.preference_loss, also the driver's held-out metric) -------------

def _random_pairs(n: int, seed: int = 0) -> tuple[PreferenceBatch, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    b = collate_pairs([EncodedPair(_seq(int(torch.randint(4, 9, (1,), generator=g))),
                                   _seq(int(torch.randint(4, 9, (1,), generator=g)))) for _ in range(n)])
    lengths = torch.tensor([float(m.sum()) for m in b.loss_mask])
    sums = -lengths * (0.5 + torch.rand(len(b), generator=g))
    b.ref_logps = (sums + 0.3 * torch.randn(len(b), generator=g)).tolist()
    return b, sums, lengths


@pytest.mark.parametrize("spec", [
    PreferenceLoss("sigmoid", beta=0.1), PreferenceLoss("sigmoid", rpo_alpha=0.5), PreferenceLoss("ipo", beta=0.5),
    PreferenceLoss("hinge"), PreferenceLoss("cdpo", label_smoothing=0.1), PreferenceLoss("simpo", beta=2.0),
    PreferenceLoss("orpo"), PreferenceLoss("cpo", cpo_alpha=0.7), PreferenceLoss("kto", beta=0.2)],
    ids=lambda s: s.loss_type + ("+rpo" if s.rpo_alpha else ""))
def test_micro_batch_split_keeps_the_loss(spec: PreferenceLoss) -> None:
    """Micro-batches normalized by the step's global pairs / chosen tokens add up to the whole batch's loss."""
    b, sums, lengths = _random_pairs(6)
    if spec.loss_type == "kto":
        b.kl_ref_point = 0.4
    whole, m = preference_loss(spec, sums, lengths, b, b.num_groups(), b.chosen_tokens())
    parts = [[0, 1, 4, 5], [2, 3], [6, 7, 8, 9, 10, 11]]
    total = sum(float(preference_loss(spec, sums[idx], lengths[idx], b.select(idx), b.num_groups(),
                                      b.chosen_tokens())[0]) for idx in parts)
    assert total == pytest.approx(float(whole), rel=1e-6)
    assert m["loss/total"] == pytest.approx(float(whole))
    assert 0.0 <= m["rewards/accuracies"] <= 1.0 and "logps/chosen" in m


def test_dpo_at_the_reference_is_log2_and_rewards_are_zero() -> None:
    b, sums, lengths = _random_pairs(4)
    b.ref_logps = sums.tolist()  # policy == reference
    loss, m = preference_loss(PreferenceLoss("sigmoid", rpo_alpha=1.0), sums, lengths, b, 4, b.chosen_tokens())
    nll = float(-sums[0::2].sum()) / b.chosen_tokens()
    assert m["loss/pref"] == pytest.approx(math.log(2)) and m["loss/nll"] == pytest.approx(nll)
    assert float(loss) == pytest.approx(math.log(2) + nll)
    assert m["rewards/margins"] == 0.0 and m["rewards/accuracies"] == 0.0  # strict: a tie is not a win


def test_ipo_orpo_and_simpo_see_per_token_averages() -> None:
    # chosen: sum -2 over 4 tokens (avg -0.5); rejected: sum -3 over 2 tokens (avg -1.5); reference sums -4 / -2
    c, r, lc, lr = torch.tensor([-2.0]), torch.tensor([-3.0]), torch.tensor([4.0]), torch.tensor([2.0])
    ipo, _ = pair_losses(PreferenceLoss("ipo", beta=0.5), c, r, lc, lr, torch.tensor([-4.0]), torch.tensor([-2.0]))
    # h = (-0.5 - -1) - (-1.5 - -1) = 1.0; (h - 1 / (2 * 0.5))^2 = 0
    assert float(ipo[0]) == pytest.approx(0.0)
    simpo, m = pair_losses(PreferenceLoss("simpo", beta=2.0, simpo_gamma=1.0), c, r, lc, lr)
    assert float(simpo[0]) == pytest.approx(-math.log(1 / (1 + math.exp(-(2.0 * 1.0 - 1.0)))))  # -log sig(1)
    assert m["rewards/chosen"] == pytest.approx(-1.0)
    _, m = pair_losses(PreferenceLoss("orpo", beta=0.1), c, r, lc, lr)
    assert m["nll_loss"] == pytest.approx(0.5)  # -avg of the chosen
    with pytest.raises(ValueError, match="needs reference"):
        pair_losses(PreferenceLoss("sigmoid"), c, r, lc, lr)


# ---- config rules ------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("over", "match"), [
    ({"dpo.loss_type": "cdpo"}, "label_smoothing > 0"),
    ({"dpo.label_smoothing": 0.1}, "loss_type=cdpo"),
    ({"dpo.loss_type": "orpo", "dpo.precompute_ref": True}, "uses no reference model"),
    ({"dpo.batch_size": 5, "policy.num_workers": 2}, r"dpo\.batch_size \(5 pairs\).*policy\.num_workers"),
])
def test_dpo_config_rules(over: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_config(DPOConfig, overrides=list(over.items()))


def test_dpo_config_defaults() -> None:
    assert DPOConfig().dpo.effective_beta == 0.1
    assert build_config(DPOConfig, overrides=[("dpo.loss_type", "simpo")]).dpo.effective_beta == 2.0
    with pytest.raises(ConfigError, match="cannot hold KTO data"):
        build_config(KTOConfig, overrides=[("data.format", "sft")])


def test_synthetic_preferences() -> None:
    from raylhf.demo.tasks.demo_data import INSTRUCTION
    from raylhf.demo.tasks.dpo_pairs import (
        REJECTED_KINDS,
        preference_rows,
        preference_splits,
        unpaired_rows,
    )

    cfg = DPOConfig().demo.model_copy(update={"num_train": 200, "num_heldout": 50})
    train, heldout, prompts = preference_splits(cfg)
    assert len(train) == 200 and len(heldout) == len(prompts) == 50
    assert not {p.messages[-1]["content"] for p in train} & {p.messages[-1]["content"] for p in heldout}
    rows = preference_rows(prompts, seed=0)
    kinds = {k for k, _ in REJECTED_KINDS}
    for row, p in zip(rows, prompts, strict=True):
        assert row["prompt"].endswith(INSTRUCTION) and row["chosen"] == p.extras["equation"]
        assert row["rejected"] != row["chosen"] and row["rejected_kind"] in kinds
        if row["rejected_kind"] == "right_number_other_style":
            assert p.extras["solution"] in row["rejected"] and "=" not in row["rejected"]
    labels = [r["label"] for r in unpaired_rows(prompts, seed=0)]
    assert 0 < sum(labels) < len(labels)
