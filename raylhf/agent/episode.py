"""One multi-turn episode as a coroutine: model turn -> environment step -> model turn ..., on its own.

The rollout engines run the episodes (``RolloutWorker.episodes``): each episode is a coroutine on the engine's
event loop, so no episode waits for another's generation or environment step. The engine passes a *turn
sampler* ``await sample(token_ids, max_tokens, seed) -> Sampled`` (one vLLM request, stopped at the agent
template's stop words); the environment is a *session* with a text-level ``step`` (:mod:`raylhf.agent.sessions`:
tools, an env class, or a multi-turn scheduler).

Token-in/token-out: the episode's sequence is the prompt's token ids, then exactly the ids each model turn
sampled, then the ids of the environment's text (tokenized alone), and so on; text is never re-tokenized, so the
log-probs the sampler reported stay those of the trained tokens. Environment steps run under
``agent.max_concurrent_steps`` (per engine) and ``agent.tool_timeout_s``; what a step raises or a timeout becomes
the observation ``error: ...``.

``agent.barrier: true`` makes the episodes of one engine call wait for each other after every generation and
every environment step (the turn-barrier design of synchronous multi-turn rollouts, kept for comparison:
benchmarks/agent_rollout.py).

Seeds: turn ``t`` of sample ``j`` of prompt ``i`` samples with ``sample_seed(turn_seed(seed, t), i, j)``; turn 1 is
the single-turn seed of that sample. An episode's tokens depend only on the weights, its prompt, its
environment's answers and these seeds.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from actors.engine import sample_seed
from raylhf.agent.env import ENVS, ToolEnv
from raylhf.agent.scheduler import SCHEDULERS
from raylhf.agent.sessions import EnvSession, EpisodeError, SchedulerSession, Step, ToolSession
from raylhf.agent.templates import AgentTemplate, chat_tool_turn, get_template
from raylhf.agent.tools import TOOLS, bind_tool
from raylhf.assets import load_tokenizer
from raylhf.core.batch import Rollout
from raylhf.data import render_prompt
from raylhf.driver.stream import phase_seed

TurnSampler = Callable[[list[int], int, int | None], Awaitable[Any]]
"""``await sample(token_ids, max_tokens, seed)``: one model turn, an object with ``tokens``, ``logprobs`` and
``finish_reason`` ("stop" | "length")."""


def turn_seed(seed: int | None, turn: int) -> int | None:
    """The phase seed of model turn ``turn`` (1-based) of a generate phase seeded ``seed``."""
    if seed is None or turn == 1:
        return seed
    return phase_seed(seed, turn, "agent/turn")


@dataclass
class Episode:
    """One episode being built: response tokens so far, their log-probs and loss mask, counters."""

    prompt_index: int
    prompt_ids: list[int]
    ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    mask: list[float] = field(default_factory=list)
    turns: int = 0
    tool_calls: int = 0
    tool_errors: int = 0
    rewards: list[float] = field(default_factory=list)
    finish_reason: str = "stop"

    def extend(self, ids: Sequence[int], logprobs: Sequence[float] | None, sampled: bool) -> None:
        self.ids += list(ids)
        self.logprobs += list(logprobs) if logprobs is not None else [0.0] * len(ids)
        self.mask += [1.0 if sampled else 0.0] * len(ids)

    def record(self, step: Step) -> None:
        self.tool_calls += step.calls
        self.tool_errors += step.errors
        if step.reward is not None:
            self.rewards.append(float(step.reward))

    def rollout(self, tokenizer: Any, env_reward: str) -> Rollout:
        info: dict[str, Any] = {"turns": self.turns, "tool_calls": self.tool_calls, "tool_errors": self.tool_errors}
        if self.rewards:
            r = self.rewards
            info["env_reward"] = r[-1] if env_reward == "last" else sum(r) / len(r) if env_reward == "mean" else sum(r)
        return Rollout(self.prompt_index, self.prompt_ids, self.ids, self.logprobs, self.finish_reason,
                       tokenizer.decode(self.ids, skip_special_tokens=True), response_mask=self.mask, episode=info)


class TurnBarrier:
    """``agent.barrier``: every running episode waits here until all running episodes arrived; an episode that
    ends leaves, so the others do not wait for it."""

    def __init__(self, parties: int) -> None:
        self.parties, self.arrived, self.generation = parties, 0, 0
        self.cond = asyncio.Condition()

    def _release(self) -> None:
        self.arrived, self.generation = 0, self.generation + 1
        self.cond.notify_all()

    async def wait(self) -> None:
        async with self.cond:
            gen = self.generation
            self.arrived += 1
            if self.arrived >= self.parties:
                self._release()
            else:
                await self.cond.wait_for(lambda: self.generation != gen)

    async def leave(self) -> None:
        async with self.cond:
            self.parties -= 1
            if self.parties and self.arrived >= self.parties:
                self._release()


# ------------------------------------------------------------------------------------------ the program

@dataclass(frozen=True)
class EpisodeProgram:
    """What the rollout engines run for multi-turn episodes (picklable: the ``agent`` section's settings and the
    tokenizer's path); :meth:`bind` builds the live parts once per process."""

    tokenizer: str
    max_turns: int
    template: str | None = None
    tools: tuple[str, ...] = ()
    env: str | None = None
    env_config: str = "{}"  # JSON: the env's constructor config (agent.env_config)
    scheduler: str | None = None
    max_tool_response_tokens: int = 64
    timeout_s: float = 10.0
    max_concurrent_steps: int = 16
    max_turn_tokens: int | None = None
    env_reward: str = "sum"
    barrier: bool = False
    sandbox: str = "{}"  # JSON: the run's sandbox: section (the python tool's limits); {}: the defaults

    def bind(self) -> Bound:
        """The live program, built once per process (under a lock: an engine's concurrent calls arrive on several
        threads, and building imports plugin files, which must happen once)."""
        with _BIND_LOCK:
            bound = _BOUND.get(self)
            if bound is None:
                bound = _BOUND[self] = Bound(self)
            return bound


_BOUND: dict[EpisodeProgram, Bound] = {}
_BIND_LOCK = threading.Lock()


class Bound:
    """An :class:`EpisodeProgram` with its tokenizer, template, tools, env class or scheduler, and thread pool."""

    def __init__(self, program: EpisodeProgram) -> None:
        self.program = p = program
        run = {"sandbox": json.loads(p.sandbox), "tool_timeout_s": p.timeout_s}
        self.tools = {n: bind_tool(TOOLS.get_entry(n), **run) for n in p.tools}  # python: probes the sandbox
        self.tokenizer = load_tokenizer(p.tokenizer)
        self.template: AgentTemplate | None = get_template(p.template, self.tokenizer) if p.template else None
        self.env_cls = ENVS.get_entry(p.env) if p.env and p.env != "tools" else None
        self.scheduler = SCHEDULERS.get_entry(p.scheduler)(max_turns=p.max_turns) if p.scheduler else None
        self.stop = [s for s in self.template.stop_words if s] if self.template is not None and self.tools else []
        self.turn = chat_tool_turn(self.tokenizer)
        self.timeout_s = p.timeout_s
        self.executor = ThreadPoolExecutor(max(1, p.max_concurrent_steps), thread_name_prefix="raylhf-env")

    def session(self, row: Mapping[str, Any]) -> Any:
        if self.scheduler is not None:
            return SchedulerSession(self, row)
        if self.env_cls is not None and self.env_cls is not ToolEnv:
            return EnvSession(self, self.env_cls(json.loads(self.program.env_config)), row)
        return ToolSession(self)

    def cut(self, answer: str) -> str:
        """A tool answer cut to ``agent.max_tool_response_tokens`` tokens."""
        ids = self.tokenizer.encode(answer, add_special_tokens=False)
        if len(ids) <= self.program.max_tool_response_tokens:
            return answer
        return self.tokenizer.decode(ids[: self.program.max_tool_response_tokens]) + " ...(cut)"

    def user_turn(self, observation: str) -> str:
        """An observation as the chat template's next user turn, up to the next assistant header."""
        return self.turn[0] + observation + self.turn[1]

    def env_ids(self, e: Episode, text: str) -> list[int]:
        eos, eos_id = self.tokenizer.eos_token, self.tokenizer.eos_token_id
        if eos and e.ids and e.ids[-1] == eos_id and text.startswith(eos):
            text = text[len(eos):]  # the model closed its turn itself: do not close it twice
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def coroutines(self, sample: TurnSampler, items: Sequence[tuple[int, list[int], Mapping[str, Any]]], n: int, *,
                   seed: int | None, budget: int, max_model_len: int) -> list[Awaitable[Rollout]]:
        """``n`` episodes per ``(prompt_index, prompt_ids, data row)``, ordered item by item."""
        sem = asyncio.Semaphore(max(1, self.program.max_concurrent_steps))
        barrier = TurnBarrier(len(items) * n) if self.program.barrier else None
        return [self.episode(sample, i, j, list(ids), row, seed, budget, max_model_len, sem, barrier)
                for i, ids, row in items for j in range(n)]

    async def episode(self, sample: TurnSampler, pidx: int, j: int, prompt_ids: list[int], row: Mapping[str, Any],
                      seed: int | None, budget: int, max_model_len: int, sem: asyncio.Semaphore,
                      barrier: TurnBarrier | None) -> Rollout:
        session = self.session(row)
        try:
            async with sem:
                messages = await session.start(list(row.get("messages") or []))
            if messages is not None:  # the environment's reset changed the prompt
                prompt_ids = render_prompt(self.tokenizer, messages)
            budget = min(budget, max_model_len - len(prompt_ids))
            if budget <= 0:
                raise EpisodeError(f"the prompt of episode {pidx}/{j} takes {len(prompt_ids)} tokens after the env's "
                                   f"reset, the engines' context is {max_model_len}: raise data.max_prompt_length or "
                                   "shorten the env's observation")
            e = Episode(pidx, prompt_ids)
            cap = self.program.max_turn_tokens
            for turn in range(1, self.program.max_turns + 1):
                left = budget - len(e.ids)
                limit = min(left, cap) if cap else left
                s = await sample(prompt_ids + e.ids, limit,
                                 None if seed is None else sample_seed(turn_seed(seed, turn), pidx, j))  # type: ignore[arg-type]
                e.turns += 1
                e.extend(s.tokens, s.logprobs, sampled=True)
                if barrier is not None:
                    await barrier.wait()
                turn_cut = s.finish_reason == "length" and limit < left  # agent.max_turn_tokens, not the budget
                if s.finish_reason == "abort" or len(e.ids) >= budget or (s.finish_reason == "length" and not turn_cut):
                    e.finish_reason = "abort" if s.finish_reason == "abort" else "length"
                    break
                step = await self.step(session, s, turn, sem)
                e.record(step)
                if barrier is not None:
                    await barrier.wait()
                if step.env_text is None:
                    break
                env_ids = self.env_ids(e, step.env_text)
                room = budget - len(e.ids)
                e.extend(env_ids[:room], None, sampled=False)
                if len(env_ids) >= room:
                    e.finish_reason = "length"
                    break
            return e.rollout(self.tokenizer, self.program.env_reward)
        finally:
            if barrier is not None:
                await barrier.leave()
            await session.close()

    async def step(self, session: Any, s: Any, turn: int, sem: asyncio.Semaphore) -> Step:
        """One environment step under the concurrency limit and the timeout; failures become the observation."""
        text = self.tokenizer.decode(s.tokens, skip_special_tokens=True)
        last = turn >= self.program.max_turns
        try:
            async with sem:
                call = session.step(text, list(s.tokens), turn, last, s.finish_reason)
                if getattr(session, "own_timeouts", False):
                    return await call
                return await asyncio.wait_for(call, self.timeout_s)
        except EpisodeError:
            raise
        except TimeoutError:
            msg = f"error: the environment step timed out after {self.timeout_s:g}s (agent.tool_timeout_s)"
        except Exception as e:  # an environment's failure is the model's observation, never the run's
            msg = f"error: {type(e).__name__}: {e}"
        if not last and hasattr(session, "observed"):
            session.observed(msg)
        return Step(None if last else self.user_turn(msg), calls=1, errors=1)
