"""`python -m raylhf.ppo`: PPO with a critic, and the estimator switch, on the RL driver's pieces.

One step: prompts -> vLLM rollouts -> rewards (outcome on the last token, PRM step scores on each step's
last token) -> old / reference log-probs -> KL in the reward (fixed or adaptive coefficient) or as a loss
term -> values -> GAE -> ``ppo_epochs`` passes of policy and critic updates -> weight sync. With
``ppo.advantage`` grpo / rloo / reinforce++ the sequence estimators of ``raylhf.algos.advantages`` are used
and no critic is started. With no data files it runs the embedded arithmetic task from the SFT warm-up.
"""

from __future__ import annotations

from typing import Any

import torch

from actors.common import pad
from actors.critic import CriticWorker, ValueBatch
from raylhf.algos import advantages
from raylhf.algos.advantages import compute_advantages, outcome_to_token_rewards
from raylhf.algos.kl import kl_penalty
from raylhf.algos.utils import masked_mean, masked_whiten
from raylhf.algos.value import AdaptiveKLController, FixedKLController, explained_variance
from raylhf.config import PPOConfig
from raylhf.core.batch import Objective
from raylhf.data import load_from_config
from raylhf.driver import phases
from raylhf.driver.cluster import resolve_model_path
from raylhf.driver.lifecycle import RunResult
from raylhf.driver.online import online_run
from raylhf.driver.startup import required_cpus, start_policy
from rewards.steps import step_spans


def actor_groups(cfg: PPOConfig) -> list[str]:
    """The actor groups a PPO run starts (the critic only for GAE, the reference only with a KL term)."""
    return ["policy", *(["critic"] if cfg.ppo.advantage == "gae" else []), "rollout",
            *(["reference"] if cfg.ppo.kl_coef > 0 else []), "reward"]


def step_end_positions(tokenizer: Any, response_ids: list[int], text: str, separator: str) -> list[int] | None:
    """Index (within the response) of the last token of each step of ``text`` split by ``separator``;
    None when the tokens do not decode to ``text``."""

    ends = []
    decoded = ""
    for k in range(len(response_ids)):
        decoded = tokenizer.decode(response_ids[: k + 1], skip_special_tokens=True)
        ends.append(len(decoded))
    if decoded.strip() != text.strip():
        return None
    out = []
    for _, end in step_spans(text, separator):
        k = next((k for k, e in enumerate(ends) if e >= end), len(ends) - 1)
        out.append(k)
    return out


def token_rewards(scores: Any, rollouts: list[Any], rewards: torch.Tensor, mask: torch.Tensor, tokenizer: Any,
                  separator: str) -> tuple[torch.Tensor, float]:
    """``[B, L]`` rewards: each sequence's total on its last response token, except that a PRM's weighted step
    scores go on the last token of each step (its aggregate leaves the total). Returns the rewards and the
    fraction of PRM-scored samples whose steps could not be placed (their aggregate stays on the last token)."""

    out = outcome_to_token_rewards(rewards, mask)
    misplaced, tried = 0, 0
    for name, per_sample in scores.steps.items():
        weight = scores.weights.get(name, 1.0)
        for i, steps in enumerate(per_sample):
            agg = scores.per_function[name][i]
            if not steps or agg is None or not weight:
                continue
            tried += 1
            r = rollouts[i]
            ends = step_end_positions(tokenizer, r.response_ids, r.text, separator)
            if ends is None or len(ends) != len(steps):
                misplaced += 1
                continue
            last = int(mask[i].nonzero().max())
            out[i, last] -= weight * float(agg)
            for k, s in zip(ends, steps, strict=True):
                out[i, len(r.prompt_ids) + k] += weight * float(s)
    return out, misplaced / tried if tried else 0.0


