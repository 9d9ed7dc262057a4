"""Tools an agent may call during a multi-turn rollout: ``f(**arguments) -> str``.

A tool is a function (or any callable) registered under a name, with a description (its ``description``
attribute or docstring) and a JSON-schema parameter description (its ``parameters`` attribute, else derived
from its signature) that the agent template renders into the prompt::

    @register_tool("power", parameters={"type": "object", "properties": {"base": {"type": "number"},
                                        "exponent": {"type": "integer"}}, "required": ["base", "exponent"]})
    def power(base, exponent):
        "base raised to exponent."
        return str(base ** exponent)

or a plugin module's ``tools = {"power": power}``; select with ``agent.tools: [power]``. What a tool raises, a
bad argument, an unknown tool name or a timeout becomes the tool's answer text (``error: ...``), so the model
sees it and the run goes on. An ``async`` tool (or an object with an ``async __call__``) runs on the engine's
event loop, a plain one in a thread. A tool object with a ``for_run(**settings)`` method gets a copy bound to the
run's settings (:func:`bind_tool`). Built-in: ``calculator`` (arithmetic through an AST walk, never ``eval``)
and ``python`` (the model's code in the sandbox: :mod:`raylhf.agent.python_tool`).
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import math
import operator
from collections.abc import Callable, Mapping
from typing import Any

from raylhf.agent.python_tool import PythonTool
from raylhf.plugins.registry import TOOLS, PluginCheckError

__all__ = ["TOOLS", "ToolResult", "acall_tool", "bind_tool", "calculator", "call_tool", "check_plugin_entry",
           "collect_tools", "is_async_tool", "register_tool", "tool_spec"]


def _check_tool(name: str, obj: Any) -> None:
    if not callable(obj):
        raise TypeError(f"tool {name!r}: register a function f(**arguments) -> str, got {obj!r}")


TOOLS.attach(check=_check_tool)


def register_tool(name: str | None = None, description: str | None = None,
                  parameters: Mapping[str, Any] | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: makes ``f(**arguments) -> str`` available as ``agent.tools: [name]``; ``description`` and
    ``parameters`` (a JSON schema object) override the docstring and the signature-derived parameters."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        if description is not None:
            fn.description = description  # type: ignore[attr-defined]
        if parameters is not None:
            fn.parameters = dict(parameters)  # type: ignore[attr-defined]
        return TOOLS.register(name or fn.__name__, fn)

    return deco


def collect_tools(table: object, source: str) -> None:
    """A plugin module's ``tools`` dict (name -> callable) into the registry."""
    TOOLS.register_table(table, source, "tool function f(**arguments) -> str")


# ------------------------------------------------------------------------------- the spec the prompt shows

_JSON_TYPES = {int: "integer", float: "number", str: "string", bool: "boolean", list: "array", dict: "object",
               "int": "integer", "float": "number", "str": "string", "bool": "boolean", "list": "array",
               "dict": "object"}


def _signature_parameters(fn: Callable[..., Any]) -> dict[str, Any]:
    props: dict[str, Any] = {}
    required = []
    for p in inspect.signature(fn).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        kind = _JSON_TYPES.get(p.annotation) if p.annotation is not p.empty else None
        props[p.name] = {"type": kind} if kind else {}
        if p.default is p.empty:
            required.append(p.name)
    return {"type": "object", "properties": props, "required": required}


def tool_spec(name: str, fn: Callable[..., Any]) -> dict[str, Any]:
    """``{"name", "description", "parameters"}`` of a tool (OpenAI's function format, unwrapped)."""
    desc = getattr(fn, "description", None) or inspect.getdoc(fn) or ""
    params = getattr(fn, "parameters", None) or _signature_parameters(fn)
    return {"name": name, "description": " ".join(str(desc).split("\n\n")[0].split()), "parameters": dict(params)}


# ------------------------------------------------------------------------------- running calls

class ToolResult:
    """One call's answer text and whether it failed (an error counts in ``agent/tool_errors``)."""

    __slots__ = ("error", "text")

    def __init__(self, text: str, error: bool = False) -> None:
        self.text, self.error = text, error

    def __repr__(self) -> str:
        return f"ToolResult({self.text!r}, error={self.error})"


def _refusal(tools: Mapping[str, Callable[..., Any]], name: str, arguments: Mapping[str, Any]) -> ToolResult | None:
    """The error answer of a call that cannot run (an unknown tool, arguments its signature refuses), else None."""
    fn = tools.get(name)
    if fn is None:
        return ToolResult(f"error: unknown tool {name!r}; available: {', '.join(sorted(tools)) or 'none'}", True)
    try:
        inspect.signature(fn).bind(**arguments)
    except TypeError as e:
        params = ", ".join(tool_spec(name, fn)["parameters"].get("properties", {}))
        return ToolResult(f"error: {name} takes ({params}); got {dict(arguments)} ({e})", True)
    return None


def _answer(out: Any) -> ToolResult:
    return out if isinstance(out, ToolResult) else ToolResult(out if isinstance(out, str) else str(out))


def call_tool(tools: Mapping[str, Callable[..., Any]], name: str, arguments: Mapping[str, Any]) -> ToolResult:
    """Run one call; whatever goes wrong becomes ``error: ...`` text for the model."""
    refused = _refusal(tools, name, arguments)
    if refused is not None:
        return refused
    try:
        out = tools[name](**arguments)
        if inspect.isawaitable(out):  # an async tool called from a thread: its own loop
            out = asyncio.run(_awaited(out))
    except Exception as e:  # a tool's failure is its answer, never the run's
        return ToolResult(f"error: {type(e).__name__}: {e}", True)
    return _answer(out)


