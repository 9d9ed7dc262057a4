"""The built-in ``python`` tool: the model's code runs in the sandbox (:mod:`rewards.sandbox`, the run's ``sandbox:``
section, the same one the ``code_tests`` reward uses), and the tool answers with what it printed.

Select it with ``agent: {template: hermes, tools: [python]}``. A run binds the tool to its ``sandbox:`` section
(:meth:`PythonTool.for_run`, called when the episode program is built, on the driver and on each rollout engine),
which checks that the sandbox can start there: without bubblewrap the run stops with
:class:`~rewards.sandbox.SandboxUnavailable` naming what to install; model-written code never runs unsandboxed
unless ``sandbox.isolation: none`` says so (warned at every start).

A call runs ``code`` as a fresh ``main.py`` (nothing is kept between calls) with ``stdin`` on its standard input,
on the engine's event loop (``await SandboxPool.arun``: the run itself waits in the pool's threads, at most
``sandbox.concurrency`` at once per engine process). Its wall clock is ``sandbox.timeout_s``, cut to
``agent.tool_timeout_s`` less a second so that the sandbox ends a slow program and says so before the call's own
timeout would. The answer: what the program printed; when it did not end well, a first line saying why
(``error: timeout after 5 s``, ``error: memory limit (512 MB)``, ``error: ZeroDivisionError: division by zero``)
and the tail of its stderr. Long output keeps its head and tail (the episode then cuts the answer to
``agent.max_tool_response_tokens`` tokens). See docs/agent.md and docs/sandbox.md.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from rewards.sandbox import RunResult, SandboxPool, SandboxSpec

__all__ = ["PythonTool", "format_result"]

MAX_STDOUT_CHARS = 2000  # kept of stdout: its head and tail
MAX_STDERR_CHARS = 800  # kept of stderr (a failed run): its tail, where the exception is
_MARGIN_S = 1.0  # the sandbox's clock ends a run this much before agent.tool_timeout_s


def _clip_middle(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    head = limit * 3 // 4
    return f"{text[:head]}\n...({len(text) - limit} characters left out)...\n{text[-(limit - head):]}"


def _clip_tail(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    cut = text[-limit:]
    return "..." + cut[cut.find("\n") + 1:] if "\n" in cut[:-1] else "..." + cut


def _headline(res: RunResult, spec: SandboxSpec) -> str:
    if res.status == "timeout":
        return f"error: timeout after {spec.timeout_s:g} s"
    if res.status == "memory":
        return f"error: memory limit ({spec.memory_mb} MB)"
    if res.status == "output_limit":
        return f"error: output limit ({spec.max_output_kb} KiB); the program was stopped"
    if res.status == "killed":
        how = f"signal {-res.exit_code}" if res.exit_code is not None and res.exit_code < 0 else "the sandbox"
        return f"error: the program was killed ({how})"
    lines = [line for line in res.stderr.strip().splitlines() if line.strip()]
    last = lines[-1].strip() if lines else ""
    return f"error: {last[:200]}" if last else f"error: exit code {res.exit_code}"


def format_result(res: RunResult, spec: SandboxSpec) -> str:
    """The tool's answer to one run: its stdout when it ended well (``(no output)`` when it printed nothing);
    else a headline saying why, then its stdout and its stderr's tail."""
    out = _clip_middle(res.stdout.rstrip("\n"), MAX_STDOUT_CHARS)
    if res.status == "ok":
        return out if out.strip() else "(no output)"
    parts = [_headline(res, spec)]
    if out.strip():
        parts.append(out)
    err = res.stderr.strip("\n")
    if err.strip():
        parts.append(_clip_tail(err, MAX_STDERR_CHARS))
    return "\n".join(parts)


class PythonTool:
    """The ``python`` tool; the registered instance uses the default sandbox settings, a run's is built by
    :meth:`for_run`."""

    description = ("Runs a Python 3 program in a sandbox and returns what it printed (its standard output; the "
                   "error when it fails). Every call is a fresh program: print what you need to see. No network, "
                   "no files kept between calls.")
    parameters: Mapping[str, Any] = {
        "type": "object",
        "properties": {
            "code": {"type": "string", "description": "the Python 3 program (a whole file, e.g. print(6*7))"},
            "stdin": {"type": "string", "description": "text given to the program's standard input (optional)"},
        },
        "required": ["code"],
    }

    def __init__(self, sandbox: Any = None, tool_timeout_s: float | None = None) -> None:
        self.base = SandboxSpec.from_config(sandbox)  # the run's sandbox: section; the pool is keyed by it
        self.spec = self.base
        if tool_timeout_s is not None:
            limit = max(tool_timeout_s - _MARGIN_S, tool_timeout_s / 2)
            if limit < self.base.timeout_s:
                self.spec = dataclasses.replace(self.base, timeout_s=limit)
        self._pool: SandboxPool | None = None

    @classmethod
    def for_run(cls, sandbox: Any = None, tool_timeout_s: float | None = None, **_: Any) -> PythonTool:
        """The tool bound to a run's ``sandbox:`` section (a ``SandboxConfig`` or its dict); raises
        :class:`~rewards.sandbox.SandboxUnavailable` when the sandbox cannot start in this process."""
        tool = cls(sandbox, tool_timeout_s)
        tool.pool  # noqa: B018  (builds the pool: probes the sandbox now, not at the first call)
        return tool

    @property
    def pool(self) -> SandboxPool:
        if self._pool is None:
            self._pool = SandboxPool.shared(self.base, "the agents' python tool")
        return self._pool

    async def __call__(self, code: str, stdin: str = "") -> str:
        res = await self.pool.arun({"main.py": str(code)}, stdin=str(stdin or ""), spec=self.spec)
        return format_result(res, self.spec)

    def __repr__(self) -> str:
        return f"PythonTool(timeout_s={self.spec.timeout_s:g}, memory_mb={self.spec.memory_mb})"
