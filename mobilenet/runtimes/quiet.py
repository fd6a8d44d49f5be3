"""Hold back what native libraries print on the process's stderr while a file is converted or loaded.

TF Lite's converter, the LiteRT interpreter and ExecuTorch write informational lines straight to file
descriptor 2 from C++ ("Created TensorFlow Lite XNNPACK delegate", cpuinfo probes), past Python's
``sys.stderr``. Inside :func:`quiet_stderr` they go to a temporary file, which is replayed if the block
fails, so an error keeps its context and a success prints nothing but our own line.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Redirect fd 2 to a temporary file for the block; replay it on stderr if the block raises."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # captured by pytest or replaced: nothing native to hide
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), fd)
        try:
            yield
        except BaseException:
            sys.stderr.flush()
            os.dup2(saved, fd)
            sink.seek(0)
            text = sink.read().decode(errors="replace")
            if text:
                sys.stderr.write(text)
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, fd)
            os.close(saved)
