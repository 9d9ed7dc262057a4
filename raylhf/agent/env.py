"""Environments: what answers the model between the turns of a multi-turn episode, with state and rewards.

An environment is a class built once per episode with ``agent.env_config`` (ms-swift's ``Env`` shape)::

    class Guess(Env):
        def __init__(self, env_config):
            super().__init__(env_config)

        async def reset(self, config):                      # config.data_dict: the data row
            self.target = int(config.data_dict["solution"])
            return "Guess my number (1-100).", {}, ""       # (observation, info, system_message)

        async def step(self, messages):                     # the conversation, the model's turn last
            guess = parse(messages[-1]["content"])
            done = guess == self.target
            return ("correct" if done else "higher" if guess < self.target else "lower"), float(done), done, {}

        async def close(self):
            ...

    envs = {"guess": Guess}                                 # or @register_env("guess")

selected with ``agent.env: guess``. ``reset``: a non-empty observation becomes the content of the prompt's last
user message (appended when there is none), a non-empty system message replaces the prompt's (or is added).
``step``: the observation becomes the next user turn of the chat template (its tokens carry no loss), the
reward adds to the episode's environment reward (``agent.env_reward``: sum, last or mean of the step rewards;
``reward/env``), ``done`` ends the episode. Methods may be ``async`` (they run on the rollout engine's event
loop, so they must not block it) or plain (they run in a thread). What a method raises, and a step slower than
``agent.tool_timeout_s``, becomes the observation ``error: ...`` (counted in ``agent/tool_errors``).

Files written for ms-swift (``from swift.plugin import Env, envs``) load unchanged through the stand-in of
``raylhf/plugins/swift.py``. Built-in: ``tools`` (the agent's tools: :class:`ToolEnv`).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from raylhf.plugins.registry import ENVS, PluginCheckError, class_of

__all__ = ["ENVS", "Env", "RolloutInferRequest", "ToolEnv", "call_method", "check_plugin_entry", "collect_envs",
           "register_env"]


@dataclass
class RolloutInferRequest:
    """What ``Env.reset`` and a scheduler see of an episode (ms-swift's ``RolloutInferRequest``): the messages so
    far and the data row (its columns, ``messages`` included)."""

    messages: list[dict[str, Any]]
    data_dict: dict[str, Any] = field(default_factory=dict)
    images: list[Any] = field(default_factory=list)
    tools: list[Any] | None = None
    uuid: str = ""


class Env:
    """Base of environments (ms-swift's ``swift.plugin.env.Env``); one instance per episode."""

    def __init__(self, env_config: dict[str, Any] | None = None) -> None:
        self.env_config = dict(env_config or {})

    async def reset(self, config: RolloutInferRequest) -> tuple[str, dict[str, Any], str]:
        """``(observation, info, system_message)``; empty strings keep the prompt as it is."""
        return "", {}, ""

    async def step(self, messages: list[dict[str, Any]]) -> tuple[str, float, bool, dict[str, Any]]:
        """``(next_observation, reward, done, info)`` after the model's turn (``messages[-1]``)."""
        raise NotImplementedError(f"{type(self).__name__} must implement step(messages) -> (observation, reward, "
                                  "done, info)")

    async def close(self) -> None:
        return None


class ToolEnv(Env):
    """The agent's tools as an environment (``agent.tools`` selects it): the model's turn is read for calls in
    the agent template's format, the tools run (each in a thread, with ``agent.tool_timeout_s``) and their
    answers, in the template's format, are the observation; no reward, never done (the episode ends when a turn
    makes no call). The episode loop uses its text form (:class:`raylhf.agent.episode.ToolSession`), so templates
    that answer inside the model's turn (ReAct's ``Observation:``) keep their format."""

    async def step(self, messages: list[dict[str, Any]]) -> tuple[str, float, bool, dict[str, Any]]:
        raise NotImplementedError("the tools env runs through its text form in raylhf.agent.episode.ToolSession")


async def call_method(fn: Callable[..., Any], *args: Any, executor: Any = None) -> Any:
    """Call an environment's method: awaited when it is async, else in a thread of ``executor`` (so a plain
    method never blocks the engine's event loop)."""
    if inspect.iscoroutinefunction(fn):
        return await fn(*args)
    out = await asyncio.get_running_loop().run_in_executor(executor, lambda: fn(*args))
    if inspect.isawaitable(out):
        out = await out
    return out


# ---------------------------------------------------------------------------------------- the registry

def _check_env(name: str, obj: Any) -> None:
    if not isinstance(obj, type):
        raise TypeError(f"env {name!r}: register a class with reset / step / close (raylhf.plugins.Env's shape), "
                        f"got {obj!r}")


ENVS.attach(check=_check_env)
ENVS.register("tools", ToolEnv)


def register_env(name: str) -> Callable[[type], type]:
    """Class decorator: makes an environment class available as ``agent.env: <name>``."""
    return ENVS.decorator(name)


def collect_envs(table: object, source: str) -> None:
    """A plugin module's ``envs`` (name -> Env class or instance) into the registry."""
    ENVS.register_table(table, source, "Env class", class_of)


# ---------------------------------------------------------------------------------------- check-plugin

EXPECTED = ("a class built as Cls(env_config) with async reset(config) -> (observation, info, system_message), "
            "async step(messages) -> (observation, reward, done, info) and async close()")


def check_plugin_entry(name: str, obj: Any) -> str:
    """``raylhf check-plugin``: build the env with an empty config, reset it on a one-message row, step it with an
    assistant reply, close it; the shapes of what comes back are checked."""
    if obj is ToolEnv:
        return "built-in: the agent's tools (agent.tools)"
    if not isinstance(obj, type):
        raise PluginCheckError(f"env {name!r} is {obj!r}; expected {EXPECTED}")
    for method in ("reset", "step"):
        if not callable(getattr(obj, method, None)):
            raise PluginCheckError(f"env {name!r} has no {method} method; expected {EXPECTED}")
    try:
        env = obj({})
    except TypeError as e:
        raise PluginCheckError(f"env {name!r} cannot be built as {obj.__name__}(env_config) ({e}); "
                               f"expected {EXPECTED}") from e

    async def probe() -> str:
        row = {"messages": [{"role": "user", "content": "What is 2+3?"}], "solution": "5"}
        start = await call_method(env.reset, RolloutInferRequest(list(row["messages"]), row))
        if not (isinstance(start, (tuple, list)) and len(start) == 3):
            raise PluginCheckError(f"env {name!r}: reset returned {start!r}; expected (observation, info, "
                                   f"system_message); {EXPECTED}")
        messages = [*row["messages"], {"role": "assistant", "content": "5"}]
        out = await call_method(env.step, messages)
        if not (isinstance(out, (tuple, list)) and len(out) == 4):
            raise PluginCheckError(f"env {name!r}: step returned {out!r}; expected (observation, reward, done, "
                                   f"info); {EXPECTED}")
        obs, reward, done, _ = out
        float(reward if reward is not None else 0.0)
        close = getattr(env, "close", None)
        if close is not None:
            await call_method(close)
        return f"reset -> {str(start[0])[:40]!r}; step -> observation {str(obs)[:40]!r}, reward {reward}, done {done}"

    return asyncio.run(probe())


ENVS.attach(collector=collect_envs, interface_check=check_plugin_entry)
