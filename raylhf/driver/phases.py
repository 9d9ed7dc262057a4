"""Building blocks of the RL driver loops: start the actor groups, generate, score, sync, evaluate.

Each function is one phase of DESIGN.md's step; the loops in ``raylhf/trainers/grpo.py`` call them in order.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from actors.group import ActorGroup, WorkerError
from actors.policy import PolicyWorker
from actors.reference import ReferenceWorker
from actors.reward import RewardWorker
from actors.rollout import RolloutWorker, import_vllm
from raylhf.config.sections import PolicyConfig, RewardConfig, RolloutConfig
from raylhf.core.batch import Objective, Rollout, TrainBatch
from raylhf.core.errors import RunError
from raylhf.core.metrics import RANK_SUM_METRICS, reduce_metrics
from raylhf.data import PromptExample

T = TypeVar("T")


@dataclass
class Workers:
    policy: ActorGroup | None = None
    rollout: ActorGroup | None = None
    reference: ActorGroup | None = None
    reward: ActorGroup | None = None
    critic: ActorGroup | None = None

    def groups(self) -> dict[str, ActorGroup]:
        named = {"policy": self.policy, "rollout": self.rollout, "reference": self.reference, "reward": self.reward,
                 "critic": self.critic}
        return {k: g for k, g in named.items() if g is not None}

    def placement(self) -> dict[str, list[str]]:
        """Each group's node ids, rank by rank."""
        return {k: g.call("node_id") for k, g in self.groups().items()}

    def shutdown(self) -> None:
        for g in self.groups().values():
            g.shutdown()


def start_workers(cfg: Any, model_path: str, optimizer_steps: int, max_model_len: int, algo: Any = None,
                  policy_cls: type | None = None, policy_extra: dict[str, Any] | None = None) -> Workers:
    """Every actor group of an RL run (policy, rollout, reference when the algorithm section ``algo``, default
    ``cfg.grpo``, has kl_coef > 0, reward).

    If one group fails to start, the groups already up are shut down before the error propagates.
    """

    w = Workers()
    strategy, trust = cfg.ray.placement_strategy, cfg.model.trust_remote_code
    limit = cfg.runtime.phase_timeout_s or None  # the watchdog's limit on every phase
    try:
        w.policy = start_policy(cfg.policy, model_path, cfg.model.dtype, optimizer_steps, cfg.seed, strategy, trust,
                                call_timeout_s=limit, worker_cls=policy_cls, extra=policy_extra)
        w.rollout = start_rollout(cfg.rollout, model_path, cfg.model.dtype, max_model_len, strategy, trust,
                                  call_timeout_s=limit)
        if (algo if algo is not None else cfg.grpo).kl_coef > 0:
            w.reference = ActorGroup(
                ReferenceWorker, 1, name="reference", num_cpus=cfg.reference.num_cpus, num_gpus=gpus_per_rank(None),
                init_kwargs=dict(model_path=model_path, dtype=cfg.model.dtype, trust_remote_code=trust,
                                 reference={**cfg.reference.model_dump(), "packing": cfg.policy.packing}),
                sizing="reference.num_cpus", call_timeout_s=limit,
            )
        w.reward = start_reward(cfg.reward, reward_context(cfg), extra_functions(cfg), call_timeout_s=limit)
    except BaseException:
        w.shutdown()
        raise
    return w


def required_cpus(cfg: Any, groups: Iterable[str]) -> float:
    """Logical CPUs that the actor ``groups`` of a run take (names: policy, critic, rollout, reference, reward,
    teacher), from their config sections; a local Ray cluster is sized to hold them all."""
    need = {
        "policy": lambda: cfg.policy.num_workers * cfg.policy.num_cpus_per_worker,
        "critic": lambda: cfg.critic.num_workers * cfg.critic.num_cpus_per_worker,
        "rollout": lambda: cfg.rollout.num_engines * cfg.rollout.num_cpus_per_engine,
        "reference": lambda: cfg.reference.num_cpus,
        "reward": lambda: cfg.reward.num_workers * cfg.reward.num_cpus,
        "teacher": lambda: cfg.teacher.num_cpus,
    }
    wanted = set(groups)
    unknown = wanted - set(need)
    if unknown:
        raise ValueError(f"unknown actor groups {sorted(unknown)}; known: {list(need)}")
    total = 0.0
    for name, cpus in need.items():  # a fixed order: the same sum whatever order the groups come in
        if name in wanted:
            total += cpus()
    return total


