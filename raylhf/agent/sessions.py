"""The environment side of an episode (:mod:`raylhf.agent.episode`): one *session* per episode, with the text-level
``step(text, tokens, turn, last, finish) -> Step`` after each model turn.

* :class:`ToolSession`: the agent's tools (``agent.tools``, the built-in ``tools`` env): calls read in the agent
  template's format, run in threads, answered in the template's format;
* :class:`EnvSession`: an environment class (``agent.env``, ms-swift's ``Env`` shape, :mod:`raylhf.agent.env`);
* :class:`SchedulerSession`: a multi-turn scheduler (``agent.scheduler``, :mod:`raylhf.agent.scheduler`).
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from raylhf.agent.env import RolloutInferRequest, call_method
from raylhf.agent.scheduler import ChatCompletionResponseChoice, ChatMessage, next_request
from raylhf.agent.templates import ToolCall
from raylhf.agent.tools import ToolResult, acall_tool

if TYPE_CHECKING:
    from raylhf.agent.episode import Bound


class EpisodeError(ValueError):
    """A plugin broke a rule of the episode loop (not an environment failure the model should see)."""


@dataclass
class Step:
    """What the environment did after one model turn. ``env_text``: its text, appended as tokens (None: the
    episode ends)."""

    env_text: str | None
    reward: float | None = None
    calls: int = 0
    errors: int = 0


class ToolSession:
    """The agent's tools: a turn's calls run side by side (async ones on the loop, plain ones in threads), each
    under the step timeout."""

    own_timeouts = True  # each call has its own (its answer says which tool timed out)

    def __init__(self, bound: Bound) -> None:
        self.b = bound

    async def start(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
        return None

    async def step(self, text: str, tokens: list[int], turn: int, last: bool, finish: str) -> Step:
        template = self.b.template
        assert template is not None
        calls = template.parse_tool_calls(text)
        stop = self.b.stop
        if not calls and any(text.rstrip().endswith(s) for s in stop):
            calls = [ToolCall("?", error=f"the turn ended at {stop} but no tool call could be read from it; call a "
                                         "tool as the system message shows")]
        if not calls or last:  # the model answered; or a call in the last turn: no turn is left to read its answer
            return Step(None)
        results = await asyncio.gather(*(self._call(c) for c in calls))
        answers = [self.b.cut(r.text) for r in results]
        return Step(template.format_tool_response(text, answers), calls=len(calls),
                    errors=sum(r.error for r in results))

    async def _call(self, c: ToolCall) -> ToolResult:
        if c.error is not None:
            return ToolResult(f"error: {c.error}", True)
        try:  # an async tool (python) on the engine's loop, a plain one in the engine's pool
            return await asyncio.wait_for(acall_tool(self.b.tools, c.name, c.arguments, self.b.executor),
                                          self.b.timeout_s)
        except TimeoutError:
            return ToolResult(f"error: tool {c.name} timed out after {self.b.timeout_s:g}s (agent.tool_timeout_s)",
                              True)

    async def close(self) -> None:
        return None


class EnvSession:
    """An environment instance for one episode (ms-swift's ``Env`` shape)."""

    def __init__(self, bound: Bound, env: Any, row: Mapping[str, Any]) -> None:
        self.b, self.env, self.row = bound, env, dict(row)
        self.messages: list[dict[str, Any]] = []

    async def start(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
        self.messages = [dict(m) for m in messages]
        out = await call_method(self.env.reset, RolloutInferRequest(copy.deepcopy(self.messages),
                                                                    copy.deepcopy(self.row)), executor=self.b.executor)
        obs, system = (out[0], out[2]) if isinstance(out, (tuple, list)) and len(out) == 3 else (None, None)
        if not obs and not system:
            return None
        if system:
            if self.messages and self.messages[0].get("role") == "system":
                self.messages[0]["content"] = str(system)
            else:
                self.messages.insert(0, {"role": "system", "content": str(system)})
        if obs:
            users = [i for i, m in enumerate(self.messages) if m.get("role") == "user"]
            if users:
                self.messages[users[-1]]["content"] = str(obs)
            else:
                self.messages.append({"role": "user", "content": str(obs)})
        return self.messages

    async def step(self, text: str, tokens: list[int], turn: int, last: bool, finish: str) -> Step:
        self.messages.append({"role": "assistant", "content": text})
        out = await call_method(self.env.step, copy.deepcopy(self.messages), executor=self.b.executor)
        if not (isinstance(out, (tuple, list)) and len(out) == 4):
            raise EpisodeError(f"env {self.b.program.env!r}: step returned {out!r}; expected (observation, reward, "
                               "done, info)")
        obs, reward, done, _ = out
        reward = None if reward is None else float(reward)
        if done or last:
            return Step(None, reward, calls=1)
        self.messages.append({"role": "user", "content": str(obs)})
        return Step(self.b.user_turn(str(obs)), reward, calls=1)

    def observed(self, text: str) -> None:
        """A failed step's error text, which the model sees as the env's answer, enters the history too."""
        if self.messages and self.messages[-1].get("role") == "assistant":
            self.messages.append({"role": "user", "content": text})

    async def close(self) -> None:
        close = getattr(self.env, "close", None)
        if close is not None:
            await call_method(close, executor=self.b.executor)


class SchedulerSession:
    """A multi-turn scheduler (ms-swift's ``MultiTurnScheduler`` shape): it may only append messages."""

    def __init__(self, bound: Bound, row: Mapping[str, Any]) -> None:
        self.b, self.row = bound, dict(row)
        self.request = RolloutInferRequest([], self.row)

    async def start(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
        self.request = RolloutInferRequest([dict(m) for m in messages], copy.deepcopy(self.row))
        return None

    async def step(self, text: str, tokens: list[int], turn: int, last: bool, finish: str) -> Step:
        sched, name = self.b.scheduler, self.b.program.scheduler
        self.request.messages.append({"role": "assistant", "content": text})
        choice = ChatCompletionResponseChoice(0, ChatMessage("assistant", text), finish, token_ids=list(tokens))
        if last or await call_method(sched.check_finished, self.request, choice, turn, executor=self.b.executor):
            return Step(None)
        before = copy.deepcopy(self.request.messages)
        out = await call_method(sched.step, self.request, choice, turn, executor=self.b.executor)
        self.request = next_request(out)
        now = [dict(m) for m in self.request.messages]
        if now[: len(before)] != before:
            k = next((i for i, (a, b) in enumerate(zip(before, now, strict=False)) if a != b), len(now))
            raise EpisodeError(
                f"multi-turn scheduler {name!r} changed message {k} ({before[k].get('role')}) in step(); raylhf "
                "trains on the tokens the model sampled, so a scheduler may only append messages (the "
                "environment's turn) after the model's: append the feedback as a new user message instead")
        added = now[len(before):]
        if not added:
            raise EpisodeError(f"multi-turn scheduler {name!r}: step() appended no message after the model's turn "
                               "and check_finished() said the episode goes on; append the environment's message, "
                               "or return True from check_finished")
        return Step(self.b.user_turn("\n".join(str(m.get("content", "")) for m in added)))

    def observed(self, text: str) -> None:
        if self.request.messages and self.request.messages[-1].get("role") == "assistant":
            self.request.messages.append({"role": "user", "content": text})

    async def close(self) -> None:
        return None


