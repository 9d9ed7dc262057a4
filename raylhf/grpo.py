"""`python -m raylhf.grpo`: GRPO-family RL on Ray. With no arguments it runs the embedded demo.

One step (DESIGN.md): prompts -> vLLM rollouts -> rewards -> (reference log-probs) -> advantages ->
DeepSpeed update(s) -> weight sync. Mode details live in the config, not in branches of the loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raylhf.config import GRPOConfig


@dataclass
class GRPOResult:
    run_dir: Path
    history: list[dict[str, Any]]
    eval_before: dict[str, float]
    eval_after: dict[str, float]
    checkpoint: str | None
    placement: dict[str, list[str]]


def required_cpus(cfg: GRPOConfig) -> float:
    ref = cfg.reference.num_cpus if cfg.grpo.kl_coef > 0 else 0.0
    return (cfg.policy.num_workers * cfg.policy.num_cpus_per_worker
            + cfg.rollout.num_engines * cfg.rollout.num_cpus_per_engine
            + ref + cfg.reward.num_workers * cfg.reward.num_cpus)


def run_grpo(cfg: GRPOConfig, model_path: str | None = None, train: list | None = None,
             heldout: list | None = None) -> GRPOResult:
    """Run GRPO; ``model_path`` / ``train`` / ``heldout`` override the config's (the demo passes them).

    With ``checkpoint.resume`` it continues a run from its checkpoint: same run dir, weights, optimizer,
    LR schedule, data position and RNG states, so the remaining steps repeat what the run would have done.
    """
    from raylhf import rl
    from raylhf.agent.multiturn import episode_metrics
    from raylhf.algos.advantages import compute_advantages
    from raylhf.batch import Objective
    from raylhf.data import load_from_config
    from raylhf.online import online_run
    from raylhf.runtime import resolve_model_path

    g, ro = cfg.grpo, cfg.rollout
    model_path = model_path or resolve_model_path(cfg.model)
    train = train if train is not None else load_from_config(cfg.data, "prompt", split="train")
    heldout = heldout if heldout is not None else (
        load_from_config(cfg.data, "prompt", split="eval") if cfg.data.eval_files else [])
    train_size = g.train_batch_size or g.prompt_batch_size * g.samples_per_prompt
    optimizer_steps = g.num_steps * g.updates_per_batch * (g.prompt_batch_size * g.samples_per_prompt // train_size)
    objective = Objective(
        pg_coef=1.0, kl_coef=g.kl_coef, kl_estimator=g.kl_estimator, entropy_coef=g.entropy_coef,
        clip_low=g.clip_low, clip_high=g.clip_high, dual_clip=g.dual_clip, is_level=g.importance_sampling,
        tis_cap=g.tis_cap, loss_agg=g.loss_agg, norm_const=float(ro.max_new_tokens),
        temperature=ro.temperature if ro.temperature > 0 else 1.0,
    )
    world = cfg.policy.num_workers
    agent = _agent(cfg, model_path) if cfg.agent.template else None  # multi-turn episodes with tools
    if agent is not None:
        train, heldout = agent.add_tools(train), agent.add_tools(heldout)
    curves = ["reward/mean", "reward/accuracy", "eval/accuracy", "eval/greedy_accuracy", "eval/any_form_accuracy"]
    with online_run(cfg, g, "grpo", model_path, train, heldout, optimizer_steps, required_cpus(cfg), curves,
                    rollout_fn=agent, async_steps=g.async_steps) as run:
        for step, prompts, prompt_ids in run.steps():
            rollouts = run.generate(prompt_ids, g.samples_per_prompt, step)
            scores = run.score(rollouts, prompts, step)
            rewards = rl.fill_unscored(scores.total, g.samples_per_prompt)
            adv = compute_advantages(g.advantage, rewards, g.samples_per_prompt, scale=g.scale_rewards)
            batch = rl.to_train_batch(rollouts, adv.advantages, mask_truncated=g.overlong == "mask")
            keep = rl.varied_groups(rewards, g.samples_per_prompt) if g.dynamic_sampling else range(len(batch))
            batch = batch.select([i for i in keep if scores.scored[i]])  # unscored samples never reach the loss
            batch = rl.split_for_ranks(batch, world)
            m = {**rl.rollout_metrics(rollouts, scores, run.timer), **rl.prefixed("reward/", adv.metrics),
                 "batch/kept_frac": len(batch) / len(rollouts)}
            if agent is not None:
                m.update(episode_metrics(rollouts))
            if len(batch):
                if run.workers.reference is not None:
                    batch.ref_logprobs = run.logprobs("reference", batch, objective.temperature)
                if g.updates_per_batch > 1 or len(batch) > train_size:  # the batch feeds several updates
                    batch.old_logprobs = run.logprobs("policy", batch, objective.temperature)
                with run.timer("train"):
                    m.update(rl.train(run.policy, batch, objective, train_size, g.updates_per_batch, world))
                run.sync()
            run.end_step(step, m, batch, len(rollouts))
    return GRPOResult(run.run_dir, run.logger.history, run.eval_before, run.eval_after, run.checkpoint,
                      run.placement)


def _agent(cfg: GRPOConfig, model_path: str) -> Any:
    """The multi-turn episode runner of ``cfg.agent`` (raylhf/agent/multiturn.py)."""
    from raylhf.agent.multiturn import EpisodeRunner
    from raylhf.assets import load_tokenizer
    from raylhf.data import DataError

    tokenizer = load_tokenizer(cfg.model.tokenizer or model_path)
    runner = EpisodeRunner.from_config(cfg.agent, tokenizer, cfg.rollout.max_new_tokens)
    need = runner.tools_prompt_tokens()
    if need > cfg.data.max_prompt_length:
        raise DataError(f"the system message that offers agent.tools={cfg.agent.tools} in the "
                        f"agent.template={cfg.agent.template} format takes {need} tokens, more than "
                        f"data.max_prompt_length={cfg.data.max_prompt_length}: raise data.max_prompt_length (the "
                        "model's context must hold it plus rollout.max_new_tokens)")
    return runner


def main(argv: Sequence[str] | None = None) -> int:
    from raylhf.runtime import run_main

    return run_main("raylhf.grpo", GRPOConfig, argv, _run)


def _run(cfg: GRPOConfig) -> int:
    if not cfg.data.train_files:
        run_default(cfg)
        return 0
    res = run_grpo(cfg)
    print(f"run dir: {res.run_dir}")
    return 0


# ---- the embedded default run (no data files): SFT warm-up, then GRPO on the arithmetic task ------------

def warmup_policy(cfg: GRPOConfig) -> str:
    """The SFT warm-up checkpoint for this demo config (trained once, then cached)."""
    import hashlib
    import json
    import shutil

    from raylhf.config import SFTConfig
    from raylhf.config.schema import SFTAlgoConfig
    from raylhf.runtime import cache_root
    from raylhf.tasks.demo_data import demo_sft_examples

    sft_cfg = SFTConfig(
        model=cfg.model, policy=cfg.policy.model_copy(update={"lr": cfg.demo.sft_lr, "micro_batch_size": 32, "num_cpus_per_worker": 2,
                                                                 "lr_scheduler": "cosine", "warmup_steps": 10}),
        sft=SFTAlgoConfig(num_steps=max(1, cfg.demo.sft_steps), batch_size=32, max_length=64),
        logging=cfg.logging.model_copy(update={"run_name": None}), ray=cfg.ray, seed=cfg.seed,
    )
    examples = demo_sft_examples(cfg.demo)
    # only what shapes the weights: not logging, placement, checkpointing or the run's guards
    key_src = json.dumps({"sft": sft_cfg.model_dump(mode="json", exclude={"logging": True, "ray": True,
                                                                          "checkpoint": True, "runtime": True,
                                                                          "policy": {"num_cpus_per_worker"}}),
                          "data": [[e.messages, e.response] for e in examples]}, sort_keys=True)
    key = hashlib.sha256(key_src.encode()).hexdigest()[:12]
    root = Path(cfg.demo.cache_dir) if cfg.demo.cache_dir else cache_root() / "demo"
    target = root / f"sft-warmup-{key}"
    if (target / "config.json").exists():
        print(f"[demo] using cached SFT warm-up policy {target}", flush=True)
        return str(target)
    if cfg.demo.sft_steps == 0:
        from raylhf.runtime import resolve_model_path

        return resolve_model_path(cfg.model)
    print(f"[demo] SFT warm-up: {sft_cfg.sft.num_steps} steps on {cfg.demo.sft_examples} demonstrations", flush=True)
    from raylhf.sft import run_sft

    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    run_sft(sft_cfg, examples=examples, save_to=tmp)
    tmp.rename(target)
    return str(target)


def run_default(cfg: Any, runner: Any = None, algo: Any = None, cpus: float | None = None) -> tuple[float, float]:
    """The embedded demo: the cached SFT warm-up, then ``runner`` (default run_grpo; PPO passes its own, with
    its algorithm section ``algo`` and CPU need ``cpus``) on the arithmetic task; prints held-out accuracy."""
    from raylhf.runtime import init_ray
    from raylhf.tasks.demo_data import demo_splits

    runner, algo = runner or run_grpo, algo or cfg.grpo
    init_ray(cfg.ray, cpus or required_cpus(cfg))  # sized for the RL run before the SFT warm-up uses it
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


if __name__ == "__main__":
    raise SystemExit(main())
