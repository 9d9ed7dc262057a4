"""The plugin layer's machinery: one registry type, THE table of plugin kinds, and the loader of plugin files.

* :class:`Registry` maps a name to an object and remembers where each entry came from; registering a taken name
  with a different object is an error naming both sources; an unknown name lists the registered ones.
* :data:`KINDS` is the one table of plugin kinds: each kind's registry, the config field that selects an entry,
  the module-level tables with ms-swift's names a plugin file may define (``orms``, ``optimizers_map``, ...),
  the names users' files import from :mod:`raylhf.plugins`, and its *home*: the module that ships the kind's
  built-in entries, its table collector and its interface check. A home is loaded like a plugin module, on the
  registry's first use, so that the pure layers (config, data, algos) never import actors or rewards.
* :func:`load_plugin` imports a plugin file (``path/to/file.py``) or module (``package.module``): its decorators
  register entries as it runs, then its tables are collected; files written for ms-swift's ``swift.plugin`` load
  through the stand-in of ``raylhf/plugins/swift.py``.
* :func:`activate` loads the run's plugins in the driver and records them in ``RAYLHF_PLUGINS``, which the actor
  groups pass to their actors; a registry lookup in an actor loads them there first (:func:`ensure_loaded`).

User plugin files import from :mod:`raylhf.plugins`; this module is the machinery under it. See
docs/architecture.md.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from raylhf.plugins import swift

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

    def __init__(self, kind: str, field: str, check: Callable[[str, Any], None] | None = None,
                 home: str | None = None) -> None:
        self.kind, self.field, self._check, self.home = kind, field, check, home
        self._entries: dict[str, T] = {}
        self._sources: dict[str, str] = {}
        # set by the home module: a plugin table's collector and the interface check of `raylhf check-plugin`
        self.collector: Callable[[Any, str], None] | None = None
        self.interface_check: Callable[[str, Any], str] | None = None

    def load_home(self) -> types.ModuleType | None:
        """Import the module that ships this kind's built-ins (once; a home importing itself is a no-op)."""
        if self.home is None:
            return None
        return sys.modules.get(self.home) or importlib.import_module(self.home)

    def attach(self, check: Callable[[str, Any], None] | None = None,
               collector: Callable[[Any, str], None] | None = None,
               interface_check: Callable[[str, Any], str] | None = None) -> None:
        """The home module's registration check, table collector and interface check (entries registered before
        the home was loaded are checked now)."""
        if check is not None:
            self._check = check
            for name, obj in self._entries.items():
                check(name, obj)
        self.collector = collector or self.collector
        self.interface_check = interface_check or self.interface_check

    def collect(self, table: Any, source: str) -> None:
        """A plugin module's ms-swift-named table of this kind into the registry."""
        self.load_home()
        if self.collector is None:
            raise TypeError(f"{self.kind} tables cannot be collected: its home {self.home} sets no collector")
        self.collector(table, source)

    # Mapping
    def __getitem__(self, name: str) -> T:
        self.load_home()
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        self.load_home()
        return iter(self._entries)

    def __len__(self) -> int:
        self.load_home()
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        self.load_home()
        return name in self._entries

    def __setitem__(self, name: str, obj: T) -> None:  # ms-swift style: orms["name"] = MyORM
        self.register(name, obj)

    def register(self, name: str, obj: T, source: str | None = None) -> T:
        """Add ``name``; the same object again is a no-op, a different one is an error naming both sources."""
        name = str(name)
        source = source or source_of(obj)
        self.load_home()
        prev = self._entries.get(name)
        if prev is obj:
            return obj  # the same entry again (a stand-in table collected once more): its first source stays
        if prev is not None:
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
        self.load_home()
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


# ------------------------------------------------------------------ THE table of plugin kinds

