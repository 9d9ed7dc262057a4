"""Reading rows from a source: JSON Lines, JSON, Parquet, ``save_to_disk`` directories, hub ids; each row keeps
its file and line for messages."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    pass
from raylhf.data.types import DataError, Row, type_name

JSONL_SUFFIXES = (".jsonl", ".ndjson")


JSON_SUFFIXES = (".json",)


PARQUET_SUFFIXES = (".parquet", ".pq")


DATA_SUFFIXES = JSONL_SUFFIXES + JSON_SUFFIXES + PARQUET_SUFFIXES


# suffixes that make a non-existing string look like a (mistyped) file path rather than a hub id
PATHLIKE_SUFFIXES = (*DATA_SUFFIXES, ".csv", ".tsv", ".txt", ".arrow", ".gz", ".zst")


def looks_like_path(source: str) -> bool:
    """Whether a string that does not exist locally is meant as a file path (not a hub id)."""
    if source.startswith(("/", ".", "~")) or "\\" in source or re.match(r"^[A-Za-z]:[\\/]", source):
        return True
    if source.lower().endswith(PATHLIKE_SUFFIXES):
        return True
    # hub ids are "name" or "owner/name" (optionally ":config:split"): at most one slash
    return source.split(":", 1)[0].count("/") > 1


def check_object(value: Any, source: str, number: int, unit: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise DataError(
            f"expected a JSON object (one row with named columns), got {type_name(value)}",
            source=source,
            row=number,
            unit=unit,
        )
    return value


def _read_jsonl_text(text: str, source: str, limit: int | None) -> list[Row]:
    rows: list[Row] = []
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
        rows.append(Row(check_object(value, source, lineno, "line"), source, lineno, "line"))
    return rows


def _read_text(path: Path, source: str) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"not UTF-8 text ({e.reason} at byte {e.start})", source=source) from None
    except OSError as e:
        raise DataError(f"cannot read file ({e.strerror or e})", source=source) from None


def _read_json(path: Path, source: str, limit: int | None) -> list[Row]:
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
            return [Row(value, source, 1, "line")]  # a one-record JSON Lines file named .json
    if not isinstance(value, list):
        raise DataError(
            f"top-level JSON must be an array of row objects (or JSON Lines), got {type_name(value)}",
            source=source,
        )
    if limit is not None:
        value = value[:limit]
    return [Row(check_object(v, source, i, "row"), source, i) for i, v in enumerate(value, start=1)]


def _read_parquet(path: Path, source: str, limit: int | None) -> list[Row]:
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
    return [Row(r, source, i) for i, r in enumerate(records, start=1)]


def _rows_from_hf(ds: Any, source: str, limit: int | None) -> list[Row]:
    if limit is not None and len(ds) > limit:
        ds = ds.select(range(limit))
    return [Row(dict(r), source, i) for i, r in enumerate(ds.to_list(), start=1)]


def _pick_split(dd: Any, source: str, split: str | None) -> Any:
    names = list(dd.keys())
    if split is not None and split in dd:
        return dd[split]
    if split is None and "train" in dd:
        return dd["train"]
    if len(names) == 1:
        return dd[names[0]]
    raise DataError(f"dataset has splits {names} but no split {split or 'train'!r}", source=source)


def _read_saved_dataset(path: Path, source: str, limit: int | None, split: str | None) -> list[Row]:
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


def _read_hub(source: str, limit: int | None, split: str | None) -> list[Row]:
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


def _read_file(path: Path, source: str, limit: int | None) -> list[Row]:
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


def read_source(source: str, limit: int | None = None, split: str | None = None) -> list[Row]:
    """Read one source into rows that remember their file and row/line number."""
    if not isinstance(source, (str, os.PathLike)):
        raise DataError(f"a data source must be a path or hub id string, got {type_name(source)}")
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
        rows: list[Row] = []
        for f in files:
            rows.extend(_read_file(f, str(f), None if limit is None else limit - len(rows)))
            if limit is not None and len(rows) >= limit:
                break
        return rows
    if path.exists():
        return _read_file(path, source, limit)
    if looks_like_path(source):
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
    return [r.data for r in read_source(source, max_samples, split)]
