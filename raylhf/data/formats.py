"""Row formats and columns: detecting a file's format, the ``data.columns`` renaming, and checking message lists,
prompts and completions."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    pass
from raylhf.data.types import ROLES, DataError, Messages, Row, type_name

MAPPING_HINT = (
    "map your column names with data.columns (canonical -> yours), e.g. data.columns: {prompt: question}"
)


def detect_format(columns: Iterable[str]) -> str:
    """The row format implied by column names: ``preference``, ``messages``, ``sft`` or ``prompt``.

    ``chosen`` + ``rejected`` -> preference; ``messages`` -> messages; ``prompt`` + ``response`` -> sft;
    ``prompt`` -> prompt. Anything else raises :class:`DataError` listing the columns.
    """
    cols = set(columns)
    if {"chosen", "rejected"} <= cols:
        return "preference"
    if "messages" in cols:
        return "messages"
    if "prompt" in cols:
        return "sft" if "response" in cols else "prompt"
    raise DataError(
        f"cannot tell the data format from the columns {sorted(cols)}: expected 'messages' (chat), "
        "'prompt' (+ extra columns, RL), 'prompt' + 'response' (SFT) or 'chosen' + 'rejected' (preference); "
        + MAPPING_HINT
    )


def apply_column_mapping(row: Mapping[str, Any], columns: Mapping[str, str] | None) -> dict[str, Any]:
    """Rename the user's columns to canonical names (``columns`` maps canonical -> actual).

    Renames are simultaneous (swaps work); a column displaced by a rename is dropped. A mapping naming a
    missing column raises :class:`DataError` (without file context; loaders add it).
    """
    if not columns:
        return dict(row)
    missing = [(c, a) for c, a in columns.items() if a not in row]
    if missing:
        canon, actual = missing[0]
        raise DataError(
            f"data.columns maps {canon!r} -> {actual!r}, but there is no column {actual!r}; "
            f"columns present: {sorted(row)}"
        )
    actual_names = set(columns.values())
    out = {k: v for k, v in row.items() if k not in actual_names and k not in columns}
    for canon, actual in columns.items():
        out[canon] = row[actual]
    return out


def check_messages(value: Any, column: str, row: Row) -> Messages:
    """Validate a list of ``{role, content}`` turns and keep only role and content."""
    if not isinstance(value, list):
        raise row.error(
            f"wrong type: {column!r} must be a list of {{role, content}} messages, got {type_name(value)}"
        )
    if not value:
        raise row.error(f"{column!r} is an empty message list")
    out: Messages = []
    for i, turn in enumerate(value, start=1):
        if not isinstance(turn, Mapping):
            raise row.error(
                f"wrong type: {column!r} message {i} must be a {{role, content}} object, got {type_name(turn)}"
            )
        role, content = turn.get("role"), turn.get("content")
        if not isinstance(role, str):
            raise row.error(f"{column!r} message {i} needs a string 'role', got {type_name(role)}")
        if role not in ROLES:
            raise row.error(
                f"{column!r} message {i} has unknown role {role!r}; expected one of {sorted(ROLES)}"
            )
        if not isinstance(content, str):
            raise row.error(f"{column!r} message {i} needs a string 'content', got {type_name(content)}")
        out.append({"role": role, "content": content})
    return out


def prompt_messages(value: Any, row: Row, column: str = "prompt") -> Messages:
    """A prompt given as a string (one user turn) or as a message list."""
    if isinstance(value, str):
        if not value:
            raise row.error(f"{column!r} is an empty string")
        return [{"role": "user", "content": value}]
    if isinstance(value, list):
        return check_messages(value, column, row)
    raise row.error(
        f"wrong type: {column!r} must be a string or a list of {{role, content}} messages, got {type_name(value)}"
    )


def completion_messages(value: Any, column: str, row: Row) -> tuple[Messages, str]:
    """A reply given as a string or as message turns ending with the assistant reply -> (prefix, reply)."""
    if isinstance(value, str):
        return [], value
    if isinstance(value, list):
        turns = check_messages(value, column, row)
        if turns[-1]["role"] != "assistant":
            raise row.error(
                f"the last turn of {column!r} must be an assistant reply, got {turns[-1]['role']!r}"
            )
        return turns[:-1], turns[-1]["content"]
    raise row.error(
        f"wrong type: {column!r} must be a string or a list of {{role, content}} messages, got {type_name(value)}"
    )


def with_system(messages: Messages, system_prompt: str | None) -> Messages:
    """Prepend the system prompt unless the conversation already starts with a system turn."""
    if system_prompt and not (messages and messages[0]["role"] == "system"):
        return [{"role": "system", "content": system_prompt}, *messages]
    return messages


REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "messages": ("messages",),
    "prompt": ("prompt",),
    "sft": ("prompt", "response"),
    "preference": ("chosen", "rejected"),
}


def require_columns(row: Row, fmt: str) -> None:
    for col in REQUIRED_COLUMNS[fmt]:
        if col not in row.data:
            raise row.error(
                f"missing column {col!r} needed by format {fmt!r}; columns present: {sorted(row.data)}; "
                + MAPPING_HINT
            )
