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
