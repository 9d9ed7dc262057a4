"""logging.log_completions: the records of a step's sampled episodes, rollouts/step-<N>.jsonl, the tracker output
(TensorBoard text, a W&B table through a fake wandb module). Fast: no Ray, no engines, no tokenizer download."""

from __future__ import annotations

import io
import json
import sys
import types
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from raylhf.config.run import LoggingConfig
from raylhf.core.batch import Rollout
from raylhf.driver import metrics_log
from raylhf.driver.completions import (
    advantage_of,
    completion_records,
    completions_path,
    decode_completion,
    pick,
    table,
    to_markdown,
    write_completions,
)
from raylhf.driver.metrics_log import MetricsLogger
from raylhf.driver.phases import Scores

EOS = 0


class CharTokenizer:
    """Token id ``i`` is ``chr(i)``; id 0 is the special ``<eos>``. Records every decode call."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        self.calls.append(list(ids))
        return "".join("" if i == EOS and skip_special_tokens else "<eos>" if i == EOS else chr(i) for i in ids)


def ids(text: str) -> list[int]:
    return [ord(c) for c in text]


def single_turn(prompt_index: int, text: str, finish: str = "stop") -> Rollout:
    resp = ids(text) + ([EOS] if finish == "stop" else [])
    return Rollout(prompt_index=prompt_index, prompt_ids=ids(f"Q{prompt_index}?"), response_ids=resp,
                   logprobs=[-0.5] * len(resp), finish_reason=finish, version=3)


def agent_episode() -> Rollout:
    """The model calls a tool, the environment answers (mask 0), the model answers."""
    call, answer, final = ids("calc(2+2)"), ids("=4"), [*ids("4"), EOS]
    resp = call + answer + final
    mask = [1.0] * len(call) + [0.0] * len(answer) + [1.0] * len(final)
    return Rollout(prompt_index=1, prompt_ids=ids("Q1?"), response_ids=resp, logprobs=[-0.1] * len(resp),
                   finish_reason="stop", response_mask=mask, episode={"turns": 2, "tool_calls": 1, "tool_errors": 0},
                   version=2)


def step_batch() -> tuple[list[Rollout], Scores, torch.Tensor]:
    """Two prompts, two samples each (group by group); the agent episode is prompt 1's sample 0."""
    rollouts = [single_turn(0, "4"), single_turn(0, "five", finish="length"), agent_episode(), single_turn(1, "3")]
    scores = Scores(total=torch.tensor([1.5, float("nan"), 1.0, 0.5]),
                    per_function={"accuracy": [1.0, None, 1.0, 0.0], "format": [0.5, None, 0.0, 0.5]},
                    steps={}, metrics={}, weights={"accuracy": 1.0, "format": 1.0})
    return rollouts, scores, torch.tensor([0.7, 0.0, 0.25, -0.25])


# ---- which rollouts --------------------------------------------------------------------------------------

def test_pick_spreads_over_prompts_without_rng() -> None:
    rollouts = [single_turn(p, "x") for p in (0, 0, 0, 1, 1, 1, 2, 2, 2)]
    state = torch.get_rng_state()
    assert pick(rollouts, 2) == [0, 3]
    assert pick(rollouts, 3) == [0, 3, 6]
    assert pick(rollouts, 5) == [0, 1, 3, 4, 6]  # sample 0 of each prompt, then sample 1
    assert pick(rollouts, 100) == list(range(9))
    assert pick(rollouts, 0) == [] and pick([], 4) == []
    assert torch.equal(state, torch.get_rng_state())


# ---- the records -----------------------------------------------------------------------------------------

def test_single_turn_record() -> None:
    rollouts, scores, adv = step_batch()
    (rec,) = completion_records(7, rollouts, scores, adv, CharTokenizer(), 1)
    assert rec == {"step": 7, "index": 0, "prompt_index": 0, "prompt": "Q0?", "completion": "4<eos>", "reward": 1.5,
                   "rewards": {"accuracy": 1.0, "format": 0.5}, "advantage": 0.7, "version": 3,
                   "finish_reason": "stop", "response_length": 2}


