"""Agent templates, tools and the multi-turn episode loop (pure: a scripted generator stands in for vLLM)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from actors.engine import sample_seed
from raylhf.agent.episode import EpisodeProgram
from raylhf.agent.multiturn import EpisodeRunner, episode_metrics, turn_seed
from raylhf.agent.templates import TEMPLATES, AgentTemplate, HermesAgentTemplate, ToolCall, get_template
from raylhf.agent.templates import check_plugin_entry as check_template
from raylhf.agent.tools import TOOLS, calculator, call_tool, tool_spec
from raylhf.agent.tools import check_plugin_entry as check_tool
from raylhf.assets import TOKENIZER_DIR, load_tokenizer
from raylhf.config import GRPOConfig, build_config
from raylhf.config.loader import ConfigError
from raylhf.driver.phases import to_train_batch
from raylhf.plugins.registry import PluginCheckError, load_plugin

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples/plugins/agent_calculator.py"


@pytest.fixture(scope="module")
def tok() -> Any:
    return load_tokenizer()


# ---------------------------------------------------------------------------------------- templates

def test_hermes_parses_calls_and_reports_unreadable_ones() -> None:
    t = HermesAgentTemplate()
    text = ('I will compute. <tool_call>\n{"name": "calculator", "arguments": {"expression": "6*7"}}\n</tool_call>'
            '<tool_call>{"name": "power", "arguments": "{\\"base\\": 2, \\"exponent\\": 5}"}</tool_call>'
            "<tool_call>{not json}</tool_call>")
    calls = t.parse_tool_calls(text)
    assert [(c.name, c.arguments, c.error is None) for c in calls] == [
        ("calculator", {"expression": "6*7"}, True), ("power", {"base": 2, "exponent": 5}, True), ("?", {}, False)]
    assert "JSON object" in calls[2].error
    assert t.parse_tool_calls("The answer is 42.") == []
    # ms-swift's hermes also reads ReAct calls
    assert t.parse_tool_calls('Action: calculator\nAction Input: {"expression": "1+1"}\nObservation:') == [
        ToolCall("calculator", {"expression": "1+1"})]


def test_hermes_prompt_and_answer_follow_the_chat_template(tok: Any) -> None:
    t = get_template("hermes", tok)
    system = t.format_tools([tool_spec("calculator", TOOLS["calculator"])], "Be brief.")
    assert system.startswith("Be brief.\n\n# Tools") and '"name": "calculator"' in system
    assert '"required": ["expression"]' in system and "<tool_call>" in system
    answer = t.format_tool_response("<tool_call>{...}</tool_call>", ["42", "error: x"])
    # the model's turn is closed, the answers come in a user turn, then the next assistant turn opens
    assert answer == ("<|im_end|>\n<|im_start|>user\n<tool_response>\n42\n</tool_response>\n<tool_response>\n"
                      "error: x\n</tool_response><|im_end|>\n<|im_start|>assistant\n")
    assert list(t.stop_words) == ["</tool_call>"]


def test_react_round_trip_and_answer() -> None:
    t = get_template("react")
    call = ToolCall("calculator", {"expression": "2+3"})
    text = t.format_tool_call(call)
    assert text == 'Action: calculator\nAction Input: {"expression": "2+3"}\nObservation:'
    assert t.parse_tool_calls(text) == [call]
    assert t.format_tool_response(text, ["5"]) == " 5\n"
    # a turn that stopped before the keyword gets it from the environment
    assert t.format_tool_response('Action: calculator\nAction Input: {"expression": "2+3"}', ["5"]) == \
        "\nObservation: 5\n"
    bad = t.parse_tool_calls("Action: calculator\nAction Input: 2+3\nObservation:")
    assert bad[0].name == "calculator" and "JSON object" in (bad[0].error or "")


def test_builtin_templates_pass_check_plugin() -> None:
    for name in ("hermes", "react"):
        line = check_template(name, TEMPLATES[name])
        assert "parsed its own call" in line and "calculator" in line


def test_check_plugin_rejects_a_template_with_a_wrong_signature() -> None:
    class NoResponseArg(HermesAgentTemplate):
        def get_toolcall(self):  # type: ignore[override]  # the response parameter is missing
            return []

    with pytest.raises(PluginCheckError, match=r"agent template 'bad_tpl': get_toolcall\(self\).*expected a subclass "
                                               r"of AgentTemplate with _format_tools\(self, tools, system"):
        check_template("bad_tpl", NoResponseArg)

    class Forgets(AgentTemplate):  # renders calls it cannot read back
        stop_words = ("</x>",)

        def _format_tools(self, tools, system, user_message=None):
            return "calculator"

        def _format_tool_calls(self, tool_call_messages):
            return "<x>call</x>"

    with pytest.raises(PluginCheckError, match=r"agent template 'forgets' parsed its own call '<x>call</x>' as \[\]"):
        check_template("forgets", Forgets)
    with pytest.raises(PluginCheckError, match=r"'not_a_class'.*expected a subclass of AgentTemplate"):
        check_template("not_a_class", lambda text: [])


# ---------------------------------------------------------------------------------------- tools

@pytest.mark.parametrize(("expr", "want"), [
    ("2+3", "5"), ("(12+7)*3", "57"), ("7/2", "3.5"), ("2^10", "1024"), ("-3--3", "0"), ("17//5 + 17%5", "5"),
    ("1/0", "error: division by zero"),
    ("9**9**9", "error: the power is too large (results are limited to 1e100)"),
    ('__import__("os").system("true")', "error: only numbers, + - * / // % ** and parentheses are allowed "
                                        "(found Call)"),
    ("x+1", "error: only numbers, + - * / // % ** and parentheses are allowed (found Name)"),
    ("2+", "error: cannot read '2+' as arithmetic; use numbers, + - * / ** and parentheses"),
])
def test_calculator(expr: str, want: str) -> None:
    assert calculator(expr) == want


def test_tool_failures_become_answers() -> None:
    def boom() -> str:
        """Raises."""
        raise RuntimeError("broken tool")

    tools = {"calculator": calculator, "boom": boom}
    res = [call_tool(tools, name, args) for name, args in [("calculator", {"expression": "6*7"}), ("nope", {}),
                                                           ("calculator", {"expr": "1"}), ("boom", {})]]
    assert [r.error for r in res] == [False, True, True, True]
    assert res[0].text == "42"
    assert res[1].text == "error: unknown tool 'nope'; available: boom, calculator"
    assert res[2].text.startswith("error: calculator takes (expression); got {'expr': '1'}")
    assert res[3].text == "error: RuntimeError: broken tool"
    # a hung tool: the episode loop's timeout (test_episode_limits_turns_budget_and_errors)


def test_tool_spec_from_signature_and_check_plugin() -> None:
    def add(a: int, b: float = 1.0) -> str:
        """Adds two numbers.

        Longer text that the prompt does not need."""
        return str(a + b)

    spec = tool_spec("add", add)
    assert spec == {"name": "add", "description": "Adds two numbers.", "parameters": {
        "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "number"}}, "required": ["a"]}}
    assert check_tool("add", add) == "called with {'a': 1}: returned '2.0'"
    assert check_tool("calculator", calculator) == "called with {'expression': '1'}: returned '1'"

    def wrong(x):
        """Takes x, but says it takes expression."""
        return x

    wrong.parameters = {"type": "object", "properties": {"expression": {"type": "string"}}}
    with pytest.raises(PluginCheckError, match=r"tool 'wrong'\(x\) cannot be called with its declared parameters "
                                               r"\['expression'\].*expected a function f\(\*\*arguments\) -> str"):
        check_tool("wrong", wrong)

    def count(text: str):
        """Counts characters."""
        return len(text)

    with pytest.raises(PluginCheckError, match=r"tool 'count' returned int 1 .*expected a function f\(\*\*arguments\) "
                                               r"-> str"):
        check_tool("count", count)


# ---------------------------------------------------------------------------------------- the example plugin file

def test_example_plugin_registers_tools_and_a_template(tok: Any) -> None:
    load_plugin(str(EXAMPLE))
    assert TOOLS["power"](base=2, exponent=10) == "1024"
    assert TOOLS["units"](value=1, from_unit="km", to_unit="m") == "1000 m"
    assert "units" in TOOLS and TOOLS.source("units").endswith("agent_calculator.py (tools)")
    assert check_tool("power", TOOLS["power"]) == "called with {'base': 1.0, 'exponent': 1}: returned '1'"
    assert check_tool("units", TOOLS["units"]).startswith("called with {'value': 1.0, 'from_unit': '1'")
    assert "parsed its own call" in check_template("xml_call", TEMPLATES["xml_call"])
    # the effect: a scripted model calls the plugin's power tool in the plugin's format and reads its answer
    runner = _runner("xml_call", {"power": TOOLS["power"]}, max_turns=2, max_new_tokens=200)
    gen = ScriptedModel(tok, ['Let me see. <call name="power">{"base": 3, "exponent": 4}</call>', "So 81."],
                        runner.bound.stop)
    (ep,) = runner.run(gen, [tok.encode("What is 3^4?")], 1, seed=5)
    assert ep.text == 'Let me see. <call name="power">{"base": 3, "exponent": 4}</call><result>81</result>So 81.'
    assert ep.episode == {"turns": 2, "tool_calls": 1, "tool_errors": 0}
    ex = runner.prepare([_prompt("What is 3^4?")])[0]
    assert ex.messages[0]["role"] == "system" and "- power: Raises base to a whole exponent." in \
        ex.messages[0]["content"]


# ---------------------------------------------------------------------------------------- the episode loop

def _prompt(q: str) -> Any:
    from raylhf.data import PromptExample

    return PromptExample([{"role": "user", "content": q}], {"solution": "42"})


def _runner(template: str, tools: dict[str, Any], **kw: Any) -> EpisodeRunner:
    """An episode runner on the shipped tokenizer; ``tools`` replace the registry's (tests' own functions)."""
    max_new_tokens = kw.pop("max_new_tokens")
    program = EpisodeProgram(tokenizer=str(TOKENIZER_DIR), template=template, tools=tuple(tools), **kw)
    runner = EpisodeRunner(program, max_new_tokens)
    runner.bound.tools = dict(tools)
    return runner


@dataclass
class Turn:
    tokens: list[int]
    logprobs: list[float]
    finish_reason: str


class ScriptedModel:
    """A stand-in for the engine's turn sampler: turn ``t`` of every episode writes ``script[t]`` (cut at the first
    stop string, kept, as vLLM does; a turn that does not stop ends with the end-of-turn token); records each call.
    An episode's turn is read from its token ids: the earlier calls whose ids are a shorter prefix of them."""

    def __init__(self, tok: Any, script: list[str], stop: list[str]) -> None:
        self.tok, self.script, self.stop, self.calls = tok, script, stop, []

    async def __call__(self, ids: list[int], limit: int, seed: int | None) -> Turn:
        turn = len({len(c["ids"]) for c in self.calls if len(c["ids"]) < len(ids) and ids[: len(c["ids"])] ==
                    c["ids"]})
        self.calls.append({"ids": list(ids), "seed": seed, "limit": limit, "turn": turn + 1})
        text = self.script[turn]
        hit = [text.index(s) + len(s) for s in self.stop if s in text]
        out = self.tok.encode(text[: min(hit)] if hit else text, add_special_tokens=False)
        if not hit:
            out = [*out, self.tok.eos_token_id]
        cut = out[:limit]
        return Turn(cut, [-0.25] * len(cut), "length" if len(cut) < len(out) else "stop")


