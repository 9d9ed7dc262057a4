"""Layered config loading: defaults <- YAML files (in order) <- dotted CLI overrides.

Accepted command-line forms::

    --config a.yaml --config b.yaml      layered, later files win
    --rollout.temperature 0.8            dotted override, value parsed as YAML
    --rollout.temperature=0.8
    rollout.temperature=0.8
    --plugins my_plugins.py              plugin file or module (repeatable; added to the config's plugins)
    --profile                            per-phase breakdown + a policy-step trace under <run dir>/profile
    --dry-run                            print the resolved config as YAML and exit 0
    --help                               list every field with its default and description

List fields take one value or a YAML list (``Section`` wraps a single value, see sections.py)::

    --data.train_files my.jsonl          same as --data.train_files '[my.jsonl]'
    --data.train_files '[a.jsonl, b.jsonl]'
    --reward.functions accuracy          a reward by name: same as '[{name: accuracy}]'
    --reward.functions '{name: accuracy, weight: 2}'

Values are never split on commas: ``a.jsonl,b.jsonl`` is one (odd) file name, not two files.
"""

from __future__ import annotations

import difflib
import sys
import types
import typing
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from raylhf.plugins.registry import activate

T = TypeVar("T", bound=BaseModel)


class ConfigError(ValueError):
    """A config problem with a message that names the field or file and says what to change."""


@dataclass
class CliArgs:
    config_files: list[str] = field(default_factory=list)
    overrides: list[tuple[str, Any]] = field(default_factory=list)
    dry_run: bool = False
    help: bool = False


# short flags for fields users type often: --resume auto
ALIASES = {"resume": "checkpoint.resume"}
# bare flags (no value) and the field each sets to true
FLAGS = {"--profile": "runtime.profile"}
# flags that add to a list each time they are given
REPEATABLE = {"plugins"}


def parse_argv(argv: Sequence[str]) -> CliArgs:
    args = CliArgs()
    items = list(argv)
    i = 0
    while i < len(items):
        tok = items[i]
        if tok in ("-h", "--help"):
            args.help = True
        elif tok == "--dry-run":
            args.dry_run = True
        elif tok in FLAGS:  # a bare flag: --profile means runtime.profile=true
            args.overrides.append((FLAGS[tok], True))
        elif tok == "--config" or tok.startswith("--config="):
            if "=" in tok:
                args.config_files.append(tok.split("=", 1)[1])
            else:
                if i + 1 >= len(items):
                    raise ConfigError("--config needs a YAML file path")
                i += 1
                args.config_files.append(items[i])
        elif tok.startswith("--"):
            key = tok[2:]
            if "=" in key:
                key, raw = key.split("=", 1)
            else:
                if i + 1 >= len(items) or (items[i + 1].startswith("--") and not _looks_numeric(items[i + 1])):
                    raise ConfigError(f"--{key} needs a value (e.g. --{key} VALUE or --{key}=VALUE)")
                i += 1
                raw = items[i]
            key = ALIASES.get(key, key)
            if key in REPEATABLE:  # --plugins a.py --plugins b.py: both
                value = _parse_value(raw)
                prev = next((v for k, v in args.overrides if k == key), None)
                if prev is None:
                    args.overrides.append((key, value if isinstance(value, list) else [value]))
                else:
                    prev.extend(value if isinstance(value, list) else [value])
            else:
                args.overrides.append((key, _parse_value(raw)))
        elif "=" in tok:
            key, raw = tok.split("=", 1)
            args.overrides.append((key, _parse_value(raw)))
        else:
            raise ConfigError(
                f"unexpected argument {tok!r}: use --config FILE, --section.field VALUE or section.field=VALUE"
            )
        i += 1
    return args


def _looks_numeric(tok: str) -> bool:
    try:
        float(tok)
    except ValueError:
        return False
    return True


def _parse_value(raw: str) -> Any:
    try:
        return yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        return raw


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {p} is not valid YAML: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping at the top level, got {type(data).__name__}")
    return data


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for p in parts[:-1]:
        child = node.get(p)
        if not isinstance(child, dict):
            child = {}
            node[p] = child
        node = child
    node[parts[-1]] = value


