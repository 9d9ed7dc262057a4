"""``sandbox.isolation: none``: the explicit opt-out. The program runs with the rlimits, an empty environment and
a fresh temporary directory, but in the host's namespaces: it can read what the service's user can read and reach
the network. :func:`raylhf.rewards.sandbox.runner.warn_unisolated` warns at every start."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

from rewards.sandbox.spec import SandboxSpec


def unisolated_argv(argv: list[str], files: Mapping[str, str | bytes], readonly: Mapping[str, str | bytes],
                    spec: SandboxSpec) -> tuple[list[str], str]:
    """The argv that runs ``argv`` in a new temporary directory holding ``files`` (and ``readonly`` files at
    ``<dir>/.ro/<path>``, argv entries naming them rewritten), and that directory (the caller removes it)."""
    work = tempfile.mkdtemp(prefix="raylhf-unsandboxed-")
    os.chmod(work, 0o777)  # the run's uid (root: an unprivileged one) writes here
    for name, body in files.items():
        Path(work, name).parent.mkdir(parents=True, exist_ok=True)
        Path(work, name).write_bytes(body.encode() if isinstance(body, str) else body)
    moved = {}
    for dest, body in readonly.items():
        target = Path(work, ".ro", dest.lstrip("/"))
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(body.encode() if isinstance(body, str) else body)
        moved[dest] = str(target)
    argv = [moved.get(a, a) for a in argv]
    env = f"PATH=/usr/bin:/bin HOME={work} LANG=C.UTF-8 PYTHONHASHSEED=0 PYTHONDONTWRITEBYTECODE=1"
    return ["/bin/sh", "-c", f'cd "$0" && exec env -i {env} "$@"', work, *argv], work
