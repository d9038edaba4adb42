"""A reader that leaves early (`otaship device list | head`): the command ends quietly.

Whatever a command prints, its reader may close the pipe before the end. The
write, or Python's own flush of stdout at exit, then fails with EPIPE, and
Python prints a traceback or "Exception ignored … BrokenPipeError" for what
is no error of the user's. Each command line's `main` runs through
`quiet_on_closed_pipe`, so that this is handled once for all its commands.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

# As click's own handling of EPIPE inside a command ends: an error, said by nobody.
EXIT_CLOSED_PIPE = 1


def quiet_on_closed_pipe(run: Callable[[], int]) -> int:
    """`run()`'s exit code, or EXIT_CLOSED_PIPE, without a word, when stdout's reader left."""
    try:
        code = run()
        # Flushed here, not at exit, where a failure could no longer be caught.
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_CLOSED_PIPE
    return code


def _silence_stdout() -> None:
    # Python flushes stdout once more at exit: what is left in its buffer then
    # goes to /dev/null instead of failing again.
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return  # not a real file (a test's capture): nothing is flushed at exit
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)
