"""The online loop (GRPO, PPO, online DPO) on the run lifecycle: prompts -> rollouts -> rewards -> updates -> sync.

``with online_run(...) as run:`` prepares the prompts, opens the run (``lifecycle.py``: run dir, logger,
callbacks, guard, resume), starts the actor groups (policy, rollout, reward, reference, plus any the trainer adds),
actor recovery and the rollout producer; the loop body is then only the algorithm:

    for step, prompts in run.steps():
        rollouts = run.generate(step, n)
        scores = run.score(rollouts, prompts, step)
        ...                                   # advantages, updates
        run.sync()
        run.end_step(step, metrics, batch, len(rollouts))    # eval, log, guard, checkpoint

On a normal exit (or a callback's early stop) the block evaluates the held-out prompts, saves the HF export and
plots the curves; always it shuts the actors down. See docs/architecture.md for one GRPO step's actor calls.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from actors.group import actor_omp_env
from raylhf.assets import load_tokenizer
from raylhf.core.batch import Rollout, TrainBatch
from raylhf.data import drop_long_prompts, render_prompt
from raylhf.driver import completions, dynamic, phases
from raylhf.driver.cluster import init_ray
from raylhf.driver.colocate import Colocation
from raylhf.driver.lifecycle import Lifecycle, RunResult, run_lifecycle
from raylhf.driver.producer import RolloutProducer
from raylhf.driver.profiling import PhaseProfile
from raylhf.driver.recovery import Recovery
from raylhf.driver.startup import Workers, start_workers
from raylhf.driver.stream import PromptStream, phase_seed
from raylhf.driver.weight_sync import SyncOptions, sync_weights


@dataclass
class Sampler:
    """How a step's rollouts are sampled: on the rollout engines, or by ``episodes`` (multi-turn agent episodes,
    raylhf/agent/multiturn.py, same arguments); each step with its own seed."""

    workers: Workers
    seed: int
    episodes: Callable[..., list[Rollout]] | None = None

    def generate(self, prompt_ids: list[list[int]], n: int, step: int) -> list[Rollout]:
        fn = self.episodes or phases.generate
        return fn(self.workers.rollout, prompt_ids, n, seed=phase_seed(self.seed, step, "generate"))

    def submit(self, prompt_ids: list[list[int]], n: int, step: int) -> Any:
        return phases.submit_generate(self.workers.rollout, prompt_ids, n, seed=phase_seed(self.seed, step, "generate"))


class OnlineRun:
    """The online loop's handle on a run: its phases (timed, with recovery of dead rollout / reward / reference
    actors) and the lifecycle calls."""

    def __init__(self, life: Lifecycle, cfg: Any, algo: Any, tokenizer: Any, heldout: list[Any], workers: Workers,
                 stream: PromptStream, async_steps: int, episodes: Callable[..., list[Rollout]] | None) -> None:
        self.life, self.cfg, self.algo, self.name = life, cfg, algo, life.name
        self.tokenizer, self.heldout, self.workers = tokenizer, heldout, workers
        self.sync_options = SyncOptions.of(cfg)
        self.recovery = Recovery(workers, cfg.runtime.max_actor_restarts, self.sync_options, life.name)
        self.stream, self.episodes = stream, episodes
        self.sampler = Sampler(workers, cfg.seed, episodes)
        self.producer = RolloutProducer(
            stream, async_steps, algo.num_steps, render=lambda prompts: [render_prompt(tokenizer, ex.messages)
                                                                         for ex in prompts],
            submit=self.sampler.submit, generate=self.sampler.generate, version=lambda: self.weight_version,
            max_staleness=cfg.rollout.max_staleness)
        self.heldout_ids = [render_prompt(tokenizer, ex.messages) for ex in heldout]
        self.weight_version = 0  # weight syncs sent to the engines (the version that stamps rollouts)
        self.extra_state: dict[str, Any] = {}  # the trainer's own resumable state (PPO's KL controller)
        self.profile = PhaseProfile(life.run_dir, cfg.runtime.profile_step) if cfg.runtime.profile else None
        self.timer = phases.PhaseTimer()
        self.sync_metrics: dict[str, float] = {}  # the last weight sync's (sync/*)
        self.sampling_metrics: dict[str, float] = {}  # the step's dynamic sampling (rollout/aborted_tokens, ...)
        self.colocation = Colocation(workers.policy, workers.rollout, cfg.rollout.placement, cfg.rollout.sleep_level,
                                     life.run_dir)
        life.policy, life.evaluate, life.trainer_state = workers.policy, self.evaluate, self.trainer_state
        if workers.critic is not None:
            life.trained = {"critic": workers.critic}

    # ---- what the trainers read ------------------------------------------------------------------------------
    @property
    def policy(self) -> Any:
        return self.workers.policy

    @property
    def run_dir(self) -> Path:
        return self.life.run_dir

    @property
    def logger(self) -> Any:
        return self.life.logger

    # ---- the phases ------------------------------------------------------------------------------------------
    def steps(self) -> Iterator[tuple[int, list[Any]]]:
        """(step, its prompts) for the steps left; a fresh ``timer`` per step."""
        for step in self.life.steps():
            self.timer, self.sampling_metrics = phases.PhaseTimer(), {}
            if self.profile is not None:
                self.profile.before_step(step, self.policy)
            prompts, _ = self.producer.prompts(step)
            yield step, prompts

    def generate(self, step: int, n: int) -> list[Rollout]:
        """Step ``step``'s ``n`` samples per prompt; with ``async_steps`` they were prefetched and the next steps'
        generation starts now (``producer.py``). An engine that died is restarted and the step generated again."""
        with self.timer("generate"):
            rollouts = self.recovery.run("generate", self.producer.rollouts, step, n)
        self._rollouts_done()
        return rollouts

    def _rollouts_done(self) -> None:
        """Colocated engines go to sleep until the sync (``colocate.py``); nothing with ``rollout.placement=split``."""
        if self.colocation.on:
            with self.timer("sleep"):
                self.colocation.rollouts_done()

    def sample(self, step: int, prompts: list[Any], n: int, varied: bool = False, max_rounds: int = 1
               ) -> tuple[list[Rollout], list[Any], phases.Scores]:
        """The step's rollouts, the prompts they answer and their scores. ``varied`` (dynamic sampling, on-policy):
        groups are sampled and scored until the step has ``len(prompts)`` groups with varied rewards, drawing
        more prompts for at most ``max_rounds`` rounds (``dynamic.py``); its metrics go to the step's row."""
        if not varied:
            rollouts = self.generate(step, n)  # (colocated engines sleep while the reward workers score)
            return rollouts, prompts, self.score(rollouts, prompts, step)
        before = self.stream.state_dict()

        def attempt() -> dynamic.Varied:
            self.stream.load_state_dict(before)  # a retry (an engine died) draws the same prompts again
            return self._sample_varied(step, prompts, n, max_rounds)

        with self.timer("generate"):  # generation and the groups' scoring interleave
            v = self.recovery.run("generate", attempt)
        self._rollouts_done()
        self.producer.consumed(step)
        for r in v.rollouts:
            r.version = self.weight_version
        self.sampling_metrics = v.metrics
        return v.rollouts, v.prompts, v.scores

    def _sample_varied(self, step: int, prompts: list[Any], n: int, max_rounds: int) -> dynamic.Varied:
        seed = phase_seed(self.cfg.seed, step, "generate")
        tag = f"step-{step}-v{self.weight_version}-{time.monotonic_ns()}"
        rollout = self.workers.rollout
        submit_group = getattr(self.episodes, "submit_group", None)

        def render(batch: list[Any]) -> list[tuple[Any, list[int]]]:
            return [(ex, render_prompt(self.tokenizer, ex.messages)) for ex in batch]

        def submit(ids: list[int], index: int) -> Any:
            if submit_group is not None:  # multi-turn episodes
                return submit_group(rollout, ids, index, n, seed=seed, tag=tag)
            return rollout.submit_routed("generate", [(index, ids)], n, cost=lambda _: n, seed=seed, tag=tag)

        def score(rollouts: list[Rollout], group: list[Any]) -> phases.Scores:
            s = phases.score(self.workers.reward, rollouts, group, self.tokenizer, step)
            s.add_env(rollouts, self._env_reward_weight())
            return s

        return dynamic.sample_varied(render(prompts), lambda: render(next(self.stream)), submit, score,
                                     lambda: rollout.call("abort", tag), len(prompts), n, max_rounds)

    def _env_reward_weight(self) -> float:
        agent = getattr(self.cfg, "agent", None)
        return agent.env_reward_weight if agent is not None else 1.0

    def score(self, rollouts: list[Rollout], prompts: list[Any], step: int) -> phases.Scores:
        """The reward workers' scores, plus multi-turn episodes' environment rewards (``reward/env``)."""
        with self.timer("reward"):
            scores = self.recovery.run("reward", phases.score, self.workers.reward, rollouts, prompts,
                                       self.tokenizer, step)
        scores.add_env(rollouts, self._env_reward_weight())
        return scores

    def logprobs(self, group_name: str, batch: TrainBatch, temperature: float) -> list[Any]:
        group = getattr(self.workers, group_name)
        with self.timer(group_name if group_name != "policy" else "old_logprobs"):
            return self.recovery.run(group_name, phases.logprobs, group, batch, temperature)

    def sync(self) -> None:
        def send(**kw: Any) -> dict[str, float]:
            return sync_weights(self.policy, self.workers.rollout, **self.sync_options.kwargs(), **kw)

        with self.timer("sync"):  # colocated: the engines wake around the transfer
            self.sync_metrics = self.recovery.run("sync", self.colocation.sync, send)
        self.weight_version += 1

    def evaluate(self, step: int) -> dict[str, float]:
        if not self.heldout:
            return {}
        a = self.algo
        return self.recovery.run("eval", phases.evaluate, self.workers.rollout, self.workers.reward, self.heldout,
                                 self.heldout_ids, self.tokenizer, self.cfg.rollout.max_new_tokens, a.eval_samples,
                                 a.eval_temperature, seed=phase_seed(self.cfg.seed, step, "eval"),
                                 generate_fn=self.episodes)

    def end_step(self, step: int, m: dict[str, float], batch: TrainBatch | None, num_samples: int) -> None:
        """The lifecycle's step end (eval, log, guard, checkpoint) with the step's timings and recovery metrics."""

        def timings(m: dict[str, Any]) -> None:
            m.update(self.timer.metrics())
            m.update(self.recovery.metrics())
            m.update(self.producer.last_metrics)
            m.update(self.sync_metrics)
            m.update(self.sampling_metrics)
            m.update(self.colocation.write_events(step))
            m["perf/samples_per_s"] = num_samples / m["time/step"]
            if self.profile is not None:
                self.profile.add(step, m)

        self.life.end_step(step, m, batch, timings)

    def log_completions(self, step: int, rollouts: list[Rollout], scores: phases.Scores | None,
                        advantages: Any) -> None:
        """``logging.log_completions`` of the step's rollouts (aligned ``scores`` / ``advantages``, either may be
        None) to ``<run_dir>/rollouts/step-<step>.jsonl`` and the trackers (``completions.py``); 0: nothing."""
        n = self.cfg.logging.log_completions
        if n <= 0:
            return
        records = completions.completion_records(step, rollouts, scores, advantages, self.tokenizer, n)
        completions.write_completions(self.run_dir, step, records)
        self.logger.log_completions(step, records)

    # ---- checkpoints -----------------------------------------------------------------------------------------
    def trainer_state(self) -> dict[str, Any]:
        return {"data": self.producer.data_state(), "prefetched": self.producer.state_dict(),
                "recovery": self.recovery.metrics(), "extra": self.extra_state}

    def restore(self, state: dict[str, Any]) -> None:
        self.stream.load_state_dict(state["data"])
        self.producer.load_state_dict(state.get("prefetched"))  # rollouts generated ahead, kept
        self.weight_version = self.life.start_step
        self.extra_state = dict(state.get("extra", {}))
        # the engines started from model.path: give them the restored weights
        sync_weights(self.policy, self.workers.rollout, **self.sync_options.kwargs())

    def result(self) -> RunResult:
        return self.life.result()


