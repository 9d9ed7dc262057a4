"""What a sandboxed run is given and what it returns: the limits (:class:`SandboxSpec`, built from the ``sandbox:``
config section), the languages, and :class:`RunResult` (the JSON line of ``raylhf sandbox-run``)."""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

STATUSES = ("ok", "error", "timeout", "memory", "output_limit", "killed")
_CHECKOUT = Path(__file__).resolve().parents[2]


class SandboxUnavailable(RuntimeError):
    """The sandbox cannot run here (bubblewrap missing, namespaces refused, a bad interpreter path)."""


@dataclass(frozen=True)
class SandboxSpec:
    isolation: str = "bwrap"
    bwrap: str = "bwrap"
    python: str = "/usr/bin/python3"
    timeout_s: float = 10.0
    cpu_s: float | None = None
    memory_mb: int = 512
    max_processes: int = 32
    max_output_kb: int = 256
    disk_mb: int = 64
    concurrency: int | None = None
    ro_paths: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, cfg: Any = None, **overrides: Any) -> SandboxSpec:
        """From a ``SandboxConfig``, its ``model_dump()`` dict, or None (the defaults); ``overrides`` win."""
        raw: dict[str, Any] = {}
        if cfg is not None:
            raw = dict(cfg.model_dump() if hasattr(cfg, "model_dump") else cfg)
        raw.update({k: v for k, v in overrides.items() if v is not None})
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"unknown sandbox setting(s) {unknown}; known: {sorted(known)}")
        raw["ro_paths"] = tuple(raw.get("ro_paths") or ())
        return cls(**raw)

    @property
    def cpu_limit_s(self) -> int:
        return max(1, math.ceil(self.cpu_s if self.cpu_s is not None else self.timeout_s))

    @property
    def workers(self) -> int:
        return self.concurrency or os.cpu_count() or 1

    def bwrap_path(self) -> str:
        found = shutil.which(self.bwrap)
        if found is None:
            raise SandboxUnavailable(
                f"sandbox.bwrap {self.bwrap!r} is not installed or not on PATH: install bubblewrap (Debian/Ubuntu: "
                "`apt-get install bubblewrap`; the README's `make setup` does it when run as root), or point "
                "sandbox.bwrap at the binary. Model-written code never runs unsandboxed unless you set "
                "sandbox.isolation=none (not isolated; a warning at every start)")
        return found

    def interpreter(self) -> tuple[str, Path | None]:
        """The interpreter's path and the install prefix to mount read-only (None: under /usr, mounted anyway)."""
        path = Path(self.python)
        if not path.is_absolute() or not path.exists():
            raise SandboxUnavailable(f"sandbox.python {self.python!r} does not exist; give the absolute path of a "
                                     "python3 outside the checkout, e.g. /usr/bin/python3 (Debian: apt-get "
                                     "install python3)")
        real = path.resolve()
        if real.is_relative_to("/usr"):
            return str(path), None
        prefix = real.parent.parent
        home = Path(os.path.expanduser("~")).resolve()
        for name, place in (("the checkout", _CHECKOUT), ("$HOME", home)):
            if prefix == place or place.is_relative_to(prefix) or prefix.is_relative_to(place):
                raise SandboxUnavailable(
                    f"sandbox.python {self.python!r} lives in {name} ({place}); mounting its prefix {prefix} would "
                    "show the sandbox that directory: use the system's /usr/bin/python3 or one installed elsewhere")
        return str(real), prefix


@dataclass
class RunResult:
    """One run: ``status`` is one of :data:`STATUSES`; ``exit_code`` is the program's (a negative number: the
    signal that ended it; None: it was killed by the sandbox); ``stdout`` / ``stderr`` are cut at the output limit."""

    status: str
    exit_code: int | None
    stdout: str
    stderr: str
    wall_s: float
    side: str = ""  # what the run wrote to fd 3 (``run_program(side_channel=True)``): a harness's report

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        if not self.side:
            out.pop("side")
        out["wall_s"] = round(self.wall_s, 4)
        return out


def classify(*, exit_code: int | None, stderr: str, timed_out: bool, over_output: bool,
             cpu_exceeded: bool) -> str:
    """The status of a finished run (first match wins): output_limit, timeout, memory, killed, error, ok."""
    if over_output:
        return "output_limit"
    if timed_out or cpu_exceeded:
        return "timeout"
    tail = stderr[-2000:]
    if exit_code != 0 and ("MemoryError" in tail or "Cannot allocate memory" in tail
                           or "std::bad_alloc" in tail):
        return "memory"
    if exit_code is None or exit_code < 0:
        return "killed"
    return "ok" if exit_code == 0 else "error"
