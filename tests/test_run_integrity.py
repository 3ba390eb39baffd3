"""A run directory is the single source of truth for what trained in it: its own vocabulary and data
fingerprint, its config; other runs it reuses must share its words (by content, not size)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mirrorgan_tf import runs
from tests.conftest import CONFIGS, REPO, smoke_train


def _prepare(out, num_train, num_test=32, overwrite=False):
    from pipelines.prepare import prepare

    return prepare("shapes", str(out), num_train=num_train, num_test=num_test, workers=1, overwrite=overwrite)


@pytest.fixture(scope="module")
def run64(tmp_path_factory):
    """The smoke config trained through every stage on shapes prepared with --num-train 64, and a
    pristine copy of that data to put back after a test changes it."""
    root = tmp_path_factory.mktemp("integrity")
    data_dir = root / "data"
    _prepare(data_dir, 64)
    shutil.copytree(data_dir, root / "data64")
    run_dir = root / "run"
    r = smoke_train(run_dir, data_dir)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return run_dir, data_dir, root / "data64"


@pytest.fixture
def changed_data(run64):
    """Yields a function preparing the run's data.dir again; the original data is put back after."""
    run_dir, data_dir, pristine = run64

    def prepare_again(**kwargs):
        _prepare(data_dir, overwrite=True, **kwargs)

    yield prepare_again
    shutil.rmtree(data_dir)
    shutil.copytree(pristine, data_dir)


def _words(path):
    return Path(path).read_text().split("\n")[:-1]


def test_a_run_keeps_its_vocabulary_and_the_data_fingerprint(run64):
    run_dir, data_dir, _ = run64
    assert (run_dir / "vocab.txt").read_bytes() == (data_dir / "vocab.txt").read_bytes()
    record = json.loads((run_dir / "data.json").read_text())
    assert record["vocab_size"] == 52 and record["examples"] == {"train": 64, "test": 32}
    assert record == runs.data_fingerprint(str(data_dir))
    run = runs.load_run(str(run_dir))
    assert run.vocab_path == str(run_dir / "vocab.txt") and run.vocab_size == 52


def test_preparing_the_data_again_moves_no_word_id_under_a_trained_run(run64, changed_data, tmp_path, capsys):
    """The issue's case: the same folder prepared again with --num-train 80: 52 words again, 32 of
    them at other ids. Sampling and export use the run's own words; evaluation (which reads word ids
    from the data), a further stage and a new run reusing this one's DAMSM are refused."""
    from mirrorgan_tf import evaluate, sample
    from mirrorgan_tf.serving.export import export

    run_dir, data_dir, _ = run64
    trained_words = _words(run_dir / "vocab.txt")
    changed_data(num_train=80)
    new_words = _words(data_dir / "vocab.txt")
    assert len(new_words) == len(trained_words) == 52
    assert sum(a != b for a, b in zip(trained_words, new_words)) == 32

    run = runs.load_run(str(run_dir))
    assert _words(run.vocab_path) == trained_words
    ids, _, words, _, _ = sample.tokenize(["a small red circle on the left"], run.vocab_path, 16)
    assert words[0] == ["a", "small", "red", "circle", "on", "the", "left"]
    assert list(ids[0][:7]) == [trained_words.index(w) for w in words[0]]
    version = export(str(run_dir), str(tmp_path / "export"))
    assert _words(Path(version) / "assets" / "vocab.txt") == trained_words

    assert evaluate.main(["--run-dir", str(run_dir), "--metrics", "r_precision"]) == 2
    err = capsys.readouterr().err
    assert f"data.dir={data_dir}" in err and "32 of 52 shared ids name another word" in err

    r = smoke_train(run_dir, data_dir, "--stage", "gan", "--set", "train.max_steps=6")
    assert r.returncode == 2, r.stderr[-2000:]
    assert f"data.dir={data_dir}" in r.stderr and "32 of 52 shared ids name another word" in r.stderr
    assert json.loads((run_dir / "gan" / "metrics.json").read_text())["steps"] == 4  # nothing trained

    # A new run on the new data reusing this run's DAMSM: same size, other words: refused.
    other = tmp_path / "other"
    r = smoke_train(other, data_dir, "--set", f"damsm.checkpoint={run_dir}/damsm")
    assert r.returncode == 2, r.stderr[-2000:]
    assert f"damsm.checkpoint={run_dir}/damsm" in r.stderr and "32 of 52 shared ids" in r.stderr
    assert not (other / "config.yaml").exists() and not (other / "vocab.txt").exists()


