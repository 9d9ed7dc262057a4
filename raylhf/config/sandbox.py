"""The ``sandbox:`` section: how model-written code runs (the ``code_tests`` reward, the agents' ``python`` tool,
``raylhf sandbox-run``). See docs/sandbox.md."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from raylhf.config.base import Section


class SandboxConfig(Section):
    isolation: Literal["bwrap", "none"] = Field(
        "bwrap", description="bwrap: bubblewrap namespaces (no network, private /work and /tmp, nothing of the host "
        "but /usr) plus rlimits; none: rlimits and a temporary directory only, NOT isolated (warns at every start)"
    )
    bwrap: str = Field("bwrap", description="the bubblewrap binary (a name on PATH or a path)")
    python: str = Field(
        "/usr/bin/python3", description="the interpreter programs run with; outside /usr its install prefix is "
        "mounted read-only (never one inside the checkout or $HOME)"
    )
    timeout_s: float = Field(10.0, gt=0, description="wall-clock limit of one run (seconds)")
    cpu_s: float | None = Field(None, gt=0, description="CPU-time limit per process (seconds); null: timeout_s")
    memory_mb: int = Field(512, ge=32, description="address-space limit per process (MiB)")
    max_processes: int = Field(32, ge=1, description="processes and threads the program may have at once")
    max_output_kb: int = Field(
        256, ge=1, description="stdout + stderr kept (KiB); a program writing more is killed (status output_limit)"
    )
    disk_mb: int = Field(64, ge=1, description="size of each of the sandbox's writable tmpfs mounts /work and /tmp")
    concurrency: int | None = Field(
        None, ge=1, description="sandboxes running at once in one process (the pool); null: the CPU count"
    )
    ro_paths: list[str] = Field(
        default_factory=list, description="more host paths mounted read-only at the same place (e.g. a directory "
        "of pure-Python packages the programs may import)"
    )
