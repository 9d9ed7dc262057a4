"""Agent templates: the text format in which a model calls tools (ms-swift's ``agent_template``).

A template does three things for a multi-turn rollout (:mod:`raylhf.agent.multiturn`):

* render the offered tools into the prompt: ``format_tools(tools, system) -> str``, the system message that
  describes the tools and the call format (``tools`` are OpenAI-style function specs
  ``{"name", "description", "parameters"}``);
* read the calls out of one model turn: ``parse_tool_calls(text) -> list[ToolCall]``; the rollout stops the
  model's turn at one of ``stop_words`` so the environment can answer;
* render the tools' answers as the environment's text that follows the model's turn:
  ``format_tool_response(assistant_content, results) -> str`` (its tokens carry zero loss weight).

The methods a subclass overrides keep ms-swift's names and shapes, so an ms-swift agent template moves over by
changing its imports: ``_format_tools(self, tools, system, user_message=None) -> str``,
``get_toolcall(self, response) -> list[ToolCall]`` (``Function`` is an alias of :class:`ToolCall`),
``_format_tool_calls(self, tool_call_messages) -> str`` and
``_format_tool_responses(self, assistant_content, tool_messages) -> (assistant_content, pieces)``.
The base class parses and answers in the ReAct format (as ms-swift's does); only ``_format_tools`` is required.

Built-ins (``agent.template``): ``hermes`` (``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``, answers
in ``<tool_response>...</tool_response>`` inside a user turn of the chat template) and ``react``
(``Action: name`` / ``Action Input: {json}`` / ``Observation: ...`` in the same assistant turn).
Add one with ``@register_agent_template("name")`` or an ``agent_templates = {"name": Cls}`` table.
"""

from __future__ import annotations

import ast
import inspect
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from raylhf.agent.tools import TOOLS, tool_spec
from raylhf.plugins.registry import TEMPLATES, PluginCheckError, class_of

__all__ = [
    "TEMPLATES",
    "AgentKeyword",
    "AgentTemplate",
    "Function",
    "HermesAgentTemplate",
    "ReactAgentTemplate",
    "ToolCall",
    "chat_tool_turn",
    "check_plugin_entry",
    "collect_templates",
    "get_template",
    "register_agent_template",
]


@dataclass
class ToolCall:
    """One tool call read from a model turn. ``error`` is set when a call was recognised but its arguments
    could not be read (not a JSON object): the environment answers with that error instead of running it."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


Function = ToolCall  # ms-swift's name for what get_toolcall returns


@dataclass
class AgentKeyword:
    """The ReAct keywords (ms-swift's ``AgentKeyword``)."""

    action: str = "Action:"
    action_input: str = "Action Input:"
    observation: str = "Observation:"


# the environment's turn in ChatML when the tokenizer's chat template cannot be probed: it closes the model's
# turn, opens a user turn holding the tool answers, then opens the next assistant turn
CHATML_TOOL_TURN = ("<|im_end|>\n<|im_start|>user\n", "<|im_end|>\n<|im_start|>assistant\n")
_REPLY, _QUERY = "RAYLHF_AGENT_REPLY", "RAYLHF_AGENT_QUERY"


def chat_tool_turn(tokenizer: Any) -> tuple[str, str]:
    """``(before, after)``: the chat template's text between an assistant reply and the next user message, and
    from the end of that message to the next assistant header; ChatML when the template cannot be probed."""
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _REPLY},
             {"role": "user", "content": _QUERY}], tokenize=False, add_generation_prompt=True)
        rest = text[text.rindex(_REPLY) + len(_REPLY):]
        before, after = rest.split(_QUERY)
        return before, after
    except (ValueError, TypeError, AttributeError, KeyError):
        return CHATML_TOOL_TURN


def _parse_json(text: Any) -> Any:
    """JSON (or a Python literal) from ``text``; ``None`` when it is neither; non-strings pass through."""
    if not isinstance(text, str):
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        try:
            return ast.literal_eval(text.strip())
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return None


def _tool_call(name: Any, arguments: Any) -> ToolCall:
    """A :class:`ToolCall` with ``arguments`` read into a dict (an error call when they are not an object)."""
    name = str(name).strip()
    if arguments is None or arguments == "":
        return ToolCall(name, {})
    args = _parse_json(arguments)
    if not isinstance(args, dict):
        return ToolCall(name, {}, error=f"the arguments of {name} must be a JSON object like {{\"x\": 1}}, "
                                        f"got {str(arguments)[:80]!r}")
    return ToolCall(name, args)


