"""Every way to bring a reward ends as a Scorer: TRL functions, async functions, ms-swift ORM/PRM classes
(old and new call shapes, `orms` dicts, the `swift.plugin` stand-in), decorators; the weighted sum and None."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from actors.reward import RewardWorker
from raylhf.plugins.registry import load_plugin
from rewards.base import RewardBatch
from rewards.registry import REWARDS
from rewards.scoring import CombinedScorer, build_scorers, function_scorer


def _batch(n: int = 3) -> RewardBatch:
    return RewardBatch(prompts=[f"q{i}" for i in range(n)], completions=[f"answer {i}" for i in range(n)],
                       completion_ids=[[1] * (i + 1) for i in range(n)], columns={"solution": [str(i) for i in range(n)]},
                       context={"max_new_tokens": 8})


def _run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


SWIFT_PLUGIN = '''
from swift.plugin import ORM, PRM, orms, prms
from swift.llm import InferRequest


class OldShape(ORM):
    """ms-swift's original shape: requests with .messages, ground truths from the 'solution' column."""
    def __init__(self, bonus=0.0):
        self.bonus = bonus

    def __call__(self, infer_requests, ground_truths=None, **kwargs):
        out = []
        for req, gt in zip(infer_requests, ground_truths):
            assert req.messages[-1]["role"] == "assistant"
            out.append(float(req.messages[-1]["content"].endswith(gt)) + self.bonus)
        return out


class NewShape(ORM):
    """Later 3.x shape: completions plus dataset columns as keywords."""
    def __call__(self, completions, solution, response_token_ids, **kwargs):
        return [len(ids) * 10.0 for ids in response_token_ids]


class StepPRM(PRM):
    def __call__(self, infer_requests, **kwargs):
        return [[0.9, 0.2 + i, 0.5] for i in range(len(infer_requests))]