async def _awaited(out: Any) -> Any:
    return await out


def is_async_tool(fn: Any) -> bool:
    """An ``async def`` tool, or an object whose ``__call__`` is one."""
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__)


async def acall_tool(tools: Mapping[str, Callable[..., Any]], name: str, arguments: Mapping[str, Any],
                     executor: Any = None) -> ToolResult:
    """:func:`call_tool` from an event loop: an async tool is awaited on it, a plain one runs in ``executor``."""
    fn = tools.get(name)
    if fn is None or not is_async_tool(fn):
        return await asyncio.get_running_loop().run_in_executor(executor, call_tool, tools, name, arguments)
    refused = _refusal(tools, name, arguments)
    if refused is not None:
        return refused
    try:
        out = await fn(**arguments)
    except Exception as e:
        return ToolResult(f"error: {type(e).__name__}: {e}", True)
    return _answer(out)


def bind_tool(fn: Callable[..., Any], **settings: Any) -> Callable[..., Any]:
    """The tool as a run uses it: a tool object with a ``for_run(**settings)`` method returns its copy bound to
    the run's settings (``sandbox``: the run's ``sandbox:`` section as a dict; ``tool_timeout_s``); it may raise
    when the run cannot use it (the ``python`` tool without a working sandbox). Other tools are used as they are."""
    for_run = getattr(fn, "for_run", None)
    return for_run(**settings) if callable(for_run) and not isinstance(fn, type) else fn


# ------------------------------------------------------------------------------- the built-in calculator

_BINOPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}
_UNARY: dict[type, Callable[[Any], Any]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_MAX_ABS = 1e100
_MAX_CHARS = 200


def _evaluate(node: ast.AST) -> int | float:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_evaluate(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow) and abs(left) > 1 and right * math.log10(abs(left)) > 100:
            raise ValueError("the power is too large (results are limited to 1e100)")
        value = _BINOPS[type(node.op)](left, right)
        if isinstance(value, complex) or abs(value) > _MAX_ABS:
            raise ValueError("the result is too large or not a real number")
        return value
    what = type(node).__name__
    raise ValueError(f"only numbers, + - * / // % ** and parentheses are allowed (found {what})")


def _format_number(value: int | float) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(round(value, 10)) if isinstance(value, float) else str(value)


@register_tool("calculator", parameters={
    "type": "object", "properties": {"expression": {
        "type": "string", "description": "an arithmetic expression, e.g. (12+7)*3"}}, "required": ["expression"]})
def calculator(expression: str) -> str:
    """Evaluates an arithmetic expression with numbers, + - * / // % ** and parentheses; returns the value."""
    text = str(expression).strip()
    if len(text) > _MAX_CHARS:
        return f"error: the expression is longer than {_MAX_CHARS} characters"
    try:
        tree = ast.parse(text.replace("^", "**").replace("×", "*").replace("÷", "/"), mode="eval")
    except SyntaxError:
        return f"error: cannot read {text!r} as arithmetic; use numbers, + - * / ** and parentheses"
    try:
        return _format_number(_evaluate(tree))
    except ZeroDivisionError:
        return "error: division by zero"
    except (ValueError, TypeError, OverflowError) as e:
        return f"error: {e}"


# ------------------------------------------------------------------------------- check-plugin

EXPECTED = ("a function f(**arguments) -> str (a docstring or description attribute, and keyword parameters that "
            "match its parameters description)")

_SAMPLES = {"string": "1", "integer": 1, "number": 1.0, "boolean": True, "array": [], "object": {}}


def check_plugin_entry(name: str, obj: Any) -> str:
    """``raylhf check-plugin``: call the tool with sample arguments built from its parameter description (one
    value of the declared type per required parameter); it must accept them and return a string."""
    if not callable(obj):
        raise PluginCheckError(f"tool {name!r} is not callable; expected {EXPECTED}")
    spec = tool_spec(name, obj)
    params = spec["parameters"]
    props = params.get("properties", {}) if isinstance(params, Mapping) else None
    if not isinstance(props, Mapping):
        raise PluginCheckError(f"tool {name!r}: parameters must be a JSON schema object with 'properties', got "
                               f"{params!r}; expected {EXPECTED}")
    required = list(params.get("required", list(props)))
    args = {p: _SAMPLES.get(str(props.get(p, {}).get("type")), "1") for p in required}
    try:
        inspect.signature(obj).bind(**args)
    except TypeError as e:
        raise PluginCheckError(f"tool {name!r}{inspect.signature(obj)} cannot be called with its declared "
                               f"parameters {sorted(args)} ({e}); expected {EXPECTED}") from e
    if not spec["description"]:
        raise PluginCheckError(f"tool {name!r} has no description (the model is told what each tool does): give it "
                               f"a docstring or a description attribute; expected {EXPECTED}")
    try:
        out = obj(**args)
        if inspect.isawaitable(out):
            out = asyncio.run(_awaited(out))
    except Exception as e:
        return (f"called with {args}: raised {type(e).__name__}: {e} (at run time this becomes its answer "
                "text 'error: ...')")
    if not isinstance(out, str):
        raise PluginCheckError(f"tool {name!r} returned {type(out).__name__} {out!r} for {args}; expected "
                               f"{EXPECTED}")
    return f"called with {args}: returned {out[:60]!r}"


TOOLS.attach(collector=collect_tools, interface_check=check_plugin_entry)
TOOLS.register("python", PythonTool())
