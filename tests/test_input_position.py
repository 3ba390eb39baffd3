"""The saved input position: its size (benchmarks/input_position_size.py) in both
data.input_position modes, and index mode's resume: the same batches as a pipeline never stopped,
on another replica count too, with each epoch a permutation shared out among the workers."""

import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from mirrorgan_tf import data
from mirrorgan_tf.config import load_config
from tests.conftest import CONFIGS, REPO

ROOT = Path(__file__).resolve().parents[1]


# One 16 px generator scale: what is tested is which records come when, and it decodes fastest.
SMALL = ["data.input_position=index", "model.stages=1", "model.base_size=16"]
# The benchmark's COCO-shaped records have a vocabulary of their own, without the shape words the
# shapes config's one-word swaps name.
NO_SWAPS = ["train.wrong_word_swaps=[]"]


def _bench():
    spec = importlib.util.spec_from_file_location("input_position_size", ROOT / "benchmarks" / "input_position_size.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_saved_position_grows_with_the_shuffle_buffer(tmp_path):
    bench = _bench()
    folder = tmp_path / "data"
    mean = bench.write_coco_shaped(str(folder), 400, 8000, distinct=1)
    sizes = {}
    for buffer in (1, 129):
        cfg = load_config(ROOT / "configs" / "shapes_smoke.yaml",
                          [f"data.dir={folder}", f"data.shuffle_buffer={buffer}", "train.batch_size=2", *NO_SWAPS])
        sizes[buffer], _ = bench.measure(cfg, 2, str(tmp_path / f"ckpt{buffer}"))
    # 128 more buffered records (400 in the shard, so the buffer stays full), each saved as its
    # serialized bytes; the slack allows for the prefetch, which autotuning sizes.
    grown = sizes[129] - sizes[1]
    assert 0.85 * 128 * mean <= grown <= 1.15 * 128 * mean, (grown, mean, sizes)


def test_index_position_holds_a_few_integers_whatever_the_buffer_or_record_size(tmp_path):
    """In index mode the checkpoint keeps five int64 scalars: the same bytes for a 1- or 129-record
    shuffle buffer and for 2 KB or 16 KB records, less than one record's bytes."""
    bench = _bench()
    sizes = {}
    for kb in (2, 16):
        folder = tmp_path / f"data{kb}"
        mean = bench.write_coco_shaped(str(folder), 200, kb * 1000, distinct=1)
        assert mean > kb * 1000 * 0.5  # the records really are of that order
        for buffer in (1, 129):
            cfg = load_config(ROOT / "configs" / "shapes_smoke.yaml",
                              [f"data.dir={folder}", f"data.shuffle_buffer={buffer}", "train.batch_size=2", *SMALL,
                               *NO_SWAPS])
            sizes[kb, buffer], _ = bench.measure(cfg, 2, str(tmp_path / f"ckpt{kb}_{buffer}"))
    assert len(set(sizes.values())) == 1, sizes
    assert 0 < sizes[2, 1] < 1000, sizes


def _index_cfg(path, *overrides):
    return load_config(CONFIGS / "shapes_smoke.yaml", [f"data.dir={path}", *SMALL, *overrides])


def _keys(batch):
    return [k.decode() for k in batch["key"].numpy()]


def test_index_mode_orders_each_epoch_as_a_permutation_shared_out_among_workers(prepared_shapes):
    """Index mode, 96 training records: each epoch (3 batches of 32) holds every record once, in
    another order each epoch and for another data.seed; two workers (input pipelines) take disjoint
    halves of each epoch; a pipeline started at batch k yields bit for bit what an unbroken one
    yields from batch k (images, captions, noise), reading from there on."""
    cfg = _index_cfg(prepared_shapes, "train.batch_size=32")
    unbroken = list(data.make_dataset(cfg, "train").take(6))
    epochs = [sum((_keys(b) for b in unbroken[i:i + 3]), []) for i in (0, 3)]
    everything = {f"train/{i:05d}" for i in range(96)}
    assert [set(e) for e in epochs] == [everything, everything] and all(len(e) == 96 for e in epochs)
    assert epochs[0] != epochs[1] and epochs[0] != sorted(epochs[0])
    other_seed = _index_cfg(prepared_shapes, "train.batch_size=32", "data.seed=1")
    assert _keys(next(iter(data.make_dataset(other_seed, "train")))) != _keys(unbroken[0])

    # Started within the first epoch, across the epoch's end.
    resumed = list(data.make_dataset(cfg, "train", start=2 * 32).take(2))
    for want, got in zip(unbroken[2:4], resumed):
        for a, b in zip(tf.nest.flatten(want), tf.nest.flatten(got)):
            np.testing.assert_array_equal(a.numpy(), b.numpy())

    halves = [[_keys(b) for b in data.make_dataset(cfg, "train", batch_size=96,
                                                    input_context=tf.distribute.InputContext(2, w, 2)).take(2)]
              for w in (0, 1)]
    for epoch in (0, 1):  # 48 examples a worker an epoch: one batch of 48
        assert set(halves[0][epoch]).isdisjoint(halves[1][epoch])
        assert set(halves[0][epoch]) | set(halves[1][epoch]) == everything
    later = data.make_dataset(cfg, "train", batch_size=96, input_context=tf.distribute.InputContext(2, 1, 2), start=48)
    assert _keys(next(iter(later))) == halves[1][1]


RESUMED_ON_OTHER_REPLICAS = textwrap.dedent("""
    import json, sys
    from mirrorgan_tf import distribute
    distribute.split_cpu(2)
    import numpy as np
    import tensorflow as tf
    tf.config.experimental.enable_op_determinism()  # as train.deterministic runs
    from mirrorgan_tf import data
    from mirrorgan_tf.config import load_config
    cfg = load_config(sys.argv[1], ["data.dir=" + sys.argv[2], "train.batch_size=8", *json.loads(sys.argv[4])])
    two, one = distribute.build_strategy("mirrored"), distribute.build_strategy("one_device")

    def local(strategy, batch):  # the step's whole batch, replicas concatenated in order
        return {k: np.concatenate([r.numpy() for r in strategy.experimental_local_results(v)])
                for k, v in batch.items() if k != "images"} | {
                "images": [np.concatenate([r.numpy() for r in strategy.experimental_local_results(v)])
                           for v in batch["images"]]}

    def resumed(strategy, path):
        pipeline = data.DistributedInput(strategy, cfg, "train")
        note = pipeline.resume_note(path)
        tf.train.Checkpoint(input_pipeline=pipeline).read(path).assert_existing_objects_matched()
        return pipeline, note

    unbroken = data.DistributedInput(one, cfg, "train")
    expected = [local(one, next(unbroken)) for _ in range(14)]
    first = data.DistributedInput(two, cfg, "train")
    got = [local(two, next(first)) for _ in range(5)]
    saved_two = tf.train.Checkpoint(input_pipeline=first).write(sys.argv[3] + "/two")
    on_one, note_two_to_one = resumed(one, saved_two)  # 2 replicas -> 1
    got += [local(one, next(on_one)) for _ in range(5)]  # crosses the epoch's end (12 batches)
    saved_one = tf.train.Checkpoint(input_pipeline=on_one).write(sys.argv[3] + "/one")
    on_two, note_one_to_two = resumed(two, saved_one)  # 1 replica -> 2
    got += [local(two, next(on_two)) for _ in range(4)]
    same = all(all(np.array_equal(a, b) for a, b in zip(tf.nest.flatten(x), tf.nest.flatten(y)))
               for x, y in zip(expected, got))
    print(json.dumps({"same": same, "steps": len(got), "notes": [note_two_to_one, note_one_to_two],
                      "keys": [[k.decode() for k in b["key"]] for b in expected],
                      "taken": int(on_two.batches_taken.numpy())}))
""")


def test_index_position_continues_bit_identical_on_another_replica_count(prepared_shapes, tmp_path):
    """Index mode on two CPU replicas, then one device, then two again (op determinism on, as
    train.deterministic): the 14 steps' batches, every tensor, equal an unbroken pipeline's, across
    the end of an epoch (96 records, batch 8: 12 steps), and no resume note."""
    r = subprocess.run([sys.executable, "-c", RESUMED_ON_OTHER_REPLICAS, str(CONFIGS / "shapes_smoke.yaml"),
                        str(prepared_shapes), str(tmp_path), json.dumps(SMALL)], cwd=REPO, capture_output=True, text=True,
                       timeout=150)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["same"] is True and out["steps"] == 14 and out["taken"] == 14
    assert out["notes"] == [None, None]
    keys = sum(out["keys"], [])
    assert len(set(keys[:96])) == 96 and keys[96:] != keys[:len(keys) - 96]  # a new epoch, a new order


def test_an_index_position_for_another_seed_or_split_size_is_named_unfit(prepared_shapes, tmp_path):
    """The saved batch count names examples only in its own permutation: a run with another
    data.seed, or a split of another size, is told so by resume_note (and run_loop starts the
    input over); the same settings fit."""
    strategy = tf.distribute.get_strategy()
    saved = data.DistributedInput(strategy, _index_cfg(prepared_shapes), "train", 4)
    saved.batches_taken.assign(7)
    path = tf.train.Checkpoint(input_pipeline=saved).write(str(tmp_path / "ckpt"))
    assert data.DistributedInput(strategy, _index_cfg(prepared_shapes), "train", 4).resume_note(path) is None
    reseeded = data.DistributedInput(strategy, _index_cfg(prepared_shapes, "data.seed=3"), "train", 4)
    assert reseeded.resume_note(path) == ("it counts batches of 96 training examples in data.seed=0's order, this "
                                          "run has 96 in data.seed=3's")
    saved.examples.assign(120)  # as if written for a larger split
    path = tf.train.Checkpoint(input_pipeline=saved).write(str(tmp_path / "larger"))
    assert "batches of 120 training examples in data.seed=0's order, this run has 96" in \
        data.DistributedInput(strategy, _index_cfg(prepared_shapes), "train", 4).resume_note(path)
