"""Loss-scale strategies (``sft.loss_scale``, raylhf/data/loss_scale.py): the word-weighting example plugin puts
its weights on exactly the right tokens; the built-ins ``ignore_empty_think``, ``react`` and ``hermes`` on
tokenized chats; keyword tables from a class attribute or a JSON file; check-plugin. No Ray.

``last_round`` (earlier turns get weight 0) is tested in tests/test_sft_data.py
(``test_last_round_gives_zero_weight_to_earlier_replies``)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from raylhf.assets import load_tokenizer
from raylhf.data import SFTExample, tokenize_sft
from raylhf.data.loss_scale import LOSS_SCALES, ContextType, LossScale, check_plugin_entry, split_by_table
from raylhf.plugins import registry
from raylhf.plugins.registry import PluginCheckError, load_plugin

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "plugins" / "loss_scale_keywords.py"


@pytest.fixture(scope="module")
def tok() -> Any:
    return load_tokenizer()


@pytest.fixture(scope="module")
def example() -> Iterator[None]:
    """The example file through the real loader; its entries and module are removed afterwards."""
    load_plugin(str(EXAMPLE))
    yield
    for name in ("digits", "answer_keywords"):
        LOSS_SCALES.unregister(name)
    unload_plugin_file(EXAMPLE)


def unload_plugin_file(path: Path) -> None:
    registry.forget(str(path))


def text_with_weight(tok: Any, ex: SFTExample, strategy: str, weight: float) -> str:
    ids, weights = tokenize_sft(tok, ex, 1024, loss_scale=strategy)
    return tok.decode([t for t, w in zip(ids, weights, strict=True) if w == weight])


ARITH = SFTExample(
    [{"role": "system", "content": "You add 2 numbers."}, {"role": "user", "content": "What is 12 + 30?"},
     {"role": "assistant", "content": "12 + 30 = 42."}, {"role": "user", "content": "And 7 more?"}],
    "42 + 7 makes 49, so the answer is 49.",
)


def test_digits_example_weights_exactly_the_numbers_of_the_replies(tok: Any, example: None) -> None:
    assert text_with_weight(tok, ARITH, "digits", 2.0) == "1230424274949"  # the replies' numbers, in order
    assert text_with_weight(tok, ARITH, "digits", 1.0) == (
        " +  = .<|im_end|> +  makes , so the answer is .<|im_end|>")
    unweighted = text_with_weight(tok, ARITH, "digits", 0.0)
    assert "What is 12 + 30?" in unweighted and "And 7 more?" in unweighted  # prompt digits stay at 0
    ids, weights = tokenize_sft(tok, ARITH, 1024, loss_scale="digits")
    assert ids == tokenize_sft(tok, ARITH, 1024)[0]  # same tokens as the default strategy: only weights differ
    assert sorted(set(weights)) == [0.0, 1.0, 2.0]


def test_keyword_table_example_from_loss_scale_map(tok: Any, example: None) -> None:
    assert LOSS_SCALES.source("answer_keywords").endswith("(loss_scale_map)")
    ex = SFTExample([{"role": "user", "content": "2+2?"}], "Let me see. Answer: 4\nNote: easy.")
    assert text_with_weight(tok, ex, "answer_keywords", 2.0) == "Answer: 4\n"
    assert text_with_weight(tok, ex, "answer_keywords", 1.0) == "Let me see. <|im_end|>"
    assert text_with_weight(tok, ex, "answer_keywords", 0.0).endswith("<|im_start|>assistant\nNote: easy.")


@pytest.mark.parametrize("think", ["<think>\n\n</think>\n\n", "<think></think>", "<think> \n</think>\n"])
def test_ignore_empty_think_masks_only_the_empty_block(tok: Any, think: str) -> None:
    ex = SFTExample([{"role": "user", "content": "Hi"}], think + "Hello there.")
    prompt = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert text_with_weight(tok, ex, "ignore_empty_think", 0.0) == prompt + think
    assert text_with_weight(tok, ex, "ignore_empty_think", 1.0) == "Hello there.<|im_end|>"
    full = SFTExample([{"role": "user", "content": "Hi"}], "<think>\nsay hi\n</think>\n\nHello there.")
    assert text_with_weight(tok, full, "ignore_empty_think", 1.0) == full.response + "<|im_end|>"  # kept
    assert text_with_weight(tok, ex, "last_round_with_ignore_empty_think", 1.0) == "Hello there.<|im_end|>"


def test_react_weights_the_action_and_zeroes_the_observation(tok: Any) -> None:
    reply = ("Thought: I need the calculator.\nAction: calculator\nAction Input: 12 + 30\nObservation: 42\n"
             "Thought: I know it.\nFinal Answer: 42")
    ex = SFTExample([{"role": "user", "content": "What is 12 + 30?"}], reply)
    assert text_with_weight(tok, ex, "react", 2.0) == "Action: calculator\nAction Input: 12 + 30\nObservation:"
    assert text_with_weight(tok, ex, "react", 1.0) == (
        "Thought: I need the calculator.\nThought: I know it.\nFinal Answer: 42<|im_end|>")
    assert text_with_weight(tok, ex, "react", 0.0).endswith("<|im_start|>assistant\n 42\n")  # observed text
    pieces, weights = split_by_table(reply, LOSS_SCALES["react"].loss_scale_map)
    assert "".join(pieces) == reply and weights == [1.0, 2.0, 0.0, 1.0]


def test_hermes_weights_tool_calls_and_zeroes_tool_responses(tok: Any) -> None:
    call = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "12 + 30"}}\n</tool_call>'
    ex = SFTExample(
        [{"role": "user", "content": "What is 12 + 30?"},
         {"role": "assistant", "content": "I will compute it.\n" + call},
         {"role": "tool", "content": "<tool_response>\n42\n</tool_response>"}],
        "It is 42. <tool_response>copied</tool_response>",
    )
    assert text_with_weight(tok, ex, "hermes", 2.0) == call
    assert text_with_weight(tok, ex, "hermes", 1.0) == "I will compute it.\n<|im_end|>It is 42. <|im_end|>"
    zero = text_with_weight(tok, ex, "hermes", 0.0)
    assert "<|im_start|>tool\n<tool_response>\n42\n</tool_response>" in zero  # the tool turn: not trained
    assert zero.endswith("<tool_response>copied</tool_response>")  # a response span inside a reply: 0


def test_keyword_table_from_a_json_config_next_to_the_plugin(tmp_path: Path, tok: Any) -> None:
    (tmp_path / "weights.json").write_text('{"Answer:": [3.0, 3.0], "\\\\bwhy\\\\b": [0.0]}')
    plugin = tmp_path / "json_scale.py"
    plugin.write_text("from raylhf.plugins import LossScale\n\n\nclass FromJson(LossScale):\n"
                      "    loss_scale_config = 'weights.json'\n\n\nloss_scale_map = {'test_from_json': FromJson}\n")
    try:
        load_plugin(str(plugin))
        ex = SFTExample([{"role": "user", "content": "?"}], "I wonder why. Answer: yes")
        assert text_with_weight(tok, ex, "test_from_json", 3.0) == "Answer: yes"
        assert text_with_weight(tok, ex, "test_from_json", 1.0) == "I wonder . <|im_end|>"
    finally:
        LOSS_SCALES.unregister("test_from_json")
        unload_plugin_file(plugin)


def test_bad_tables_are_rejected() -> None:
    class TooMany(LossScale):
        loss_scale_map = {"Action:": [1.0, 2.0, 3.0]}  # noqa: RUF012

    class BadRegex(LossScale):
        loss_scale_map = {"(unclosed": [2.0]}  # noqa: RUF012

    with pytest.raises(ValueError, match=r"TooMany: loss_scale_map\['Action:'\].*expected \[w\]"):
        TooMany()
    with pytest.raises(ValueError, match="not a regular expression"):
        BadRegex()


def test_check_plugin_accepts_the_built_ins_and_the_example(example: None) -> None:
    react = check_plugin_entry("react", LOSS_SCALES["react"])
    assert react.endswith("[0] [1, 2, 0] [1] | [0] [1] [1]")  # Thought 1, Action 2, observed text 0
    assert check_plugin_entry("hermes", LOSS_SCALES["hermes"]).endswith("| [0] [2, 1] [1]")
    assert "[0] [0, 1] [1]" in check_plugin_entry("ignore_empty_think", LOSS_SCALES["ignore_empty_think"])
    assert "[1, 2, 1, 2, 1, 2, 1]" in check_plugin_entry("digits", LOSS_SCALES["digits"])  # 12, 30, 42


def test_check_plugin_rejects_a_wrong_signature_and_bad_pieces() -> None:
    class NoFlags(LossScale):
        def get_loss_scale(self, context):  # type: ignore[override]
            return [context], [1.0]

    class Lossy(LossScale):
        def get_loss_scale(self, context, context_type, is_last_round, *, query=None):
            return [context[:3]], [1.0]

    class Negative(LossScale):
        def get_loss_scale(self, context, context_type, is_last_round, **kwargs):  # ms-swift 3.x shape: fine
            return [context], [-1.0]

    expected = (r"expected a LossScale subclass with get_loss_scale\(self, context, context_type, is_last_round, "
                r"\*, query=None\)")
    with pytest.raises(PluginCheckError, match=r"loss scale 'no_flags': get_loss_scale\(self, context\) cannot be "
                       r"called as get_loss_scale\(context, context_type, is_last_round, query=\.\.\.\).*" + expected):
        check_plugin_entry("no_flags", NoFlags)
    with pytest.raises(PluginCheckError, match=r"loss scale 'lossy'.*do not join back.*" + expected):
        check_plugin_entry("lossy", Lossy)
    with pytest.raises(PluginCheckError, match=r"loss scale 'negative'.*weight -1\.0.*>= 0"):
        check_plugin_entry("negative", Negative)
    with pytest.raises(PluginCheckError, match=r"loss scale 'fn' is <function.*" + expected):
        check_plugin_entry("fn", lambda context: ([context], [1.0]))


def test_check_plugin_cli_reports_the_example_file() -> None:
    proc = subprocess.run([sys.executable, "-m", "raylhf.check_plugin", str(EXAMPLE)], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ok   loss scale 'digits'" in proc.stdout and "ok   loss scale 'answer_keywords'" in proc.stdout


def test_context_type_compares_to_ms_swift_strings() -> None:
    assert ContextType.RESPONSE == "response" and ContextType.SUFFIX == "suffix" and ContextType.OTHER == "other"