def test_env_spans_are_decoded_apart_and_wrapped() -> None:
    tok = CharTokenizer()
    ep = agent_episode()
    assert decode_completion(tok, ep) == "calc(2+2)<env>=4</env>4<eos>"
    assert tok.calls == [ids("calc(2+2)"), ids("=4"), [*ids("4"), EOS]]  # span by span, never across a boundary
    rollouts, scores, adv = step_batch()
    recs = completion_records(7, rollouts, scores, adv, CharTokenizer(), 2)
    assert [r["index"] for r in recs] == [0, 2]  # sample 0 of each prompt
    rec = recs[1]
    assert rec["completion"] == "calc(2+2)<env>=4</env>4<eos>"
    assert rec["episode"] == {"turns": 2, "tool_calls": 1, "tool_errors": 0}
    assert (rec["reward"], rec["rewards"], rec["advantage"], rec["version"]) == (
        1.0, {"accuracy": 1.0, "format": 0.0}, 0.25, 2)
    assert rec["response_length"] == len(ep.response_ids)
    assert "episode" not in recs[0]


def test_env_span_at_the_edges_and_a_bad_mask() -> None:
    r = Rollout(0, [], ids("ab") + ids("c") + ids("d"), [0.0] * 4, "length", response_mask=[0.0, 0.0, 1.0, 0.0])
    assert decode_completion(CharTokenizer(), r) == "<env>ab</env>c<env>d</env>"
    r.response_mask = [1.0]
    with pytest.raises(ValueError, match="response_mask has 1 entries for 4"):
        decode_completion(CharTokenizer(), r)


def test_unscored_and_missing_values_are_null() -> None:
    rollouts, scores, _ = step_batch()
    recs = completion_records(1, rollouts, scores, None, CharTokenizer(), 4)
    unscored = recs[1]
    assert unscored["index"] == 1 and unscored["reward"] is None
    assert unscored["rewards"] == {"accuracy": None, "format": None} and unscored["advantage"] is None
    assert unscored["finish_reason"] == "length"
    (no_scores,) = completion_records(1, rollouts, None, None, CharTokenizer(), 1)
    assert no_scores["reward"] is None and no_scores["rewards"] == {}


def test_advantage_of_scalars_and_token_rows() -> None:
    assert advantage_of([0.5, -1.0], 1) == -1.0
    assert advantage_of(torch.tensor([0.5, float("nan")]), 1) is None
    rows = [torch.tensor([0.0, 0.0, 1.0, 3.0]), torch.zeros(3)]  # prompt positions 0, per-token GAE
    assert advantage_of(rows, 0) == 2.0 and advantage_of(rows, 1) == 0.0
    assert advantage_of(torch.tensor([[0.0, 2.0], [0.0, 4.0]]), 1) == 4.0
    assert advantage_of(None, 0) is None


# ---- rollouts/step-<N>.jsonl -----------------------------------------------------------------------------

def test_jsonl_file(tmp_path: Path) -> None:
    rollouts, scores, adv = step_batch()
    recs = completion_records(12, rollouts, scores, adv, CharTokenizer(), 4)
    path = write_completions(tmp_path, 12, recs)
    assert path == tmp_path / "rollouts" / "step-12.jsonl" == completions_path(tmp_path, 12)
    lines = path.read_text().splitlines()
    assert len(lines) == 4
    back = [json.loads(ln) for ln in lines]
    assert back == json.loads(json.dumps(recs))
    assert back[1]["reward"] is None  # NaN is written as null: every line is strict JSON
    assert "NaN" not in path.read_text()
    write_completions(tmp_path, 12, recs[:1])  # a resumed run repeating the step replaces the file
    assert len(path.read_text().splitlines()) == 1
    assert [p.name for p in path.parent.iterdir()] == ["step-12.jsonl"]


def test_zero_writes_nothing(tmp_path: Path) -> None:
    rollouts, scores, adv = step_batch()
    assert LoggingConfig().log_completions == 4 and LoggingConfig(log_completions=0).log_completions == 0
    assert completion_records(1, rollouts, scores, adv, CharTokenizer(), 0) == []
    assert write_completions(tmp_path, 1, []) is None
    run = _online_run(tmp_path, 0)
    run.log_completions(1, rollouts, scores, adv)
    assert not (tmp_path / "rollouts").exists()
    assert run.logger.calls == []