CALL = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "6*7"}}\n</tool_call>'


def test_episode_tool_tokens_get_zero_loss_weight(tok: Any) -> None:
    template = get_template("hermes", tok)
    runner = _runner("hermes", {"calculator": calculator}, max_turns=3, max_new_tokens=400)
    gen = ScriptedModel(tok, [CALL + "<|im_end|>", "The answer is 42."], runner.bound.stop)
    prompts = [tok.encode("What is 6*7?"), tok.encode("What is 7*6?")]
    eps = runner.run(gen, prompts, 2, seed=11)
    # every episode samples its own turns: 2 prompts x 2 samples x 2 turns, each with its own seed
    assert len(gen.calls) == 8 and sorted(c["turn"] for c in gen.calls) == [1] * 4 + [2] * 4
    firsts = [c["seed"] for c in gen.calls if c["turn"] == 1]
    assert sorted(firsts) == sorted(sample_seed(11, i, j) for i in (0, 1) for j in (0, 1))
    seconds = {c["seed"] for c in gen.calls if c["turn"] == 2}
    assert seconds == {sample_seed(turn_seed(11, 2), i, j) for i in (0, 1) for j in (0, 1)}  # type: ignore[arg-type]
    assert runner.bound.stop == ["</tool_call>"]
    model1 = tok.encode(CALL, add_special_tokens=False)  # stopped at </tool_call>: the <|im_end|> is not sampled
    env = tok.encode(template.format_tool_response(CALL, ["42"]), add_special_tokens=False)
    model2 = [*tok.encode("The answer is 42.", add_special_tokens=False), tok.eos_token_id]
    assert {c["limit"] for c in gen.calls if c["turn"] == 2} == {400 - len(model1) - len(env)}  # the budget left
    assert [e.prompt_index for e in eps] == [0, 0, 1, 1]
    for e in eps:
        assert e.response_ids == model1 + env + model2
        assert e.response_mask == [1.0] * len(model1) + [0.0] * len(env) + [1.0] * len(model2)
        assert e.episode == {"turns": 2, "tool_calls": 1, "tool_errors": 0} and e.finish_reason == "stop"
        assert "<tool_response>\n42\n</tool_response>" in e.text and e.text.endswith("The answer is 42.")
    batch = to_train_batch(eps, torch.tensor([1.0, -1.0, 0.5, -0.5]))
    p = len(prompts[0])
    mask = batch.loss_mask[0]
    assert mask.tolist() == [0.0] * p + eps[0].response_mask
    assert mask[p + len(model1): p + len(model1) + len(env)].sum() == 0  # every tool-answer token: weight 0
    assert int(mask.sum()) == len(model1) + len(model2)  # every model token: weight 1
    assert batch.advantages is not None and batch.advantages[1].tolist() == [-x for x in mask.tolist()]
    assert batch.rollout_logprobs is not None
    assert batch.rollout_logprobs[0][p:].tolist() == [-0.25] * len(model1) + [0.0] * len(env) + [-0.25] * len(model2)
    assert episode_metrics(eps) == pytest.approx({
        "agent/turns_mean": 2.0, "agent/tool_calls_mean": 1.0, "agent/tool_errors": 0.0,
        "agent/tool_token_frac": len(env) / (len(model1) + len(env) + len(model2))})


