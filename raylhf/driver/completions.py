"""Generations a user can read: ``logging.log_completions: N`` sampled episodes per training step (docs/logging.md).

Each step's records go to ``<run_dir>/rollouts/step-<step>.jsonl`` (one JSON object per line) and to the
trackers (:meth:`raylhf.driver.metrics_log.MetricsLogger.log_completions`: a W&B table, TensorBoard text). One
record::

    {"step": 3, "index": 8, "prompt_index": 1, "prompt": "<|im_start|>user ...", "completion": "... 42<|im_end|>",
     "reward": 1.0, "rewards": {"accuracy": 1.0, "format": 0.0}, "advantage": 0.71, "version": 2,
     "finish_reason": "stop", "response_length": 37, "episode": {"turns": 2, "tool_calls": 1, "tool_errors": 0}}

``prompt`` and ``completion`` are decoded from the token ids with special tokens kept, so they read as exactly what
the model saw and wrote. In a multi-turn agent episode the tokens the environment wrote (``response_mask`` 0: tool
answers) are decoded span by span and wrapped in ``<env>...</env>``; everything outside those tags was sampled by
the model. ``reward`` is the weighted total (null: no reward scored it), ``rewards`` each reward function's value,
``advantage`` the sample's scalar advantage (a per-token row: the mean over its non-zero entries), ``episode`` only
for agent episodes. Which rollouts: sample 0 of each prompt in batch order, then sample 1 of each, ... until N
are picked (:func:`pick`); no random number is drawn, so logging changes nothing about the run.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from raylhf.core.batch import Rollout

if TYPE_CHECKING:
    from raylhf.driver.phases import Scores

ROLLOUTS_DIR = "rollouts"
ENV_OPEN, ENV_CLOSE = "<env>", "</env>"


def pick(rollouts: Sequence[Rollout], n: int) -> list[int]:
    """Indices (ascending) of ``n`` rollouts spread over the step's prompts: sample 0 of every prompt in batch
    order, then sample 1 of every prompt, and so on. Deterministic; consumes no RNG."""
    groups: dict[int, list[int]] = {}
    for i, r in enumerate(rollouts):
        groups.setdefault(r.prompt_index, []).append(i)
    n = min(max(n, 0), len(rollouts))
    picked: list[int] = []
    depth = 0
    while len(picked) < n:
        picked += [members[depth] for members in groups.values() if depth < len(members)][: n - len(picked)]
        depth += 1
    return sorted(picked)


def decode_completion(tokenizer: Any, rollout: Rollout) -> str:
    """The response as text; environment-written spans (``response_mask`` 0) decoded apart and wrapped in
    ``<env>...</env>``."""
    ids, mask = rollout.response_ids, rollout.response_mask
    if mask is None:
        return tokenizer.decode(ids, skip_special_tokens=False)
    if len(mask) != len(ids):
        raise ValueError(f"response_mask has {len(mask)} entries for {len(ids)} response tokens")
    out: list[str] = []
    start = 0
    for end in range(1, len(ids) + 1):
        if end == len(ids) or (mask[end] != 0) != (mask[start] != 0):
            text = tokenizer.decode(ids[start:end], skip_special_tokens=False)
            out.append(text if mask[start] != 0 else f"{ENV_OPEN}{text}{ENV_CLOSE}")
            start = end
    return "".join(out)


def advantage_of(advantages: Any, i: int) -> float | None:
    """Sample ``i``'s scalar advantage from ``advantages``: a ``[N]`` tensor or list of floats, a ``[N, T]`` tensor
    or a list of per-token tensors (then the mean over the row's non-zero entries, the trained tokens); None
    when there are none or the value is not finite."""
    if advantages is None or i >= len(advantages):
        return None
    a = advantages[i]
    if isinstance(a, torch.Tensor) and a.numel() != 1:
        a = a.flatten().float()
        a = a[a != 0]
        return _finite(float(a.mean())) if a.numel() else 0.0
    return _finite(float(a))


def completion_records(step: int, rollouts: Sequence[Rollout], scores: Scores | None, advantages: Any,
                       tokenizer: Any, n: int) -> list[dict[str, Any]]:
    """The records (module doc) of ``n`` of the step's rollouts (:func:`pick`); ``scores`` and ``advantages`` are
    aligned with ``rollouts`` (either may be None: nulls in the records)."""
    records = []
    for i in pick(rollouts, n):
        r = rollouts[i]
        rec: dict[str, Any] = {
            "step": step, "index": i, "prompt_index": r.prompt_index,
            "prompt": tokenizer.decode(r.prompt_ids, skip_special_tokens=False),
            "completion": decode_completion(tokenizer, r),
            "reward": None if scores is None else _finite(float(scores.total[i])),
            "rewards": {} if scores is None else {name: None if values[i] is None else _finite(float(values[i]))
                                                  for name, values in scores.per_function.items()},
            "advantage": advantage_of(advantages, i),
            "version": r.version, "finish_reason": r.finish_reason, "response_length": len(r.response_ids),
        }
        if r.episode is not None:
            rec["episode"] = dict(r.episode)
        records.append(rec)
    return records


def completions_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / ROLLOUTS_DIR / f"step-{step}.jsonl"


def write_completions(run_dir: Path, step: int, records: list[dict[str, Any]]) -> Path | None:
    """Write ``records`` to ``<run_dir>/rollouts/step-<step>.jsonl``, one JSON object per line; None (no file)
    when there are none. The file is replaced, not appended to: a resumed run that repeats a step rewrites it."""
    if not records:
        return None
    path = completions_path(run_dir, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    tmp.replace(path)
    return path


def table(records: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """Columns and rows of a tracker table (W&B): one row per record, ``reward/<name>`` and ``episode/<key>``
    flattened into columns of their own."""
    names = sorted({k for r in records for k in r.get("rewards", {})})
    keys = sorted({k for r in records for k in r.get("episode") or {}})
    head = ["step", "index", "prompt_index", "prompt", "completion", "reward"]
    tail = ["advantage", "version", "finish_reason", "response_length"]
    columns = [*head, *(f"reward/{k}" for k in names), *tail, *(f"episode/{k}" for k in keys)]
    rows = [[r.get(c) for c in head] + [r.get("rewards", {}).get(k) for k in names] + [r.get(c) for c in tail]
            + [(r.get("episode") or {}).get(k) for k in keys] for r in records]
    return columns, rows


def to_markdown(records: list[dict[str, Any]]) -> str:
    """The records as Markdown (TensorBoard's text tab): a summary line each, prompt and completion as code
    blocks (indented, so no text can close them)."""
    parts = []
    for r in records:
        info = [f"reward {_fmt(r.get('reward'))}",
                *(f"{k} {_fmt(v)}" for k, v in r.get("rewards", {}).items()),
                f"advantage {_fmt(r.get('advantage'))}", f"version {r.get('version')}",
                f"{r.get('finish_reason')}", f"{r.get('response_length')} tokens",
                *(f"{k} {v}" for k, v in (r.get("episode") or {}).items())]
        parts.append(f"**#{r.get('index')}** (prompt {r.get('prompt_index')}): " + ", ".join(info)
                     + "\n\nprompt:\n\n" + _code(r.get("prompt", "")) + "\n\ncompletion:\n\n"
                     + _code(r.get("completion", "")))
    return "\n\n---\n\n".join(parts)


def _code(text: str) -> str:
    return "\n".join("    " + line for line in (text.splitlines() or [""]))


def _fmt(v: Any) -> str:
    return "null" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


def _finite(v: float) -> float | None:
    """``v`` to 7 significant digits (a float32's precision: 0.7, not 0.699999988); None when not finite."""
    return float(f"{v:.7g}") if math.isfinite(v) else None
