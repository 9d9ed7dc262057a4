"""Names in ``reward.functions`` to callables: a registered name (built-ins, plugin files' entries) or a
``path/to/file.py:attr`` / ``package.module:attr`` reference. See docs/rewards.md."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from raylhf.plugins.registry import REWARDS, ensure_loaded, load_plugin

RewardFn = Callable[..., Any]


def load_object(ref: str) -> Any:
    """``file.py:attr`` or ``package.module:attr`` -> the object."""
    if ":" not in ref:
        raise ValueError(f"{ref!r} is not 'file.py:function' or 'package.module:function'")
    target, attr = ref.rsplit(":", 1)
    try:
        module = load_plugin(target)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{e} (from {ref!r})") from e
    if not hasattr(module, attr):
        public = [n for n in dir(module) if not n.startswith("_")]
        raise AttributeError(f"{target} has no {attr!r}; it defines: {', '.join(public)}")
    return getattr(module, attr)


def lookup(name: str) -> Any:
    """The registered object or the ``file.py:attr`` target for a ``reward.functions`` name."""
    ensure_loaded()
    if name in REWARDS:  # loads the built-ins first (the reward kind's home)
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
