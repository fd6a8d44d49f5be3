"""`mobilenet <command>`: a thin command line over the library.

Each command lives in its own module in this package and defines ``NAME``, ``HELP``,
``add_arguments(parser)`` and ``run(args) -> int``; they are found by listing the package, so a new
command is one new file. Heavy imports belong inside ``run`` so that ``mobilenet --help`` stays fast.

User errors (bad flags, missing or unreadable files, invalid values) print one line and exit 2;
set ``MOBILENET_DEBUG=1`` to see the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
from collections.abc import Sequence
from types import ModuleType

# The order commands appear in `mobilenet --help`; commands not listed follow alphabetically.
ORDER = ("demo", "models", "profile", "train", "eval", "predict", "convert", "fold", "quantize",
         "export", "bench", "detect")


class CLIError(Exception):
    """A user-facing failure: printed as one line, exit code 2."""


def _command_modules() -> list[ModuleType]:
    names = [m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")]
    mods = [importlib.import_module(f"{__name__}.{n}") for n in names]
    mods = [m for m in mods if hasattr(m, "NAME") and hasattr(m, "run")]
    rank = {n: i for i, n in enumerate(ORDER)}
    return sorted(mods, key=lambda m: (rank.get(m.NAME, len(ORDER)), m.NAME))


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
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

    return (CLIError, ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
            PermissionError, WeightsFileError)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("mobilenet: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and closed early: not an error
        sys.stderr.close()
        return 0
    except _user_errors() as e:
        if os.environ.get("MOBILENET_DEBUG"):
            raise
        print(f"mobilenet {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
