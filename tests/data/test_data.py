"""Tests for raylhf.data: every source kind and row format, column mapping, clear errors, tokenising."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raylhf.assets import load_tokenizer
from raylhf.config.sections import DataConfig
from raylhf.data import (
    DataError,
    PreferenceExample,
    PromptExample,
    SFTExample,
    apply_column_mapping,
    detect_format,
    drop_long_prompts,
    end_of_turn_id,
    load_from_config,
    load_preference_dataset,
    load_prompt_dataset,
    load_records,
    load_sft_dataset,
    render_prompt,
    tokenize_sft,
)

Rows = list[dict[str, Any]]


@pytest.fixture(scope="module")
def tok() -> Any:
    return load_tokenizer()


# ----------------------------------------------------------------------------------------- writers


def write_jsonl(path: Path, rows: Rows) -> str:
    path = path.with_suffix(".jsonl")
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def write_json(path: Path, rows: Rows) -> str:
    path = path.with_suffix(".json")
    path.write_text(json.dumps(rows, indent=2), encoding="utf-8")
    return str(path)


def write_parquet(path: Path, rows: Rows) -> str:
    path = path.with_suffix(".parquet")
    pq.write_table(pa.Table.from_pylist(rows), str(path))
    return str(path)


def write_dataset_dir(path: Path, rows: Rows) -> str:
    import datasets

    out = path.with_suffix("")
    datasets.Dataset.from_list(rows).save_to_disk(str(out))
    return str(out)


WRITERS: dict[str, Callable[[Path, Rows], str]] = {
    "jsonl": write_jsonl,
    "json": write_json,
    "parquet": write_parquet,
    "dataset_dir": write_dataset_dir,
}

SYSTEM = {"role": "system", "content": "be brief"}
USER = {"role": "user", "content": "1+1?"}
ASSISTANT = {"role": "assistant", "content": "2"}


# -------------------------------------------------------------------------------- each format, each source


@pytest.mark.parametrize("kind", list(WRITERS))
def test_prompt_format_every_source(tmp_path: Path, kind: str) -> None:
    rows = [{"prompt": "1+1?", "solution": "2"}, {"prompt": "2+2?", "solution": "4"}]
    src = WRITERS[kind](tmp_path / "d", rows)
    assert load_records(src) == rows
    got = load_prompt_dataset([src])
    assert got == [
        PromptExample([{"role": "user", "content": "1+1?"}], {"solution": "2"}),
        PromptExample([{"role": "user", "content": "2+2?"}], {"solution": "4"}),
    ]


@pytest.mark.parametrize("kind", list(WRITERS))
def test_messages_format_every_source(tmp_path: Path, kind: str) -> None:
    rows = [{"messages": [SYSTEM, USER, ASSISTANT]}]
    src = WRITERS[kind](tmp_path / "d", rows)
    (rl,) = load_prompt_dataset([src])
    assert rl.messages == [SYSTEM, USER]
    assert rl.extras == {"solution": "2"}
    (sft,) = load_sft_dataset([src])
    assert sft == SFTExample([SYSTEM, USER], "2")


@pytest.mark.parametrize("kind", list(WRITERS))
def test_sft_format_every_source(tmp_path: Path, kind: str) -> None:
    rows = [{"prompt": "hello", "response": "hi there"}, {"prompt": "bye", "response": "see you"}]
    src = WRITERS[kind](tmp_path / "d", rows)
    got = load_sft_dataset([src])
    assert got == [
        SFTExample([{"role": "user", "content": "hello"}], "hi there"),
        SFTExample([{"role": "user", "content": "bye"}], "see you"),
    ]


@pytest.mark.parametrize("kind", list(WRITERS))
def test_preference_format_every_source(tmp_path: Path, kind: str) -> None:
    rows = [{"prompt": "best color?", "chosen": "blue", "rejected": "no"}]
    src = WRITERS[kind](tmp_path / "d", rows)
    assert load_preference_dataset([src]) == [
        PreferenceExample([{"role": "user", "content": "best color?"}], "blue", "no")
    ]


def test_preference_message_lists_with_implicit_prompt(tmp_path: Path) -> None:
    rows = [
        {
            "chosen": [USER, {"role": "assistant", "content": "2"}],
            "rejected": [USER, {"role": "assistant", "content": "3"}],
        }
    ]
    src = write_parquet(tmp_path / "p", rows)
    assert load_preference_dataset([src]) == [PreferenceExample([USER], "2", "3")]


def test_preference_message_lists_with_prompt_column(tmp_path: Path) -> None:
    rows = [{"prompt": [USER], "chosen": [{"role": "assistant", "content": "2"}], "rejected": "3"}]
    src = write_jsonl(tmp_path / "p", rows)
    assert load_preference_dataset([src]) == [PreferenceExample([USER], "2", "3")]


def test_preference_prefix_mismatch_is_an_error(tmp_path: Path) -> None:
    rows = [
        {
            "chosen": [USER, ASSISTANT],
            "rejected": [{"role": "user", "content": "other"}, ASSISTANT],
        }
    ]
    src = write_jsonl(tmp_path / "p", rows)
    with pytest.raises(DataError, match=r"line 1: 'chosen' and 'rejected' differ"):
        load_preference_dataset([src])


def test_preference_strings_without_prompt_is_an_error(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "p", [{"chosen": "a", "rejected": "b"}])
    with pytest.raises(DataError, match="no prompt"):
        load_preference_dataset([src])


def test_prompt_as_message_list_and_system_prompt(tmp_path: Path) -> None:
    rows = [{"prompt": [USER], "solution": "2"}, {"prompt": [SYSTEM, USER], "solution": "2"}]
    src = write_jsonl(tmp_path / "d", rows)
    a, b = load_prompt_dataset([src], system_prompt="think step by step")
    assert a.messages == [{"role": "system", "content": "think step by step"}, USER]
    assert b.messages == [SYSTEM, USER]  # an existing system turn wins


def test_messages_rows_keep_explicit_solution_column(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "d", [{"messages": [USER, ASSISTANT], "solution": "two"}])
    (ex,) = load_prompt_dataset([src])
    assert ex.extras == {"solution": "two"}
    assert ex.messages == [USER]


def test_messages_not_ending_with_assistant(tmp_path: Path) -> None:
    src = write_jsonl(
        tmp_path / "d", [{"messages": [USER, ASSISTANT, {"role": "user", "content": "and 2+2?"}]}]
    )
    (ex,) = load_prompt_dataset([src])
    assert len(ex.messages) == 3 and ex.extras == {}
    with pytest.raises(DataError, match=r"line 1: the last turn of 'messages' must be the assistant"):
        load_sft_dataset([src])


def test_sft_rows_as_prompts_use_response_as_solution(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "d", [{"prompt": "q", "response": "a"}])
    (ex,) = load_prompt_dataset([src])
    assert ex.extras == {"response": "a", "solution": "a"}


def test_json_variants(tmp_path: Path) -> None:
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"data": [{"prompt": "a"}, {"prompt": "b"}]}))
    assert load_records(str(wrapped)) == [{"prompt": "a"}, {"prompt": "b"}]
    lines = tmp_path / "lines.json"  # what datasets' to_json writes: JSON Lines with a .json name
    lines.write_text('{"prompt": "a"}\n{"prompt": "b"}\n')
    assert load_records(str(lines)) == [{"prompt": "a"}, {"prompt": "b"}]


def test_dataset_dict_dir_uses_train_split(tmp_path: Path) -> None:
    import datasets

    dd = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list([{"prompt": "train row"}]),
            "test": datasets.Dataset.from_list([{"prompt": "test row"}]),
        }
    )
    dd.save_to_disk(str(tmp_path / "dd"))
    assert load_records(str(tmp_path / "dd")) == [{"prompt": "train row"}]
    assert load_records(str(tmp_path / "dd"), split="test") == [{"prompt": "test row"}]


def test_plain_directory_of_files(tmp_path: Path) -> None:
    d = tmp_path / "shards"
    d.mkdir()
    write_jsonl(d / "a", [{"prompt": "a"}])
    write_parquet(d / "b", [{"prompt": "b"}])
    assert load_records(str(d)) == [{"prompt": "a"}, {"prompt": "b"}]


# ---------------------------------------------------------------------------------------------- hub ids


def test_hub_id_goes_through_load_dataset(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    calls: list[tuple[Any, ...]] = []

    def fake_load_dataset(name: str, config: str | None = None, *, split: str) -> Any:
        calls.append((name, config, split))
        return datasets.Dataset.from_list([{"prompt": "p1"}, {"prompt": "p2"}, {"prompt": "p3"}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert load_records("owner/name", max_samples=2) == [{"prompt": "p1"}, {"prompt": "p2"}]
    load_records("owner/name:main:test")
    assert calls == [("owner/name", None, "train"), ("owner/name", "main", "test")]


def test_hub_failure_and_missing_paths_are_clear(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import datasets

    calls: list[str] = []

    def failing(name: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(name)
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", failing)
    with pytest.raises(DataError, match=r"owner/missing.*hub dataset.*ConnectionError"):
        load_records("owner/missing")
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(DataError, match="file not found") as ei:
        load_records(str(missing))
    assert "nope.jsonl" in str(ei.value)
    with pytest.raises(DataError, match="file not found"):
        load_records("data/sub/train")  # more than one slash: a path, not a hub id
    assert calls == ["owner/missing"]


# ------------------------------------------------------------------------------- mapping and extras


def test_column_mapping_and_extras_travel(tmp_path: Path) -> None:
    rows = [{"question": "1+1?", "answer": "2", "difficulty": 3, "tags": ["math"]}]
    src = write_parquet(tmp_path / "d", rows)
    (ex,) = load_prompt_dataset([src], columns={"prompt": "question", "solution": "answer"})
    assert ex.messages == [{"role": "user", "content": "1+1?"}]
    assert ex.extras == {"solution": "2", "difficulty": 3, "tags": ["math"]}


def test_column_mapping_for_sft_and_chat(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "d", [{"conversation": [USER, ASSISTANT]}])
    (ex,) = load_sft_dataset([src], columns={"messages": "conversation"})
    assert ex == SFTExample([USER], "2")


def test_apply_column_mapping_swaps_simultaneously() -> None:
    row = {"prompt": "x", "response": "y", "other": 1}
    assert apply_column_mapping(row, {"prompt": "response", "response": "prompt"}) == {
        "prompt": "y",
        "response": "x",
        "other": 1,
    }


def test_mapping_a_missing_column_names_data_columns(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "train", [{"query": "q", "answer": "a"}])
    with pytest.raises(DataError) as ei:
        load_prompt_dataset([src], columns={"prompt": "question"})
    msg = str(ei.value)
    assert "train.jsonl" in msg and "data.columns" in msg and "'question'" in msg
    assert "['answer', 'query']" in msg


# ----------------------------------------------------------------------------------------- bad data


def test_broken_jsonl_line_3(tmp_path: Path) -> None:
    path = tmp_path / "broken_train.jsonl"
    path.write_text('{"prompt": "a"}\n{"prompt": "b"}\n{"prompt": "c",,}\n{"prompt": "d"}\n')
    with pytest.raises(DataError) as ei:
        load_prompt_dataset([str(path)])
    msg = str(ei.value)
    assert "broken_train.jsonl" in msg
    assert "line 3" in msg and "malformed JSON" in msg
    assert ei.value.row == 3


def test_blank_lines_skipped_and_line_numbers_kept(tmp_path: Path) -> None:
    path = tmp_path / "gaps.jsonl"
    path.write_text('{"prompt": "a"}\n\n   \n{"prompt": 5}\n')
    assert load_records(str(path))[0] == {"prompt": "a"}
    with pytest.raises(
        DataError, match=r"gaps\.jsonl, line 4: wrong type: 'prompt' must be a string.*got int"
    ):
        load_prompt_dataset([str(path)])


def test_jsonl_row_not_an_object(tmp_path: Path) -> None:
    path = tmp_path / "arr.jsonl"
    path.write_text('{"prompt": "a"}\n["prompt", "b"]\n')
    with pytest.raises(DataError, match=r"arr\.jsonl, line 2: expected a JSON object"):
        load_records(str(path))


def test_broken_json_array_reports_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('[\n  {"prompt": "a"},\n  {"prompt": }\n]\n')
    with pytest.raises(DataError, match=r"bad\.json, line 3: malformed JSON"):
        load_records(str(path))


def test_missing_column_lists_existing_columns(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "sft", [{"prompt": "q", "response": "a"}, {"prompt": "q2", "answer": "a2"}])
    with pytest.raises(DataError) as ei:
        load_sft_dataset([src], format="sft")
    msg = str(ei.value)
    assert "sft.jsonl, line 2" in msg
    assert "missing column 'response'" in msg and "['answer', 'prompt']" in msg and "data.columns" in msg


def test_undetectable_format_lists_columns(tmp_path: Path) -> None:
    src = write_parquet(tmp_path / "odd", [{"question": "q", "answer": "a"}])
    with pytest.raises(
        DataError, match=r"odd\.parquet, row 1: cannot tell the data format.*'answer', 'question'"
    ):
        load_prompt_dataset([src])


@pytest.mark.parametrize("kind", list(WRITERS))
def test_empty_dataset(tmp_path: Path, kind: str) -> None:
    if kind == "jsonl":
        src = str(tmp_path / "empty.jsonl")
        Path(src).write_text("\n\n")
    elif kind == "parquet":
        src = str(tmp_path / "empty.parquet")
        pq.write_table(pa.table({"prompt": pa.array([], pa.string())}), src)
    elif kind == "dataset_dir":
        import datasets

        src = str(tmp_path / "empty_dir")
        datasets.Dataset.from_dict({"prompt": []}).save_to_disk(src)
    else:
        src = write_json(tmp_path / "empty", [])
    assert load_records(src) == []
    with pytest.raises(DataError, match="empty dataset") as ei:
        load_prompt_dataset([src])
    assert Path(src).name in str(ei.value)


@pytest.mark.parametrize(
    ("row", "pattern"),
    [
        ({"prompt": 7}, r"'prompt' must be a string or a list.*got int"),
        ({"prompt": ""}, r"'prompt' is an empty string"),
        ({"messages": "hello"}, r"'messages' must be a list of \{role, content\} messages, got str"),
        ({"messages": []}, r"'messages' is an empty message list"),
        ({"messages": ["hello"]}, r"message 1 must be a \{role, content\} object, got str"),
        ({"messages": [{"role": "user"}]}, r"message 1 needs a string 'content', got null"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, r"message 1 has unknown role 'wizard'"),
        ({"messages": [USER, {"role": 3, "content": "x"}]}, r"message 2 needs a string 'role', got int"),
    ],
)
def test_wrong_types(tmp_path: Path, row: dict[str, Any], pattern: str) -> None:
    src = write_jsonl(
        tmp_path / "typed", [{"prompt": "fine"} if "prompt" in row else {"messages": [USER]}, row]
    )
    with pytest.raises(DataError, match=r"typed\.jsonl, line 2: .*" + pattern):
        load_prompt_dataset([src])


def test_sft_response_wrong_type(tmp_path: Path) -> None:
    src = write_json(tmp_path / "s", [{"prompt": "q", "response": 42}])
    with pytest.raises(DataError, match=r"s\.json, row 1: wrong type: 'response'.*got int"):
        load_sft_dataset([src])


def test_format_not_usable_for_kind(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "rl", [{"prompt": "q", "solution": "a"}])
    with pytest.raises(DataError, match=r"detected format 'prompt'.*cannot be used for SFT data"):
        load_sft_dataset([src])
    with pytest.raises(DataError, match=r"data\.format 'prompt' cannot be used for preference data"):
        load_preference_dataset([src], format="prompt")
    with pytest.raises(DataError, match=r"unknown data\.format"):
        load_prompt_dataset([src], format="csv")


def test_unsupported_file_type(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    path.write_text("prompt\nx\n")
    with pytest.raises(DataError, match=r"rows\.csv: unsupported file type '\.csv'"):
        load_records(str(path))


# ------------------------------------------------------------------------------ files, limits, config


def test_multiple_files_concatenate_and_max_samples(tmp_path: Path) -> None:
    a = write_jsonl(tmp_path / "a", [{"prompt": "a1"}, {"prompt": "a2"}])
    b = write_parquet(tmp_path / "b", [{"prompt": "b1"}, {"prompt": "b2"}])
    got = load_prompt_dataset([a, b])
    assert [e.messages[0]["content"] for e in got] == ["a1", "a2", "b1", "b2"]
    got = load_prompt_dataset([a, b], max_samples=3)
    assert [e.messages[0]["content"] for e in got] == ["a1", "a2", "b1"]
    assert len(load_records(b, max_samples=1)) == 1


def test_max_samples_stops_before_later_bad_lines(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    path.write_text('{"prompt": "a"}\n{"prompt": "b"}\nnot json\n')
    assert len(load_prompt_dataset([str(path)], max_samples=2)) == 2
    with pytest.raises(DataError, match="line 3"):
        load_prompt_dataset([str(path)])


def test_files_must_share_a_format(tmp_path: Path) -> None:
    a = write_jsonl(tmp_path / "a", [{"prompt": "q"}])
    b = write_jsonl(tmp_path / "b", [{"prompt": "q", "response": "r"}])
    with pytest.raises(DataError, match=r"b\.jsonl: has format 'sft' but .*a\.jsonl has format 'prompt'"):
        load_prompt_dataset([a, b])


def test_detect_format() -> None:
    assert detect_format(["messages"]) == "messages"
    assert detect_format(["prompt", "solution"]) == "prompt"
    assert detect_format(["prompt", "response"]) == "sft"
    assert detect_format(["prompt", "chosen", "rejected"]) == "preference"
    assert detect_format(["chosen", "rejected"]) == "preference"
    with pytest.raises(DataError, match=r"\['chosen', 'text'\].*data\.columns"):
        detect_format(["text", "chosen"])


def test_load_from_config(tmp_path: Path) -> None:
    train = write_jsonl(tmp_path / "train", [{"q": f"question {i}", "a": str(i)} for i in range(5)])
    evals = write_parquet(tmp_path / "eval", [{"q": "held out", "a": "x"}])
    cfg = DataConfig(
        train_files=[train],
        eval_files=[evals],
        columns={"prompt": "q", "solution": "a"},
        system_prompt="sys",
        max_samples=3,
    )
    got = load_from_config(cfg, "prompt")
    assert len(got) == 3
    assert got[0] == PromptExample(
        [{"role": "system", "content": "sys"}, {"role": "user", "content": "question 0"}], {"solution": "0"}
    )
    (ev,) = load_from_config(cfg, "prompt", split="eval")
    assert ev.extras == {"solution": "x"}
    assert load_from_config(DataConfig(train_files=[train]), "prompt", split="eval") == []
    with pytest.raises(DataError, match="train_files is empty"):
        load_from_config(DataConfig(), "sft")
    with pytest.raises(DataError, match="detected format 'prompt'"):
        load_from_config(cfg, "sft")


# ---------------------------------------------------------------------------------------- tokenising


def test_render_prompt_uses_chat_template(tok: Any) -> None:
    msgs = [SYSTEM, USER]
    ids = render_prompt(tok, msgs)
    text = tok.decode(ids)
    assert text.startswith("<|im_start|>")
    assert text == tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n")
    assert ids.count(tok.convert_tokens_to_ids("<|im_start|>")) == 3


def test_end_of_turn_is_im_end(tok: Any) -> None:
    assert end_of_turn_id(tok) == tok.convert_tokens_to_ids("<|im_end|>")


def test_tokenize_sft_mask_covers_exactly_the_response(tok: Any) -> None:
    ex = SFTExample([USER], "The answer is 2.")
    ids, mask = tokenize_sft(tok, ex, max_length=512)
    prompt_ids = render_prompt(tok, ex.messages)
    assert len(ids) == len(mask)
    assert ids[: len(prompt_ids)] == prompt_ids
    assert mask == [0] * len(prompt_ids) + [1] * (len(ids) - len(prompt_ids))
    target = [t for t, m in zip(ids, mask, strict=True) if m]
    assert tok.decode(target) == "The answer is 2.<|im_end|>"
    assert target[-1] == tok.convert_tokens_to_ids("<|im_end|>")

    _, all_mask = tokenize_sft(tok, ex, max_length=512, train_on_prompt=True)
    assert all_mask == [1] * len(ids)

    cut_ids, cut_mask = tokenize_sft(tok, ex, max_length=len(prompt_ids) + 2)
    assert cut_ids == ids[: len(prompt_ids) + 2]
    assert cut_mask == [0] * len(prompt_ids) + [1, 1]
    with pytest.raises(ValueError, match="max_length"):
        tokenize_sft(tok, ex, max_length=0)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    prompt=st.text(
        alphabet=st.characters(codec="ascii", categories=["L", "N", "P", "Zs"]), min_size=1, max_size=40
    ),
    response=st.text(alphabet=st.characters(codec="ascii", categories=["L", "N", "P", "Zs"]), max_size=40),
)
def test_tokenize_sft_mask_property(tok: Any, prompt: str, response: str) -> None:
    ex = SFTExample([{"role": "user", "content": prompt}], response)
    ids, mask = tokenize_sft(tok, ex, max_length=10_000)
    n_prompt = len(render_prompt(tok, ex.messages))
    assert mask == [0] * n_prompt + [1] * (len(ids) - n_prompt)
    assert tok.decode(ids[n_prompt:]) == response + "<|im_end|>"


def test_drop_long_prompts(tok: Any) -> None:
    short = PromptExample([{"role": "user", "content": "hi"}], {"i": 0})
    long = PromptExample([{"role": "user", "content": "word " * 200}], {"i": 1})
    short2 = PromptExample([{"role": "user", "content": "yo"}], {"i": 2})
    limit = len(render_prompt(tok, short.messages))
    kept, dropped = drop_long_prompts(tok, [short, long, short2], limit)
    assert [k.extras["i"] for k in kept] == [0, 2]
    assert dropped == 1
    kept, dropped = drop_long_prompts(tok, [short, long], limit - 1)
    assert kept == [] and dropped == 2
    assert drop_long_prompts(tok, [], 10) == ([], 0)
