"""A single value where a list is expected: every list field of every config tree, CLI and YAML.

The list fields are discovered from the config classes, so a new list field is tested automatically;
one whose item type has no sample value here (or that the dotted CLI cannot reach) fails
``test_every_list_field_is_covered`` until it is handled.
"""

from __future__ import annotations

import shlex
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, Field

from raylhf.config import CONFIGS, ConfigError, GRPOConfig, build_config, load_config
from raylhf.config.base import Section, list_item_type
from raylhf.config.loader import _submodel, parse_argv
from raylhf.config.run import CallbackConfig
from raylhf.config.sections import RemoteRewardConfig, RewardFunctionConfig, RewardModelConfig
from raylhf.tools.serve_reward import ServeRewardConfig

ROOT = Path(__file__).resolve().parents[2]

ROOTS: dict[str, type[BaseModel]] = {**CONFIGS, "serve": ServeRewardConfig}

# one valid single value per list item type (names differ from the default reward functions')
SAMPLES: dict[Any, Any] = {
    str: "examples/data/my.jsonl",
    int: 1,
    RewardFunctionConfig: {"name": "format", "weight": 2.0},
    RemoteRewardConfig: {"name": "judge", "url": "http://127.0.0.1:8000/score"},
    RewardModelConfig: {"name": "rm", "path": "some/reward-model"},
    CallbackConfig: {"name": "early_stopping", "kwargs": {"patience": 2}},
}


def _sample(item: Any) -> Any:
    """A valid single value for list items of type ``item`` (a Literal: its last choice); None: none known."""
    if typing.get_origin(item) is typing.Literal:
        return typing.get_args(item)[-1]
    return SAMPLES.get(item)


def _list_paths(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, type[BaseModel], str, Any]]:
    """(dotted path, owning class, field name, item type) of every list field reachable by a dotted key."""
    for name, info in model.model_fields.items():
        found = list_item_type(info.annotation)
        if found is not None:
            yield f"{prefix}{name}", model, name, found[0]
            continue
        sub = _submodel(info.annotation)
        if sub is not None and typing.get_origin(info.annotation) is None:  # not `X | None`: no dotted keys
            yield from _list_paths(sub, f"{prefix}{name}.")


def _all_sections(cls: type[Section] = Section) -> Iterator[type[Section]]:
    for sub in cls.__subclasses__():
        if sub.__module__.startswith("raylhf."):
            yield sub
        yield from _all_sections(sub)


CASES = [(root, path, item) for root, model in ROOTS.items() for path, _, _, item in _list_paths(model)]
IDS = [f"{root}:{path}" for root, path, _ in CASES]


def test_discovery_finds_the_known_list_fields() -> None:
    found = {f"{root}:{path}" for root, path, _ in CASES}
    for known in ("grpo:data.train_files", "grpo:data.eval_files", "grpo:reward.functions", "grpo:reward.remote",
                  "grpo:reward.models", "grpo:reward.plugins", "sft:data.train_files", "sample:reward.functions",
                  "serve:functions", "serve:plugins"):
        assert known in found


def test_every_list_field_is_covered() -> None:
    """Every list field of every config section is reachable from a root and has a sample value."""
    reachable = {(owner, name) for model in ROOTS.values() for _, owner, name, _ in _list_paths(model)}
    for cls in _all_sections():
        for name, info in cls.model_fields.items():
            found = list_item_type(info.annotation)
            if found is None:
                continue
            assert _sample(found[0]) is not None, f"add a sample value for list items of type {found[0]!r} to SAMPLES"
            # an inherited field (TrainerSections.plugins) is reached through the configs that inherit it
            assert any(issubclass(owner, cls) and n == name for owner, n in reachable), (
                f"{cls.__name__}.{name} is a list field this test cannot set with a dotted key: cover it here"
            )


def _expected(item: Any, sample: Any) -> Any:
    return item.model_validate(sample).model_dump() if isinstance(item, type) and issubclass(item, BaseModel) \
        else sample


