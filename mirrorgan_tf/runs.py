"""Run directories: what training writes and every later command (sampling, evaluation, export,
serving) reads, found from the run directory alone.

A run directory holds:
    config.yaml                 the resolved config of the run
    vocab.txt                   the vocabulary its networks were trained with (pinned at its start)
    data.json                   the fingerprint of the prepared data it trained on
    stages.json                 which stages are finished (steps, seconds)
    <stage>/checkpoints/        tf.train.CheckpointManager of that stage
    <stage>/metrics.json        final losses, steps, time and throughput of the stage; for gan, the
                                evaluations during training (`during_training`, training/quality.py)
    gan/best/                   the checkpoint of the best evaluation so far (train.best_metric) and
                                best.json saying which; never rotated by keep_checkpoints
    logs/<stage>/               TensorBoard events
    samples/                    image grids
    metrics.json                evaluation results
    train.lock                  while `train` runs in it: who (host, PID, start time); see RunLock

`load_run(path)` gives a run's config and vocabulary and builds its trained networks (STEM and the
EMA generator, the DAMSM image encoder), restored from the run's checkpoints. Paths go through
tf.io.gfile, so a run directory may live on gs://.

Every read of a checkpoint (sampling, export, evaluation, the demo, a later stage or run reusing a
pretrained stage, a resume) goes through `restore_newest_intact`: a checkpoint with a missing or
truncated .index / .data file is named and the newest intact one before it used (and named); when
none reads, DamagedCheckpointError names them all. A resume also moves the damaged files into
<stage>/checkpoints/damaged/ and records the fallback in stages.json (`set_aside_damaged`).

A run directory is the single source of truth for what trained in it: its own copy of the
vocabulary (word ids mean what they meant in training, whatever later happens to `data.dir`), the
data's fingerprint (a resumed or later stage refuses data that changed), and its config (a re-run
whose config differs in a key that shapes what was trained is refused, `check_config`).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import re
import socket
import sys
import time
from typing import Callable, Optional

import tensorflow as tf

from mirrorgan_tf import data, distribute, images
from mirrorgan_tf.config import load_config
from mirrorgan_tf.errors import MirrorganError
from mirrorgan_tf.models import networks

# The dtype policy every network built from a finished run computes in (see Run.generator).
INFERENCE_POLICY = "float32"

STAGES = ("damsm", "stream", "gan")
CONFIG = "config.yaml"
# Which GLAM of a gan checkpoint (training/gan.py names both) `Run.generator` restores, by `weights`.
GENERATOR_WEIGHTS = {"ema": "glam_ema", "raw": "glam"}
VOCAB = "vocab.txt"
DATA_RECORD = "data.json"

# Keys that only steer what is left to do (how long, how often to save, log and sample, how the
# step is compiled, where the same data lies): a re-run may change them. Every other key shapes
# what was trained (network sizes, losses, optimizers, data handling, seeds), and a re-run that
# changes one is refused (`check_config`). data.dir may move because the data's fingerprint, not its
# path, is what a run checks (`check_data`).
STEERING_KEYS = (
    "data.dir", "data.source",
    "damsm.epochs", "damsm.max_steps", "stream.epochs", "stream.max_steps", "train.epochs", "train.max_steps",
    "train.checkpoint_every", "train.sample_every", "train.log_every", "train.keep_checkpoints", "train.xla",
    "train.deterministic", "train.eval_every", "train.eval_metrics", "train.eval_captions",
    "train.eval_samples_per_caption", "train.eval_inception", "train.best_metric", "train.best_direction",
)


class RunIntegrityError(MirrorganError, ValueError):
    """A run directory's parts disagree (its vocabulary, its data, its config, another run it
    reuses); the message names the files or keys and both values."""


class RunDir:
    """The files of one run directory (created if missing)."""

    def __init__(self, root: str):
        self.root = root.rstrip("/")
        tf.io.gfile.makedirs(self.root)

    def path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def config_path(self) -> str:
        return self.path(CONFIG)

    def checkpoints(self, stage: str) -> str:
        return self.path(stage, "checkpoints")

    def logs(self, stage: str) -> str:
        return self.path("logs", stage)

    def samples(self) -> str:
        path = self.path("samples")
        tf.io.gfile.makedirs(path)
        return path

    def read_json(self, name: str) -> dict:
        """The JSON object in file `name` of the run, {} when there is none."""
        path = self.path(name)
        if not tf.io.gfile.exists(path):
            return {}
        with tf.io.gfile.GFile(path) as f:
            return json.load(f)

    def write_json(self, name: str, value: dict) -> None:
        images.atomic_write(self.path(name), json.dumps(value, indent=2, sort_keys=True) + "\n")

    def stages(self) -> dict:
        return self.read_json("stages.json")

    def is_done(self, stage: str) -> bool:
        return bool(self.stages().get(stage, {}).get("done"))

    def mark_done(self, stage: str, info: dict) -> None:
        stages = self.stages()
        # What the stage's record already holds (its resumes' fallbacks) stays.
        stages[stage] = {**stages.get(stage, {}), "done": True, **info}
        self.write_json("stages.json", stages)

    def record_fallback(self, stage: str, entry: dict) -> None:
        """Add `entry` (what a resume of `stage` fell back from and to) to the stage's `fallbacks`
        in stages.json, so the run directory says which step the stage restarted from and why."""
        stages = self.stages()
        stages.setdefault(stage, {}).setdefault("fallbacks", []).append(entry)
        self.write_json("stages.json", stages)

    def write_metrics(self, stage: str, metrics: dict) -> None:
        """Set the keys of `metrics` in <stage>/metrics.json; keys it does not name stay (the GAN
        stage's `during_training` evaluations outlive the end-of-stage figures)."""
        name = os.path.join(stage, "metrics.json")
        self.write_json(name, {**self.read_json(name), **metrics})


LOCK = "train.lock"


class RunLockedError(MirrorganError):
    """Another training process holds the run directory; the message names it (host, PID, start
    time) and the lock file."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


class RunLock:
    """The run directory's train.lock: one training process at a time per run directory.

    `acquire()` creates `<run>/train.lock` with O_CREAT | O_EXCL (atomic: of two processes starting
    together exactly one creates it) holding JSON {host, pid, started (UTC, ISO 8601), command}.
    When the file exists already:
      - its holder on this host is alive (its PID exists): RunLockedError naming host, PID, start
        time and command;
      - its holder on this host is gone (PID dead: killed with SIGKILL, the machine rebooted): the
        lock is taken over, and a note printed;
      - its holder is on another host: RunLockedError (this host cannot see that process); if that
        job is really gone, delete the file as the message says.
    `release()` removes the file if it is still ours. Use as a context manager.

    What it cannot catch: O_EXCL is atomic on local disks and on NFS v3 and later, not on some
    FUSE or object-store mounts (gcsfuse, s3fs); a gs:// run directory (through tf.io.gfile) only
    checks then writes, so two starts within the same fraction of a second may both pass. A holder
    on another host that died leaves a lock to delete by hand. A dead holder's PID reused by an
    unrelated process on the same host looks alive (refused: delete the file). Two processes taking
    over the same stale lock at the same instant may both proceed."""

    def __init__(self, root: str):
        self.path = os.path.join(root.rstrip("/"), LOCK)
        self.owned = False
        self.record = {"host": socket.gethostname(), "pid": os.getpid(),
                       "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                       "command": " ".join(sys.argv)[:500]}

    def _create(self) -> bool:
        text = json.dumps(self.record, indent=2) + "\n"
        if "://" in self.path:  # object stores have no exclusive create: check, then write
            if tf.io.gfile.exists(self.path):
                return False
            with tf.io.gfile.GFile(self.path, "w") as f:
                f.write(text)
            return True
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(text)
        return True

    def holder(self) -> Optional[dict]:
        """The lock file's record, {} when it is unreadable (being written), None when absent."""
        try:
            with tf.io.gfile.GFile(self.path) as f:
                return json.loads(f.read() or "{}")
        except tf.errors.NotFoundError:
            return None
        except (ValueError, OSError, tf.errors.OpError):
            return {}

    def acquire(self) -> "RunLock":
        """Take the lock (see the class); returns self. Raises RunLockedError."""
        tf.io.gfile.makedirs(os.path.dirname(self.path))
        for _ in range(3):
            if self._create():
                self.owned = True
                return self
            held = self.holder()
            if held is None:  # released meanwhile
                continue
            if not held:  # created this instant, not yet written
                time.sleep(0.5)
                held = self.holder() or {}
            who = (f"host {held.get('host', '?')}, PID {held.get('pid', '?')}, started {held.get('started', '?')}"
                   f" ({held.get('command', '?')})")
            same_host = held.get("host") == self.record["host"]
            pid = held.get("pid")
            if same_host and isinstance(pid, int) and not _pid_alive(pid):
                print(f"note: {self.path}: its holder ({who}) is gone; taking the run over", flush=True)
                try:
                    tf.io.gfile.remove(self.path)
                except tf.errors.NotFoundError:
                    pass
                continue
            where = "this host" if same_host else "another host, which this one cannot check"
            raise RunLockedError(
                f"{os.path.dirname(self.path)}: another training process holds this run ({who}, on {where}); "
                f"two processes would write the same checkpoints. Wait for it or stop it; if it is really "
                f"gone, delete {self.path}")
        raise RunLockedError(f"{self.path}: could not take the lock (it keeps changing hands)")

    def release(self) -> None:
        if not self.owned:
            return
        self.owned = False
        held = self.holder()
        if held and held.get("pid") == self.record["pid"] and held.get("host") == self.record["host"]:
            try:
                tf.io.gfile.remove(self.path)
            except tf.errors.NotFoundError:
                pass

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def checkpoint_dir(run: RunDir, stage: str, strategy: tf.distribute.Strategy) -> str:
    """Where this worker saves `stage`'s checkpoints. Under MultiWorkerMirroredStrategy every
    worker must save (the save is collective); only the chief writes into the run directory, the
    others into a scratch folder of their own."""
    if distribute.is_chief(strategy):
        return run.checkpoints(stage)
    resolver = strategy.cluster_resolver
    return os.path.join(run.root, f".worker-{resolver.task_type}-{resolver.task_id}", stage)


# What reading a damaged checkpoint raises: a missing or truncated .index or .data file is an OpError
# (NotFoundError, DataLossError: "file is too short to be an sstable"), a .data file shorter than its
# index says is Python's IndexError ("Read less bytes than requested").
READ_ERRORS = (tf.errors.OpError, IndexError)
DAMAGED = "damaged"  # <stage>/checkpoints/damaged/: where a resume moves the damaged checkpoints aside


class DamagedCheckpointError(RunIntegrityError):
    """No checkpoint of a stage could be read: the message names every one tried and why."""


def checkpoint_number(prefix: str) -> int:
    """The N of a CheckpointManager prefix `.../ckpt-N` (the step it was saved at); -1 for others."""
    match = re.search(r"-(\d+)$", prefix)
    return int(match.group(1)) if match else -1


def _state_paths(folder: str) -> list[str]:
    """The prefixes the `checkpoint` state file of `folder` lists (oldest first); [] when it is
    missing or unreadable (a damaged state file must not hide the checkpoints beside it)."""
    try:
        state = tf.train.get_checkpoint_state(folder)
    except Exception:  # noqa: BLE001 - a truncated state file raises a text-format ParseError
        return []
    if state is None:
        return []
    # get_checkpoint_state has already joined relative entries to `folder` (which may itself be
    # relative, as `--run-dir runs/shapes` is): joining again would name `folder` twice.
    return [p for p in list(state.all_model_checkpoint_paths) + [state.model_checkpoint_path] if p]


def checkpoint_candidates(path: str, stage: str) -> list[str]:
    """Every `stage` checkpoint prefix under `path` (a run directory, a stage folder, a checkpoint
    folder, or a prefix itself), newest (highest step) first. In a CheckpointManager's folder they are
    those its `checkpoint` state file lists (the manager's own record: files it never listed are
    leftovers of an interrupted save); when that file is missing or unreadable, those whose .index or
    .data files lie in the folder, so that a lost state file hides none. The first folder holding
    any wins; [] when none does."""
    for candidate in (path, os.path.join(path, "checkpoints"), os.path.join(path, stage, "checkpoints")):
        if not tf.io.gfile.isdir(candidate):
            continue
        found = set(_state_paths(candidate))
        if not found:
            found.update(name[: -len(".index")] for name in tf.io.gfile.glob(os.path.join(candidate, "*.index")))
            found.update(name[: name.rindex(".data-")] for name in tf.io.gfile.glob(os.path.join(candidate, "*.data-*")))
        if found:
            return sorted(found, key=lambda p: (checkpoint_number(p), p), reverse=True)
    if tf.io.gfile.exists(path + ".index") or tf.io.gfile.glob(path + ".data-*"):
        return [path]
    return []


def find_checkpoint(path: str, stage: str) -> Optional[str]:
    """The latest `stage` checkpoint prefix in a run directory, a stage folder, a checkpoint
    folder, or the checkpoint prefix itself; None when there is none. Whether it can be read is
    `restore_newest_intact`'s business."""
    candidates = checkpoint_candidates(path, stage)
    return candidates[0] if candidates else None


def _reason(error: BaseException) -> str:
    text = getattr(error, "message", None) or str(error) or type(error).__name__
    return text.strip().splitlines()[0]


def restore_newest_intact(path: str, stage: str, restore: Callable[[str], object]):
    """Every read of a `stage` checkpoint goes through here (sample, export, evaluate, the demo, a
    later stage reusing this one, a resume): `restore(prefix)` is called on the checkpoints under
    `path` newest first (`checkpoint_candidates`) until one reads. A checkpoint whose read fails
    (a .index or .data file missing or truncated, as an interrupted copy or a full disk leaves it:
    READ_ERRORS) is named on stderr with the reason, then the next newest is tried, and the one used
    is said. Errors other than READ_ERRORS (a checkpoint of other networks: AssertionError) propagate.

    Returns (prefix used, what `restore` returned, [(damaged prefix, reason)] newer than it).
    Raises FileNotFoundError when there is no checkpoint at all, DamagedCheckpointError (exit
    status 2) naming every checkpoint tried and why when none reads."""
    candidates = checkpoint_candidates(path, stage)
    if not candidates:
        raise FileNotFoundError(f"{path}: no {stage} checkpoint found (expected a run directory, "
                                f"a '{stage}' checkpoint folder or a checkpoint prefix)")
    damaged = []
    for prefix in candidates:
        try:
            result = restore(prefix)
        except READ_ERRORS as e:
            damaged.append((prefix, _reason(e)))
            print(f"warning: {stage} checkpoint {prefix} is damaged ({damaged[-1][1]})", file=sys.stderr, flush=True)
            continue
        if damaged:
            print(f"warning: using the newest intact {stage} checkpoint instead: {prefix} "
                  f"(step {checkpoint_number(prefix)})", file=sys.stderr, flush=True)
        return prefix, result, damaged
    tried = "\n  - ".join(f"{p}: {reason}" for p, reason in damaged)
    raise DamagedCheckpointError(
        f"{path}: every {stage} checkpoint is damaged (a .index or .data file missing or truncated); tried:\n"
        f"  - {tried}\nRestore them from a copy, or train the stage again in another --run-dir")


def set_aside_damaged(folder: str, damaged: list, used: str) -> list[str]:
    """After a resume fell back to `used`: move the files of each damaged checkpoint of `folder`
    (a CheckpointManager's) into `folder`/damaged/, and rewrite the `checkpoint` state file to list
    only the checkpoints kept, `used` last. So keep_checkpoints' rotation neither counts nor deletes
    them, the next save at their step cannot mix with their files, and a resume killed before its
    next save restarts from `used` again. Nothing is deleted. Returns the new folders' paths."""
    target = os.path.join(folder, DAMAGED)
    moved = []
    for prefix, _ in damaged:
        if os.path.dirname(prefix.rstrip("/")) != folder.rstrip("/"):
            continue
        files = tf.io.gfile.glob(prefix + ".index") + tf.io.gfile.glob(prefix + ".data-*")
        if not files:
            continue
        tf.io.gfile.makedirs(target)
        for name in files:
            tf.io.gfile.rename(name, os.path.join(target, os.path.basename(name)), overwrite=True)
        moved.append(os.path.join(target, os.path.basename(prefix)))
    state = None
    try:
        state = tf.train.get_checkpoint_state(folder)
    except Exception:  # noqa: BLE001 - an unreadable state file is written anew below
        pass
    stamps = {}
    if state is not None:
        times = list(state.all_model_checkpoint_timestamps)
        for i, p in enumerate(state.all_model_checkpoint_paths):
            full = p if os.path.isabs(p) or "://" in p else os.path.join(folder, p)
            stamps[full] = times[i] if i < len(times) else time.time()
    # Every checkpoint newer than `used` was tried and is damaged: the state keeps the older ones.
    kept = [p for p in stamps if checkpoint_number(p) < checkpoint_number(used)] + [used]
    # Relative to the folder, as CheckpointManager writes them, so the run directory may still move.
    # CheckpointManager has no public way to drop a checkpoint from its record; this (deprecated but
    # public) function is the one writer of the state file it reads.
    tf.compat.v1.train.update_checkpoint_state(
        folder, os.path.basename(used), all_model_checkpoint_paths=[os.path.basename(p) for p in kept],
        all_model_checkpoint_timestamps=[stamps.get(p, time.time()) for p in kept])
    return moved


BEST = "best"  # <run>/gan/best/: the best checkpoint by train.best_metric (training/quality.py)
BEST_RECORD = "best.json"
CHECKPOINT_CHOICES = ("latest", "best")  # what sample, evaluate and export take as --checkpoint


class NoBestCheckpointError(RunIntegrityError):
    """`--checkpoint best` on a run that kept no best checkpoint; names the run and the keys."""


def best_dir(root: str, stage: str = "gan") -> str:
    return os.path.join(root.rstrip("/"), stage, BEST)


def read_best(root: str, stage: str = "gan") -> dict:
    """The record of the run's best checkpoint (step, metric, value, direction, images, checkpoint
    file name), {} when it has none."""
    path = os.path.join(best_dir(root, stage), BEST_RECORD)
    if not tf.io.gfile.exists(path):
        return {}
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def keep_best(root: str, prefix: str, record: dict, stage: str = "gan") -> str:
    """Make the checkpoint `prefix` (a regular one of <stage>/checkpoints/, just saved) the run's
    best: its .index and .data files are copied into <stage>/best/ (each written then renamed), the
    folder's `checkpoint` state file is pointed at it, `record` (plus `checkpoint`, the file name)
    written to best.json, and only then the previous best's files deleted, so that an interruption
    at any point leaves one whole best checkpoint that the state file names. The folder lies outside
    <stage>/checkpoints/, so keep_checkpoints' rotation never sees it, and `find_checkpoint` of the
    stage never returns it. Returns the new best's prefix."""
    folder = best_dir(root, stage)
    tf.io.gfile.makedirs(folder)
    name = os.path.basename(prefix)
    previous = read_best(root, stage).get("checkpoint")
    for source in tf.io.gfile.glob(prefix + ".index") + tf.io.gfile.glob(prefix + ".data-*"):
        target = os.path.join(folder, os.path.basename(source))
        tf.io.gfile.copy(source, target + ".partial", overwrite=True)
        tf.io.gfile.rename(target + ".partial", target, overwrite=True)
    tf.compat.v1.train.update_checkpoint_state(folder, name, all_model_checkpoint_paths=[name])
    images.atomic_write(os.path.join(folder, BEST_RECORD), json.dumps({**record, "checkpoint": name}, indent=2) + "\n")
    if previous and previous != name:
        for old in tf.io.gfile.glob(os.path.join(folder, previous) + ".index") + tf.io.gfile.glob(
                os.path.join(folder, previous) + ".data-*"):
            tf.io.gfile.remove(old)
    return os.path.join(folder, name)


def gan_weights_path(root: str, checkpoint: str = "latest") -> str:
    """Where the generator of the run at `root` is read from: its gan stage (`latest`: the newest
    intact regular checkpoint) or its best checkpoint (`best`, gan/best/). Raises
    NoBestCheckpointError (exit status 2) naming the run when it has no best one, ValueError for
    another `checkpoint`."""
    if checkpoint == "latest":
        return os.path.join(root.rstrip("/"), "gan")
    if checkpoint != "best":
        raise ValueError(f"checkpoint {checkpoint!r}: expected one of {', '.join(CHECKPOINT_CHOICES)}")
    folder = best_dir(root)
    if not checkpoint_candidates(folder, "gan"):
        raise NoBestCheckpointError(
            f"{root}: the run has no best checkpoint ({folder} holds none): one is kept only while the gan stage "
            f"trains with train.best_metric set and train.eval_every > 0 (README, Quality while a run trains); "
            f"use --checkpoint latest")
    return folder


def restore_weights(path: str, stage: str, **objects) -> str:
    """Restore some objects (e.g. stem=...) from the newest intact `stage` checkpoint found under
    `path` (see `find_checkpoint`, `restore_newest_intact`: a damaged newer one is named and passed
    over); returns the checkpoint prefix used. Raises FileNotFoundError when there is no
    checkpoint, DamagedCheckpointError when none reads, AssertionError when one of the objects is
    not in it."""
    def restore(prefix):
        tf.train.Checkpoint(**objects).restore(prefix).expect_partial().assert_existing_objects_matched()

    return restore_newest_intact(path, stage, restore)[0]


def resolve_stage_checkpoint(run: RunDir, stage: str, configured: str) -> str:
    """Where a later stage finds a pretrained stage: the configured path, else this run's.
    Raises FileNotFoundError when it is this run's and the stage has not finished."""
    if configured:
        return configured
    if not run.is_done(stage):
        raise FileNotFoundError(f"{run.root}: stage '{stage}' has not finished; run it first "
                                f"(--stage {stage}) or set {stage}.checkpoint=PATH")
    return run.path(stage)


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with tf.io.gfile.GFile(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def data_fingerprint(data_dir: str) -> dict:
    """What identifies a prepared dataset without reading its shards: the sha256 of manifest.json
    and of its vocabulary file, the vocabulary size, the examples per split and the byte size of
    every shard (so a re-preparation whose manifest came out identical but whose images changed
    is caught too, at the cost of one stat per shard). Raises DataError without a manifest."""
    manifest = data.load_manifest(data_dir)
    shards = {}
    for split, info in sorted((manifest.get("splits") or {}).items()):
        for name in info.get("shards", []):
            path = os.path.join(data_dir, name)
            shards[name] = tf.io.gfile.stat(path).length if tf.io.gfile.exists(path) else None
    return {
        "manifest_sha256": _sha256(os.path.join(data_dir, data.MANIFEST)),
        "vocabulary_sha256": _sha256(data.vocabulary_path(data_dir)),
        "vocab_size": manifest.get("vocab_size"),
        "examples": {k: (v or {}).get("examples") for k, v in sorted((manifest.get("splits") or {}).items())},
        "shard_bytes": shards,
        "data_dir": data_dir,
    }


def vocabulary_difference(words_a: list[str], words_b: list[str]) -> str:
    """How two vocabularies (word lists in id order) differ, for error messages: sizes, how many
    ids name another word, and the first few of them."""
    moved = [(i, a, b) for i, (a, b) in enumerate(zip(words_a, words_b)) if a != b]
    parts = [] if len(words_a) == len(words_b) else [f"{len(words_a)} against {len(words_b)} words"]
    if moved:
        shown = ", ".join(f"id {i}: {a!r} -> {b!r}" for i, a, b in moved[:3])
        parts.append(f"{len(moved)} of {min(len(words_a), len(words_b))} shared ids name another word ({shown})")
    return "; ".join(parts) or "identical"


def _read_words(path: str) -> list[str]:
    from mirrorgan_tf import text

    return text.read_vocabulary(path)


def run_root(path: str) -> Optional[str]:
    """The run directory a path into it lies in (the run itself, a stage folder, a checkpoint folder
    or a checkpoint prefix): the nearest of the path and its parents, up to three levels, holding a
    config.yaml. None when there is none."""
    path = path.rstrip("/")
    for _ in range(4):
        if path and tf.io.gfile.exists(os.path.join(path, CONFIG)):
            return path
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return None


def pinned_vocabulary(root: str) -> str:
    """The vocabulary file of the run directory `root`. Raises RunIntegrityError when the run has
    none (a run trained before runs kept their own copy: see the message for the fix)."""
    path = os.path.join(root, VOCAB)
    if not tf.io.gfile.exists(path):
        raise RunIntegrityError(
            f"{root}: the run has no {VOCAB}, so the word ids its networks were trained with are unknown "
            f"(a run trained before run directories kept their own vocabulary). If its data.dir has not been "
            f"prepared again since it trained, copy that dataset's vocab.txt to {path}; otherwise the run "
            f"cannot be used safely")
    return path


def check_same_vocabulary(mine: str, other: str, what: str) -> None:
    """Raise RunIntegrityError unless the vocabulary files `mine` and `other` hold the same words
    in the same order (content, not size). `what` says what `other` is, for the message."""
    if _sha256(mine) == _sha256(other):
        return
    raise RunIntegrityError(f"{what}: its vocabulary {other} is not this run's {mine} "
                            f"({vocabulary_difference(_read_words(mine), _read_words(other))}); networks "
                            "trained on other word ids would read the captions as other words")


def check_other_run(run_vocab: str, path: str, key: str) -> str:
    """`key` (damsm.checkpoint, stream.checkpoint, --damsm-run) names a checkpoint of another run:
    it must lie in a run directory whose pinned vocabulary equals `run_vocab`. Returns that run's
    root. Raises RunIntegrityError (no run directory around it, other words) or FileNotFoundError."""
    root = run_root(path)
    if root is None:
        if not tf.io.gfile.exists(path) and not tf.io.gfile.exists(path + ".index"):
            raise FileNotFoundError(f"{key}={path}: no such file or folder")
        raise RunIntegrityError(f"{key}={path}: not inside a run directory (no {CONFIG} in it or above it), so "
                                "the vocabulary it was trained with cannot be checked; give a run directory")
    check_same_vocabulary(run_vocab, pinned_vocabulary(root), f"{key}={path}")
    return root


# What the frozen networks of a reused stage are built from besides its own section: STEM's and
# the DAMSM image encoder's widths come from `model`, so they must agree with the reused run's.
_REUSED_MODEL_KEYS = {"damsm": ("embedding_dim", "word_embedding_dim"), "stream": ()}


def adopt_reused_stages(cfg):
    """The config a run trains with when it reuses another run's pretrained stage
    (damsm.checkpoint / stream.checkpoint naming a path inside a run directory): a copy of `cfg`
    whose `damsm` (resp. `stream`) section is the reused run's, `checkpoint` aside. The frozen
    networks are then built as they were trained (an imported torchvision-layout DAMSM, another
    backbone or width), and the run's config.yaml records what really trained them.

    Returns (config, changes), changes a list of (key, this config's value, the reused run's value)
    for the keys that differed, for the caller to print. A path outside any run directory is left
    alone (`check_other_run` refuses it later). Raises RunIntegrityError when the reused run's
    `model.embedding_dim` or `model.word_embedding_dim` differ from this config's (STEM's widths:
    the generator reads its features), naming the key, both values and the run; ConfigError when
    the reused run's config.yaml does not load."""
    cfg = copy.deepcopy(cfg)
    changes = []
    for stage in ("damsm", "stream"):
        section = getattr(cfg, stage)
        root = run_root(section.checkpoint) if section.checkpoint else None
        if root is None:
            continue
        other = load_config(os.path.join(root, CONFIG))
        for key in _REUSED_MODEL_KEYS[stage]:
            mine, theirs = getattr(cfg.model, key), getattr(other.model, key)
            if mine != theirs:
                raise RunIntegrityError(
                    f"{stage}.checkpoint={section.checkpoint}: that run's model.{key} is {theirs}, this "
                    f"config's {mine}; its {'STEM' if stage == 'damsm' else 'STREAM'} cannot feed this "
                    f"generator (set model.{key}={theirs}, or pretrain {stage} in this run)")
        adopted = copy.deepcopy(getattr(other, stage))
        adopted.checkpoint = section.checkpoint
        for field in dataclasses.fields(adopted):
            mine, theirs = getattr(section, field.name), getattr(adopted, field.name)
            if mine != theirs:
                changes.append((f"{stage}.{field.name}", mine, theirs))
        setattr(cfg, stage, adopted)
    return cfg, changes


def _anything_trained(run: "RunDir") -> bool:
    """Whether any stage of the run has started (a stage record or a checkpoint)."""
    if run.stages():
        return True
    return any(find_checkpoint(run.checkpoints(stage), stage) for stage in STAGES)


def _flat(cfg) -> dict:
    out = {}
    for section, values in dataclasses.asdict(cfg).items():
        for key, value in values.items():
            out[f"{section}.{key}"] = value
    return out


def config_differences(recorded, cfg) -> list[tuple[str, object, object]]:
    """(key, recorded value, new value) for every key outside STEERING_KEYS whose value differs."""
    old, new = _flat(recorded), _flat(cfg)
    # The `tune` section steers only a search (python -m mirrorgan_tf.tune), never what a run trains:
    # a search continued with more trials must still resume its interrupted trial's run.
    return [(k, old.get(k), new.get(k)) for k in sorted(set(old) | set(new))
            if k not in STEERING_KEYS and not k.startswith("tune.") and old.get(k) != new.get(k)]


def check_config(run: "RunDir", cfg) -> bool:
    """Before a re-run writes anything: a run that has trained anything keeps the config it trained
    with. Raises RunIntegrityError naming every key (outside STEERING_KEYS) whose value differs, with
    both values; ConfigError when the recorded config.yaml does not load. Returns whether the run has
    trained anything (False: a fresh or never-started run, whose config may be replaced)."""
    if not _anything_trained(run):
        return False
    if not tf.io.gfile.exists(run.config_path()):
        raise RunIntegrityError(f"{run.root}: has checkpoints but no {CONFIG}; cannot tell what trained in it")
    recorded = load_config(run.config_path())
    changed = config_differences(recorded, cfg)
    if changed:
        lines = "\n  - ".join(f"{k}: {old!r} in the run, {new!r} now" for k, old, new in changed)
        raise RunIntegrityError(
            f"{run.config_path()}: the run trained with another configuration; these keys differ:\n  - {lines}\n"
            f"Use the run's values (or another --run-dir; reuse its stages with damsm.checkpoint / "
            f"stream.checkpoint). Keys that may change on a re-run: {', '.join(STEERING_KEYS)}")
    return True


def check_data(run: "RunDir", cfg, training: bool = True) -> None:
    """The prepared data at cfg.data.dir must be what the run trained on: the same vocabulary by
    content (always: data records hold word ids), and for training (`training=True`) the same
    fingerprint (`data_fingerprint`: manifest, vocabulary, split sizes, shard sizes). A run without a
    data record (imported, or never started) is only checked for its vocabulary.
    Raises RunIntegrityError naming both files or values; DataError naming the shard when only
    shard sizes differ and the manifest's own record of them shows a shard damaged."""
    pinned = pinned_vocabulary(run.root)
    check_same_vocabulary(pinned, data.vocabulary_path(cfg.data.dir), f"data.dir={cfg.data.dir}")
    recorded = run.read_json(DATA_RECORD)
    if not training or not recorded:
        return
    now = data_fingerprint(cfg.data.dir)
    changed = [k for k in ("manifest_sha256", "vocabulary_sha256", "vocab_size", "examples", "shard_bytes")
               if recorded.get(k) != now.get(k)]
    if changed == ["shard_bytes"]:
        # Only sizes moved, against a manifest that records them: the data did not change, a
        # shard was damaged (cut short in a copy); say so, with the fix, rather than "changed".
        damaged, _ = data.check_shards(cfg.data.dir)
        if damaged:
            raise data.DataError(f"{os.path.join(cfg.data.dir, data.MANIFEST)}: a shard is damaged:\n  - "
                                 + "\n  - ".join(damaged))
    if changed:
        detail = "; ".join(f"{k}: {recorded.get(k)!r} when the run started, {now.get(k)!r} now"
                           for k in changed if k != "shard_bytes")
        if "shard_bytes" in changed:
            detail += ("; " if detail else "") + "the shards' sizes differ"
        raise RunIntegrityError(
            f"data.dir={cfg.data.dir}: the prepared data changed since this run started training on "
            f"{recorded.get('data_dir')} ({detail}); a resumed or later stage would train on other data "
            f"than the earlier ones. Train in another --run-dir (damsm.checkpoint / stream.checkpoint "
            f"reuse this run's pretrained stages), or restore the data")


def pin_data(run: "RunDir", cfg, write: bool = True) -> None:
    """Give the run its own copy of cfg.data.dir's vocabulary (vocab.txt) and record the data's
    fingerprint (data.json), both written then renamed, the first time it trains on data. A run that
    has trained already is checked instead (`check_data`; a run imported without data gets its
    fingerprint now, once its vocabulary matched). `write=False` only checks (RunIntegrityError)."""
    if _anything_trained(run):
        check_data(run, cfg, training=True)
        if run.read_json(DATA_RECORD):
            return
    elif not write:
        data.vocabulary_path(cfg.data.dir)  # DataError when there is no prepared dataset
    if not write:
        return
    vocab = os.path.join(run.root, VOCAB)
    if not _anything_trained(run):
        with tf.io.gfile.GFile(data.vocabulary_path(cfg.data.dir), "rb") as f:
            images.atomic_write(vocab, f.read())
    run.write_json(DATA_RECORD, data_fingerprint(cfg.data.dir))


def deterministic(cfg) -> bool:
    """train.deterministic: TensorFlow's op determinism on (`tf.config.experimental.
    enable_op_determinism`), so that a resumed run ends bit-identical to one never stopped."""
    return cfg.train.deterministic


def for_restore(cfg):
    """A copy of `cfg` whose frozen ImageNet backbones are built with random weights: what to
    build a network with when a checkpoint then restores every weight, backbone included. Needs no
    ImageNet file, no download and no Keras cache, so a run directory works alone (moved, or on
    another machine). The small CNN backbone (`cnn`) is untouched: it has no pretrained weights."""
    from mirrorgan_tf.models import backbones

    cfg = copy.deepcopy(cfg)
    for section in (cfg.damsm, cfg.stream):
        if section.backbone != "cnn":
            section.backbone_weights = backbones.restore_only(section.backbone_weights)
    return cfg


def vocabulary_path(cfg) -> str:
    """The vocabulary file of the prepared data at cfg.data.dir (a run's own is `Run.vocab_path`)."""
    return data.vocabulary_path(cfg.data.dir)


def restore_damsm(cfg, vocab_size: int, path: str):
    """(STEM, DAMSM image encoder) of configuration `cfg`, restored from the damsm checkpoint found
    under `path` (run directory, stage folder, checkpoint folder or prefix; the newest intact one,
    see `restore_weights`). The encoder's backbone
    is built untrained (`for_restore`): the checkpoint holds its weights."""
    cfg = for_restore(cfg)
    stem = networks.build_stem(cfg, vocab_size)
    encoder = networks.build_damsm_image_encoder(cfg)
    restore_weights(path, "damsm", stem=stem, image_encoder=encoder)
    return stem, encoder


class Run:
    """A trained (or training) run directory, read only: its config, vocabulary and networks.

    Build with `load_run`. Attributes: `dir` (RunDir), `cfg` (the resolved Config),
    `vocab_path` (str: the run's own vocab.txt), `vocab_size` (int, its number of words),
    `restored_from` (the gan checkpoint prefix `generator` restored, None before)."""

    def __init__(self, run_dir: RunDir, cfg):
        self.dir, self.cfg = run_dir, cfg
        self.restored_from: Optional[str] = None  # the gan checkpoint prefix `generator` last restored
        self.vocab_path = pinned_vocabulary(run_dir.root)
        self.vocab_size = len(_read_words(self.vocab_path))
        if cfg.data.vocab_size and cfg.data.vocab_size != self.vocab_size:
            raise RunIntegrityError(f"{run_dir.config_path()}: data.vocab_size={cfg.data.vocab_size}, but the run's "
                                    f"{self.vocab_path} has {self.vocab_size} words")

    @property
    def root(self) -> str:
        return self.dir.root

    def check_data(self) -> None:
        """The data at the run's data.dir holds word ids of the run's vocabulary (RunIntegrityError
        otherwise): for whatever reads captions from the data (evaluation)."""
        check_data(self.dir, self.cfg, training=False)

    def gan_checkpoint(self, checkpoint: str = "latest") -> Optional[str]:
        """The latest (or, with checkpoint="best", the best) gan checkpoint prefix of the run,
        None before the first one (NoBestCheckpointError when it has no best one)."""
        return find_checkpoint(gan_weights_path(self.root, checkpoint), "gan")

    def generator(self, finished: bool = True, checkpoint: str = "latest", weights: str = "ema"):
        """(STEM, EMA GLAM) restored: STEM from the run's DAMSM stage (or the configured
        damsm.checkpoint, whose run must share this run's vocabulary), GLAM from the EMA weights
        (with weights="raw": the generator's own weights, which the EMA averages; for diagnosis,
        e.g. how much variety the averaging costs; ValueError for any other `weights`) of the
        newest intact gan checkpoint (a damaged newer one is named, `restore_newest_intact`), or
        with checkpoint="best" of the run's best checkpoint (gan/best/, `keep_best`;
        NoBestCheckpointError naming the run when it has none).
        With finished=True the gan stage must be done (FileNotFoundError otherwise); finished=False
        also takes a run that is still training.

        Both are built to compute in float32 (INFERENCE_POLICY), whatever policy the process has
        and whatever `train.mixed_precision` the run trained with: the weights are float32 in
        either case, so the trained generator's images are one answer per run, whether the export,
        sampling or evaluation builds it in the training process or in a later one."""
        cfg = self.cfg
        if weights not in GENERATOR_WEIGHTS:
            raise ValueError(f"generator weights must be 'ema' or 'raw', got {weights!r}")
        source = gan_weights_path(self.root, checkpoint)  # before building anything: no best, no work
        with networks.dtype_policy(INFERENCE_POLICY):
            stem = networks.build_stem(cfg, self.vocab_size, batch=1)
            glam = networks.build_glam(cfg, batch=1)
        if finished and not self.dir.is_done("gan"):
            raise FileNotFoundError(f"{self.root}: the gan stage has not finished; nothing to export")
        restore_weights(self.damsm_checkpoint(), "damsm", stem=stem)
        self.restored_from = restore_weights(source, "gan", **{GENERATOR_WEIGHTS[weights]: glam})
        return stem, glam

    def damsm_checkpoint(self) -> str:
        """Where this run's DAMSM is: the configured damsm.checkpoint (checked to share this run's
        vocabulary), else the run's damsm stage."""
        if self.cfg.damsm.checkpoint:
            check_other_run(self.vocab_path, self.cfg.damsm.checkpoint, "damsm.checkpoint")
            return self.cfg.damsm.checkpoint
        return self.dir.path("damsm")

    def damsm(self):
        """(STEM, DAMSM image encoder) of the run, restored (FileNotFoundError without a checkpoint)."""
        return restore_damsm(self.cfg, self.vocab_size, self.damsm_checkpoint())

    def stream_checkpoint(self) -> str:
        """Where this run's STREAM is: the configured stream.checkpoint (checked to share this
        run's vocabulary), else the run's stream stage (FileNotFoundError before it finished)."""
        if self.cfg.stream.checkpoint:
            check_other_run(self.vocab_path, self.cfg.stream.checkpoint, "stream.checkpoint")
        return resolve_stage_checkpoint(self.dir, "stream", self.cfg.stream.checkpoint)

    def stream(self):
        """(STREAM encoder, decoder, the checkpoint prefix restored) of the run: built as the run
        configures them (backbone untrained, `for_restore`: the checkpoint holds its weights) and
        restored from `stream_checkpoint` (the newest intact checkpoint, see `restore_weights`).
        The encoder takes images float [B, s, s, 3] in [-1, 1]; the decoder gives logits over the
        run's vocabulary (`models.stream`)."""
        encoder, decoder = networks.build_stream(for_restore(self.cfg), self.vocab_size)
        prefix = restore_weights(self.stream_checkpoint(), "stream", encoder=encoder, decoder=decoder)
        return encoder, decoder, prefix


def load_run(path: str) -> Run:
    """The run directory at `path`. Raises FileNotFoundError when it has no config.yaml,
    ConfigError when that config does not load, RunIntegrityError when it has no vocab.txt (see
    `pinned_vocabulary`) or its config's data.vocab_size disagrees with it."""
    config_path = os.path.join(path.rstrip("/"), CONFIG)
    if not tf.io.gfile.exists(config_path):
        raise FileNotFoundError(f"{config_path}: not a run directory (no {CONFIG})")
    return Run(RunDir(path), load_config(config_path))
