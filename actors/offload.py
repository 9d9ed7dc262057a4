"""The policy's optimizer state out of the device while colocated engines generate (``rollout.placement=colocate``,
``raylhf/driver/colocate.py``): a mixin of the policy worker, on DeepSpeed's ``offload_states``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from actors.common import device


class OffloadStates:
    """Mixin of a worker with a DeepSpeed ``engine`` and ``record`` (``BaseWorker``)."""

    engine: Any
    record: Callable[..., None]  # BaseWorker's (annotation only: the worker's own method is used)

    def offload_states(self) -> None:
        """Move the optimizer's state (moments, ZeRO's fp32 master weights and gradient buffers) to host memory;
        the weights the engines are synced from stay. A no-op without CUDA (everything is in host memory)."""
        if getattr(self, "_offloaded", False):
            return
        if torch.cuda.is_available():
            move_optimizer_states(self.engine, to_host=True)
            torch.cuda.empty_cache()
        self._offloaded = True
        self.record("offload_states")

    def reload_states(self) -> None:
        """Bring back what :meth:`offload_states` moved, before the next update or log-prob pass."""
        if not getattr(self, "_offloaded", False):
            return
        if torch.cuda.is_available():
            move_optimizer_states(self.engine, to_host=False)
        self._offloaded = False
        self.record("reload_states")


def move_optimizer_states(engine: Any, to_host: bool) -> None:
    """DeepSpeed's ``offload_states`` / ``reload_states`` for ZeRO 1-3 (optimizer states, fp32 master weights,
    gradient buffers; never the bf16 weights), else the torch optimizer's state tensors moved by hand."""
    from deepspeed.runtime.zero.offload_config import OffloadDeviceEnum, OffloadStateTypeEnum

    opt = engine.optimizer
    if hasattr(opt, "offload_states"):
        if to_host:
            keep = (OffloadStateTypeEnum.optim_states, OffloadStateTypeEnum.hp_params,
                    OffloadStateTypeEnum.lp_grads, OffloadStateTypeEnum.contiguous_grad_buffer)
            engine.offload_states(include=keep, device=OffloadDeviceEnum.cpu)
        else:
            engine.reload_states()
        return
    inner = getattr(opt, "optimizer", opt)  # ZeRO-0: DeepSpeed's wrapper (if any) around the torch optimizer
    target = torch.device("cpu") if to_host else device()
    for state in inner.state.values():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                state[key] = value.to(target, non_blocking=True)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
