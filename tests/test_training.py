"""python -m mirrorgan_tf.train on the smoke config: end to end, resume after SIGKILL and after
SIGTERM, one process per run directory, NaN guard."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from mirrorgan_tf.config import load_config
from mirrorgan_tf.runs import RunDir
from tests.conftest import CONFIGS, REPO, smoke_train


def _smoke(data_dir, *overrides):
    return load_config(CONFIGS / "shapes_smoke.yaml", [f"data.dir={data_dir}", *overrides])


def _cli(run_dir, data_dir, *args, **kwargs):
    return smoke_train(run_dir, data_dir, *args, **kwargs)


def test_end_to_end_writes_checkpoints_samples_and_events(trained_run):
    run_dir, stdout = trained_run
    stages = json.loads((run_dir / "stages.json").read_text())
    assert set(stages) == {"damsm", "stream", "gan", "export"} and all(s["done"] for s in stages.values())
    assert stages["export"]["path"] == f"{run_dir}-export/1"
    assert (Path(stages["export"]["path"]) / "saved_model.pb").exists()
    cfg = load_config(run_dir / "config.yaml")  # the resolved config, loadable as a config file
    assert cfg.train.max_steps == 4
    for stage, steps in (("damsm", 6), ("stream", 6), ("gan", 4)):
        assert tf.train.latest_checkpoint(str(run_dir / stage / "checkpoints")).endswith(f"ckpt-{steps}")
        metrics = json.loads((run_dir / stage / "metrics.json").read_text())
        assert metrics["steps"] == steps and metrics["last_losses"]
        assert all(np.isfinite(v) for v in metrics["last_losses"].values())
        assert list((run_dir / "logs" / stage).glob("events.out.tfevents.*"))
    gan_losses = json.loads((run_dir / "gan" / "metrics.json").read_text())["last_losses"]
    assert {"d", "g", "g_adv", "kl", "stream"} <= set(gan_losses)
    samples = sorted((run_dir / "samples").glob("gan-???????.png"))
    assert [p.name for p in samples] == ["gan-0000002.png", "gan-0000004.png"]
    variety = sorted(p.name for p in (run_dir / "samples").glob("gan-*-variety.png"))
    assert variety == ["gan-0000002-variety.png", "gan-0000004-variety.png"]
    grid = tf.io.decode_png(samples[-1].read_bytes()).numpy()
    assert grid.shape == (4 * 64, 8 * 64, 3)  # 3 stages + the real images, 8 captions, at 64 px
    # TensorBoard got the losses and the images.
    tags = set()
    for event_file in (run_dir / "logs" / "gan").glob("events.out.tfevents.*"):
        for e in tf.compat.v1.train.summary_iterator(str(event_file)):
            tags |= {v.tag for v in e.summary.value}
    assert {"loss/d", "loss/g", "loss/stream", "learning_rate/g", "samples/grid", "samples/stage1",
            "attention/words"} <= tags
    assert "gan       4/4" in stdout.replace("\r", "\n")
    # Each stage says once, at its start, what it trains on (the default strategy on a CPU machine).
    lines = stdout.replace("\r", "\n").splitlines()
    for stage, batch in (("damsm", 8), ("stream", 8), ("gan", 4)):
        start = lines.index(f"{stage}: strategy OneDeviceStrategy, 1 replica")
        assert lines[start + 1:start + 4] == [
            f"{stage}:   devices (1): /job:localhost/replica:0/task:0/device:CPU:0",
            f"{stage}:   batch: global {batch}, per replica {batch}",
            f"{stage}:   precision: compute float32 (policy float32); XLA off"]
        assert sum(line.startswith(f"{stage}: strategy") for line in lines) == 1
        assert start < next(i for i, line in enumerate(lines) if line.lstrip().startswith(f"{stage} "))


def test_running_again_skips_finished_stages(trained_run, prepared_shapes):
    run_dir, _ = trained_run
    r = _cli(run_dir, prepared_shapes)
    assert r.returncode == 0
    for stage in ("damsm", "stream", "gan"):
        assert f"{stage}: already finished" in r.stdout


def test_a_later_run_reuses_pretrained_stages(trained_run, prepared_shapes, tmp_path):
    run_dir, _ = trained_run
    # This config's own damsm / stream sections differ from the reused run's (8-wide CNNs, a
    # 32-unit decoder): the frozen networks must be built as that run trained them, or their
    # checkpoints do not restore; the DAMSM term makes the GAN stage build the image encoder too.
    r = _cli(tmp_path / "reuse", prepared_shapes, "--set", f"damsm.checkpoint={run_dir}/damsm",
             "--set", f"stream.checkpoint={run_dir}/stream", "--set", "train.max_steps=1",
             "--set", "damsm.cnn_width=16", "--set", "stream.cnn_width=16", "--set", "stream.hidden_dim=48",
             "--set", "train.damsm_weight=1")
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"STEM from {run_dir}/damsm/checkpoints/ckpt-6" in r.stdout
    assert "damsm.cnn_width: 8 from the reused run (16 in this config)" in r.stdout
    assert "stream.hidden_dim: 32 from the reused run (48 in this config)" in r.stdout
    assert not (tmp_path / "reuse" / "damsm").exists()
    recorded = load_config(tmp_path / "reuse" / "config.yaml")
    assert (recorded.damsm.cnn_width, recorded.stream.cnn_width, recorded.stream.hidden_dim) == (8, 8, 32)
    assert recorded.damsm.checkpoint == f"{run_dir}/damsm"
    r = _cli(tmp_path / "reuse", prepared_shapes, "--set", f"damsm.checkpoint={run_dir}/damsm",  # same command: resumes
             "--set", f"stream.checkpoint={run_dir}/stream", "--set", "train.max_steps=1",
             "--set", "damsm.cnn_width=16", "--set", "stream.cnn_width=16", "--set", "stream.hidden_dim=48",
             "--set", "train.damsm_weight=1")
    assert r.returncode == 0 and "gan: already finished" in r.stdout, r.stderr[-3000:]
    # STEM's widths feed the generator: a reused DAMSM of another width is refused, naming both.
    r = _cli(tmp_path / "wider", prepared_shapes, "--set", f"damsm.checkpoint={run_dir}/damsm",
             "--set", "model.embedding_dim=24")
    assert r.returncode == 2 and "that run's model.embedding_dim is 16, this config's 24" in r.stderr
    assert not (tmp_path / "wider" / "config.yaml").exists()
    r = _cli(tmp_path / "empty", prepared_shapes, "--stage", "gan")
    assert r.returncode == 2 and "stage 'damsm' has not finished" in r.stderr


def test_sigkill_mid_stage_resumes_from_the_last_checkpoint(prepared_shapes, tmp_path):
    run_dir = tmp_path / "killed"
    cmd = [sys.executable, "-m", "mirrorgan_tf.train", "--config", str(CONFIGS / "shapes_smoke.yaml"),
           "--run-dir", str(run_dir), "--stage", "damsm", "--set", f"data.dir={prepared_shapes}",
           "--set", "damsm.max_steps=100000", "--set", "train.checkpoint_every=3"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt_dir = run_dir / "damsm" / "checkpoints"
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            latest = tf.train.latest_checkpoint(str(ckpt_dir)) if ckpt_dir.exists() else None
            if latest and int(latest.rsplit("-", 1)[1]) >= 6:
                break
            time.sleep(0.2)
        else:
            pytest.fail("no checkpoint at step 6 within the time limit")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    latest = tf.train.latest_checkpoint(str(ckpt_dir))
    saved = int(latest.rsplit("-", 1)[1])
    assert not json.loads((run_dir / "stages.json").read_text() if (run_dir / "stages.json").exists() else "{}")

    from mirrorgan_tf.distribute import build_strategy
    from mirrorgan_tf.training import damsm

    cfg = _smoke(prepared_shapes, f"damsm.max_steps={saved}")
    result = damsm.train(cfg, RunDir(str(run_dir)), build_strategy("one_device"))
    assert (result.start, result.steps) == (saved, saved)  # nothing to do but restore
    resumed = result.checkpoint
    from mirrorgan_tf.models.networks import build_damsm_image_encoder, build_stem

    fresh_stem = build_stem(cfg, json.loads((prepared_shapes / "manifest.json").read_text())["vocab_size"])
    fresh_encoder = build_damsm_image_encoder(cfg)
    tf.train.Checkpoint(stem=fresh_stem, image_encoder=fresh_encoder).restore(latest).expect_partial()
    for a, b in zip(resumed.stem.weights + resumed.image_encoder.weights, fresh_stem.weights + fresh_encoder.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert int(resumed.step.numpy()) == saved

    # SIGKILL left its lock behind; its PID is dead on this host, so the resume takes the run over.
    assert json.loads((run_dir / "train.lock").read_text())["pid"] == proc.pid
    r = _cli(run_dir, prepared_shapes, "--stage", "damsm", "--set", f"damsm.max_steps={saved + 2}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"(host {socket.gethostname()}, PID {proc.pid}, started" in r.stdout and "taking the run over" in r.stdout
    assert f"resumed from {latest} at step {saved}" in r.stdout
    assert not (run_dir / "train.lock").exists()
    metrics = json.loads((run_dir / "damsm" / "metrics.json").read_text())
    assert (metrics["steps"], metrics["steps_this_session"]) == (saved + 2, 2)


def _wait_for_checkpoint(ckpt_dir, step, proc, log):
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        latest = tf.train.latest_checkpoint(str(ckpt_dir)) if ckpt_dir.exists() else None
        if latest and int(latest.rsplit("-", 1)[1]) >= step:
            return int(latest.rsplit("-", 1)[1])
        time.sleep(0.05)
    pytest.fail(f"no checkpoint {step} in {ckpt_dir} within the time limit: {Path(log).read_text()[-2000:]}")


def test_sigterm_saves_the_step_in_flight_and_a_second_train_on_the_run_is_refused(prepared_shapes, tmp_path):
    """A real SIGTERM to a real training process: it finishes its step, checkpoints it (off the
    checkpoint_every cadence), releases the run and exits 143; meanwhile a second `train` on the
    same run directory is refused, naming the first."""
    run_dir, log = tmp_path / "stopped", tmp_path / "first.log"
    ckpt_dir = run_dir / "damsm" / "checkpoints"
    with open(log, "w") as out:
        cmd = [sys.executable, "-m", "mirrorgan_tf.train", "--config", str(CONFIGS / "shapes_smoke.yaml"),
               "--run-dir", str(run_dir), "--stage", "damsm", "--set", f"data.dir={prepared_shapes}",
               "--set", "damsm.max_steps=100000", "--set", "train.checkpoint_every=1000", "--set", "train.log_every=1"]
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        try:
            deadline = time.time() + 300
            while time.time() < deadline and proc.poll() is None and " 3/100000 " not in log.read_text():
                time.sleep(0.05)
            assert proc.poll() is None, log.read_text()[-3000:]
            second = _cli(run_dir, prepared_shapes, "--stage", "damsm", "--set", "damsm.max_steps=2")
            assert second.returncode == 2, second.stderr[-3000:]
            assert (f"another training process holds this run (host {socket.gethostname()}, PID {proc.pid}, "
                    in second.stderr), second.stderr
            assert proc.poll() is None  # the refused start touched nothing of the first's
            os.kill(proc.pid, signal.SIGTERM)
            assert proc.wait(timeout=120) == 143, log.read_text()[-3000:]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = log.read_text()
    latest = tf.train.latest_checkpoint(str(ckpt_dir))
    saved = int(latest.rsplit("-", 1)[1])
    assert saved >= 3 and f" {saved}/100000 " in text  # logged, then saved: the step in flight
    assert f"stopped: stage 'damsm' stopped by SIGTERM at step {saved}; checkpoint {latest} written" in text
    assert not (run_dir / "train.lock").exists()
    assert not (run_dir / "stages.json").exists() or "damsm" not in json.loads((run_dir / "stages.json").read_text())
    assert "input_pipeline" in {n.split("/", 1)[0] for n, _ in tf.train.list_variables(latest)}
    r = _cli(run_dir, prepared_shapes, "--stage", "damsm", "--set", f"damsm.max_steps={saved + 1}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resumed from {latest} at step {saved}" in r.stdout


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(prepared_shapes, tmp_path):
    run_dir = tmp_path / "nan"
    r = _cli(run_dir, prepared_shapes, "--stage", "damsm", "--set", "damsm.max_steps=2")
    assert r.returncode == 0, r.stderr[-3000:]
    good = tf.train.latest_checkpoint(str(run_dir / "damsm" / "checkpoints"))
    assert good.endswith("ckpt-2")
    # An infinite learning rate sends the weights to inf/nan on the first step after resuming. A run
    # keeps the config it trained with (a re-run may not change the learning rate), so the run's
    # record is edited by hand, as someone would who really means to go on at another rate.
    from mirrorgan_tf.config import save_config

    recorded = load_config(run_dir / "config.yaml")
    recorded.damsm.learning_rate = float("inf")
    save_config(recorded, str(run_dir / "config.yaml"))
    r = _cli(run_dir, prepared_shapes, "--stage", "damsm", "--set", "damsm.max_steps=8",
             "--set", "damsm.learning_rate=.inf", "--set", "train.checkpoint_every=1")
    assert r.returncode == 3
    assert "stage 'damsm', step 3: weight" in r.stderr or "stage 'damsm', step 4: loss" in r.stderr
    assert "not finite" in r.stderr or "is nan" in r.stderr
    assert f"The latest checkpoint is still {good}" in r.stderr
    assert tf.train.latest_checkpoint(str(run_dir / "damsm" / "checkpoints")) == good
    reader = tf.train.load_checkpoint(good)
    for name, _ in tf.train.list_variables(good):
        if name.startswith("input_pipeline/"):  # the iterator's state: a variant, not a number
            continue
        value = reader.get_tensor(name)
        if isinstance(value, np.ndarray) and value.dtype.kind == "f":
            assert np.isfinite(value).all(), name


def test_mixed_precision_and_xla_on_one_device_and_one_export_whoever_writes_it(trained_run, prepared_shapes, tmp_path):
    run_dir, _ = trained_run
    r = _cli(tmp_path / "fast", prepared_shapes, "--stage", "gan", "--strategy", "one_device",
             "--set", f"damsm.checkpoint={run_dir}", "--set", f"stream.checkpoint={run_dir}/stream",
             "--set", "train.mixed_precision=true", "--set", "train.xla=true", "--set", "train.max_steps=2")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "gan:   precision: compute float16 (policy mixed_float16); XLA on" in r.stdout.splitlines()
    metrics = json.loads((tmp_path / "fast" / "gan" / "metrics.json").read_text())
    assert metrics["steps"] == 2 and all(np.isfinite(v) for v in metrics["last_losses"].values())

    # One export per run, whichever process writes it: the training's export stage (under the
    # run's mixed_float16 policy) and `python -m mirrorgan_tf.export` (a float32 process) both
    # write a float32 graph, so the same captions and noise give the same pixels.
    import keras

    from mirrorgan_tf import train
    from mirrorgan_tf.serving.export import export

    fast = tmp_path / "fast"
    written = train.train(load_config(fast / "config.yaml"), str(fast), "export", "one_device",
                          str(tmp_path / "by-train"))["export"]
    assert keras.mixed_precision.global_policy().name == "float32"  # train puts the process's back
    by_cli = export(str(fast), str(tmp_path / "by-export"))
    assert keras.mixed_precision.global_policy().name == "float32"
    captions = tf.constant(["a small red circle on the left", "a huge blue block at the top"])
    noise = tf.random.stateless_normal([2, load_config(fast / "config.yaml").model.z_dim], seed=[3, 4])
    pixels = [tf.saved_model.load(path).signatures["generate"](captions=captions, noise=noise)["images"].numpy()
              for path in (written, by_cli)]
    assert pixels[0].shape == (2, 64, 64, 3)
    np.testing.assert_array_equal(pixels[0], pixels[1])


# A training driver with TensorFlow's op determinism on (train.deterministic), on one device.
DETERMINISTIC = """
import sys
from mirrorgan_tf import train
from mirrorgan_tf.config import load_config
from mirrorgan_tf.training.stop import TrainingStopped
config, run_dir, export_dir, *overrides = sys.argv[1:]
cfg = load_config(config, overrides + ["train.deterministic=true"])
try:  # the stages that train, one after another in one process as "all" runs them; no export (not compared)
    for stage in ("damsm", "stream", "gan"):
        train.train(cfg, run_dir, stage, "one_device", export_dir)
