"""What `raylhf export --run` names (raylhf/tools/export.py): a peft adapter with its base model and tokenizer, or
a full checkpoint; and the output's checks. No heavy imports: this runs before torch loads."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

ADAPTER_CONFIG = "adapter_config.json"


class ExportError(ValueError):
    """A source that cannot be exported, or an output that cannot be written; the message says what to change."""


@dataclass
class Source:
    kind: str  # "adapter" (merge it into base) or "full" (copy it)
    path: Path
    base: str | None = None  # the adapter's base model
    tokenizer: Path | None = None  # where the tokenizer files are (None: the base model's)


def _has_weights(d: Path) -> bool:
    return (d / "config.json").is_file()


def _latest_step_hf(run: Path) -> Path | None:
    steps = sorted((p for p in (run / "checkpoints").glob("step-*") if (p / "hf").is_dir()),
                   key=lambda p: p.name)
    return steps[-1] / "hf" if steps else None


def resolve_source(run: str | Path, base: str | None = None) -> Source:
    """What ``--run`` names: an adapter (with its base model and tokenizer) or a full checkpoint."""
    d = Path(run)
    if not d.is_dir():
        raise ExportError(f"--run {run}: no such directory")
    if not (d / ADAPTER_CONFIG).is_file() and not _has_weights(d):
        inner = next((c for c in (d / "checkpoint", d / "hf") if c.is_dir()), None) or _latest_step_hf(d)
        if inner is None:
            raise ExportError(f"--run {run}: neither an adapter ({ADAPTER_CONFIG}), a checkpoint (config.json), a "
                              "run dir (checkpoint/ or checkpoints/step-*/hf) nor a checkpoint step dir (hf/)")
        return resolve_source(inner, base)
    if _has_weights(d):
        return Source("full", d)
    try:
        cfg = json.loads((d / ADAPTER_CONFIG).read_text())
    except ValueError as e:
        raise ExportError(f"{d / ADAPTER_CONFIG}: unreadable ({e})") from None
    base = base or cfg.get("base_model_name_or_path")
    if not base:
        raise ExportError(f"{d / ADAPTER_CONFIG} names no base_model_name_or_path; pass --base MODEL_DIR")
    if base.startswith((".", "/", "~")) and not Path(base).expanduser().is_dir():
        raise ExportError(f"the adapter's base model {base} is not there (moved or on another machine); pass --base "
                          "MODEL_DIR")
    tokenizer = next((t for t in (d, d.parent) if (t / "tokenizer_config.json").is_file()), None)
    return Source("adapter", d, base, tokenizer)


def check_output(out: str | Path, source: Source) -> Path:
    o = Path(out)
    if o.exists() and (not o.is_dir() or any(o.iterdir())):
        raise ExportError(f"--output {out} exists and is not an empty directory; choose a new path")
    if o.resolve() == source.path.resolve() or source.path.resolve() in o.resolve().parents:
        raise ExportError(f"--output {out} is inside the source {source.path}; choose a path outside it")
    return o