def _online_run(run_dir: Path, n: int) -> Any:
    """An OnlineRun with only what ``log_completions`` reads (no actors)."""
    from raylhf.driver.online import OnlineRun

    class Recorder:
        def __init__(self) -> None:
            self.calls: list[tuple[int, list[dict[str, Any]]]] = []

        def log_completions(self, step: int, records: list[dict[str, Any]]) -> None:
            self.calls.append((step, records))

    run = OnlineRun.__new__(OnlineRun)
    run.cfg = SimpleNamespace(logging=LoggingConfig(log_completions=n))
    run.tokenizer = CharTokenizer()
    run.life = SimpleNamespace(run_dir=run_dir, logger=Recorder())
    return run


def test_online_run_writes_the_file_and_the_trackers(tmp_path: Path) -> None:
    rollouts, scores, adv = step_batch()
    run = _online_run(tmp_path, 3)
    run.log_completions(5, rollouts, scores, adv)
    lines = (tmp_path / "rollouts" / "step-5.jsonl").read_text().splitlines()
    assert [json.loads(ln)["index"] for ln in lines] == [0, 1, 2]
    ((step, records),) = run.logger.calls
    assert step == 5 and [r["index"] for r in records] == [0, 1, 2]


# ---- trackers --------------------------------------------------------------------------------------------

def test_table_and_markdown() -> None:
    rollouts, scores, adv = step_batch()
    recs = completion_records(2, rollouts, scores, adv, CharTokenizer(), 4)
    columns, rows = table(recs)
    assert columns == ["step", "index", "prompt_index", "prompt", "completion", "reward", "reward/accuracy",
                       "reward/format", "advantage", "version", "finish_reason", "response_length",
                       "episode/tool_calls", "episode/tool_errors", "episode/turns"]
    assert len(rows) == 4 and all(len(r) == len(columns) for r in rows)
    assert rows[2][columns.index("episode/turns")] == 2 and rows[0][columns.index("episode/turns")] is None
    md = to_markdown(recs)
    assert md.count("---") == 3 and "**#2** (prompt 1): reward 1, accuracy 1, format 0" in md
    assert "    calc(2+2)<env>=4</env>4<eos>" in md  # an indented code block


def test_logger_without_trackers_does_nothing(tmp_path: Path) -> None:
    logger = MetricsLogger(tmp_path, LoggingConfig(report_to=[]), 1, "grpo", stream=io.StringIO())
    rollouts, scores, adv = step_batch()
    logger.log_completions(1, completion_records(1, rollouts, scores, adv, CharTokenizer(), 2))
    logger.close()
    logger.log_completions(2, completion_records(1, rollouts, scores, adv, CharTokenizer(), 2))  # closed: no-op
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]


def test_tensorboard_text(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = MetricsLogger(tmp_path, LoggingConfig(report_to=["tensorboard"]), 1, "grpo", stream=io.StringIO())
    rollouts, scores, adv = step_batch()
    logger.log(3, {"reward/mean": 1.0})
    logger.log_completions(3, completion_records(3, rollouts, scores, adv, CharTokenizer(), 2))
    logger.close()
    acc = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"tensors": 0}).Reload()
    (event,) = acc.Tensors("completions/text_summary")
    text = event.tensor_proto.string_val[0].decode()
    assert event.step == 3 and "<env>=4</env>" in text and "**#0** (prompt 0)" in text


def test_wandb_table_through_a_fake_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    logged: list[tuple[dict[str, Any], int]] = []

    class Table:
        def __init__(self, columns: list[str], data: list[list[Any]]) -> None:
            self.columns, self.data = columns, data

    class Run:
        def log(self, values: dict[str, Any], step: int) -> None:
            logged.append((values, step))

        def finish(self) -> None:
            pass

    fake = types.SimpleNamespace(init=lambda **kw: Run(), Table=Table, Image=None)
    monkeypatch.setattr(metrics_log, "import_wandb", lambda: fake)
    monkeypatch.setitem(sys.modules, "wandb", None)  # a real wandb is never touched
    logger = MetricsLogger(tmp_path, LoggingConfig(report_to=["wandb"]), 1, "grpo", stream=io.StringIO())
    rollouts, scores, adv = step_batch()
    logger.log_completions(4, completion_records(4, rollouts, scores, adv, CharTokenizer(), 2))
    logger.close()
    ((values, step),) = logged
    table_ = values["completions"]
    assert step == 4 and isinstance(table_, Table)
    assert table_.columns[:6] == ["step", "index", "prompt_index", "prompt", "completion", "reward"]
    assert [row[1] for row in table_.data] == [0, 2]
