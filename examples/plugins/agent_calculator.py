"""Agent plugin example: tools for the arithmetic agent, and a tool-call format of your own.

The built-in ``calculator`` tool needs no code: name it in ``agent.tools``. This file adds

* ``power`` with ``@register_tool`` and an explicit parameter description (what the prompt shows),
* ``units`` through a module-level ``tools`` dict (description from the docstring, parameters from the
  signature),
* ``xml_call``: an agent template in which the model writes ``<call name="calculator">{"expression": "2+3"}</call>``
  and reads ``<result>5</result>`` in the same assistant turn.

Use it (``examples/configs/grpo_calculator_agent.yaml`` does)::

    python -m raylhf.grpo --config examples/configs/grpo_calculator_agent.yaml \
        --plugins examples/plugins/agent_calculator.py agent.tools='[calculator, power]'

and check it first with ``raylhf check-plugin examples/plugins/agent_calculator.py``.
"""

from __future__ import annotations

import json
import re

from raylhf.plugins import AgentTemplate, ToolCall, register_agent_template, register_tool


@register_tool("power", parameters={
    "type": "object",
    "properties": {"base": {"type": "number", "description": "the number to raise"},
                   "exponent": {"type": "integer", "description": "a whole exponent between -64 and 64"}},
    "required": ["base", "exponent"]})
def power(base: float, exponent: int) -> str:
    """Raises base to a whole exponent."""
    if int(exponent) != exponent or abs(exponent) > 64:
        return "error: exponent must be a whole number between -64 and 64"
    value = float(base) ** int(exponent)
    return str(int(value)) if value.is_integer() else f"{value:.6g}"


_TO_METRES = {"m": 1.0, "km": 1000.0, "cm": 0.01, "mi": 1609.344, "ft": 0.3048, "in": 0.0254}


def units(value: float, from_unit: str, to_unit: str) -> str:
    """Converts a length between m, km, cm, mi, ft and in."""
    for u in (from_unit, to_unit):
        if u not in _TO_METRES:
            return f"error: unknown unit {u!r}; known: {', '.join(_TO_METRES)}"
    return f"{float(value) * _TO_METRES[from_unit] / _TO_METRES[to_unit]:.6g} {to_unit}"


tools = {"units": units}


@register_agent_template("xml_call")
class XmlCallTemplate(AgentTemplate):
    """``<call name="tool">{json arguments}</call>`` answered by ``<result>...</result>`` in the same turn."""

    stop_words = ("</call>",)

    def _format_tools(self, tools, system, user_message=None):
        lines = [f"- {t['name']}: {t['description']} arguments: {json.dumps(t['parameters'].get('properties', {}))}"
                 for t in tools]
        return (f"{system}\n\n" if system else "") + "Tools:\n" + "\n".join(lines) + \
            '\nCall one as <call name="TOOL">{"argument": value}</call>; its answer follows as <result>...</result>.'

    def get_toolcall(self, response):
        calls = []
        for name, body in re.findall(r'<call name="([^"]+)">(.*?)</call>', response, re.DOTALL):
            try:
                calls.append(ToolCall(name, json.loads(body)))
            except json.JSONDecodeError:
                calls.append(ToolCall(name, {}, error=f"arguments must be JSON, got {body[:40]!r}"))
        return calls

    def _format_tool_calls(self, tool_call_messages):
        calls = [json.loads(m["content"]) for m in tool_call_messages]
        return "".join(f'<call name="{c["name"]}">{json.dumps(c["arguments"])}</call>' for c in calls)

    def _format_tool_responses(self, assistant_content, tool_messages):
        return assistant_content, [f"<result>{m['content']}</result>" for m in tool_messages]
