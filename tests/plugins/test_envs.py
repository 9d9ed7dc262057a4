"""Environments and multi-turn schedulers (raylhf/agent/env.py, scheduler.py, episode.py), on a scripted turn
sampler: ms-swift-shaped plugin files load unchanged, env rewards, token-in/token-out by value, a slow env step of
one episode does not hold the others up (and does with agent.barrier), a scheduler that rewrites history is an
error, check-plugin, and the config's rules."""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from raylhf.agent.episode import EpisodeError, EpisodeProgram
from raylhf.agent.multiturn import EpisodeRunner
from raylhf.assets import TOKENIZER_DIR, load_tokenizer
from raylhf.config import GRPOConfig, build_config
from raylhf.config.loader import ConfigError
from raylhf.data import PromptExample, render_prompt
from raylhf.plugins.check import check_file
from raylhf.plugins.registry import ENVS, SCHEDULERS, load_plugin

SWIFT_ENV = '''
import asyncio
import re
import time

from swift.plugin import Env, envs


class CountEnv(Env):
    """Says how many turns are left; reward 0.5 per step; done after env_config['steps'] steps. A row whose
    solution is 'slow' takes 1 s on its first step. Observations carry the time they were made."""

    def __init__(self, env_config):
        super().__init__(env_config)
        self.steps = int(env_config.get("steps", 2))

    async def reset(self, config):
        self.slow = config.data_dict.get("solution") == "slow"
        self.done_steps = 0
        return "", {}, "You count."

    async def step(self, messages):
        assert messages[-1]["role"] == "assistant"
        if self.slow and self.done_steps == 0:
            await asyncio.sleep(1.0)
        self.done_steps += 1
        return f"left {self.steps - self.done_steps} t={time.monotonic():.4f}", 0.5, self.done_steps >= self.steps, {}

    async def close(self):
        pass


envs["count"] = CountEnv
'''

SWIFT_SCHEDULER = '''
from swift.plugin import MultiTurnScheduler, multi_turns


class Nudge(MultiTurnScheduler):
    def step(self, infer_request, response_choice, current_turn):
        infer_request.messages.append({"role": "user", "content": f"again ({current_turn})"})
        return {"infer_request": infer_request, "response_token_ids": [[1, 2, 3]]}


class Rewrite(MultiTurnScheduler):
    def step(self, infer_request, response_choice, current_turn):
        infer_request.messages[-1]["content"] += " Wait, let me check."  # continue the model's own turn
        return infer_request


multi_turns["nudge"] = Nudge
multi_turns["rewrite"] = Rewrite
'''


@pytest.fixture(scope="module")
def tok() -> Any:
    return load_tokenizer()


