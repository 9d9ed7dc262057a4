"""Every kind of reward as a ``Scorer``: functions and ORM/PRM instances (:class:`CallableScorer`), remote
endpoints, reward models, and their weighted sum (:class:`CombinedScorer`), which the reward actors, the reward
server and ``raylhf sample`` call. See docs/rewards.md."""

from __future__ import annotations

import asyncio
import functools
import inspect
import math
from collections.abc import Callable, Iterable
from typing import Any

from raylhf.plugins.registry import load_plugin
from rewards.base import ORM, PRM, RewardBatch, Score, Scorer
from rewards.remote import RemoteReward
from rewards.resolve import resolve_reward
from rewards.steps import aggregate_steps


def _call_target(fn: Any) -> Callable[..., Any]:
    if isinstance(fn, functools.partial):
        return fn.func
    if not inspect.isfunction(fn) and not inspect.ismethod(fn) and callable(fn):
        return fn.__call__  # class instance
    return fn


def _signature(fn: Any) -> tuple[list[str], bool]:
    """Parameter names (bound partial kwargs removed) and whether it takes ``**kwargs``."""
    sig = inspect.signature(_call_target(fn))
    bound = set(fn.keywords) if isinstance(fn, functools.partial) else set()
    params = [p for p in sig.parameters.values() if p.name not in bound and p.name != "self"]
    return [p.name for p in params if p.kind != p.VAR_KEYWORD and p.kind != p.VAR_POSITIONAL], any(
        p.kind == p.VAR_KEYWORD for p in params)


def _is_async(fn: Any) -> bool:
    return inspect.iscoroutinefunction(_call_target(fn))


class CallableScorer:
    """A function or ORM/PRM instance as a Scorer.

    Calling conventions (chosen by the first parameter's name):
    ``infer_requests`` -> ms-swift's old shape ``(infer_requests, ground_truths=..., **kwargs)``;
    anything else -> keywords ``prompts, completions, completion_ids`` (+ ``response_token_ids``, ``messages``,
    ``prompt_messages``, ``ground_truths``), the dataset columns and the run context, each passed only where
    the signature accepts it (all of them with ``**kwargs``).
    """

    def __init__(self, name: str, fn: Any, *, kind: str = "orm", ground_truth: str = "solution",
                 aggregate: str = "min") -> None:
        self.name, self.fn, self.kind = name, fn, kind
        self.ground_truth, self.aggregate = ground_truth, aggregate
        self.params, self.var_kw = _signature(fn)
        self.bound = set(fn.keywords) if isinstance(fn, functools.partial) else set()  # config kwargs win
        self.requests_style = bool(self.params) and self.params[0] == "infer_requests"
        self.is_async = _is_async(fn)
        self.last_steps: list[list[float] | None] = []

    def _kwargs(self, batch: RewardBatch) -> dict[str, Any]:
        offered: dict[str, Any] = {**batch.context, **batch.columns}
        offered.update(prompts=batch.prompts, completions=batch.completions, completion_ids=batch.completion_ids,
                       response_token_ids=batch.completion_ids, prompt_messages=batch.prompt_messages,
                       messages=[batch.messages(i) for i in range(len(batch))])
        if self.ground_truth in batch.columns:
            offered["ground_truths"] = batch.columns[self.ground_truth]
        if self.requests_style:
            offered.pop("completions")
            offered["infer_requests"] = batch.infer_requests()
        if self.var_kw:
            return {k: v for k, v in offered.items() if k not in self.bound}
        return {k: v for k, v in offered.items() if k in self.params}

    async def score(self, batch: RewardBatch) -> list[Score]:
        kwargs = self._kwargs(batch)
        if self.is_async:
            raw = await self.fn(**kwargs)
        else:
            raw = await asyncio.to_thread(self.fn, **kwargs)
            if inspect.isawaitable(raw):
                raw = await raw
        return self._normalize(raw, len(batch))

    def _normalize(self, raw: Any, n: int) -> list[Score]:
        try:
            values = list(raw)
        except TypeError:
            raise TypeError(f"reward {self.name!r} returned {type(raw).__name__}, not a list of scores") from None
        if len(values) != n:
            raise ValueError(f"reward {self.name!r} returned {len(values)} values for {n} completions")
        out: list[Score] = []
        self.last_steps = []
        for i, v in enumerate(values):
            if isinstance(v, (list, tuple)) or (hasattr(v, "tolist") and getattr(v, "ndim", 0) > 0):
                steps = [self._finite(s, i) for s in (v.tolist() if hasattr(v, "tolist") else v)]
                self.last_steps.append(steps)
                out.append(aggregate_steps(steps, self.aggregate))
            else:
                self.last_steps.append(None)
                out.append(None if v is None else self._finite(v, i))
        return out

    def _finite(self, v: Any, i: int) -> float:
        try:
            x = float(v)
        except (TypeError, ValueError):
            raise TypeError(f"reward {self.name!r} returned {v!r} for completion {i}; expected a number "
                            "(or None for 'not scored')") from None
        if not math.isfinite(x):
            raise ValueError(f"reward {self.name!r} returned {x} for completion {i}; return None to mark a "
                             "completion as not scored")
        return x

    def metrics(self) -> dict[str, float]:
        """An ORM/PRM instance's own ``metrics()`` (e.g. code_tests' status shares); functions have none."""
        own = getattr(self.fn, "metrics", None)
        return dict(own()) if callable(own) and not isinstance(self.fn, functools.partial) else {}

    async def aclose(self) -> None:
        return None


