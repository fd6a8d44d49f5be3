"""Settings as typed data: TOML recipes and command-line flags read into frozen dataclasses.

Every field of a settings dataclass is one TOML key and one flag (``lr`` -> ``--lr``,
``channels_last`` -> ``--channels-last/--no-channels-last``). A recipe may group keys under tables
(``[optim]``, ``[data]`` ...): table names are for the reader only and are flattened, so
``[optim] lr = 0.1`` and a top-level ``lr = 0.1`` mean the same. Values are checked against the
field's type hint (an int where a float is expected is widened), with errors that name the source.

Classification (:class:`mobilenet.recipe.TrainConfig`) and detection
(:mod:`mobilenet.detection.config`) read their recipes and generate their flags with these functions.
"""

from __future__ import annotations

import argparse
import difflib
import sys
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import fields
from pathlib import Path
from typing import Any, Literal


def read_toml(path: str | Path) -> dict[str, Any]:
    """Parse a TOML recipe with clear errors for a missing or malformed file."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"recipe not found: {path}")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path} is not valid TOML: {e}") from None


def flatten_tables(d: dict[str, Any], source: str) -> dict[str, Any]:
    """Keys of nested TOML tables lifted to the top level (a key set twice is an error naming ``source``)."""
    flat: dict[str, Any] = {}
    for k, v in d.items():
        items = flatten_tables(v, source).items() if isinstance(v, dict) else [(k, v)]
        for k2, v2 in items:
            if k2 in flat:
                raise ValueError(f"{source}: key {k2!r} is set twice")
            flat[k2] = v2
    return flat


def _members(cls: type, name: str) -> tuple[Any, ...]:
    """The type hint of field ``name`` as a tuple of alternatives, ``None`` left out (``X | None`` -> (X,))."""
    t = typing.get_type_hints(cls)[name]
    if typing.get_origin(t) in (typing.Union, types.UnionType):
        return tuple(a for a in typing.get_args(t) if a is not type(None))
    return (t,)


def field_types(cls: type, name: str) -> tuple[type, ...]:
    """The types a value of field ``name`` may have (``Literal[...]`` -> str, ``X | None`` -> X)."""
    return tuple(str if typing.get_origin(t) is Literal else t for t in _members(cls, name))


def field_choices(cls: type, name: str) -> list[Any] | None:
    """The allowed values of a ``Literal`` (or ``Literal | None``) field, else None."""
    literals = [t for t in _members(cls, name) if typing.get_origin(t) is Literal]
    return list(typing.get_args(literals[0])) if literals else None


def check_choices(obj: Any) -> None:
    """``ValueError`` naming the field when a ``Literal`` field of the dataclass ``obj`` holds another value."""
    for f in fields(obj):
        choices = field_choices(type(obj), f.name)
        value = getattr(obj, f.name)
        if choices is not None and value is not None and value not in choices:
            raise ValueError(f"{f.name} must be one of {', '.join(str(c) for c in choices)}, got {value!r}")


def coerce(values: dict[str, Any], source: str, cls: type, *, what: str = "training",
           hint: Callable[[str], str | None] | None = None) -> dict[str, Any]:
    """Check keys and value types against the dataclass ``cls``; ints become floats where a float is expected.

    Keys may use dashes (``batch-size``). An unknown key names the closest known one, else ``hint(key)``
    (e.g. "this is a detection option") when that gives one.
    """
    known = {f.name for f in fields(cls)}
    out = {}
    for k, v in values.items():
        key = k.replace("-", "_")
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            extra = f" (did you mean {close[0]!r}?)" if close else ""
            if not close and hint is not None and (h := hint(key)):
                extra = f" ({h})"
            raise ValueError(f"{source}: unknown {what} option {k!r}{extra}")
        types_ = field_types(cls, key)
        if v is not None:
            if float in types_ and isinstance(v, int) and not isinstance(v, bool):
                v = float(v)
            elif not isinstance(v, types_) or (isinstance(v, bool) and bool not in types_):
                names = "/".join(t.__name__ for t in types_)
                raise ValueError(f"{source}: {k} must be {names}, got {v!r}")
        out[key] = v
    return out


def add_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type, *,
              skip: Iterable[str] = (), flags: dict[str, str] | None = None) -> None:
    """One flag per field of ``cls``, default SUPPRESS so only flags actually given override a recipe.

    Help comes from each field's ``metadata["help"]``; ``bool`` fields become ``--x/--no-x``; ``Literal``
    fields get their choices. ``flags`` renames a field's flag (``{"classification": "--loss"}``).
    """
    for f in fields(cls):
        if f.name in skip:
            continue
        flag = (flags or {}).get(f.name) or "--" + f.name.replace("_", "-")
        help_ = f.metadata.get("help", "") + (f" (default: {f.default})" if f.default is not None else "")
        types_ = field_types(cls, f.name)
        choices = field_choices(cls, f.name)
        if types_ == (bool,):
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                                help=help_)
        else:
            conv = types_[0] if types_[0] in (int, float) else str
            parser.add_argument(flag, dest=f.name, type=conv, choices=choices, default=argparse.SUPPRESS, help=help_,
                                metavar=None if choices else f.name.upper())


def given(args: argparse.Namespace, *classes: type) -> dict[str, Any]:
    """The fields of ``classes`` present in ``args`` (with :func:`add_flags`: the flags the user actually gave)."""
    names = {f.name for cls in classes for f in fields(cls)}
    return {k: v for k, v in vars(args).items() if k in names}
