"""The code_tests reward: how rows' tests are split, how outputs compare, and planted completions (right, wrong,
hostile, gaming) scored for real in the sandbox."""

from __future__ import annotations

import pytest

from rewards.codetests import CodeTests
from rewards.codetests.compare import extract_code, json_value_matches, stdout_matches
from rewards.codetests.plan import UnsupportedTests, plan_for_row, split_asserts, split_humaneval

F = "```"


def block(code: str) -> str:
    return f"Here is my solution.\n{F}python\n{code}\n{F}\n"


# ---------------------------------------------------------------- splitting (no sandbox)

def test_asserts_split_into_candidate_calls_and_outside_checks() -> None:
    plan = split_asserts(["assert add(1, 2) == 3", "assert sorted(pair(2)) == [1, 2]", "assert is_ok(4)",
                          "assert not is_ok(5)", "assert math.isclose(root(2.0), 1.4142, rel_tol=1e-3)"],
                         setup="import math")
    assert plan.calls == ["add(1, 2)", "pair(2)", "is_ok(4)", "is_ok(5)", "root(2.0)"]
    assert [c.expr for c in plan.checks] == ["__v[0] == 3", "sorted(__v[0]) == [1, 2]", "__v[0]", "not __v[0]",
                                             "math.isclose(__v[0], 1.4142, rel_tol=0.001)"]
    # the expected values never reach the candidate's sandbox: only the calls do
    assert [c.fast for c in plan.checks] == [("eq", 3), None, ("truthy", None), ("falsy", None), None]


def test_humaneval_check_function_is_split_with_candidate_bound() -> None:
    test = ("METADATA = {}\n\ndef check(candidate):\n    data = [1, 2, 3]\n    assert candidate(data) == 6\n"
            "    assert candidate([]) == 0\n")
    plan = split_humaneval(test, "total")
    assert plan.entry_point == "total" and plan.calls == ["candidate(data)", "candidate([])"]
    assert "data = [1, 2, 3]" in plan.setup and "METADATA" in plan.setup
    with pytest.raises(UnsupportedTests, match="loops or branches"):
        split_humaneval("def check(candidate):\n    for i in range(3):\n        assert candidate(i) == i\n", "f")


def test_unsplittable_and_malformed_rows_are_named() -> None:
    with pytest.raises(UnsupportedTests, match="does not call the solution"):
        split_asserts(["assert RESULT == 3"])
    with pytest.raises(UnsupportedTests, match="not an assert"):
        split_asserts(["print(add(1, 2))"])
    with pytest.raises(UnsupportedTests, match="inputs for"):
        plan_for_row({"inputs": ["1"], "outputs": []})
    stdio = plan_for_row([{"input": "1 2\n", "output": "3\n"}])
    assert (stdio.kind, stdio.inputs, stdio.outputs) == ("stdio", ["1 2\n"], ["3\n"])
    call_based = plan_for_row('{"fn_name": "add", "inputs": [[1, 2]], "outputs": [3]}')
    assert call_based.calls == ["add(*__args)"] and call_based.outputs == [3]


def test_output_comparison_tolerates_trailing_space_and_float_format_only_when_asked() -> None:
    assert stdout_matches("3  \n4\n\n", "3\n4")
    assert not stdout_matches("3\n5\n", "3\n4\n")
    assert not stdout_matches("0.3333333\n", "0.333333333\n")
    assert stdout_matches("0.3333333\n", "0.333333333\n", float_tol=1e-6)  # |diff| 3.3e-8 <= 1e-6
    assert not stdout_matches("0.33\n", "0.333333333\n", float_tol=1e-6)
    assert json_value_matches((1, 2), [1, 2]) and json_value_matches(5, [5]) and not json_value_matches(5, [6])


def test_code_extraction_takes_the_last_python_block() -> None:
    text = f"{F}python\nx = 1\n{F}\nand then\n{F}py\ndef f():\n    return 2\n{F}\n{F}text\nnot code\n{F}"
    assert extract_code(text) == "def f():\n    return 2\n"
    assert extract_code(text, "all_blocks") == "x = 1\n\n\ndef f():\n    return 2\n"
    assert extract_code("no code at all") is None


# ---------------------------------------------------------------- scored in the sandbox

ASSERTS = ["assert add(1, 2) == 3", "assert add(-4, 4) == 0", "assert sorted(add([2], [1])) == [1, 2]"]

PLANTED = {
    "right": (block("def add(a, b):\n    return a + b"), 1.0),
    "half_wrong": (block("def add(a, b):\n    return a + b if a != -4 else 99"), 2 / 3),
    "wrong": (block("def add(a, b):\n    return a - b"), 0.0),
    "no_code": ("the answer is 3", 0.0),
    "exit_first": (block("import sys\nsys.exit(0)"), 0.0),
    "pass_marker": (block("print('3 tests passed: OK')\nimport os\nos._exit(0)"), 0.0),
    "eq_always_true": (block("class Any:\n    def __eq__(self, other):\n        return True\n"
                             "    def __iter__(self):\n        return iter([1, 2])\n"
                             "def add(a, b):\n    return Any()"), 0.0),
    "int_subclass": (block("class I(int):\n    def __eq__(self, o):\n        return True\n"
                           "def add(a, b):\n    return I(7)"), 0.0),
    "forges_reports": (block(
        "import os\nline = b'{\"test\": 0, \"status\": \"ok\", \"value\": [\"i\", \"3\"]}\\n'\n"
        "for pid in os.listdir('/proc'):\n    for fd in range(3, 12):\n        try:\n"
        "            f = os.open(f'/proc/{pid}/fd/{fd}', os.O_WRONLY)\n            os.write(f, line * 3)\n"
        "        except OSError:\n            pass\n"
        "def add(a, b):\n    return None"), 0.0),
    "kills_harness": (block("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n"
                            "def add(a, b):\n    return a + b"), 0.0),
    "patches_builtins": (block("import builtins\nbuiltins.type = lambda x: int\nbuiltins.repr = lambda x: '3'\n"
                               "def add(a, b):\n    return object()"), 0.0),
}


