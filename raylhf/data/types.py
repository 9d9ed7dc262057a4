"""The records every loader returns (prompt, SFT and preference examples), the message type and DataError."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from raylhf.core.errors import RunError

if TYPE_CHECKING:
    pass



Messages = list[dict[str, str]]


FORMATS: tuple[str, ...] = ("messages", "prompt", "sft", "preference")


ROLES: frozenset[str] = frozenset({"system", "user", "assistant", "tool"})


class DataError(ValueError, RunError):
    """Bad or unreadable training data; the message names the file, the row and the problem.

    Attributes ``source`` (file / dataset), ``row`` (1-based line or row number) and ``problem`` (the bare
    description) are kept for programmatic use.
    """

    def __init__(
        self, problem: str, *, source: str | None = None, row: int | None = None, unit: str = "row"
    ) -> None:
        self.problem = problem
        self.source = source
        self.row = row
        self.unit = unit
        where = ""
        if source is not None:
            where = f"{source}, {unit} {row}: " if row is not None else f"{source}: "
        elif row is not None:
            where = f"{unit} {row}: "
        super().__init__(f"{where}{problem}")


@dataclass
class PromptExample:
    """One RL prompt.

    ``messages`` holds the chat turns up to (not including) the answer; ``extras`` holds every other column
    (e.g. ``solution``) and is passed to the reward functions.
    """

    messages: Messages
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class SFTExample:
    """One supervised conversation: ``messages`` are the turns before the final assistant reply (earlier
    assistant turns included: multi-turn chats), ``response`` is that reply.

    ``loss`` optionally holds one entry per turn of :meth:`turns` (``messages`` + the reply): ``True`` / ``False``
    trains / skips that assistant turn whatever the ``sft.loss_scale`` strategy says (the data's per-message
    ``"loss"`` key), ``None`` leaves it to the strategy; only assistant turns may carry ``True`` / ``False``.
    """

    messages: Messages
    response: str
    loss: list[bool | None] | None = None

    def turns(self) -> Messages:
        """The whole conversation: ``messages`` and the final assistant reply."""
        return [*self.messages, {"role": "assistant", "content": self.response}]


@dataclass
class PreferenceExample:
    """One preference pair: shared prompt turns, the chosen and the rejected assistant reply."""

    messages: Messages
    chosen: str
    rejected: str


@dataclass
class Row:
    """A record plus where it came from, for error messages."""

    data: dict[str, Any]
    source: str
    number: int
    unit: str = "row"

    def error(self, problem: str) -> DataError:
        return DataError(problem, source=self.source, row=self.number, unit=self.unit)


def type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__
