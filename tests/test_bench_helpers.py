"""The benchmark scripts' own arithmetic and plumbing (benchmarks/), so their figures can be trusted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import grpo_vs_trl as bench  # noqa: E402


def geometric_mean_length(p: float, max_len: int) -> float:
    """Hand formula: a stop probability p at every position, capped at max_len: sum_t (1-p)^t, t < max_len."""
    return (1 - (1 - p) ** max_len) / p


@pytest.mark.parametrize("p", [0.01, 0.05, 0.3])
def test_expected_length_matches_the_geometric_formula_for_a_constant_stop_probability(p: float) -> None:
    rows, t = 3, 128
    logit = torch.logit(torch.tensor(p, dtype=torch.float64))
    f64 = {"dtype": torch.float64}
    base_eos, h0, rest = torch.full((rows, t), float(logit), **f64), torch.zeros(rows, t, **f64), torch.zeros(rows, t, **f64)
    assert bench.expected_length(base_eos, h0, rest, w=0.0) == pytest.approx(geometric_mean_length(p, t), rel=1e-9)


def test_expected_length_edges_and_the_weight_direction() -> None:
    t = 16
    never, always = torch.full((1, t), -60.0), torch.full((1, t), 60.0)
    zeros = torch.zeros(1, t)
    assert bench.expected_length(never, zeros, zeros, 0.0) == pytest.approx(t)  # never stops: max length
    assert bench.expected_length(always, zeros, zeros, 0.0) == pytest.approx(1.0)  # stops at the first token
    # a position-dependent case by hand: p = 0.5 at t=0, then 0: E[len] = 0.5 * 1 + 0.5 * t
    base = torch.full((1, t), -60.0)
    base[0, 0] = 0.0
    assert bench.expected_length(base, zeros, zeros, 0.0) == pytest.approx(0.5 + 0.5 * t)
    h0 = torch.ones(1, t)
    lengths = [bench.expected_length(zeros - 3, h0, zeros, w) for w in (-1.0, 0.0, 1.0)]
    assert lengths[0] > lengths[1] > lengths[2]  # a larger EOS weight stops sooner


def test_chat_ids_counts_tokens_not_encoding_keys() -> None:
    from raylhf.assets import load_tokenizer

    tok = load_tokenizer(None)
    ids = bench.chat_ids(tok, "What is 12 + 30?")
    text = tok.apply_chat_template(bench.user_turn("What is 12 + 30?"), tokenize=False, add_generation_prompt=True)
    assert all(isinstance(i, int) for i in ids)
    assert len(ids) > 5  # the bug this guards against: len(BatchEncoding) == 2
    assert ids == tok(text, add_special_tokens=False)["input_ids"]


def test_token_budget_is_micro_batch_times_longest_padded_row() -> None:
    from raylhf.assets import load_tokenizer

    args = Namespace(warmup=1, steps=1, cooldown=0, prompts_per_step=3, micro_batch_size=4, max_new_tokens=10)
    tok = load_tokenizer(None)
    longest = max(len(bench.chat_ids(tok, r["prompt"])) for r in bench.problems(args))
    assert bench.token_budget(args, "") == 4 * (longest + 10)


@pytest.mark.timeout(300)
def test_gpu_check_script_runs_on_cpu_with_the_ray_stub(tmp_path: Path) -> None:
    """benchmarks/gpu_policy_step.py is only run for real on a lent GPU machine; its CPU path (gloo, fp32, tiny
    model, ray stubbed as on that machine) keeps it from rotting between loans."""
    env = {**os.environ, "OUT": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_policy_step.py"), "--model", "tiny", "--quick",
         "--force-ray-stub", "--out", str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=280,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "PASS  parity packed vs unpacked fp32 z2" in proc.stdout
    result = json.loads((tmp_path / "gpu_policy_step_tiny.json").read_text())
    assert result
