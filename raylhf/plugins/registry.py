"""One registry type and one loader for every plugin kind (callbacks, losses, loss scales, metrics, optimizers,
tuners, agent templates, tools, ORMs/PRMs).

* :class:`Registry` maps a name to an object and remembers where each entry came from; registering a taken name
  with a different object is an error naming both sources; an unknown name lists the registered ones.
* :func:`load_plugin` imports a plugin file (``path/to/file.py``) or module (``package.module``): its decorators
  register entries as it runs, then its module-level tables with ms-swift's names are collected
  (``orms``, ``prms``, ``extra_callbacks``, ``loss_mapping``, ``loss_scale_map``, ``METRIC_MAPPING``,
  ``optimizers_map``, ``extra_tuners``, ``agent_templates``, ``tools``).
* :func:`activate` loads the run's plugins (``plugins`` / ``--plugins``) in the driver and records them in the
  ``RAYLHF_PLUGINS`` environment variable, which the actor groups pass to their actors; a registry lookup in an
  actor loads them there first (:func:`ensure_loaded`), so a plugin's entries exist wherever they are used.

User plugin files import from :mod:`raylhf.plugins`; this module is the machinery under it.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import os
import sys
import types
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Generic, TypeVar

T = TypeVar("T")
ENV = "RAYLHF_PLUGINS"

_loaded: dict[str, types.ModuleType] = {}  # normalized ref -> module


def source_of(obj: Any) -> str:
    """Where ``obj`` was defined, for messages: ``module.qualname`` (a plugin file's module name is its path)."""
    mod = getattr(obj, "__module__", None) or type(obj).__module__
    name = getattr(obj, "__qualname__", None) or type(obj).__qualname__
    m = sys.modules.get(mod)
    origin = getattr(m, "__raylhf_plugin_file__", None) if m is not None else None
    return f"{origin}:{name}" if origin else f"{mod}.{name}"


class Registry(Mapping[str, T], Generic[T]):
    """Name -> object for one plugin kind. ``field`` is the config field that selects an entry (for messages)."""

    def __init__(self, kind: str, field: str, check: Callable[[str, Any], None] | None = None) -> None:
        self.kind, self.field, self._check = kind, field, check
        self._entries: dict[str, T] = {}
        self._sources: dict[str, str] = {}

    # Mapping
    def __getitem__(self, name: str) -> T:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __setitem__(self, name: str, obj: T) -> None:  # ms-swift style: orms["name"] = MyORM
        self.register(name, obj)

    def register(self, name: str, obj: T, source: str | None = None) -> T:
        """Add ``name``; the same object again is a no-op, a different one is an error naming both sources."""
        name = str(name)
        source = source or source_of(obj)
        prev = self._entries.get(name)
        if prev is not None and prev is not obj:
            raise ValueError(f"{self.kind} {name!r} is registered twice: by {self._sources[name]} and by {source}; "
                             "rename one of them")
        if self._check is not None:
            self._check(name, obj)
        self._entries[name] = obj
        self._sources[name] = source
        return obj

    def decorator(self, name: str | None = None) -> Callable[[T], T]:
        """``@registry.decorator("name")`` (the object's ``__name__`` when no name is given)."""

        def deco(obj: T) -> T:
            return self.register(name or getattr(obj, "__name__", type(obj).__name__), obj)

        return deco

    def register_table(self, table: object, source: str, expected: str,
                       entry: Callable[[Any], T] | None = None) -> None:
        """A plugin module's dict table (``orms``, ``optimizers_map``, ...: name -> entry) into the registry.
        ``expected`` describes an entry for the error when the table is not a dict; ``entry`` turns a value into
        the registered object (e.g. an instance into its class) and may reject it."""
        if not isinstance(table, Mapping):
            raise TypeError(f"{source} must be a dict of name -> {expected}")
        for name, obj in table.items():
            self.register(str(name), entry(obj) if entry is not None else obj, source)

    def source(self, name: str) -> str:
        return self._sources[name]

    def get_entry(self, name: str) -> T:
        """The entry ``name``; plugins named by the run are loaded first; an unknown name lists the registered
        ones and says how to add one."""
        ensure_loaded()
        if name not in self._entries:
            known = ", ".join(sorted(self._entries)) or "(none)"
            raise KeyError(f"unknown {self.kind} {name!r} in {self.field}; registered: {known}. A plugin file "
                           "adds one: pass it with --plugins FILE (raylhf check-plugin FILE checks it first)")
        return self._entries[name]

    def unregister(self, name: str) -> None:
        """Remove ``name`` (tests)."""
        self._entries.pop(name, None)
        self._sources.pop(name, None)


def class_of(obj: Any) -> Any:
    """A class as itself, an instance as its class (tables of class-valued kinds may hold either)."""
    return obj if isinstance(obj, type) else type(obj)


# ------------------------------------------------------------------ module-level tables of a plugin file

# attribute of a plugin module -> "module:function" that registers its contents: function(value, source)
TABLES: dict[str, str] = {
    "orms": "rewards.registry:collect_table",
    "prms": "rewards.registry:collect_table",
    "extra_callbacks": "raylhf.driver.callbacks:collect_callbacks",
    "loss_mapping": "raylhf.algos.sft_losses:collect_losses",
    "LOSS_MAPPING": "raylhf.algos.sft_losses:collect_losses",
    "loss_scale_map": "raylhf.data.loss_scale:collect_loss_scales",
    "METRIC_MAPPING": "raylhf.algos.text_metrics:collect_metrics",
    "optimizers_map": "actors.optimizers:collect_optimizers",
    "extra_tuners": "actors.tuners:collect_tuners",
    "agent_templates": "raylhf.agent.templates:collect_templates",
    "tools": "raylhf.agent.tools:collect_tools",
}


# kind -> (registry "module:attr", interface check "module:function") for raylhf check-plugin; the check
# function takes (name, obj), runs the entry on a tiny synthetic input and returns what it saw (one line), or
# raises PluginCheckError naming the entry and the expected signature
KINDS: dict[str, tuple[str, str]] = {
    "reward": ("rewards.registry:REWARDS", "rewards.registry:check_plugin_entry"),
    "loss scale": ("raylhf.data.loss_scale:LOSS_SCALES", "raylhf.data.loss_scale:check_plugin_entry"),
    "loss": ("raylhf.algos.sft_losses:LOSS_FUNCS", "raylhf.algos.sft_losses:check_plugin_entry"),
    "callback": ("raylhf.driver.callbacks:CALLBACKS", "raylhf.driver.callbacks:check_plugin_entry"),
    "metric": ("raylhf.algos.text_metrics:METRICS", "raylhf.algos.text_metrics:check_plugin_entry"),
    "optimizer": ("actors.optimizers:OPTIMIZERS", "actors.optimizers:check_plugin_entry"),
    "tuner": ("actors.tuners:TUNERS", "actors.tuners:check_plugin_entry"),
    "agent template": ("raylhf.agent.templates:TEMPLATES", "raylhf.agent.templates:check_plugin_entry"),
    "tool": ("raylhf.agent.tools:TOOLS", "raylhf.agent.tools:check_plugin_entry"),
}


class PluginCheckError(ValueError):
    """An entry of a plugin file does not fit its interface; the message names the entry and the expected
    signature or return shape."""


def _collector(spec: str) -> Callable[[Any, str], None]:
    mod, fn = spec.split(":")
    return getattr(importlib.import_module(mod), fn)


def collect_tables(module: types.ModuleType, origin: str) -> dict[str, int]:
    """Register the entries of ``module``'s ms-swift-named tables; returns ``{table: entries}`` found."""
    found: dict[str, int] = {}
    for attr, spec in TABLES.items():
        if attr not in vars(module):
            continue
        value = vars(module)[attr]
        if isinstance(value, Registry):  # imported from raylhf.plugins and filled in place: registered already
            continue
        _collector(spec)(value, f"{origin} ({attr})")
        found[attr] = len(value) if hasattr(value, "__len__") else 1
    return found


# ------------------------------------------------------------------ importing plugin files

def _install_swift_shim() -> None:
    from rewards.registry import install_swift_shim

    install_swift_shim()


def normalize(ref: str) -> str:
    """A file ref as an absolute path (so actors started elsewhere find it), a module ref unchanged."""
    if ref.endswith(".py") or os.sep in ref:
        return str(Path(ref).expanduser().resolve())
    return ref


def import_target(target: str) -> types.ModuleType:
    """Import ``path/to/file.py`` (once per path) or ``package.module``. A missing file names itself."""
    _install_swift_shim()
    if target.endswith(".py"):
        path = Path(target).expanduser().resolve()
        if not path.is_file():
            raise FileNotFoundError(f"plugin file {target} does not exist")
        mod_name = f"raylhf_user_{path.stem}_{abs(hash(str(path)))}"
        if mod_name in sys.modules:
            return sys.modules[mod_name]
        spec = importlib.util.spec_from_file_location(mod_name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        module.__raylhf_plugin_file__ = str(path)  # type: ignore[attr-defined]
        sys.modules[mod_name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[mod_name]
            raise
        return module
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as e:
        if e.name and target.startswith(e.name):
            raise ModuleNotFoundError(f"plugin module {target!r} cannot be imported ({e}); give a file path "
                                      "ending in .py or a module on PYTHONPATH") from e
        raise


def load_plugin(ref: str) -> types.ModuleType:
    """Import one plugin file/module (its decorators register as it runs) and collect its tables (once)."""
    key = normalize(ref)
    if key in _loaded:
        return _loaded[key]
    module = import_target(key)
    collect_tables(module, ref)
    if getattr(sys.modules.get("swift"), "__raylhf_shim__", False):
        from rewards.registry import collect_swift_shim

        collect_swift_shim(ref)
    _loaded[key] = module
    return module


def forget(ref: str) -> None:
    """Drop a loaded plugin so the next :func:`load_plugin` runs its file again (tests that unregister its
    entries). Its entries stay registered: unregister them first."""
    key = normalize(ref)
    module = _loaded.pop(key, None)
    if module is not None and sys.modules.get(module.__name__) is module:
        del sys.modules[module.__name__]


def load_plugins(refs: Iterable[str]) -> list[types.ModuleType]:
    return [load_plugin(r) for r in refs]


def activate(refs: Iterable[str], replace: bool = False) -> list[str]:
    """Load ``refs`` here and record them in ``RAYLHF_PLUGINS`` for the actors started after this: added to
    the ones already active, or (``replace``: a run starting) instead of them."""
    refs = [normalize(r) for r in refs]
    load_plugins(refs)
    current = [] if replace else active()
    merged = current + [r for r in refs if r not in current]
    if merged:
        os.environ[ENV] = json.dumps(merged)
    else:
        os.environ.pop(ENV, None)
    return merged


def config_plugins(cfg: Any) -> list[str]:
    """The plugin refs a config names: ``plugins`` and ``reward.plugins``."""
    refs = list(getattr(cfg, "plugins", None) or [])
    reward = getattr(cfg, "reward", None)
    refs += [r for r in (getattr(reward, "plugins", None) or []) if r not in refs]
    return refs


def active() -> list[str]:
    """The plugin refs recorded by :func:`activate` (in this process or, for an actor, in the driver)."""
    raw = os.environ.get(ENV, "")
    if not raw:
        return []
    try:
        refs = json.loads(raw)
    except json.JSONDecodeError:
        refs = raw.split(os.pathsep)
    return [str(r) for r in refs if r]


def ensure_loaded() -> None:
    """Load the active plugins not loaded in this process yet (an actor's first registry lookup)."""
    for ref in active():
        if normalize(ref) not in _loaded:
            load_plugin(ref)


def actor_env() -> dict[str, str]:
    """Environment variables an actor needs to see the run's plugins (empty when none are active)."""
    return {ENV: os.environ[ENV]} if os.environ.get(ENV) else {}


def signature_names(fn: Any) -> list[str]:
    """Parameter names of ``fn`` (``self`` dropped), for interface checks."""
    return [p for p in inspect.signature(fn).parameters if p != "self"]