orms["old_shape"] = OldShape
orms["new_shape"] = NewShape
prms["step_prm"] = StepPRM
'''


@pytest.fixture(scope="module")
def swift_plugin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("plugins") / "swift_plugin.py"
    path.write_text(SWIFT_PLUGIN)
    load_plugin(str(path))
    return path


def test_ms_swift_plugin_file_loads_unchanged(swift_plugin: Path) -> None:
    assert {"old_shape", "new_shape", "step_prm"} <= set(REWARDS)
    assert getattr(sys.modules["swift"], "__raylhf_shim__", False)
    b = _batch()
    old = function_scorer({"name": "old_shape", "kwargs": {"bonus": 0.5}})
    assert _run(old.score(b)) == [1.5, 1.5, 1.5]  # 'answer i' ends with solution 'i'
    new = function_scorer({"name": "new_shape"})
    assert _run(new.score(b)) == [10.0, 20.0, 30.0]


def test_prm_steps_are_aggregated_and_kept(swift_plugin: Path) -> None:
    b = _batch(2)
    prm = function_scorer({"name": "step_prm", "aggregate": "min"})
    assert prm.kind == "prm"
    assert _run(prm.score(b)) == pytest.approx([0.2, 0.5])  # min of [0.9, 0.2, 0.5] and [0.9, 1.2, 0.5]
    assert prm.last_steps == [pytest.approx([0.9, 0.2, 0.5]), pytest.approx([0.9, 1.2, 0.5])]
    last = function_scorer({"name": "step_prm", "aggregate": "last"})
    assert _run(last.score(b)) == [0.5, 0.5]


def test_loading_the_same_plugin_twice_is_fine_but_a_clash_is_not(swift_plugin: Path, tmp_path: Path) -> None:
    load_plugin(str(swift_plugin))  # idempotent
    other = tmp_path / "clash.py"
    other.write_text("def acc(completions, **kw):\n    return [0.0] * len(completions)\n\norms = {'accuracy': acc}\n")
    with pytest.raises(ValueError, match=r"'accuracy' is registered twice.*rename"):
        load_plugin(str(other))


def test_trl_function_async_function_and_partial_kwargs(tmp_path: Path) -> None:
    f = tmp_path / "fns.py"
    f.write_text(
        "import asyncio\n"
        "def scaled(completions, scale=1.0):\n"  # no **kwargs: only what it names is passed
        "    return [scale * len(c) for c in completions]\n"
        "async def remote_like(prompts, completions, solution, step=None, **kw):\n"
        "    await asyncio.sleep(0)\n"
        "    return [None if s == '1' else float(s) for s in solution]\n")
    b = _batch()
    s = function_scorer({"name": f"{f}:scaled", "kwargs": {"scale": 2.0}})
    assert _run(s.score(b)) == [16.0, 16.0, 16.0]
    a = function_scorer({"name": f"{f}:remote_like"})
    assert a.is_async and _run(a.score(b)) == [0.0, None, 2.0]


def test_decorated_classes_and_async_orm(tmp_path: Path) -> None:
    f = tmp_path / "decorated.py"
    f.write_text(
        "from rewards import AsyncORM, register_orm\n"
        "@register_orm('dec_async')\n"
        "class Dec(AsyncORM):\n"
        "    async def __call__(self, completions, **kwargs):\n"
        "        return [1.0 for _ in completions]\n")
    load_plugin(str(f))
    assert _run(function_scorer({"name": "dec_async"}).score(_batch(2))) == [1.0, 1.0]


@pytest.mark.parametrize(("body", "error"), [
    ("return [1.0]", "returned 1 values for 3 completions"),
    ("return [1.0, float('nan'), 0.0]", r"returned nan for completion 1; return None"),
    ("return [1.0, 'x', 0.0]", r"returned 'x' for completion 1"),
    ("return 3.0", "not a list of scores"),
])
def test_bad_outputs_name_the_reward(tmp_path: Path, body: str, error: str) -> None:
    f = tmp_path / "bad.py"
    f.write_text(f"def bad(completions, **kw):\n    {body}\n")
    with pytest.raises((ValueError, TypeError), match=error):
        _run(function_scorer({"name": f"{f}:bad"}).score(_batch()))


def test_combined_weighted_sum_skips_none_and_marks_unscored(tmp_path: Path) -> None:
    f = tmp_path / "parts.py"
    f.write_text(
        "def a(completions, **kw):\n    return [1.0, None, None]\n"
        "def b(completions, **kw):\n    return [2.0, 3.0, None]\n")
    combined = CombinedScorer(build_scorers(functions=[{"name": f"{f}:a", "weight": 0.5},
                                                       {"name": f"{f}:b", "weight": 2.0}]))
    out = _run(combined.score_all(_batch()))
    # 0.5*1 + 2*2 = 4.5; a is None -> 2*3 = 6; nobody scored -> None
    assert out["total"] == [4.5, 6.0, None]
    assert out["per_function"] == {"a": [1.0, None, None], "b": [2.0, 3.0, None]}


def test_reward_worker_in_process_weights_labels_and_context(tmp_path: Path) -> None:
    f = tmp_path / "ctx.py"
    f.write_text("def maxlen(completions, max_new_tokens, step, **kw):\n"
                 "    return [float(max_new_tokens + step)] * len(completions)\n")
    w = RewardWorker(functions=[{"name": "length", "kwargs": {"target": 2}, "weight": 1.0},
                                {"name": "length", "kwargs": {"target": 4}, "weight": -1.0},
                                {"name": f"{f}:maxlen", "weight": 0.5}], context={"max_new_tokens": 8})
    w.setup()
    try:
        items = [{"prompt": "p", "completion": "c", "completion_ids": [1] * k, "solution": "0"} for k in (2, 4)]
        out = w.score(items, step=2)
    finally:
        w.close()
    # length target 2: -|2-2|/2=0, -|4-2|/2=-1; target 4: -0.5, 0 (weight -1); maxlen: 0.5*(8+2)=5
    assert out["per_function"]["length"] == [0.0, -1.0]
    assert out["per_function"]["length_"] == [-0.5, 0.0]
    assert out["total"] == pytest.approx([0.0 + 0.5 + 5.0, -1.0 - 0.0 + 5.0])


def test_config_kwargs_win_over_a_data_column_of_the_same_name() -> None:
    b = RewardBatch(prompts=["q"], completions=["<think>a</think><answer>1</answer>"],
                    columns={"pattern": ["nothing matches this"]})
    s = function_scorer({"name": "format", "kwargs": {"pattern": r"<think>.*</think><answer>.*</answer>"}})
    assert _run(s.score(b)) == [1.0]