class AgentTemplate:
    """Base of every agent template: ReAct parsing and answers (ms-swift's ``BaseAgentTemplate``); a subclass
    must at least implement ``_format_tools``. ``stop_words``: where the rollout stops a model turn so the
    environment can answer (the stop text stays in the sequence). ``tool_turn`` (set by :meth:`bind` from the
    tokenizer's chat template) wraps the answers of chat-style templates in a user turn."""

    keyword = AgentKeyword()
    stop_words: Sequence[str] = ("Observation:",)
    tool_turn: tuple[str, str] = CHATML_TOOL_TURN

    def bind(self, tokenizer: Any) -> AgentTemplate:
        """Adapt to the run's chat template (the text around a user turn); returns self."""
        self.tool_turn = chat_tool_turn(tokenizer)
        return self

    # ---- what the rollout loop calls --------------------------------------------------------------
    def format_tools(self, tools: Sequence[Mapping[str, Any]], system: str | None = None) -> str:
        """The system message that offers ``tools`` (function specs) after ``system``."""
        return self._format_tools([dict(t) for t in tools], system or "")

    def parse_tool_calls(self, completion: str) -> list[ToolCall]:
        """The tool calls in one model turn (none: the model answered)."""
        out = []
        for f in self.get_toolcall(completion) or []:
            if isinstance(f, ToolCall) and f.error is not None:
                out.append(f)
            elif isinstance(f, Mapping):
                out.append(_tool_call(f.get("name"), f.get("arguments")))
            else:
                out.append(_tool_call(f.name, getattr(f, "arguments", None)))
        return out

    def format_tool_call(self, call: ToolCall) -> str:
        """``call`` as the model would write it (the round trip that check-plugin tests)."""
        content = json.dumps({"name": call.name, "arguments": call.arguments}, ensure_ascii=False)
        return self._format_tool_calls([{"role": "tool_call", "content": content}])

    def format_tool_response(self, assistant_content: str, results: Sequence[str]) -> str:
        """The environment's text after the model turn ``assistant_content``, holding one answer per call."""
        messages = [{"role": "tool", "content": str(r)} for r in results]
        content, pieces = self._format_tool_responses(assistant_content, messages)
        added = content[len(assistant_content):] if content.startswith(assistant_content) else ""
        return added + "".join(p for p in pieces if isinstance(p, str))

    # ---- ms-swift's methods ----------------------------------------------------------------------
    def _format_tools(self, tools: list[dict[str, Any]], system: str, user_message: Any = None) -> str:
        raise NotImplementedError(f"{type(self).__name__} must implement _format_tools(self, tools, system, "
                                  "user_message=None) -> str")

    def get_toolcall(self, response: str) -> list[ToolCall]:
        """ReAct calls: ``Action: name`` then ``Action Input: {json}`` (up to the next keyword)."""
        k = self.keyword
        pattern = (rf"{re.escape(k.action)}\s*(.+?)\s*\n\s*{re.escape(k.action_input)}\s*(.*?)\s*"
                   rf"(?={re.escape(k.observation)}|{re.escape(k.action)}|\Z)")
        return [_tool_call(m.group(1), m.group(2)) for m in re.finditer(pattern, response, re.DOTALL)]

    def _format_tool_calls(self, tool_call_messages: list[dict[str, Any]]) -> str:
        k, parts = self.keyword, []
        for message in tool_call_messages:
            call = _parse_json(message["content"])
            parts.append(f"{k.action} {call['name']}\n{k.action_input} "
                         f"{json.dumps(call.get('arguments', {}), ensure_ascii=False)}\n")
        return "".join(parts) + k.observation

    def _format_tool_responses(self, assistant_content: str, tool_messages: list[dict[str, Any]]
                               ) -> tuple[str, list[str]]:
        k = self.keyword
        if not (k.action in assistant_content and k.action_input in assistant_content):
            return assistant_content, [m["content"] for m in tool_messages]
        if not assistant_content.rstrip().endswith(k.observation):
            assistant_content += ("" if assistant_content.endswith("\n") else "\n") + k.observation
        pieces: list[str] = []
        for i, message in enumerate(tool_messages):
            if i:
                pieces.append(k.observation)
            content = message["content"]
            pieces.append(" " + content + ("" if content.endswith("\n") else "\n"))
        return assistant_content, pieces


