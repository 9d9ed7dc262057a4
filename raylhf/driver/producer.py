"""Where an online loop's prompts and rollouts come from, on-policy or pipelined (``grpo.async_steps``).

The loop does not change with the mode; :class:`RolloutProducer` sits behind ``OnlineRun.steps()`` (the prompts
of a step) and ``OnlineRun.generate()`` (its rollouts):

* ``async_steps = 0``: a step's rollouts are generated when the loop asks, with the weights of the last sync
  (on-policy);
* ``async_steps = k > 0``: when the loop asks for step s, the generation of steps s+1 .. s+k is submitted to the
  engines too, so they sample step s+1 while the driver scores and the policy trains step s. The rollouts of a
  step then come from weights at most ``k`` versions behind the policy that trains on them (bounded staleness).
  A weight sync queues on each engine behind the generation it is running, so an engine never stalls longer
  than the sync itself, and every rollout is stamped with the weight version (syncs done) that sampled it.
  The off-policy gap is corrected in the loss by importance sampling (``grpo.is_correction``, truncated token
  weights by default, capped at ``grpo.tis_cap``; ``raylhf/algos/is_correction.py``), whose
  ``rollout_mismatch_kl`` / ``is_*`` metrics show its size.

With ``rollout.partial`` a sync no longer waits for the generation in flight: the engines pause it, load the new
weights and continue each request from its tokens (``actors/rollout.py``), so a sample may mix versions; each
token carries its own (``Rollout.versions``). Staleness is then measured per token, and a sample with a token more
than ``max_staleness`` versions behind the policy that trains on it (default ``async_steps``) is generated again
with the current weights before the step trains on it (``async/requeued``).

Checkpoints stay exact: ``state_dict`` holds the data stream's position before the prefetched steps and the
prefetched rollouts themselves (waited for), so a resumed run trains on what the original would have.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from raylhf.core.batch import Rollout


@dataclass
class _Step:
    step: int
    prompts: list[Any]
    prompt_ids: list[list[int]]
    stream_before: dict[str, Any]  # the data stream before this step's prompts were drawn
    version: int = -1  # weight version the engines sample it with (-1: not submitted yet)
    pending: Any = None  # actors.group.Pending while its generation runs
    rollouts: list[Rollout] | None = None


class RolloutProducer:
    """Draws each step's prompts from ``stream`` and gets its rollouts.

    ``submit(prompt_ids, n, step)`` starts a step's generation on the engines and returns a Pending whose
    ``result()`` is the rollouts; ``generate(prompt_ids, n, step)`` is the blocking form (on-policy, and again
    after an engine died with a prefetch); ``render(prompts)`` gives the prompts' token ids; ``version()`` is the
    number of weight syncs the driver has sent (the engines hold it once the queued syncs ran)."""

    def __init__(self, stream: Any, async_steps: int, last_step: int, render: Callable[[list[Any]], list[list[int]]],
                 submit: Callable[[list[list[int]], int, int], Any],
                 generate: Callable[[list[list[int]], int, int], list[Rollout]], version: Callable[[], int],
                 max_staleness: int | None = None) -> None:
        self.stream, self.async_steps, self.last_step = stream, async_steps, last_step
        self.max_staleness = async_steps if max_staleness is None else max_staleness
        self.render, self._submit, self._generate, self.version = render, submit, generate, version
        self.queue: deque[_Step] = deque()
        self.last_metrics: dict[str, float] = {}  # staleness of the last step's rollouts (async only)

    # ---- the loop's two questions -------------------------------------------------------------------------
    def prompts(self, step: int) -> tuple[list[Any], list[list[int]]]:
        """Step ``step``'s prompts and their token ids (drawn now, or when it was prefetched)."""
        item = self._item(step)
        return item.prompts, item.prompt_ids

    def rollouts(self, step: int, n: int) -> list[Rollout]:
        """Step ``step``'s ``n`` samples per prompt; with ``async_steps`` the next steps' generation starts first,
        so it runs while this step is scored and trained."""
        item = self._item(step)
        if self.async_steps:
            for s in range(step, min(step + self.async_steps, self.last_step) + 1):
                later = self._item(s)
                if later.version < 0:
                    later.version, later.pending = self.version(), self._submit(later.prompt_ids, n, s)
        if item.rollouts is None:
            pending, item.pending = item.pending, None
            if pending is not None:
                item.rollouts = [r for part in pending.result() for r in part]
            else:  # on-policy, or the prefetch died with its engine: now, with the current weights
                item.version = self.version()
                item.rollouts = self._generate(item.prompt_ids, n, step)
            for r in item.rollouts:
                r.version = item.version
            requeued = self._requeue(item, step, n)
        else:
            requeued = 0
        while self.queue and self.queue[0].step <= step:
            self.queue.popleft()
        if self.async_steps:
            self.last_metrics = {**self.metrics(step, item.rollouts), "async/requeued": float(requeued)}
        return item.rollouts

    def consumed(self, step: int) -> None:
        """Step ``step``'s rollouts were made without the producer (dynamic sampling draws its own extra prompts,
        ``dynamic.py``): forget the queued steps up to it, so the data position a checkpoint saves is the stream's
        own (extra draws included)."""
        if self.async_steps:
            raise RuntimeError("consumed() is for on-policy runs: with async_steps the producer makes the rollouts")
        while self.queue and self.queue[0].step <= step:
            self.queue.popleft()

    def _requeue(self, item: _Step, step: int, n: int) -> int:
        """Generate again, with the current weights, the prompts with a sample too stale for step ``step``; returns
        how many samples were replaced."""
        rollouts = item.rollouts or []
        stale = sorted({r.prompt_index for r in rollouts if max(token_lags(step, r)) > self.max_staleness})
        if not stale:
            return 0
        fresh = self._generate([item.prompt_ids[i] for i in stale], n, step)
        version = self.version()
        by_prompt: dict[int, list[Rollout]] = {}
        for r in fresh:
            r.prompt_index, r.version = stale[r.prompt_index], version
            by_prompt.setdefault(r.prompt_index, []).append(r)
        item.rollouts = [x for i in sorted({r.prompt_index for r in rollouts})
                         for x in (by_prompt[i] if i in by_prompt else [r for r in rollouts if r.prompt_index == i])]
        return len(fresh)

    def _item(self, step: int) -> _Step:
        """The queued step ``step``, drawing it (and any before it) from the stream when not queued yet."""
        while not self.queue or self.queue[-1].step < step:
            nxt = self.queue[-1].step + 1 if self.queue else step
            before = self.stream.state_dict()
            prompts = next(self.stream)
            self.queue.append(_Step(nxt, prompts, self.render(prompts), before))
        for item in self.queue:
            if item.step == step:
                return item
        raise RuntimeError(f"step {step} is no longer queued (queue holds {[i.step for i in self.queue]})")

    @staticmethod
    def metrics(step: int, rollouts: list[Rollout]) -> dict[str, float]:
        """How many versions behind the policy that trains step ``step`` (``step - 1`` syncs) the samples were (a
        sample's oldest token), and the same per token (the mean over every response token)."""
        lag = [step - 1 - r.version for r in rollouts] or [0]
        tokens = [x for r in rollouts for x in token_lags(step, r)] or [0]
        return {"async/staleness_max": float(max(lag)), "async/staleness_mean": sum(lag) / len(lag),
                "async/token_staleness_max": float(max(tokens)),
                "async/token_staleness_mean": sum(tokens) / len(tokens),
                "async/partial_frac": sum(r.versions is not None for r in rollouts) / max(1, len(rollouts))}

    # ---- checkpoints --------------------------------------------------------------------------------------
    def data_state(self) -> dict[str, Any]:
        """The data stream's position before every step not trained yet (the prefetched ones)."""
        return self.queue[0].stream_before if self.queue else self.stream.state_dict()

    def state_dict(self) -> dict[str, Any]:
        """The prefetched steps, their generation waited for: step, weight version, prompt ids, rollouts."""
        out = []
        for item in self.queue:
            if item.rollouts is None and item.pending is not None:
                pending, item.pending = item.pending, None
                item.rollouts = [r for part in pending.result() for r in part]
                for r in item.rollouts:
                    r.version = item.version
            if item.rollouts is not None:
                out.append({"step": item.step, "version": item.version,
                            "rollouts": [dataclasses.asdict(r) for r in item.rollouts]})
        return {"prefetched": out}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Restore the prefetched steps (the stream is at ``data_state()`` of the checkpoint): their prompts are
        drawn again, their rollouts are the saved ones."""
        self.queue.clear()
        for saved in (state or {}).get("prefetched", []):
            item = self._item(int(saved["step"]))
            item.version = int(saved["version"])
            item.rollouts = [Rollout(**r) for r in saved["rollouts"]]


def token_lags(step: int, r: Rollout) -> list[int]:
    """Versions each response token of ``r`` lags the policy that trains step ``step`` (``step - 1`` syncs)."""
    if r.versions is None:
        return [step - 1 - r.version] * max(1, len(r.response_ids))
    return [step - 1 - v for v in r.versions] or [step - 1 - r.version]
