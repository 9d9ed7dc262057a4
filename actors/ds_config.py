"""The policy rank's DeepSpeed config, and how its model is built for it.

* ``deepspeed_config``: the config dict, built before the model (ZeRO-3 needs it to build the model).
* ``zero3_model_config``: under ZeRO-3, transformers' ``HfDeepSpeedConfig`` for that dict. While the returned
  object lives, ``from_pretrained`` builds the model inside ``deepspeed.zero.Init``: each rank allocates only its
  partition of every parameter and the checkpoint is loaded tensor by tensor into the partitions, instead of every
  rank holding a full copy until ``deepspeed.initialize`` partitions it.
* ``load_dtype``: bf16 when DeepSpeed's bf16 is on (the engine casts the module to bf16 and its optimizer keeps
  fp32 master copies made from those bf16 weights, so an fp32 load only costs memory), fp32 otherwise (the CPU).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch


def deepspeed_config(cfg: Mapping[str, Any], world_size: int, bf16: bool) -> dict[str, Any]:
    """The ``deepspeed.initialize`` config of a rank of ``cfg`` (a ``PolicyConfig`` dump)."""
    micro = int(cfg.get("micro_batch_size", 8))
    return {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": 1,
        "train_batch_size": micro * world_size,
        "gradient_clipping": float(cfg.get("grad_clip", 1.0)),
        "zero_optimization": {"stage": int(cfg.get("zero_stage", 0))},
        "bf16": {"enabled": bool(bf16)},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def zero3_model_config(ds_config: dict[str, Any]) -> Any:
    """``HfDeepSpeedConfig(ds_config)`` under ZeRO-3 (keep a reference while models are built), else None.

    transformers holds it through a weak reference: once the caller drops it, ``from_pretrained`` builds full
    models again."""
    if int(ds_config["zero_optimization"]["stage"]) != 3:
        return None
    from transformers.integrations import HfDeepSpeedConfig

    return HfDeepSpeedConfig(ds_config)


def load_dtype(bf16: bool) -> torch.dtype:
    """The dtype the trained model is loaded in (see the module docstring)."""
    return torch.bfloat16 if bf16 else torch.float32