def _spec_line(tool: Mapping[str, Any]) -> dict[str, Any]:
    return dict(tool["function"]) if "function" in tool else dict(tool)


class ReactAgentTemplate(AgentTemplate):
    """ReAct: ``Action: name`` / ``Action Input: {json}``, stopped at ``Observation:``, which the environment
    completes with the answer in the same assistant turn; the model ends with ``Final Answer: ...``."""

    def _format_tools(self, tools: list[dict[str, Any]], system: str, user_message: Any = None) -> str:
        k, specs = self.keyword, [_spec_line(t) for t in tools]
        lines = [f"{s['name']}: {s.get('description', '')} Parameters: "
                 f"{json.dumps(s.get('parameters', {}), ensure_ascii=False)}" for s in specs]
        names = ", ".join(s["name"] for s in specs)
        head = f"{system}\n\n" if system else ""
        return (f"{head}Answer the question; use a tool when it helps. Tools:\n\n" + "\n".join(lines)
                + f"\n\nTo call a tool write:\n{k.action} the tool name, one of [{names}]\n{k.action_input} the "
                  f"arguments as a JSON object\n{k.observation} the tool's answer appears here\n\n"
                  "When you know the answer write:\nFinal Answer: the answer")


class HermesAgentTemplate(AgentTemplate):
    """Hermes / Qwen2.5 function calling: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``, stopped
    at ``</tool_call>``; the answers come back in ``<tool_response>...</tool_response>`` inside a user turn of
    the chat template, then the next assistant turn opens. ReAct calls are read too (ms-swift does)."""

    stop_words = ("</tool_call>",)

    def _format_tools(self, tools: list[dict[str, Any]], system: str, user_message: Any = None) -> str:
        descs = [json.dumps({"type": "function", "function": _spec_line(t)}, ensure_ascii=False) for t in tools]
        head = f"{system}\n\n" if system else ""
        return (f"{head}# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
                "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
                + "\n".join(descs) + "\n</tools>\n\nFor each function call, return a json object with function name "
                "and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
                '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>')

    def get_toolcall(self, response: str) -> list[ToolCall]:
        bodies = re.findall(r"<tool_call>(.+?)</tool_call>", response, re.DOTALL)
        if not bodies:
            return super().get_toolcall(response)
        calls = []
        for body in bodies:
            obj = _parse_json(body.strip())
            if isinstance(obj, dict) and isinstance(obj.get("name"), str):
                calls.append(_tool_call(obj["name"], obj.get("arguments", obj.get("parameters"))))
            else:
                calls.append(ToolCall("?", {}, error='a tool call must be a JSON object {"name": ..., '
                                                      f'"arguments": {{...}}}}, got {body.strip()[:80]!r}'))
        return calls

    def _format_tool_calls(self, tool_call_messages: list[dict[str, Any]]) -> str:
        calls = []
        for message in tool_call_messages:
            call = _parse_json(message["content"])
            body = json.dumps({"name": call["name"], "arguments": call.get("arguments", {})}, ensure_ascii=False)
            calls.append(f"<tool_call>\n{body}\n</tool_call>")
        return "\n".join(calls)

    def _format_tool_responses(self, assistant_content: str, tool_messages: list[dict[str, Any]]
                               ) -> tuple[str, list[str]]:
        k = self.keyword
        if "<tool_call>" not in assistant_content and k.action in assistant_content \
                and k.action_input in assistant_content:
            return super()._format_tool_responses(assistant_content, tool_messages)
        before, after = self.tool_turn
        answers = "\n".join(f"<tool_response>\n{m['content']}\n</tool_response>" for m in tool_messages)
        return assistant_content, [before + answers + after]


# ---------------------------------------------------------------------------------------- the registry

def _check_template(name: str, obj: Any) -> None:
    if not (isinstance(obj, type) and issubclass(obj, AgentTemplate)):
        raise TypeError(f"agent template {name!r}: register a subclass of raylhf.plugins.AgentTemplate, got {obj!r}")


