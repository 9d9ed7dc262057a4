"""The stand-in for ms-swift's plugin modules: plugin files written for ``swift.plugin`` load unchanged.

When ms-swift is not installed, :func:`install_shim` provides ``swift.plugin`` (``ORM``, ``PRM``, ``AsyncORM``,
``orms``, ``prms``), ``swift.llm`` (``InferRequest``) and ``swift.utils`` (``get_logger``) in ``sys.modules``;
:func:`collect_shim` moves what a plugin file put into the stand-in ``orms`` / ``prms`` dicts into the reward
registry. The classes come from the reward kind's home module (``rewards``). See docs/architecture.md.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import types
from typing import Any


def install_shim(rewards_home: Any) -> None:
    """Provide ``swift.plugin`` / ``swift.llm`` / ``swift.utils`` names when ms-swift is not installed;
    ``rewards_home`` is the module with the ORM / PRM / AsyncORM / InferRequest classes."""
    if "swift" in sys.modules or importlib.util.find_spec("swift") is not None:
        return
    plugin = types.ModuleType("swift.plugin")
    plugin.ORM, plugin.PRM = rewards_home.ORM, rewards_home.PRM  # type: ignore[attr-defined]
    plugin.AsyncORM = rewards_home.AsyncORM  # type: ignore[attr-defined]
    plugin.orms, plugin.prms = {}, {}  # type: ignore[attr-defined]
    llm = types.ModuleType("swift.llm")
    llm.InferRequest = rewards_home.InferRequest  # type: ignore[attr-defined]
    utils = types.ModuleType("swift.utils")
    utils.get_logger = lambda *a, **k: logging.getLogger("swift")  # type: ignore[attr-defined]
    root = types.ModuleType("swift")
    root.__raylhf_shim__ = True  # type: ignore[attr-defined]
    root.__path__ = []  # a package, so submodule imports resolve through sys.modules
    root.plugin, root.llm, root.utils = plugin, llm, utils  # type: ignore[attr-defined]
    sys.modules.update({"swift": root, "swift.plugin": plugin, "swift.plugin.orm": plugin,
                        "swift.plugin.prm": plugin, "swift.llm": llm, "swift.utils": utils,
                        "swift.rewards": plugin})


def collect_shim(origin: str, rewards: Any) -> None:
    """Entries a plugin file added to the stand-in ``swift.plugin.orms`` / ``prms`` dicts, into ``rewards`` (the
    reward registry); nothing when the real ms-swift is installed."""
    if not getattr(sys.modules.get("swift"), "__raylhf_shim__", False):
        return
    shim = sys.modules.get("swift.plugin")
    if shim is None:
        return
    for attr in ("orms", "prms"):
        for name, obj in getattr(shim, attr).items():
            rewards.register(str(name), obj, f"{origin} (swift.plugin.{attr})")
