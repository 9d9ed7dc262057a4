"""Multi-turn GRPO episodes, driver side: the model calls tools or talks to an environment, generation continues.

An episode is one sequence: the prompt (for tools, the tools rendered into its system message by the agent
template), then model turns with the environment's answers in between::

    prompt | model turn 1 ... </tool_call> | env: <tool_response>42</tool_response> ... | model turn 2 ...

The episodes run on the rollout engines, each as a coroutine of its own (:mod:`raylhf.agent.episode`): a
step's prompts are sent one call per prompt to the least-loaded engine (as single-turn sampling is), and every
episode advances turn by turn without waiting for the others. With ``agent.barrier`` the whole batch is split
over the engines instead and the episodes of an engine wait for each other at every turn (the turn-barrier
design, kept for comparison). An episode ends when the model answers without a call (tools), when the env says
``done`` or the scheduler says finished, after ``agent.max_turns`` model turns, or when ``rollout.max_new_tokens``
(the budget of the whole episode, environment tokens included) runs out (``finish_reason`` "length").

The result is one :class:`~raylhf.core.batch.Rollout` per episode whose ``response_mask`` is 1 on the model's
tokens and 0 on the environment's, so :func:`raylhf.driver.phases.to_train_batch` gives environment tokens zero
loss weight; the reward functions score the whole episode's text, and an env's own rewards
(``episode["env_reward"]``) add to the total as ``reward/env`` (:meth:`raylhf.driver.phases.Scores.add_env`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Sequence
from typing import Any

from raylhf.agent.episode import Bound, EpisodeProgram, turn_seed
from raylhf.agent.tools import tool_spec
from raylhf.config.sandbox import SandboxConfig
from raylhf.core.batch import Rollout
from raylhf.data import PromptExample, render_prompt

__all__ = ["EpisodeProgram", "EpisodeRunner", "episode_metrics", "turn_seed"]


def program_of(agent: Any, tokenizer_path: str, sandbox: Any = None) -> EpisodeProgram:
    """The :class:`EpisodeProgram` of an ``agent`` config section and the run's ``sandbox`` section (the limits of
    the ``python`` tool; None: the defaults), which travels with the program to the engines."""
    box = sandbox.model_dump() if hasattr(sandbox, "model_dump") else dict(sandbox or SandboxConfig().model_dump())
    return EpisodeProgram(
        tokenizer=tokenizer_path, max_turns=agent.max_turns, template=agent.template, tools=tuple(agent.tools),
        env=agent.env, env_config=json.dumps(agent.env_config, sort_keys=True), scheduler=agent.scheduler,
        max_tool_response_tokens=agent.max_tool_response_tokens, timeout_s=agent.tool_timeout_s,
        max_concurrent_steps=agent.max_concurrent_steps, max_turn_tokens=agent.max_turn_tokens,
        env_reward=agent.env_reward, barrier=agent.barrier, sandbox=json.dumps(box, sort_keys=True))


class EpisodeRunner:
    """Runs multi-turn episodes for one run. Called like :func:`raylhf.driver.phases.generate`
    (``runner(rollout_group, prompt_ids, n, seed=...)``), so it is the online loop's rollout function;
    :meth:`run` drives the same episodes with a local turn sampler (tests script one)."""

    def __init__(self, program: EpisodeProgram, max_new_tokens: int) -> None:
        self.program, self.max_new_tokens = program, max_new_tokens
        self.bound: Bound = program.bind()
        self.tokenizer = self.bound.tokenizer
        self.rows: dict[tuple[int, ...], dict[str, Any]] = {}  # prompt ids -> its data row (the env's reset)

    @classmethod
    def from_config(cls, agent: Any, tokenizer_path: str, max_new_tokens: int,
                    sandbox: Any = None) -> EpisodeRunner:
        return cls(program_of(agent, tokenizer_path, sandbox), max_new_tokens)

    # ---- prompts ---------------------------------------------------------------------------------
    def tool_specs(self) -> list[dict[str, Any]]:
        return [tool_spec(n, fn) for n, fn in self.bound.tools.items()]

    def prepare(self, examples: Sequence[Any]) -> list[Any]:
        """The prompts as the episodes start from them: with tools, the tools rendered into their system message
        (one is added when there is none); each prompt's data row is kept for the env's ``reset``."""
        out = []
        template, specs = self.bound.template, self.tool_specs()
        for ex in examples:
            msgs = [dict(m) for m in ex.messages]
            if template is not None and specs:
                if msgs and msgs[0].get("role") == "system":
                    msgs[0]["content"] = template.format_tools(specs, msgs[0].get("content") or "")
                else:
                    msgs.insert(0, {"role": "system", "content": template.format_tools(specs, "")})
            ex = dataclasses.replace(ex, messages=msgs)
            self.rows[tuple(render_prompt(self.tokenizer, ex.messages))] = {"messages": msgs, **ex.extras}
            out.append(ex)
        return out


    def tools_prompt_tokens(self) -> int:
        """Tokens of a prompt holding only the tools' system message and an empty user turn (the least any
        prompt of the run takes)."""
        if self.bound.template is None or not self.bound.tools:
            return 0
        ex = self.prepare([PromptExample([{"role": "user", "content": ""}])])[0]
        return len(render_prompt(self.tokenizer, ex.messages))

    def items(self, prompt_ids: list[list[int]]) -> list[tuple[int, list[int], dict[str, Any]]]:
        return [(i, list(ids), self.rows.get(tuple(ids), {})) for i, ids in enumerate(prompt_ids)]

    # ---- episodes ------------------------------------------------------------------------------
    def __call__(self, rollout_group: Any, prompt_ids: list[list[int]], n: int, *, seed: int | None = None,
                 temperature: float | None = None, max_new_tokens: int | None = None) -> list[Rollout]:
        """``n`` episodes per prompt on the engines, ordered prompt by prompt (as single-turn rollouts are)."""
        kw = {"seed": seed, "temperature": temperature, "max_new_tokens": int(max_new_tokens or self.max_new_tokens)}
        items = self.items(prompt_ids)
        if self.program.barrier:  # the whole batch, split over the engines: each engine's episodes wait together
            parts = rollout_group.call_split("episodes", items, n, self.program, **kw)
        else:
            parts = rollout_group.submit_routed("episodes", items, n, self.program, cost=lambda _: n, **kw).result()
        return [r for part in parts for r in part]

    def submit_group(self, rollout_group: Any, ids: list[int], index: int, n: int, *, seed: int | None,
                     tag: str | None = None) -> Any:
        """``n`` episodes of one prompt (prompt index ``index``) on the least-loaded engine, not waited for
        (dynamic sampling); ``tag``: the engines' ``abort(tag)`` stops them."""
        item = (index, list(ids), self.rows.get(tuple(ids), {}))
        return rollout_group.submit_routed("episodes", [item], n, self.program, cost=lambda _: n, seed=seed,
                                           max_new_tokens=self.max_new_tokens, tag=tag)

    def run(self, sample: Any, prompt_ids: list[list[int]], n: int, *, seed: int | None = None,
            max_new_tokens: int | None = None, max_model_len: int = 1 << 30) -> list[Rollout]:
        """The same episodes on a local event loop with ``sample`` as the turn sampler (tests)."""
        async def main() -> list[Rollout]:
            coros = self.bound.coroutines(sample, self.items(prompt_ids), n, seed=seed,
                                          budget=int(max_new_tokens or self.max_new_tokens),
                                          max_model_len=max_model_len)
            return list(await asyncio.gather(*coros))

        return asyncio.run(main())


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