def test_changed_data_with_the_same_vocabulary_is_refused_for_training(run64, changed_data):
    run_dir, data_dir, _ = run64
    changed_data(num_train=64, num_test=40)  # the vocabulary comes from the training captions: unchanged
    assert (run_dir / "vocab.txt").read_bytes() == (data_dir / "vocab.txt").read_bytes()
    r = smoke_train(run_dir, data_dir, "--stage", "gan", "--set", "train.max_steps=6")
    assert r.returncode == 2, r.stderr[-2000:]
    assert "the prepared data changed since this run started" in r.stderr
    assert "examples: {'test': 32, 'train': 64} when the run started, {'test': 40, 'train': 64} now" in r.stderr
    runs.load_run(str(run_dir)).check_data()  # evaluation may read it: its word ids are the run's


def test_a_damsm_run_with_other_words_of_the_same_count_is_refused(run64, tmp_path, capsys):
    from mirrorgan_tf import evaluate

    run_dir, _, _ = run64
    other = tmp_path / "damsm_run"
    shutil.copytree(run_dir, other)
    words = _words(run_dir / "vocab.txt")
    words[5], words[6] = words[6], words[5]
    (other / "vocab.txt").write_text("\n".join(words) + "\n")
    assert evaluate.main(["--run-dir", str(run_dir), "--metrics", "r_precision", "--damsm-run", str(other)]) == 2
    err = capsys.readouterr().err
    assert f"--damsm-run {other}" in err
    assert f"2 of 52 shared ids name another word (id 5: {words[6]!r} -> {words[5]!r}" in err


def test_a_rerun_that_changes_what_trained_is_refused_before_writing(run64):
    run_dir, data_dir, _ = run64
    before = (run_dir / "config.yaml").read_bytes()
    r = smoke_train(run_dir, data_dir, "--set", "model.gf_dim=8", "--set", "train.seed=3",
                    "--set", "train.max_steps=9")
    assert r.returncode == 2
    assert "model.gf_dim: 4 in the run, 8 now" in r.stderr and "train.seed: 0 in the run, 3 now" in r.stderr
    assert "train.max_steps" not in r.stderr.split("these keys differ:")[1].split("Use the run")[0]
    assert (run_dir / "config.yaml").read_bytes() == before
    # Keys that only steer what is left to do may change.
    r = smoke_train(run_dir, data_dir, "--set", "train.log_every=2")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "log_every: 2" in (run_dir / "config.yaml").read_text()


def test_a_run_without_its_own_vocabulary_is_refused_by_name(run64, tmp_path):
    run_dir, data_dir, _ = run64
    old = tmp_path / "old_run"
    shutil.copytree(run_dir, old)
    (old / "vocab.txt").unlink()
    (old / "data.json").unlink()
    with pytest.raises(runs.RunIntegrityError, match=f"{old}: the run has no vocab.txt"):
        runs.load_run(str(old))
    r = smoke_train(old, data_dir, "--stage", "gan")
    assert r.returncode == 2 and f"copy that dataset's vocab.txt to {old}/vocab.txt" in r.stderr


def test_a_moved_run_loads_alone(run64, tmp_path):
    """Everything a run needs is inside it: moved elsewhere, it samples the same pictures."""
    from mirrorgan_tf.evaluation.generator import TrainedGenerator

    run_dir, _, _ = run64
    moved = tmp_path / "elsewhere" / "moved"
    shutil.copytree(run_dir, moved)
    ids, lengths = [[3, 4, 5] + [0] * 13], [3]
    here = TrainedGenerator(str(run_dir))(ids, lengths, [0], seed=1)["images"][-1].numpy()
    there = TrainedGenerator(str(moved))(ids, lengths, [0], seed=1)["images"][-1].numpy()
    assert (here == there).all()


