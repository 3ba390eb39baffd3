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
import shutil
import signal
import tempfile
import threading
from typing import Iterator, Optional

SIGNALS = (signal.SIGTERM, signal.SIGINT)

_received: Optional[int] = None  # the first signal number received while installed, else None
_preemption = None  # the process's PreemptionCheckpointHandler while `stop_on_preemption` is entered
_save = None  # what the running loop saves a checkpoint with: () -> (stage, step, checkpoint prefix)
_saved: Optional[tuple] = None  # what it returned


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


@contextlib.contextmanager
def stop_on_preemption(strategy) -> Iterator[bool]:
    """Under MultiWorkerMirroredStrategy: SIGTERM to any worker makes every worker save at the same
    step and stop (TrainingStopped), through TensorFlow's
    tf.distribute.experimental.PreemptionCheckpointHandler: the signalled worker picks the step
    (the next one) and tells the others through the cluster's coordination service; each worker
    calls `checkpoint_if_preempted` after every step and saves when it reaches that step.

    One handler for the whole process, whatever the number of stages: a handler, once shut down,
    tells the cluster to stop watching for good, so a second one would never hear of a signal.
    It saves through the running loop's own checkpoint manager (`save` given to
    `checkpoint_if_preempted`); the checkpoint it is built with is an empty one in a scratch folder.
    SIGINT is not handled here (a Ctrl-C reaches one worker's terminal, not a scheduler's job).
    The previous SIGTERM handler comes back on leaving. Yields whether a handler was made (False
    outside the main thread). What TensorFlow 2.21's handler does depends on where it runs (read in
    its source, failure_handling.py; only the plain-CPU case is tested here): it asks the GCE
    metadata server first (5 s timeout); on a GCE CPU VM it does nothing (a signal then ends the
    worker as before); on a GCE GPU VM it watches GCE maintenance events instead of SIGTERM."""
    global _preemption, _save, _saved
    import tensorflow as tf

    if threading.current_thread() is not threading.main_thread():
        yield False
        return

    def save():
        global _saved
        _saved = _save()

    def stop():
        raise TrainingStopped(signal.SIGTERM, *_saved)

    previous = signal.getsignal(signal.SIGTERM)
    scratch = tempfile.mkdtemp(prefix="mirrorgan-preemption-")
    try:
        _preemption = tf.distribute.experimental.PreemptionCheckpointHandler(
            strategy.cluster_resolver, tf.train.Checkpoint(), checkpoint_dir=os.path.join(scratch, "unused"),
            termination_config=tf.distribute.experimental.TerminationConfig(exit_fn=stop, save_fn=save))
        yield True
    finally:
        _preemption, _save, _saved = None, None, None
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
        shutil.rmtree(scratch, ignore_errors=True)


def checkpoint_if_preempted(save) -> None:
    """After every step of a multi-worker loop (on every worker, the same number of calls): when a
    worker was signalled and this is the agreed step, `save()` -> (stage, step, checkpoint prefix)
    writes the checkpoint and TrainingStopped is raised. Does nothing outside `stop_on_preemption`."""
    global _save
    if _preemption is None:
        return
    _save = save
    _preemption.save_checkpoint_if_preempted()
