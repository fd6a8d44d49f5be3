"""What every command's flags share: one-line user errors, argparse ``type=`` validators, ``--threads`` /
``--workers`` (the paths a command writes are checked in ``paths``).

Flags are checked when they are parsed, before any work starts: the validators refuse non-finite, negative or
zero values with the valid range (``int_at_least``, ``float_in``, ``choices_csv`` ...). Nothing here imports
torch: ``mobilenet --help`` builds every command's flags.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from typing import Any


class CLIError(Exception):
    """A user-facing failure: printed as one line, exit code 2."""


# ----------------------------------------------------------------------------- numbers


def _number(text: str, kind: type) -> Any:
    try:
        return kind(text)
    except ValueError:
        noun = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"expected {noun}, got {text!r}") from None


def int_at_least(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """argparse ``type=``: an integer >= ``minimum`` (and <= ``maximum`` when given); the message names the
    valid range."""
    shown = f">= {minimum}" if maximum is None else f"in {minimum}..{maximum}"

    def parse(text: str) -> int:
        value = _number(text, int)
        if value < minimum or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"must be an integer {shown}, got {text!r}")
        return value

    parse.__name__ = f"integer {shown}"
    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)


def float_in(low: float | None = None, high: float | None = None, *, low_open: bool = False,
             high_open: bool = False) -> Callable[[str], float]:
    """argparse ``type=``: a finite number in the given range (``None``: unbounded on that side); ``nan``
    and ``inf`` are always refused."""
    left = "(" if low_open or low is None else "["
    right = ")" if high_open or high is None else "]"
    shown = f"{left}{'-inf' if low is None else f'{low:g}'}, {'inf' if high is None else f'{high:g}'}{right}"

    def parse(text: str) -> float:
        value = _number(text, float)
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number in {shown}, got {text!r}")
        too_low = low is not None and (value <= low if low_open else value < low)
        too_high = high is not None and (value >= high if high_open else value > high)
        if too_low or too_high:
            raise argparse.ArgumentTypeError(f"must be in {shown}, got {text!r}")
        return value

    parse.__name__ = f"number in {shown}"
    return parse


positive_float = float_in(0, None, low_open=True)
non_negative_float = float_in(0, None)
probability = float_in(0, 1)


def choices_csv(choices: Sequence[str] | None) -> Callable[[str], list[str]]:
    """argparse ``type=``: comma-separated values, each one of ``choices`` (``None``: any, checked by the library,
    where importing the names would load torch for ``--help``)."""

    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in items if choices is not None and t not in choices]
        if bad or not items:
            known = f" (choose from {', '.join(choices)})" if choices is not None else ""
            raise argparse.ArgumentTypeError(f"invalid choice(s) {', '.join(bad) or repr(text)}{known}")
        return items

    parse.__name__ = "comma-separated list"
    return parse


# ----------------------------------------------------------------------------- threads and workers


def add_threads_flag(p: argparse.ArgumentParser) -> None:
    """``--threads N``: PyTorch CPU threads; the default counts only idle cores, so it does not collapse on a
    busy machine (see ``mobilenet.machine``). ``mobilenet.cli.main`` applies it before the command runs."""
    p.add_argument("--threads", type=positive_int, default=None, metavar="N",
                   help="CPU threads for PyTorch (default: the idle cores, at least 1)")
    p.set_defaults(_apply_threads=True)


def add_workers_flag(p: argparse.ArgumentParser) -> None:
    """``--workers N``: DataLoader worker processes; default (``None``) from ``machine.default_workers()``."""
    p.add_argument("--workers", type=non_negative_int, default=None, metavar="N",
                   help="DataLoader worker processes (default: one per idle core beyond the first, at most 8)")


def workers_from(args: argparse.Namespace) -> int:
    """The ``--workers`` value, or the machine's default when it was not given."""
    from ..machine import default_workers

    value = getattr(args, "workers", None)
    return default_workers() if value is None else value
