"""Resumable checkpoints: layout, atomic commit, verification, pruning and ``--resume auto|PATH``.

A checkpoint is ``<run dir>/checkpoints/step-<NNNNNN>/``::

    engine/            DeepSpeed engine state per rank: model, optimizer, LR scheduler (+ the rank's step count)
    rng/rank-<r>.pt    each policy rank's torch / random / numpy RNG states
    hf/                the HF-format export of the weights (for users; not read by resume)
    driver.pt          the driver's RNG states
    trainer_state.json the step, the data stream position, guard counters, restarts
    manifest.json      every file above with its size and SHA-256; written last

It is written under ``checkpoints/.tmp-step-<N>-<pid>/`` and renamed into place only once the manifest
is on disk, so a directory named ``step-<N>`` is complete unless it was damaged later; ``verify`` checks
the manifest's sizes and hashes, and ``--resume auto`` skips (with a warning) any checkpoint that fails.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from raylhf.core.errors import RunError

FORMAT = 1
CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
MANIFEST = "manifest.json"
DRIVER_RNG = "driver.pt"
_STEP_DIR = re.compile(r"step-(\d+)")


class ResumeError(RuntimeError, RunError):
    """``checkpoint.resume`` names something that cannot be resumed; the message says what to pass."""


def step_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"step-{step:06d}"


def staging_dir(run_dir: Path, step: int) -> Path:
    """A fresh temporary directory for the checkpoint of ``step`` (removed first if a crash left it)."""
    tmp = Path(run_dir) / CHECKPOINTS / f".tmp-step-{step:06d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def _files(root: Path) -> Iterator[Path]:
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            yield p


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def commit(tmp: Path, final: Path, state: dict[str, Any]) -> Path:
    """Write the trainer state and the manifest into ``tmp``, then rename it to ``final`` (atomic on one
    filesystem). An existing ``final`` (a step saved again after a resume) is replaced."""
    (tmp / STATE_FILE).write_text(json.dumps({"format": FORMAT, **state}, indent=1))
    manifest = {str(p.relative_to(tmp)): {"size": p.stat().st_size, "sha256": _sha256(p)} for p in _files(tmp)}
    with (tmp / MANIFEST).open("w") as f:
        json.dump({"format": FORMAT, "step": state.get("step"), "files": manifest}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(tmp)
    if final.exists():
        old = final.with_name(f".old-{final.name}-{os.getpid()}")
        final.rename(old)
        shutil.rmtree(old, ignore_errors=True)
    tmp.rename(final)
    _fsync_dir(final.parent)
    return final


def verify(path: Path, hashes: bool = True) -> str:
    """Why ``path`` is not a complete, intact checkpoint; "" when it is (every manifest file present with
    its size and, with ``hashes``, its SHA-256; the trainer state readable)."""
    path = Path(path)
    if not path.is_dir():
        return "not a directory"
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        files = manifest["files"]
    except FileNotFoundError:
        return f"no {MANIFEST} (an interrupted write)"
    except (ValueError, KeyError, TypeError) as e:
        return f"{MANIFEST} unreadable ({e})"
    for rel, meta in files.items():
        p = path / rel
        if not p.is_file():
            return f"{rel} missing"
        if p.stat().st_size != meta["size"]:
            return f"{rel} has {p.stat().st_size} bytes, the manifest says {meta['size']} (truncated?)"
        if hashes and _sha256(p) != meta["sha256"]:
            return f"{rel} does not match its SHA-256 in the manifest (corrupted)"
    try:
        state = read_state(path)
    except (OSError, ValueError) as e:
        return f"{STATE_FILE} unreadable ({e})"
    if state.get("format") != FORMAT:
        return f"format {state.get('format')!r}, this raylhf reads format {FORMAT}"
    return ""


def read_state(path: Path) -> dict[str, Any]:
    return json.loads((Path(path) / STATE_FILE).read_text())


def checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, dir) of every ``step-<N>`` directory of the run, oldest first (complete or not)."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_DIR.fullmatch(p.name))]
    return sorted(found)


@dataclass
class Found:
    path: Path | None
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def latest(run_dir: Path) -> Found:
    """The newest checkpoint of the run that verifies, and the newer ones skipped with the reason."""
    out = Found(None)
    for _, path in reversed(checkpoints(run_dir)):
        why = verify(path)
        if not why:
            out.path = path
            return out
        out.skipped.append((path, why))
    return out


def prune(run_dir: Path, keep_last: int | None) -> list[Path]:
    """Delete all but the newest ``keep_last`` complete checkpoints; returns what was deleted."""
    removed: list[Path] = []
    if keep_last is None:
        return removed
    complete = [p for _, p in checkpoints(run_dir) if (p / MANIFEST).is_file()]
    for p in complete[: max(0, len(complete) - keep_last)]:
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    return removed


def resolve_resume(spec: str | None, run_root: Path, run_name: str | None, algo: str) -> Path | None:
    """The checkpoint to resume from for ``checkpoint.resume`` (None: start fresh).

    ``auto``: the newest verified checkpoint of ``<run_root>/<run_name>`` when a run name is set, else of
    the newest ``<algo>-*`` run under ``run_root`` that has one; damaged newer ones are skipped with a
    warning; nothing found starts fresh. A path: a ``step-<N>`` checkpoint, or a run dir (its newest
    verified checkpoint); anything that does not verify is an error.
    """
    if not spec:
        return None
    if spec == "auto":
        if run_name:
            runs = [Path(run_root) / run_name]
        else:
            runs = sorted((p for p in Path(run_root).glob(f"{algo}-*") if p.is_dir()),
                          key=lambda p: p.stat().st_mtime, reverse=True)
        for run in runs:
            found = latest(run)
            _warn_skipped(found.skipped)
            if found.path is not None:
                return found.path
        where = runs[0] if run_name else f"{run_root}/{algo}-*"
        print(f"[resume] --resume auto: no complete checkpoint in {where}; starting fresh", flush=True)
        return None
    path = Path(spec).expanduser()
    if not path.exists():
        raise ResumeError(f"checkpoint.resume={spec!r}: no such file or directory; pass a checkpoint dir "
                          f"(<run dir>/{CHECKPOINTS}/step-<N>), a run dir, or auto")
    if _STEP_DIR.fullmatch(path.name):
        why = verify(path)
        if why:
            raise ResumeError(f"checkpoint.resume={spec!r} is not a complete checkpoint: {why}. Pass an older "
                              f"one from {path.parent}, or --resume auto to pick the newest complete one")
        return path
    found = latest(path)
    _warn_skipped(found.skipped)
    if found.path is None:
        raise ResumeError(f"checkpoint.resume={spec!r}: no complete checkpoint under {path / CHECKPOINTS} "
                          "(set checkpoint.save_every to write them)")
    return found.path


def _warn_skipped(skipped: list[tuple[Path, str]]) -> None:
    for path, why in skipped:
        print(f"[resume] warning: skipping {path}: {why}", flush=True)


def run_dir_of(checkpoint: Path) -> Path:
    """The run dir a checkpoint belongs to (``<run dir>/checkpoints/step-<N>``)."""
    return Path(checkpoint).resolve().parent.parent


# ---- RNG states ------------------------------------------------------------------------------------------

def rng_state() -> dict[str, Any]:
    """This process's torch (CPU and CUDA), ``random`` and numpy RNG states."""
    import numpy as np

    state: dict[str, Any] = {"torch": torch.get_rng_state(), "random": random.getstate(),
                             "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np

    torch.set_rng_state(state["torch"])
    random.setstate(state["random"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_rng(path: Path) -> None:
    torch.save(rng_state(), path)


def load_rng(path: Path) -> None:
    set_rng_state(torch.load(path, weights_only=False))  # our own file: numpy state holds arrays


# ---- save / restore through the policy group --------------------------------------------------------------

def save(policy: Any, run_dir: Path, step: int, trainer_state: dict[str, Any], keep_last: int | None,
         export_hf: bool = True, name: str = "raylhf", others: dict[str, Any] | None = None) -> Path:
    """Write the resumable checkpoint of ``step`` (every policy rank saves its part; the driver its RNG and
    ``trainer_state``; each trained group in ``others``, e.g. a critic, under its name), commit it atomically,
    prune to ``keep_last``."""
    tmp = staging_dir(run_dir, step)
    policy.call("save_state", str(tmp))
    for group_name, group in (others or {}).items():
        group.call("save_state", str(tmp / group_name))
    if export_hf:
        policy.call("save", str(tmp / "hf"))
    save_rng(tmp / DRIVER_RNG)
    final = commit(tmp, step_dir(run_dir, step), {"step": step, **trainer_state})
    removed = prune(run_dir, keep_last)
    print(f"[{name}] step {step}: checkpoint {final}" + (f" (removed {len(removed)} older)" if removed else ""),
          flush=True)
    return final


def restore(policy: Any, path: Path, others: dict[str, Any] | None = None) -> dict[str, Any]:
    """Load a checkpoint into the policy ranks (and the groups in ``others``, saved under their names);
    returns the trainer state. Restore the driver's RNG with :func:`load_driver_rng` just before the first
    resumed step (start-up consumes random numbers)."""
    policy.call("load_state", str(path))
    for group_name, group in (others or {}).items():
        if not (Path(path) / group_name).is_dir():
            raise ResumeError(f"{path} holds no {group_name} state: it was written by a run without a "
                              f"{group_name}; resume with the same algorithm settings")
        group.call("load_state", str(Path(path) / group_name))
    return read_state(path)


def load_driver_rng(path: Path) -> None:
    load_rng(Path(path) / DRIVER_RNG)
