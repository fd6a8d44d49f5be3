"""`mobilenet <command>`: a thin command line over the library.

Each command lives in its own module in this package and defines ``NAME``, ``HELP``,
``add_arguments(parser)`` and ``run(args) -> int``; they are found by listing the package, so a new
command is one new file. Heavy imports belong inside ``run`` so that ``mobilenet --help`` stays fast.

User errors (bad flags, missing or unreadable files, invalid values) print one line and exit 2;
set ``MOBILENET_DEBUG=1`` to see the traceback instead. Flags are checked when they are parsed, before
any work starts: the ``type=`` validators below (``int_at_least``, ``float_in``, ``threads_flag`` ...)
refuse non-finite, negative or zero values with the valid range, and ``check_output_file`` /
``check_output_dir`` refuse an output path that cannot be written, before minutes of work.
A command that declares ``add_threads_flag`` gets ``--threads`` (default: the idle cores, see
``mobilenet.machine``) applied before it runs. SIGTERM ends a command like Ctrl-C: one line, no
traceback (``mobilenet train`` saves its state first).
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import pkgutil
import signal
import sys
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn

# The order commands appear in `mobilenet --help`; commands not listed follow alphabetically.
ORDER = ("demo", "models", "profile", "train", "eval", "predict", "convert", "fold", "quantize",
         "export", "bench", "detect")


class CLIError(Exception):
    """A user-facing failure: printed as one line, exit code 2."""


class Terminated(KeyboardInterrupt):
    """SIGTERM received by a command (handled like Ctrl-C: unwinds, then one line and exit 143)."""


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: the message and where to read more, not the whole usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


# ----------------------------------------------------------------------------- flag validators (argparse types)


def _number(text: str, kind: type) -> Any:
    try:
        return kind(text)
    except ValueError:
        noun = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"expected {noun}, got {text!r}") from None


def int_at_least(minimum: int) -> Callable[[str], int]:
    """argparse ``type=``: an integer >= ``minimum`` (the message names the valid range)."""

    def parse(text: str) -> int:
        value = _number(text, int)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text!r}")
        return value

    parse.__name__ = f"integer >= {minimum}"
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


def add_threads_flag(p: argparse.ArgumentParser) -> None:
    """``--threads N``: PyTorch CPU threads; the default counts only idle cores, so it does not collapse on a
    busy machine (see ``mobilenet.machine``). ``main`` applies it before the command runs."""
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


# ----------------------------------------------------------------------------- early output-path checks


def check_output_file(path: str | os.PathLike[str], *, flag: str = "-o",
                      suffixes: Sequence[str] | None = None, what: str = "") -> Path:
    """Refuse, before any work, an output file that cannot be what its name says or cannot be written: an
    existing folder, a path under a file, a suffix other than ``suffixes`` (e.g. ``.onnx`` for ONNX)."""
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
    return p


def check_output_dir(path: str | os.PathLike[str], *, flag: str = "--out") -> Path:
    """Refuse, before any work, an output folder that is an existing file (or lies under one)."""
    p = Path(path)
    for q in (p, *p.parents):
        if q.exists():
            if not q.is_dir():
                raise CLIError(f"{flag} {path}: {q} is a file, not a folder" if q != p
                               else f"{flag} {path} is an existing file, not a folder")
            break
    return p


# ----------------------------------------------------------------------------- the program


def _command_modules() -> list[ModuleType]:
    names = [m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")]
    mods = [importlib.import_module(f"{__name__}.{n}") for n in names]
    mods = [m for m in mods if hasattr(m, "NAME") and hasattr(m, "run")]
    rank = {n: i for i, n in enumerate(ORDER)}
    return sorted(mods, key=lambda m: (rank.get(m.NAME, len(ORDER)), m.NAME))


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = Parser(
        prog="mobilenet", description="MobileNet v1 for PyTorch: build, profile, train, import, deploy, detect.")
    parser.add_argument("--version", action="version", version=f"mobilenet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in _command_modules():
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=getattr(mod, "DESCRIPTION", mod.HELP),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run, _parser=p)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    from ..checkpoint import WeightsFileError
    from ..runtimes.predictor import RuntimeMissingError  # a runtime or exporter that is not installed

    # OSError covers missing files and folders, permissions, a file where a folder is expected, a full disk:
    # all of them are about the user's files, and its message names the path. FloatingPointError: a training
    # run that diverged (non-finite loss), stopped with its last good state kept.
    return (CLIError, ValueError, OSError, WeightsFileError, RuntimeMissingError, FloatingPointError)


def _worker_died(error: BaseException) -> bool:
    # DataLoader raises RuntimeError in the main process when a worker process is killed (SIGTERM/SIGKILL to
    # the process group, the kernel's OOM killer): a fact about this machine, not a bug to show a traceback for.
    return isinstance(error, RuntimeError) and "DataLoader worker" in str(error)


def _in_finaliser(frame: Any) -> bool:
    while frame is not None:
        if frame.f_code.co_name == "__del__":
            return True
        frame = frame.f_back
    return False


@contextmanager
def _signals_as_interrupts(deferred: list[int], *, then_ignore: bool = False):
    """Ctrl-C raises ``KeyboardInterrupt`` and SIGTERM ``Terminated`` in this (the main) process; both end the
    command in one line. Three cases would print tracebacks instead, and are handled here:

    * forked children that inherit the handler (DataLoader workers) ignore both: the main process shuts them
      down (workers also ignore SIGTERM themselves, ``mobilenet.data.loader.ignore_sigterm``, so a SIGTERM to
      the whole process group stops the command once);
    * workers that did die with the group are not reported while this process unwinds: PyTorch's SIGCHLD
      handler is dropped first;
    * a signal landing inside a finaliser (a second Ctrl-C while a DataLoader's ``__del__`` joins its workers)
      cannot raise there (Python prints "Exception ignored" and a traceback): it is recorded in ``deferred``
      and acted on when the command returns;
    * ``then_ignore`` (the real program, about to exit): signals after the command are ignored, not raised in
      the interpreter's exit handlers.
    """
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pid = os.getpid()

    def handler(signum: int, frame: Any) -> None:
        if os.getpid() != pid:
            return
        if signum == signal.SIGTERM:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        if _in_finaliser(frame):
            deferred.append(signum)
            return
        raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, signal.SIG_IGN if then_ignore else h)


@contextmanager
def _one_line_warnings(command: str):
    """Library warnings (files skipped, a stale lock taken over ...) print as one line each, like errors,
    instead of Python's two lines with a source location."""
    import warnings

    previous = warnings.formatwarning
    warnings.formatwarning = lambda message, *args, **kwargs: f"mobilenet {command}: warning: {message}\n"
    try:
        yield
    finally:
        warnings.formatwarning = previous


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # a flag error prints one line and raises SystemExit(2), as argparse does
    if not getattr(args, "_run", None):
        commands = ", ".join(a.dest for a in parser._subparsers._group_actions[0]._choices_actions)  # type: ignore
        print(f"mobilenet: choose a command: {commands} (see `mobilenet --help`)", file=sys.stderr)
        return 2
    deferred: list[int] = []
    try:
        with _signals_as_interrupts(deferred, then_ignore=argv is None), _one_line_warnings(args.command):
            if getattr(args, "_apply_threads", False):
                from ..machine import set_threads

                set_threads(args.threads)
            code = int(args._run(args) or 0)
            if deferred:  # a signal that arrived inside a finaliser: act on it now
                raise Terminated if deferred[0] == signal.SIGTERM else KeyboardInterrupt
            return code
    except Terminated:
        print(f"mobilenet {args.command}: terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print(f"mobilenet {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and closed early: not an error
        sys.stderr.close()
        return 0
    except (*_user_errors(), RuntimeError) as e:
        if os.environ.get("MOBILENET_DEBUG") or (isinstance(e, RuntimeError) and not _worker_died(e)):
            raise
        print(f"mobilenet {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    if isinstance(error, OSError) and error.filename is not None and str(error.filename) not in text:
        text += f": {error.filename}"
    return text


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