def _submodel(annotation: Any) -> type[BaseModel] | None:
    """The BaseModel class inside an annotation such as ``X``, ``X | None`` or ``Optional[X]``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        for a in typing.get_args(annotation):
            m = _submodel(a)
            if m is not None:
                return m
    return None


def field_paths(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Every leaf field as (dotted path, FieldInfo)."""
    for name, info in model.model_fields.items():
        sub = _submodel(info.annotation)
        if sub is not None and typing.get_origin(info.annotation) is None:
            yield from field_paths(sub, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", info


def check_unknown_keys(model: type[BaseModel], tree: dict[str, Any], source: str, prefix: str = "") -> None:
    all_paths = [p for p, _ in field_paths(model)]
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if key not in model.model_fields:
            loss_hint = _token_loss_hint(key, prefix, all_paths)
            if loss_hint:
                raise ConfigError(f"unknown config key '{path}' in {source}; {loss_hint}")
            local = difflib.get_close_matches(key, list(model.model_fields), n=1, cutoff=0.6)
            full = difflib.get_close_matches(path, all_paths, n=1, cutoff=0.75)
            hint = f"{prefix}{local[0]}" if local else (full[0] if full else None)
            msg = f"unknown config key '{path}' in {source}"
            if hint:
                msg += f"; did you mean '{hint}'?"
            else:
                msg += f"; known keys here: {', '.join(model.model_fields)}"
            raise ConfigError(msg)
        sub = _submodel(model.model_fields[key].annotation)
        if sub is not None and isinstance(value, dict):
            check_unknown_keys(sub, value, source, f"{path}.")


def _token_loss_hint(key: str, prefix: str, all_paths: list[str]) -> str | None:
    """For an unknown ``loss`` key (``dpo.loss``, ``grpo.loss``, a top-level ``loss``): custom token losses
    (``sft.loss``, ``@register_loss_func``) are SFT's only; name this trainer's own loss options instead."""
    if key not in ("loss", "loss_func", "loss_fn") or prefix.startswith("sft."):
        return None
    if "sft.loss" in all_paths:
        return "the token loss is 'sft.loss' (a name registered with @register_loss_func)"
    # all_paths is relative to the section being checked (prefix)
    own = [f"{prefix}{p}" for p in all_paths if "loss" in p.rsplit(".", 1)[-1] and not p.startswith("logging.")]
    options = (f"this trainer's loss options: {', '.join(own)}" if own
               else "this trainer's loss is set by its own section (--help lists the options)")
    return ("custom token losses (sft.loss, @register_loss_func) apply to SFT only: preference and RL losses "
            f"are not pluggable; {options}")


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if p not in ("function-after",))
        msg = e["msg"].removeprefix("Value error, ")
        got = e.get("input")
        extra = "" if isinstance(got, dict) or got is None else f" (got {got!r})"
        lines.append(f"'{loc}': {msg}{extra}" if loc else msg)
    return f"invalid config ({source}):\n  " + "\n  ".join(lines)


def build_config(model: type[T], config_files: Sequence[str] = (), overrides: Sequence[tuple[str, Any]] = ()) -> T:
    # start from the resolved defaults, so a partial section keeps the defaults its parent chose for it
    # (GRPOConfig's policy defaults differ from PolicyConfig's own)
    tree: dict[str, Any] = model().model_dump(mode="json")
    for f in config_files:
        data = read_yaml(f)
        check_unknown_keys(model, data, f"config file {f}")
        tree = deep_merge(tree, data)
    for key, value in overrides:
        single: dict[str, Any] = {}
        set_dotted(single, key, value)
        check_unknown_keys(model, single, "command-line overrides")
        if key in REPEATABLE:  # added to what the config files gave
            before, new = _as_list(tree.get(key)), _as_list(value)
            value = before + [v for v in new if v not in before]
        set_dotted(tree, key, value)
    source = ", ".join([*config_files, *(["command line"] if overrides else [])]) or "defaults"
    _activate_plugins(tree)
    try:
        return model.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(e, source)) from None


def _as_list(value: Any) -> list[Any]:
    return [] if value is None else list(value) if isinstance(value, list | tuple) else [value]


def _activate_plugins(tree: dict[str, Any]) -> None:
    """Load the config's plugin files before validation, so the names they register (``sft.loss_scale``,
    ``policy.optimizer``, ...) validate; a file that fails to import is a config error naming it."""
    refs = _as_list(tree.get("plugins"))
    reward = tree.get("reward")
    if isinstance(reward, dict):
        refs += _as_list(reward.get("plugins"))
    if not refs:
        return

    for ref in refs:
        try:
            activate([ref])
        except Exception as e:  # the user's file: say which one and what went wrong
            raise ConfigError(f"plugin {ref}: {type(e).__name__}: {e}") from None


def to_yaml(cfg: BaseModel) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, default_flow_style=False)


def help_text(model: type[BaseModel], prog: str) -> str:
    lines = [
        f"usage: {prog} [--config FILE ...] [--section.field VALUE ...] [section.field=VALUE ...] [--dry-run]",
        "",
        "List fields also take a single value: --section.field VALUE means [VALUE] (several: '[A, B]').",
        "",
        "Fields (dotted path, default, description):",
    ]
    defaults = model().model_dump(mode="json")
    for path, info in field_paths(model):
        node: Any = defaults
        for part in path.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        doc = info.description or ""
        lines.append(f"  {path:36s} = {yaml.safe_dump(node, default_flow_style=True).strip().removesuffix('...').strip():<14s} {doc}")
    return "\n".join(lines)


def load_config(model: type[T], argv: Sequence[str], prog: str) -> T | None:
    """Parse argv into a validated config. Prints help / the dry run and returns None for those."""
    args = parse_argv(argv)
    if args.help:
        print(help_text(model, prog))
        return None
    cfg = build_config(model, args.config_files, args.overrides)
    if args.dry_run:
        print(to_yaml(cfg), end="")
        return None
    return cfg


def cli_entry(model: type[T], argv: Sequence[str] | None, prog: str) -> T | None:
    """load_config for an entry module: config errors print one clear message and exit 2."""
    try:
        return load_config(model, sys.argv[1:] if argv is None else argv, prog)
    except ConfigError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