def test_a_runs_stream_is_its_stream_stages_checkpoint_and_another_vocabulary_is_refused(run64, tmp_path):
    """Run.stream() restores the stream stage's latest checkpoint: every weight is that
    checkpoint's tensor; a stream.checkpoint in a run with other words is refused by name."""
    import tensorflow as tf

    run_dir, _, _ = run64
    encoder, decoder, prefix = runs.load_run(str(run_dir)).stream()
    assert prefix == tf.train.latest_checkpoint(str(run_dir / "stream" / "checkpoints"))
    # Networks restored as the stream stage's checkpoint names them (`encoder`, `decoder`).
    from mirrorgan_tf.models.networks import build_stream

    run = runs.load_run(str(run_dir))
    trained = build_stream(runs.for_restore(run.cfg), run.vocab_size)
    tf.train.Checkpoint(encoder=trained[0], decoder=trained[1]).restore(prefix).expect_partial() \
        .assert_existing_objects_matched()
    for got, want in zip((encoder, decoder), trained):
        assert len(got.weights) == len(want.weights) > 0
        for w, t in zip(got.weights, want.weights):
            np.testing.assert_array_equal(w.numpy(), t.numpy(), err_msg=w.path)
    assert any(np.abs(w.numpy()).sum() > 0 for w in decoder.weights)
    other = tmp_path / "other"
    shutil.copytree(run_dir, other)
    words = _words(run_dir / "vocab.txt")
    words[5], words[6] = words[6], words[5]
    (other / "vocab.txt").write_text("\n".join(words) + "\n")
    run.cfg.stream.checkpoint = str(other)
    with pytest.raises(runs.RunIntegrityError, match=f"stream.checkpoint={other}"):
        run.stream()


def test_raw_generator_weights_are_the_checkpoints_own_and_draw_other_pictures(run64, capsys):
    """weights="raw" restores the generator the EMA averages (evaluate --weights raw): its weights
    are exactly the checkpoint's `glam` tensors, and over a short run they draw other pictures."""
    import tensorflow as tf

    from mirrorgan_tf.evaluation.generator import TrainedGenerator

    run_dir, _, _ = run64
    ids, lengths = [[3, 4, 5] + [0] * 13], [3]
    ema, raw = TrainedGenerator(str(run_dir)), TrainedGenerator(str(run_dir), weights="raw")
    # A GLAM restored as the training's checkpoint names it (`glam`, beside `glam_ema`).
    from mirrorgan_tf.models.networks import build_glam

    trained = build_glam(raw.cfg, batch=1)
    tf.train.Checkpoint(glam=trained).restore(raw.checkpoint_path).expect_partial().assert_existing_objects_matched()
    for w, t in zip(raw.glam.weights, trained.weights):
        np.testing.assert_array_equal(w.numpy(), t.numpy(), err_msg=w.path)
    assert any(not np.array_equal(w.numpy(), e.numpy()) for w, e in zip(raw.glam.trainable_weights,
                                                                        ema.glam.trainable_weights))
    a = ema(ids, lengths, [0], seed=1)["images"][-1].numpy()
    b = raw(ids, lengths, [0], seed=1)["images"][-1].numpy()
    assert np.abs(a - b).mean() > 1e-3
    with pytest.raises(ValueError, match="'ema' or 'raw', got 'average'"):
        runs.load_run(str(run_dir)).generator(finished=False, weights="average")
    # The published protocol is compared with figures of EMA generators: refused before any work.
    from mirrorgan_tf import evaluate

    assert evaluate.main(["--run-dir", str(run_dir), "--protocol", "cub", "--weights", "raw"]) == 2
    assert "--weights raw: the published protocol (--protocol) scores the EMA generator" in capsys.readouterr().err


def test_frozen_imagenet_backbones_are_restored_without_their_weights_file(tmp_path):
    """Building STREAM's ResNet-152 to restore it needs no ImageNet file and no download (an empty
    Keras cache here), and its checkpoint holds every backbone variable."""
    code = (
        "import os, sys, tensorflow as tf\n"
        "from mirrorgan_tf import runs\n"
        "from mirrorgan_tf.config import load_config\n"
        "from mirrorgan_tf.models import networks\n"
        "cfg = runs.for_restore(load_config(sys.argv[1], ['data.vocab_size=20', 'stream.backbone_weights=imagenet']))\n"
        "enc, dec = networks.build_stream(cfg, 20, batch=1)\n"
        "print(cfg.stream.backbone_weights, len(enc.weights))\n"
        "path = tf.train.Checkpoint(encoder=enc).write(sys.argv[2])\n"
        "names = [n for n, _ in tf.train.list_variables(path) if n.startswith('encoder/')]\n"
        "print(len(names))\n")
    env = {**os.environ, "KERAS_HOME": str(tmp_path / "empty_keras_home"), "TF_CPP_MIN_LOG_LEVEL": "2"}
    r = subprocess.run([sys.executable, "-c", code, str(CONFIGS / "cub.yaml"), str(tmp_path / "ckpt")], cwd=REPO,
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    kind, weights, saved = r.stdout.split()[-3:]
    assert kind == "random" and int(saved) == int(weights) > 900  # every ResNet-152 weight is saved
    assert not (tmp_path / "empty_keras_home" / "models").exists() or not any(
        (tmp_path / "empty_keras_home" / "models").iterdir())
