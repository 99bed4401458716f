"""Command-line flags generated from option dataclasses: each parameter is declared once.

A command declares its parameters as a dataclass whose fields carry their help text (and, where
needed, the flag's spelling, deprecated aliases, choices or a metavar) in the field metadata::

    @dataclass
    class DemoOptions:
        output: str = option("cpgformer-demo", "output folder", flag="-o", long="--output")
        max_steps: int = option(800, "training steps")
        overwrite: bool = option(False, "replace an existing output", deprecated=("--force",))

:func:`add_options` adds one flag per field to a parser (``--max-steps``, ``--overwrite``);
:func:`from_args` builds the dataclass back from the parsed namespace. Types map to flags:
``bool`` -> ``--name/--no-name``, ``tuple[str, ...]``/``list[str]`` -> one or more values (spaces or
commas), ``X | None`` -> ``X`` (``none`` for None), ``Literal[...]`` -> choices. A deprecated alias
is accepted, hidden from ``--help`` and warns that it will go away, naming the flag to use.

Fields a dataclass holds for the library but not as flags are skipped with ``skip=``; help text for
dataclasses declared elsewhere (without metadata) can be given with ``helps=``. A field may also name
an argument ``group`` (a titled section of ``--help``), a ``parse`` function turning the text given
into the field's value (one value, e.g. MiB -> bytes), and ``shown``, the default as ``--help``
states it when the value itself would not read well.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import types
import typing
from collections import abc
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

log = logging.getLogger(__name__)

HELP = "help"
"""Field metadata keys: the help text ..."""
FLAG = "flag"
"""... the flag's spelling (default ``--field-name``) ..."""
SHORT = "short"
"""... a short flag (``-o``) ..."""
DEPRECATED = "deprecated"
"""... old spellings, accepted with a warning ..."""
CHOICES = "choices"
METAVAR = "metavar"
POSITIONAL = "positional"
"""... a positional argument instead of a flag."""
REQUIRED = "required"
NARGS = "nargs"
GROUP = "group"
"""... the titled section of ``--help`` the flag is listed in ..."""
PARSE = "parse"
"""... a function from the text given to the value (one value per flag) ..."""
SHOWN = "shown"
"""... and the default as ``--help`` states it."""


def option(
    default: Any = dataclasses.MISSING,
    help: str = "",  # noqa: A002 - the argparse name
    *,
    flag: str | None = None,
    short: str | None = None,
    deprecated: Sequence[str] = (),
    choices: Sequence[Any] | None = None,
    metavar: str | None = None,
    positional: bool = False,
    required: bool = False,
    nargs: str | None = None,
    group: str | None = None,
    parse: Callable[[str], Any] | None = None,
    shown: str | None = None,
    default_factory: Callable[[], Any] | None = None,
) -> Any:
    """A dataclass field carrying its command-line help (and spelling) in its metadata."""
    meta: dict[str, Any] = {HELP: help}
    for key, value in (
        (FLAG, flag),
        (SHORT, short),
        (CHOICES, tuple(choices) if choices is not None else None),
        (METAVAR, metavar),
        (NARGS, nargs),
        (GROUP, group),
        (PARSE, parse),
        (SHOWN, shown),
    ):
        if value is not None:
            meta[key] = value
    if deprecated:
        meta[DEPRECATED] = tuple(deprecated)
    if positional:
        meta[POSITIONAL] = True
    if required:
        meta[REQUIRED] = True
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    if isinstance(default, (list, dict, set)):  # (a fresh copy per instance)
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def flag_name(name: str) -> str:
    """``max_steps`` -> ``--max-steps``."""
    return "--" + name.replace("_", "-")


