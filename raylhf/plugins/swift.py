"""The stand-in for ms-swift's plugin modules: plugin files written for ``swift.plugin`` load unchanged.

When ms-swift is not installed, :func:`install_shim` provides ``swift.plugin`` (``ORM``, ``PRM``, ``AsyncORM``,
``orms``, ``prms``; ``Env``, ``envs`` also as ``swift.plugin.env``; ``MultiTurnScheduler``, ``multi_turns`` also as
``swift.plugin.multi_turn``), ``swift.llm`` (``InferRequest``, ``RolloutInferRequest``; the response types also as
``swift.llm.infer.protocol``) and ``swift.utils`` (``get_logger``) in ``sys.modules``; :func:`collect_shim` moves
what a plugin file put into the stand-in dicts into raylhf's registries. The classes come from each kind's home
module (``rewards``, ``raylhf.agent.env``, ``raylhf.agent.scheduler``). See docs/architecture.md.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import types
from typing import Any


def install_shim(rewards_home: Any, env_home: Any, scheduler_home: Any) -> None:
    """Provide ``swift.plugin`` / ``swift.llm`` / ``swift.utils`` names when ms-swift is not installed;
    ``rewards_home`` is the module with the ORM / PRM / AsyncORM / InferRequest classes, ``env_home`` the one with
    ``Env`` / ``RolloutInferRequest``, ``scheduler_home`` the one with ``MultiTurnScheduler`` and its response
    types."""
    if "swift" in sys.modules or importlib.util.find_spec("swift") is not None:
        return
    plugin = types.ModuleType("swift.plugin")
    plugin.ORM, plugin.PRM = rewards_home.ORM, rewards_home.PRM  # type: ignore[attr-defined]
    plugin.AsyncORM = rewards_home.AsyncORM  # type: ignore[attr-defined]
    plugin.orms, plugin.prms = {}, {}  # type: ignore[attr-defined]
    plugin.Env, plugin.envs = env_home.Env, {}  # type: ignore[attr-defined]
    plugin.MultiTurnScheduler, plugin.multi_turns = scheduler_home.MultiTurnScheduler, {}  # type: ignore[attr-defined]
    llm = types.ModuleType("swift.llm")
    llm.InferRequest = rewards_home.InferRequest  # type: ignore[attr-defined]
    llm.RolloutInferRequest = env_home.RolloutInferRequest  # type: ignore[attr-defined]
    protocol = types.ModuleType("swift.llm.infer.protocol")
    for name in ("ChatCompletionResponseChoice", "ChatMessage"):
        setattr(protocol, name, getattr(scheduler_home, name))
        setattr(llm, name, getattr(scheduler_home, name))
    protocol.RolloutInferRequest = env_home.RolloutInferRequest  # type: ignore[attr-defined]
    utils = types.ModuleType("swift.utils")
    utils.get_logger = lambda *a, **k: logging.getLogger("swift")  # type: ignore[attr-defined]
    root = types.ModuleType("swift")
    root.__raylhf_shim__ = True  # type: ignore[attr-defined]
    root.__path__ = []  # a package, so submodule imports resolve through sys.modules
    root.plugin, root.llm, root.utils = plugin, llm, utils  # type: ignore[attr-defined]
    sys.modules.update({"swift": root, "swift.plugin": plugin, "swift.plugin.orm": plugin,
                        "swift.plugin.prm": plugin, "swift.plugin.env": plugin, "swift.plugin.multi_turn": plugin,
                        "swift.llm": llm, "swift.llm.infer": protocol, "swift.llm.infer.protocol": protocol,
                        "swift.utils": utils, "swift.rewards": plugin})


def collect_shim(origin: str, registries: dict[str, Any]) -> None:
    """Entries a plugin file added to the stand-in ``swift.plugin`` dicts (``orms``, ``prms``, ``envs``,
    ``multi_turns``), into ``registries`` (dict name -> its registry); nothing when the real ms-swift is
    installed."""
    if not getattr(sys.modules.get("swift"), "__raylhf_shim__", False):
        return
    shim = sys.modules.get("swift.plugin")
    if shim is None:
        return
    for attr, registry in registries.items():
        table = getattr(shim, attr, None) or {}
        for name, obj in list(table.items()):
            registry.register(str(name), obj if attr in ("orms", "prms") or isinstance(obj, type) else type(obj),
                              f"{origin} (swift.plugin.{attr})")
