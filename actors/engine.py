"""The async side of a rollout engine: samples (one seeded request each, continued across partial-rollout syncs),
the gate between requests, weight updates and sleep, and the seeds. ``actors/rollout.py``'s RolloutWorker drives it
on its loop thread."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass
from typing import Any

from actors import vllm_compat


@dataclass
class Sampled:
    tokens: list[int]
    logprobs: list[float]
    finish_reason: str
    text: str
    versions: list[int] | None  # per token, when a partial-rollout sync split it; else None
    version: int  # the version of its first token


def continued(params: Any, max_tokens: int, part: int) -> Any:
    """The sampling parameters of part ``part`` of a request split by partial-rollout syncs: the tokens left, and
    a seed of its own derived from the request's (None stays None)."""
    p = params.clone()
    p.max_tokens = max_tokens
    if params.seed is not None:
        p.seed = (params.seed + 104_729 * part) % (2**63 - 1)
    return p


def sample_seed(seed: int, prompt_index: int, sample_index: int) -> int:
    """The seed of one request: sample ``sample_index`` of prompt ``prompt_index`` in a phase seeded ``seed``."""
    return (seed * 1_000_003 + prompt_index * 8_191 + sample_index) % (2**63 - 1)


Received = dict[str, tuple[str, tuple[int, ...], int]]


class EngineHandle:
    """The async side of a RolloutWorker, on its loop thread: the ``AsyncLLM`` and the gate between requests and
    weight updates (kept out of the worker class: a Ray actor class with ``async def`` methods becomes an asyncio
    actor whose plain methods block its one event loop, so concurrent calls would run one at a time)."""

    def __init__(self, llm: Any, tag: str) -> None:
        self.llm, self.tag = llm, tag
        self.ids = itertools.count()
        self.version = 0  # weight syncs loaded
        self.inflight = 0
        self.idle = asyncio.Condition()
        self.weights_ready = asyncio.Event()
        self.weights_ready.set()
        self.awake = asyncio.Event()  # cleared while the engine sleeps (colocated placement): requests wait
        self.awake.set()
        self.tagged: dict[str, set[str]] = {}  # a call's tag -> its requests in flight
        self.cancelled: set[str] = set()  # tags the driver aborted (dynamic sampling's surplus groups)

    @classmethod
    async def start(cls, make: Any, tag: str) -> EngineHandle:
        return cls(make(), tag)

    async def raw(self, prompt_ids: list[int], params: Any, tag: str | None = None) -> Any:
        """One request's final ``RequestOutput``; ``tag``: the call it belongs to (:meth:`cancel` aborts it)."""
        from vllm.inputs import TokensPrompt

        final, rid = None, f"{self.tag}-{next(self.ids)}"
        if tag is not None:
            self.tagged.setdefault(tag, set()).add(rid)
        try:
            async for out in self.llm.generate(TokensPrompt(prompt_token_ids=prompt_ids), params, request_id=rid):
                final = out
        finally:
            if tag is not None:
                self.tagged[tag].discard(rid)
        return final

    async def cancel(self, tag: str) -> None:
        """Abort the requests of the calls tagged ``tag``, in flight and to come: they return what they have with
        finish reason "abort"."""
        self.cancelled.add(tag)
        ids = list(self.tagged.get(tag, ()))
        if ids:
            await self.llm.abort(ids)

    async def sample(self, prompt_ids: list[int], params: Any, tag: str | None = None) -> Sampled:
        """One sample. A request aborted by a partial-rollout sync (``update(partial=True)``) is continued after
        it as a new request on the prompt plus the tokens it had (prefilled under the new weights), for the tokens
        left, with a seed of its own; its tokens keep the log-probs and the weight version they were sampled with."""
        tokens: list[int] = []
        logprobs: list[float] = []
        versions: list[int] = []
        limit, text, part = int(params.max_tokens), "", 0
        finish = "stop"
        while True:
            await self.awake.wait()
            await self.weights_ready.wait()
            version = self.version
            if tag in self.cancelled:
                finish = "abort"
                break
            out = await self.raw(prompt_ids + tokens, params if not part else continued(params, limit - len(tokens),
                                                                                        part), tag)
            c = out.outputs[0]
            lps = [next(iter(d.values())).logprob if d else 0.0 for d in (c.logprobs or [])]
            tokens += list(c.token_ids)
            logprobs += (lps + [0.0] * len(c.token_ids))[: len(c.token_ids)]
            versions += [version] * len(c.token_ids)
            finish, text = c.finish_reason or "stop", c.text if not part else ""
            if finish != "abort" or len(tokens) >= limit or tag in self.cancelled:
                break
            part += 1  # aborted by a partial-rollout sync: go on from here
        if finish == "abort" and tag not in self.cancelled:
            finish = "length"
        return Sampled(tokens, logprobs, finish, text, versions if len(set(versions)) > 1 else None,
                       versions[0] if versions else version)

    async def gated(self, coros: list[Any]) -> list[Any]:
        """Run requests once no weight update is in progress and the engine is awake; a weight update or a sleep
        waits for them to finish."""
        await self.awake.wait()
        await self.weights_ready.wait()
        self.inflight += 1
        try:
            return await asyncio.gather(*coros)
        finally:
            self.inflight -= 1
            async with self.idle:
                self.idle.notify_all()

    async def sleep(self, level: int) -> None:
        """Sleep once the requests in flight finished; new ones wait for :meth:`wake_up` of the KV cache."""
        self.awake.clear()
        async with self.idle:
            await self.idle.wait_for(lambda: self.inflight == 0)
        await self.llm.sleep(level=level)

    async def wake_up(self, tags: list[str] | None) -> None:
        """Wake ``tags`` (``["weights"]``, ``["kv_cache"]``; None: all); requests run again once the KV cache is."""
        if await vllm_compat.wake_up(self.llm, tags):
            self.awake.set()

    async def update(self, update_info: dict[str, Any], version: int, partial: bool = False) -> Received:
        """One weight update through the transfer engine. New requests wait for it. The requests in flight finish
        with the weights that started them first; with ``partial`` they are aborted at once and continue after it
        from the tokens they have (``sample``)."""
        from vllm.distributed.weight_transfer.base import WeightTransferUpdateRequest

        self.weights_ready.clear()
        try:
            if partial:
                await self.llm.pause_generation(mode="abort", clear_cache=True)
            else:
                async with self.idle:
                    await self.idle.wait_for(lambda: self.inflight == 0)
            try:
                await self.llm.start_weight_update()
                await self.llm.update_weights(WeightTransferUpdateRequest(update_info=update_info))
                await vllm_compat.finish_weight_update(self.llm)
                await self.llm.reset_prefix_cache()
            finally:
                if partial:
                    await self.llm.resume_generation()
            self.version = version
            received = await self.llm.collective_rpc("raylhf_received")
        finally:
            self.weights_ready.set()
        merged: Received = {}
        for part in received:
            merged.update(part)
        return merged
