"""The agents' ``python`` tool (raylhf/agent/python_tool.py): the model's code runs in the sandbox of the run's
``sandbox:`` section. Called directly (output, a timeout within the limit, a caller's secret, the network), refused
without bubblewrap when the episode program is built, and in a multi-turn episode on a scripted turn sampler (the
real episode loop, hermes calls, the sandbox), with the config carried by the program the engines receive.

Needs bubblewrap (the README's setup installs it): without it these tests fail with the sandbox's message, never
skip (tests/reward_suite/test_sandbox.py: a machine that cannot sandbox must not look green).
"""

from __future__ import annotations

import asyncio
import json
import pickle
import secrets
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from raylhf.agent.episode import EpisodeProgram
from raylhf.agent.multiturn import EpisodeRunner, program_of
from raylhf.agent.python_tool import PythonTool
from raylhf.agent.tools import TOOLS, bind_tool, call_tool, check_plugin_entry, tool_spec
from raylhf.assets import TOKENIZER_DIR, load_tokenizer
from raylhf.config import GRPOConfig, build_config
from raylhf.config.sandbox import SandboxConfig
from rewards.sandbox import SandboxUnavailable

from .test_agent_templates import ScriptedModel  # the engine's turn sampler, scripted

SANDBOX = {"timeout_s": 5.0, "memory_mb": 256, "max_output_kb": 64}


def python(sandbox: dict[str, Any] | None = None, **kw: Any) -> Any:
    return bind_tool(TOOLS["python"], sandbox={**SANDBOX, **(sandbox or {})}, **kw)


def ask(tool: Any, code: str, stdin: str = "") -> str:
    return asyncio.run(tool(code=code, stdin=stdin))


def test_prints_reads_stdin_and_reports_errors() -> None:
    tool = python()
    assert ask(tool, "print(6 * 7)") == "42"
    assert ask(tool, "print(input()[::-1])", stdin="abc\n") == "cba"
    assert ask(tool, "x = 1") == "(no output)"
    answer = ask(tool, "print('before')\n1 / 0")
    head, *rest = answer.splitlines()
    assert head == "error: ZeroDivisionError: division by zero"
    assert rest[0] == "before" and "Traceback" in answer and rest[-1] == head[len("error: "):]
    assert ask(tool, "import sys; sys.exit(3)") == "error: exit code 3"
    assert ask(tool, "x = bytearray(1 << 30)").startswith("error: memory limit (256 MB)\nTraceback")
    flood = ask(tool, "print('y' * 200_000)")  # stopped at 64 KiB; of that, the head and tail are kept
    assert flood.startswith("error: output limit (64 KiB); the program was stopped\nyyy")
    assert "characters left out" in flood and len(flood) < 2200
    assert ask(tool, "import os; os.kill(os.getpid(), 9)") == "error: the program was killed (signal 9)"
    # what the template shows the model, and raylhf check-plugin on the built-in
    spec = tool_spec("python", tool)
    assert spec["parameters"]["required"] == ["code"] and "sandbox" in spec["description"]
    assert check_plugin_entry("python", TOOLS["python"]) == "called with {'code': '1'}: returned '(no output)'"
    # called from a thread (call_tool) it answers too
    assert call_tool({"python": tool}, "python", {"code": "print(2 ** 10)"}).text == "1024"


def test_an_endless_loop_answers_timeout_within_the_limit() -> None:
    tool = python({"timeout_s": 0.5})
    t0 = time.monotonic()
    assert ask(tool, "while True:\n    pass") == "error: timeout after 0.5 s"
    assert time.monotonic() - t0 < 3.0
    # the sandbox's clock ends a run before agent.tool_timeout_s would (and says so): 1 s earlier
    assert python({"timeout_s": 10.0}, tool_timeout_s=4.0).spec.timeout_s == 3.0
    assert python({"timeout_s": 2.0}, tool_timeout_s=10.0).spec.timeout_s == 2.0