PLUGIN_FILE = str(Path(__file__).resolve().parents[2] / "examples" / "rewards" / "brevity.py")


def _sample_at(path: str, item: Any) -> Any:
    """The sample for the field at ``path``: plugin fields are loaded while the config validates, so they get
    a real plugin file; registry names get a registered name."""
    named = {"agent.tools": "calculator", "sft.metrics": "acc"}  # checked against their registries
    return PLUGIN_FILE if path.split(".")[-1] == "plugins" else named.get(path) or _sample(item)


# fields that are valid only with another one set
COMPANIONS: dict[str, list[tuple[str, Any]]] = {"agent.tools": [("agent.template", "hermes")]}


def _get(cfg: BaseModel, path: str) -> Any:
    node: Any = cfg.model_dump()
    for part in path.split("."):
        node = node[part]
    return node


def _nested(path: str, value: Any) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    node = tree
    parts = path.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return tree


def _cli_text(value: Any) -> str:
    return value if isinstance(value, str) else yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()


@pytest.mark.parametrize(("root", "path", "item"), CASES, ids=IDS)
@pytest.mark.parametrize("form", ["--key value", "--key=value", "key=value", "yaml"])
def test_single_value_becomes_a_one_item_list(root: str, path: str, item: Any, form: str, tmp_path: Path) -> None:
    model = ROOTS[root]
    sample = _sample_at(path, item)
    text = _cli_text(sample)
    files: list[str] = []
    if form == "yaml":
        f = tmp_path / "single.yaml"
        f.write_text(yaml.safe_dump(_nested(path, sample)))
        files.append(str(f))
        argv = ["--config", str(f)]
    else:
        argv = {"--key value": [f"--{path}", text], "--key=value": [f"--{path}={text}"],
                "key=value": [f"{path}={text}"]}[form]
    args = parse_argv(argv)
    cfg = build_config(model, args.config_files, [*args.overrides, *COMPANIONS.get(path, [])])
    assert _get(cfg, path) == [_expected(item, sample)]


@pytest.mark.parametrize(("root", "path", "item"), CASES, ids=IDS)
def test_lists_still_work(root: str, path: str, item: Any, tmp_path: Path) -> None:
    sample = _sample_at(path, item)
    f = tmp_path / "list.yaml"
    f.write_text(yaml.safe_dump(_nested(path, [sample])))
    extra = COMPANIONS.get(path, [])
    assert _get(build_config(ROOTS[root], [str(f)], extra), path) == [_expected(item, sample)]
    args = parse_argv([f"--{path}", _cli_text([sample])])
    assert _get(build_config(ROOTS[root], overrides=[*args.overrides, *extra]), path) == [_expected(item, sample)]


@pytest.mark.parametrize("root", ["grpo", "sample", "serve"])
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("accuracy", [("accuracy", 1.0)]),
        ("[accuracy, format]", [("accuracy", 1.0), ("format", 1.0)]),
        ("{name: accuracy, weight: 2}", [("accuracy", 2.0)]),
        ("[{name: accuracy, weight: 2}, {name: format}]", [("accuracy", 2.0), ("format", 1.0)]),
        ("[accuracy, {name: format, weight: 0.5}]", [("accuracy", 1.0), ("format", 0.5)]),
    ],
)
def test_reward_functions_forms(root: str, text: str, expected: list[tuple[str, float]], tmp_path: Path) -> None:
    key = "functions" if root == "serve" else "reward.functions"
    cfg = build_config(ROOTS[root], overrides=parse_argv([f"--{key}", text]).overrides)
    fns = cfg.functions if root == "serve" else cfg.reward.functions  # type: ignore[attr-defined]
    assert [(f.name, f.weight) for f in fns] == expected
    f = tmp_path / "r.yaml"
    f.write_text(yaml.safe_dump(_nested(key, yaml.safe_load(text))))
    from_yaml = build_config(ROOTS[root], [str(f)])
    fns = from_yaml.functions if root == "serve" else from_yaml.reward.functions  # type: ignore[attr-defined]
    assert [(f.name, f.weight) for f in fns] == expected