def test_episode_limits_turns_budget_and_errors(tok: Any) -> None:
    calls_forever = [CALL] * 5
    stop = ["</tool_call>"]
    # max_turns: a call in the last turn is not run
    runner = _runner("hermes", {"calculator": calculator}, max_turns=2, max_new_tokens=1000)
    (e,) = runner.run(ScriptedModel(tok, calls_forever, stop), [tok.encode("q")], 1)
    assert e.episode == {"turns": 2, "tool_calls": 1, "tool_errors": 0} and e.finish_reason == "stop"
    # the budget covers the whole episode: the tool answer is cut where it runs out
    model1 = tok.encode(CALL, add_special_tokens=False)
    runner = _runner("hermes", {"calculator": calculator}, max_turns=3, max_new_tokens=len(model1) + 5)
    (e,) = runner.run(ScriptedModel(tok, calls_forever, stop), [tok.encode("q")], 1)
    assert len(e.response_ids) == len(model1) + 5 and e.finish_reason == "length" and e.episode["turns"] == 1
    assert e.response_mask == [1.0] * len(model1) + [0.0] * 5
    # an unknown tool and an unreadable call are answered with an error, counted, and the episode goes on
    runner = _runner("hermes", {"calculator": calculator}, max_turns=3, max_new_tokens=1000)
    script = ['<tool_call>{"name": "search", "arguments": {}}</tool_call>', "<tool_call>oops</tool_call>", "42"]
    (e,) = runner.run(ScriptedModel(tok, script, stop), [tok.encode("q")], 1)
    assert e.episode == {"turns": 3, "tool_calls": 2, "tool_errors": 2}
    assert "error: unknown tool 'search'; available: calculator" in e.text
    assert "a tool call must be a JSON object" in e.text
    # long tool answers are cut to max_tool_response_tokens
    runner = _runner("hermes", {"calculator": lambda expression: "9" * 500}, max_turns=2, max_new_tokens=1000,
                     max_tool_response_tokens=8)
    (e,) = runner.run(ScriptedModel(tok, [CALL, "ok"], stop), [tok.encode("q")], 1)
    answer = e.text.split("<tool_response>\n")[1].split("\n</tool_response>")[0]
    assert answer.endswith(" ...(cut)") and len(tok.encode(answer.removesuffix(" ...(cut)"))) <= 8
    # a hung tool answers with a timeout error after agent.tool_timeout_s; the episode goes on
    runner = _runner("hermes", {"calculator": lambda expression: time.sleep(5) or "1"}, max_turns=2,
                     max_new_tokens=1000, timeout_s=0.2)
    t0 = time.monotonic()
    (e,) = runner.run(ScriptedModel(tok, [CALL, "ok"], stop), [tok.encode("q")], 1)
    assert time.monotonic() - t0 < 3 and "error: tool calculator timed out after 0.2s" in e.text
    assert e.episode == {"turns": 2, "tool_calls": 1, "tool_errors": 1}


