"""A data row's tests as a plan the sandbox can run without ever seeing the expected values.

Row shapes (the ``tests`` column, or the column named by the reward's ``tests_column``):

* a list of assert statements (MBPP's ``test_list``): ``["assert add(1, 2) == 3", ...]``, with optional setup code
  (``test_setup`` column: imports, constants);
* a HumanEval ``test`` string defining ``check(candidate)``, with the ``entry_point`` column;
* stdin/stdout pairs: ``[{"input": "1 2\\n", "output": "3\\n"}, ...]`` or ``{"inputs": [...], "outputs": [...]}``
  (APPS / LiveCodeBench ``input_output``); with ``fn_name`` the pairs are call arguments and return values.

Each assert is split: the calls into the candidate's code (``add(1, 2)``) run in the sandbox, the rest of the
expression (``__v[0] == 3``) is evaluated outside the candidate's process on the returned plain data.
"""

from __future__ import annotations

import ast
import builtins
import json
from dataclasses import dataclass, field
from typing import Any

from rewards.sandbox.harness import encode

_BUILTINS = set(dir(builtins))


class UnsupportedTests(ValueError):
    """The row's tests cannot be split into candidate calls and checks (named in the message)."""


@dataclass
class Check:
    expr: str  # evaluated on ``__v`` (the values of this check's ``calls``), outside the candidate's process
    calls: list[str]  # expressions evaluated in the candidate's process (indices into Plan.calls)
    fast: tuple[str, Any] | None = None  # ("eq", literal) / ("truthy", None) / ("falsy", None): decided here


@dataclass
class Plan:
    kind: str  # "calls" | "stdio"
    setup: str = ""
    entry_point: str | None = None
    calls: list[str] = field(default_factory=list)
    args: list[Any] | None = None  # encoded argument tuples (fn_name rows): calls are ``fn(*__args)``
    checks: list[Check] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)
    outputs: list[Any] = field(default_factory=list)  # stdio: expected stdout; fn_name: expected values

    @property
    def num_tests(self) -> int:
        return len(self.checks) if self.kind == "calls" and self.args is None else max(len(self.inputs),
                                                                                     len(self.outputs))


def _defined_names(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
    return names


def _root_name(node: ast.AST) -> str | None:
    while isinstance(node, (ast.Attribute, ast.Call, ast.Subscript)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else None


class _Splitter(ast.NodeTransformer):
    def __init__(self, candidate: set[str]) -> None:
        self.candidate, self.calls = candidate, []  # type: ignore[var-annotated]

    def visit_Call(self, node: ast.Call) -> ast.AST:
        if _root_name(node.func) in self.candidate:
            self.calls.append(ast.unparse(node))
            index = ast.Constant(len(self.calls) - 1)
            return ast.Subscript(ast.Name("__v", ast.Load()), index, ast.Load())
        return self.generic_visit(node)


def _fast_path(expr: ast.expr) -> tuple[str, Any] | None:
    def is_value(n: ast.AST) -> bool:
        return isinstance(n, ast.Subscript) and isinstance(n.value, ast.Name) and n.value.id == "__v"

    if is_value(expr):
        return ("truthy", None)
    if isinstance(expr, ast.UnaryOp) and isinstance(expr.op, ast.Not) and is_value(expr.operand):
        return ("falsy", None)
    if isinstance(expr, ast.Compare) and len(expr.ops) == 1 and isinstance(expr.ops[0], ast.Eq):
        left, right = expr.left, expr.comparators[0]
        for value, other in ((left, right), (right, left)):
            if is_value(value):
                try:
                    return ("eq", ast.literal_eval(other))
                except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                    return None
    return None


def split_asserts(asserts: list[str], setup: str = "", candidate_extra: tuple[str, ...] = ()) -> Plan:
    """MBPP-style assert lines (plus setup code) as a calls plan."""
    try:
        setup_tree = ast.parse(setup)
    except SyntaxError as e:
        raise UnsupportedTests(f"the test setup code does not parse: {e}") from None
    known = _defined_names(setup_tree) | _BUILTINS
    plan = Plan(kind="calls", setup=setup)
    for text in asserts:
        try:
            tree = ast.parse(str(text).strip())
        except SyntaxError as e:
            raise UnsupportedTests(f"test {text!r} does not parse: {e}") from None
        for stmt in tree.body:
            if not isinstance(stmt, ast.Assert):
                raise UnsupportedTests(f"test {text!r} is not an assert statement")
            _add_assert(plan, stmt, known, candidate_extra)
    return plan


def _add_assert(plan: Plan, stmt: ast.Assert, known: set[str], extra: tuple[str, ...]) -> None:
    used = {n.id for n in ast.walk(stmt.test) if isinstance(n, ast.Name)}
    candidate = (used - known) | set(extra)
    splitter = _Splitter(candidate)
    outer = splitter.visit(ast.parse(ast.unparse(stmt.test), mode="eval").body)
    left = {n.id for n in ast.walk(outer) if isinstance(n, ast.Name)} & candidate
    if not splitter.calls or left:
        raise UnsupportedTests(f"test 'assert {ast.unparse(stmt.test)}' does not call the solution as a "
                               f"function (names: {sorted(candidate) or 'none'}); it cannot be checked outside "
                               "the solution's process")
    plan.calls.extend(splitter.calls)
    plan.checks.append(Check(expr=ast.unparse(outer), calls=splitter.calls, fast=_fast_path(outer)))


def split_humaneval(test: str, entry_point: str) -> Plan:
    """A HumanEval ``test`` string (``METADATA``, ``def check(candidate): assert ...``) as a calls plan: the
    module's other statements and check's non-assert statements are setup; check's asserts are split."""
    try:
        tree = ast.parse(test)
    except SyntaxError as e:
        raise UnsupportedTests(f"the test code does not parse: {e}") from None
    check = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "check"), None)
    if check is None:
        raise UnsupportedTests("the test string defines no check(candidate) function")
    module_setup = [n for n in tree.body if n is not check]
    body_setup = [n for n in check.body if not isinstance(n, ast.Assert)]
    for n in body_setup:
        if any(isinstance(a, ast.Assert) for a in ast.walk(n)):
            raise UnsupportedTests("check(candidate) has asserts inside loops or branches; only top-level asserts "
                                   "can be checked outside the solution's process")
    setup = ast.unparse(ast.Module(body=[*module_setup, *body_setup], type_ignores=[]))
    if "candidate" in {n.id for s in body_setup for n in ast.walk(s) if isinstance(n, ast.Name)}:
        raise UnsupportedTests("check(candidate) calls the candidate outside an assert")
    asserts = [ast.unparse(n) for n in check.body if isinstance(n, ast.Assert)]
    plan = split_asserts(asserts, setup, candidate_extra=("candidate",))
    plan.entry_point = entry_point
    return plan


