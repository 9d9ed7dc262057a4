"""pytest plugin for the GPU check machine, which has no ray: installs ``gpu_policy_step``'s ray stub (see
there) before the tests import ``actors.*``, so the worker-level tests run on CUDA without a Ray cluster. It also
reports which tests allocated GPU memory (the CUDA allocator's peak grew while they ran), so a pass on the GPU
machine is not mistaken for a GPU run of tests that stayed on the CPU.

    PYTHONPATH=benchmarks:. python3 -m pytest -p gpu_pytest_plugin tests/test_packing.py ...   # benchmarks/gpu_tests.sh
"""

from __future__ import annotations

from typing import Any

from gpu_policy_step import ensure_ray

RAY = ensure_ray(force_stub=False)
ON_GPU: list[str] = []
_peak = {"before": 0}


def _cuda() -> Any:
    import torch

    return torch.cuda if torch.cuda.is_available() else None


def pytest_report_header() -> str:
    return f"ray: {RAY} (benchmarks/gpu_pytest_plugin.py)"


def pytest_runtest_setup(item: Any) -> None:
    cuda = _cuda()
    if cuda is not None:
        cuda.reset_peak_memory_stats()
        _peak["before"] = cuda.memory_allocated()


def pytest_runtest_teardown(item: Any) -> None:
    cuda = _cuda()
    if cuda is not None and cuda.max_memory_allocated() > _peak["before"]:
        ON_GPU.append(item.nodeid)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    cuda = _cuda()
    if cuda is None:
        terminalreporter.write_line("gpu: CUDA is not available; every test ran on the CPU")
        return
    terminalreporter.write_line(f"gpu: {len(ON_GPU)} tests allocated CUDA memory ({cuda.get_device_name()}):")
    for nodeid in ON_GPU:
        terminalreporter.write_line(f"  {nodeid}")
