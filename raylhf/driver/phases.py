"""The phases of an online step, as calls on the actor groups: generate, score, reference / old log-probs,
values, train, weight sync, evaluate; with the step's timers and metrics. The trainers call them in the order of
their algorithm (docs/architecture.md: one GRPO step). Worker start-up is ``startup.py``, the prompt stream
``stream.py``, recovery ``recovery.py``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from actors.group import ActorGroup
from raylhf.core.batch import Objective, Rollout, TrainBatch
from raylhf.core.metrics import RANK_SUM_METRICS, reduce_metrics
from raylhf.data import PromptExample

T = TypeVar("T")


def generate(rollout: ActorGroup, prompt_ids: list[list[int]], n: int, **kw: Any) -> list[Rollout]:
    """``n`` samples per prompt, each prompt sent to the engine with the least outstanding work; ordered prompt by
    prompt."""
    return [r for part in submit_generate(rollout, prompt_ids, n, **kw).result() for r in part]


def submit_generate(rollout: ActorGroup, prompt_ids: list[list[int]], n: int, **kw: Any) -> Any:
    """``generate`` without waiting: a Pending whose ``result()`` is one list of rollouts per prompt (flatten
    them). Each prompt is one call (its ``n`` requests run concurrently in the engine with the others'); its
    cost for the routing is its ``n`` samples."""
    return rollout.submit_routed("generate", list(enumerate(prompt_ids)), n, cost=lambda _: n, **kw)


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

    def add_env(self, rollouts: list[Rollout], weight: float) -> None:
        """Add multi-turn episodes' environment rewards (``episode["env_reward"]``, raylhf/agent) to the totals,
        weighted by ``weight``, as the reward ``env`` (logged as ``reward/env``); nothing when no episode has one.
        A total no reward function scored (NaN) becomes the env reward alone."""
        values = [None if r.episode is None else r.episode.get("env_reward") for r in rollouts]
        if all(v is None for v in values):
            return
        self.per_function["env"] = [None if v is None else float(v) for v in values]
        self.weights["env"] = weight
        add = torch.tensor([0.0 if v is None else weight * float(v) for v in values], dtype=self.total.dtype)
        has = torch.tensor([v is not None for v in values])
        self.total = torch.where(torch.isnan(self.total) & has, torch.zeros_like(self.total), self.total) + add

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


def merge_scores(parts: list[Scores]) -> Scores:
    """The scores of several batches (groups scored one by one) as one, in order; counters add up, latency
    percentiles take the worst."""
    if not parts:
        return Scores(torch.zeros(0), {}, {}, {})
    per_fn: dict[str, list[float | None]] = {}
    steps: dict[str, list[list[float] | None]] = {}
    done = 0
    for p in parts:
        k = len(p.total)
        for name in set(per_fn) | set(p.per_function):
            per_fn.setdefault(name, [None] * done).extend(p.per_function.get(name, [None] * k))
        for name in set(steps) | set(p.steps):
            steps.setdefault(name, [None] * done).extend(p.steps.get(name, [None] * k))
        done += k
    weights = {k: v for p in parts for k, v in p.weights.items()}
    return Scores(torch.cat([p.total for p in parts]), per_fn, steps, reduce_reward_metrics([p.metrics for p in parts]),
                  weights)


def reduce_reward_metrics(per_worker: list[dict[str, float]]) -> dict[str, float]:
    """Counters add up over reward workers, latency percentiles take the worst worker, shares (``*_frac``)
    the mean of the workers that report them."""
    out: dict[str, float] = {}
    shares: dict[str, list[float]] = {}
    for d in per_worker:
        for k, v in d.items():
            if k.endswith("_ms"):
                out[k] = max(out.get(k, v), v)
            elif k.endswith("_frac"):
                shares.setdefault(k, []).append(v)
            else:
                out[k] = out.get(k, 0.0) + v
    out.update({k: sum(v) / len(v) for k, v in shares.items()})
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
