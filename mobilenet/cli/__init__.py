"""`mobilenet <command>`: a thin command line over the library.

Each command lives in its own module in this package and defines ``NAME``, ``HELP``,
``add_arguments(parser)`` and ``run(args) -> int``; they are found by listing the package, so a new
command is one new file. Heavy imports belong inside ``run`` so that ``mobilenet --help`` stays fast.

User errors (bad flags, missing or unreadable files, invalid values) print one line and exit 2;
set ``MOBILENET_DEBUG=1`` to see the traceback instead. Flags are checked when they are parsed, before
any work starts (the validators of ``flags`` and the output-path checks of ``paths``, re-exported here). A command that
declares ``add_threads_flag`` gets ``--threads`` (default: the idle cores, see ``mobilenet.machine``) applied
before it runs. SIGTERM ends a command like Ctrl-C: one line, no traceback (``mobilenet train`` saves its
state first; see ``_signals``).
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import signal
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import NoReturn

from ._signals import Terminated, one_line_warnings, signals_as_interrupts, worker_died
from .flags import (
    CLIError,
    add_threads_flag,
    add_workers_flag,
    choices_csv,
    float_in,
    int_at_least,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    probability,
    workers_from,
)
from .paths import add_picture_flags, check_output_dir, check_output_file, check_picture_flags

# The order commands appear in `mobilenet --help`; commands not listed follow alphabetically.
ORDER = ("demo", "models", "profile", "train", "eval", "predict", "convert", "fold", "quantize",
         "export", "bench", "detect")
__all__ = ["CLIError", "Terminated", "add_picture_flags", "add_threads_flag", "add_workers_flag", "build_parser",
           "check_output_dir", "check_output_file", "check_picture_flags", "choices_csv", "float_in", "int_at_least",
           "main", "non_negative_float", "non_negative_int", "positive_float", "positive_int", "probability",
           "workers_from"]


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: the message and where to read more, not the whole usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # a flag error prints one line and raises SystemExit(2), as argparse does
    if not getattr(args, "_run", None):
        commands = ", ".join(a.dest for a in parser._subparsers._group_actions[0]._choices_actions)  # type: ignore
        print(f"mobilenet: choose a command: {commands} (see `mobilenet --help`)", file=sys.stderr)
        return 2
    deferred: list[int] = []
    try:
        with signals_as_interrupts(deferred, then_ignore=argv is None), one_line_warnings(args.command):
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
        if os.environ.get("MOBILENET_DEBUG") or (isinstance(e, RuntimeError) and not worker_died(e)):
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