def run_ppo(cfg: PPOConfig, model_path: str | None = None, train: list | None = None,
            heldout: list | None = None) -> RunResult:
    """Run PPO (or the sequence estimators); overrides as in ``run_grpo``. Returns the run's result."""

    p, ro = cfg.ppo, cfg.rollout
    model_path = model_path or resolve_model_path(cfg.model)
    train = train if train is not None else load_from_config(cfg.data, "prompt", split="train")
    heldout = heldout if heldout is not None else (
        load_from_config(cfg.data, "prompt", split="eval") if cfg.data.eval_files else [])
    n = p.samples_per_prompt
    train_size = p.train_batch_size or p.prompt_batch_size * n
    optimizer_steps = p.num_steps * p.ppo_epochs * (p.prompt_batch_size * n // train_size)
    temperature = ro.temperature if ro.temperature > 0 else 1.0
    kl_ctl = (AdaptiveKLController(p.kl_coef, p.kl_target, p.kl_horizon) if p.kl_target
              else FixedKLController(p.kl_coef))
    use_critic = p.advantage == "gae"
    critic_obj = Objective(pg_coef=0.0, extra={"value_clip": p.value_clip})

    def start_critic(workers: Any) -> None:
        if use_critic:
            workers.critic = start_policy(
                cfg.critic, cfg.critic.model_path or model_path, cfg.model.dtype, optimizer_steps, cfg.seed,
                cfg.ray.placement_strategy, cfg.model.trust_remote_code, cfg.runtime.phase_timeout_s or None,
                worker_cls=CriticWorker, group_name="critic")

    curves = ["reward/accuracy", "eval/accuracy", "eval/greedy_accuracy", "critic/loss/value"]
    with online_run(cfg, p, "ppo", model_path, train, heldout, optimizer_steps, required_cpus(cfg, actor_groups(cfg)), curves,
                    start_extra=start_critic) as run:
        kl_ctl.value = float(run.extra_state.get("kl_coef", kl_ctl.value))
        for step, prompts in run.steps():
            rollouts = run.generate(step, n)
            scores = run.score(rollouts, prompts, step)
            run.log_completions(step, rollouts, scores, None)
            rewards = phases.fill_unscored(scores.total, n)
            batch = phases.to_train_batch(rollouts, torch.zeros(len(rollouts)))
            keep = [i for i in range(len(batch)) if scores.scored[i]]  # unscored samples never reach the loss
            keep = keep[: len(keep) - len(keep) % cfg.policy.num_workers]
            batch, kept = batch.select(keep), [rollouts[i] for i in keep]
            m: dict[str, float] = {**phases.rollout_metrics(rollouts, scores, run.timer), "batch/kept_frac": len(keep) / len(rollouts)}
            batch.old_logprobs = run.logprobs("policy", batch, temperature)
            mask = pad(batch.loss_mask, 0.0)
            old = pad(batch.old_logprobs, 0.0)
            tok_r, m["reward/steps_unplaced_frac"] = token_rewards(
                _Sub(scores, keep), kept, rewards[keep], mask, run.tokenizer, p.step_separator)
            if run.workers.reference is not None:
                batch.ref_logprobs = run.logprobs("reference", batch, temperature)
                kl = kl_penalty(old, pad(batch.ref_logprobs, 0.0), p.kl_estimator, mask=mask)
                m["kl/mean_seq"] = float(kl.sum(1).mean())
                m["kl/coef"] = kl_ctl.value
                if p.kl_in_reward:
                    tok_r = tok_r - kl_ctl.value * kl
            if use_critic:
                with run.timer("values"):
                    old_values = pad(phases.values(run.workers.critic, batch), 0.0)
                est = advantages.gae(tok_r, old_values, mask, p.gamma, p.lam)  # looked up per call (tests spy on it)
                adv = masked_whiten(est.advantages, mask) if p.whiten_advantages else est.advantages
                m["vf/explained_var"] = explained_variance(old_values, est.returns, mask)
                m["reward/return_mean"] = float(masked_mean(est.returns, mask))
            else:
                seq = compute_advantages(p.advantage, tok_r.sum(1), n if len(keep) == len(rollouts) else 1,
                                         scale=p.scale_rewards)
                adv = seq.advantages[:, None] * mask
                m.update(phases.prefixed("reward/", seq.metrics))
            batch.advantages = [adv[i, : len(x)] for i, x in enumerate(batch.input_ids)]
            if use_critic:
                vbatch = ValueBatch(input_ids=batch.input_ids, loss_mask=batch.loss_mask,
                                    returns=[est.returns[i, : len(x)] for i, x in enumerate(batch.input_ids)],
                                    old_values=[old_values[i, : len(x)] for i, x in enumerate(batch.input_ids)])
                with run.timer("train_critic"):
                    critic_m = phases.train(run.workers.critic, vbatch, critic_obj, train_size, p.ppo_epochs,
                                        cfg.critic.num_workers)
                m.update({f"critic/{k}": v for k, v in critic_m.items() if not k.startswith(("time/", "guard/"))})
            if step > p.critic_warmup_steps and len(batch):
                objective = Objective(
                    pg_coef=1.0, kl_coef=0.0 if p.kl_in_reward else kl_ctl.value, kl_estimator=p.kl_estimator,
                    entropy_coef=p.entropy_coef, clip_low=p.clip_low, clip_high=p.clip_high, loss_agg=p.loss_agg,
                    temperature=temperature)
                with run.timer("train"):
                    m.update(phases.train(run.policy, batch, objective, train_size, p.ppo_epochs, cfg.policy.num_workers))
                run.sync()
            if "kl/mean_seq" in m:
                kl_ctl.update(m["kl/mean_seq"], len(batch))
                run.extra_state["kl_coef"] = kl_ctl.value
            run.end_step(step, m, batch, len(rollouts))
    return run.result()


class _Sub:
    """The scores of the kept samples only (the view ``token_rewards`` needs)."""

    def __init__(self, scores: Any, keep: list[int]) -> None:
        self.weights = scores.weights
        self.per_function = {k: [v[i] for i in keep] for k, v in scores.per_function.items()}
        self.steps = {k: [v[i] for i in keep] for k, v in scores.steps.items()}


def cli(cfg: PPOConfig) -> int:
    """`python -m raylhf.ppo` on the config's data files (without any: ``raylhf.demo.online``)."""
    res = run_ppo(cfg)
    print(f"run dir: {res.run_dir}")
    return 0
