"""Multi-turn GRPO episodes: the model calls tools, the environment answers, generation continues.

An episode is one sequence: the prompt (the tools rendered into its system message by the agent template),
then model turns with the environment's answers in between::

    prompt | model turn 1 ... </tool_call> | env: <tool_response>42</tool_response> ... | model turn 2 ...

Each turn is one generate call over all the episodes still running (spread over the rollout engines), stopped
at the template's stop words (the end of a tool call); the calls found in a turn run in threads on the driver
(errors and timeouts become answer text), their answers are tokenized and appended, and the next turn
continues the same token sequence (vLLM's prefix cache keeps the re-sent prefix cheap). An episode ends when
the model answers without a call, after ``agent.max_turns`` model turns, or when ``rollout.max_new_tokens``
(the budget of the whole episode, tool tokens included) runs out (``finish_reason`` "length").

The result is one :class:`~raylhf.core.batch.Rollout` per episode whose ``response_mask`` is 1 on the model's
tokens and 0 on the environment's, so :func:`raylhf.driver.phases.to_train_batch` gives tool tokens zero loss weight and
their (absent) sampling log-probs never count; the reward functions score the whole episode's text.

Reproducibility: turn 1 samples with the call's seed (the step's ``generate`` phase seed), turn ``t`` with a
seed derived from it and ``t``; a retried phase (``rl.Recovery``) reruns the whole episode loop from its start,
so it draws what the first try drew.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from raylhf.agent.templates import AgentTemplate, ToolCall, get_template
from raylhf.agent.tools import TOOLS, ToolResult, run_tool_calls, tool_spec
from raylhf.core.batch import Rollout
from raylhf.data import PromptExample, render_prompt
from raylhf.driver.stream import phase_seed

GenerateFn = Callable[..., list[Rollout]]
"""``generate(items, n, *, seed, stop, temperature=...) -> rollouts``: ``items`` are ``(index, token_ids,
max_new_tokens)``; ``n`` samples of each, ordered item by item, ``prompt_index`` = the item's index
(``RolloutWorker.generate`` over the engines: :func:`engine_generate`)."""


def turn_seed(seed: int | None, turn: int) -> int | None:
    """The sampling seed of model turn ``turn`` (1-based) of a generate phase seeded ``seed``."""
    if seed is None or turn == 1:
        return seed

    return phase_seed(seed, turn, "agent/turn")


def engine_generate(rollout_group: Any) -> GenerateFn:
    """The :data:`GenerateFn` of a rollout group: one ``generate`` call per engine, items split among them."""

    def generate(items: list[tuple[int, list[int], int]], n: int, **kw: Any) -> list[Rollout]:
        parts = rollout_group.call_split("generate", items, n, **kw)
        return [r for part in parts for r in part]

    return generate


@dataclass
class Episode:
    """One episode being built: its response tokens so far, their log-probs and loss mask, counters."""

    prompt_index: int
    prompt_ids: list[int]
    ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    mask: list[float] = field(default_factory=list)
    turns: int = 0
    tool_calls: int = 0
    tool_errors: int = 0
    finish_reason: str = "stop"
    done: bool = False

    def extend(self, ids: Sequence[int], logprobs: Sequence[float] | None, sampled: bool) -> None:
        self.ids += list(ids)
        self.logprobs += list(logprobs) if logprobs is not None else [0.0] * len(ids)
        self.mask += [1.0 if sampled else 0.0] * len(ids)

    def finish(self, reason: str) -> None:
        self.done, self.finish_reason = True, reason

    def rollout(self, tokenizer: Any) -> Rollout:
        return Rollout(self.prompt_index, self.prompt_ids, self.ids, self.logprobs, self.finish_reason,
                       tokenizer.decode(self.ids, skip_special_tokens=True), response_mask=self.mask,
                       episode={"turns": self.turns, "tool_calls": self.tool_calls, "tool_errors": self.tool_errors})


class EpisodeRunner:
    """Runs multi-turn episodes for one run: the agent template, the offered tools, the tokenizer and the
    limits. Called like :func:`raylhf.driver.phases.generate` (``runner(rollout_group, prompt_ids, n, seed=...)``), so it
    is the online loop's rollout function; :meth:`run` takes any :data:`GenerateFn` (tests script one)."""

    def __init__(self, template: AgentTemplate, tools: Mapping[str, Callable[..., Any]], tokenizer: Any, *,
                 max_turns: int, max_new_tokens: int, max_tool_response_tokens: int = 64,
                 tool_timeout_s: float = 10.0) -> None:
        self.template, self.tools, self.tokenizer = template, dict(tools), tokenizer
        self.max_turns, self.max_new_tokens = max_turns, max_new_tokens
        self.max_tool_response_tokens, self.tool_timeout_s = max_tool_response_tokens, tool_timeout_s
        self.stop = [s for s in template.stop_words if s]

    @classmethod
    def from_config(cls, agent: Any, tokenizer: Any, max_new_tokens: int) -> EpisodeRunner:
        """From the ``agent`` config section (template and tools looked up in their registries)."""
        return cls(get_template(agent.template, tokenizer), {n: TOOLS.get_entry(n) for n in agent.tools}, tokenizer,
                   max_turns=agent.max_turns, max_new_tokens=max_new_tokens,
                   max_tool_response_tokens=agent.max_tool_response_tokens, tool_timeout_s=agent.tool_timeout_s)

    # ---- prompts ---------------------------------------------------------------------------------
    def tool_specs(self) -> list[dict[str, Any]]:
        return [tool_spec(n, fn) for n, fn in self.tools.items()]

    def add_tools(self, examples: Sequence[Any]) -> list[Any]:
        """The prompts with the tools rendered into their system message (one is added when there is none);
        the other messages and the columns the rewards read are unchanged."""
        specs = self.tool_specs()
        out = []
        for ex in examples:
            msgs = [dict(m) for m in ex.messages]
            if msgs and msgs[0].get("role") == "system":
                msgs[0]["content"] = self.template.format_tools(specs, msgs[0].get("content") or "")
            else:
                msgs.insert(0, {"role": "system", "content": self.template.format_tools(specs, "")})
            out.append(dataclasses.replace(ex, messages=msgs))
        return out

    def tools_prompt_tokens(self) -> int:
        """Tokens of a prompt holding only the tools' system message and an empty user turn (the least any
        prompt of the run takes)."""

        ex = self.add_tools([PromptExample([{"role": "user", "content": ""}])])[0]
        return len(render_prompt(self.tokenizer, ex.messages))

    # ---- episodes ------------------------------------------------------------------------------
    def __call__(self, rollout_group: Any, prompt_ids: list[list[int]], n: int, *, seed: int | None = None,
                 temperature: float | None = None, max_new_tokens: int | None = None) -> list[Rollout]:
        return self.run(engine_generate(rollout_group), prompt_ids, n, seed=seed, temperature=temperature,
                        max_new_tokens=max_new_tokens)

    def run(self, generate: GenerateFn, prompt_ids: list[list[int]], n: int, *, seed: int | None = None,
            temperature: float | None = None, max_new_tokens: int | None = None) -> list[Rollout]:
        """``n`` episodes per prompt, ordered prompt by prompt (as single-turn rollouts are)."""
        budget = int(max_new_tokens or self.max_new_tokens)
        kw: dict[str, Any] = {"stop": self.stop or None}
        if temperature is not None:
            kw["temperature"] = temperature
        first = generate([(i, list(ids), budget) for i, ids in enumerate(prompt_ids)], n, seed=turn_seed(seed, 1),
                         **kw)
        episodes = [Episode(r.prompt_index, list(r.prompt_ids)) for r in first]
        self._absorb(list(zip(episodes, first, strict=True)), budget)
        for turn in range(2, self.max_turns + 1):
            live = [e for e in episodes if not e.done]
            if not live:
                break
            outs = generate([(k, e.prompt_ids + e.ids, budget - len(e.ids)) for k, e in enumerate(live)], 1,
                            seed=turn_seed(seed, turn), **kw)
            if len(outs) != len(live):
                raise RuntimeError(f"generate returned {len(outs)} completions for {len(live)} running episodes")
            self._absorb([(live[r.prompt_index], r) for r in outs], budget)
        return [e.rollout(self.tokenizer) for e in episodes]

    def _absorb(self, turns: list[tuple[Episode, Rollout]], budget: int) -> None:
        """Append one model turn to each episode; run the tool calls of those that made some (all together)
        and append the answers; mark the episodes that ended."""
        pending: list[tuple[Episode, str, list[ToolCall]]] = []
        for e, r in turns:
            e.turns += 1
            e.extend(r.response_ids, r.logprobs, sampled=True)
            if r.finish_reason == "length" or len(e.ids) >= budget:
                e.finish("length")
                continue
            text = self.tokenizer.decode(r.response_ids, skip_special_tokens=True)
            calls = self.template.parse_tool_calls(text)
            if not calls and any(text.rstrip().endswith(s) for s in self.stop):
                calls = [ToolCall("?", error=f"the turn ended at {self.stop} but no tool call could be read from "
                                             f"it; call a tool as the system message shows")]
            if not calls:
                e.finish("stop")  # the model answered
            elif e.turns >= self.max_turns:
                e.finish("stop")  # a call in the last turn: no turn is left to read its answer
            else:
                pending.append((e, text, calls))
        runnable = [(c.name, c.arguments) for _, _, calls in pending for c in calls if c.error is None]
        results = iter(run_tool_calls(self.tools, runnable, self.tool_timeout_s))
        for e, text, calls in pending:
            answers = []
            for c in calls:
                res = next(results) if c.error is None else ToolResult(f"error: {c.error}", True)
                e.tool_calls += 1
                e.tool_errors += int(res.error)
                answers.append(self._cut(res.text))
            env_ids = self._environment_ids(e, text, answers)
            room = budget - len(e.ids)
            e.extend(env_ids[:room], None, sampled=False)
            if len(env_ids) >= room:
                e.finish("length")

    def _cut(self, answer: str) -> str:
        """A tool answer cut to ``agent.max_tool_response_tokens`` tokens."""
        ids = self.tokenizer.encode(answer, add_special_tokens=False)
        if len(ids) <= self.max_tool_response_tokens:
            return answer
        return self.tokenizer.decode(ids[: self.max_tool_response_tokens]) + " ...(cut)"

    def _environment_ids(self, e: Episode, assistant_text: str, answers: list[str]) -> list[int]:
        text = self.template.format_tool_response(assistant_text, answers)
        eos, eos_id = self.tokenizer.eos_token, self.tokenizer.eos_token_id
        if eos and e.ids and e.ids[-1] == eos_id and text.startswith(eos):
            text = text[len(eos):]  # the model closed its turn itself: do not close it twice
        return list(self.tokenizer.encode(text, add_special_tokens=False))


def episode_metrics(rollouts: Sequence[Rollout]) -> dict[str, float]:
    """``agent/turns_mean``, ``agent/tool_calls_mean``, ``agent/tool_errors`` (count in the step) and
    ``agent/tool_token_frac`` (share of the response tokens written by the environment)."""
    eps = [r for r in rollouts if r.episode is not None]
    if not eps:
        return {}
    total = sum(len(r.response_ids) for r in eps)
    env = sum(len(r.response_mask or []) - sum(r.response_mask or []) for r in eps)
    return {
        "agent/turns_mean": sum(r.episode["turns"] for r in eps) / len(eps),  # type: ignore[index]
        "agent/tool_calls_mean": sum(r.episode["tool_calls"] for r in eps) / len(eps),  # type: ignore[index]
        "agent/tool_errors": float(sum(r.episode["tool_errors"] for r in eps)),  # type: ignore[index]
        "agent/tool_token_frac": env / max(1, total),
    }
