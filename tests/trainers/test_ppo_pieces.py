"""PPO's driver-side pieces on hand-worked numbers: reward placement (outcome, PRM steps, KL) and GAE as
run_ppo chains them."""

from __future__ import annotations

import pytest
import torch

from raylhf.algos.advantages import gae
from raylhf.assets import TOKENIZER_DIR, load_tokenizer
from raylhf.core.batch import Rollout
from raylhf.driver.phases import Scores
from raylhf.trainers.ppo import step_end_positions, token_rewards


def _rollout(tok, prompt: str, text: str) -> Rollout:
    p = tok(prompt, add_special_tokens=False)["input_ids"]
    r = tok(text, add_special_tokens=False)["input_ids"]
    return Rollout(0, p, r, [0.0] * len(r), "stop", text)


def test_step_end_positions_find_the_last_token_of_each_step() -> None:
    tok = load_tokenizer(str(TOKENIZER_DIR))
    r = _rollout(tok, "Q", "3+4=7\n\nso 7")
    ends = step_end_positions(tok, r.response_ids, r.text, "\n\n")
    assert ends is not None and len(ends) == 2 and ends[-1] == len(r.response_ids) - 1
    first = tok.decode(r.response_ids[: ends[0] + 1], skip_special_tokens=True)
    assert first.startswith("3+4=7") and "so" not in first
    assert step_end_positions(tok, r.response_ids, "other text", "\n\n") is None


def test_token_rewards_put_prm_steps_on_step_ends_and_the_rest_on_the_last_token() -> None:
    tok = load_tokenizer(str(TOKENIZER_DIR))
    rolls = [_rollout(tok, "Q", "3+4=7\n\nso 7"), _rollout(tok, "Q", "no steps here")]
    ids_len = [len(r.prompt_ids) + len(r.response_ids) for r in rolls]
    mask = torch.zeros(2, max(ids_len))
    for i, r in enumerate(rolls):
        mask[i, len(r.prompt_ids): ids_len[i]] = 1.0
    # an ORM (weight 1) gave 1.0 and 0.0; a PRM (weight 2) gave steps [0.2, 0.6] (aggregate min = 0.2) to the
    # first sample and one step [0.5] that cannot be placed (one span, but the text has no match) to none
    scores = Scores(torch.tensor([1.0 + 2 * 0.2, 0.0]), {"orm": [1.0, 0.0], "prm": [0.2, None]},
                    {"prm": [[0.2, 0.6], None]}, {}, {"orm": 1.0, "prm": 2.0})
    out, unplaced = token_rewards(scores, rolls, scores.total, mask, tok, "\n\n")
    ends = step_end_positions(tok, rolls[0].response_ids, rolls[0].text, "\n\n")
    assert ends is not None
    p0 = len(rolls[0].prompt_ids)
    expected = torch.zeros_like(out[0])
    expected[p0 + ends[0]] += 2 * 0.2
    expected[p0 + ends[1]] += 2 * 0.6 + 1.0  # the last step's end is the last token: ORM's 1.0 lands there too
    assert torch.allclose(out[0], expected)
    assert out[1].sum() == 0.0 and unplaced == 0.0
    assert float(out[0].sum()) == pytest.approx(1.0 + 2 * 0.8)  # steps add up; the aggregate left the total


def test_gae_on_the_placed_rewards_by_hand() -> None:
    """A 3-token response, reward 1 on the last token, per-token KL penalty 0.1 x [0.5, 0, 1], values
    [0.2, 0.4, 0.6], gamma 1, lambda 1: advantages are returns-to-go minus values."""
    mask = torch.tensor([[0.0, 1.0, 1.0, 1.0]])
    r = torch.tensor([[0.0, 0.0, 0.0, 1.0]]) - 0.1 * torch.tensor([[0.0, 0.5, 0.0, 1.0]])
    v = torch.tensor([[0.0, 0.2, 0.4, 0.6]])
    est = gae(r, v, mask, gamma=1.0, lam=1.0)
    # returns-to-go: token1: -0.05 + 0 + 0.9 = 0.85; token2: 0.9; token3: 0.9
    assert est.returns[0, 1:].tolist() == pytest.approx([0.85, 0.9, 0.9])
    assert est.advantages[0, 1:].tolist() == pytest.approx([0.65, 0.5, 0.3])
    est = gae(r, v, mask, gamma=1.0, lam=0.5)
    # deltas: t1: -0.05 + 0.4 - 0.2 = 0.15; t2: 0 + 0.6 - 0.4 = 0.2; t3: 0.9 - 0.6 = 0.3
    # A3 = 0.3; A2 = 0.2 + 0.5*0.3 = 0.35; A1 = 0.15 + 0.5*0.35 = 0.325
    assert est.advantages[0, 1:].tolist() == pytest.approx([0.325, 0.35, 0.3])


def test_online_dpo_pairs_best_and_worst_and_skips_ties() -> None:
    from raylhf.trainers.online_dpo import best_worst_pairs

    nan = float("nan")
    r = torch.tensor([0.1, 0.9, 0.5, 0.9,   1.0, 1.0, 1.0, 1.0,   nan, 0.2, nan, nan,   0.3, nan, 0.0, 0.31])
    assert best_worst_pairs(r, 4) == [(1, 0), (15, 14)]  # group 2 ties, group 3 has one scored sample
    assert best_worst_pairs(r, 4, min_margin=0.5) == [(1, 0)]