def function_scorer(spec: dict[str, Any], label: str | None = None) -> CallableScorer:
    obj = resolve_reward(spec)
    kind = getattr(obj, "kind", "orm") if isinstance(obj, (ORM, PRM)) else "orm"
    return CallableScorer(label or spec["name"].rsplit(":", 1)[-1], obj, kind=kind,
                          ground_truth=spec.get("ground_truth", "solution"), aggregate=spec.get("aggregate", "min"))


def _unique(label: str, taken: set[str]) -> str:
    while label in taken:
        label += "_"
    return label


def build_scorers(functions: Iterable[dict[str, Any]] = (), remote: Iterable[dict[str, Any]] = (),
                  models: Iterable[dict[str, Any]] = (), plugins: Iterable[str] = ()) -> list[tuple[Scorer, float]]:
    """Every configured reward as ``(scorer, weight)``; plugin files are loaded first."""
    for ref in plugins:
        load_plugin(ref)
    out: list[tuple[Scorer, float]] = []
    taken: set[str] = set()
    for spec in functions:
        label = _unique(spec.get("label") or spec["name"].rsplit(":", 1)[-1], taken)
        taken.add(label)
        out.append((function_scorer(spec, label), float(spec.get("weight", 1.0))))
    for spec in remote:
        out.append((RemoteReward(spec), float(spec.get("weight", 1.0))))
        taken.add(spec["name"])
    for spec in models:
        # in-function: a heavy backend (torch, transformers), loaded only where a reward model is configured
        from rewards.model import SequenceRewardModel, StepTagPRM

        cls = StepTagPRM if spec.get("kind", "orm") == "prm" else SequenceRewardModel
        out.append((cls(spec), float(spec.get("weight", 1.0))))
        taken.add(spec["name"])
    return out


def bind_context(scorers: Iterable[tuple[Scorer, float]], context: dict[str, Any]) -> None:
    """Give the run's facts to every reward that asks for them at start (``fn.bind_context(context)``, e.g.
    code_tests builds its sandbox pool and checks the sandbox can run)."""
    for scorer, _ in scorers:
        hook = getattr(getattr(scorer, "fn", None), "bind_context", None)
        if callable(hook):
            hook(context)


class CombinedScorer:
    """The weighted sum of several scorers, run concurrently. A scorer's ``None`` contributes nothing
    (TRL's convention for rewards that do not apply to a sample); a completion no scorer scored is ``None``."""

    def __init__(self, scorers: list[tuple[Scorer, float]], name: str = "reward") -> None:
        if not scorers:
            raise ValueError("no reward configured")
        self.scorers, self.name = scorers, name
        kinds = {s.kind for s, _ in scorers}
        self.kind = "prm" if kinds == {"prm"} and len(scorers) == 1 else "orm"

    async def score_all(self, batch: RewardBatch) -> dict[str, Any]:
        results = await asyncio.gather(*(s.score(batch) for s, _ in self.scorers))
        total: list[float | None] = [None] * len(batch)
        per_fn: dict[str, list[float | None]] = {}
        steps: dict[str, list[list[float] | None]] = {}
        for (scorer, weight), values in zip(self.scorers, results, strict=True):
            per_fn[scorer.name] = values  # type: ignore[assignment]
            raw = getattr(scorer, "last_steps", None)
            if scorer.kind == "prm" and raw:
                steps[scorer.name] = raw
            for i, v in enumerate(values):
                if v is not None:
                    total[i] = (total[i] or 0.0) + weight * float(v)  # type: ignore[arg-type]
        weights = {scorer.name: weight for scorer, weight in self.scorers}
        return {"total": total, "per_function": per_fn, "steps": steps, "weights": weights}

    async def score(self, batch: RewardBatch) -> list[Score]:
        if self.kind == "prm":  # a single PRM: its per-step lists (the reward server returns them)
            scorer = self.scorers[0][0]
            values = await scorer.score(batch)
            raw = getattr(scorer, "last_steps", None)
            return [r if r is not None else v for r, v in zip(raw, values, strict=True)] if raw else values
        return (await self.score_all(batch))["total"]  # type: ignore[return-value]

    def metrics(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for s, _ in self.scorers:
            out.update({f"{s.name}/{k}": v for k, v in s.metrics().items()})
        return out

    async def aclose(self) -> None:
        for s, _ in self.scorers:
            await s.aclose()
