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

Callbacks (``raylhf/plugins/callbacks.py``: the config's ``callbacks`` and the plugins' ``extra_callbacks``) see the
train begin / end, each step's begin / end, each evaluation, each metric row and each save; one that sets
``control.should_training_stop`` ends ``steps()`` after that step. On a normal exit (or such a stop) the block
evaluates the held-out prompts, saves the HF export and plots the curves; always it shuts the actors down. A policy rank that dies becomes ``PolicyRankDied`` naming the last checkpoint.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from actors import group
from actors.group import WorkerError
from raylhf.assets import load_tokenizer
from raylhf.core import checkpoint as ckpts
from raylhf.core.batch import Rollout, TrainBatch
from raylhf.core.guard import BadStepGuard
from raylhf.data import drop_long_prompts, render_prompt
from raylhf.driver import phases as rl
from raylhf.driver.lifecycle import RunResult
from raylhf.driver.producer import RolloutProducer
from raylhf.driver.profiling import PhaseProfile
from raylhf.driver.runtime import init_ray, open_run, plot_curves
from raylhf.plugins.callbacks import start_callbacks


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
    rollout_fn: Any = None  # in place of rl.generate, same arguments (agent episodes: raylhf/agent/multiturn.py)
    callbacks: Any = None  # callbacks.CallbackHandler
    final_step: int = 0  # the last step run (before num_steps when a callback stopped the run)
    stopped_by: str | None = None  # the callback that stopped the run early, if one did
    producer: Any = None  # producer.RolloutProducer: each step's prompts and rollouts (pipelined with async_steps)
    weight_version: int = 0  # weight syncs sent to the engines (the version that stamps rollouts)
    profile: Any = None  # profiling.PhaseProfile with --profile
    _heldout_ids: list[list[int]] = field(default_factory=list)
    _timer: Any = None

    # ---- the phases, with recovery of dead rollout / reward / reference actors -------------------
    @property
    def policy(self) -> Any:
        return self.workers.policy

    def steps(self) -> Iterator[tuple[int, list[Any], list[list[int]]]]:
        """(step, prompts, their token ids) for the steps left; a fresh ``timer`` per step."""

        self.final_step = self.start_step
        for step in range(self.start_step + 1, self.algo.num_steps + 1):
            if self.callbacks.should_stop:
                return
            self._timer = rl.PhaseTimer()
            if self.profile is not None:
                self.profile.before_step(step, self.policy)
            self.callbacks.step_begin()
            prompts, prompt_ids = self.producer.prompts(step)
            yield step, prompts, prompt_ids
            self.final_step = step

    @property
    def timer(self) -> Any:
        return self._timer

    def generate(self, prompt_ids: list[list[int]], n: int, step: int) -> list[Rollout]:
        """Step ``step``'s ``n`` samples per prompt (``prompt_ids``: what ``steps()`` gave for it); with
        ``async_steps`` they were prefetched and the next steps' generation starts now (``raylhf/driver/producer.py``).
        An engine that died is restarted and the step generated again."""
        with self.timer("generate"):
            return self.recovery.run("generate", self.producer.rollouts, step, n)

    def _generate_now(self, prompt_ids: list[list[int]], n: int, step: int) -> list[Rollout]:
        gen = self.rollout_fn or rl.generate
        return gen(self.workers.rollout, prompt_ids, n, seed=rl.phase_seed(self.cfg.seed, step, "generate"))

    def _submit(self, prompt_ids: list[list[int]], n: int, step: int) -> Any:
        return rl.submit_generate(self.workers.rollout, prompt_ids, n,
                                  seed=rl.phase_seed(self.cfg.seed, step, "generate"))

    def score(self, rollouts: list[Rollout], prompts: list[Any], step: int) -> Any:
        with self.timer("reward"):
            return self.recovery.run("reward", rl.score, self.workers.reward, rollouts, prompts, self.tokenizer, step)

    def logprobs(self, group_name: str, batch: TrainBatch, temperature: float) -> list[Any]:
        group = getattr(self.workers, group_name)
        with self.timer(group_name if group_name != "policy" else "old_logprobs"):
            return self.recovery.run(group_name, rl.logprobs, group, batch, temperature)

    def sync(self) -> None:
        with self.timer("sync"):
            self.recovery.run("sync", rl.sync_weights, self.policy, self.workers.rollout,
                              self.cfg.rollout.sync_bucket_mb)
        self.weight_version += 1

    def evaluate(self, step: int) -> dict[str, float]:
        if not self.heldout:
            return {}
        a = self.algo
        return self.recovery.run("eval", rl.evaluate, self.workers.rollout, self.workers.reward, self.heldout,
                                 self._heldout_ids, self.tokenizer, self.cfg.rollout.max_new_tokens, a.eval_samples,
                                 a.eval_temperature, seed=rl.phase_seed(self.cfg.seed, step, "eval"),
                                 generate_fn=self.rollout_fn)

    def end_step(self, step: int, m: dict[str, float], batch: TrainBatch | None, num_samples: int) -> None:
        """Held-out eval every ``eval_every``, timings, log, the NaN guard, and the checkpoint every
        ``checkpoint.save_every`` (with ``extra_state``)."""

        a, c = self.algo, self.cfg.checkpoint
        self.callbacks.state.global_step = step
        if a.eval_every and step % a.eval_every == 0 and step < a.num_steps:
            evaluated = self.evaluate(step)
            self.callbacks.evaluate(evaluated)
            m.update(evaluated)
        m.update(self.timer.metrics())
        m.update(self.recovery.metrics())
        m.update(self.producer.last_metrics)
        m["perf/samples_per_s"] = num_samples / m["time/step"]
        if self.profile is not None:
            self.profile.add(step, m)
        self.log(step, m)
        self.bad_steps.check(step, m, batch)  # a skipped update: batch saved; too many in a row: raises
        self.callbacks.step_end(step)
        if c.save_every and step % c.save_every == 0 and step < a.num_steps:
            self.last_checkpoint = ckpts.save(self.policy, self.run_dir, step, {
                "data": self.producer.data_state(), "prefetched": self.producer.state_dict(),
                "bad_steps_in_a_row": self.bad_steps.in_a_row, "recovery": self.recovery.metrics(),
                "extra": self.extra_state}, c.keep_last, name=self.name, others=self.trained_others())
            self.callbacks.save(self.last_checkpoint)

    def log(self, step: int, m: dict[str, Any], advance: bool = True) -> None:
        """One metric row to the logger, then to the callbacks' ``on_log``."""
        self.logger.log(step, m, advance=advance)
        self.callbacks.log(self.logger.history[-1])

    def finish(self) -> None:
        """After the loop: the early-stop line, the final evaluation (at the last step run), the HF export."""
        if self.callbacks.should_stop:
            self.stopped_by = self.callbacks.state.stopped_by or "?"
            print(self.callbacks.stop_message(self.name), flush=True)
            self.log(self.final_step, {"stopped_early_by": self.stopped_by}, advance=False)
        self.eval_after = self.evaluate(self.final_step)
        if self.eval_after:
            self.callbacks.evaluate(self.eval_after)
            self.log(self.final_step, self.eval_after, advance=False)
        if self.cfg.checkpoint.save_final:
            self.checkpoint = self.policy.call("save", str(self.run_dir / "checkpoint"))[0]
            self.callbacks.save(self.checkpoint)

    def result(self) -> RunResult:
        return RunResult(run_dir=self.run_dir, checkpoint=self.checkpoint, history=self.logger.history,
                         eval_before=self.eval_before, eval_after=self.eval_after, final_step=self.final_step,
                         stopped_by=self.stopped_by, placement=self.placement)

    def trained_others(self) -> dict[str, Any]:
        """Trained groups besides the policy (the critic), saved and restored with it."""
        return {"critic": self.workers.critic} if self.workers.critic is not None else {}


