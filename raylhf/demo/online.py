"""The online trainers' demo (GRPO, PPO, online DPO with no data files): the cached SFT warm-up, then the trainer
on the arithmetic task; prints the held-out accuracy before / after. See docs/architecture.md."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from raylhf.config import GRPOConfig, OnlineDPOConfig, PPOConfig
from raylhf.demo.tasks.demo_data import demo_splits
from raylhf.demo.warmup import warmup_policy
from raylhf.driver.cluster import init_ray
from raylhf.driver.lifecycle import RunResult
from raylhf.driver.startup import required_cpus
from raylhf.trainers import grpo as grpo_trainer
from raylhf.trainers import online_dpo as online_dpo_trainer
from raylhf.trainers import ppo as ppo_trainer


def run_online_demo(cfg: Any, runner: Callable[..., RunResult], algo: Any, cpus: float) -> tuple[float, float]:
    """The cached SFT warm-up, then ``runner`` (a trainer's run, with its algorithm section ``algo`` and CPU need
    ``cpus``) on the arithmetic task; prints held-out accuracy; returns the asked form's (before, after)."""
    init_ray(cfg.ray, cpus)  # sized for the RL run before the SFT warm-up uses it
    start = warmup_policy(cfg)
    train, heldout = demo_splits(cfg.demo)
    res = runner(cfg, model_path=start, train=train, heldout=heldout)

    def pair(key: str) -> tuple[float, float]:
        return res.eval_before.get(key, float("nan")), res.eval_after.get(key, float("nan"))

    n, k, temp = len(heldout), algo.eval_samples, algo.eval_temperature
    if "eval/any_form_accuracy" in res.eval_after:
        (a0, a1), (ga0, ga1) = pair("eval/any_form_accuracy"), pair("eval/greedy_any_form_accuracy")
        print(f"demo: any-form heldout_accuracy (right number in any style) before={a0:.3f} after={a1:.3f}; "
              f"greedy before={ga0:.3f} after={ga1:.3f}", flush=True)
    (g0, g1), (before, after) = pair("eval/greedy_accuracy"), pair("eval/accuracy")
    print(f"demo: greedy heldout_accuracy before={g0:.3f} after={g1:.3f}; the line below is the asked form "
          f"(the right equation), mean@{k} at temperature {temp} on {n} held-out prompts", flush=True)
    print(f"demo: heldout_accuracy before={before:.3f} after={after:.3f}", flush=True)
    print(f"run dir: {res.run_dir}", flush=True)
    return before, after


def grpo_demo(cfg: GRPOConfig) -> int:
    run_online_demo(cfg, grpo_trainer.run_grpo, cfg.grpo, required_cpus(cfg, grpo_trainer.actor_groups(cfg)))
    return 0


def ppo_demo(cfg: PPOConfig) -> int:
    run_online_demo(cfg, ppo_trainer.run_ppo, cfg.ppo, required_cpus(cfg, ppo_trainer.actor_groups(cfg)))
    return 0


def online_dpo_demo(cfg: OnlineDPOConfig) -> int:
    run_online_demo(cfg, online_dpo_trainer.run_online_dpo, cfg.online_dpo, required_cpus(cfg, online_dpo_trainer.actor_groups(cfg)))
    return 0
