"""raylhf's vLLM weight-transfer engine (backend ``raylhf``), living in each vLLM worker process.

vLLM's own transfer engines (``nccl``, ``ipc``) are CUDA-only. This one works wherever torch does: the policy's
sending rank and every engine worker form one gloo process group of their own (a ``TCPStore`` + ``ProcessGroupGloo``
outside torch.distributed's default group, which vLLM uses); weights travel as byte buckets:

    header  int64[1]          bytes of the bucket's manifest (0: the end)
    meta    uint8[header]     pickled [(name, dtype, shape, offset, nbytes), ...]
    data    uint8[sum bytes]  the tensors' bytes, back to back

and are loaded through vLLM's layerwise reload (``start_weight_update`` / ``finish_weight_update``), which repacks
CPU weights as a fresh load would; what some families need beyond that (CPU MoE experts, gpt-oss, DeepSeek's expert
names) is in ``actors/vllm_families.py``. The ``files`` transport reads safetensors files instead (the object-store
fallback: the rollout actor writes the buckets it got from the object store into /dev/shm). Every gloo collective
has the group's timeout: a dead sender ends the receive with gloo's connection error, a silent one with its timeout.

vLLM creates the engine from ``weight_transfer_config={"backend": "raylhf"}``; the registration below runs when
vLLM imports this module as the engine's ``worker_extension_cls`` (``RaylhfWorkerExtension``) in every worker
process (engine core, TP workers), which is where the factory looks it up. The extension's ``raylhf_received``
returns what the last update received: ``{name: (dtype, shape, checksum)}`` (``raylhf.core.weights``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vllm.distributed.weight_transfer.base import (
    WeightTransferEngine,
    WeightTransferInitInfo,
    WeightTransferUpdateInfo,
)
from vllm.distributed.weight_transfer.factory import WeightTransferEngineFactory

from actors.vllm_families import family_sync
from actors.weight_wire import join_group, receive_buckets
from raylhf.core.weights import tensor_entry

BACKEND = "raylhf"


@dataclass
class RaylhfInitInfo(WeightTransferInitInfo):
    host: str
    port: int
    rank_offset: int  # this engine's first rank in the group; its TP workers take the ranks after it
    world_size: int
    timeout_s: float = 300.0


@dataclass
class RaylhfUpdateInfo(WeightTransferUpdateInfo):
    transport: str = "gloo"  # gloo | files
    files: list[str] = field(default_factory=list)


class RaylhfTransferEngine(WeightTransferEngine[RaylhfInitInfo, RaylhfUpdateInfo]):
    init_info_cls = RaylhfInitInfo
    update_info_cls = RaylhfUpdateInfo
    supports_draft_weight_update = False

    def init_transfer_engine(self, init_info: RaylhfInitInfo) -> None:
        self.shutdown()
        from vllm.distributed import get_tensor_model_parallel_rank

        rank = init_info.rank_offset + get_tensor_model_parallel_rank()
        self.pg = join_group(init_info.host, init_info.port, rank, init_info.world_size, init_info.timeout_s)

    def start_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

        self.received: dict[str, tuple[str, tuple[int, ...], int]] = {}
        self.family = family_sync(self.model, self.model_config)  # per-family fixes (actors/vllm_families.py)
        initialize_layerwise_reload(self.model)
        self.family.start()

    def finish_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

        finalize_layerwise_reload(self.model, self.model_config)
        family = getattr(self, "family", None)
        if family is not None:
            family.finish()

    def update_weights(self, update_info: dict[str, Any]) -> None:
        self.receive_weights(self.parse_update_info(update_info))

    def receive_weights(self, update_info: RaylhfUpdateInfo) -> None:
        if update_info.transport == "gloo":
            if getattr(self, "pg", None) is None:
                raise RuntimeError("the raylhf weight-transfer group was never initialised on this engine "
                                   "(init_weight_transfer_engine)")
            buckets: Any = receive_buckets(self.pg)
        elif update_info.transport == "files":
            from safetensors.torch import load_file

            buckets = (list(load_file(path).items()) for path in update_info.files)
        else:
            raise ValueError(f"unknown raylhf weight transport {update_info.transport!r} (gloo or files)")
        received = getattr(self, "received", None)
        if received is None:
            received = self.received = {}
        family = getattr(self, "family", None) or family_sync(self.model, self.model_config)
        for items in buckets:
            for name, t in items:
                received[name] = tensor_entry(t)  # under the names sent (the driver checks them against the policy's)
            self.model.load_weights(family.weights(items))

    def shutdown(self) -> None:
        pg = getattr(self, "pg", None)
        self.pg = None
        if pg is not None:
            del pg


class RaylhfWorkerExtension:
    """Mixed into vLLM's worker class (``worker_extension_cls``): importing this module registers the engine."""

    def raylhf_received(self) -> dict[str, tuple[str, tuple[int, ...], int]]:
        engine = getattr(self, "weight_transfer_engine", None)
        return dict(getattr(engine, "received", None) or {})


if BACKEND not in WeightTransferEngineFactory._registry:
    WeightTransferEngineFactory.register_engine(BACKEND, RaylhfTransferEngine)
