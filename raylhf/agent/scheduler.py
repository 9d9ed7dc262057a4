"""Multi-turn schedulers (ms-swift's ``MultiTurnScheduler``): after each model turn, decide whether the episode is
finished and, if not, what the environment appends before the next turn.

A scheduler is a class built once per run as ``Cls(max_turns=agent.max_turns)``::

    class Hint(MultiTurnScheduler):
        def check_finished(self, infer_request, response_choice, current_turn):
            return "<answer>" in response_choice.message.content or super().check_finished(
                infer_request, response_choice, current_turn)

        def step(self, infer_request, response_choice, current_turn):
            infer_request.messages.append({"role": "user", "content": "Check your arithmetic."})
            return {"infer_request": infer_request}           # ms-swift >= 3.8; a RolloutInferRequest before

    multi_turns = {"hint": Hint}                               # selected with agent.scheduler: hint

When ``step`` is called, ``infer_request.messages`` ends with the model's turn as an assistant message. The
messages the scheduler appends after it are the environment's turn: rendered as the next user turn of the chat
template, their tokens carry no loss. The trained sequence is always the tokens the model sampled plus the
environment's: a scheduler that changes or removes an earlier message (ms-swift's "continue the current turn"
rewriting) is an error that says so; ``response_token_ids`` / ``response_loss_mask`` it returns are ignored for
the same reason. Files written for ms-swift (``from swift.plugin import MultiTurnScheduler, multi_turns``) load
unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from raylhf.agent.env import RolloutInferRequest
from raylhf.plugins.registry import SCHEDULERS, PluginCheckError, class_of

__all__ = ["SCHEDULERS", "ChatCompletionResponseChoice", "ChatMessage", "MultiTurnScheduler", "check_plugin_entry",
           "collect_schedulers", "register_multi_turn"]


@dataclass
class ChatMessage:
    role: str
    content: str


@dataclass
class ChatCompletionResponseChoice:
    """One model turn as ms-swift's schedulers see it."""

    index: int
    message: ChatMessage
    finish_reason: str
    logprobs: Any = None
    token_ids: list[int] = field(default_factory=list)


class MultiTurnScheduler:
    """Base of schedulers (ms-swift's ``swift.plugin.multi_turn.MultiTurnScheduler``)."""

    def __init__(self, max_turns: int | None = None, *args: Any, **kwargs: Any) -> None:
        self.max_turns = max_turns

    def step(self, infer_request: RolloutInferRequest, response_choice: ChatCompletionResponseChoice,
             current_turn: int) -> dict[str, Any] | RolloutInferRequest:
        raise NotImplementedError(f"{type(self).__name__} must implement step(infer_request, response_choice, "
                                  "current_turn) -> {'infer_request': ...}")

    def check_finished(self, infer_request: RolloutInferRequest, response_choice: ChatCompletionResponseChoice,
                       current_turn: int) -> bool:
        """Finished when the turn ran out of tokens or ``max_turns`` turns were made."""
        if response_choice.finish_reason == "length":
            return True
        return bool(self.max_turns) and current_turn >= int(self.max_turns)  # type: ignore[arg-type]


def _check_scheduler(name: str, obj: Any) -> None:
    if not isinstance(obj, type):
        raise TypeError(f"multi-turn scheduler {name!r}: register a class with step / check_finished "
                        f"(MultiTurnScheduler's shape), got {obj!r}")


SCHEDULERS.attach(check=_check_scheduler)


def register_multi_turn(name: str) -> Callable[[type], type]:
    """Class decorator: makes a scheduler class available as ``agent.scheduler: <name>``."""
    return SCHEDULERS.decorator(name)


def collect_schedulers(table: object, source: str) -> None:
    """A plugin module's ``multi_turns`` (name -> scheduler class or instance) into the registry."""
    SCHEDULERS.register_table(table, source, "MultiTurnScheduler class", class_of)


def next_request(out: Any) -> RolloutInferRequest:
    """The request a scheduler's ``step`` returned: a dict with ``infer_request`` (ms-swift >= 3.8) or the request
    itself (before)."""
    req = out.get("infer_request") if isinstance(out, dict) else out
    if not hasattr(req, "messages"):
        raise TypeError(f"a scheduler's step must return {{'infer_request': request}} or the request, got {out!r}")
    return req


EXPECTED = ("a class built as Cls(max_turns=N) with step(infer_request, response_choice, current_turn) -> "
            "{'infer_request': request} (or the request) and check_finished(infer_request, response_choice, "
            "current_turn) -> bool")


def check_plugin_entry(name: str, obj: Any) -> str:
    """``raylhf check-plugin``: build the scheduler, call check_finished and step on a one-turn conversation."""
    if not isinstance(obj, type):
        raise PluginCheckError(f"multi-turn scheduler {name!r} is {obj!r}; expected {EXPECTED}")
    try:
        sched = obj(max_turns=3)
    except TypeError as e:
        raise PluginCheckError(f"multi-turn scheduler {name!r} cannot be built as {obj.__name__}(max_turns=3) ({e}); "
                               f"expected {EXPECTED}") from e
    messages = [{"role": "user", "content": "What is 2+3?"}, {"role": "assistant", "content": "5"}]
    req = RolloutInferRequest([dict(m) for m in messages], {"messages": messages[:1], "solution": "5"})
    choice = ChatCompletionResponseChoice(0, ChatMessage("assistant", "5"), "stop")
    finished = sched.check_finished(req, choice, 1)
    if not isinstance(finished, bool):
        raise PluginCheckError(f"multi-turn scheduler {name!r}: check_finished returned {finished!r}, not a bool; "
                               f"expected {EXPECTED}")
    try:
        new = next_request(sched.step(req, choice, 1))
    except TypeError as e:
        raise PluginCheckError(f"multi-turn scheduler {name!r}: {e}; expected {EXPECTED}") from e
    added = new.messages[len(messages):]
    if [dict(m) for m in new.messages[: len(messages)]] != messages:
        raise PluginCheckError(f"multi-turn scheduler {name!r} changed earlier messages; raylhf trains on the "
                               "sampled tokens as they were: append messages instead")
    return f"check_finished -> {finished}; step appended {[m.get('role') for m in added]}"


SCHEDULERS.attach(collector=collect_schedulers, interface_check=check_plugin_entry)
