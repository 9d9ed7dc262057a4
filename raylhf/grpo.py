"""`python -m raylhf.grpo`: GRPO-family RL on Ray. With no arguments it runs the embedded demo.

One step (DESIGN.md): prompts -> vLLM rollouts -> rewards -> (reference log-probs) -> advantages ->
DeepSpeed update(s) -> weight sync. Mode details live in the config, not in branches of the loop.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from raylhf.config import GRPOConfig, cli_entry, to_yaml


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


def overlong_penalty(lengths: torch.Tensor, max_new: int, buffer: int, penalty: float) -> torch.Tensor:
    """DAPO soft overlong punishment: 0 until max_new - buffer, then a linear ramp to -penalty."""
    if buffer <= 0:
        return torch.zeros_like(lengths, dtype=torch.float32)
    excess = (lengths.float() - (max_new - buffer)).clamp(min=0)
    return -penalty * excess / buffer


def run_grpo(cfg: GRPOConfig, model_path: str | None = None, train: list | None = None,
             heldout: list | None = None) -> GRPOResult:
    """Run GRPO; ``model_path`` / ``train`` / ``heldout`` override the config's (the demo passes them)."""
    from actors.group import ActorGroup
    from actors.reference import ReferenceWorker
    from actors.reward import RewardWorker
    from raylhf import rl
    from raylhf.algos.advantages import compute_advantages
    from raylhf.assets import load_tokenizer
    from raylhf.batch import Objective
    from raylhf.data import drop_long_prompts, load_from_config, render_prompt
    from raylhf.runtime import MetricsLogger, init_ray, make_run_dir, plot_curves, resolve_model_path

    g, ro = cfg.grpo, cfg.rollout
    model_path = model_path or resolve_model_path(cfg.model)
    tokenizer = load_tokenizer(cfg.model.tokenizer or model_path)
    train = train if train is not None else load_from_config(cfg.data, "prompt", split="train")
    heldout = heldout if heldout is not None else (
        load_from_config(cfg.data, "prompt", split="eval") if cfg.data.eval_files else [])
    train, dropped = drop_long_prompts(tokenizer, train, cfg.data.max_prompt_length)
    if len(train) < g.prompt_batch_size:
        raise ValueError(f"only {len(train)} training prompts (after dropping {dropped} longer than "
                         f"data.max_prompt_length={cfg.data.max_prompt_length}); grpo.prompt_batch_size is "
                         f"{g.prompt_batch_size}")
    run_dir = make_run_dir(cfg.logging, "grpo")
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    print(f"[grpo] run dir {run_dir}; model {model_path}; {len(train)} train / {len(heldout)} held-out prompts",
          flush=True)

    init_ray(cfg.ray, required_cpus(cfg))
    max_len = cfg.data.max_prompt_length + ro.max_new_tokens + 8
    t0 = time.perf_counter()
    train_size = g.train_batch_size or g.prompt_batch_size * g.samples_per_prompt
    optimizer_steps = g.num_steps * g.updates_per_batch * (g.prompt_batch_size * g.samples_per_prompt // train_size)
    policy = rl.start_policy(cfg.policy, model_path, cfg.model.dtype, optimizer_steps, cfg.seed,
                             cfg.ray.placement_strategy, cfg.model.trust_remote_code)
    rollout = rl.start_rollout(ro, model_path, cfg.model.dtype, max_len, cfg.ray.placement_strategy,
                               cfg.model.trust_remote_code)
    reference = None
    if g.kl_coef > 0:
        reference = ActorGroup(ReferenceWorker, 1, name="reference", num_cpus=cfg.reference.num_cpus,
                               num_gpus=rl.gpus_per_rank(None), init_kwargs=dict(
                                   model_path=model_path, reference=cfg.reference.model_dump(),
                                   dtype=cfg.model.dtype, trust_remote_code=cfg.model.trust_remote_code))
    reward = ActorGroup(RewardWorker, cfg.reward.num_workers, name="reward", num_cpus=cfg.reward.num_cpus,
                        init_kwargs=dict(functions=[f.model_dump() for f in cfg.reward.functions]))
    workers = rl.Workers(policy, rollout, reference, reward)
    placement = {"policy": policy.call("node_id"), "rollout": rollout.call("node_id"),
                 "reward": reward.call("node_id")}
    print(f"[grpo] actors up in {time.perf_counter() - t0:.1f}s; nodes: "
          + ", ".join(f"{k}={sorted({n[:8] for n in v})}" for k, v in placement.items()), flush=True)

    heldout_ids = [render_prompt(tokenizer, ex.messages) for ex in heldout]
    def evaluate() -> dict[str, float]:
        if not heldout:
            return {}
        return rl.evaluate(rollout, reward, heldout, heldout_ids, tokenizer, ro.max_new_tokens, g.eval_samples,
                           g.eval_temperature)

    eval_before = evaluate()
    logger = MetricsLogger(run_dir, cfg.logging, g.num_steps, "grpo")
    if eval_before:
        logger.log(0, eval_before, advance=False)
    objective = Objective(
        pg_coef=1.0, kl_coef=g.kl_coef, kl_estimator=g.kl_estimator, entropy_coef=g.entropy_coef,
        clip_low=g.clip_low, clip_high=g.clip_high, dual_clip=g.dual_clip, is_level=g.importance_sampling,
        tis_cap=g.tis_cap, loss_agg=g.loss_agg, norm_const=float(ro.max_new_tokens),
        temperature=ro.temperature if ro.temperature > 0 else 1.0,
    )
    stream = rl.prompt_stream(train, g.prompt_batch_size, cfg.data.shuffle, cfg.data.seed)
    try:
        for step in range(1, g.num_steps + 1):
            m: dict[str, float] = {}
            t_step = time.perf_counter()
            # 1. sample
            prompts = next(stream)
            t = time.perf_counter()
            rollouts = rl.generate(rollout, [render_prompt(tokenizer, ex.messages) for ex in prompts],
                                   g.samples_per_prompt)
            m["time/generate"] = time.perf_counter() - t
            n_tok = sum(len(r.response_ids) for r in rollouts)
            m["perf/gen_tokens_per_s"] = n_tok / max(m["time/generate"], 1e-9)
            # 2. score
            t = time.perf_counter()
            rewards, per_fn = rl.score(reward, rollouts, prompts, tokenizer)
            lengths = torch.tensor([len(r.response_ids) for r in rollouts])
            if g.overlong == "penalty":
                rewards = rewards + overlong_penalty(lengths, ro.max_new_tokens, g.overlong_buffer,
                                                     g.overlong_penalty)
            m["time/reward"] = time.perf_counter() - t
            # 3. advantages (pure function on the driver)
            adv = compute_advantages(g.advantage, rewards, g.samples_per_prompt, scale=g.scale_rewards)
            m.update({f"reward/{k.removeprefix('reward_')}": v for k, v in adv.metrics.items()})
            for name, vals in per_fn.items():
                m[f"reward/{name}"] = sum(vals) / len(vals)
            m["response/len_mean"] = float(lengths.float().mean())
            m["response/truncated_frac"] = float(sum(r.truncated for r in rollouts) / len(rollouts))
            batch = rl.to_train_batch(rollouts, adv.advantages, mask_truncated=g.overlong == "mask")
            if g.dynamic_sampling:
                std = rewards.view(-1, g.samples_per_prompt).std(dim=1)
                keep = [i for i in range(len(rollouts)) if std[i // g.samples_per_prompt] > 0]
                batch = batch.select(keep)
                m["batch/kept_frac"] = len(keep) / len(rollouts)
            batch = rl.split_for_ranks(batch, cfg.policy.num_workers)
            if len(batch) == 0:
                m["time/step"] = time.perf_counter() - t_step
                logger.log(step, m)
                continue
            # 4. reference log-probs (only with a KL term)
            if reference is not None:
                t = time.perf_counter()
                batch.ref_logprobs = reference.call_split("logprobs", batch.input_ids, objective.temperature)
                batch.ref_logprobs = [x for part in batch.ref_logprobs for x in part]
                m["time/reference"] = time.perf_counter() - t
            # 5. old log-probs: only when the batch is used for several optimizer steps
            minibatches = [list(range(s, min(s + train_size, len(batch)))) for s in range(0, len(batch), train_size)]
            if g.updates_per_batch > 1 or len(minibatches) > 1:
                t = time.perf_counter()
                parts = policy.call_split("logprobs", batch.input_ids, objective.temperature)
                batch.old_logprobs = [x for part in parts for x in part]
                m["time/old_logprobs"] = time.perf_counter() - t
            # 6. train
            t = time.perf_counter()
            train_metrics: list[dict[str, float]] = []
            for _ in range(g.updates_per_batch):
                for idx in minibatches:
                    mb = rl.split_for_ranks(batch.select(idx), cfg.policy.num_workers)
                    if len(mb) == 0:
                        continue
                    per_rank = policy.call_split("train_step", mb, objective.with_counts(mb))
                    train_metrics.append(_reduce_ranks(per_rank))
            m["time/train"] = time.perf_counter() - t
            m.update(_mean_dicts(train_metrics))
            # 7. weight sync
            m["time/sync"] = rl.sync_weights(policy, rollout, ro.sync_bucket_mb)
            if g.eval_every and step % g.eval_every == 0 and step < g.num_steps:
                m.update(evaluate())
            m["time/step"] = time.perf_counter() - t_step
            m["perf/samples_per_s"] = len(rollouts) / m["time/step"]
            logger.log(step, m)
        eval_after = evaluate()
        if eval_after:
            logger.log(g.num_steps, eval_after, advance=False)
        ckpt = None
        if cfg.checkpoint.save_final:
            ckpt = policy.call("save", str(run_dir / "checkpoint"))[0]
        plot = plot_curves(logger.history, ["reward/mean", "reward/accuracy", "eval/accuracy", "eval/greedy_accuracy"],
                           run_dir / "curves.png", "GRPO")
        if plot:
            print(f"[grpo] curves {plot}", flush=True)
        logger.close()
    finally:
        workers.shutdown()
    return GRPOResult(run_dir, logger.history, eval_before, eval_after, ckpt, placement)


def _reduce_ranks(per_rank: list[dict[str, float]]) -> dict[str, float]:
    """Sum the globally-normalized losses over ranks; average everything else."""
    out: dict[str, float] = {}
    for k in per_rank[0]:
        vals = [d[k] for d in per_rank]
        out[k] = sum(vals) if k.startswith(("loss/", "entropy", "train_tokens")) else sum(vals) / len(vals)
    return out


def _mean_dicts(rows: list[dict[str, float]]) -> dict[str, float]:
    if not rows:
        return {}
    return {k: sum(r.get(k, 0.0) for r in rows) / len(rows) for k in rows[0]}


def main(argv: Sequence[str] | None = None) -> int:
    cfg = cli_entry(GRPOConfig, argv, "raylhf.grpo")
    if cfg is None:
        return 0
    if not cfg.data.train_files:
        from raylhf.demo import run_demo

        run_demo(cfg)
        return 0
    res = run_grpo(cfg)
    print(f"run dir: {res.run_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
