"""PPO through the real driver: a critic, PRM step rewards, the adaptive KL controller; the estimator
switch starts no critic; a critic rank that dies ends the run with a clear error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray
import torch

from raylhf.config import PPOConfig, build_config, to_yaml
from raylhf.demo.tasks.arithmetic import make_problems, write_jsonl

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]

ROOT = Path(__file__).resolve().parents[2]
PRM = '''from rewards import PRM

class DigitSteps(PRM):
    """One score per step (steps split by blank lines): the step's fraction of digit characters."""
    def __call__(self, completions, **kwargs):
        out = []
        for c in completions:
            steps = [s for s in c.split("\\n\\n") if s.strip()] or [c]
            out.append([sum(ch.isdigit() for ch in s) / max(1, len(s)) for s in steps])
        return out

prms = {"digit_steps": DigitSteps}
'''


def ppo_cfg(tmp_path: Path, model: Path, **over: object) -> PPOConfig:
    cols = {"prompt": "question", "solution": "answer"}
    train = write_jsonl(make_problems(32, seed=1, max_operand=9), tmp_path / "train.jsonl", cols)
    heldout = write_jsonl(make_problems(8, seed=2, max_operand=9), tmp_path / "eval.jsonl", cols)
    plugin = tmp_path.parent / "ppo_digit_prm.py"  # one file for the session: a second file registering the
    if not plugin.exists():                        # same reward name would be a (correct) duplicate-name error
        plugin.write_text(PRM)
    base: dict[str, object] = {
        "model.path": str(model), "data.train_files": [str(train)], "data.eval_files": [str(heldout)],
        "data.columns": cols, "reward.plugins": [str(plugin)],
        "reward.functions": [{"name": "accuracy"}, {"name": "digit_steps", "weight": 1.0}],
        "ppo.num_steps": 2, "ppo.prompt_batch_size": 4, "ppo.samples_per_prompt": 2, "ppo.kl_target": 0.01,
        "ppo.kl_horizon": 100, "rollout.max_new_tokens": 8, "policy.micro_batch_size": 4, "critic.micro_batch_size": 4,
        "policy.lr": 1e-3, "rollout.num_cpus_per_engine": 1, "policy.num_cpus_per_worker": 1,
        "critic.num_cpus_per_worker": 1, "logging.run_dir": str(tmp_path / "runs"), "logging.progress": False,
        "checkpoint.save_final": False,
    }
    base.update(over)
    return build_config(PPOConfig, overrides=list(base.items()))


def _gae_by_hand(r: list[float], v: list[float], m: list[float], gamma: float, lam: float) -> list[float]:
    """GAE over the selected positions of one row, written as the textbook backward recursion."""
    sel = [t for t, x in enumerate(m) if x > 0]
    adv = [0.0] * len(r)
    running, next_v = 0.0, 0.0
    for t in reversed(sel):
        delta = r[t] + gamma * next_v - v[t]
        running = delta + gamma * lam * running
        adv[t], next_v = running, v[t]
    return adv


def test_ppo_with_critic_prm_steps_and_adaptive_kl(tmp_path: Path, tiny_model_dir: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Also: the GAE the driver computes from the live critic's values and the placed rewards equals the
    hand-written recursion, and the returns it trains the critic on are advantages + values."""
    import raylhf.algos.advantages as adv_mod
    from raylhf.trainers.ppo import run_ppo

    calls = []
    real_gae = adv_mod.gae

    def recording_gae(token_rewards, values, mask, gamma=1.0, lam=1.0):  # type: ignore[no-untyped-def]
        out = real_gae(token_rewards, values, mask, gamma, lam)
        calls.append((token_rewards.clone(), values.clone(), mask.clone(), gamma, lam, out))
        return out

    monkeypatch.setattr(adv_mod, "gae", recording_gae)
    res = run_ppo(ppo_cfg(tmp_path, tiny_model_dir))
    assert len(calls) == 2  # one per step
    for r, v, m, gamma, lam, out in calls:
        assert (gamma, lam) == (1.0, 0.95) and v.abs().sum() > 0  # the critic's values, not zeros
        for i in range(len(r)):
            expected = _gae_by_hand(r[i].tolist(), v[i].tolist(), m[i].tolist(), gamma, lam)
            assert out.advantages[i].tolist() == pytest.approx(expected, abs=1e-5)
        assert torch.allclose(out.returns, (out.advantages + v) * m, atol=1e-6)
    assert "critic" in res.placement
    rows = [r for r in res.history if "time/train" in r]
    assert [r["step"] for r in rows] == [1, 2]
    for key in ("critic/loss/value", "vf/explained_var", "critic/vf/clip_frac", "kl/coef", "kl/mean_seq",
                "reward/digit_steps", "reward/steps_unplaced_frac", "grad_norm", "critic/grad_norm"):
        assert key in rows[-1], key
    assert rows[0]["reward/steps_unplaced_frac"] < 1.0  # the PRM's steps were placed on step-end tokens
    assert rows[0]["kl/coef"] == pytest.approx(0.05)
    assert rows[1]["kl/coef"] != pytest.approx(0.05)  # the adaptive controller moved it after step 1
    assert rows[-1]["critic/grad_norm"] > 0 and rows[-1]["grad_norm"] > 0


def test_estimator_switch_starts_no_critic(tmp_path: Path, tiny_model_dir: Path) -> None:
    from raylhf.trainers.ppo import run_ppo

    res = run_ppo(ppo_cfg(tmp_path, tiny_model_dir, **{"ppo.advantage": "grpo", "ppo.num_steps": 1,
                                                       "ppo.kl_coef": 0.0, "data.eval_files": []}))
    assert set(res.placement) == {"policy", "rollout", "reward"}
    row = next(r for r in res.history if "time/train" in r)
    assert not any(k.startswith(("critic/", "vf/", "kl/")) for k in row)
    assert "reward/advantage_std" in row


def test_dead_critic_rank_ends_the_run_with_a_clear_error(tmp_path: Path, tiny_model_dir: Path) -> None:
    cfg = ppo_cfg(tmp_path, tiny_model_dir, **{"ppo.num_steps": 3, "data.eval_files": []})
    cfg_file = tmp_path / "ppo.yaml"
    cfg_file.write_text(to_yaml(cfg))
    env = {**os.environ, "RAYLHF_FAULT_INJECT": f"critic.train_step@3:{tmp_path / 'fired'}"}
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "raylhf.ppo", "--config", str(cfg_file),
         f"ray.address={ray.get_runtime_context().gcs_address}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-3000:]
    err = next(x for x in out.splitlines() if x.startswith("raylhf.ppo: error:"))
    assert "critic rank 0 died in critic.train_step" in err and "no checkpoint was written yet" in err
    rows = [json.loads(x) for x in (Path(cfg.logging.run_dir) / os.listdir(cfg.logging.run_dir)[0] /
                                    "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "time/step" in r] == [1]  # the critic died in step 2's update
    print(f"critic death to exit: {time.monotonic() - t0:.0f}s (run included)")
