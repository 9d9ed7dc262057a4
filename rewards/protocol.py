"""Wire formats of remote rewards: raylhf v1 and OpenRLHF's, for the client (``rewards/remote.py``) and the
server (``rewards/server.py``). docs/rewards.md ("Remote endpoints and the reward server") shows examples.

raylhf v1::

    POST {"kind": "orm"|"prm", "items": [{"prompt", "completion", "messages"?, "completion_ids"?,
                                          "label"?, "columns"?, "rendered_prompt"?}]}
    ->   {"rewards": [number | null | [number, ...]], "metrics"?: {name: number}}

OpenRLHF (``--remote_rm_url``)::

    POST {"query": [prompt + response], "prompts": [prompt], "labels": [label]}
    ->   {"rewards": [number], "scores"?: [...], "extra_logs"?: {...}}

``null`` means "not scored"; a list is one score per step (kind=prm).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from rewards.base import RewardBatch, Score

SNIPPET_CHARS = 200


class RemoteRewardError(RuntimeError):
    """A remote reward endpoint failed; the message names the endpoint and what was wrong."""


# -------------------------------------------------------------------------------------------- request models


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str
    content: Any = None


class ScoreItem(BaseModel):
    """One completion of a raylhf v1 request."""

    model_config = ConfigDict(extra="ignore")

    prompt: str
    completion: str
    messages: list[ChatMessage] | None = None  # the whole conversation, ending with the completion
    completion_ids: list[int] | None = None
    label: Any = None
    columns: dict[str, Any] = Field(default_factory=dict)
    rendered_prompt: str | None = None  # the prompt after the chat template


class ScoreRequest(BaseModel):
    """raylhf v1 request body (``POST /score``)."""

    model_config = ConfigDict(extra="ignore")

    kind: Literal["orm", "prm"] = "orm"
    items: list[ScoreItem]


class OpenRLHFRequest(BaseModel):
    """OpenRLHF request body (``POST /get_reward``); ``prompts`` / ``labels`` may be missing."""

    model_config = ConfigDict(extra="ignore")

    query: list[str]
    prompts: list[str] | None = None
    labels: list[Any] | None = None

    @model_validator(mode="after")
    def _lengths(self) -> OpenRLHFRequest:
        for name, col in (("prompts", self.prompts), ("labels", self.labels)):
            if col is not None and len(col) != len(self.query):
                raise ValueError(f"'{name}' has {len(col)} entries for {len(self.query)} queries")
        return self


# --------------------------------------------------------------------------------------------- client: build


def json_default(obj: Any) -> Any:
    """JSON fallback for dataset values: numpy scalars/arrays, sets, anything else as its str()."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    return str(obj)


def encode(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, default=json_default, ensure_ascii=False).encode()


def _labels(batch: RewardBatch, label_column: str) -> list[Any]:
    col = batch.columns.get(label_column)
    return list(col) if col is not None else [None] * len(batch)


def raylhf_request(batch: RewardBatch, kind: str, label_column: str) -> dict[str, Any]:
    """The raylhf v1 request for ``batch``: every column goes along, the label column also as ``label``."""
    labels = _labels(batch, label_column)
    items = [
        {
            "prompt": batch.prompts[i],
            "completion": batch.completions[i],
            "messages": batch.messages(i),
            "completion_ids": list(batch.completion_ids[i]),
            "label": labels[i],
            "columns": {k: v[i] for k, v in batch.columns.items()},
            "rendered_prompt": batch.rendered_prompts[i],
        }
        for i in range(len(batch))
    ]
    return {"kind": kind, "items": items}


def openrlhf_request(batch: RewardBatch, label_column: str) -> dict[str, Any]:
    """OpenRLHF's request: ``query`` = rendered prompt + completion, ``prompts`` = rendered prompt."""
    prompts = list(batch.rendered_prompts)
    return {
        "query": [p + c for p, c in zip(prompts, batch.completions, strict=True)],
        "prompts": prompts,
        "labels": _labels(batch, label_column),
    }


def build_request(protocol: str, batch: RewardBatch, kind: str, label_column: str) -> dict[str, Any]:
    if protocol == "openrlhf":
        return openrlhf_request(batch, label_column)
    return raylhf_request(batch, kind, label_column)


# --------------------------------------------------------------------------------------------- client: parse