def extra_functions(cfg: Any) -> list[dict[str, Any]]:
    """Rewards implied by the algorithm config: ``grpo.overlong=penalty`` adds the soft overlong reward."""
    g = getattr(cfg, "grpo", None)
    if g is not None and g.overlong == "penalty":
        return [{"name": "soft_overlong", "kwargs": {"buffer": g.overlong_buffer, "penalty": g.overlong_penalty}}]
    return []


def reward_context(cfg: Any) -> dict[str, Any]:
    """Run facts every reward may ask for by keyword (``max_new_tokens``)."""
    return {"max_new_tokens": cfg.rollout.max_new_tokens}


def start_reward(cfg: RewardConfig, context: dict[str, Any], extra: list[dict[str, Any]] | None = None,
                 call_timeout_s: float | None = None) -> ActorGroup:
    """The reward group; ``call_timeout_s``: the watchdog's limit on each call (runtime.phase_timeout_s)."""

    # tokens named by reward.remote[].token_env travel from the driver's environment to the reward actors
    # (never through the config or a log line); a variable set on the workers themselves wins
    secrets = {r.token_env: os.environ[r.token_env] for r in cfg.remote if r.token_env and r.token_env in os.environ}
    return ActorGroup(
        RewardWorker, cfg.num_workers, name="reward", num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus,
        init_kwargs=dict(functions=[f.model_dump() for f in cfg.functions] + list(extra or []),
                         remote=[r.model_dump() for r in cfg.remote], models=[m.model_dump() for m in cfg.models],
                         plugins=list(cfg.plugins), context=context, secrets=secrets),
        sizing="reward.num_workers, reward.num_cpus or reward.num_gpus", call_timeout_s=call_timeout_s,
    )


def gpus_per_rank(requested: float | None) -> float:
    import ray

    if requested is not None:
        return requested
    return 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0


def start_policy(cfg: PolicyConfig, model_path: str, dtype: str, total_steps: int, seed: int, strategy: str,
                 trust_remote_code: bool = False, call_timeout_s: float | None = None,
                 worker_cls: type | None = None, extra: dict[str, Any] | None = None,
                 group_name: str = "policy") -> ActorGroup:
    """The policy group; ``call_timeout_s``: the watchdog's limit on each call (runtime.phase_timeout_s).
    ``worker_cls``: a PolicyWorker subclass (a trainer's own loss), given ``extra`` keyword arguments."""

    return ActorGroup(
        worker_cls or PolicyWorker, cfg.num_workers, name=group_name, num_cpus=cfg.num_cpus_per_worker,
        num_gpus=gpus_per_rank(cfg.num_gpus_per_worker), strategy=strategy,
        init_kwargs=dict(model_path=model_path, policy=cfg.model_dump(), dtype=dtype, total_steps=total_steps,
                         seed=seed, trust_remote_code=trust_remote_code, **(extra or {})),
        sizing=f"{group_name}.num_workers, {group_name}.num_cpus_per_worker or {group_name}.num_gpus_per_worker",
        call_timeout_s=call_timeout_s,
    )


def start_rollout(cfg: RolloutConfig, model_path: str, dtype: str, max_model_len: int, strategy: str,
                  trust_remote_code: bool = False, call_timeout_s: float | None = None) -> ActorGroup:
    """The rollout engines; ``call_timeout_s``: the watchdog's limit on each call (runtime.phase_timeout_s)."""

    import_vllm()  # fail on the driver with the install hint, before reserving anything
    return ActorGroup(
        RolloutWorker, cfg.num_engines, name="rollout", num_cpus=cfg.num_cpus_per_engine,
        num_gpus=gpus_per_rank(None) * cfg.tensor_parallel_size, strategy=strategy,
        init_kwargs=dict(model_path=model_path, rollout=cfg.model_dump(), dtype=dtype, max_model_len=max_model_len,
                         trust_remote_code=trust_remote_code),
        sizing="rollout.num_engines, rollout.num_cpus_per_engine or rollout.tensor_parallel_size",
        call_timeout_s=call_timeout_s,
    )