def test_agent_config_checks_names() -> None:
    cfg = build_config(GRPOConfig, overrides=[("agent.template", "hermes"), ("agent.tools", ["calculator"])])
    assert cfg.agent.max_turns == 3
    with pytest.raises(ConfigError, match=r"unknown agent template 'hermez' in agent.template; registered: .*hermes"):
        build_config(GRPOConfig, overrides=[("agent.template", "hermez"), ("agent.tools", ["calculator"])])
    with pytest.raises(ConfigError, match=r"unknown tool 'calc' in agent.tools; registered: .*calculator"):
        build_config(GRPOConfig, overrides=[("agent.template", "hermes"), ("agent.tools", ["calc"])])
    with pytest.raises(ConfigError, match=r"agent.tools=\['calculator'\] needs agent.template"):
        build_config(GRPOConfig, overrides=[("agent.tools", ["calculator"])])
    with pytest.raises(ConfigError, match=r"agent\.template=hermes offers the model no tools"):
        build_config(GRPOConfig, overrides=[("agent.template", "hermes")])


def test_check_plugin_report_fails_a_tool_with_the_wrong_signature(tmp_path: Path) -> None:
    import io

    from raylhf.plugins import check as check_plugin

    f = tmp_path / "agent_wrong_tool.py"
    f.write_text("from raylhf.plugins import register_tool\n"
                 "@register_tool('wrong_power', parameters={'type': 'object', 'properties': {'base': {'type': "
                 "'number'}}, 'required': ['base']})\n"
                 "def wrong_power(x):\n"
                 "    'Powers.'\n"
                 "    return x\n")
    out = io.StringIO()
    assert check_plugin.report(str(f), out) == 1
    text = out.getvalue()
    assert "FAIL tool 'wrong_power'" in text and "cannot be called with its declared parameters ['base']" in text
    assert "expected a function f(**arguments) -> str" in text