TEMPLATES.attach(check=_check_template)
TEMPLATES.register("hermes", HermesAgentTemplate)
TEMPLATES.register("react", ReactAgentTemplate)


def register_agent_template(name: str) -> Callable[[type[AgentTemplate]], type[AgentTemplate]]:
    """Class decorator: makes an :class:`AgentTemplate` subclass available as ``agent.template: <name>``."""
    return TEMPLATES.decorator(name)


def collect_templates(table: object, source: str) -> None:
    """A plugin module's ``agent_templates`` (name -> AgentTemplate subclass or instance) into the registry."""
    TEMPLATES.register_table(table, source, "AgentTemplate subclass", class_of)


def get_template(name: str, tokenizer: Any = None) -> AgentTemplate:
    """A fresh instance of the template registered as ``name``, bound to ``tokenizer``'s chat template."""
    try:
        cls = TEMPLATES.get_entry(name)
    except KeyError as e:
        raise ValueError(e.args[0]) from None
    template = cls()
    return template.bind(tokenizer) if tokenizer is not None else template


# ---------------------------------------------------------------------------------------- check-plugin

EXPECTED = ("a subclass of AgentTemplate with _format_tools(self, tools, system, user_message=None) -> str and, "
            "unless the ReAct defaults fit, get_toolcall(self, response) -> list[ToolCall], "
            "_format_tool_calls(self, tool_call_messages) -> str, "
            "_format_tool_responses(self, assistant_content, tool_messages) -> (str, list[str])")

_ARITY = {"_format_tools": 2, "get_toolcall": 1, "parse_tool_calls": 1, "_format_tool_calls": 1,
          "_format_tool_responses": 2, "format_tool_response": 2}


def check_plugin_entry(name: str, obj: Any) -> str:
    """``raylhf check-plugin``: render the calculator tool into a prompt, render a calculator call in the
    template's format, parse it back (cut at the first stop word, as the rollout sees it) and answer it."""

    if not (isinstance(obj, type) and issubclass(obj, AgentTemplate)):
        raise PluginCheckError(f"agent template {name!r} is {obj!r}; expected {EXPECTED}")
    for method, arity in _ARITY.items():
        try:
            inspect.signature(getattr(obj, method)).bind(None, *(["x"] * arity))
        except TypeError as e:
            raise PluginCheckError(f"agent template {name!r}: {method}{inspect.signature(getattr(obj, method))} "
                                   f"does not take {arity} argument(s) ({e}); expected {EXPECTED}") from e
    try:
        template = obj()
    except TypeError as e:
        raise PluginCheckError(f"agent template {name!r} cannot be built without arguments ({e}); "
                               f"expected {EXPECTED}") from e
    spec = tool_spec("calculator", TOOLS["calculator"])
    try:
        prompt = template.format_tools([spec], "You are a helpful assistant.")
    except NotImplementedError as e:
        raise PluginCheckError(f"agent template {name!r}: {e}; expected {EXPECTED}") from e
    if not isinstance(prompt, str) or "calculator" not in prompt:
        raise PluginCheckError(f"agent template {name!r}: format_tools returned {str(prompt)[:80]!r}, which does "
                               f"not name the offered tool 'calculator'; expected {EXPECTED}")
    call = ToolCall("calculator", {"expression": "2+3"})
    text = template.format_tool_call(call)
    for stop in template.stop_words:
        if stop in text:
            text = text[: text.index(stop) + len(stop)]
            break
    parsed = template.parse_tool_calls(text)
    if [(c.name, c.arguments) for c in parsed] != [(call.name, call.arguments)]:
        raise PluginCheckError(f"agent template {name!r} parsed its own call {text!r} as "
                               f"{[(c.name, c.arguments) for c in parsed]}; expected [('calculator', "
                               "{'expression': '2+3'})]: get_toolcall must read what _format_tool_calls writes")
    answer = template.format_tool_response(text, ["5"])
    if not isinstance(answer, str) or "5" not in answer:
        raise PluginCheckError(f"agent template {name!r}: format_tool_response returned {answer!r} without the "
                               f"tool's answer '5'; expected {EXPECTED}")
    return (f"offered 1 tool in {len(prompt)} chars; parsed its own call {text!r} back; stops at "
            f"{list(template.stop_words)}; answer text {answer!r}")


TEMPLATES.attach(collector=collect_templates, interface_check=check_plugin_entry)