@contextlib.contextmanager
def online_run(cfg: Any, algo: Any, name: str, model_path: str, train: list[Any], heldout: list[Any],
               optimizer_steps: int, required_cpus: float, curves: list[str],
               start_extra: Callable[[Any], None] | None = None, policy_cls: type | None = None,
               policy_extra: dict[str, Any] | None = None,
               rollout_fn: Callable[..., list[Rollout]] | None = None, async_steps: int = 0) -> Iterator[OnlineRun]:
    """Set up an online RL run (see the module doc); ``start_extra(workers)`` starts the trainer's own groups
    (e.g. a critic) into ``workers`` (shut down with the others); ``curves``: the metrics of curves.png;
    ``policy_cls`` / ``policy_extra``: a PolicyWorker subclass with the trainer's loss (online DPO);
    ``rollout_fn``: generates in place of the engines' sampling for training and eval (multi-turn agent
    episodes); ``async_steps``: generate that many steps ahead while a step trains (``producer.py``)."""
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
    describe = f"model {model_path}; {len(train)} train / {len(heldout)} held-out prompts"
    with run_lifecycle(cfg, name, algo.num_steps, algo.eval_every, describe) as life:
        init_ray(cfg.ray, required_cpus)
        t0 = time.perf_counter()
        workers = start_workers(cfg, model_path, optimizer_steps, cfg.data.max_prompt_length + ro.max_new_tokens + 8,
                                algo=algo, policy_cls=policy_cls, policy_extra=policy_extra,
                                env=actor_omp_env(pipelined=async_steps > 0))
        try:
            if start_extra is not None:
                start_extra(workers)
            run = OnlineRun(life, cfg, algo, tokenizer, heldout, workers,
                            PromptStream(train, algo.prompt_batch_size, cfg.data.shuffle, cfg.data.seed), async_steps,
                            rollout_fn)
            life.placement = workers.placement()
            print(f"[{name}] actors up in {time.perf_counter() - t0:.1f}s; nodes: "
                  + ", ".join(f"{k}={sorted({n[:8] for n in v})}" for k, v in life.placement.items()), flush=True)
            life.begin(restore=run.restore)
            run.colocation.begin()
            yield run
            life.finish(curves)
            if run.profile is not None:
                print(f"[{name}] profile {run.profile.write()}:\n{run.profile.summary()}", flush=True)
        finally:
            workers.shutdown()