def test_the_callers_secret_and_the_network_stay_out(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "agent-secret-" + secrets.token_hex(8)
    monkeypatch.setenv("RAYLHF_AGENT_SECRET", secret)
    tool = python()
    answer = ask(tool, "import os\nprint(dict(os.environ))\nprint(open('/proc/1/environ', 'rb').read())")
    assert secret not in answer and "PATH" in answer
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(0.3)
    code = ("import socket\ns = socket.socket()\ns.settimeout(1)\ntry:\n    s.connect(('127.0.0.1', PORT))\n"
            "    s.sendall(b'leak')\n    print('connected')\nexcept OSError as e:\n    print('refused', e)\n"
            ).replace("PORT", str(listener.getsockname()[1]))
    try:
        assert ask(tool, code).startswith("refused")
        with pytest.raises(TimeoutError):
            listener.accept()
    finally:
        listener.close()


def test_no_bubblewrap_stops_the_episode_program_when_it_is_built(tmp_path: Path) -> None:
    missing = {"bwrap": str(tmp_path / "no-bwrap")}
    with pytest.raises(SandboxUnavailable, match=r"sandbox.bwrap .*apt-get install bubblewrap"):
        PythonTool.for_run(missing)
    program = EpisodeProgram(tokenizer=str(TOKENIZER_DIR), max_turns=2, template="hermes", tools=("python",),
                             sandbox=json.dumps(missing))
    for _ in range(2):  # every time, not only the first
        with pytest.raises(SandboxUnavailable, match="bubblewrap"):
            EpisodeRunner(program, 100)
    # the calculator alone needs no sandbox
    EpisodeRunner(EpisodeProgram(tokenizer=str(TOKENIZER_DIR), max_turns=2, template="hermes",
                                 tools=("calculator",), sandbox=json.dumps(missing)), 100)


def test_the_runs_sandbox_section_travels_with_the_program() -> None:
    cfg = build_config(GRPOConfig, overrides=[("agent.template", "hermes"), ("agent.tools", ["python"]),
                                              ("sandbox.timeout_s", 3.0), ("sandbox.memory_mb", 128)])
    program = program_of(cfg.agent, str(TOKENIZER_DIR), cfg.sandbox)
    assert pickle.loads(pickle.dumps(program)) == program  # what Ray hands RolloutWorker.episodes
    assert json.loads(program.sandbox) == cfg.sandbox.model_dump()
    tool = program.bind().tools["python"]
    assert (tool.spec.timeout_s, tool.spec.memory_mb) == (3.0, 128)
    assert json.loads(program_of(cfg.agent, str(TOKENIZER_DIR)).sandbox) == SandboxConfig().model_dump()


def call(code: str) -> str:
    return f'<tool_call>\n{json.dumps({"name": "python", "arguments": {"code": code}})}\n</tool_call>'


def test_a_multi_turn_episode_runs_the_models_code_in_the_sandbox() -> None:
    tok = load_tokenizer()
    # agent.tool_timeout_s 1.5 s: the sandbox's clock is 0.75 s (the larger of 1 s earlier and half), so the sandbox
    # ends the loop and its answer names the limit (not the call's timeout)
    program = EpisodeProgram(tokenizer=str(TOKENIZER_DIR), max_turns=3, template="hermes", tools=("python",),
                             timeout_s=1.5, max_tool_response_tokens=48, sandbox=json.dumps(SANDBOX))
    runner = EpisodeRunner(program, 600)
    (ex,) = runner.prepare([_prompt("What is 6*7?")])
    assert '"name": "python"' in ex.messages[0]["content"]
    script = [call("print(6 * 7)"), call("while True:\n    pass"), "The answer is 42."]
    gen = ScriptedModel(tok, script, runner.bound.stop)
    t0 = time.monotonic()
    (ep,) = runner.run(gen, [tok.encode("What is 6*7?")], 1, seed=3)
    assert time.monotonic() - t0 < 4.0
    assert "<tool_response>\n42\n</tool_response>" in ep.text
    assert "<tool_response>\nerror: timeout after 0.75 s\n</tool_response>" in ep.text
    assert ep.text.endswith("The answer is 42.")
    assert ep.episode == {"turns": 3, "tool_calls": 2, "tool_errors": 0}  # a failed program is an answer
    assert ep.response_mask is not None and 0.0 in ep.response_mask  # the answers carry no loss


def _prompt(q: str) -> Any:
    from raylhf.data import PromptExample

    return PromptExample([{"role": "user", "content": q}], {"solution": "42"})