REWARDS: Registry[Any] = Registry("reward", "reward.functions", home="rewards.registry")  # function or ORM/PRM
LOSS_SCALES: Registry[Any] = Registry("loss scale", "sft.loss_scale", home="raylhf.data.loss_scale")
LOSS_FUNCS: Registry[Any] = Registry("loss", "sft.loss", home="raylhf.algos.sft_losses")
CALLBACKS: Registry[Any] = Registry("callback", "callbacks", home="raylhf.plugins.callback_handler")
METRICS: Registry[Any] = Registry("metric", "sft.metrics", home="raylhf.algos.text_metrics")
OPTIMIZERS: Registry[Any] = Registry("optimizer", "policy.optimizer", home="actors.optimizers")
TUNERS: Registry[Any] = Registry("tuner", "policy.tuner.type", home="actors.tuners")
TEMPLATES: Registry[Any] = Registry("agent template", "agent.template", home="raylhf.agent.templates")
TOOLS: Registry[Any] = Registry("tool", "agent.tools", home="raylhf.agent.tools")
ENVS: Registry[Any] = Registry("env", "agent.env", home="raylhf.agent.env")
SCHEDULERS: Registry[Any] = Registry("multi-turn scheduler", "agent.scheduler", home="raylhf.agent.scheduler")


@dataclass(frozen=True)
class Kind:
    """One plugin kind: its registry (whose ``home`` ships the built-ins), the ms-swift-named module-level
    ``tables`` a plugin file may define, and the names ``exports`` that :mod:`raylhf.plugins` takes from the
    home for users' files (interfaces and decorators)."""

    name: str
    registry: Registry[Any]
    tables: tuple[str, ...]
    exports: tuple[str, ...] = ()


KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("reward", REWARDS, ("orms", "prms"),
         ("ORM", "PRM", "AsyncORM", "InferRequest", "register_orm", "register_prm", "register_reward")),
    Kind("loss scale", LOSS_SCALES, ("loss_scale_map",), ("LossScale", "ContextType", "register_loss_scale")),
    Kind("loss", LOSS_FUNCS, ("loss_mapping", "LOSS_MAPPING"), ("register_loss_func",)),
    Kind("callback", CALLBACKS, ("extra_callbacks",)),  # its interface is raylhf/plugins/callbacks.py
    Kind("metric", METRICS, ("METRIC_MAPPING",), ("EvalPrediction", "register_metric")),
    Kind("optimizer", OPTIMIZERS, ("optimizers_map",), ("register_optimizer",)),
    Kind("tuner", TUNERS, ("extra_tuners",), ("Tuner", "register_tuner")),
    Kind("agent template", TEMPLATES, ("agent_templates",),
         ("AgentTemplate", "ToolCall", "Function", "register_agent_template")),
    Kind("tool", TOOLS, ("tools",), ("register_tool",)),
    Kind("env", ENVS, ("envs",), ("Env", "RolloutInferRequest", "register_env")),
    Kind("multi-turn scheduler", SCHEDULERS, ("multi_turns",),
         ("MultiTurnScheduler", "ChatCompletionResponseChoice", "ChatMessage", "register_multi_turn")),
)}
TABLES: dict[str, Kind] = {table: kind for kind in KINDS.values() for table in kind.tables}


class PluginCheckError(ValueError):
    """An entry of a plugin file does not fit its interface; the message names the entry and the expected
    signature or return shape."""


def collect_tables(module: types.ModuleType, origin: str) -> dict[str, int]:
    """Register the entries of ``module``'s ms-swift-named tables; returns ``{table: entries}`` found."""
    found: dict[str, int] = {}
    for attr, kind in TABLES.items():
        if attr not in vars(module):
            continue
        value = vars(module)[attr]
        if isinstance(value, Registry):
            continue  # imported from raylhf.plugins and filled in place: registered already
        kind.registry.collect(value, f"{origin} ({attr})")
        found[attr] = len(value) if hasattr(value, "__len__") else 1
    return found


# ------------------------------------------------------------------ importing plugin files

def normalize(ref: str) -> str:
    """A file ref as an absolute path (so actors started elsewhere find it), a module ref unchanged."""
    if ref.endswith(".py") or os.sep in ref:
        return str(Path(ref).expanduser().resolve())
    return ref


def import_target(target: str) -> types.ModuleType:
    """Import ``path/to/file.py`` (once per path) or ``package.module``. A missing file names itself."""
    swift.install_shim(REWARDS.load_home(), ENVS.load_home(), SCHEDULERS.load_home())
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
    swift.collect_shim(ref, {"orms": REWARDS, "prms": REWARDS, "envs": ENVS, "multi_turns": SCHEDULERS})
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
