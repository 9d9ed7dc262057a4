"""Shared fixtures: tiny models written once per session, no downloads."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from raylhf.assets import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama")


# ---- exit -----------------------------------------------------------------------------------------------------
# Once every test has run and pytest has reported, the process leaves with os._exit(status) instead of a normal
# interpreter teardown. A fresh-clone `make test` once printed "1271 passed" and then died with SIGSEGV while the
# interpreter tore down the C extensions this session loads (Ray's gRPC threads, torch/OpenMP pools, vLLM), which
# turned a green run into a failed one. The status is pytest's own, so a failing test still fails the run.
# RAYLHF_TEST_HARD_EXIT=0 restores the normal exit (to look for that crash).
_EXIT_STATUS: list[int] = []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _EXIT_STATUS.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    if not _EXIT_STATUS or os.environ.get("RAYLHF_TEST_HARD_EXIT", "1") == "0":
        return
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(_EXIT_STATUS[-1])
