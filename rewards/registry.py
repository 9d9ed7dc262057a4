"""Reward registry, plugin loading and the adapters that turn every kind of reward into a ``Scorer``.

Names in ``reward.functions`` resolve, in order, to: a registered name (built-ins, ``@register_reward`` /
``@register_orm`` / ``@register_prm`` in a plugin file, or a plugin file's module-level ``orms`` / ``prms``
dicts), or ``path/to/file.py:attr`` / ``package.module:attr``. The object may be a TRL-style function,
an ``async def`` function, or an ms-swift-style ORM/PRM class (instantiated once with the entry's ``kwargs``).

Plugin files written for ms-swift (``from swift.plugin import ORM, orms``) load unchanged: when ms-swift is
not installed, a small stand-in ``swift`` module provides ``ORM``, ``PRM``, ``AsyncORM``, ``orms``, ``prms``,
``InferRequest`` and ``get_logger``.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import importlib.util
import inspect
import logging
import math
import sys
import types
from collections.abc import Callable, Iterable
from typing import Any

from raylhf.plugins import registry as plugin_registry
from raylhf.plugins.registry import Registry
from rewards.base import ORM, PRM, AsyncORM, InferRequest, RewardBatch, Score, Scorer

RewardFn = Callable[..., Any]
REWARDS: Registry[Any] = Registry("reward", "reward.functions")  # name -> function or ORM/PRM class


def _register(name: str, obj: Any, origin: str = "") -> None:
    REWARDS.register(name, obj, origin or None)


def register_reward(name: str) -> Callable[[Any], Any]:
    """Decorator for a reward function or ORM/PRM class; the name then works in ``reward.functions``."""

    def deco(obj: Any) -> Any:
        _register(name, obj)
        return obj

    return deco


register_orm = register_reward
register_prm = register_reward


# ---------------------------------------------------------------- plugin files and the ms-swift stand-in

def install_swift_shim() -> None:
    """Provide ``swift.plugin`` / ``swift.llm`` / ``swift.utils`` names when ms-swift is not installed."""
    if "swift" in sys.modules or importlib.util.find_spec("swift") is not None:
        return
    plugin = types.ModuleType("swift.plugin")
    plugin.ORM, plugin.PRM, plugin.AsyncORM = ORM, PRM, AsyncORM  # type: ignore[attr-defined]
    plugin.orms, plugin.prms = {}, {}  # type: ignore[attr-defined]
    llm = types.ModuleType("swift.llm")
    llm.InferRequest = InferRequest  # type: ignore[attr-defined]
    utils = types.ModuleType("swift.utils")
    utils.get_logger = lambda *a, **k: logging.getLogger("swift")  # type: ignore[attr-defined]
    root = types.ModuleType("swift")
    root.__raylhf_shim__ = True  # type: ignore[attr-defined]
    root.__path__ = []  # a package, so submodule imports resolve through sys.modules
    root.plugin, root.llm, root.utils = plugin, llm, utils  # type: ignore[attr-defined]
    sys.modules.update({"swift": root, "swift.plugin": plugin, "swift.plugin.orm": plugin,
                        "swift.plugin.prm": plugin, "swift.llm": llm, "swift.utils": utils,
                        "swift.rewards": plugin})


def collect_table(table: Any, source: str) -> None:
    """A plugin module's ``orms`` / ``prms`` dict (name -> function or class) into the reward registry."""
    REWARDS.register_table(table, source, "reward function or ORM/PRM class")


def collect_swift_shim(origin: str) -> None:
    """Entries a plugin file added to the stand-in ``swift.plugin.orms`` / ``prms`` dicts."""
    shim = sys.modules.get("swift.plugin")
    if shim is None:
        return
    for attr in ("orms", "prms"):
        for name, obj in getattr(shim, attr).items():
            _register(str(name), obj, f"{origin} (swift.plugin.{attr})")


def load_plugin(ref: str) -> types.ModuleType:
    """Import a plugin file / module (``reward.plugins`` / ``plugins``): runs its decorators, collects its tables."""
    return plugin_registry.load_plugin(ref)


