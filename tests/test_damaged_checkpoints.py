"""A damaged checkpoint (a .data file deleted or truncated, as an interrupted copy or a full disk
leaves it) is named, and every reader falls back to the newest intact one before it and says so:
sampling, export, evaluation, a resume (which also sets the damaged files aside, keeps them, and
records the step it restarted from). With none intact, the command exits 2 naming each one tried."""

import json
import os
import shutil
from pathlib import Path

import pytest

from mirrorgan_tf import runs
from tests.conftest import smoke_train


def _copy(trained_run, tmp_path) -> Path:
    """The session's trained smoke run copied (its export left out), to damage the copy."""
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run[0], run_dir)
    return run_dir


def _data_file(prefix: Path) -> Path:
    (data,) = prefix.parent.glob(prefix.name + ".data-*")
    return data


def _delete_data(prefix: Path) -> None:
    _data_file(prefix).unlink()


def _truncate_data(prefix: Path) -> None:
    data = _data_file(prefix)
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])


# --- the mechanism, on a checkpoint of one variable (no trained run needed) ----------------------

@pytest.fixture
def three_checkpoints(tmp_path):
    import tensorflow as tf

    v = tf.Variable(0.0)
    folder = tmp_path / "checkpoints"
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(v=v), str(folder), max_to_keep=3)
    for step in (2, 4, 6):
        v.assign(float(step))
        manager.save(checkpoint_number=step)
    return folder, v


def _restorer(v):
    import tensorflow as tf

    def restore(prefix):
        tf.train.Checkpoint(v=v).restore(prefix).assert_existing_objects_matched()
        return float(v.numpy())

    return restore


def test_the_newest_intact_checkpoint_is_restored_and_the_damaged_ones_named(three_checkpoints, capsys):
    folder, v = three_checkpoints
    _truncate_data(folder / "ckpt-6")
    (folder / "ckpt-4.index").unlink()
    prefix, value, damaged = runs.restore_newest_intact(str(folder), "gan", _restorer(v))
    assert (prefix, value) == (str(folder / "ckpt-2"), 2.0)
    assert [p for p, _ in damaged] == [str(folder / "ckpt-6"), str(folder / "ckpt-4")]
    err = capsys.readouterr().err
    assert f"gan checkpoint {folder}/ckpt-6 is damaged (Read less bytes than requested)" in err
    assert f"gan checkpoint {folder}/ckpt-4 is damaged" in err
    assert f"using the newest intact gan checkpoint instead: {folder}/ckpt-2 (step 2)" in err


def test_a_run_given_by_a_relative_path_finds_its_checkpoints(three_checkpoints, monkeypatch):
    """As `--run-dir runs/shapes` names it: the state file's entries are relative to its folder, and
    the folder relative to the working directory (each joined once)."""
    folder, v = three_checkpoints
    monkeypatch.chdir(folder.parent.parent)
    relative = os.path.join(folder.parent.name, folder.name)
    assert runs.checkpoint_candidates(relative, "gan") == [os.path.join(relative, f"ckpt-{n}") for n in (6, 4, 2)]
    assert runs.restore_newest_intact(relative, "gan", _restorer(v))[:2] == (os.path.join(relative, "ckpt-6"), 6.0)


def test_a_lost_state_file_hides_no_checkpoint(three_checkpoints):
    folder, v = three_checkpoints
    (folder / "checkpoint").unlink()
    assert runs.find_checkpoint(str(folder), "gan") == str(folder / "ckpt-6")
    (folder / "checkpoint").write_text("model_checkpoint_path: \"ckpt-6")  # cut mid-write
    assert runs.restore_newest_intact(str(folder), "gan", _restorer(v))[:2] == (str(folder / "ckpt-6"), 6.0)


def test_every_checkpoint_damaged_names_them_all(three_checkpoints):
    folder, v = three_checkpoints
    for step in (2, 4, 6):
        _delete_data(folder / f"ckpt-{step}")
    with pytest.raises(runs.DamagedCheckpointError) as e:
        runs.restore_newest_intact(str(folder), "gan", _restorer(v))
    assert e.value.exit_code == 2
    for step in (2, 4, 6):
        assert f"{folder}/ckpt-{step}: " in str(e.value)


