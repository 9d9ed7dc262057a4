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


def run_grpo(cfg: GRPOConfig, model_path: str | None = None, train: list | None = None,
             heldout: list | None = None) -> GRPOResult:
    """Run GRPO; ``model_path`` / ``train`` / ``heldout`` override the config's (the demo passes them).

    With ``checkpoint.resume`` it continues a run from its checkpoint: same run dir, weights, optimizer,
    LR schedule, data position and RNG states, so the remaining steps repeat what the run would have done.
    """
    from actors.group import WorkerError
    from raylhf import checkpoint as ckpts
    from raylhf import rl
    from raylhf.algos.advantages import compute_advantages
    from raylhf.assets import load_tokenizer
    from raylhf.batch import Objective
    from raylhf.data import drop_long_prompts, load_from_config, render_prompt
    from raylhf.guard import BadStepGuard
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
    resume_from = ckpts.resolve_resume(cfg.checkpoint.resume, Path(cfg.logging.run_dir), cfg.logging.run_name, "grpo")
    state = ckpts.read_state(resume_from) if resume_from else {}
    start_step = int(state.get("step", 0))
    run_dir = ckpts.run_dir_of(resume_from) if resume_from else make_run_dir(cfg.logging, "grpo")
    (run_dir / ("config.resumed.yaml" if resume_from else "config.yaml")).write_text(to_yaml(cfg))
    print(f"[grpo] run dir {run_dir}; model {model_path}; {len(train)} train / {len(heldout)} held-out prompts"
          + (f"; resuming after step {start_step} from {resume_from}" if resume_from else ""), flush=True)

    # created first: a missing tracker package (wandb) fails here, before any actor starts
    logger = MetricsLogger(run_dir, cfg.logging, g.num_steps, "grpo", run_config=cfg.model_dump(mode="json"),
                           resume_step=start_step if resume_from else None)
    last_ckpt: Path | None = resume_from
    try:
        init_ray(cfg.ray, required_cpus(cfg))
        max_len = cfg.data.max_prompt_length + ro.max_new_tokens + 8
        t0 = time.perf_counter()
        train_size = g.train_batch_size or g.prompt_batch_size * g.samples_per_prompt
        optimizer_steps = g.num_steps * g.updates_per_batch * (g.prompt_batch_size * g.samples_per_prompt // train_size)
        workers = rl.start_workers(cfg, model_path, optimizer_steps, max_len)
        policy, rollout, reward, reference = workers.policy, workers.rollout, workers.reward, workers.reference
        assert policy is not None and rollout is not None and reward is not None
        recovery = rl.Recovery(workers, cfg.runtime.max_actor_restarts, ro.sync_bucket_mb, "grpo")
        try:
            placement = {"policy": policy.call("node_id"), "rollout": rollout.call("node_id"),
                         "reward": reward.call("node_id")}
            print(f"[grpo] actors up in {time.perf_counter() - t0:.1f}s; nodes: "
                  + ", ".join(f"{k}={sorted({n[:8] for n in v})}" for k, v in placement.items()), flush=True)

            heldout_ids = [render_prompt(tokenizer, ex.messages) for ex in heldout]
            def evaluate(step: int) -> dict[str, float]:
                if not heldout:
                    return {}
                return recovery.run("eval", rl.evaluate, rollout, reward, heldout, heldout_ids, tokenizer,
                                    ro.max_new_tokens, g.eval_samples, g.eval_temperature,
                                    seed=rl.phase_seed(cfg.seed, step, "eval"))

            objective = Objective(
                pg_coef=1.0, kl_coef=g.kl_coef, kl_estimator=g.kl_estimator, entropy_coef=g.entropy_coef,
                clip_low=g.clip_low, clip_high=g.clip_high, dual_clip=g.dual_clip, is_level=g.importance_sampling,
                tis_cap=g.tis_cap, loss_agg=g.loss_agg, norm_const=float(ro.max_new_tokens),
                temperature=ro.temperature if ro.temperature > 0 else 1.0,
            )
            stream = rl.PromptStream(train, g.prompt_batch_size, cfg.data.shuffle, cfg.data.seed)
            world = cfg.policy.num_workers
            bad_steps = BadStepGuard(cfg.runtime.max_bad_steps, run_dir, "grpo")
            eval_before: dict[str, float] = {}
            if resume_from:
                ckpts.restore(policy, resume_from)
                stream.load_state_dict(state["data"])
                bad_steps.in_a_row = int(state.get("bad_steps_in_a_row", 0))
                rl.sync_weights(policy, rollout, ro.sync_bucket_mb)  # the engines start from model.path
                eval_before = {k: v for k, v in logger.history[0].items() if k.startswith("eval/")} \
                    if logger.history and logger.history[0].get("step") == 0 else {}
                ckpts.load_driver_rng(resume_from)
            else:
                eval_before = evaluate(0)
                if eval_before:
                    logger.log(0, eval_before, advance=False)
            try:
                for step in range(start_step + 1, g.num_steps + 1):
                    timer = rl.PhaseTimer()
                    prompts = next(stream)
                    prompt_ids = [render_prompt(tokenizer, ex.messages) for ex in prompts]
                    with timer("generate"):
                        rollouts = recovery.run("generate", rl.generate, rollout, prompt_ids, g.samples_per_prompt,
                                                seed=rl.phase_seed(cfg.seed, step, "generate"))
                    with timer("reward"):
                        scores = recovery.run("reward", rl.score, reward, rollouts, prompts, tokenizer, step)
                    rewards = rl.fill_unscored(scores.total, g.samples_per_prompt)
                    adv = compute_advantages(g.advantage, rewards, g.samples_per_prompt, scale=g.scale_rewards)
                    batch = rl.to_train_batch(rollouts, adv.advantages, mask_truncated=g.overlong == "mask")
                    keep = rl.varied_groups(rewards, g.samples_per_prompt) if g.dynamic_sampling else range(len(batch))
                    batch = batch.select([i for i in keep if scores.scored[i]])  # unscored samples never reach the loss
                    batch = rl.split_for_ranks(batch, world)
                    m = {**rl.rollout_metrics(rollouts, scores, timer), **rl.prefixed("reward/", adv.metrics),
                         "batch/kept_frac": len(batch) / len(rollouts)}
                    if len(batch):
                        if reference is not None:
                            with timer("reference"):
                                batch.ref_logprobs = recovery.run("reference", rl.logprobs, reference, batch,
                                                                  objective.temperature)
                        if g.updates_per_batch > 1 or len(batch) > train_size:  # the batch feeds several updates
                            with timer("old_logprobs"):
                                batch.old_logprobs = rl.logprobs(policy, batch, objective.temperature)
                        with timer("train"):
                            m.update(rl.train(policy, batch, objective, train_size, g.updates_per_batch, world))
                        with timer("sync"):
                            recovery.run("sync", rl.sync_weights, policy, rollout, ro.sync_bucket_mb)
                    if g.eval_every and step % g.eval_every == 0 and step < g.num_steps:
                        m.update(evaluate(step))
                    m.update(timer.metrics())
                    m.update(recovery.metrics())
                    m["perf/samples_per_s"] = len(rollouts) / m["time/step"]
                    logger.log(step, m)
                    bad_steps.check(step, m, batch)  # a skipped update: batch saved; too many in a row: raises
                    if cfg.checkpoint.save_every and step % cfg.checkpoint.save_every == 0 and step < g.num_steps:
                        last_ckpt = ckpts.save(policy, run_dir, step, {
                            "data": stream.state_dict(), "bad_steps_in_a_row": bad_steps.in_a_row,
                            "recovery": recovery.metrics()}, cfg.checkpoint.keep_last, name="grpo")
            except WorkerError as e:
                if e.group == "policy" and e.died:
                    raise rl.PolicyRankDied.from_error(e, last_ckpt) from e
                raise
            eval_after = evaluate(g.num_steps)
            if eval_after:
                logger.log(g.num_steps, eval_after, advance=False)
            ckpt = None
            if cfg.checkpoint.save_final:
                ckpt = policy.call("save", str(run_dir / "checkpoint"))[0]
            plot = plot_curves(logger.history, ["reward/mean", "reward/accuracy", "eval/accuracy", "eval/greedy_accuracy",
                                                "eval/any_form_accuracy"],
                               run_dir / "curves.png", "GRPO")
            if plot:
                print(f"[grpo] curves {plot}", flush=True)
        finally:
            workers.shutdown()
    finally:
        logger.close()
    return GRPOResult(run_dir, logger.history, eval_before, eval_after, ckpt, placement)


def main(argv: Sequence[str] | None = None) -> int:
    cfg = cli_entry(GRPOConfig, argv, "raylhf.grpo")
    if cfg is None:
        return 0
    from actors.group import PhaseTimeoutError
    from raylhf.checkpoint import ResumeError
    from raylhf.data import DataError
    from raylhf.guard import NonFiniteTrainingError
    from raylhf.rl import PolicyRankDied
    from raylhf.runtime import TrackerError, cli_error

    try:
        return _run(cfg)
    except (DataError, TrackerError, NonFiniteTrainingError, ResumeError, PolicyRankDied, PhaseTimeoutError) as e:
        return cli_error("raylhf.grpo", e)


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


def run_default(cfg: GRPOConfig) -> tuple[float, float]:
    """The embedded demo: the cached SFT warm-up, then GRPO on the arithmetic task; prints held-out accuracy."""
    from raylhf.runtime import init_ray
    from raylhf.tasks.demo_data import demo_splits

    init_ray(cfg.ray, required_cpus(cfg))  # sized for GRPO before the SFT warm-up uses it
    start = warmup_policy(cfg)
    train, heldout = demo_splits(cfg.demo)
    res = run_grpo(cfg, model_path=start, train=train, heldout=heldout)
    def pair(key: str) -> tuple[float, float]:
        return res.eval_before.get(key, float("nan")), res.eval_after.get(key, float("nan"))

    n, k, temp = len(heldout), cfg.grpo.eval_samples, cfg.grpo.eval_temperature
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
