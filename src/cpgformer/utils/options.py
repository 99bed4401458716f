"""Options dataclasses as command-line flags: each field declared once, with its help text.

A field made with :func:`option` carries its help (and optionally choices, flag name, metavar,
argument group, a parser for the text given) in its metadata; :func:`add_option_flags` turns every
such field of a dataclass into one flag, and :func:`options_from_args` builds the dataclass back
from the parsed arguments. Spelling: ``field_name`` -> ``--field-name``; a ``bool`` field that is
False by default is a switch, one that is True by default gets ``--no-field-name``.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any


def option(
    default: Any,
    help: str,  # noqa: A002
    *,
    choices: Sequence[str] | None = None,
    flag: str | None = None,
    metavar: str | None = None,
    group: str | None = None,
    parse: Callable[[str], Any] | None = None,
    shown: str | None = None,
) -> Any:
    """A dataclass field with command-line metadata (``shown``: the default as the help states it)."""
    meta = {"help": help, "choices": choices, "flag": flag, "metavar": metavar, "group": group}
    meta.update(parse=parse, shown=shown)
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _unwrap_optional(hint: Any) -> Any:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


def _kwargs(f: dataclasses.Field, hint: Any) -> dict[str, Any]:
    meta = f.metadata
    inner = _unwrap_optional(hint)
    kwargs: dict[str, Any] = {}
    if inner is bool:
        return {"action": "store_true" if not f.default else "store_false"}
    origin = typing.get_origin(inner)
    if origin in (list, tuple) or inner in (list, tuple) or origin is Sequence:
        kwargs["nargs"] = "+"
        item = typing.get_args(inner)[0] if typing.get_args(inner) else str
        kwargs["type"] = item if item in (int, float, str) else str
    elif inner in (int, float, str):
        kwargs["type"] = inner
    if meta.get("parse") is not None:
        kwargs["type"] = meta["parse"]
        kwargs.pop("nargs", None)
    if meta.get("choices"):
        kwargs["choices"] = tuple(meta["choices"])
    if meta.get("metavar"):
        kwargs["metavar"] = meta["metavar"]
    return kwargs


def _default_text(f: dataclasses.Field) -> str:
    if f.metadata.get("shown") is not None:
        return str(f.metadata["shown"])
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
    if default is None:
        return "none"
    if isinstance(default, (list, tuple)):
        return " ".join(map(str, default)) or "none"
    return str(default)


def flag_name(f: dataclasses.Field) -> str:
    """The flag of a field: its ``flag`` metadata, else ``--field-name`` (``--no-...`` for a
    ``bool`` that is True by default)."""
    if f.metadata.get("flag"):
        return str(f.metadata["flag"])
    name = f.name.replace("_", "-")
    return f"--no-{name}" if f.default is True else f"--{name}"


def add_option_flags(
    parser: argparse.ArgumentParser, cls: type, *, skip: Sequence[str] = ()
) -> None:
    """One flag per :func:`option` field of the dataclass ``cls`` (fields in ``skip`` left out)."""
    hints = typing.get_type_hints(cls)
    groups: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in skip or "help" not in f.metadata:
            continue
        group_name = f.metadata.get("group")
        target: Any = parser
        if group_name:
            if group_name not in groups:
                groups[group_name] = parser.add_argument_group(group_name)
            target = groups[group_name]
        kwargs = _kwargs(f, hints[f.name])
        text = f.metadata["help"]
        if kwargs.get("action") is None:
            text = f"{text} (default: {_default_text(f)})"
        target.add_argument(
            flag_name(f), dest=f.name, default=argparse.SUPPRESS, help=text, **kwargs
        )


def options_from_args(cls: type, args: argparse.Namespace, **given: Any) -> Any:
    """The dataclass ``cls`` from parsed flags (fields not given keep their defaults)."""
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in vars(args).items() if k in names}
    values.update(given)
    return cls(**values)