def test_setting_aside_keeps_the_files_and_the_rotation_forgets_them(three_checkpoints):
    import tensorflow as tf

    folder, v = three_checkpoints
    _truncate_data(folder / "ckpt-6")
    prefix, _, damaged = runs.restore_newest_intact(str(folder), "gan", _restorer(v))
    moved = runs.set_aside_damaged(str(folder), damaged, prefix)
    assert moved == [str(folder / "damaged" / "ckpt-6")]
    assert (folder / "damaged" / "ckpt-6.index").exists() and len(list((folder / "damaged").iterdir())) == 2
    state = tf.train.get_checkpoint_state(str(folder))
    assert state.model_checkpoint_path == str(folder / "ckpt-4")
    assert list(state.all_model_checkpoint_paths) == [str(folder / "ckpt-2"), str(folder / "ckpt-4")]
    assert 'model_checkpoint_path: "ckpt-4"' in (folder / "checkpoint").read_text()  # relative: the run may move
    # The resumed stage saves again with max_to_keep=2: ckpt-2 rotates out, nothing in damaged/ goes.
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(v=v), str(folder), max_to_keep=2)
    manager.save(checkpoint_number=5)
    manager.save(checkpoint_number=6)
    assert manager.checkpoints == [str(folder / "ckpt-5"), str(folder / "ckpt-6")]
    assert len(list((folder / "damaged").iterdir())) == 2


def _toy_resume(run_root, total_steps):
    """run_loop over a one-weight stage 'toy' (checkpoint every 2 steps, keep 5), resumed in `run_root`."""
    import tensorflow as tf

    from mirrorgan_tf.distribute import build_strategy
    from mirrorgan_tf.training import loop

    strategy = build_strategy("one_device")
    with strategy.scope():
        weight = tf.Variable(0.0, name="w")
        step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    state = loop.TrainState(tf.train.Checkpoint(w=weight, step=step_var), step_var, [weight])

    @tf.function
    def step_fn(batch):
        weight.assign_add(batch)
        return {"loss": weight}

    batches = iter(tf.constant(1.0) for _ in range(total_steps))
    return loop.run_loop("toy", runs.RunDir(str(run_root)), strategy, state, step_fn, batches,
                         loop.Cadence(total_steps, 2, 5, 100), global_batch=1), weight


def test_a_resume_with_every_checkpoint_damaged_stops_naming_them(tmp_path, capsys):
    _toy_resume(tmp_path / "run", 4)
    folder = tmp_path / "run" / "toy" / "checkpoints"
    _truncate_data(folder / "ckpt-4")
    result, weight = _toy_resume(tmp_path / "run", 6)  # falls back to step 2, trains 3..6
    assert (result.start, result.steps, float(weight.numpy())) == (2, 6, 6.0)
    assert f"toy: resumed from {folder}/ckpt-2 at step 2" in capsys.readouterr().out
    for step in (2, 4, 6):
        _delete_data(folder / f"ckpt-{step}")
    with pytest.raises(runs.DamagedCheckpointError) as e:
        _toy_resume(tmp_path / "run", 8)
    assert all(f"- {folder}/ckpt-{step}: " in str(e.value) for step in (2, 4, 6))
    assert sorted(p.name for p in (folder / "damaged").iterdir()) == [
        "ckpt-4.data-00000-of-00001", "ckpt-4.index"]  # set aside by the first fallback, nothing deleted


def test_a_worker_of_a_multi_worker_run_does_not_fall_back_alone(tmp_path, monkeypatch):
    import types

    import tensorflow as tf

    from mirrorgan_tf import distribute

    spec = tf.train.ClusterSpec({"chief": ["a:1"], "worker": ["b:1", "c:1"]})
    cluster = types.SimpleNamespace(cluster_resolver=types.SimpleNamespace(cluster_spec=lambda: spec))
    assert distribute.worker_count(cluster) == 3 and distribute.worker_count(distribute.build_strategy("one_device")) == 1
    _toy_resume(tmp_path / "run", 4)
    folder = tmp_path / "run" / "toy" / "checkpoints"
    _truncate_data(folder / "ckpt-4")
    monkeypatch.setattr(distribute, "worker_count", lambda strategy: 2)
    with pytest.raises(runs.DamagedCheckpointError, match=r"toy: .*ckpt-4 damaged on this worker; its newest intact "
                                                          r"checkpoint is .*ckpt-2, but the 2 workers"):
        _toy_resume(tmp_path / "run", 6)
    assert (folder / "ckpt-4.index").exists() and not (folder / "damaged").exists()  # nothing moved


# --- every command, on a copy of the trained smoke run ---------------------------------------------

