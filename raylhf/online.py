"""What every online RL loop (GRPO, PPO, ...) does around its algorithm.

``with online_run(...) as run:`` prepares the prompts, the run dir (or the resumed one), the metrics
logger, the actor groups (policy, rollout, reward, reference, plus any the trainer adds), actor recovery,
the prompt stream, the NaN guard, and restores a checkpoint; the loop body is then only the algorithm:

    for step, prompts, prompt_ids in run.steps():
        rollouts = run.generate(prompt_ids, n, step)
        scores = run.score(rollouts, prompts, step)
        ...                                   # advantages, updates
        run.sync()
        run.end_step(step, metrics, batch)    # eval, log, guard, checkpoint

On a normal exit the block evaluates the held-out prompts, saves the HF export and plots the curves;
always it shuts the actors down. A policy rank that dies becomes ``PolicyRankDied`` naming the last checkpoint.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raylhf.batch import Rollout, TrainBatch


@dataclass
class OnlineRun:
    cfg: Any
    algo: Any  # the algorithm section: num_steps, prompt_batch_size, eval_every, eval_samples, eval_temperature
    name: str
    run_dir: Path
    tokenizer: Any
    heldout: list[Any]
    workers: Any  # rl.Workers
    recovery: Any  # rl.Recovery
    stream: Any  # rl.PromptStream
    logger: Any  # runtime.MetricsLogger
    bad_steps: Any  # guard.BadStepGuard
    start_step: int = 0
    last_checkpoint: Path | None = None
    placement: dict[str, list[str]] = field(default_factory=dict)
    eval_before: dict[str, float] = field(default_factory=dict)
    eval_after: dict[str, float] = field(default_factory=dict)
    checkpoint: str | None = None
    extra_state: dict[str, Any] = field(default_factory=dict)  # the trainer's own resumable state (KL controller)
    _heldout_ids: list[list[int]] = field(default_factory=list)
    _timer: Any = None

    # ---- the phases, with recovery of dead rollout / reward / reference actors -------------------
    @property
    def policy(self) -> Any:
        return self.workers.policy

    def steps(self) -> Iterator[tuple[int, list[Any], list[list[int]]]]:
        """(step, prompts, their token ids) for the steps left; a fresh ``timer`` per step."""
        from raylhf import rl
        from raylhf.data import render_prompt

        for step in range(self.start_step + 1, self.algo.num_steps + 1):
            self._timer = rl.PhaseTimer()
            prompts = next(self.stream)
            yield step, prompts, [render_prompt(self.tokenizer, ex.messages) for ex in prompts]

    @property
    def timer(self) -> Any:
        return self._timer

    def generate(self, prompt_ids: list[list[int]], n: int, step: int) -> list[Rollout]:
        from raylhf import rl

        with self.timer("generate"):
            return self.recovery.run("generate", rl.generate, self.workers.rollout, prompt_ids, n,
                                     seed=rl.phase_seed(self.cfg.seed, step, "generate"))

    def score(self, rollouts: list[Rollout], prompts: list[Any], step: int) -> Any:
        from raylhf import rl

        with self.timer("reward"):
            return self.recovery.run("reward", rl.score, self.workers.reward, rollouts, prompts, self.tokenizer, step)

    def logprobs(self, group_name: str, batch: TrainBatch, temperature: float) -> list[Any]:
        from raylhf import rl

        group = getattr(self.workers, group_name)
        with self.timer(group_name if group_name != "policy" else "old_logprobs"):
            return self.recovery.run(group_name, rl.logprobs, group, batch, temperature)

    def sync(self) -> None:
        from raylhf import rl

        with self.timer("sync"):
            self.recovery.run("sync", rl.sync_weights, self.policy, self.workers.rollout,
                              self.cfg.rollout.sync_bucket_mb)

    def evaluate(self, step: int) -> dict[str, float]:
        from raylhf import rl

        if not self.heldout:
            return {}
        a = self.algo
        return self.recovery.run("eval", rl.evaluate, self.workers.rollout, self.workers.reward, self.heldout,
                                 self._heldout_ids, self.tokenizer, self.cfg.rollout.max_new_tokens, a.eval_samples,
                                 a.eval_temperature, seed=rl.phase_seed(self.cfg.seed, step, "eval"))

    def end_step(self, step: int, m: dict[str, float], batch: TrainBatch | None, num_samples: int) -> None:
        """Held-out eval every ``eval_every``, timings, log, the NaN guard, and the checkpoint every
        ``checkpoint.save_every`` (with ``extra_state``)."""
        from raylhf import checkpoint as ckpts

        a, c = self.algo, self.cfg.checkpoint
        if a.eval_every and step % a.eval_every == 0 and step < a.num_steps:
            m.update(self.evaluate(step))
        m.update(self.timer.metrics())
        m.update(self.recovery.metrics())
        m["perf/samples_per_s"] = num_samples / m["time/step"]
        self.logger.log(step, m)
        self.bad_steps.check(step, m, batch)  # a skipped update: batch saved; too many in a row: raises
        if c.save_every and step % c.save_every == 0 and step < a.num_steps:
            self.last_checkpoint = ckpts.save(self.policy, self.run_dir, step, {
                "data": self.stream.state_dict(), "bad_steps_in_a_row": self.bad_steps.in_a_row,
                "recovery": self.recovery.metrics(), "extra": self.extra_state}, c.keep_last, name=self.name,
                others=self.trained_others())

    def trained_others(self) -> dict[str, Any]:
        """Trained groups besides the policy (the critic), saved and restored with it."""
        return {"critic": self.workers.critic} if self.workers.critic is not None else {}


@contextlib.contextmanager
def online_run(cfg: Any, algo: Any, name: str, model_path: str, train: list[Any], heldout: list[Any],
               optimizer_steps: int, required_cpus: float, curves: list[str],
               start_extra: Callable[[Any], None] | None = None, policy_cls: type | None = None,
               policy_extra: dict[str, Any] | None = None) -> Iterator[OnlineRun]:
    """Set up an online RL run (see the module doc); ``start_extra(workers)`` starts the trainer's own groups
    (e.g. a critic) into ``workers`` (shut down with the others); ``curves``: the metrics of curves.png;
    ``policy_cls`` / ``policy_extra``: a PolicyWorker subclass with the trainer's loss (online DPO)."""
    from actors.group import WorkerError
    from raylhf import checkpoint as ckpts
    from raylhf import rl
    from raylhf.assets import load_tokenizer
    from raylhf.data import drop_long_prompts, render_prompt
    from raylhf.guard import BadStepGuard
    from raylhf.runtime import init_ray, open_run, plot_curves

    ro = cfg.rollout
    tokenizer = load_tokenizer(cfg.model.tokenizer or model_path)
    train, dropped = drop_long_prompts(tokenizer, train, cfg.data.max_prompt_length)
    if len(train) < algo.prompt_batch_size:
        raise ValueError(f"only {len(train)} training prompts (after dropping {dropped} longer than "
                         f"data.max_prompt_length={cfg.data.max_prompt_length}); {name}.prompt_batch_size is "
                         f"{algo.prompt_batch_size}")
    run_dir, resume_from, state, logger = open_run(
        cfg, name, algo.num_steps, f"model {model_path}; {len(train)} train / {len(heldout)} held-out prompts")
    start_step = int(state.get("step", 0))
    try:
        init_ray(cfg.ray, required_cpus)
        t0 = time.perf_counter()
        max_len = cfg.data.max_prompt_length + ro.max_new_tokens + 8
        workers = rl.start_workers(cfg, model_path, optimizer_steps, max_len, algo=algo, policy_cls=policy_cls,
                                   policy_extra=policy_extra)
        try:
            if start_extra is not None:
                start_extra(workers)
            run = OnlineRun(
                cfg=cfg, algo=algo, name=name, run_dir=run_dir, tokenizer=tokenizer, heldout=heldout, workers=workers,
                recovery=rl.Recovery(workers, cfg.runtime.max_actor_restarts, ro.sync_bucket_mb, name),
                stream=rl.PromptStream(train, algo.prompt_batch_size, cfg.data.shuffle, cfg.data.seed),
                logger=logger, bad_steps=BadStepGuard(cfg.runtime.max_bad_steps, run_dir, name),
                start_step=start_step, last_checkpoint=resume_from,
                _heldout_ids=[render_prompt(tokenizer, ex.messages) for ex in heldout],
            )
            run.placement = workers.placement()
            print(f"[{name}] actors up in {time.perf_counter() - t0:.1f}s; nodes: "
                  + ", ".join(f"{k}={sorted({n[:8] for n in v})}" for k, v in run.placement.items()), flush=True)
            if resume_from:
                ckpts.restore(run.policy, resume_from, run.trained_others())
                run.stream.load_state_dict(state["data"])
                run.bad_steps.in_a_row = int(state.get("bad_steps_in_a_row", 0))
                run.extra_state = dict(state.get("extra", {}))
                rl.sync_weights(run.policy, workers.rollout, ro.sync_bucket_mb)  # the engines start from model.path
                first = logger.history[0] if logger.history else {}
                run.eval_before = {k: v for k, v in first.items() if k.startswith("eval/")} \
                    if first.get("step") == 0 else {}
                ckpts.load_driver_rng(resume_from)
            else:
                run.eval_before = run.evaluate(0)
                if run.eval_before:
                    logger.log(0, run.eval_before, advance=False)
            try:
                yield run
            except WorkerError as e:
                if e.group in ("policy", "critic") and e.died:
                    raise rl.PolicyRankDied.from_error(e, run.last_checkpoint) from e
                raise
            run.eval_after = run.evaluate(algo.num_steps)
            if run.eval_after:
                logger.log(algo.num_steps, run.eval_after, advance=False)
            if cfg.checkpoint.save_final:
                run.checkpoint = run.policy.call("save", str(run_dir / "checkpoint"))[0]
            plot = plot_curves(logger.history, curves, run_dir / "curves.png", name.upper())
            if plot:
                print(f"[{name}] curves {plot}", flush=True)
        finally:
            workers.shutdown()
    finally:
        logger.close()