class PromptStream:
    """Endless batches of prompts, reshuffled every epoch; ``state_dict`` / ``load_state_dict`` make the
    position and the shuffle state part of a checkpoint, so a resumed run sees the batches the original
    would have seen."""

    def __init__(self, examples: list[PromptExample], batch_size: int, shuffle: bool, seed: int) -> None:
        self.examples, self.batch_size, self.shuffle = examples, batch_size, shuffle
        self.rng = random.Random(seed)
        self.epoch, self.pos = 0, 0
        self.order = self._new_order()

    def _new_order(self) -> list[int]:
        order = list(range(len(self.examples)))
        if self.shuffle:
            self.rng.shuffle(order)
        return order

    def __iter__(self) -> PromptStream:
        return self

    def __next__(self) -> list[PromptExample]:
        if self.pos + self.batch_size > len(self.order):
            self.epoch, self.pos = self.epoch + 1, 0
            self.order = self._new_order()
        idx = self.order[self.pos : self.pos + self.batch_size]
        self.pos += self.batch_size
        return [self.examples[i] for i in idx]

    def state_dict(self) -> dict[str, Any]:
        version, internal, gauss = self.rng.getstate()
        return {"epoch": self.epoch, "pos": self.pos, "order": list(self.order), "num_examples": len(self.examples),
                "rng": [version, list(internal), gauss]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["num_examples"] != len(self.examples):
            raise ValueError(f"the checkpoint's data stream covers {state['num_examples']} prompts, this run has "
                             f"{len(self.examples)}: resume with the same data files and data.max_prompt_length")
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))
        self.epoch, self.pos, self.order = int(state["epoch"]), int(state["pos"]), list(state["order"])


def prompt_stream(examples: list[PromptExample], batch_size: int, shuffle: bool, seed: int) -> PromptStream:
    return PromptStream(examples, batch_size, shuffle, seed)


def phase_seed(seed: int, step: int, phase: str) -> int:
    """A sampling seed that depends only on the run seed, the step and the phase (not on history)."""
    return (seed * 1_000_003 + step * 7919 + sum(map(ord, phase))) % 2**31


class PolicyRankDied(RuntimeError, RunError):
    """A policy rank died: training state is lost beyond the last checkpoint; the message says how to resume."""

    @classmethod
    def from_error(cls, e: WorkerError, last_checkpoint: Any) -> PolicyRankDied:
        where = (f"resume from {last_checkpoint} with --resume auto (or --resume {last_checkpoint})" if last_checkpoint
                 else "no checkpoint was written yet (set checkpoint.save_every to make runs resumable); start again")
        cause = type(e.__cause__).__name__ if e.__cause__ is not None else "actor died"
        return cls(f"{e.group} rank {e.rank} died in {e.what} ({cause}; its log is in the Ray session logs); the "
                   f"ranks' training state is lost beyond the last checkpoint: {where}")