def test_sample_export_and_evaluate_fall_back_to_the_older_checkpoint(trained_run, tmp_path, capsys):
    from mirrorgan_tf import evaluate, sample
    from mirrorgan_tf import export as export_cli

    run_dir = _copy(trained_run, tmp_path)
    gan, damsm = run_dir / "gan" / "checkpoints", run_dir / "damsm" / "checkpoints"
    _delete_data(gan / "ckpt-4")
    assert sample.main(["--run-dir", str(run_dir), "--caption", "a red circle", "--num", "2",
                        "--out", str(tmp_path / "samples")]) == 0
    err = capsys.readouterr().err
    assert f"gan checkpoint {gan}/ckpt-4 is damaged" in err
    assert f"using the newest intact gan checkpoint instead: {gan}/ckpt-2 (step 2)" in err
    assert (tmp_path / "samples" / "000-a-red-circle.png").exists()
    assert (gan / "ckpt-4.index").exists()  # a reader moves nothing

    # Truncated (a full disk): the gan's and the DAMSM's newest.
    shutil.copy(trained_run[0] / "gan" / "checkpoints" / _data_file(gan / "ckpt-2").name.replace("-2.", "-4."), gan)
    _truncate_data(gan / "ckpt-4")
    _truncate_data(damsm / "ckpt-6")
    assert export_cli.main(["--run-dir", str(run_dir), "--export-dir", str(tmp_path / "export")]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == str(tmp_path / "export" / "1")
    assert f"gan checkpoint {gan}/ckpt-4 is damaged (Read less bytes than requested)" in err
    assert f"damsm checkpoint {damsm}/ckpt-6 is damaged" in err
    assert f"instead: {gan}/ckpt-2 (step 2)" in err and f"instead: {damsm}/ckpt-4 (step 4)" in err

    assert evaluate.main(["--run-dir", str(run_dir), "--metrics", "r_precision", "--num-images", "10",
                          "--folds", "2"]) == 0
    err = capsys.readouterr().err
    assert f"instead: {gan}/ckpt-2 (step 2)" in err
    assert err.count(f"instead: {damsm}/ckpt-4 (step 4)") == 2  # the generator's STEM, R-precision's DAMSM


def test_every_checkpoint_damaged_exits_2_naming_each(trained_run, tmp_path, capsys):
    from mirrorgan_tf import sample

    run_dir = _copy(trained_run, tmp_path)
    gan = run_dir / "gan" / "checkpoints"
    _delete_data(gan / "ckpt-4")
    _truncate_data(gan / "ckpt-2")
    assert sample.main(["--run-dir", str(run_dir), "--caption", "a red circle", "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert f"error: {run_dir}/gan: every gan checkpoint is damaged" in err
    assert f"- {gan}/ckpt-4: " in err and f"- {gan}/ckpt-2: Read less bytes than requested" in err
    assert not (tmp_path / "s").exists()


def test_a_resume_restarts_from_the_older_checkpoint_and_keeps_the_damaged_one(trained_run, prepared_shapes,
                                                                               tmp_path):
    run_dir = _copy(trained_run, tmp_path)
    gan = run_dir / "gan" / "checkpoints"
    _truncate_data(gan / "ckpt-4")
    damaged_bytes = _data_file(gan / "ckpt-4").read_bytes()
    r = smoke_train(run_dir, prepared_shapes, "--stage", "gan")
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"gan checkpoint {gan}/ckpt-4 is damaged (Read less bytes than requested)" in r.stderr
    assert f"gan: resumed from {gan}/ckpt-2 at step 2" in r.stdout
    assert f"gan: the damaged {gan}/ckpt-4 moved to {gan}/damaged/" in r.stdout
    assert _data_file(gan / "damaged" / "ckpt-4").read_bytes() == damaged_bytes  # kept as it was
    record = json.loads((run_dir / "stages.json").read_text())["gan"]
    assert record["done"] and record["fallbacks"] == [{
        "resumed_from": f"{gan}/ckpt-2", "step": 2, "moved_to": [f"{gan}/damaged/ckpt-4"],
        "damaged": [{"checkpoint": f"{gan}/ckpt-4", "reason": "Read less bytes than requested"}]}]
    metrics = json.loads((run_dir / "gan" / "metrics.json").read_text())
    assert (metrics["steps"], metrics["steps_this_session"]) == (4, 2)
    import tensorflow as tf

    assert tf.train.latest_checkpoint(str(gan)) == f"{gan}/ckpt-4"
    reader = tf.train.load_checkpoint(f"{gan}/ckpt-4")  # the new ckpt-4 reads whole (variants aside: no numpy)
    names = [n for n, dtype in reader.get_variable_to_dtype_map().items() if dtype != tf.variant]
    assert len(names) > 100 and all(reader.get_tensor(n) is not None for n in names)

