"""The base of every config section (``Section``: unknown keys are errors, a list field takes one value, a bare
string fills a shorthand field) and the helpers the sections' validators share."""

from __future__ import annotations

import functools
import types
import typing
from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator, model_validator

from raylhf.plugins.registry import Registry


def check_registered(reg: Registry[Any], names: str | list[str]) -> None:
    """A config validator's registry check: every name must be registered (the registry loads its kind's
    built-ins on first use, and the plugins named by the config are loaded before validation), else ValueError
    with the registry's message listing the registered names."""
    for name in [names] if isinstance(names, str) else names:
        try:
            reg.get_entry(name)
        except KeyError as e:
            raise ValueError(e.args[0]) from None


class Section(BaseModel):
    """Base of every config node: unknown keys are errors, assignments are validated.

    A field annotated as a list also takes one value (``train_files: my.jsonl`` means
    ``train_files: [my.jsonl]``; null means the empty list unless the field allows null), in every
    section: the ``_single_value`` validator below wraps it before pydantic checks the types (also on
    assignment), so a wrongly typed value is still reported at the field's dotted path. Strings are
    never split (``a.jsonl,b.jsonl`` is one name; give several as a list ``[a.jsonl, b.jsonl]``).
    A section that sets ``shorthand`` also takes a bare string for the whole section (``accuracy``
    means ``{name: accuracy}``).
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    shorthand: ClassVar[str | None] = None
    """The field that a bare string given for this section fills, or None (no string form)."""

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, str) and cls.shorthand is not None:
            return {cls.shorthand: data}
        return data

    @field_validator("*", mode="before")
    @classmethod
    def _single_value(cls, value: Any, info: ValidationInfo) -> Any:
        found = _list_fields(cls).get(info.field_name or "")
        if found is None:
            return value
        item, nullable = found
        if value is None:
            return value if nullable else []
        if isinstance(value, (list, tuple, set, frozenset)):
            return value
        if isinstance(value, Mapping) and not _takes_mapping(item):
            return value  # e.g. a mapping for a list of strings: pydantic reports it at the field itself
        return [value]


def list_item_type(annotation: Any) -> tuple[Any, bool] | None:
    """For a list annotation (``list[X]``, ``list[X] | None``): (X, whether None is allowed); else None."""
    origin = typing.get_origin(annotation)
    if origin is list:
        args = typing.get_args(annotation)
        return (args[0] if args else Any), False
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        for a in args:
            found = list_item_type(a)
            if found is not None:
                return found[0], type(None) in args
    return None


@functools.cache
def _list_fields(cls: type[BaseModel]) -> dict[str, tuple[Any, bool]]:
    """Field name -> (item type, nullable) for every list field of ``cls``."""
    out: dict[str, tuple[Any, bool]] = {}
    for name, info in cls.model_fields.items():
        found = list_item_type(info.annotation)
        if found is not None:
            out[name] = found
    return out


def _takes_mapping(item: Any) -> bool:
    """Whether one list item of this type may be a mapping (a config section, a dict, Any)."""
    if item is Any or (isinstance(item, type) and issubclass(item, BaseModel)):
        return True
    origin = typing.get_origin(item)
    if origin in (typing.Union, types.UnionType):
        return any(_takes_mapping(a) for a in typing.get_args(item))
    return (isinstance(origin, type) and issubclass(origin, Mapping)) or item in (dict, Mapping)


def nearest_divisor(n: int, target: int) -> int:
    """The divisor of ``n`` closest to ``target`` (for messages that suggest a batch size)."""
    divisors = [d for d in range(1, n + 1) if n % d == 0]
    return min(divisors, key=lambda d: (abs(d - target), -d))