class Recovery:
    """Restarts rollout engines, reward workers and reference ranks that died and retries the phase.

    A dead engine is replaced in its placement-group bundle, set up, and given the policy's current
    weights before the retry (a reference rank is frozen: it reloads its model); at most ``max_restarts``
    restarts per run. Any other failure, and a dead policy rank, propagates (the driver turns a dead policy
    rank into ``PolicyRankDied``).
    """

    def __init__(self, workers: Workers, max_restarts: int, bucket_mb: int, name: str = "raylhf") -> None:
        self.workers, self.max_restarts, self.bucket_mb, self.name = workers, max_restarts, bucket_mb, name
        self.restarts = 0
        self.retried = 0

    def run(self, phase: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)``, retried after restarting the dead rollout / reward ranks that made it fail."""
        while True:
            try:
                return fn(*args, **kwargs)
            except WorkerError as e:
                group = {"rollout": self.workers.rollout, "reward": self.workers.reward,
                         "reference": self.workers.reference}.get(e.group)
                if not e.died or group is None or self.restarts >= self.max_restarts:
                    raise
                print(f"[{self.name}] {e.what}: rank {e.rank} died during {phase}; restarting it "
                      f"({self.restarts + 1} of runtime.max_actor_restarts={self.max_restarts})", flush=True)
                restarted = group.restart_dead()
                self.restarts += max(1, len(restarted))
                if group is self.workers.rollout and phase != "sync":
                    assert self.workers.policy is not None
                    sync_weights(self.workers.policy, group, self.bucket_mb)  # the engines lag no update
                self.retried += 1

    def metrics(self) -> dict[str, float]:
        return {"recovery/restarts": float(self.restarts), "recovery/retried_phases": float(self.retried)}


def generate(rollout: ActorGroup, prompt_ids: list[list[int]], n: int, **kw: Any) -> list[Rollout]:
    """``n`` samples per prompt, prompts spread over the engines; ordered prompt by prompt."""
    indexed = list(enumerate(prompt_ids))
    parts = rollout.call_split("generate", indexed, n, **kw)
    return [r for part in parts for r in part]


def submit_generate(rollout: ActorGroup, prompt_ids: list[list[int]], n: int, **kw: Any) -> Any:
    """``generate`` without waiting: a Pending whose ``result()`` is the engines' parts (flatten them)."""
    return rollout.submit_split("generate", list(enumerate(prompt_ids)), n, **kw)


@dataclass
class Scores:
    """Rewards of one batch: ``total`` is NaN where no reward scored the completion (all returned None)."""

    total: torch.Tensor
    per_function: dict[str, list[float | None]]
    steps: dict[str, list[list[float] | None]]
    metrics: dict[str, float]
    weights: dict[str, float] = dataclasses.field(default_factory=dict)  # each reward's weight in the total

    @property
    def scored(self) -> torch.Tensor:
        return ~torch.isnan(self.total)

    def function_means(self) -> dict[str, float]:
        """Each reward's mean over the completions it scored (NaN when it scored none)."""
        out = {}
        for name, values in self.per_function.items():
            done = [v for v in values if v is not None]
            out[name] = sum(done) / len(done) if done else float("nan")
        return out


def reward_items(rollouts: list[Rollout], examples: list[PromptExample], tokenizer: Any) -> list[dict[str, Any]]:
    """What the reward workers see of each rollout: prompt text and messages, completion, columns."""
    rendered: dict[int, str] = {}
    items = []
    for r in rollouts:
        ex = examples[r.prompt_index]
        if r.prompt_index not in rendered:
            rendered[r.prompt_index] = tokenizer.decode(r.prompt_ids, skip_special_tokens=False)
        text = r.text or tokenizer.decode(r.response_ids, skip_special_tokens=True)
        prompt = ex.messages[-1]["content"] if ex.messages else ""
        items.append({"prompt": prompt, "completion": text, "completion_ids": r.response_ids,
                      "prompt_messages": ex.messages, "rendered_prompt": rendered[r.prompt_index], **ex.extras})
    return items


def score(reward: ActorGroup, rollouts: list[Rollout], examples: list[PromptExample], tokenizer: Any,
          step: int | None = None) -> Scores:
    """Total reward per rollout (NaN: not scored), per-reward values, PRM step scores and reward metrics."""
    parts = reward.call_split("score", reward_items(rollouts, examples, tokenizer), step=step)
    total = [v for p in parts for v in p["total"]]
    per_fn: dict[str, list[float | None]] = {}
    steps: dict[str, list[list[float] | None]] = {}
    for p in parts:
        for k, v in p["per_function"].items():
            per_fn.setdefault(k, []).extend(v)
        for k, v in p.get("steps", {}).items():
            steps.setdefault(k, []).extend(v)
    metrics = reduce_reward_metrics([p.get("metrics", {}) for p in parts])
    t = torch.tensor([float("nan") if v is None else v for v in total], dtype=torch.float32)
    return Scores(t, per_fn, steps, metrics, dict(parts[0].get("weights", {})) if parts else {})


