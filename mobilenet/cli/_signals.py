"""Signals and warnings while a command runs: Ctrl-C and SIGTERM end it in one line, library warnings print as
one line each (``mobilenet.cli.main`` wraps every command in both)."""

from __future__ import annotations

import os
import signal
from contextlib import contextmanager
from typing import Any


class Terminated(KeyboardInterrupt):
    """SIGTERM received by a command (handled like Ctrl-C: unwinds, then one line and exit 143)."""


def worker_died(error: BaseException) -> bool:
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
def signals_as_interrupts(deferred: list[int], *, then_ignore: bool = False):
    """Ctrl-C raises ``KeyboardInterrupt`` and SIGTERM ``Terminated`` in this (the main) process; both end the
    command in one line. Three cases would print tracebacks instead, and are handled here:

    * forked children that inherit the handler (DataLoader workers) ignore both: the main process shuts them
      down (workers also ignore SIGTERM themselves, ``mobilenet.data.loader.init_worker``, so a SIGTERM to
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
def one_line_warnings(command: str):
    """Library warnings (files skipped, a stale lock taken over ...) print as one line each, like errors,
    instead of Python's two lines with a source location."""
    import warnings

    previous = warnings.formatwarning
    warnings.formatwarning = lambda message, *args, **kwargs: f"mobilenet {command}: warning: {message}\n"
    try:
        yield
    finally:
        warnings.formatwarning = previous