@pytest.mark.parametrize("value", ["my.jsonl", "examples/data/x.jsonl", "data/train-00000-of-00001.parquet",
                                   "openai/gsm8k", "gsm8k:main:train", "a.jsonl,b.jsonl"])
def test_cli_paths_stay_one_string(value: str) -> None:
    """Paths and hub ids are one string each; a comma is part of the name (never split)."""
    cfg = build_config(GRPOConfig, overrides=parse_argv(["--data.train_files", value]).overrides)
    assert cfg.data.train_files == [value]


def test_null_is_the_empty_list() -> None:
    cfg = build_config(GRPOConfig, overrides=parse_argv(["--data.eval_files", "null"]).overrides)
    assert cfg.data.eval_files == []


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--data.train_files", "{a: 1}"], r"'data\.train_files': Input should be a valid list"),
        (["--data.train_files", "5"], r"'data\.train_files\.0': Input should be a valid string"),
        (["--reward.functions", "5"], r"'reward\.functions\.0'"),
        (["--reward.functions", "{nme: accuracy}"], r"'reward\.functions\.0\.nme': Extra inputs"),
        (["--reward.remote", "http://127.0.0.1:8000/score"], r"'reward\.remote\.0'"),
        (["--reward.models", "{name: rm}"], r"'reward\.models\.0\.path': Field required"),
    ],
)
def test_wrong_types_still_name_the_field(argv: list[str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_config(GRPOConfig, overrides=parse_argv(argv).overrides)


def test_assignment_takes_a_single_value() -> None:
    cfg = GRPOConfig()
    cfg.data.train_files = "x.jsonl"  # type: ignore[assignment]
    cfg.reward.functions = "format"  # type: ignore[assignment]
    assert cfg.data.train_files == ["x.jsonl"]
    assert [f.name for f in cfg.reward.functions] == ["format"]


def test_any_new_section_list_field_takes_a_single_value() -> None:
    """The mechanism lives on Section: a list field added to any section needs nothing else."""

    class Tagged(Section):
        tags: list[str] = Field(default_factory=list)
        ids: list[int] | None = None
        extra: list[dict[str, Any]] = Field(default_factory=list)

    t = Tagged.model_validate({"tags": "one", "ids": 3, "extra": {"a": 1}})
    assert (t.tags, t.ids, t.extra) == (["one"], [3], [{"a": 1}])
    assert Tagged.model_validate({"tags": None, "ids": None}).model_dump() == {"tags": [], "ids": None, "extra": []}
    assert Tagged.model_validate({"tags": ["a", "b"]}).tags == ["a", "b"]


def test_brief_dry_run_resolves_a_list(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--data.train_files", "examples/data/arithmetic_train.jsonl", "--grpo.num_steps", "2", "--dry-run"]
    assert load_config(GRPOConfig, argv, "raylhf.grpo") is None
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["data"]["train_files"] == ["examples/data/arithmetic_train.jsonl"]
    assert resolved["grpo"]["num_steps"] == 2


def test_readme_one_file_command_loads_its_data(monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's one-file GRPO command validates and its columns fit the shipped file."""
    from raylhf.data import load_from_config

    text = (ROOT / "README.md").read_text().replace("\\\n", " ")
    lines = [ln for ln in text.splitlines() if ln.startswith("python -m raylhf.grpo --data.train_files")]
    assert lines, "README's Running section shows `python -m raylhf.grpo --data.train_files FILE ...`"
    argv = shlex.split(lines[0], comments=True)[3:]
    monkeypatch.chdir(ROOT)
    cfg = load_config(GRPOConfig, argv, "raylhf.grpo")
    assert cfg is not None and len(cfg.data.train_files) == 1
    rows = load_from_config(cfg.data, "prompt")
    assert rows and rows[0].extras.get("solution") is not None
    for f in cfg.reward.functions:  # the default rewards find their columns in the shipped file
        column = f.kwargs.get("column", "solution")
        assert column in rows[0].extras, f"reward {f.label or f.name} reads column {column!r}"
