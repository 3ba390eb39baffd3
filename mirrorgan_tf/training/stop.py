"""Stopping a training run cleanly on SIGTERM or SIGINT.

SIGTERM is what a cloud preemption, `docker stop`, Kubernetes and SLURM's time limit send before
they kill a process; SIGINT is Ctrl-C. `stop_on_signals()` installs handlers that only record the
signal (no TensorFlow work in a handler: it runs between two Python bytecodes, possibly in the
middle of anything). The step loop (`loop.run_loop`) asks `requested()` after every step: when a
signal came it finishes nothing more, writes a checkpoint of the step just done (input position
included) and raises `TrainingStopped`. The same command then resumes from that checkpoint.

A second signal of the same kind while the first is being honoured (a slow save, an impatient
Ctrl-C) is not swallowed: the previous handler's behaviour runs (Python's KeyboardInterrupt for
SIGINT, death for SIGTERM), so a user can always force a stop.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Iterator, Optional

SIGNALS = (signal.SIGTERM, signal.SIGINT)

_received: Optional[int] = None  # the first signal number received while installed, else None


class TrainingStopped(BaseException):
    """Training stopped on a signal after writing a checkpoint; the same command resumes it.
    A BaseException, as KeyboardInterrupt is: a request to stop, not an error, so it passes
    through `except Exception` (Keras Tuner would record it as a failed trial and go on).
    Attributes: `signum` (int), `stage` (str), `step` (int, the step saved), `checkpoint` (str,
    the checkpoint prefix written, or the latest one when there was no step to save).
    `exit_code` is the status a command exits with: 128 + the signal number (143 for SIGTERM,
    130 for SIGINT), what a shell reports for a process that signal ended."""

    def __init__(self, signum: int, stage: str, step: int, checkpoint: Optional[str]):
        self.signum, self.stage, self.step, self.checkpoint = signum, stage, step, checkpoint
        self.exit_code = 128 + signum
        super().__init__(f"stage '{stage}' stopped by {signal.Signals(signum).name} at step {step}; "
                         f"checkpoint {checkpoint or '(none yet)'} written. Run the same command to resume")


def requested() -> Optional[int]:
    """The signal number received since `stop_on_signals` was entered, else None."""
    return _received


@contextlib.contextmanager
def stop_on_signals(signals=SIGNALS) -> Iterator[bool]:
    """While inside: SIGTERM and SIGINT only set the flag `requested()` returns. On leaving, the
    previous handlers come back and the flag is cleared. Yields whether the handlers are installed:
    Python delivers signals to the main thread only, so from any other thread (or where a signal
    cannot be caught) this installs nothing and the process keeps its handlers."""
    global _received
    if threading.current_thread() is not threading.main_thread():
        yield False
        return
    previous = {}

    def handler(signum, frame):
        global _received
        if _received is None:
            _received = signum
            return
        if signum != _received:  # e.g. the scheduler's SIGTERM after a Ctrl-C: one stop is under way
            return
        # The same signal again: do what would have happened without us.
        before = previous.get(signum, signal.SIG_DFL)
        signal.signal(signum, before)
        if callable(before):
            before(signum, frame)
        elif before == signal.SIG_DFL:
            os.kill(os.getpid(), signum)

    outer = _received  # nested (a search trains many runs in one process): keep the outer flag
    try:
        for s in signals:
            previous[s] = signal.signal(s, handler)
        yield True
    finally:
        for s, before in previous.items():
            signal.signal(s, before if before is not None else signal.SIG_DFL)
        _received = outer
