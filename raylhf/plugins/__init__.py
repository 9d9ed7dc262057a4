"""Everything a plugin file imports, from one module.

A plugin file is plain Python that registers entries of one or more kinds; pass it with ``--plugins FILE``
(repeatable, also dotted module paths) or ``plugins: [FILE]`` in a config, and check it first with
``raylhf check-plugin FILE``. Moving an ms-swift plugin file over means changing its import lines to
``from raylhf.plugins import ...``: the names and shapes are ms-swift's.

====================  =====================================================  ==================================
kind                  register with                                          select with
====================  =====================================================  ==================================
ORM / PRM (rewards)   ``@register_orm("n")``, ``orms["n"] = Cls``, ``orms``   ``reward.functions: [n]``
callback              ``extra_callbacks = [...]``, ``@register_callback``    always on / ``callbacks: [n]``
loss (SFT)            ``@register_loss_func("n")``, ``loss_mapping``          ``sft.loss: n``
loss_scale            ``@register_loss_scale("n")``, ``loss_scale_map``       ``sft.loss_scale: n``
metric                ``METRIC_MAPPING = {"n": (compute, preprocess)}``      ``sft.metrics: [n]``
optimizer             ``optimizers_map = {"n": factory}``                    ``policy.optimizer: n``
tuner                 ``extra_tuners = {"n": TunerCls}``, ``@register_tuner``  ``policy.tuner.type: n``
agent template        ``agent_templates = {"n": TemplateCls}``               ``agent.template: n``
tool                  ``tools = {"n": fn}``, ``@register_tool("n")``          ``agent.tools: [n]``
env                   ``envs = {"n": EnvCls}``, ``@register_env("n")``        ``agent.env: n``
multi-turn scheduler  ``multi_turns = {"n": Cls}``, ``@register_multi_turn``  ``agent.scheduler: n``
====================  =====================================================  ==================================

The registries are those of the one table of plugin kinds (``raylhf/plugins/registry.py``); each kind's
interfaces and decorators come from its home module (the module that ships its built-ins), loaded on first
use, so importing this module does not import torch. See docs/architecture.md.
"""

from __future__ import annotations

from typing import Any

from raylhf.plugins.callbacks import (
    EarlyStoppingCallback,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
    extra_callbacks,
    register_callback,
)
from raylhf.plugins.registry import (
    ENVS,
    KINDS,
    LOSS_FUNCS,
    LOSS_SCALES,
    METRICS,
    OPTIMIZERS,
    REWARDS,
    SCHEDULERS,
    TEMPLATES,
    TOOLS,
    TUNERS,
    PluginCheckError,
    Registry,
    load_plugin,
)

# ms-swift's registry names: a plugin file may fill them in place (``orms["n"] = MyORM``)
orms = prms = REWARDS
loss_scale_map = LOSS_SCALES
loss_mapping = LOSS_FUNCS
METRIC_MAPPING = METRICS
optimizers_map = OPTIMIZERS
extra_tuners = TUNERS
agent_templates = TEMPLATES
tools = TOOLS
envs = ENVS
multi_turns = SCHEDULERS

# interfaces and decorators, each from its kind's home module (ms-swift's older alias on the right)
_FROM_HOME: dict[str, tuple[str, str]] = {
    name: (kind.name, name) for kind in KINDS.values() for name in kind.exports}
_FROM_HOME["BaseAgentTemplate"] = ("agent template", "AgentTemplate")

__all__ = ["METRIC_MAPPING", "EarlyStoppingCallback", "PluginCheckError", "Registry", "TrainerCallback",
           "TrainerControl", "TrainerState", "TrainingArguments", "agent_templates", "envs", "extra_callbacks",
           "extra_tuners", "load_plugin", "loss_mapping", "loss_scale_map", "multi_turns", "optimizers_map", "orms",
           "prms", "register_callback", "tools"]
__all__ += sorted(_FROM_HOME)


def __getattr__(name: str) -> Any:
    where = _FROM_HOME.get(name)
    if where is None:
        raise AttributeError(f"raylhf.plugins has no {name!r}; it provides: {', '.join(__all__)}")
    kind, attr = where
    value = getattr(KINDS[kind].registry.load_home(), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