def _parse_optional(inner: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        if text.lower() in ("none", "null", ""):
            return None
        return inner(text)

    parse.__name__ = getattr(inner, "__name__", "value")  # argparse names it in errors
    return parse


class _ListAction(argparse.Action):
    """One or more values, separated by spaces or commas (``chr1 chr2`` or ``chr1,chr2``)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        items = values if isinstance(values, list) else [values]
        flat = [part.strip() for v in items for part in str(v).split(",") if part.strip()]
        setattr(namespace, self.dest, flat)


def _warn_deprecated(action_cls: type[argparse.Action], new: str) -> type[argparse.Action]:
    """``action_cls`` that warns that the spelling used is deprecated in favour of ``new``."""

    def call(self: argparse.Action, parser: argparse.ArgumentParser, *rest: Any) -> None:
        used = rest[2] if len(rest) > 2 else self.option_strings[0]  # (namespace, values, used)
        log.warning("%s is deprecated and will be removed: use %s", used, new)
        action_cls.__call__(self, parser, *rest)

    return type(f"Deprecated{action_cls.__name__}", (action_cls,), {"__call__": call})


def _action_class(kwargs: Mapping[str, Any]) -> type[argparse.Action]:
    """The argparse action class ``kwargs`` select (for subclassing by deprecated aliases)."""
    action = kwargs.get("action", "store")
    if isinstance(action, type):
        return action
    return {
        "store": argparse._StoreAction,
        "store_true": argparse._StoreTrueAction,
        "store_false": argparse._StoreFalseAction,
    }[action]


def flag_kwargs(hint: Any, meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """argparse keyword arguments (type, nargs, action, choices) for a field of type ``hint``."""
    meta = meta or {}
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    out: dict[str, Any]
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        inner = next(a for a in args if a is not type(None))
        out = flag_kwargs(inner, meta)
        if "type" in out and out.get("action") is None:
            out["type"] = _parse_optional(out["type"])
        return out
    if hint is bool:
        out = {"action": argparse.BooleanOptionalAction}
    elif origin in (tuple, list, abc.Sequence) or hint in (tuple, list):
        out = {"nargs": meta.get(NARGS, "*"), "type": str, "action": _ListAction}
    elif origin is typing.Literal:
        out = {"type": type(args[0]), "choices": args}
    elif hint in (int, float, str):
        out = {"type": hint}
    else:
        out = {"type": str}
    if CHOICES in meta:
        out["choices"] = meta[CHOICES]
    if NARGS in meta and "nargs" not in out:
        out["nargs"] = meta[NARGS]
    if meta.get(PARSE) is not None:  # each value given turned into the field's by ``parse``:
        out = {k: v for k, v in out.items() if k not in ("nargs", "action")}
        out["type"] = meta[PARSE]
        if NARGS in meta:  # several values kept as given (no splitting at commas)
            out["nargs"] = meta[NARGS]
    return out


def _default_text(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return " ".join(str(v) for v in value) or "none"
    return str(value)


def add_options(
    parser: argparse.ArgumentParser | Any,
    cls: type,
    *,
    prefix: str = "",
    skip: Iterable[str] = (),
    helps: Mapping[str, str] | None = None,
    suppress_defaults: bool = False,
    defaults: Mapping[str, Any] | None = None,
    seen: set[str] | None = None,
) -> list[str]:
    """Add one argument per field of the dataclass ``cls`` to ``parser`` (a parser or a group).

    ``prefix``: namespace destinations are ``prefix + field name`` (several dataclasses in one
    parser). ``suppress_defaults``: unset flags are absent from the namespace (to layer flags over a
    configuration file). ``defaults`` override the dataclass defaults shown and used. ``seen``: flag
    spellings already added (skipped, shared between calls). Returns the field names added.
    """
    skipped = set(skip)
    hints = typing.get_type_hints(cls)
    helps = helps or {}
    defaults = defaults or {}
    added = []
    for f in dataclasses.fields(cls):
        if f.name in skipped or not f.init:
            continue
        meta = f.metadata
        flag = meta.get(FLAG) or flag_name(f.name)
        if seen is not None:
            if flag in seen:
                continue
            seen.add(flag)
        if f.name in defaults:
            default = defaults[f.name]
        elif f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        kwargs = flag_kwargs(hints[f.name], meta)
        text = helps.get(f.name) or meta.get(HELP) or f.name.replace("_", " ")
        dest = prefix + f.name
        target = _group(parser, meta[GROUP]) if GROUP in meta else parser
        if meta.get(POSITIONAL):
            target.add_argument(
                dest, help=text, metavar=meta.get(METAVAR, f.name.upper()), **kwargs
            )
            added.append(f.name)
            continue
        if kwargs.get("action") is not argparse.BooleanOptionalAction and (
            METAVAR in meta or "choices" not in kwargs  # (argparse shows the choices otherwise)
        ):
            kwargs.setdefault("metavar", meta.get(METAVAR, f.name.upper()))
        shown = meta.get(SHOWN)
        if shown is None and default not in (None, False):
            shown = _default_text(default)
        if shown is not None and "(default" not in text and "%(default)" not in text:
            text = f"{text} (default: {str(shown).replace('%', '%%')})"
        required = bool(meta.get(REQUIRED))
        names = [meta[SHORT], flag] if SHORT in meta else [flag]
        target.add_argument(
            *names,
            dest=dest,
            # (an empty list, or a default stated by ``shown``, is left out of the namespace: the
            # field's own default applies, and the help formatter does not state the raw value)
            default=argparse.SUPPRESS
            if suppress_defaults or SHOWN in meta or default in ((), [])
            else default,
            required=required,
            help=text,
            **kwargs,
        )
        for old in meta.get(DEPRECATED, ()):
            alias_kwargs = dict(kwargs)
            if alias_kwargs.get("action") is argparse.BooleanOptionalAction:
                alias_kwargs["action"] = "store_true"
            if alias_kwargs.get("action") == "store_true":
                alias_kwargs.pop("metavar", None)
            alias_kwargs["action"] = _warn_deprecated(_action_class(alias_kwargs), flag)
            target.add_argument(
                old, dest=dest, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **alias_kwargs
            )
        added.append(f.name)
    return added


def _group(parser: argparse.ArgumentParser | Any, title: str) -> Any:
    """The argument group of ``parser`` titled ``title`` (made on first use)."""
    for group in getattr(parser, "_action_groups", ()):
        if group.title == title:
            return group
    return parser.add_argument_group(title)


def add_alias(
    parser: argparse.ArgumentParser | Any,
    old: str,
    new: str,
    dest: str,
    *,
    store: Any = True,
) -> None:
    """A hidden, deprecated flag ``old`` that sets ``dest`` to ``store`` and warns to use ``new``
    (for a spelling that is not the field's own, e.g. ``--no-plots`` for ``--no-figures``)."""
    action = _warn_deprecated(argparse._StoreConstAction, new)
    parser.add_argument(
        old, dest=dest, action=action, const=store, default=argparse.SUPPRESS,
        help=argparse.SUPPRESS,
    )  # fmt: skip


def values(args: argparse.Namespace, cls: type, *, prefix: str = "") -> dict[str, Any]:
    """The fields of ``cls`` present in ``args`` (by ``prefix + name``), as a dict."""
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    found = vars(args)
    return {n: found[prefix + n] for n in names if prefix + n in found}


def from_args(cls: type, args: argparse.Namespace, *, prefix: str = "", **overrides: Any) -> Any:
    """An instance of ``cls`` from the parsed ``args`` (fields not given keep their defaults)."""
    hints = typing.get_type_hints(cls)
    kwargs = values(args, cls, prefix=prefix)
    for name, value in kwargs.items():
        origin = typing.get_origin(hints[name])
        if origin is tuple and isinstance(value, list):
            kwargs[name] = tuple(value)
    kwargs.update(overrides)
    return cls(**kwargs)
