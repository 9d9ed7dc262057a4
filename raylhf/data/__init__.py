"""Dataset loading, validation and tokenisation for every algorithm family.

Sources (``data.train_files`` / ``data.eval_files``):

* ``.jsonl`` files (one JSON object per line; blank lines are skipped),
* ``.json`` files (an array of objects, ``{"data": [...]}``-style wrappers, or JSON Lines),
* ``.parquet`` / ``.pq`` files,
* directories written by ``datasets.Dataset.save_to_disk`` (a ``DatasetDict`` uses its ``train`` split
  or its only split), or plain directories holding the files above,
* Hugging Face hub ids (``name``, ``name:split`` or ``name:config:split``) when the string is neither an
  existing local path nor looks like a file path.

Row formats (after the ``data.columns`` renaming, canonical name -> name in your data):

* ``messages``: a chat ``messages`` list of ``{role, content}`` turns,
* ``prompt``: a ``prompt`` (string or message list) plus extra columns (RL; extras such as ``solution``
  travel to the reward functions),
* ``sft``: ``prompt`` + ``response``,
* ``preference``: ``chosen`` + ``rejected`` (strings or message lists) with an optional ``prompt``.

Every problem in the data is reported eagerly, on load, as one :class:`DataError` that names the file,
the row (the line for JSON Lines, 1-based) and the problem, so workers never crash on bad rows later.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, overload

from raylhf.core.errors import RunError
from raylhf.data.loss_scale import ContextType, LossScale, checked_loss_scale, get_loss_scale

if TYPE_CHECKING:
    from raylhf.config.sections import DataConfig

__all__ = [
    "FORMATS",
    "ROLES",
    "DataError",
    "Messages",
    "PreferenceExample",
    "PromptExample",
    "SFTExample",
    "apply_column_mapping",
    "detect_format",
    "drop_long_prompts",
    "end_of_turn_id",
    "load_from_config",
    "load_preference_dataset",
    "load_prompt_dataset",
    "load_records",
    "load_sft_dataset",
    "render_prompt",
    "tokenize_sft",
]

Messages = list[dict[str, str]]

FORMATS: tuple[str, ...] = ("messages", "prompt", "sft", "preference")
ROLES: frozenset[str] = frozenset({"system", "user", "assistant", "tool"})

JSONL_SUFFIXES = (".jsonl", ".ndjson")
JSON_SUFFIXES = (".json",)
PARQUET_SUFFIXES = (".parquet", ".pq")
DATA_SUFFIXES = JSONL_SUFFIXES + JSON_SUFFIXES + PARQUET_SUFFIXES
# suffixes that make a non-existing string look like a (mistyped) file path rather than a hub id
_PATHLIKE_SUFFIXES = (*DATA_SUFFIXES, ".csv", ".tsv", ".txt", ".arrow", ".gz", ".zst")

_MAPPING_HINT = (
    "map your column names with data.columns (canonical -> yours), e.g. data.columns: {prompt: question}"
)


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


# --------------------------------------------------------------------------------------------- reading


@dataclass
class _Row:
    """A record plus where it came from, for error messages."""

    data: dict[str, Any]
    source: str
    number: int
    unit: str = "row"

    def error(self, problem: str) -> DataError:
        return DataError(problem, source=self.source, row=self.number, unit=self.unit)


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _looks_like_path(source: str) -> bool:
    """Whether a string that does not exist locally is meant as a file path (not a hub id)."""
    if source.startswith(("/", ".", "~")) or "\\" in source or re.match(r"^[A-Za-z]:[\\/]", source):
        return True
    if source.lower().endswith(_PATHLIKE_SUFFIXES):
        return True
    # hub ids are "name" or "owner/name" (optionally ":config:split"): at most one slash
    return source.split(":", 1)[0].count("/") > 1


def _check_object(value: Any, source: str, number: int, unit: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise DataError(
            f"expected a JSON object (one row with named columns), got {_type_name(value)}",
            source=source,
            row=number,
            unit=unit,
        )
    return value


def _read_jsonl_text(text: str, source: str, limit: int | None) -> list[_Row]:
    rows: list[_Row] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if limit is not None and len(rows) >= limit:
            break
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(
                f"malformed JSON ({e.msg} at column {e.colno})", source=source, row=lineno, unit="line"
            ) from None
        rows.append(_Row(_check_object(value, source, lineno, "line"), source, lineno, "line"))
    return rows


def _read_text(path: Path, source: str) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"not UTF-8 text ({e.reason} at byte {e.start})", source=source) from None
    except OSError as e:
        raise DataError(f"cannot read file ({e.strerror or e})", source=source) from None


def _read_json(path: Path, source: str, limit: int | None) -> list[_Row]:
    text = _read_text(path, source)
    if not text.strip():
        return []
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg.startswith("Extra data"):  # several top-level values: JSON Lines in a .json file
            return _read_jsonl_text(text, source, limit)
        raise DataError(
            f"malformed JSON ({e.msg} at column {e.colno})", source=source, row=e.lineno, unit="line"
        ) from None
    if isinstance(value, dict):
        wrapped = [
            v for v in value.values() if isinstance(v, list) and v and all(isinstance(x, dict) for x in v)
        ]
        canonical = {"messages", "prompt", "chosen", "rejected", "response"}
        if len(value) == 1 and len(wrapped) == 1 and not canonical & set(value):
            value = wrapped[0]  # {"data": [...]} / {"train": [...]} wrapper
        else:
            return [_Row(value, source, 1, "line")]  # a one-record JSON Lines file named .json
    if not isinstance(value, list):
        raise DataError(
            f"top-level JSON must be an array of row objects (or JSON Lines), got {_type_name(value)}",
            source=source,
        )
    if limit is not None:
        value = value[:limit]
    return [_Row(_check_object(v, source, i, "row"), source, i) for i, v in enumerate(value, start=1)]


def _read_parquet(path: Path, source: str, limit: int | None) -> list[_Row]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    records: list[dict[str, Any]] = []
    try:
        pf = pq.ParquetFile(str(path))
        for batch in pf.iter_batches(batch_size=1024):
            records.extend(batch.to_pylist())
            if limit is not None and len(records) >= limit:
                break
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"cannot read Parquet file ({e})", source=source) from None
    if limit is not None:
        records = records[:limit]
    return [_Row(r, source, i) for i, r in enumerate(records, start=1)]


def _rows_from_hf(ds: Any, source: str, limit: int | None) -> list[_Row]:
    if limit is not None and len(ds) > limit:
        ds = ds.select(range(limit))
    return [_Row(dict(r), source, i) for i, r in enumerate(ds.to_list(), start=1)]


def _pick_split(dd: Any, source: str, split: str | None) -> Any:
    names = list(dd.keys())
    if split is not None and split in dd:
        return dd[split]
    if split is None and "train" in dd:
        return dd["train"]
    if len(names) == 1:
        return dd[names[0]]
    raise DataError(f"dataset has splits {names} but no split {split or 'train'!r}", source=source)


def _read_saved_dataset(path: Path, source: str, limit: int | None, split: str | None) -> list[_Row]:
    import datasets

    state = path / "state.json"
    if state.is_file():  # datasets cannot reload a saved dataset with 0 rows (no shards): it is empty
        try:
            if json.loads(state.read_text(encoding="utf-8")).get("_data_files") == []:
                return []
        except (OSError, ValueError, AttributeError):
            pass  # let load_from_disk report the problem
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:
        raise DataError(f"cannot load saved dataset ({type(e).__name__}: {e})", source=source) from None
    if isinstance(ds, datasets.DatasetDict):
        ds = _pick_split(ds, source, split)
    return _rows_from_hf(ds, source, limit)


def _read_hub(source: str, limit: int | None, split: str | None) -> list[_Row]:
    import datasets

    parts = source.split(":")
    name, config, hub_split = parts[0], None, split or "train"
    if len(parts) == 2:
        hub_split = parts[1]
    elif len(parts) == 3:
        config, hub_split = parts[1], parts[2]
    elif len(parts) > 3:
        raise DataError("hub ids take the form name, name:split or name:config:split", source=source)
    try:
        ds = datasets.load_dataset(name, config, split=hub_split)
    except Exception as e:
        raise DataError(
            f"not an existing local path, and loading it as a Hugging Face hub dataset (split {hub_split!r}) "
            f"failed ({type(e).__name__}: {e}); check the path, or the network / HF_HUB_OFFLINE for hub ids",
            source=source,
        ) from None
    return _rows_from_hf(ds, source, limit)


def _read_file(path: Path, source: str, limit: int | None) -> list[_Row]:
    name = path.name.lower()
    if name.endswith(JSONL_SUFFIXES):
        return _read_jsonl_text(_read_text(path, source), source, limit)
    if name.endswith(JSON_SUFFIXES):
        return _read_json(path, source, limit)
    if name.endswith(PARQUET_SUFFIXES):
        return _read_parquet(path, source, limit)
    raise DataError(
        f"unsupported file type {path.suffix or '(no suffix)'!r}; use one of {', '.join(DATA_SUFFIXES)} "
        "or a directory written by datasets' save_to_disk",
        source=source,
    )


def _read_source(source: str, limit: int | None = None, split: str | None = None) -> list[_Row]:
    """Read one source into rows that remember their file and row/line number."""
    if not isinstance(source, (str, os.PathLike)):
        raise DataError(f"a data source must be a path or hub id string, got {_type_name(source)}")
    source = os.fspath(source)
    path = Path(os.path.expanduser(source))
    if path.is_dir():
        if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
            return _read_saved_dataset(path, source, limit, split)
        files = sorted(p for p in path.iterdir() if p.is_file() and p.name.lower().endswith(DATA_SUFFIXES))
        if not files:
            raise DataError(
                "directory holds neither a saved dataset (save_to_disk) nor .jsonl/.json/.parquet files",
                source=source,
            )
        rows: list[_Row] = []
        for f in files:
            rows.extend(_read_file(f, str(f), None if limit is None else limit - len(rows)))
            if limit is not None and len(rows) >= limit:
                break
        return rows
    if path.exists():
        return _read_file(path, source, limit)
    if _looks_like_path(source):
        raise DataError("file not found", source=source)
    return _read_hub(source, limit, split)


def load_records(
    source: str, *, max_samples: int | None = None, split: str | None = None
) -> list[dict[str, Any]]:
    """Load the raw rows (dicts) of one source: JSONL, JSON, Parquet, a saved dataset dir or a hub id.

    ``max_samples`` keeps only the first N rows; ``split`` picks the split of a ``DatasetDict`` or hub
    dataset (default ``train``; a hub id may carry its own as ``name:split``). Unreadable sources raise
    :class:`DataError`; an empty source returns ``[]``.
    """
    if max_samples is not None and max_samples <= 0:
        raise ValueError(f"max_samples must be positive, got {max_samples}")
    return [r.data for r in _read_source(source, max_samples, split)]


# ------------------------------------------------------------------------------------------ validation


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
        + _MAPPING_HINT
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


def _messages(value: Any, column: str, row: _Row) -> Messages:
    """Validate a list of ``{role, content}`` turns and keep only role and content."""
    if not isinstance(value, list):
        raise row.error(
            f"wrong type: {column!r} must be a list of {{role, content}} messages, got {_type_name(value)}"
        )
    if not value:
        raise row.error(f"{column!r} is an empty message list")
    out: Messages = []
    for i, turn in enumerate(value, start=1):
        if not isinstance(turn, Mapping):
            raise row.error(
                f"wrong type: {column!r} message {i} must be a {{role, content}} object, got {_type_name(turn)}"
            )
        role, content = turn.get("role"), turn.get("content")
        if not isinstance(role, str):
            raise row.error(f"{column!r} message {i} needs a string 'role', got {_type_name(role)}")
        if role not in ROLES:
            raise row.error(
                f"{column!r} message {i} has unknown role {role!r}; expected one of {sorted(ROLES)}"
            )
        if not isinstance(content, str):
            raise row.error(f"{column!r} message {i} needs a string 'content', got {_type_name(content)}")
        out.append({"role": role, "content": content})
    return out


def _prompt_messages(value: Any, row: _Row, column: str = "prompt") -> Messages:
    """A prompt given as a string (one user turn) or as a message list."""
    if isinstance(value, str):
        if not value:
            raise row.error(f"{column!r} is an empty string")
        return [{"role": "user", "content": value}]
    if isinstance(value, list):
        return _messages(value, column, row)
    raise row.error(
        f"wrong type: {column!r} must be a string or a list of {{role, content}} messages, got {_type_name(value)}"
    )


def _completion(value: Any, column: str, row: _Row) -> tuple[Messages, str]:
    """A reply given as a string or as message turns ending with the assistant reply -> (prefix, reply)."""
    if isinstance(value, str):
        return [], value
    if isinstance(value, list):
        turns = _messages(value, column, row)
        if turns[-1]["role"] != "assistant":
            raise row.error(
                f"the last turn of {column!r} must be an assistant reply, got {turns[-1]['role']!r}"
            )
        return turns[:-1], turns[-1]["content"]
    raise row.error(
        f"wrong type: {column!r} must be a string or a list of {{role, content}} messages, got {_type_name(value)}"
    )


def _with_system(messages: Messages, system_prompt: str | None) -> Messages:
    """Prepend the system prompt unless the conversation already starts with a system turn."""
    if system_prompt and not (messages and messages[0]["role"] == "system"):
        return [{"role": "system", "content": system_prompt}, *messages]
    return messages


_REQUIRED: dict[str, tuple[str, ...]] = {
    "messages": ("messages",),
    "prompt": ("prompt",),
    "sft": ("prompt", "response"),
    "preference": ("chosen", "rejected"),
}


def _require(row: _Row, fmt: str) -> None:
    for col in _REQUIRED[fmt]:
        if col not in row.data:
            raise row.error(
                f"missing column {col!r} needed by format {fmt!r}; columns present: {sorted(row.data)}; "
                + _MAPPING_HINT
            )


def _load_rows(
    files: Sequence[str] | str,
    *,
    format: str,
    columns: Mapping[str, str] | None,
    max_samples: int | None,
    accepted: tuple[str, ...],
    kind: str,
    split: str | None = None,
) -> list[tuple[_Row, str]]:
    """Read, rename and format-check the rows of several files (concatenated; one shared format)."""
    if isinstance(files, (str, os.PathLike)):
        files = [os.fspath(files)]
    if not files:
        raise DataError(f"no data files given for {kind} data")
    if format != "auto" and format not in FORMATS:
        raise DataError(f"unknown data.format {format!r}; expected auto or one of {', '.join(FORMATS)}")
    if format != "auto" and format not in accepted:
        raise DataError(
            f"data.format {format!r} cannot be used for {kind} data; expected one of {', '.join(accepted)}"
        )
    if max_samples is not None and max_samples <= 0:
        raise ValueError(f"max_samples must be positive, got {max_samples}")
    out: list[tuple[_Row, str]] = []
    first: tuple[str, str] | None = None  # (file, format) that fixed the shared format
    for source in files:
        remaining = None if max_samples is None else max_samples - len(out)
        if remaining is not None and remaining <= 0:
            break
        rows = _read_source(source, remaining, split)
        if not rows:
            raise DataError("empty dataset (no rows)", source=os.fspath(source))
        fmt = format
        for row in rows:
            try:
                row.data = apply_column_mapping(row.data, columns)
            except DataError as e:
                raise row.error(e.problem) from None
            if fmt == "auto":
                try:
                    fmt = detect_format(row.data)
                except DataError as e:
                    raise row.error(e.problem) from None
                if fmt not in accepted:
                    raise row.error(
                        f"detected format {fmt!r} (columns {sorted(row.data)}) cannot be used for {kind} data; "
                        f"expected one of {', '.join(accepted)}; " + _MAPPING_HINT
                    )
                if first is not None and first[1] != fmt:
                    raise DataError(
                        f"has format {fmt!r} but {first[0]} has format {first[1]!r}; "
                        "all files of one split must share a format",
                        source=os.fspath(source),
                    )
                first = first or (os.fspath(source), fmt)
            _require(row, fmt)
            out.append((row, fmt))
    return out


# -------------------------------------------------------------------------------------------- loaders


def load_prompt_dataset(
    files: Sequence[str],
    *,
    format: str = "auto",
    columns: Mapping[str, str] | None = None,
    system_prompt: str | None = None,
    max_samples: int | None = None,
    split: str | None = None,
) -> list[PromptExample]:
    """Load RL prompts from ``messages``, ``prompt`` or ``sft`` rows.

    * ``prompt`` rows: the prompt (string or message list); every other column goes to ``extras``.
    * ``messages`` rows: when the last turn is the assistant's, the prompt is every turn before it and
      its content becomes ``extras['solution']`` (unless a ``solution`` column is set); otherwise the
      whole conversation is the prompt.
    * ``sft`` rows: the prompt; ``response`` stays in ``extras`` and is also the default ``solution``.
    """
    examples: list[PromptExample] = []
    for row, fmt in _load_rows(
        files,
        format=format,
        columns=columns,
        max_samples=max_samples,
        accepted=("messages", "prompt", "sft"),
        kind="prompt",
        split=split,
    ):
        data = row.data
        if fmt == "messages":
            turns = _messages(data["messages"], "messages", row)
            extras = {k: v for k, v in data.items() if k != "messages"}
            if turns[-1]["role"] == "assistant":
                prompt, answer = turns[:-1], turns[-1]["content"]
                if not prompt:
                    raise row.error("'messages' holds only an assistant turn; there is no prompt before it")
                if extras.get("solution") is None:
                    extras["solution"] = answer
            else:
                prompt = turns
        else:
            prompt = _prompt_messages(data["prompt"], row)
            extras = {k: v for k, v in data.items() if k != "prompt"}
            if fmt == "sft":
                if not isinstance(data["response"], str):
                    raise row.error(
                        f"wrong type: 'response' must be a string, got {_type_name(data['response'])}"
                    )
                if extras.get("solution") is None:
                    extras["solution"] = data["response"]
        examples.append(PromptExample(_with_system(prompt, system_prompt), extras))
    return examples


def load_sft_dataset(
    files: Sequence[str],
    *,
    format: str = "auto",
    columns: Mapping[str, str] | None = None,
    system_prompt: str | None = None,
    max_samples: int | None = None,
    split: str | None = None,
) -> list[SFTExample]:
    """Load supervised examples from ``sft`` (prompt/response) or ``messages`` rows.

    For ``messages`` rows the last turn must be the assistant's: it is the response, the turns before it
    (earlier assistant replies included) the prompt. A ``response`` may also be a message list ending with the
    assistant reply. An assistant message may carry ``"loss": true/false`` (kept in ``SFTExample.loss``).
    """
    examples: list[SFTExample] = []
    for row, fmt in _load_rows(
        files,
        format=format,
        columns=columns,
        max_samples=max_samples,
        accepted=("sft", "messages"),
        kind="SFT",
        split=split,
    ):
        data = row.data
        if fmt == "messages":
            turns = _messages(data["messages"], "messages", row)
            if turns[-1]["role"] != "assistant":
                raise row.error(
                    f"the last turn of 'messages' must be the assistant reply to train on, got {turns[-1]['role']!r}"
                )
            prompt, response = turns[:-1], turns[-1]["content"]
            if not prompt:
                raise row.error("'messages' holds only an assistant turn; there is no prompt before it")
            flags = _loss_flags(data["messages"], "messages", row)
        else:
            prompt = _prompt_messages(data["prompt"], row)
            prefix, response = _completion(data["response"], "response", row)
            prompt = prompt + prefix
            flags = _loss_flags(data["prompt"], "prompt", row) + _loss_flags(data["response"], "response", row)
        if prompt[0]["role"] == "assistant":
            raise row.error("the conversation starts with an assistant turn; put the user (or system) turn it "
                            "answers before it")
        full = _with_system(prompt, system_prompt)
        flags = [None] * (len(full) - len(prompt)) + flags
        examples.append(SFTExample(full, response, flags if any(f is not None for f in flags) else None))
    return examples


def _loss_flags(value: Any, column: str, row: _Row) -> list[bool | None]:
    """The per-message ``"loss"`` overrides of a message list (already validated), one per message; a plain
    string (one turn) has none. Only assistant turns may carry one, and it must be true, false or null."""
    if not isinstance(value, list):
        return [None]
    flags: list[bool | None] = []
    for i, turn in enumerate(value, start=1):
        flag = turn.get("loss")
        if flag is not None and not isinstance(flag, bool):
            raise row.error(f"{column!r} message {i}: 'loss' must be true, false or null, got {flag!r}")
        if flag is not None and turn.get("role") != "assistant":
            raise row.error(f"{column!r} message {i}: only assistant turns take a 'loss' override, this one is "
                            f"{turn.get('role')!r}; use sft.loss_scale=all to train on the prompt turns")
        flags.append(flag)
    return flags


def load_preference_dataset(
    files: Sequence[str],
    *,
    format: str = "auto",
    columns: Mapping[str, str] | None = None,
    system_prompt: str | None = None,
    max_samples: int | None = None,
    split: str | None = None,
) -> list[PreferenceExample]:
    """Load preference pairs from ``chosen``/``rejected`` rows (optional ``prompt``).

    ``chosen``/``rejected`` are strings or message lists ending with the assistant reply. Turns before the
    reply must agree between the two and are appended to the prompt; without a ``prompt`` column they are
    the prompt (the implicit-prompt convention), and at least one prompt turn is required.
    """
    examples: list[PreferenceExample] = []
    for row, _fmt in _load_rows(
        files,
        format=format,
        columns=columns,
        max_samples=max_samples,
        accepted=("preference",),
        kind="preference",
        split=split,
    ):
        data = row.data
        c_prefix, chosen = _completion(data["chosen"], "chosen", row)
        r_prefix, rejected = _completion(data["rejected"], "rejected", row)
        if c_prefix != r_prefix:
            raise row.error("'chosen' and 'rejected' differ before their final assistant reply")
        prompt = _prompt_messages(data["prompt"], row) if data.get("prompt") is not None else []
        prompt = prompt + c_prefix
        if not prompt:
            raise row.error(
                "no prompt: add a 'prompt' column or give 'chosen'/'rejected' as message lists that start "
                "with the prompt turns; " + _MAPPING_HINT
            )
        examples.append(PreferenceExample(_with_system(prompt, system_prompt), chosen, rejected))
    return examples


@overload
def load_from_config(
    cfg: DataConfig, kind: Literal["prompt"], *, split: Literal["train", "eval"] = "train"
) -> list[PromptExample]: ...
@overload
def load_from_config(
    cfg: DataConfig, kind: Literal["sft"], *, split: Literal["train", "eval"] = "train"
) -> list[SFTExample]: ...
@overload
def load_from_config(
    cfg: DataConfig, kind: Literal["preference"], *, split: Literal["train", "eval"] = "train"
) -> list[PreferenceExample]: ...
def load_from_config(
    cfg: DataConfig,
    kind: Literal["prompt", "sft", "preference"],
    *,
    split: Literal["train", "eval"] = "train",
) -> list[PromptExample] | list[SFTExample] | list[PreferenceExample]:
    """Load ``cfg.train_files`` or ``cfg.eval_files`` as ``kind`` examples with the config's options.

    No eval files gives ``[]``; no train files raises :class:`DataError` (callers wanting the embedded demo
    task check ``cfg.train_files`` first). Hub ids in ``eval_files`` default to their ``test`` split.
    """
    loaders = {"prompt": load_prompt_dataset, "sft": load_sft_dataset, "preference": load_preference_dataset}
    if kind not in loaders:
        raise ValueError(f"unknown data kind {kind!r}; expected one of {sorted(loaders)}")
    if split not in ("train", "eval"):
        raise ValueError(f"unknown split {split!r}; expected 'train' or 'eval'")
    files = cfg.train_files if split == "train" else cfg.eval_files
    if not files:
        if split == "eval":
            return []
        raise DataError(
            "data.train_files is empty: give at least one JSONL/JSON/Parquet file, dataset dir or hub id"
        )
    return loaders[kind](
        files,
        format=cfg.format,
        columns=cfg.columns,
        system_prompt=cfg.system_prompt,
        max_samples=cfg.max_samples,
        split="train" if split == "train" else "test",
    )


# ---------------------------------------------------------------------------------------- tokenising


def _chat_text(tokenizer: Any, messages: Messages, *, add_generation_prompt: bool) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(
            "the tokenizer has no chat template; use a tokenizer (model.tokenizer) that ships one"
        )
    text = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    if not isinstance(text, str):
        raise TypeError(f"apply_chat_template(tokenize=False) returned {_type_name(text)}, expected str")
    return text


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def render_prompt(tokenizer: Any, messages: Messages) -> list[int]:
    """Token ids of ``messages`` rendered with the chat template, ending with the assistant header."""
    return _encode(tokenizer, _chat_text(tokenizer, messages, add_generation_prompt=True))


_EOT_CACHE: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
_SENTINEL = "RAYLHF_SENTINEL_REPLY"


def end_of_turn_id(tokenizer: Any) -> int:
    """The token the chat template puts after an assistant reply (``<|im_end|>`` for ChatML).

    Found by rendering a probe conversation and taking the first special token after the reply; falls back
    to ``eos_token_id``.
    """
    try:
        return _EOT_CACHE[tokenizer]
    except (KeyError, TypeError):
        pass
    eot: int | None = None
    try:
        text = _chat_text(
            tokenizer,
            [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _SENTINEL}],
            add_generation_prompt=False,
        )
        after = text[text.rindex(_SENTINEL) + len(_SENTINEL) :]
        special = set(tokenizer.all_special_ids)
        eot = next((t for t in _encode(tokenizer, after) if t in special), None) if after else None
    except (ValueError, TypeError, KeyError):  # templates that reject the probe, or no template
        eot = None
    if eot is None:
        eot = tokenizer.eos_token_id
    if eot is None:
        raise DataError(
            "the tokenizer has neither an end-of-turn token in its chat template nor an eos token"
        )
    with contextlib.suppress(TypeError):  # tokenizers that cannot be weakly referenced are not cached
        _EOT_CACHE[tokenizer] = eot
    return int(eot)


def tokenize_sft(
    tokenizer: Any,
    ex: SFTExample,
    max_length: int,
    train_on_prompt: bool = False,
    *,
    loss_scale: str | LossScale = "default",
) -> tuple[list[int], list[float]]:
    """``(input_ids, weights)`` for one SFT conversation: one loss weight per token.

    ``input_ids`` is the conversation rendered with the chat template, cut into contexts (see
    :mod:`raylhf.data.loss_scale`): for each assistant turn, the template text since the previous reply (role headers,
    system / user / tool turns; ``OTHER``), the reply's tokens (``RESPONSE``) and the template's end-of-turn
    token (``SUFFIX``); whatever the template puts after the last reply is dropped. Each context is tokenized on
    its own and its tokens get the weight the ``loss_scale`` strategy (a registered name or an instance) gives
    it; ``train_on_prompt`` means the ``all`` strategy. A turn's ``SFTExample.loss`` override sets its reply and
    end-of-turn weights to 1.0 / 0.0. Both lists are truncated to ``max_length`` from the right (the tail is
    cut). A template that rewrites earlier turns once later ones follow (so that the conversation is not the
    concatenation of its prefixes) raises :class:`DataError`.
    """
    if max_length <= 0:
        raise ValueError(f"max_length must be positive, got {max_length}")
    if train_on_prompt:
        loss_scale = "all"
    strategy = get_loss_scale(loss_scale) if isinstance(loss_scale, str) else loss_scale
    turns = ex.turns()
    overrides = ex.loss or [None] * len(turns)
    if len(overrides) != len(turns):
        raise ValueError(f"SFTExample.loss has {len(overrides)} entries for {len(turns)} turns")
    replies = [k for k, t in enumerate(turns) if t["role"] == "assistant"]
    eot = end_of_turn_id(tokenizer)
    eot_text = tokenizer.decode([eot])
    ids: list[int] = []
    weights: list[float] = []

    def add(context: str, kind: ContextType, last: bool, query: str | None, override: bool | None) -> None:
        for piece, w in checked_loss_scale(strategy, context, kind, last, query):
            toks = [eot] if kind is ContextType.SUFFIX and piece == eot_text else _encode(tokenizer, piece)
            ids.extend(toks)
            weights.extend([w if override is None else float(override)] * len(toks))

    consumed = ""  # the template text covered so far
    query: str | None = None
    for k in replies:
        if k == 0:
            raise DataError("the conversation starts with an assistant turn; put the turn it answers before it")
        prompt_text = _chat_text(tokenizer, turns[:k], add_generation_prompt=True)
        if not prompt_text.startswith(consumed):
            raise DataError(
                "the chat template renders an earlier part of this conversation differently once later turns "
                "follow (e.g. it drops reasoning from past replies, or does not end a reply with its end-of-turn "
                f"token {eot_text!r}), so its replies cannot be trained in one sequence; split the conversation "
                "into one row per reply"
            )
        query = next((t["content"] for t in reversed(turns[:k]) if t["role"] == "user"), query)
        last = k == replies[-1]
        add(prompt_text[len(consumed):], ContextType.OTHER, last, query, None)
        add(turns[k]["content"], ContextType.RESPONSE, last, query, overrides[k])
        add(eot_text, ContextType.SUFFIX, last, query, overrides[k])
        consumed = prompt_text + turns[k]["content"] + eot_text
    return ids[:max_length], weights[:max_length]


def drop_long_prompts(
    tokenizer: Any, examples: list[PromptExample], max_prompt_length: int
) -> tuple[list[PromptExample], int]:
    """Keep the examples whose rendered prompt has at most ``max_prompt_length`` tokens.

    Returns ``(kept, n_dropped)``; the order of the kept examples is preserved.
    """
    if not examples:
        return [], 0
    texts = [_chat_text(tokenizer, ex.messages, add_generation_prompt=True) for ex in examples]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    kept = [ex for ex, toks in zip(examples, ids, strict=True) if len(toks) <= max_prompt_length]
    return kept, len(examples) - len(kept)