def snippet(body: bytes | str, limit: int = SNIPPET_CHARS) -> str:
    """The start of a response body on one line, for error messages."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


@dataclass
class ParsedResponse:
    rewards: list[Score]
    metrics: dict[str, float] = field(default_factory=dict)


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_score(v: Any, allow_steps: bool) -> Score:
    if v is None:
        return None
    if _finite(v):
        return float(v)
    if allow_steps and isinstance(v, list) and all(_finite(x) for x in v):
        return [float(x) for x in v]
    raise ValueError


def _numeric_metrics(raw: Any, prefix: str = "") -> dict[str, float]:
    """Numbers (and means of number lists, like OpenRLHF's per-sample extra_logs) from a metrics mapping."""
    out: dict[str, float] = {}
    if not isinstance(raw, dict):
        return out
    for k, v in raw.items():
        if _finite(v):
            out[f"{prefix}{k}"] = float(v)
        elif isinstance(v, list) and v and all(_finite(x) for x in v):
            out[f"{prefix}{k}"] = sum(v) / len(v)
    return out


def parse_response(protocol: str, body: bytes | str, n: int, kind: str, endpoint: str) -> ParsedResponse:
    """Validate a response body: a JSON object whose ``rewards`` has ``n`` entries, each a finite number or
    null (or, for kind=prm, a list of numbers). Anything else raises ``RemoteRewardError`` naming
    ``endpoint``."""

    def fail(problem: str) -> RemoteRewardError:
        return RemoteRewardError(f"{endpoint}: {problem}; body: {snippet(body)!r}")

    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise fail(f"response is not valid JSON ({e}); is the URL the reward endpoint and the protocol "
                   f"'{protocol}' right?") from None
    if not isinstance(data, dict):
        raise fail(f"response is a JSON {type(data).__name__}, expected an object with 'rewards'")
    if "rewards" not in data:
        raise fail(f"response has no 'rewards' key (keys: {sorted(data)[:10]}); protocol '{protocol}' "
                   "expects {\"rewards\": [...]}")
    rewards = data["rewards"]
    if not isinstance(rewards, list):
        raise fail(f"'rewards' is a {type(rewards).__name__}, expected a list")
    if len(rewards) != n:
        raise fail(f"'rewards' has {len(rewards)} entries for {n} items sent")
    allow_steps = kind == "prm"
    out: list[Score] = []
    for i, v in enumerate(rewards):
        try:
            out.append(_check_score(v, allow_steps))
        except ValueError:
            expected = "a finite number, null or a list of numbers (kind=prm)" if allow_steps else (
                "a finite number or null (per-step lists need kind: prm)")
            raise fail(f"rewards[{i}] is {snippet(json.dumps(v), 60)}, expected {expected}") from None
    metrics = _numeric_metrics(data.get("metrics"))
    metrics.update(_numeric_metrics(data.get("extra_logs")))
    return ParsedResponse(out, metrics)


# ----------------------------------------------------------------------------------------------- server side


def _prompt_messages(item: ScoreItem) -> list[dict[str, Any]]:
    if not item.messages:
        return [{"role": "user", "content": item.prompt}]
    msgs = [m.model_dump() for m in item.messages]
    if len(msgs) > 1 and msgs[-1]["role"] == "assistant":
        msgs = msgs[:-1]  # the completion itself
    return msgs


def batch_from_score_request(req: ScoreRequest, label_column: str) -> RewardBatch:
    """A ``RewardBatch`` from a raylhf v1 request; an item's ``label`` fills ``columns[label_column]`` where
    the item's columns lack it."""
    items = req.items
    keys = sorted({k for it in items for k in it.columns})
    columns: dict[str, list[Any]] = {k: [it.columns.get(k) for it in items] for k in keys}
    if any(it.label is not None for it in items):  # an item's own column wins over its label
        columns[label_column] = [it.columns.get(label_column, it.label) for it in items]
    return RewardBatch(
        prompts=[it.prompt for it in items],
        completions=[it.completion for it in items],
        completion_ids=[list(it.completion_ids or []) for it in items],
        prompt_messages=[_prompt_messages(it) for it in items],
        columns=columns,
        rendered_prompts=[it.rendered_prompt or it.prompt for it in items],
    )


def split_query(query: str, prompt: str | None) -> str:
    """The completion inside an OpenRLHF query: what follows the prompt, else the whole query."""
    return query[len(prompt):] if prompt and query.startswith(prompt) else query


def batch_from_openrlhf_request(req: OpenRLHFRequest, label_column: str) -> RewardBatch:
    """A ``RewardBatch`` from an OpenRLHF request; the labels become ``columns[label_column]``."""
    n = len(req.query)
    prompts = req.prompts if req.prompts is not None else [""] * n
    columns = {label_column: list(req.labels)} if req.labels is not None else {}
    return RewardBatch(
        prompts=list(prompts),
        completions=[split_query(q, p) for q, p in zip(req.query, prompts, strict=True)],
        columns=columns,
        rendered_prompts=list(prompts),
    )
