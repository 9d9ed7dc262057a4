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
====================  =====================================================  ==================================

Names are resolved lazily (importing this module does not import torch).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    # rewards (ORM / PRM)
    "ORM": "rewards.base", "PRM": "rewards.base", "AsyncORM": "rewards.base", "InferRequest": "rewards.base",
    "register_orm": "rewards.registry", "register_prm": "rewards.registry", "register_reward": "rewards.registry",
    "orms": "rewards.registry:REWARDS", "prms": "rewards.registry:REWARDS",
    # loss scale
    "LossScale": "raylhf.data.loss_scale", "ContextType": "raylhf.data.loss_scale", "register_loss_scale": "raylhf.data.loss_scale",
    "loss_scale_map": "raylhf.data.loss_scale:LOSS_SCALES",
    # loss
    "register_loss_func": "raylhf.algos.sft_losses", "loss_mapping": "raylhf.algos.sft_losses:LOSS_FUNCS",
    # callbacks
    "TrainerCallback": "raylhf.driver.callbacks", "TrainerControl": "raylhf.driver.callbacks", "TrainerState": "raylhf.driver.callbacks",
    "TrainingArguments": "raylhf.driver.callbacks", "EarlyStoppingCallback": "raylhf.driver.callbacks",
    "register_callback": "raylhf.driver.callbacks", "extra_callbacks": "raylhf.driver.callbacks",
    # metrics
    "EvalPrediction": "raylhf.algos.text_metrics", "register_metric": "raylhf.algos.text_metrics",
    "METRIC_MAPPING": "raylhf.algos.text_metrics:METRICS",
    # optimizers
    "register_optimizer": "actors.optimizers", "optimizers_map": "actors.optimizers:OPTIMIZERS",
    # tuners
    "Tuner": "actors.tuners", "register_tuner": "actors.tuners", "extra_tuners": "actors.tuners:TUNERS",
    # agent templates and tools
    "AgentTemplate": "raylhf.agent.templates", "ToolCall": "raylhf.agent.templates",
    "BaseAgentTemplate": "raylhf.agent.templates:AgentTemplate", "Function": "raylhf.agent.templates",
    "register_agent_template": "raylhf.agent.templates", "agent_templates": "raylhf.agent.templates:TEMPLATES",
    "register_tool": "raylhf.agent.tools", "tools": "raylhf.agent.tools:TOOLS",
    # machinery
    "Registry": "raylhf.plugins.registry", "PluginCheckError": "raylhf.plugins.registry", "load_plugin": "raylhf.plugins.registry",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    spec = _EXPORTS.get(name)
    if spec is None:
        raise AttributeError(f"raylhf.plugins has no {name!r}; it provides: {', '.join(__all__)}")
    module, _, attr = spec.partition(":")
    value = getattr(importlib.import_module(module), attr or name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