def reduce_reward_metrics(per_worker: list[dict[str, float]]) -> dict[str, float]:
    """Counters add up over reward workers, latency percentiles take the worst worker."""
    out: dict[str, float] = {}
    for d in per_worker:
        for k, v in d.items():
            if k.endswith("_ms"):
                out[k] = max(out.get(k, v), v)
            else:
                out[k] = out.get(k, 0.0) + v
    return out


def fill_unscored(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """Replace NaN (not scored) by the mean of the scored rewards of the same group (0 if none was scored),
    so the advantage estimators see finite numbers; the driver drops those samples from the update."""
    g = rewards.view(-1, group_size)
    ok = ~torch.isnan(g)
    mean = torch.where(ok, g, torch.zeros_like(g)).sum(1, keepdim=True) / ok.sum(1, keepdim=True).clamp(min=1)
    return torch.where(ok, g, mean.expand_as(g)).reshape(-1)


def to_train_batch(rollouts: list[Rollout], advantages: torch.Tensor, mask_truncated: bool = False) -> TrainBatch:
    bad = (~torch.isfinite(advantages)).nonzero().flatten().tolist()
    if bad:  # never let a NaN reach the loss: unscored samples are filled and dropped before this point
        raise ValueError(f"non-finite advantages for samples {bad[:8]} (of {len(advantages)}): a reward or the "
                         "advantage estimator produced NaN/inf; rewards mark unscored completions with None")
    ids, mask, adv, rlp = [], [], [], []
    for r, a in zip(rollouts, advantages.tolist(), strict=True):
        p, n = len(r.prompt_ids), len(r.response_ids)
        ids.append(torch.tensor(r.prompt_ids + r.response_ids, dtype=torch.long))
        on = 0.0 if (mask_truncated and r.truncated) else 1.0
        if r.response_mask is None:
            mask.append(torch.tensor([0.0] * p + [on] * n))
            adv.append(torch.tensor([0.0] * p + [a] * n))
        else:  # an agent episode: the environment's tokens (tool answers) carry no loss
            m = torch.tensor([0.0] * p + [on * float(x) for x in r.response_mask])
            mask.append(m)
            adv.append(m.ne(0).float() * a)
        rlp.append(torch.tensor([0.0] * p + list(r.logprobs)))
    return TrainBatch(input_ids=ids, loss_mask=mask, advantages=adv, rollout_logprobs=rlp)


def sync_weights(policy: ActorGroup, rollout: ActorGroup, bucket_mb: int) -> float:
    """Policy -> every engine through the object store (bucketed; ZeRO-3 gathered); seconds."""
    t0 = time.perf_counter()
    refs = policy.call("export_weights", bucket_mb)[0]
    rollout.call("load_weights", refs)
    return time.perf_counter() - t0


def evaluate(rollout: ActorGroup, reward: ActorGroup, examples: list[PromptExample], prompt_ids: list[list[int]],
             tokenizer: Any, max_new_tokens: int, samples: int = 1, temperature: float = 0.0,
             seed: int | None = None, generate_fn: Callable[..., list[Rollout]] | None = None) -> dict[str, float]:
    """Held-out scores over ``samples`` completions per prompt at ``temperature`` (mean@k): ``eval/<label>``
    for every reward (unscored completions excluded), ``eval/reward`` (the weighted sum) and
    ``eval/accuracy`` (the 'accuracy' reward, else the total); with temperature > 0 also one greedy
    completion per prompt as ``eval/greedy_<label>`` and ``eval/greedy_accuracy``. ``generate_fn``: in place of
    :func:`generate`, same arguments (multi-turn agent episodes)."""

    def run(n: int, temp: float, prefix: str) -> dict[str, float]:
        rolls = (generate_fn or generate)(rollout, prompt_ids, n, temperature=temp, max_new_tokens=max_new_tokens,
                                          seed=seed)
        scores = score(reward, rolls, examples, tokenizer)
        total = scores.total[scores.scored]
        out = {"reward": float(total.mean()) if len(total) else float("nan"),
               "response_len": sum(len(r.response_ids) for r in rolls) / max(1, len(rolls))}
        out.update(scores.function_means())
        out.setdefault("accuracy", out["reward"])
        return {f"eval/{prefix}{k}": v for k, v in out.items()}

    result = run(samples, temperature, "")
    if temperature > 0:
        greedy = run(1, 0.0, "greedy_")
        result.update({k: v for k, v in greedy.items() if k not in ("eval/greedy_reward", "eval/greedy_response_len")})
    return result


class PhaseTimer:
    """``with timer("generate"): ...`` records ``time/generate``; ``time/step`` spans the timer's life."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.times: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.times[phase] = self.times.get(phase, 0.0) + time.perf_counter() - t

    def metrics(self) -> dict[str, float]:
        return {**{f"time/{k}": v for k, v in self.times.items()}, "time/step": time.perf_counter() - self.start}


def prefixed(prefix: str, metrics: dict[str, float]) -> dict[str, float]:
    return {prefix + k.removeprefix("reward_"): v for k, v in metrics.items()}


def rollout_metrics(rollouts: list[Rollout], scores: Scores, timer: PhaseTimer) -> dict[str, float]:
    n_tok = sum(len(r.response_ids) for r in rollouts)
    out = {f"reward/{name}": mean for name, mean in scores.function_means().items()}
    for name, values in scores.per_function.items():
        if None in values:
            out[f"reward/{name}/unscored"] = float(values.count(None))
    out.update({f"reward/{k}": v for k, v in scores.metrics.items()})
    out["reward/unscored_frac"] = float((~scores.scored).float().mean()) if len(rollouts) else 0.0
    out["response/len_mean"] = n_tok / max(1, len(rollouts))
    out["response/truncated_frac"] = sum(r.truncated for r in rollouts) / max(1, len(rollouts))
    out["perf/gen_tokens_per_s"] = n_tok / max(timer.times.get("generate", 0.0), 1e-9)
    return out


def varied_groups(rewards: torch.Tensor, group_size: int) -> list[int]:
    """Indices of the samples whose group's rewards are not all equal (dynamic sampling, DAPO)."""
    std = rewards.view(-1, group_size).std(dim=1)
    return [i for i in range(len(rewards)) if std[i // group_size] > 0]


def values(critic: ActorGroup, batch: TrainBatch) -> list[torch.Tensor]:
    """The critic's per-token values of every sequence of the batch, spread over its ranks."""
    parts = critic.call_split("values", batch.input_ids)
    return [x for part in parts for x in part]


def logprobs(group: ActorGroup, batch: TrainBatch, temperature: float) -> list[torch.Tensor]:
    """Log-probs of every sequence of the batch, spread over the group's ranks."""
    parts = group.call_split("logprobs", batch.input_ids, temperature)
    return [x for part in parts for x in part]


def train(policy: ActorGroup, batch: TrainBatch, objective: Objective, train_size: int, updates: int,
          world: int) -> dict[str, float]:
    """``updates`` passes over the batch in optimizer steps of ``train_size`` sequences.

    Metrics: each step's ranks reduced by :func:`reduce_ranks`, then the steps by
    :func:`raylhf.core.metrics.reduce_metrics` (per-step values averaged, maxima / minima as such)."""
    rows = []
    for _ in range(updates):
        for s in range(0, len(batch), train_size):
            mb = split_for_ranks(batch.select(list(range(s, min(s + train_size, len(batch))))), world)
            if len(mb):
                rows.append(reduce_ranks(policy.call_split("train_step", mb, objective.with_counts(mb))))
    return reduce_metrics(rows)


def reduce_ranks(per_rank: list[dict[str, float]]) -> dict[str, float]:
    """One optimizer step's metrics from its ranks': globally normalized losses and ``train_tokens`` add up,
    maxima / minima take the max / min, everything else is averaged weighted by each rank's ``train_tokens``."""
    weights = [d["train_tokens"] for d in per_rank] if all("train_tokens" in d for d in per_rank) else None
    return reduce_metrics(per_rank, weights, RANK_SUM_METRICS)


def split_for_ranks(batch: TrainBatch, world: int) -> TrainBatch:
    """Drop trailing sequences so the batch splits evenly over ``world`` ranks."""
    keep = len(batch) - len(batch) % world
    return batch.select(list(range(keep)))