except TrainingStopped as e:  # as python -m mirrorgan_tf.train reports it
    print(f"stopped: {e}", file=sys.stderr)
    sys.exit(e.exit_code)
"""


def _deterministic_run(run_dir, data_dir, **popen):
    cmd = [sys.executable, "-c", DETERMINISTIC, str(CONFIGS / "shapes_smoke.yaml"), str(run_dir), f"{run_dir}-export",
           f"data.dir={data_dir}", "damsm.max_steps=16", "stream.max_steps=6", "train.max_steps=12",
           "train.checkpoint_every=4", "train.sample_every=0",
           "model.stages=2"]  # the smoke config's three stages cost a third more tracing, per process, for nothing here
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.Popen(cmd, cwd=REPO, env=env, text=True, **popen)


def _kill_after_checkpoint(run_dir, data_dir, stage, step, log, sig=signal.SIGKILL):
    """Start the deterministic run, send it `sig` once `stage` saved checkpoint `step`; the stage must
    not have finished by then (else the kill came too late to test a resume). SIGTERM must end it
    with status 143 and a checkpoint of the step in flight (off the checkpoint_every cadence, unless
    the signal came just as a step was due to be saved anyway)."""
    ckpt_dir = run_dir / stage / "checkpoints"
    with open(log, "w") as out:
        proc = _deterministic_run(run_dir, data_dir, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 300
            while time.time() < deadline and proc.poll() is None:
                latest = tf.train.latest_checkpoint(str(ckpt_dir)) if ckpt_dir.exists() else None
                if latest and int(latest.rsplit("-", 1)[1]) >= step:
                    break
                time.sleep(0.05)
            else:
                pytest.fail(f"no {stage} checkpoint {step} within the time limit: {Path(log).read_text()[-2000:]}")
            os.kill(proc.pid, sig)
        finally:
            status = proc.wait()
    if sig == signal.SIGTERM:
        assert status == 143, Path(log).read_text()[-3000:]
        assert f"stopped: stage '{stage}' stopped by SIGTERM" in Path(log).read_text()
    stages = json.loads((run_dir / "stages.json").read_text()) if (run_dir / "stages.json").exists() else {}
    assert stage not in stages, f"{stage} finished before the kill"


def _final_weights(run_dir, stage):
    prefix = tf.train.latest_checkpoint(str(run_dir / stage / "checkpoints"))
    reader = tf.train.load_checkpoint(prefix)
    names = [n for n, _ in tf.train.list_variables(prefix)
             if not n.startswith(("input_pipeline", "save_counter", "_CHECKPOINTABLE_OBJECT_GRAPH"))]
    return os.path.basename(prefix), {n: reader.get_tensor(n) for n in names}


def test_a_run_killed_twice_and_resumed_ends_bit_identical_to_one_never_stopped(prepared_shapes, tmp_path):
    """Input pipeline positions are in the checkpoints: stopped by SIGTERM in DAMSM (which saves the
    step in flight) and killed by SIGKILL in the GAN stage, resumed each time, the run ends with
    exactly the weights of an uninterrupted one."""
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    with open(tmp_path / "straight.log", "w") as out:
        assert _deterministic_run(straight, prepared_shapes, stdout=out, stderr=subprocess.STDOUT).wait() == 0, \
            (tmp_path / "straight.log").read_text()[-3000:]
    _kill_after_checkpoint(killed, prepared_shapes, "damsm", 4, tmp_path / "kill1.log", signal.SIGTERM)
    _kill_after_checkpoint(killed, prepared_shapes, "gan", 4, tmp_path / "kill2.log")
    assert "damsm: resumed from" in (tmp_path / "kill2.log").read_text()
    with open(tmp_path / "last.log", "w") as out:
        assert _deterministic_run(killed, prepared_shapes, stdout=out, stderr=subprocess.STDOUT).wait() == 0
    assert "gan: resumed from" in (tmp_path / "last.log").read_text()
    for stage, steps in (("damsm", 16), ("stream", 6), ("gan", 12)):
        name_a, a = _final_weights(straight, stage)
        name_b, b = _final_weights(killed, stage)
        assert name_a == name_b == f"ckpt-{steps}"
        assert a.keys() == b.keys() and len(a) > 10
        different = [n for n in a if not np.array_equal(a[n], b[n])]
        assert not different, f"{stage}: {len(different)} tensors differ, e.g. {different[:3]}"


def test_a_test_split_too_small_for_the_sampler_is_refused_before_any_stage(tmp_path):
    from pipelines.prepare import prepare

    data_dir = tmp_path / "tiny_test"
    prepare("shapes", str(data_dir), num_train=16, num_test=5, workers=1)
    start = time.time()
    r = _cli(tmp_path / "run", data_dir)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "the test split has 5 images, fewer than the 8 fixed sample captions" in r.stderr
    assert "mirrorgan_tf.data.SAMPLE_CAPTIONS" in r.stderr
    assert "damsm: done" not in r.stdout and not (tmp_path / "run" / "damsm").exists()
    assert not (tmp_path / "run" / "config.yaml").exists() and not (tmp_path / "run" / "vocab.txt").exists()
    assert time.time() - start < 120


@pytest.mark.parametrize("stage, overrides, key", [
    ("damsm", ["damsm.backbone=inception_v3", "damsm.image_size=299", "damsm.backbone_weights=random"],
     "damsm.backbone_weights=random"),
    ("stream", ["stream.backbone=resnet152", "stream.image_size=224", "stream.backbone_weights="],
     "stream.backbone_weights is empty"),
    # The GAN stage's frozen STREAM is restored from its checkpoint, but must have been pretrained.
    ("gan", ["stream.backbone=resnet152", "stream.image_size=224", "stream.backbone_weights=random"],
     "stream.backbone_weights=random"),
])
def test_a_stage_refuses_a_random_frozen_imagenet_backbone(prepared_shapes, tmp_path, stage, overrides, key):
    args = ["--stage", stage] + [x for o in overrides for x in ("--set", o)]
    r = _cli(tmp_path / "run", prepared_shapes, *args)
    assert r.returncode == 2, r.stderr[-2000:]
    assert key in r.stderr and "ImageNet backbone would" in r.stderr
    assert not (tmp_path / "run" / stage).exists()
