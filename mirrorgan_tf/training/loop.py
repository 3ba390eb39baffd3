"""The step loop every training stage runs: resume, step, guard against non-finite values, log,
sample, checkpoint, and record the stage in the run directory.

A stage gives the loop a `TrainState` (what it checkpoints, its step counter, the variables it
trains), a distributed step function and a `Cadence` (how many steps, how often to log, sample
and save). What a step computes is the stage's business (training/damsm.py, stream.py, gan.py).
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Sequence

import tensorflow as tf

from mirrorgan_tf import data, distribute
from mirrorgan_tf.models.backbones import RANDOM, require_pretrained_backbone
from mirrorgan_tf.runs import (DAMAGED, DamagedCheckpointError, RunDir, checkpoint_candidates, checkpoint_dir,
                               restore_newest_intact, set_aside_damaged)
from mirrorgan_tf.training import stop


INPUT_PIPELINE = "input_pipeline"  # the checkpoint's name for the input pipeline's position
RANDOM_STATE = "random_state"  # and for the trained networks' random seed states (dropout)


class NonFiniteLoss(RuntimeError):
    """A loss or a trained weight became inf or NaN; the run stopped without saving it."""


@dataclass
class TrainState:
    """What the loop needs of a stage: the tf.train.Checkpoint of everything it saves, its step
    counter (int64 tf.Variable inside that checkpoint) and the variables it trains (checked for
    finite values before every save). A stage's own state class with these three attributes
    (gan.GanTrainState) serves as well."""

    checkpoint: tf.train.Checkpoint
    step: tf.Variable
    trained_variables: Sequence[tf.Variable]
    random_state: Optional[tf.Module] = None  # `random_states(...)` of the trained networks


@dataclass
class Cadence:
    """How long a stage runs and how often it logs, samples and saves, in steps."""

    total_steps: int
    checkpoint_every: int
    keep_checkpoints: int
    log_every: int
    sample_every: int = 0  # 0: never
    eval_every: int = 0  # 0: never; an evaluation step is also a checkpoint step

    @classmethod
    def for_stage(cls, cfg, total_steps: int, sample_every: int = 0, eval_every: int = 0) -> "Cadence":
        """The config's cadence (train.checkpoint_every, train.keep_checkpoints, train.log_every)
        for a stage of `total_steps` steps."""
        t = cfg.train
        return cls(total_steps, t.checkpoint_every, t.keep_checkpoints, t.log_every, sample_every, eval_every)


def check_backbones(cfg, stages) -> None:
    """Before any stage runs: every frozen ImageNet backbone a stage in `stages` trains on must
    have pretrained weights (damsm with inception_v3; stream with resnet152; gan's frozen STREAM,
    and its DAMSM image encoder when train.damsm_weight > 0). Raises BackboneWeightsError naming the
    key. For gan the value only has to name pretrained weights (not `random`, not empty): the
    weights themselves come from the stream / damsm checkpoint, so the file may have moved."""
    def check(key, value, file_needed):
        if file_needed or str(value).strip() in ("", RANDOM) or str(value).startswith(RANDOM):
            require_pretrained_backbone(key, value)

    if "damsm" in stages and cfg.damsm.backbone == "inception_v3":
        check("damsm.backbone_weights", cfg.damsm.backbone_weights, True)
    if "stream" in stages and cfg.stream.backbone == "resnet152":
        check("stream.backbone_weights", cfg.stream.backbone_weights, True)
    if "gan" in stages:
        if cfg.stream.backbone == "resnet152":
            check("stream.backbone_weights", cfg.stream.backbone_weights, False)
        if cfg.train.damsm_weight > 0 and cfg.damsm.backbone == "inception_v3":
            check("damsm.backbone_weights", cfg.damsm.backbone_weights, False)


def random_states(*models) -> tf.Module:
    """The random seed states of `models`' layers (Keras SeedGenerators: dropout draws from them).
    Keras keeps them out of a model's weights, so a checkpoint of the models alone would resume
    dropout from its initial seed and redraw the masks of the first steps; `run_loop` saves this
    module with the checkpoint. Attribute `states`: the seed variables (int, [2] each), in layer
    order."""
    weights = {id(w) for m in models for w in m.weights}
    module = tf.Module(name=RANDOM_STATE)
    module.states = [v for m in models for v in m.variables if id(v) not in weights]
    return module


def steps_for(cfg, batch_size: int, epochs: int, max_steps: int) -> tuple[int, int]:
    """(total steps, steps per epoch) of a stage: max_steps when set, else epochs over the
    training split at `batch_size` (at least one step per epoch)."""
    examples = data.load_manifest(cfg.data.dir)["splits"]["train"]["examples"]
    per_epoch = max(1, examples // batch_size)
    return (max_steps or epochs * per_epoch), per_epoch


class Progress:
    """One console line per `every` steps (rewritten in place on a terminal): rate, ETA, losses."""

    def __init__(self, stage: str, start: int, total: int, every: int):
        self.stage, self.start, self.total, self.every = stage, start, total, max(1, every)
        self.t0 = time.time()
        self.tty = sys.stdout.isatty()

    def update(self, step: int, losses: dict, final: bool = False) -> None:
        if step % self.every and not final:
            return
        done = step - self.start
        elapsed = time.time() - self.t0
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - step) / rate if rate > 0 else float("nan")
        eta_text = time.strftime("%H:%M:%S", time.gmtime(eta)) if math.isfinite(eta) else "--:--:--"
        text = " ".join(f"{k} {v:.4g}" for k, v in losses.items())
        line = f"{self.stage:>6} {step:>7}/{self.total} {rate:6.2f} it/s ETA {eta_text} | {text}"
        if self.tty:
            sys.stdout.write("\r" + line + ("\n" if final else ""))
        else:
            sys.stdout.write(line + "\n")
        sys.stdout.flush()


@dataclass
class LoopResult:
    start: int  # the step this session resumed from
    steps: int  # the step it ended at
    seconds: float
    last_losses: dict
    checkpoint: tf.train.Checkpoint


class NonFiniteGuard:
    """Remembers, on the device, the first step whose losses were not all finite, so the loop
    need not bring every loss to the host every step (on a GPU each such read stalls the
    pipeline until the step has finished).

    `record(values, step)` runs a small tf.function (traced once per loss structure): if no bad
    step is recorded yet and any loss in `values` ({name: scalar tensor}) is inf or NaN, it
    stores `step` and all the losses of that step. `check(stage, latest)` reads the record (one
    host transfer) and raises NonFiniteLoss naming the stage, the first bad step, the first
    non-finite loss by name and its value, and the latest good checkpoint `latest`. The loop
    checks before every log, sample and save, so nothing is ever written from a bad step."""

    def __init__(self):
        self.first_bad_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="first_non_finite_step")
        self._names: Optional[list] = None
        self._values_at_bad_step: Optional[tf.Variable] = None

    @tf.function
    def _record(self, values, step):
        stacked = tf.stack([tf.cast(tf.reshape(v, []), tf.float64) for v in values])
        first = tf.logical_and(tf.equal(self.first_bad_step, 0),
                               tf.logical_not(tf.reduce_all(tf.math.is_finite(stacked))))
        self.first_bad_step.assign(tf.where(first, step, self.first_bad_step))
        self._values_at_bad_step.assign(tf.where(first, stacked, self._values_at_bad_step))

    def record(self, values: dict, step: int) -> None:
        if self._names is None:
            self._names = list(values)
            self._values_at_bad_step = tf.Variable(tf.zeros([len(self._names)], tf.float64), trainable=False,
                                                   name="losses_at_first_non_finite_step")
        elif list(values) != self._names:
            raise ValueError(f"the step's losses changed from {self._names} to {list(values)}")
        self._record([values[k] for k in self._names], tf.constant(step, tf.int64))

    def check(self, stage: str, latest: Optional[str]) -> None:
        bad_step = int(self.first_bad_step.numpy())
        if not bad_step:
            return
        values = self._values_at_bad_step.numpy()
        name, value = next((n, v) for n, v in zip(self._names, values) if not math.isfinite(v))
        raise NonFiniteLoss(f"stage '{stage}', step {bad_step}: loss '{name}' is {value}; stopped without saving. "
                            f"The latest checkpoint is still {latest or '(none yet)'}")


def _first_non_finite(variables) -> Optional[str]:
    for v in variables:
        if not bool(tf.reduce_all(tf.math.is_finite(v))):
            return v.path if hasattr(v, "path") else v.name
    return None


def run_loop(stage: str, run: RunDir, strategy: tf.distribute.Strategy, state: TrainState,
             step_fn: Callable[[dict], dict], iterator: Iterator, cadence: Cadence, global_batch: int,
             learning_rates: Optional[Callable[[int], dict]] = None,
             on_sample: Optional[Callable[[int, tf.summary.SummaryWriter], None]] = None,
             on_evaluate: Optional[Callable[[int, tf.summary.SummaryWriter, str], object]] = None,
             before_outputs: Optional[Callable[[int], None]] = None) -> LoopResult:
    """Run `step_fn` until `cadence.total_steps`, resuming from the latest checkpoint of `stage`.

    `step_fn(batch)` returns a dict of scalar losses (already reduced across replicas). When
    `iterator` is a tf.Module (data.DistributedInput) its position is saved in every checkpoint
    (as `input_pipeline`) and restored on resume, on any number of replicas; a checkpoint saved
    without it, by another number of workers or with the other data.input_position
    (`DistributedInput.resume_note`), resumes with the input from its start, and says so.
    The resume restores the newest checkpoint that reads (`runs.restore_newest_intact`); damaged
    newer ones are named, moved into <checkpoints>/damaged/ (never deleted, and outside
    keep_checkpoints' rotation) and recorded with the step restarted from in stages.json
    (`fallbacks`). DamagedCheckpointError when none reads, and when a worker of a multi_worker run
    would fall back alone (its steps would part from the others').
    `learning_rates(step)` gives {name: rate} for TensorBoard; `on_sample(step, writer)` runs every
    `cadence.sample_every` steps and at the end; `on_evaluate(step, writer, checkpoint prefix)`
    every `cadence.eval_every` steps and at the end, after that step's checkpoint was saved (an
    evaluation step is a checkpoint step on every worker, whether or not it evaluates: saves are
    collective), not when a signal stops the run there. A non-finite loss stops the run before anything
    is saved, and so do non-finite `state.trained_variables` at a checkpoint (NonFiniteLoss), so
    the last checkpoint always is a good one. The chief records the stage's metrics.json and marks
    it done in stages.json.
    `before_outputs(step)` runs before anything of a step is written or read: a checkpoint (a
    preemption's too), the sample grid's cadence, an evaluation. It runs on every worker at the same
    steps (sample_every's cadence counts whether or not this worker samples), so it may be
    collective; the GAN stage computes its EMA generator's standing statistics there.
    A stop requested by a signal (`stop.stop_on_signals`, checked after every step) saves the step
    just done (unless it was saved already) and raises stop.TrainingStopped; the stage is not marked
    done, and the next run resumes from that checkpoint.
    """
    checkpoint, step_var, total_steps = state.checkpoint, state.step, cadence.total_steps
    folder = checkpoint_dir(run, stage, strategy)
    chief = distribute.is_chief(strategy)
    # The input pipeline's position is saved with the weights (data.DistributedInput), so a resumed
    # stage continues with the batches of the steps after the checkpoint, not the first ones again.
    # The same for the random seed states of dropout and the like. A checkpoint written before they
    # were kept resumes without them (and says so).
    extras = {INPUT_PIPELINE: iterator if isinstance(iterator, tf.Module) else None,
              RANDOM_STATE: getattr(state, "random_state", None)}
    extras = {k: v for k, v in extras.items() if v is not None}
    input_note = None  # why the restored checkpoint's input position cannot continue here, if it cannot

    def restore(prefix):
        nonlocal input_note
        saved = {name.split("/", 1)[0] for name, _ in tf.train.list_variables(prefix)}
        # A position saved by another number of workers (or before the layout was recorded) cannot
        # continue here: everything else restores, the input starts over (another replica count can).
        input_note = (iterator.resume_note(prefix)
                      if INPUT_PIPELINE in saved and INPUT_PIPELINE in extras else None)
        if input_note:
            saved.discard(INPUT_PIPELINE)
        for name, value in extras.items():
            if name in saved:
                setattr(checkpoint, name, value)
            elif hasattr(checkpoint, name):  # attached for a newer, damaged checkpoint
                delattr(checkpoint, name)
        if input_note:  # attached after the restore, the pipeline would still get the saved position: a stand-in takes it
            setattr(checkpoint, INPUT_PIPELINE, tf.Module())
        status = checkpoint.restore(prefix).assert_existing_objects_matched()
        if input_note:
            status.expect_partial()  # the saved input position stays unread on purpose
        return saved

    if checkpoint_candidates(folder, stage):
        # The newest checkpoint that reads; a damaged newer one is named, set aside and recorded.
        latest, saved, damaged = restore_newest_intact(folder, stage, restore)
        if damaged and distribute.worker_count(strategy) > 1:
            # Each worker restores its own copy: one falling back alone would run other steps than the
            # others and their collectives would never meet. Stop, moving nothing.
            raise DamagedCheckpointError(
                f"{stage}: {', '.join(p for p, _ in damaged)} damaged on this worker; its newest intact checkpoint "
                f"is {latest}, but the {distribute.worker_count(strategy)} workers of a multi_worker run must resume "
                f"from the same step: set the damaged files aside on every worker (the same step) and start again")
        print(f"{stage}: resumed from {latest} at step {int(step_var.numpy())}", flush=True)
        if input_note:
            iterator.start_over()  # in case a damaged newer checkpoint was read into it before this one
            print(f"{stage}: the input position in {latest} cannot continue here ({input_note}): the input starts "
                  f"from its beginning, with the batches of the run's first steps in data.seed's order", flush=True)
        for name, value in extras.items():
            if name not in saved:
                if name != INPUT_PIPELINE or not input_note:
                    print(f"{stage}: {latest} holds no {name} (saved before it was kept): it starts afresh", flush=True)
                setattr(checkpoint, name, value)
        if damaged or latest != tf.train.latest_checkpoint(folder):
            moved = set_aside_damaged(folder, damaged, latest)
            if damaged:
                print(f"{stage}: the damaged {', '.join(p for p, _ in damaged)} moved to {folder}/{DAMAGED}/ (kept, "
                      f"not deleted; keep_checkpoints no longer counts them); the stage restarts from step "
                      f"{int(step_var.numpy())}", flush=True)
                if chief:
                    run.record_fallback(stage, {
                        "resumed_from": latest, "step": int(step_var.numpy()),
                        "damaged": [{"checkpoint": p, "reason": r} for p, r in damaged], "moved_to": moved})
    else:
        for name, value in extras.items():
            setattr(checkpoint, name, value)
    manager = tf.train.CheckpointManager(checkpoint, folder, max_to_keep=cadence.keep_checkpoints)
    writer = tf.summary.create_file_writer(run.logs(stage)) if chief else tf.summary.create_noop_writer()
    start = int(step_var.numpy())
    progress = Progress(stage, start, total_steps, cadence.log_every)
    t0 = time.time()
    losses: dict = {}
    step = start
    guard = NonFiniteGuard()

    def save_now(at: int):
        """The checkpoint of step `at` (the step just done), for a stop on preemption."""
        writer.flush()
        guard.check(stage, manager.latest_checkpoint)
        if manager.latest_checkpoint and manager.latest_checkpoint.endswith(f"-{at}"):
            return stage, at, manager.latest_checkpoint
        if before_outputs:
            before_outputs(at)
        broken = _first_non_finite(state.trained_variables)
        if broken:
            raise NonFiniteLoss(f"stage '{stage}', step {at}: weight '{broken}' is not finite; stopped without "
                                f"saving. The latest checkpoint is still {manager.latest_checkpoint or '(none yet)'}")
        return stage, at, manager.save(checkpoint_number=at)

    with writer.as_default():
        while step < total_steps:
            batch = next(iterator)
            values = step_fn(batch)
            step += 1
            # No host transfer here: the guard records a bad step on the device; the losses are
            # read (and the guard checked) only where something is logged or written.
            guard.record(values, step)
            step_var.assign(step)
            final = step == total_steps
            log = step % cadence.log_every == 0 or final
            # Due on every worker alike (before_outputs may be collective); only a sampler samples.
            sample_due = bool(cadence.sample_every and (step % cadence.sample_every == 0 or final))
            sample = bool(on_sample) and sample_due
            # A signal asked to stop (checked here, between steps: the handler only set a flag).
            # The final step goes on to be recorded as done; any other saves now.
            signum = None if final else stop.requested()
            evaluate = bool(cadence.eval_every and signum is None and (step % cadence.eval_every == 0 or final))
            save = step % cadence.checkpoint_every == 0 or final or signum is not None or evaluate
            if log or sample or save:
                guard.check(stage, manager.latest_checkpoint)
            if before_outputs and (save or sample_due):
                before_outputs(step)
            if log:
                losses = {k: float(v) for k, v in values.items()}
                for k, v in losses.items():
                    tf.summary.scalar(f"loss/{k}", v, step=step)
                for k, v in (learning_rates(step) if learning_rates else {}).items():
                    tf.summary.scalar(f"learning_rate/{k}", v, step=step)
                progress.update(step, losses, final=final)
            if sample:
                on_sample(step, writer)
            if save:
                broken = _first_non_finite(state.trained_variables)
                if broken:
                    raise NonFiniteLoss(
                        f"stage '{stage}', step {step}: weight '{broken}' is not finite; stopped without "
                        f"saving. The latest checkpoint is still {manager.latest_checkpoint or '(none yet)'}")
                manager.save(checkpoint_number=step)
            if evaluate and on_evaluate:
                on_evaluate(step, writer, manager.latest_checkpoint)
            if signum is not None:
                writer.flush()
                raise stop.TrainingStopped(signum, stage, step, manager.latest_checkpoint)
            stop.checkpoint_if_preempted(lambda: save_now(step))  # multi-worker: all workers save together
        writer.flush()
    seconds = time.time() - t0
    done = step - start
    if chief:
        run.write_metrics(stage, {
            "steps": step, "steps_this_session": done, "seconds_this_session": round(seconds, 2),
            "images_per_second": round(done * global_batch / seconds, 2) if seconds > 0 and done else None,
            "last_losses": losses, "replicas": strategy.num_replicas_in_sync, "global_batch": global_batch,
        })
        run.mark_done(stage, {"steps": step, "checkpoint": manager.latest_checkpoint})
    return LoopResult(start, step, seconds, losses, checkpoint)