def stdio_plan(pairs: Any, fn_name: str | None = None) -> Plan:
    """stdin/stdout pairs (a list of {input, output} or {inputs, outputs}); ``fn_name``: call-based pairs."""
    if isinstance(pairs, str):
        pairs = json.loads(pairs)
    if isinstance(pairs, dict):
        fn_name = fn_name or pairs.get("fn_name")
        inputs, outputs = list(pairs.get("inputs") or []), list(pairs.get("outputs") or [])
    else:
        inputs = [p.get("input", "") for p in pairs]
        outputs = [p.get("output", "") for p in pairs]
    if len(inputs) != len(outputs) or not inputs:
        raise UnsupportedTests(f"{len(inputs)} inputs for {len(outputs)} outputs; give one output per input")
    if fn_name:
        args = [encode(tuple(a) if isinstance(a, list) else (a,)) for a in inputs]
        return Plan(kind="calls", calls=[f"{fn_name}(*__args)"] * len(inputs), args=args, outputs=outputs,
                    inputs=[json.dumps(a) for a in inputs])
    return Plan(kind="stdio", inputs=[str(i) for i in inputs], outputs=[str(o) for o in outputs])


def plan_for_row(tests: Any, setup: str | None = None, entry_point: str | None = None) -> Plan:
    """The plan for one row's ``tests`` value (see the module doc for the shapes)."""
    if tests is None:
        raise UnsupportedTests("the row has no tests")
    if isinstance(tests, str) and "def check(" in tests:
        if not entry_point:
            raise UnsupportedTests("a HumanEval-style check(candidate) test needs the entry_point column")
        return split_humaneval(tests, entry_point)
    if isinstance(tests, str):
        stripped = tests.strip()
        if stripped.startswith(("{", "[")):
            return plan_for_row(json.loads(stripped), setup, entry_point)
        return split_asserts([s for s in stripped.splitlines() if s.strip()], setup or "")
    if isinstance(tests, dict) or (isinstance(tests, list) and tests and isinstance(tests[0], dict)):
        return stdio_plan(tests)
    if isinstance(tests, list):
        return split_asserts([str(t) for t in tests], setup or "")
    raise UnsupportedTests(f"tests of type {type(tests).__name__} are not understood; see docs/sandbox.md")
