"""One multi-turn episode as a coroutine: model turn -> environment step -> model turn ..., on its own.

The rollout engines run the episodes (``RolloutWorker.episodes``): each episode is a coroutine on the engine's
event loop, so no episode waits for another's generation or environment step. The engine passes a *turn
sampler* ``await sample(token_ids, max_tokens, seed) -> Sampled`` (one vLLM request, stopped at the agent
template's stop words); the environment is a *session* with the text-level ``step``:

* :class:`ToolSession`: the agent's tools (``agent.tools``, the built-in ``tools`` env): calls read in the agent
  template's format, run in threads, answered in the template's format;
* :class:`EnvSession`: an environment class (``agent.env``, ms-swift's ``Env`` shape, :mod:`raylhf.agent.env`);
* :class:`SchedulerSession`: a multi-turn scheduler (``agent.scheduler``, :mod:`raylhf.agent.scheduler`).

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
import copy
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from actors.rollout import sample_seed
from raylhf.agent.env import ENVS, RolloutInferRequest, ToolEnv, call_method
from raylhf.agent.scheduler import SCHEDULERS, ChatCompletionResponseChoice, ChatMessage, next_request
from raylhf.agent.templates import AgentTemplate, ToolCall, chat_tool_turn, get_template
from raylhf.agent.tools import TOOLS, ToolResult, call_tool
from raylhf.assets import load_tokenizer
from raylhf.core.batch import Rollout
from raylhf.data import render_prompt
from raylhf.driver.stream import phase_seed

TurnSampler = Callable[[list[int], int, int | None], Awaitable[Any]]
"""``await sample(token_ids, max_tokens, seed)``: one model turn, an object with ``tokens``, ``logprobs`` and
``finish_reason`` ("stop" | "length")."""


class EpisodeError(ValueError):
    """A plugin broke a rule of the episode loop (not an environment failure the model should see)."""


def turn_seed(seed: int | None, turn: int) -> int | None:
    """The phase seed of model turn ``turn`` (1-based) of a generate phase seeded ``seed``."""
    if seed is None or turn == 1:
        return seed
    return phase_seed(seed, turn, "agent/turn")


@dataclass
class Step:
    """What the environment did after one model turn. ``env_text``: its text, appended as tokens (None: the
    episode ends)."""

    env_text: str | None
    reward: float | None = None
    calls: int = 0
    errors: int = 0


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


# ------------------------------------------------------------------------------------------ sessions

class ToolSession:
    """The agent's tools: a turn's calls run side by side (threads), each under the step timeout."""

    own_timeouts = True  # each call has its own (its answer says which tool timed out)

    def __init__(self, bound: Bound) -> None:
        self.b = bound

    async def start(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
        return None

    async def step(self, text: str, tokens: list[int], turn: int, last: bool, finish: str) -> Step:
        template = self.b.template
        assert template is not None
        calls = template.parse_tool_calls(text)
        stop = self.b.stop
        if not calls and any(text.rstrip().endswith(s) for s in stop):
            calls = [ToolCall("?", error=f"the turn ended at {stop} but no tool call could be read from it; call a "
                                         "tool as the system message shows")]
        if not calls or last:  # the model answered; or a call in the last turn: no turn is left to read its answer
            return Step(None)
        results = await asyncio.gather(*(self._call(c) for c in calls))
        answers = [self.b.cut(r.text) for r in results]
        return Step(template.format_tool_response(text, answers), calls=len(calls),
                    errors=sum(r.error for r in results))

    async def _call(self, c: ToolCall) -> ToolResult:
        if c.error is not None:
            return ToolResult(f"error: {c.error}", True)
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(loop.run_in_executor(self.b.executor, call_tool, self.b.tools, c.name,
                                                               c.arguments), self.b.timeout_s)
        except TimeoutError:
            return ToolResult(f"error: tool {c.name} timed out after {self.b.timeout_s:g}s (agent.tool_timeout_s)",
                              True)

    async def close(self) -> None:
        return None


class EnvSession:
    """An environment instance for one episode (ms-swift's ``Env`` shape)."""

    def __init__(self, bound: Bound, env: Any, row: Mapping[str, Any]) -> None:
        self.b, self.env, self.row = bound, env, dict(row)
        self.messages: list[dict[str, Any]] = []

    async def start(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
        self.messages = [dict(m) for m in messages]
        out = await call_method(self.env.reset, RolloutInferRequest(copy.deepcopy(self.messages),
                                                                    copy.deepcopy(self.row)), executor=self.b.executor)
        obs, system = (out[0], out[2]) if isinstance(out, (tuple, list)) and len(out) == 3 else (None, None)
        if not obs and not system:
            return None
        if system:
            if self.messages and self.messages[0].get("role") == "system":
                self.messages[0]["content"] = str(system)
            else:
                self.messages.insert(0, {"role": "system", "content": str(system)})
        if obs:
            users = [i for i, m in enumerate(self.messages) if m.get("role") == "user"]
            if users:
                self.messages[users[-1]]["content"] = str(obs)
            else:
                self.messages.append({"role": "user", "content": str(obs)})
        return self.messages

    async def step(self, text: str, tokens: list[int], turn: int, last: bool, finish: str) -> Step:
        self.messages.append({"role": "assistant", "content": text})
        out = await call_method(self.env.step, copy.deepcopy(self.messages), executor=self.b.executor)
        if not (isinstance(out, (tuple, list)) and len(out) == 4):
            raise EpisodeError(f"env {self.b.program.env!r}: step returned {out!r}; expected (observation, reward, "
                               "done, info)")
        obs, reward, done, _ = out
        reward = None if reward is None else float(reward)
        if done or last:
            return Step(None, reward)
        self.messages.append({"role": "user", "content": str(obs)})
        return Step(self.b.user_turn(str(obs)), reward)

    async def close(self) -> None:
        close = getattr(self.env, "close", None)
        if close is not None:
            await call_method(close, executor=self.b.executor)


class SchedulerSession:
    """A multi-turn scheduler (ms-swift's ``MultiTurnScheduler`` shape): it may only append messages."""

    def __init__(self, bound: Bound, row: Mapping[str, Any]) -> None:
        self.b, self.row = bound, dict(row)
        self.request = RolloutInferRequest([], self.row)

    async def start(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
        self.request = RolloutInferRequest([dict(m) for m in messages], copy.deepcopy(self.row))
        return None

    async def step(self, text: str, tokens: list[int], turn: int, last: bool, finish: str) -> Step:
        sched, name = self.b.scheduler, self.b.program.scheduler
        self.request.messages.append({"role": "assistant", "content": text})
        choice = ChatCompletionResponseChoice(0, ChatMessage("assistant", text), finish, token_ids=list(tokens))
        if last or await call_method(sched.check_finished, self.request, choice, turn, executor=self.b.executor):
            return Step(None)
        before = copy.deepcopy(self.request.messages)
        out = await call_method(sched.step, self.request, choice, turn, executor=self.b.executor)
        self.request = next_request(out)
        now = [dict(m) for m in self.request.messages]
        if now[: len(before)] != before:
            k = next((i for i, (a, b) in enumerate(zip(before, now, strict=False)) if a != b), len(now))
            raise EpisodeError(
                f"multi-turn scheduler {name!r} changed message {k} ({before[k].get('role')}) in step(); raylhf "
                "trains on the tokens the model sampled, so a scheduler may only append messages (the "
                "environment's turn) after the model's: append the feedback as a new user message instead")
        added = now[len(before):]
        if not added:
            raise EpisodeError(f"multi-turn scheduler {name!r}: step() appended no message after the model's turn "
                               "and check_finished() said the episode goes on; append the environment's message, "
                               "or return True from check_finished")
        return Step(self.b.user_turn("\n".join(str(m.get("content", "")) for m in added)))

    async def close(self) -> None:
        return None


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
    env_reward: str = "sum"
    barrier: bool = False

    def bind(self) -> Bound:
        bound = _BOUND.get(self)
        if bound is None:
            bound = _BOUND[self] = Bound(self)
        return bound


_BOUND: dict[EpisodeProgram, Bound] = {}


class Bound:
    """An :class:`EpisodeProgram` with its tokenizer, template, tools, env class or scheduler, and thread pool."""

    def __init__(self, program: EpisodeProgram) -> None:
        self.program = p = program
        self.tokenizer = load_tokenizer(p.tokenizer)
        self.template: AgentTemplate | None = get_template(p.template, self.tokenizer) if p.template else None
        self.tools = {n: TOOLS.get_entry(n) for n in p.tools}
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
            for turn in range(1, self.program.max_turns + 1):
                s = await sample(prompt_ids + e.ids, budget - len(e.ids),
                                 None if seed is None else sample_seed(turn_seed(seed, turn), pidx, j))  # type: ignore[arg-type]
                e.turns += 1
                e.extend(s.tokens, s.logprobs, sampled=True)
                if barrier is not None:
                    await barrier.wait()
                if s.finish_reason == "length" or len(e.ids) >= budget:
                    e.finish_reason = "length"
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
        return Step(None if last else self.user_turn(msg), calls=1, errors=1)
