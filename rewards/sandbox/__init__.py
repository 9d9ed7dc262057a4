"""Run model-written programs in a sandbox (bubblewrap namespaces + rlimits): :func:`run_program` for one run,
:class:`SandboxPool` for many at once, :class:`SandboxSpec` from the ``sandbox:`` config section. See
docs/sandbox.md for what it protects against and what it does not."""

from rewards.sandbox.pool import SandboxPool
from rewards.sandbox.runner import probe, run_program, warn_unisolated
from rewards.sandbox.spec import STATUSES, RunResult, SandboxSpec, SandboxUnavailable

__all__ = ["STATUSES", "RunResult", "SandboxPool", "SandboxSpec", "SandboxUnavailable", "probe", "run_program",
           "warn_unisolated"]