def load_object(ref: str) -> Any:
    """``file.py:attr`` or ``package.module:attr`` -> the object."""
    if ":" not in ref:
        raise ValueError(f"{ref!r} is not 'file.py:function' or 'package.module:function'")
    target, attr = ref.rsplit(":", 1)
    try:
        module = plugin_registry.load_plugin(target)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{e} (from {ref!r})") from e
    if not hasattr(module, attr):
        public = [n for n in dir(module) if not n.startswith("_")]
        raise AttributeError(f"{target} has no {attr!r}; it defines: {', '.join(public)}")
    return getattr(module, attr)


def lookup(name: str) -> Any:
    """The registered object or the ``file.py:attr`` target for a ``reward.functions`` name."""
    import rewards.orm  # noqa: F401  (registers the built-ins)

    plugin_registry.ensure_loaded()
    if name in REWARDS:
        return REWARDS[name]
    if ":" in name:
        obj = load_object(name)
        if not callable(obj):
            raise TypeError(f"reward.functions name={name!r} is not callable")
        return obj
    raise ValueError(
        f"unknown reward {name!r} in reward.functions; registered: {', '.join(sorted(REWARDS))}; "
        "or give 'path/to/file.py:function', or load a plugin file with reward.plugins"
    )


def resolve_reward(spec: dict[str, Any]) -> RewardFn:
    """The callable for one ``reward.functions`` entry: a function with its kwargs bound, or a class instance."""
    obj = lookup(spec["name"])
    kwargs = dict(spec.get("kwargs") or {})
    if inspect.isclass(obj):
        try:
            return obj(**kwargs)
        except TypeError as e:
            raise TypeError(f"reward {spec['name']!r}: cannot construct {obj.__name__}(**{kwargs}): {e}") from e
    return functools.partial(obj, **kwargs) if kwargs else obj


# ---------------------------------------------------------------- adapters

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
        from rewards.steps import aggregate_steps

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
        return {}

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
        from rewards.remote import RemoteReward

        out.append((RemoteReward(spec), float(spec.get("weight", 1.0))))
        taken.add(spec["name"])
    for spec in models:
        from rewards.model import SequenceRewardModel, StepTagPRM

        cls = StepTagPRM if spec.get("kind", "orm") == "prm" else SequenceRewardModel
        out.append((cls(spec), float(spec.get("weight", 1.0))))
        taken.add(spec["name"])
    return out


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


# ---------------------------------------------------------------- raylhf check-plugin

def check_plugin_entry(name: str, obj: Any) -> str:
    """``raylhf check-plugin``: build the scorer for reward ``name`` and score two synthetic completions
    (prompt "What is 2+2?", completions "4" / "5", column ``solution`` ["4", "4"]); it must return one score per
    completion (a number, per-step numbers for a PRM, or None)."""
    from raylhf.plugins.registry import PluginCheckError

    expected = ("a function f(completions, **kwargs) / f(prompts, completions, completion_ids, **columns), or an "
                "ORM/PRM class with __call__(self, completions, **kwargs) or __call__(self, infer_requests, "
                "ground_truths=None, **kwargs)")
    if not callable(obj):
        raise PluginCheckError(f"reward {name!r} is not callable; expected {expected}")
    try:
        scorer = function_scorer({"name": name})
    except TypeError as e:
        if inspect.isclass(obj):
            return f"not run: the class needs constructor arguments ({e}); give them as reward.functions kwargs"
        raise PluginCheckError(f"reward {name!r}: {e}; expected {expected}") from e
    batch = RewardBatch(prompts=["What is 2+2?"] * 2, completions=["4", "5"], completion_ids=[[19], [20]],
                        prompt_messages=[[{"role": "user", "content": "What is 2+2?"}]] * 2,
                        columns={"solution": ["4", "4"]}, context={"step": 0, "max_new_tokens": 16})
    try:
        scores = asyncio.run(scorer.score(batch))
    except (KeyError, AttributeError) as e:
        return (f"not run: it needs something the synthetic batch lacks ({type(e).__name__}: {e}); "
                "it may read a dataset column other than 'solution'")
    except (TypeError, ValueError) as e:
        raise PluginCheckError(f"reward {name!r} failed on 2 synthetic completions: {e}; expected {expected}, "
                               "returning one score per completion") from e
    return f"{scorer.kind} on 2 synthetic completions returned {scores}"