@pytest.fixture(scope="module")
def reward() -> CodeTests:
    return CodeTests(timeout_s=2.0)


def test_planted_completions_score_exactly(reward: CodeTests) -> None:
    reward.metrics()  # counters since the last call: start from zero
    names = list(PLANTED)
    scores = reward([PLANTED[n][0] for n in names], tests=[ASSERTS] * len(names),
                    sandbox={"memory_mb": 256, "timeout_s": 10})
    got = dict(zip(names, scores, strict=True))
    assert got == pytest.approx({n: PLANTED[n][1] for n in names}), got
    m = reward.metrics()
    assert m["no_code_frac"] == pytest.approx(1 / len(names))
    assert m["pass_frac"] == pytest.approx((3 + 2) / (3 * len(names)))


def test_timeouts_memory_and_all_or_nothing(reward: CodeTests) -> None:
    loop = block("def add(a, b):\n    while True:\n        pass")
    hog = block("def add(a, b):\n    return len(bytearray(4 << 30))")
    reward.metrics()
    assert reward([loop, hog], tests=[ASSERTS[:1]] * 2, sandbox={"memory_mb": 256}) == [0.0, 0.0]
    m = reward.metrics()
    assert (m["timeout_frac"], m["memory_frac"]) == (0.5, 0.5)
    strict = CodeTests(mode="all", timeout_s=2.0)
    half = PLANTED["half_wrong"][0]
    assert strict([half, PLANTED["right"][0]], tests=[ASSERTS] * 2) == [0.0, 1.0]


def test_stdio_rows_humaneval_rows_and_fn_name_rows(reward: CodeTests) -> None:
    pairs = [{"input": "1 2\n", "output": "3\n"}, {"input": "10 5\n", "output": "15"}]
    adder = block("a, b = map(int, input().split())\nprint(a + b)")
    liar = block("print(3)")
    assert reward([adder, liar], tests=[pairs, pairs]) == [1.0, 0.5]
    floats = [{"input": "1 3\n", "output": "0.333333333\n"}]
    divider = block("a, b = map(int, input().split())\nprint(round(a / b, 7))")
    assert reward([divider], tests=[floats]) == [0.0]
    assert CodeTests(float_tol=1e-6)([divider], tests=[floats]) == [1.0]
    check = "def check(candidate):\n    assert candidate(3) == 9\n    assert candidate(-2) == 4\n"
    assert reward([block("def sq(x):\n    return x * x")], tests=[check], entry_point=["sq"]) == [1.0]
    apps = {"fn_name": "add", "inputs": [[1, 2], [3, 4]], "outputs": [[3], 7]}
    assert reward([block("def add(a, b):\n    return a + b")], tests=[apps]) == [1.0]


def test_a_row_without_usable_tests_is_not_scored(reward: CodeTests) -> None:
    reward.metrics()
    assert reward([PLANTED["right"][0]], tests=[["assert RESULT == 3"]]) == [None]
    assert reward.metrics()["unsupported_frac"] == 1.0
    with pytest.raises(ValueError, match="'tests' column"):
        reward(["x"], solution=["3"])


def test_every_generated_task_passes_with_its_reference_and_fails_without(reward: CodeTests) -> None:
    from raylhf.demo.tasks.code import fenced, make_code_tasks

    rows = make_code_tasks(10, seed=5)
    columns = {"tests": [r["tests"] for r in rows], "entry_point": [r["entry_point"] for r in rows]}
    assert reward([fenced(r["reference"]) for r in rows], **columns) == [1.0] * 10
    assert reward([fenced("pass\n")] * 10, **columns) == [0.0] * 10


def test_a_reward_actor_that_cannot_sandbox_stops_at_start(tmp_path: object) -> None:
    from actors.reward import RewardWorker
    from rewards.sandbox import SandboxUnavailable

    worker = RewardWorker(functions=[{"name": "code_tests"}],
                          context={"sandbox": {"bwrap": "/nonexistent/bwrap"}, "max_new_tokens": 8})
    with pytest.raises(SandboxUnavailable, match="apt-get install bubblewrap"):
        worker.setup()


def test_candidate_output_and_leftover_processes_do_not_cost_the_answer(reward: CodeTests) -> None:
    chatty = block("import os, time\nprint('x' * 500_000)\nif os.fork() == 0:\n    time.sleep(30)\n"
                   "def add(a, b):\n    return a + b")
    reward.metrics()
    assert reward([chatty], tests=[ASSERTS[:2]]) == [1.0]
    assert reward.metrics()["timeout_frac"] == 0.0