@contextlib.contextmanager
def online_run(cfg: Any, algo: Any, name: str, model_path: str, train: list[Any], heldout: list[Any],
               optimizer_steps: int, required_cpus: float, curves: list[str],
               start_extra: Callable[[Any], None] | None = None, policy_cls: type | None = None,
               policy_extra: dict[str, Any] | None = None,
               rollout_fn: Callable[..., list[Rollout]] | None = None, async_steps: int = 0) -> Iterator[OnlineRun]:
    """Set up an online RL run (see the module doc); ``start_extra(workers)`` starts the trainer's own groups
    (e.g. a critic) into ``workers`` (shut down with the others); ``curves``: the metrics of curves.png;
    ``policy_cls`` / ``policy_extra``: a PolicyWorker subclass with the trainer's loss (online DPO);
    ``rollout_fn``: generates in place of ``rl.generate`` for training and eval (multi-turn agent episodes);
    ``async_steps``: generate that many steps ahead while a step trains (``raylhf/driver/producer.py``)."""

    ro = cfg.rollout
    if async_steps and rollout_fn is not None:
        raise ValueError("async_steps > 0 pipelines single-turn generation; multi-turn agent episodes "
                         "(agent.template) run on-policy: set grpo.async_steps=0")
    tokenizer = load_tokenizer(cfg.model.tokenizer or model_path)
    train, dropped = drop_long_prompts(tokenizer, train, cfg.data.max_prompt_length)
    if len(train) < algo.prompt_batch_size:
        raise ValueError(f"only {len(train)} training prompts (after dropping {dropped} longer than "
                         f"data.max_prompt_length={cfg.data.max_prompt_length}); {name}.prompt_batch_size is "
                         f"{algo.prompt_batch_size}")
    run_dir, resume_from, state, logger = open_run(
        cfg, name, algo.num_steps, f"model {model_path}; {len(train)} train / {len(heldout)} held-out prompts")
    start_step = int(state.get("step", 0))

    saved_env = dict(group.ACTOR_ENV)
    group.ACTOR_ENV.update(group.actor_omp_env(pipelined=async_steps > 0))
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
                start_step=start_step, final_step=start_step, last_checkpoint=resume_from, rollout_fn=rollout_fn,
                _heldout_ids=[render_prompt(tokenizer, ex.messages) for ex in heldout],
                callbacks=start_callbacks(cfg, name, run_dir, algo.num_steps, start_step, algo.eval_every,
                                          logger.history),
            )
            run.producer = RolloutProducer(
                run.stream, async_steps, algo.num_steps,
                render=lambda prompts: [render_prompt(tokenizer, ex.messages) for ex in prompts],
                submit=run._submit, generate=run._generate_now, version=lambda: run.weight_version)
            if cfg.runtime.profile:
                run.profile = PhaseProfile(run_dir, cfg.runtime.profile_step)
            run.placement = workers.placement()
            print(f"[{name}] actors up in {time.perf_counter() - t0:.1f}s; nodes: "
                  + ", ".join(f"{k}={sorted({n[:8] for n in v})}" for k, v in run.placement.items()), flush=True)
            if resume_from:
                ckpts.restore(run.policy, resume_from, run.trained_others())
                run.stream.load_state_dict(state["data"])
                run.producer.load_state_dict(state.get("prefetched"))  # rollouts generated ahead, kept
                run.weight_version = start_step
                run.bad_steps.in_a_row = int(state.get("bad_steps_in_a_row", 0))
                run.extra_state = dict(state.get("extra", {}))
                rl.sync_weights(run.policy, workers.rollout, ro.sync_bucket_mb)  # the engines start from model.path
                first = logger.history[0] if logger.history else {}
                run.eval_before = {k: v for k, v in first.items() if k.startswith("eval/")} \
                    if first.get("step") == 0 else {}
                ckpts.load_driver_rng(resume_from)
                run.callbacks.train_begin()
            else:
                run.callbacks.train_begin()
                run.eval_before = run.evaluate(0)
                if run.eval_before:
                    run.callbacks.evaluate(run.eval_before)
                    run.log(0, run.eval_before, advance=False)
            try:
                yield run
            except WorkerError as e:
                if e.group in ("policy", "critic") and e.died:
                    raise rl.PolicyRankDied.from_error(e, run.last_checkpoint) from e
                raise
            run.finish()
            if run.profile is not None:
                print(f"[{name}] profile {run.profile.write()}:\n{run.profile.summary()}", flush=True)
            plot = plot_curves(logger.history, curves, run_dir / "curves.png", name.upper())
            if plot:
                print(f"[{name}] curves {plot}", flush=True)
            run.callbacks.train_end()
        finally:
            workers.shutdown()
    finally:
        group.ACTOR_ENV.clear()
        group.ACTOR_ENV.update(saved_env)
        logger.close()
