"""The paths a command writes, checked before any work: ``check_output_file`` / ``check_output_dir`` refuse an
output that cannot be what its name says or cannot be written, or that is one of the command's inputs (it would
be overwritten by what is made from it, or read back as an input); ``add_picture_flags`` / ``check_picture_flags``
are the predict commands' ``--out`` / ``--no-save``. Nothing here imports torch."""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from .flags import CLIError


def _same_file(a: Path, b: str | os.PathLike[str] | None) -> bool:
    try:
        return bool(b) and a.exists() and Path(b).exists() and a.samefile(b)  # type: ignore[arg-type]
    except OSError:
        return False


def check_output_file(path: str | os.PathLike[str], *, flag: str = "-o", suffixes: Sequence[str] | None = None,
                      what: str = "", inputs: Iterable[str | os.PathLike[str] | None] = ()) -> Path:
    """Refuse, before any work, an output file that cannot be what its name says or cannot be written: an
    existing folder, a path under a file, a suffix other than ``suffixes`` (e.g. ``.onnx`` for ONNX), or one of
    the command's ``inputs`` (it would be overwritten by what is made from it)."""
    p = Path(path)
    if p.is_dir():
        raise CLIError(f"{flag} {path} is a folder: give a file name" + (f" ending in {suffixes[0]}" if suffixes
                                                                          else ""))
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                raise CLIError(f"{flag} {path}: {parent} is a file, not a folder")
            break
    if suffixes and not str(p).lower().endswith(tuple(s.lower() for s in suffixes)):
        kind = f" for {what}" if what else ""
        raise CLIError(f"{flag} {path}: expected a {' or '.join(suffixes)} file name{kind}, not "
                       f"{p.suffix or 'no suffix'}")
    for source in inputs:
        if _same_file(p, source):
            raise CLIError(f"{flag} {path} is the input file {source}: write the result to another file")
    return p


def check_output_dir(path: str | os.PathLike[str], *, flag: str = "--out",
                     inputs: Iterable[str | os.PathLike[str] | None] = ()) -> Path:
    """Refuse, before any work, an output folder that is an existing file (or lies under one), or that is (or
    lies inside) one of the input folders ``inputs`` (its outputs would be read back as inputs, or written over
    them)."""
    p = Path(path)
    for q in (p, *p.parents):
        if q.exists():
            if not q.is_dir():
                raise CLIError(f"{flag} {path}: {q} is a file, not a folder" if q != p
                               else f"{flag} {path} is a file, not a folder")
            break
    resolved = p.resolve()
    for source in inputs:
        src = Path(source or "")
        if source and src.is_dir() and (resolved == src.resolve() or src.resolve() in resolved.parents):
            raise CLIError(f"{flag} {path} is inside the input folder {source}: choose a folder outside it")
    return p


# ----------------------------------------------------------------------------- pictures of predict commands


def add_picture_flags(p: argparse.ArgumentParser, task: str, results: str) -> None:
    """``--out DIR`` / ``--no-save`` of a predict command: its pictures and ``results`` JSON go to ``--out``, else
    to a new auto-numbered ``runs/<task>/predict`` folder (``predict2``, ...; ``$MOBILENET_RUNS`` moves
    ``runs``); ``--no-save`` prints only."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--out", metavar="DIR", help=f"folder for the pictures and {results} (default: a new "
                   f"runs/{task}/predict, predict2, ... folder)")
    g.add_argument("--no-save", action="store_true", help="print only: write no pictures")


def check_picture_flags(args: argparse.Namespace, inputs: Sequence[str | os.PathLike[str]]) -> None:
    """Before any work: ``--out`` is not a file, and no picture of ``inputs`` would overwrite an input. (A new run
    folder is made only when the pictures are written, so a failed run leaves none.)"""
    from ..predict import picture_targets

    if args.no_save or args.out is None:
        return
    check_output_dir(args.out)
    try:
        picture_targets(inputs, args.out)
    except ValueError as e:
        raise CLIError(str(e)) from None
