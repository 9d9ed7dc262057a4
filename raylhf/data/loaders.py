"""The loaders: prompt, SFT and preference datasets from files or a ``data`` config section, every problem
reported eagerly as one DataError naming the file and the row."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, overload

if TYPE_CHECKING:
    from raylhf.config.sections import DataConfig
from raylhf.data.formats import (
    MAPPING_HINT,
    apply_column_mapping,
    check_messages,
    completion_messages,
    detect_format,
    prompt_messages,
    require_columns,
    with_system,
)
from raylhf.data.readers import read_source
from raylhf.data.types import FORMATS, DataError, PreferenceExample, PromptExample, Row, SFTExample, type_name


def renamed_sources(files: Sequence[str], columns: Mapping[str, str] | None, max_samples: int | None,
                    split: str | None) -> Iterator[tuple[str, Iterator[Row]]]:
    """Each source with its rows, at most ``max_samples`` over all of them; a row's columns are renamed
    (``data.columns``) as it is taken, a renaming error naming the row. An empty source is a DataError."""
    taken = 0
    for source in files:
        remaining = None if max_samples is None else max_samples - taken
        if remaining is not None and remaining <= 0:
            return
        rows = read_source(source, remaining, split)
        if not rows:
            raise DataError("empty dataset (no rows)", source=os.fspath(source))
        taken += len(rows)
        yield source, _renamed(rows, columns)


def _renamed(rows: list[Row], columns: Mapping[str, str] | None) -> Iterator[Row]:
    for row in rows:
        try:
            row.data = apply_column_mapping(row.data, columns)
        except DataError as e:
            raise row.error(e.problem) from None
        yield row


def load_rows(
    files: Sequence[str] | str,
    *,
    format: str,
    columns: Mapping[str, str] | None,
    max_samples: int | None,
    accepted: tuple[str, ...],
    kind: str,
    split: str | None = None,
) -> list[tuple[Row, str]]:
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
    out: list[tuple[Row, str]] = []
    first: tuple[str, str] | None = None  # (file, format) that fixed the shared format
    for source, rows in renamed_sources(files, columns, max_samples, split):
        fmt = format
        for row in rows:
            if fmt == "auto":
                try:
                    fmt = detect_format(row.data)
                except DataError as e:
                    raise row.error(e.problem) from None
                if fmt not in accepted:
                    raise row.error(
                        f"detected format {fmt!r} (columns {sorted(row.data)}) cannot be used for {kind} data; "
                        f"expected one of {', '.join(accepted)}; " + MAPPING_HINT
                    )
                if first is not None and first[1] != fmt:
                    raise DataError(
                        f"has format {fmt!r} but {first[0]} has format {first[1]!r}; "
                        "all files of one split must share a format",
                        source=os.fspath(source),
                    )
                first = first or (os.fspath(source), fmt)
            require_columns(row, fmt)
            out.append((row, fmt))
    return out


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
    for row, fmt in load_rows(
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
            turns = check_messages(data["messages"], "messages", row)
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
            prompt = prompt_messages(data["prompt"], row)
            extras = {k: v for k, v in data.items() if k != "prompt"}
            if fmt == "sft":
                if not isinstance(data["response"], str):
                    raise row.error(
                        f"wrong type: 'response' must be a string, got {type_name(data['response'])}"
                    )
                if extras.get("solution") is None:
                    extras["solution"] = data["response"]
        examples.append(PromptExample(with_system(prompt, system_prompt), extras))
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
    for row, fmt in load_rows(
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
            turns = check_messages(data["messages"], "messages", row)
            if turns[-1]["role"] != "assistant":
                raise row.error(
                    f"the last turn of 'messages' must be the assistant reply to train on, got {turns[-1]['role']!r}"
                )
            prompt, response = turns[:-1], turns[-1]["content"]
            if not prompt:
                raise row.error("'messages' holds only an assistant turn; there is no prompt before it")
            flags = _loss_flags(data["messages"], "messages", row)
        else:
            prompt = prompt_messages(data["prompt"], row)
            prefix, response = completion_messages(data["response"], "response", row)
            prompt = prompt + prefix
            flags = _loss_flags(data["prompt"], "prompt", row) + _loss_flags(data["response"], "response", row)
        if prompt[0]["role"] == "assistant":
            raise row.error("the conversation starts with an assistant turn; put the user (or system) turn it "
                            "answers before it")
        full = with_system(prompt, system_prompt)
        flags = [None] * (len(full) - len(prompt)) + flags
        examples.append(SFTExample(full, response, flags if any(f is not None for f in flags) else None))
    return examples


def _loss_flags(value: Any, column: str, row: Row) -> list[bool | None]:
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
    for row, _fmt in load_rows(
        files,
        format=format,
        columns=columns,
        max_samples=max_samples,
        accepted=("preference",),
        kind="preference",
        split=split,
    ):
        data = row.data
        c_prefix, chosen = completion_messages(data["chosen"], "chosen", row)
        r_prefix, rejected = completion_messages(data["rejected"], "rejected", row)
        if c_prefix != r_prefix:
            raise row.error("'chosen' and 'rejected' differ before their final assistant reply")
        prompt = prompt_messages(data["prompt"], row) if data.get("prompt") is not None else []
        prompt = prompt + c_prefix
        if not prompt:
            raise row.error(
                "no prompt: add a 'prompt' column or give 'chosen'/'rejected' as message lists that start "
                "with the prompt turns; " + MAPPING_HINT
            )
        examples.append(PreferenceExample(with_system(prompt, system_prompt), chosen, rejected))
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
