"""python -m mirrorgan_tf.train [--config configs/shapes.yaml] [--run-dir DIR] [--stage all|data|damsm|stream|gan|export]
                              [--strategy auto|one_device|mirrored|multi_worker] [--set key=value ...]

With no arguments: trains on the built-in shapes dataset from nothing. Prepares the data if it is
missing, pretrains STEM with DAMSM, pretrains STREAM on real images, then trains the GAN, all in
runs/shapes, and exports the EMA generator to saved_models/<run name>/<version> for TensorFlow
Serving. `--stage all` runs every stage that has not finished; a stage that was interrupted
resumes from its last checkpoint. Run the same command again to continue a run.

Exit status: 0 done; 2 bad input (`error: ...`), or the run directory held by another `train`
(train.lock); 3 a non-finite loss or weight (the last good checkpoint kept); 143 / 130 stopped by
SIGTERM / SIGINT after checkpointing the step in flight (128 + the signal, as a shell reports a
process that signal ended): the same command resumes.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time

STAGE_CHOICES = ("all", "data", "damsm", "stream", "gan", "export")


def prepare_data(cfg, chief: bool = True) -> None:
    """Make sure cfg.data.dir holds a prepared dataset: render shapes, or convert data.source."""
    import tensorflow as tf

    from mirrorgan_tf.data import MANIFEST

    if tf.io.gfile.exists(os.path.join(cfg.data.dir, MANIFEST)):
        return
    if not chief:  # another worker prepares it; wait for the manifest
        for _ in range(3600):
            time.sleep(1)
            if tf.io.gfile.exists(os.path.join(cfg.data.dir, MANIFEST)):
                return
        raise TimeoutError(f"{cfg.data.dir}: the chief never finished preparing the dataset")
    from mirrorgan_tf.config import ConfigError
    from pipelines.prepare import prepare

    if cfg.data.dataset != "shapes" and not cfg.data.source:
        raise ConfigError(f"{cfg.data.dir}: no prepared dataset, and data.source is empty; prepare it with "
                          f"python -m pipelines.prepare --dataset {cfg.data.dataset} --source PATH --out {cfg.data.dir}")
    print(f"data: preparing {cfg.data.dataset} into {cfg.data.dir}", flush=True)
    manifest = prepare(cfg.data.dataset, cfg.data.dir, cfg.data.source or None)
    print(f"data: {manifest['splits']['train']['examples']} training images, "
          f"vocabulary {manifest['vocab_size']} words", flush=True)


def stages_to_run(cfg, run, stage: str) -> list[str]:
    """The training stages `--stage stage` will really run in `run`: for `all`, those not finished
    and not taken from damsm.checkpoint / stream.checkpoint; else the one named (none for data and
    export)."""
    if stage != "all":
        return [stage] if stage in ("damsm", "stream", "gan") else []
    reused = {"damsm": cfg.damsm.checkpoint, "stream": cfg.stream.checkpoint, "gan": ""}
    return [s for s in ("damsm", "stream", "gan") if not run.is_done(s) and not reused[s]]


def train(cfg, run_dir: str, stage: str = "all", strategy_kind: str = "auto",
          export_dir: str | None = None, strategy=None) -> dict:
    """Run the requested stages; returns {stage: LoopResult} (and {"export": path}).

    A stage reused from another run (damsm.checkpoint / stream.checkpoint inside a run directory)
    takes that run's `damsm` / `stream` section (`runs.adopt_reused_stages`), so its frozen networks
    are built as they were trained and this run's config.yaml says so.
    Before anything is written or trained, the run directory is checked against what it already
    holds (`runs.check_config`: a run keeps the config it trained with, keys in runs.STEERING_KEYS
    aside), the data (`runs.pin_data`: the run's own vocabulary and data fingerprint), the runs it
    reuses (damsm.checkpoint / stream.checkpoint must share its vocabulary), the dataset's size
    (`data.check_prepared` for the stages that will run) and the backbones
    (`training.loop.check_backbones`).
    Raises RunIntegrityError, DataError, BackboneWeightsError (all ValueError), FileNotFoundError,
    RunLockedError. A shard whose size differs from the manifest's record is refused before
    anything is written; a record that fails to read while a stage trains (a byte changed in place)
    stops the stage with a DataError naming the shard and the byte offset (`data.explain_read_error`).

    `strategy`: a tf.distribute.Strategy already built (the search builds one per process and
    trains every trial under it); None builds one of `strategy_kind`. The Keras mixed-precision
    policy `train.mixed_precision` asks for is process-wide: it is set for these stages only and the
    previous policy restored on return, so whatever runs next in the process starts as before.

    One process trains a run directory at a time: its chief holds `runs.RunLock` (train.lock) from
    before the first check to the end, errors and signals included; a second start raises
    runs.RunLockedError naming the holder. SIGTERM and SIGINT stop training cleanly
    (`training.stop.stop_on_signals`): the step in flight finishes, a checkpoint of it is written
    and training.stop.TrainingStopped (a BaseException, like KeyboardInterrupt) is raised; the
    same call resumes. Under a multi-worker cluster SIGTERM to any worker stops every worker at one
    agreed step, each saving it (`training.stop.stop_on_preemption`); SIGINT is left alone there.
    The previous signal handlers come back on return."""
    import keras

    previous_policy = keras.mixed_precision.global_policy()
    try:
        return _train(cfg, run_dir, stage, strategy_kind, export_dir, strategy)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)


def _train(cfg, run_dir, stage, strategy_kind, export_dir, strategy) -> dict:
    from mirrorgan_tf import runs
    from mirrorgan_tf.distribute import build_strategy, is_chief, is_multi_worker
    from mirrorgan_tf.training import stop

    strategy = strategy or build_strategy(strategy_kind)
    chief = is_chief(strategy)
    with contextlib.ExitStack() as held:
        if chief:  # the other workers write only their own scratch folders
            held.enter_context(runs.RunLock(run_dir))
        if is_multi_worker(strategy):
            held.enter_context(stop.stop_on_preemption(strategy))
        else:
            held.enter_context(stop.stop_on_signals())
        return _train_locked(cfg, run_dir, stage, export_dir, strategy, chief)


def _train_locked(cfg, run_dir, stage, export_dir, strategy, chief) -> dict:
    import keras
    import tensorflow as tf

    from mirrorgan_tf import config as config_lib
    from mirrorgan_tf import data, runs
    from mirrorgan_tf.distribute import describe
    from mirrorgan_tf.training import damsm, gan, loop, stop, stream

    config_lib.check_replica_batches(cfg, strategy.num_replicas_in_sync)
    run = runs.RunDir(run_dir)
    # A reused stage's networks are built as its run trained them, and this run records that.
    cfg, adopted = runs.adopt_reused_stages(cfg)
    for key, mine, theirs in adopted:
        print(f"{key}: {theirs!r} from the reused run ({mine!r} in this config)", flush=True)
    runs.check_config(run, cfg)  # before anything is written
    if runs.deterministic(cfg):
        tf.config.experimental.enable_op_determinism()
    keras.mixed_precision.set_global_policy(config_lib.precision_policy(cfg.train))
    keras.utils.set_random_seed(cfg.train.seed)
    prepare_data(cfg, chief)
    todo = stages_to_run(cfg, run, stage)
    if todo:  # what trains must agree with what trained (exporting reads only the run itself)
        runs.pin_data(run, cfg, write=False)  # checks only: nothing is written before every check passed
        vocab = data.vocabulary_path(cfg.data.dir)  # the run's own, when it has one (checked above)
        for key in ("damsm.checkpoint", "stream.checkpoint"):
            section, name = key.split(".")
            if getattr(getattr(cfg, section), name):
                runs.check_other_run(vocab, getattr(getattr(cfg, section), name), key)
    manifest = data.check_prepared(cfg, stages=todo)
    loop.check_backbones(cfg, todo)
    if "gan" in todo:  # train.eval_* / best_*: before DAMSM and STREAM train, not when the GAN stage starts
        from mirrorgan_tf.training import quality

        quality.check(cfg, manifest)
    if chief:
        if todo:
            runs.pin_data(run, cfg)
        config_lib.save_config(cfg, run.path("config.yaml"))
    trainers = {"damsm": damsm.train, "stream": stream.train, "gan": gan.train}
    wanted = list(trainers) if stage == "all" else ([stage] if stage in trainers else [])
    results = {}
    for name in wanted:
        if stage == "all" and run.is_done(name):
            print(f"{name}: already finished in {run.root}", flush=True)
            continue
        if name == "damsm" and cfg.damsm.checkpoint and stage == "all":
            print(f"damsm: using {cfg.damsm.checkpoint}", flush=True)
            continue
        if name == "stream" and cfg.stream.checkpoint and stage == "all":
            print(f"stream: using {cfg.stream.checkpoint}", flush=True)
            continue
        # What this stage trains on, once, before its first step (train.xla compiles the GAN step only).
        batch = {"damsm": cfg.damsm.batch_size, "stream": cfg.stream.batch_size, "gan": cfg.train.batch_size}[name]
        print(describe(strategy, name, batch, keras.mixed_precision.global_policy().name,
                       cfg.train.xla and name == "gan"), flush=True)
        start = time.time()
        try:
            results[name] = trainers[name](cfg, run, strategy)
        except tf.errors.DataLossError as e:
            # TensorFlow's reader names the offset but not the file; a damaged shard is the
            # user's to replace, so it becomes a DataError naming the shard (checkpoints are
            # read through the same error type, and are left to their own traceback).
            damaged = data.explain_read_error(cfg.data.dir, e)
            if damaged is None:
                raise
            raise damaged from None
        print(f"{name}: done, {results[name].steps} steps, {time.time() - start:.0f} s", flush=True)
        if stop.requested() is not None:  # came during the stage's last step: stop before the next
            raise stop.TrainingStopped(stop.requested(), name, results[name].steps,
                                       runs.find_checkpoint(run.checkpoints(name), name))
    if stage == "export" or (stage == "all" and chief and not run.is_done("export")):
        from mirrorgan_tf.serving.export import export

        target = export(run.root, export_dir or os.path.join("saved_models", os.path.basename(run.root)))
        run.mark_done("export", {"path": target})
        print(f"export: {target}", flush=True)
        results["export"] = target
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m mirrorgan_tf.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/shapes.yaml")
    p.add_argument("--run-dir", help="default: runs/<config name>")
    p.add_argument("--stage", choices=STAGE_CHOICES, default="all")
    p.add_argument("--strategy", choices=("auto", "one_device", "mirrored", "multi_worker"), default="auto")
    p.add_argument("--export-dir", help="SavedModel base folder (default: saved_models/<run name>)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config (bases and --set applied, every key) and exit")
    a = p.parse_args(argv)
    from mirrorgan_tf.config import dump_config, load_config
    from mirrorgan_tf.errors import run_cli

    def body() -> int:
        cfg = load_config(a.config, a.overrides)
        if a.print_config:
            print(dump_config(cfg), end="")
            return 0
        from mirrorgan_tf.training.loop import NonFiniteLoss
        from mirrorgan_tf.training.stop import TrainingStopped

        run_dir = a.run_dir or os.path.join("runs", os.path.splitext(os.path.basename(a.config))[0])
        try:
            train(cfg, run_dir, a.stage, a.strategy, a.export_dir)
        except NonFiniteLoss as e:  # bad numbers, not bad input: its own status
            print(f"error: {e}", file=sys.stderr)
            return 3
        except TrainingStopped as e:  # SIGTERM / SIGINT, checkpoint written: 128 + the signal
            print(f"stopped: {e}", file=sys.stderr)
            return e.exit_code
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
