"""One convention for every command: a failure is one line on stderr and an exit code that says
what kind it was.

    0    done
    1    a sweep with a failed point (its summary names it), or an unexpected crash (traceback)
    2    bad input: a config key or value, a missing or damaged file, no network; nothing was changed
    3    the run diverged (non-finite loss or gradients); nothing non-finite was saved
    75   stopped by SIGTERM or SIGINT at a step boundary after saving a checkpoint: run the same
         command again to resume (EX_TEMPFAIL, "try again later": a scheduler can requeue on it)
"""

from __future__ import annotations

import errno
import logging
import os
import sys
from collections.abc import Callable
from typing import NoReturn

from train.files import DISK_FULL

BAD_INPUT = 2
DIVERGED = 3
STOPPED = 75


class RunFailure(Exception):
    """A run that started but cannot go on, for a reason its message gives in one line."""

    exit_code = 1
    prefix = "error"


class Diverged(RunFailure):
    exit_code = DIVERGED


class RunStopped(RunFailure):
    exit_code = STOPPED
    prefix = "stopped"


def exit_code(main: Callable[[], int | None]) -> int:
    """main()'s exit code. A RunFailure, ValueError or OSError (bad input, missing files, no
    network) is printed as one `error: ...` (or `stopped: ...`) line on stderr instead and gives
    its code. AURORA_BENCH_TRACEBACK=1 lets the traceback through."""
    try:
        return main() or 0
    except (RunFailure, ValueError, OSError) as err:
        if os.environ.get("AURORA_BENCH_TRACEBACK"):
            raise
        prefix, code = (err.prefix, err.exit_code) if isinstance(err, RunFailure) else ("error", BAD_INPUT)
        print(f"{prefix}: {message(err)}", file=sys.stderr)
        return code


def message(err: BaseException) -> str:
    """What went wrong, in words: a full disk by its name (ENOSPC) and the file being written."""
    if isinstance(err, OSError) and err.errno in DISK_FULL:
        where = f" while writing {err.filename}" if err.filename else ""
        name = errno.errorcode[err.errno]
        return f"no space left on the device ({name}){where}; free space and run the same command again"
    return str(err)


def leave_stopped() -> NoReturn:
    """Exit 75 at once after a stop, skipping interpreter teardown. Everything is saved by then,
    and teardown takes seconds on a loaded machine: a second Ctrl-C in that window was measured
    to kill the process with the default action (-2), losing the code a requeue script reads."""
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(STOPPED)
