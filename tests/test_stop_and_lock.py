"""The pieces behind a clean stop and a held run directory, in one process: the signal flag
(training/stop.py) and train.lock (runs.RunLock). The real processes are in test_training.py."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from mirrorgan_tf.runs import LOCK, RunLock, RunLockedError
from mirrorgan_tf.training import stop


def _to_main_thread(sig):
    # Not os.kill: under xdist the process has other threads, a process-wide signal taken by one of
    # them reaches Python's handler later, and two Ctrl-C sent in a row can merge into one call.
    signal.pthread_kill(threading.main_thread().ident, sig)


def test_a_signal_only_sets_the_flag_and_the_previous_handlers_come_back():
    before = {s: signal.getsignal(s) for s in stop.SIGNALS}
    with stop.stop_on_signals() as installed:
        assert installed and stop.requested() is None
        _to_main_thread(signal.SIGINT)  # no KeyboardInterrupt: only the flag
        assert stop.requested() == signal.SIGINT
        _to_main_thread(signal.SIGTERM)  # the first signal is the one reported
        assert stop.requested() == signal.SIGINT
    assert stop.requested() is None
    assert {s: signal.getsignal(s) for s in stop.SIGNALS} == before


def test_a_second_ctrl_c_is_not_swallowed():
    # Python's own Ctrl-C handler beneath ours, whatever an earlier test in this worker left there
    # (the full suite once ran this after something that had replaced it, and no KeyboardInterrupt came).
    outer = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with stop.stop_on_signals():
            _to_main_thread(signal.SIGINT)
            assert stop.requested() == signal.SIGINT
            with pytest.raises(KeyboardInterrupt):
                _to_main_thread(signal.SIGINT)
                time.sleep(5)  # the handler raises at once; reaching the end of this sleep fails the test
    finally:
        signal.signal(signal.SIGINT, outer)


def test_the_exit_status_is_128_plus_the_signal():
    stopped = stop.TrainingStopped(signal.SIGTERM, "gan", 7, "/r/gan/checkpoints/ckpt-7")
    assert stopped.exit_code == 143 and stop.TrainingStopped(signal.SIGINT, "gan", 7, None).exit_code == 130
    assert str(stopped) == ("stage 'gan' stopped by SIGTERM at step 7; checkpoint /r/gan/checkpoints/ckpt-7 "
                            "written. Run the same command to resume")


def test_a_lock_is_refused_while_its_holder_lives_and_released_after(tmp_path):
    with RunLock(str(tmp_path / "run")) as held:
        record = json.loads((tmp_path / "run" / LOCK).read_text())
        assert record["pid"] == os.getpid() and record["host"] and record["started"].endswith("Z")
        with pytest.raises(RunLockedError, match=f"PID {os.getpid()}, started {record['started']}"):
            RunLock(str(tmp_path / "run")).acquire()
        assert held.owned
    assert not (tmp_path / "run" / LOCK).exists()


def test_a_holder_on_another_host_is_refused_and_a_dead_one_here_taken_over(tmp_path, capsys):
    lock = RunLock(str(tmp_path))
    (tmp_path / LOCK).write_text(json.dumps({**lock.record, "host": "elsewhere", "pid": 1}))
    with pytest.raises(RunLockedError, match="host elsewhere, PID 1, .* on another host, which this one cannot check"):
        lock.acquire()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / LOCK).write_text(json.dumps({**lock.record, "pid": dead.pid}))
    with lock:
        assert f"PID {dead.pid}" in capsys.readouterr().out
        assert json.loads((tmp_path / LOCK).read_text())["pid"] == os.getpid()
    assert not (tmp_path / LOCK).exists()


def test_a_lock_taken_over_by_another_process_is_not_removed_by_the_first(tmp_path):
    lock = RunLock(str(tmp_path)).acquire()
    (tmp_path / LOCK).write_text(json.dumps({**lock.record, "pid": lock.record["pid"] + 1}))
    lock.release()
    assert (tmp_path / LOCK).exists()
