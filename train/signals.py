"""SIGTERM and SIGINT (preemption, Ctrl-C): exit code 75 (train/cli.py), from the first moment.

Outside the training steps (start-up: imports, config and data checks, seconds to minutes), a
signal ends the process at once with one `stopped:` line: nothing of the run is half-written
then, so there is nothing to save. During the steps, `StopSignals` asks the loop to stop at the
next step boundary, where it saves a checkpoint.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from typing import Any

from train.cli import STOPPED

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _stop_at_once(signum: int, frame) -> None:
    name = signal.Signals(signum).name
    print(
        f"stopped: {name} outside the training steps, with no run state half-written; run the same command again",
        file=sys.stderr,
        flush=True,
    )
    os._exit(STOPPED)


def stop_at_once_on_signals() -> None:
    """Make SIGTERM and SIGINT end the process at once with exit code 75 (until `StopSignals`
    takes them over for the steps). Called first by `python -m train`."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, _stop_at_once)


class StopSignals:
    """SIGTERM and SIGINT ask the run to stop at the next step boundary, where it saves a
    checkpoint; a second signal aborts at once. Signals within a second of the first count as the
    same request: Ctrl-C under torchrun reaches a worker twice (SIGINT from the terminal, SIGTERM
    forwarded by torchrun). Installed only in the main thread (Python's rule), restored on exit."""

    SAME_REQUEST_S = 1.0

    def __init__(self):
        self.received: int | None = None
        self.received_at = 0.0
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self.previous = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if self.received is not None:
            if time.monotonic() - self.received_at < self.SAME_REQUEST_S:
                return
            print(f"{name} again: aborting now, without a checkpoint", file=sys.stderr, flush=True)
            os._exit(128 + signum)
        self.received, self.received_at = signum, time.monotonic()
        print(
            f"{name}: stopping at the end of this step, after a checkpoint; {name} again aborts at once",
            file=sys.stderr,
            flush=True,
        )
