"""Shared by the end-to-end modules: one local 4-CPU Ray cluster per module that asks for it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import ray

from raylhf.config.run import RayConfig
from raylhf.driver.cluster import init_ray


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray.shutdown()
    init_ray(RayConfig(num_cpus=4), 4)
    yield
    ray.shutdown()
