"""`python -m raylhf.grpo`: GRPO-family RL on Ray. With no arguments it runs the embedded demo.

One step (docs/architecture.md): prompts -> vLLM rollouts -> rewards -> (reference log-probs) -> advantages ->
DeepSpeed update(s) -> weight sync. Mode details live in the config, not in branches of the loop.
"""

from __future__ import annotations

from typing import Any

from raylhf.agent.multiturn import EpisodeRunner, episode_metrics
from raylhf.algos.advantages import compute_advantages
from raylhf.config import GRPOConfig
from raylhf.core.batch import Objective
from raylhf.data import DataError, load_from_config
from raylhf.driver import phases
from raylhf.driver.cluster import resolve_model_path
from raylhf.driver.lifecycle import RunResult
from raylhf.driver.online import online_run
from raylhf.driver.startup import required_cpus


def actor_groups(cfg: GRPOConfig) -> list[str]:
    """The actor groups a GRPO run starts (the reference only with a KL term)."""
    return ["policy", "rollout", *(["reference"] if cfg.grpo.kl_coef > 0 else []), "reward"]


def run_grpo(cfg: GRPOConfig, model_path: str | None = None, train: list | None = None,
             heldout: list | None = None) -> RunResult:
    """Run GRPO; ``model_path`` / ``train`` / ``heldout`` override the config's (the demo passes them).

    With ``checkpoint.resume`` it continues a run from its checkpoint: same run dir, weights, optimizer,
    LR schedule, data position and RNG states, so the remaining steps repeat what the run would have done.
    """

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
        **g.objective_is_fields(), loss_agg=g.loss_agg, norm_const=float(ro.max_new_tokens),
        temperature=ro.temperature if ro.temperature > 0 else 1.0,
    )
    world = cfg.policy.num_workers
    agent = _agent(cfg, model_path) if cfg.agent.enabled else None  # multi-turn episodes
    if agent is not None:
        train, heldout = agent.prepare(train), agent.prepare(heldout)
    curves = ["reward/mean", "reward/accuracy", "eval/accuracy", "eval/greedy_accuracy", "eval/any_form_accuracy"]
    with online_run(cfg, g, "grpo", model_path, train, heldout, optimizer_steps, required_cpus(cfg, actor_groups(cfg)), curves,
                    rollout_fn=agent, async_steps=g.async_steps) as run:
        for step, prompts in run.steps():
            rollouts, prompts, scores = run.sample(step, prompts, g.samples_per_prompt,
                                                   varied=g.dynamic_sampling and not g.async_steps,
                                                   max_rounds=g.max_sampling_rounds)
            rewards = phases.fill_unscored(scores.total, g.samples_per_prompt)
            adv = compute_advantages(g.advantage, rewards, g.samples_per_prompt, scale=g.scale_rewards)
            run.log_completions(step, rollouts, scores, adv.advantages)
            batch = phases.to_train_batch(rollouts, adv.advantages, mask_truncated=g.overlong == "mask")
            keep = phases.varied_groups(rewards, g.samples_per_prompt) if g.dynamic_sampling else range(len(batch))
            batch = batch.select([i for i in keep if scores.scored[i]])  # unscored samples never reach the loss
            batch = phases.split_for_ranks(batch, world)
            m = {**phases.rollout_metrics(rollouts, scores, run.timer), **phases.prefixed("reward/", adv.metrics),
                 "batch/kept_frac": len(batch) / max(1, len(rollouts))}
            if agent is not None:
                m.update(episode_metrics(rollouts))
            if len(batch):
                if run.workers.reference is not None:
                    batch.ref_logprobs = run.logprobs("reference", batch, objective.temperature)
                if g.updates_per_batch > 1 or len(batch) > train_size:  # the batch feeds several updates
                    batch.old_logprobs = run.logprobs("policy", batch, objective.temperature)
                with run.timer("train"):
                    m.update(phases.train(run.policy, batch, objective, train_size, g.updates_per_batch, world))
                run.sync()
            run.end_step(step, m, batch, len(rollouts))
    return run.result()


def _agent(cfg: GRPOConfig, model_path: str) -> Any:
    """The multi-turn episode runner of ``cfg.agent`` (raylhf/agent/multiturn.py)."""

    runner = EpisodeRunner.from_config(cfg.agent, cfg.model.tokenizer or model_path, cfg.rollout.max_new_tokens,
                                       sandbox=cfg.sandbox)
    need = runner.tools_prompt_tokens()
    if need > cfg.data.max_prompt_length:
        raise DataError(f"the system message that offers agent.tools={cfg.agent.tools} in the "
                        f"agent.template={cfg.agent.template} format takes {need} tokens, more than "
                        f"data.max_prompt_length={cfg.data.max_prompt_length}: raise data.max_prompt_length (the "
                        "model's context must hold it plus rollout.max_new_tokens)")
    return runner


def cli(cfg: GRPOConfig) -> int:
    """`python -m raylhf.grpo` on the config's data files (without any: ``raylhf.demo.online``)."""
    res = run_grpo(cfg)
    print(f"run dir: {res.run_dir}")
    return 0