@pytest.fixture(scope="module")
def plugins(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("swift_plugins")
    (root / "swift_env.py").write_text(SWIFT_ENV)
    (root / "swift_sched.py").write_text(SWIFT_SCHEDULER)
    out = {"env": root / "swift_env.py", "sched": root / "swift_sched.py"}
    for p in out.values():
        load_plugin(str(p))
    return out


@dataclass
class Turn:
    tokens: list[int]
    logprobs: list[float]
    finish_reason: str


class Scripted:
    """Turn sampler: model turn ``t`` of every episode samples the token ids ``turns[t]``; each call is recorded
    with its start time and the episode (its prompt's last token)."""

    def __init__(self, turns: list[list[int]], delay: float = 0.0) -> None:
        self.turns, self.delay, self.calls = turns, delay, []

    async def __call__(self, ids: list[int], limit: int, seed: int | None) -> Turn:
        prior = {len(c["ids"]) for c in self.calls if len(c["ids"]) < len(ids) and ids[: len(c["ids"])] == c["ids"]}
        self.calls.append({"ids": list(ids), "t": time.monotonic(), "turn": len(prior) + 1})
        await asyncio.sleep(self.delay)
        out = self.turns[len(prior)][:limit]
        return Turn(out, [-0.5] * len(out), "stop")


def _runner(tokenizer: str, max_new_tokens: int = 200, **kw: Any) -> EpisodeRunner:
    return EpisodeRunner(EpisodeProgram(tokenizer=tokenizer, **kw), max_new_tokens)


def _prompts(runner: EpisodeRunner, rows: list[dict[str, str]]) -> list[list[int]]:
    exs = runner.prepare([PromptExample([{"role": "user", "content": r["q"]}], {"solution": r["solution"]})
                          for r in rows])
    return [render_prompt(runner.tokenizer, ex.messages) for ex in exs]


def test_ms_swift_env_file_drives_episodes_with_rewards(tok: Any, plugins: dict[str, Path]) -> None:
    assert ENVS.source("count").endswith("swift_env.py (envs)")
    runner = _runner(str(TOKENIZER_DIR), env="count", env_config='{"steps": 2}', max_turns=4)
    prompts = _prompts(runner, [{"q": "count", "solution": "1"}])
    one, two = [*tok.encode("one", add_special_tokens=False), 2], [*tok.encode("two", add_special_tokens=False), 2]
    (e,) = runner.run(Scripted([one, two, one]), prompts, 1, seed=3)
    # reset's system message replaced the prompt's start; two model turns, the env's turn between them; done
    assert tok.decode(e.prompt_ids).startswith("<|im_start|>system\nYou count.<|im_end|>")
    assert e.episode == {"turns": 2, "tool_calls": 2, "tool_errors": 0, "env_reward": 1.0}  # env steps count as calls
    assert "left 1 t=" in e.text and e.finish_reason == "stop"
    assert e.response_mask is not None and e.response_mask[: len(one)] == [1.0] * len(one)
    # agent.env_reward: last / mean instead of the sum
    runner = _runner(str(TOKENIZER_DIR), env="count", env_config='{"steps": 3}', max_turns=4, env_reward="mean")
    (e,) = runner.run(Scripted([one, two, one]), _prompts(runner, [{"q": "c", "solution": "1"}]), 1)
    assert e.episode["env_reward"] == 0.5 and e.episode["turns"] == 3


def test_token_in_token_out_never_retokenizes(tok: Any, plugins: dict[str, Path], tmp_path: Path) -> None:
    """The trained sequence is the sampled ids plus the env's ids, by value, even where re-tokenizing the text
    (or re-rendering the conversation with a chat template that trims assistant turns) gives other tokens."""
    trimming = tok.chat_template.replace("message['content']", "(message['content'] | trim)")
    tok.chat_template = trimming
    tok.save_pretrained(tmp_path / "tok")
    tok.chat_template = load_tokenizer().chat_template
    runner = _runner(str(tmp_path / "tok"), env="count", env_config='{"steps": 2}', max_turns=3)
    prompts = _prompts(runner, [{"q": "go", "solution": "1"}])
    # turn 1 samples "hel" + "lo " in pieces (not the tokenizer's own split), turn 2 "4" then "2"
    turn1 = [*tok.encode("hel", add_special_tokens=False), *tok.encode("lo ", add_special_tokens=False), 2]
    turn2 = [*tok.encode("4", add_special_tokens=False), *tok.encode("2", add_special_tokens=False), 2]
    assert tok.encode("hello", add_special_tokens=False) != turn1[:-1]  # a re-tokenizer would change them
    assert tok.encode("42", add_special_tokens=False) != turn2[:-1] or len(turn2) > 2
    (e,) = runner.run(Scripted([turn1, turn2]), prompts, 1)
    obs = re.search(r"left 1 t=\d+\.\d+", e.text).group(0)  # type: ignore[union-attr]
    env_ids = tok.encode("\n<|im_start|>user\n" + obs + "<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)
    system = [{"role": "system", "content": "You count."}, {"role": "user", "content": "go"}]
    assert e.prompt_ids == render_prompt(runner.tokenizer, system)  # the env's reset set the system message
    assert e.response_ids == turn1 + env_ids + turn2  # by value: exactly what was sampled, then the env's ids
    assert e.response_mask == [1.0] * len(turn1) + [0.0] * len(env_ids) + [1.0] * len(turn2)
    assert e.logprobs == [-0.5] * len(turn1) + [0.0] * len(env_ids) + [-0.5] * len(turn2)
    # what a re-rendering implementation would train on is another sequence
    messages = [{"role": "system", "content": "You count."}, {"role": "user", "content": "go"},
                {"role": "assistant", "content": "hello "}, {"role": "user", "content": obs},
                {"role": "assistant", "content": "42"}]
    rerendered = tok.encode(tok.apply_chat_template(messages, tokenize=False, chat_template=trimming),
                            add_special_tokens=False)
    assert rerendered != e.prompt_ids + e.response_ids


def test_a_slow_env_step_does_not_hold_up_the_other_episodes(tok: Any, plugins: dict[str, Path]) -> None:
    rows = [{"q": "a", "solution": "slow"}, {"q": "b", "solution": "1"}, {"q": "c", "solution": "1"}]
    one = [*tok.encode("x", add_special_tokens=False), 2]

    def run(barrier: bool) -> tuple[Scripted, list[Any]]:
        runner = _runner(str(TOKENIZER_DIR), env="count", env_config='{"steps": 3}', max_turns=3, barrier=barrier)
        gen = Scripted([one, one, one], delay=0.05)
        t0 = time.monotonic()
        eps = runner.run(gen, _prompts(runner, rows), 1)
        starts = [render_prompt(tok, [{"role": "system", "content": "You count."}, {"role": "user", "content": r["q"]}])
                  for r in rows]  # the prompts after the env's reset
        for c in gen.calls:
            c["t"] -= t0
            c["episode"] = next(i for i, p in enumerate(starts) if c["ids"][: len(p)] == p)
        return gen, eps

    gen, eps = run(barrier=False)
    assert [e.episode["turns"] for e in eps] == [3, 3, 3]
    slow_turn2 = next(c["t"] for c in gen.calls if c["episode"] == 0 and c["turn"] == 2)
    fast_turn3 = [c["t"] for c in gen.calls if c["episode"] != 0 and c["turn"] == 3]
    assert slow_turn2 > 1.0 and len(fast_turn3) == 2
    assert max(fast_turn3) < 0.6 < slow_turn2  # the others finished all their turns during the slow step
    # the turn barrier: every episode's second turn waits for the slow step
    gen, eps = run(barrier=True)
    assert [e.episode["turns"] for e in eps] == [3, 3, 3]
    turn2 = [c["t"] for c in gen.calls if c["turn"] == 2]
    assert len(turn2) == 3 and min(turn2) > 1.0


def test_ms_swift_scheduler_appends_and_a_rewriting_one_is_an_error(tok: Any, plugins: dict[str, Path]) -> None:
    assert SCHEDULERS.source("nudge").endswith("swift_sched.py (multi_turns)")
    one = [*tok.encode("hm", add_special_tokens=False), 2]
    runner = _runner(str(TOKENIZER_DIR), scheduler="nudge", max_turns=3)
    (e,) = runner.run(Scripted([one, one, one]), _prompts(runner, [{"q": "q", "solution": "1"}]), 1)
    assert e.episode["turns"] == 3 and "again (1)" in e.text and "again (2)" in e.text and "again (3)" not in e.text
    runner = _runner(str(TOKENIZER_DIR), scheduler="rewrite", max_turns=3)
    with pytest.raises(EpisodeError, match=r"scheduler 'rewrite' changed message 1 \(assistant\).*may only append"):
        runner.run(Scripted([one, one, one]), _prompts(runner, [{"q": "q", "solution": "1"}]), 1)


def test_env_errors_and_timeouts_become_observations(tok: Any, tmp_path: Path) -> None:
    (tmp_path / "bad_env.py").write_text('''
import time
from raylhf.plugins import Env, register_env

@register_env("flaky")
class Flaky(Env):
    def step(self, messages):  # a plain method: runs in a thread
        if len(messages) < 4:
            raise RuntimeError("backend down")
        time.sleep(2)
        return "late", 1.0, False, {}
''')
    load_plugin(str(tmp_path / "bad_env.py"))
    one = [*tok.encode("x", add_special_tokens=False), 2]
    runner = _runner(str(TOKENIZER_DIR), env="flaky", max_turns=3, timeout_s=0.3)
    (e,) = runner.run(Scripted([one, one, one]), _prompts(runner, [{"q": "q", "solution": "1"}]), 1)
    assert "error: RuntimeError: backend down" in e.text
    assert "error: the environment step timed out after 0.3s (agent.tool_timeout_s)" in e.text
    assert e.episode == {"turns": 3, "tool_calls": 3, "tool_errors": 3}  # the last turn's step ran (its reward) too


def test_check_plugin_checks_envs_and_schedulers(plugins: dict[str, Path]) -> None:
    found = {(f.kind, f.name): f for f in check_file(str(plugins["env"]))}
    assert found[("env", "count")].ok, found
    assert "step -> observation 'left 1" in found[("env", "count")].detail
    found = {(f.kind, f.name): f for f in check_file(str(plugins["sched"]))}
    assert found[("multi-turn scheduler", "nudge")].ok
    assert not found[("multi-turn scheduler", "rewrite")].ok
    assert "changed earlier messages" in found[("multi-turn scheduler", "rewrite")].detail


def test_agent_config_rules(plugins: dict[str, Path]) -> None:
    cfg = build_config(GRPOConfig, overrides=[("plugins", [str(plugins["env"])]), ("agent.env", "count"),
                                              ("agent.env_config", {"steps": 2})])
    assert cfg.agent.enabled and cfg.agent.env_config == {"steps": 2}
    with pytest.raises(ConfigError, match=r"unknown env 'nope' in agent.env; registered: .*count"):
        build_config(GRPOConfig, overrides=[("plugins", [str(plugins["env"])]), ("agent.env", "nope")])
    with pytest.raises(ConfigError, match=r"agent.tools and agent.env are both set"):
        build_config(GRPOConfig, overrides=[("plugins", [str(plugins["env"])]), ("agent.env", "count"),
                                            ("agent.template", "hermes"), ("agent.tools", ["calculator"])])
    with pytest.raises(ConfigError, match=r"async_steps=1 .* multi-turn episodes on-policy"):
        build_config(GRPOConfig, overrides=[("plugins", [str(plugins["env"])]), ("agent.env", "count"),
                                            ("grpo.async_steps", 1)])
