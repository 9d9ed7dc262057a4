"""Reward-function registry and loader.

A reward function follows TRL's convention::

    def my_reward(prompts: list[str], completions: list[str], completion_ids: list[list[int]], **columns) -> list[float]

where ``columns`` holds the dataset's extra columns (e.g. ``solution``), one value per completion.
Register built-ins with ``@register_reward("name")``; users point ``reward.functions[].name`` at
``path/to/file.py:function`` or ``package.module:function``.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

RewardFn = Callable[..., list[float]]
REWARDS: dict[str, RewardFn] = {}


def register_reward(name: str) -> Callable[[RewardFn], RewardFn]:
    def deco(fn: RewardFn) -> RewardFn:
        if name in REWARDS:
            raise ValueError(f"reward {name!r} is already registered (by {REWARDS[name].__module__})")
        REWARDS[name] = fn
        return fn

    return deco


def load_object(ref: str) -> Any:
    """``file.py:attr`` or ``package.module:attr`` -> the object."""
    if ":" not in ref:
        raise ValueError(f"{ref!r} is not 'file.py:function' or 'package.module:function'")
    target, attr = ref.rsplit(":", 1)
    if target.endswith(".py"):
        path = Path(target).expanduser().resolve()
        if not path.is_file():
            raise FileNotFoundError(f"reward file {target} does not exist (from {ref!r})")
        mod_name = f"raylhf_user_{path.stem}_{abs(hash(str(path)))}"
        spec = importlib.util.spec_from_file_location(mod_name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(target)
    if not hasattr(module, attr):
        public = [n for n in dir(module) if not n.startswith("_")]
        raise AttributeError(f"{target} has no {attr!r}; it defines: {', '.join(public)}")
    return getattr(module, attr)


def resolve_reward(spec: dict[str, Any]) -> RewardFn:
    """The callable for one ``reward.functions`` entry, with its kwargs bound."""
    import rewards.orm  # noqa: F401  (registers the built-ins)

    name = spec["name"]
    kwargs = dict(spec.get("kwargs") or {})
    if name in REWARDS:
        fn = REWARDS[name]
    elif ":" in name:
        fn = load_object(name)
        if not callable(fn):
            raise TypeError(f"reward.functions name={name!r} is not callable")
    else:
        raise ValueError(
            f"unknown reward {name!r} in reward.functions; built-ins: {', '.join(sorted(REWARDS))}; "
            "or give 'path/to/file.py:function'"
        )
    return functools.partial(fn, **kwargs) if kwargs else fn
