"""The reward interfaces every scorer is reduced to, and the ms-swift-style base classes users subclass.

Three ways to bring a reward, all ending as a ``Scorer`` (``async score(batch) -> list[Score]``):

* a TRL-style function ``f(prompts, completions, completion_ids, **columns) -> list[float | None]``
  (sync or ``async def``);
* an ms-swift-style class: ``class MyORM(ORM)`` with ``__call__(self, infer_requests, ground_truths=None,
  **kwargs)`` (the 2.x/early 3.x shape) or ``__call__(self, completions, **kwargs)`` (later 3.x), and
  ``class MyPRM(PRM)`` returning one score or one score per step for each completion;
* a remote HTTP endpoint (``rewards/remote.py``) or a reward model (``rewards/model.py``).

``None`` as a score means "not scored": it is excluded from the sums and counted in the metrics.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, Union

from raylhf.plugins.registry import REWARDS

Score = Union[float, list[float], None]  # one value, per-step values (PRM), or not scored
Messages = list[dict[str, Any]]


@dataclass
class InferRequest:
    """One completion as ms-swift passes it to ORMs/PRMs: ``.messages`` ends with the assistant's answer."""

    messages: Messages
    images: list[Any] = field(default_factory=list)
    tools: list[Any] | None = None
    objects: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Any:  # some plugins index requests like dicts
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default)

    def to_dict(self) -> dict[str, Any]:
        return {"messages": self.messages, "images": self.images, "tools": self.tools, "objects": self.objects}


@dataclass
class RewardBatch:
    """What every scorer receives: one entry per completion, columns aligned with ``completions``.

    ``prompts`` is the last user message, ``prompt_messages`` the whole prompt conversation,
    ``columns`` the dataset's extra columns (e.g. ``solution``), ``context`` run facts such as
    ``max_new_tokens`` and ``step`` (passed to scorers that accept them).
    """

    prompts: list[str]
    completions: list[str]
    completion_ids: list[list[int]] = field(default_factory=list)
    prompt_messages: list[Messages] = field(default_factory=list)
    columns: dict[str, list[Any]] = field(default_factory=dict)
    context: dict[str, Any] = field(default_factory=dict)
    rendered_prompts: list[str] = field(default_factory=list)  # prompt text after the chat template

    def __post_init__(self) -> None:
        n = len(self.completions)
        if len(self.prompts) != n:
            raise ValueError(f"RewardBatch: {len(self.prompts)} prompts for {n} completions")
        if not self.completion_ids:
            self.completion_ids = [[] for _ in range(n)]
        if not self.rendered_prompts:
            self.rendered_prompts = list(self.prompts)
        if not self.prompt_messages:
            self.prompt_messages = [[{"role": "user", "content": p}] for p in self.prompts]
        for name, col in [("completion_ids", self.completion_ids), ("prompt_messages", self.prompt_messages),
                          ("rendered_prompts", self.rendered_prompts),
                          *((f"columns[{k!r}]", v) for k, v in self.columns.items())]:
            if len(col) != n:
                raise ValueError(f"RewardBatch: {name} has {len(col)} entries for {n} completions")

    def __len__(self) -> int:
        return len(self.completions)

    def messages(self, i: int) -> Messages:
        """The conversation with completion ``i`` as the last assistant message."""
        return [*self.prompt_messages[i], {"role": "assistant", "content": self.completions[i]}]

    def infer_requests(self) -> list[InferRequest]:
        return [InferRequest(messages=self.messages(i)) for i in range(len(self))]

    def slice(self, start: int, stop: int) -> RewardBatch:
        return RewardBatch(
            prompts=self.prompts[start:stop], completions=self.completions[start:stop],
            completion_ids=self.completion_ids[start:stop], prompt_messages=self.prompt_messages[start:stop],
            columns={k: v[start:stop] for k, v in self.columns.items()}, context=dict(self.context),
            rendered_prompts=self.rendered_prompts[start:stop],
        )

    @classmethod
    def from_items(cls, items: list[dict[str, Any]], context: dict[str, Any] | None = None) -> RewardBatch:
        """From ``[{"prompt", "completion", "completion_ids"?, "prompt_messages"?, **columns}]``."""
        fixed = {"prompt", "completion", "completion_ids", "prompt_messages", "rendered_prompt"}
        keys = sorted({k for it in items for k in it} - fixed)
        return cls(
            prompts=[it["prompt"] for it in items],
            completions=[it["completion"] for it in items],
            completion_ids=[list(it.get("completion_ids") or []) for it in items],
            prompt_messages=[it.get("prompt_messages") or [{"role": "user", "content": it["prompt"]}] for it in items],
            columns={k: [it.get(k) for it in items] for k in keys},
            context=dict(context or {}),
            rendered_prompts=[it.get("rendered_prompt") or it["prompt"] for it in items],
        )


class Scorer(Protocol):
    """A ready-to-call reward: the worker, the reward server and ``raylhf sample`` all use this."""

    name: str
    kind: str  # "orm" | "prm"

    async def score(self, batch: RewardBatch) -> list[Score]: ...

    def metrics(self) -> dict[str, float]:
        """Counters since the last call (failures, latency percentiles, ...); may be empty."""
        ...

    async def aclose(self) -> None: ...


class ORM:
    """Outcome reward model: one score per completion. Subclass and implement ``__call__``.

    Either shape works (the loader inspects the signature):
    ``__call__(self, infer_requests, ground_truths=None, **kwargs)`` or ``__call__(self, completions, **kwargs)``.
    Constructor keyword arguments come from the config entry's ``kwargs``.
    """

    kind = "orm"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> list[float | None]:
        raise NotImplementedError


class AsyncORM(ORM):
    """An ORM whose ``__call__`` is ``async def`` (e.g. it calls a service)."""

    async def __call__(self, *args: Any, **kwargs: Any) -> list[float | None]:  # type: ignore[override]
        raise NotImplementedError


class PRM:
    """Process reward model: per completion one score or a list of per-step scores."""

    kind = "prm"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> list[Score]:
        raise NotImplementedError


def register_reward(name: str) -> Callable[[Any], Any]:
    """Decorator for a reward function or ORM/PRM class; the name then works in ``reward.functions``."""

    def deco(obj: Any) -> Any:
        REWARDS.register(name, obj)
        return obj

    return deco


register_orm = register_reward
register_prm = register_reward
