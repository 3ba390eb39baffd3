import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from mirrorgan_tf import data
from mirrorgan_tf.config import load_config
from tests.conftest import CONFIGS, REPO


def _cfg(path, name="shapes_smoke.yaml", *overrides):
    return load_config(CONFIGS / name, [f"data.dir={path}", *overrides])


def test_batches_have_static_shapes_and_every_scale_in_range(prepared_shapes):
    cfg = _cfg(prepared_shapes)
    ds = data.make_dataset(cfg, "train")
    spec = ds.element_spec
    b = cfg.train.batch_size
    assert [s.shape.as_list() for s in spec["images"]] == [[b, s, s, 3] for s in (16, 32, 64)]
    assert spec["caption_ids"].shape.as_list() == [b, 16] and spec["caption_ids"].dtype == tf.int32
    assert spec["attributes"].shape.as_list() == [b, 4]
    for s in tf.nest.flatten(spec):
        assert s.shape.is_fully_defined()  # nothing for a tf.function step to retrace on
    for batch in ds.take(3):
        for image in batch["images"]:
            assert image.dtype == tf.float32
            assert -1.0 <= float(tf.reduce_min(image)) and float(tf.reduce_max(image)) <= 1.0
        lengths = batch["caption_len"].numpy()
        ids = batch["caption_ids"].numpy()
        assert (lengths > 0).all()
        for row, n in zip(ids, lengths):
            assert (row[:n] > 1).all() and (row[n:] == 0).all()


def test_lower_scales_are_resized_versions_of_the_final_image(prepared_shapes):
    cfg = _cfg(prepared_shapes)
    batch = next(iter(data.make_dataset(cfg, "test")))
    small, _, final = batch["images"]
    expected = tf.image.resize(final, [16, 16], antialias=True)
    np.testing.assert_allclose(small.numpy(), expected.numpy(), atol=0.06)


def test_pipeline_is_reproducible_and_training_augments(prepared_shapes):
    cfg = _cfg(prepared_shapes)
    first = [b["key"].numpy().tolist() for b in data.make_dataset(cfg, "train").take(4)]
    again = [b["key"].numpy().tolist() for b in data.make_dataset(cfg, "train").take(4)]
    assert first == again
    other = _cfg(prepared_shapes, "shapes_smoke.yaml", "data.seed=5")
    assert [b["key"].numpy().tolist() for b in data.make_dataset(other, "train").take(4)] != first
    # Evaluation reads in order, crops the centre and repeats nothing.
    test = list(data.make_dataset(cfg, "test", batch_size=8))
    assert len(test) == 48 // 8
    assert [k.decode() for k in test[0]["key"].numpy()] == [f"test/{i:05d}" for i in range(8)]
    a = next(iter(data.make_dataset(cfg, "test", batch_size=8)))
    np.testing.assert_array_equal(a["images"][-1].numpy(), test[0]["images"][-1].numpy())


def _by_key(batch):
    return {k: img for k, img in zip(batch["key"].numpy(), batch["images"][-1].numpy())}


def test_random_crop_and_flip(prepared_shapes):
    base = _cfg(prepared_shapes, "shapes_smoke.yaml", "data.random_crop=false")
    stored = {}
    for batch in data.make_dataset(base, "train", training=False):
        stored.update(_by_key(batch))
    plain = _by_key(next(iter(data.make_dataset(base, "train", training=True))))
    for key, image in plain.items():  # crop and flip off: exactly the stored image
        np.testing.assert_allclose(image, stored[key], atol=1e-6)
    flip = _cfg(prepared_shapes, "shapes_smoke.yaml", "data.random_crop=false", "data.random_flip=true")
    mirrored = 0
    for batch in data.make_dataset(flip, "train").take(4):
        for key, image in _by_key(batch).items():
            if np.allclose(image, stored[key][:, ::-1], atol=1e-6):
                mirrored += 1
            else:
                np.testing.assert_allclose(image, stored[key], atol=1e-6)
    assert 2 <= mirrored <= 14  # about half of 16
    crop = _cfg(prepared_shapes, "shapes_smoke.yaml")
    for key, image in _by_key(next(iter(data.make_dataset(crop, "train")))).items():
        assert not np.allclose(image, stored[key], atol=0.05)


def test_a_random_caption_per_image_per_step(prepared_shapes):
    cfg = _cfg(prepared_shapes, "shapes_smoke.yaml", "data.shuffle_buffer=1")
    ds = data.make_dataset(cfg, "train", batch_size=2)
    chosen = {}
    for batch in ds.take(48 * 4):  # 4 epochs of 96 images
        for key, caption in zip(batch["key"].numpy(), batch["caption"].numpy()):
            chosen.setdefault(key, set()).add(caption)
    assert np.mean([len(c) for c in chosen.values()]) > 2


def test_cub_batches_from_the_prepared_sample(prepared_cub):
    cfg = load_config(CONFIGS / "cub.yaml", [f"data.dir={prepared_cub}", "train.batch_size=4"])
    batch = next(iter(data.make_dataset(cfg, "train")))
    assert [tuple(x.shape) for x in batch["images"]] == [(4, 64, 64, 3), (4, 128, 128, 3), (4, 256, 256, 3)]
    assert tuple(batch["caption_ids"].shape) == (4, 18)
    assert tuple(batch["attributes"].shape) == (4, 0)
    assert (batch["class_id"].numpy() > 0).all()
    assert data.vocab_size(cfg) == json.loads((prepared_cub / "manifest.json").read_text())["vocab_size"]


def test_errors_name_the_file(tmp_path, prepared_shapes):
    with pytest.raises(data.DataError, match="no prepared dataset here"):
        data.make_dataset(_cfg(tmp_path), "train")
    with pytest.raises(data.DataError, match="no split 'val'"):
        data.make_dataset(_cfg(prepared_shapes), "val")
    with pytest.raises(data.DataError, match=r"data.vocab_size=7, but .*manifest.json says"):
        data.vocab_size(_cfg(prepared_shapes, "shapes_smoke.yaml", "data.vocab_size=7"))


DISTRIBUTED = textwrap.dedent("""
    import json, sys
    from mirrorgan_tf import distribute
    distribute.split_cpu(2)
    from mirrorgan_tf import data
    from mirrorgan_tf.config import load_config
    cfg = load_config(sys.argv[1], ["data.dir=" + sys.argv[2], "train.batch_size=8"])
    strategy = distribute.build_strategy("mirrored")
    ds = data.distributed_dataset(strategy, cfg, "train")
    out = []
    it = iter(ds)
    for batch in [next(it), next(it)]:
        keys = strategy.experimental_local_results(batch["key"])
        images = strategy.experimental_local_results(batch["images"][-1])
        out.append({"replicas": len(keys), "keys": [[k.decode() for k in r.numpy()] for r in keys],
                    "shapes": [list(i.shape) for i in images]})
    print(json.dumps(out))
""")


def test_distribution_through_mirrored_strategy_on_two_cpus(prepared_shapes):
    r = subprocess.run([sys.executable, "-c", DISTRIBUTED, str(CONFIGS / "shapes_smoke.yaml"), str(prepared_shapes)],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    steps = json.loads(r.stdout.strip().splitlines()[-1])
    for step in steps:
        assert step["replicas"] == 2
        assert step["shapes"] == [[4, 64, 64, 3], [4, 64, 64, 3]]  # global 8 = 2 x 4
        assert not set(step["keys"][0]) & set(step["keys"][1])  # each replica its own images


def _prepared(tmp_path, name, **kwargs):
    from pipelines.prepare import prepare

    out = tmp_path / name
    prepare(kwargs.pop("dataset", "shapes"), str(out), kwargs.pop("source", None), workers=1, **kwargs)
    return out


def _refusal(cfg, **kwargs) -> str:
    with pytest.raises(data.DataError) as e:
        data.check_prepared(cfg, **kwargs)
    return str(e.value)


def test_sample_captions_is_the_number_the_check_asks_for():
    assert data.SAMPLE_CAPTIONS == 8


def test_check_prepared_refuses_a_test_split_smaller_than_the_samplers_batch(tmp_path):
    # The case: pipelines.prepare --dataset shapes --num-train 64 --num-test 5, default config.
    out = _prepared(tmp_path, "tiny", num_train=64, num_test=5)
    cfg = _cfg(out, "shapes.yaml")
    message = _refusal(cfg)
    assert message.startswith(f"{out / 'manifest.json'}: this dataset cannot be trained on as configured")
    assert "the test split has 5 images, fewer than the 8 fixed sample captions the gan stage draws" in message
    assert "SAMPLE_CAPTIONS" in message and "--num-test" in message
    assert message.count("\n  - ") == 1  # the train split (64) covers every batch of shapes.yaml
    # Stages that never read the test split are not held up by it.
    assert data.check_prepared(cfg, stages=("damsm", "stream"))["splits"]["test"]["examples"] == 5


def _own_captions(tmp_path, count: int, test_fraction: float):
    """`count` one-colour 16 px images with a caption each (captions.jsonl: no classes, no
    attributes), prepared with the given test fraction; returns the prepared folder."""
    from PIL import Image

    root = tmp_path / "mine"
    root.mkdir()
    rows = []
    for i in range(count):
        Image.new("RGB", (16, 16), (240 * i // count, 0, 0)).save(root / f"{i}.png")
        rows.append(json.dumps({"image": f"{i}.png", "caption": f"a red square number {i}"}))
    (root / "captions.jsonl").write_text("\n".join(rows) + "\n")
    return _prepared(tmp_path, "mine-out", dataset="captions", source=str(root), test_fraction=test_fraction)


def test_check_prepared_refuses_an_own_dataset_whose_hash_split_left_no_test_images(tmp_path):
    out = _own_captions(tmp_path, 12, test_fraction=0.0)
    cfg = _cfg(out, "shapes_smoke.yaml", "data.dataset=captions")
    assert "the test split has 0 images, fewer than the 8 fixed sample captions" in _refusal(cfg)


@pytest.mark.parametrize("key, value", [("damsm.batch_size", 100), ("stream.batch_size", 97),
                                        ("train.batch_size", 128)])
def test_check_prepared_refuses_a_train_split_smaller_than_a_stage_batch(prepared_shapes, key, value):
    message = _refusal(_cfg(prepared_shapes, "shapes_smoke.yaml", f"{key}={value}"))
    assert f"the train split has 96 images, fewer than {key}={value}" in message
    assert message.count("\n  - ") == 1


def test_check_prepared_lists_every_problem_at_once(prepared_shapes):
    cfg = _cfg(prepared_shapes, "shapes_smoke.yaml", "damsm.batch_size=100", "train.batch_size=128",
               "data.vocab_size=7")
    message = _refusal(cfg)
    assert "fewer than damsm.batch_size=100" in message and "fewer than train.batch_size=128" in message
    assert "data.vocab_size=7, but the vocabulary has" in message
    # A stage that will not run does not count.
    assert "damsm" not in _refusal(cfg, stages=("stream", "gan"))


def test_check_prepared_accepts_a_dataset_that_fits_and_names_a_missing_shard(prepared_shapes, tmp_path):
    import shutil

    cfg = _cfg(prepared_shapes)
    manifest = data.check_prepared(cfg)
    assert manifest["splits"]["train"]["examples"] == 96 and manifest["splits"]["test"]["examples"] == 48
    copy = tmp_path / "copy"
    shutil.copytree(prepared_shapes, copy)
    shard = manifest["splits"]["test"]["shards"][0]
    (copy / shard).unlink()
    assert f"the test split's shard {shard} is missing" in _refusal(_cfg(copy))


def test_a_record_refuses_a_caption_without_word_ids():
    from mirrorgan_tf import records

    with pytest.raises(ValueError, match="k1: caption 'zebra' has no word ids"):
        records.encode_example(key="k1", image=b"x", image_format="png", height=1, width=1,
                               captions=["a bird", "zebra"], caption_ids=[[2, 3], []])
    ok = records.encode_example(key="k1", image=b"x", image_format="png", height=1, width=1,
                                captions=["a bird"], caption_ids=[[2, 3]])
    assert records.parse_example(ok)["caption_ids"].to_list() == [[2, 3]]


SAVED_POSITION = textwrap.dedent("""
    import json, sys
    from mirrorgan_tf import distribute
    distribute.split_cpu(2)
    import tensorflow as tf
    from mirrorgan_tf import data
    from mirrorgan_tf.config import load_config
    cfg = load_config(sys.argv[1], ["data.dir=" + sys.argv[2], "train.batch_size=8"])
    two, one = distribute.build_strategy("mirrored"), distribute.build_strategy("one_device")

    def keys(strategy, batch):  # each replica's keys
        return [[k.decode() for k in r.numpy()] for r in strategy.experimental_local_results(batch["key"])]

    def resumed(strategy, path):
        pipeline = data.DistributedInput(strategy, cfg, "train")
        note = pipeline.resume_note(path)
        tf.train.Checkpoint(input_pipeline=pipeline).read(path).assert_existing_objects_matched()
        return pipeline, note

    # The one pipeline of a single worker, its whole global batches.
    reference = iter(data.make_dataset(cfg, "train", input_context=tf.distribute.InputContext()))
    expected = [[k.decode() for k in next(reference)["key"].numpy()] for _ in range(6)]
    first = data.DistributedInput(two, cfg, "train")
    got = [keys(two, next(first)) for _ in range(2)]
    saved_two = tf.train.Checkpoint(input_pipeline=first).write(sys.argv[3] + "/two")
    on_one, note_two_to_one = resumed(one, saved_two)  # 2 replicas -> 1
    got += [keys(one, next(on_one)) for _ in range(2)]
    saved_one = tf.train.Checkpoint(input_pipeline=on_one).write(sys.argv[3] + "/one")
    on_two, note_one_to_two = resumed(two, saved_one)  # 1 replica -> 2
    got += [keys(two, next(on_two)) for _ in range(2)]
    # Another number of workers (recorded as such) and a checkpoint from before the layout was kept.
    on_two.pipelines.assign(2)
    other_workers = tf.train.Checkpoint(input_pipeline=on_two).write(sys.argv[3] + "/workers")
    old = tf.Module(name="input_pipeline")
    old.iterator = iter(data.make_dataset(cfg, "train"))
    unrecorded = tf.train.Checkpoint(input_pipeline=old).write(sys.argv[3] + "/old")
    fresh = data.DistributedInput(one, cfg, "train")
    print(json.dumps({"expected": expected, "got": got, "notes": [note_two_to_one, note_one_to_two],
                      "other_workers": fresh.resume_note(other_workers), "unrecorded": fresh.resume_note(unrecorded)}))
""")


def test_distributed_input_resumes_where_it_was_saved_on_any_replica_count(prepared_shapes, tmp_path):
    """DistributedInput on two CPU replicas, then one device, then two again: each step's replicas
    share the worker's global batch in order (replica 0 its first half), and a position saved on
    one replica count goes on on the other with the next batches, in both directions. A position
    saved by another number of workers, or before checkpoints recorded the layout, is named unfit."""
    r = subprocess.run([sys.executable, "-c", SAVED_POSITION, str(CONFIGS / "shapes_smoke.yaml"), str(prepared_shapes),
                        str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    got, expected = out["got"], out["expected"]
    assert [len(step) for step in got] == [2, 2, 1, 1, 2, 2] and all(len(r) == 8 // len(s) for s in got for r in s)
    assert [sum(step, []) for step in got] == expected
    assert len(set(sum(expected, []))) > 8  # the steps really moved on through the data
    assert out["notes"] == [None, None]
    assert "saved by 2 worker(s) reading 8 examples a step each, this run has 1 reading 8" in out["other_workers"]
    assert "before checkpoints recorded the input's layout" in out["unrecorded"]


SHAPE_SWAP = "train.wrong_word_swaps=[circle/disc square/block triangle]"


def test_one_word_swaps_travel_with_training_batches_and_change_nothing_else(prepared_shapes):
    plain = next(iter(data.make_dataset(_cfg(prepared_shapes, "shapes_smoke.yaml", "train.wrong_word_swaps=[]"), "train")))
    cfg = _cfg(prepared_shapes, "shapes_smoke.yaml", SHAPE_SWAP)
    batch = next(iter(data.make_dataset(cfg, "train")))
    assert "swapped_ids" not in plain
    # The swap's randomness is folded in: images, captions and noise are those of a run without it.
    for key in plain:
        for a, b in zip(tf.nest.flatten(plain[key]), tf.nest.flatten(batch[key])):
            np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=key)
    vocab = [w.strip() for w in open(data.vocabulary_path(str(prepared_shapes)), encoding="utf-8")]
    ids, swapped = batch["caption_ids"].numpy(), batch["swapped_ids"].numpy()
    shape_class = {"circle": 0, "disc": 0, "square": 1, "block": 1, "triangle": 2}
    assert batch["swapped_ids"].shape == batch["caption_ids"].shape and batch["swapped"].dtype == tf.float32
    assert (batch["swapped"].numpy() == 1.0).all()  # every shapes caption names its shape
    for before, after in zip(ids, swapped):
        (position,) = np.flatnonzero(before != after)
        old, new = vocab[before[position]], vocab[after[position]]
        assert shape_class[old] != shape_class[new]
    # Evaluation batches carry none.
    assert "swapped_ids" not in next(iter(data.make_dataset(cfg, "test")))


def test_check_prepared_names_a_swap_word_the_vocabulary_lacks(prepared_shapes):
    cfg = _cfg(prepared_shapes, "shapes_smoke.yaml", "train.wrong_word_swaps=[circle heptagon]")
    message = _refusal(cfg)
    assert "train.wrong_word_swaps[0]: 'heptagon' is not a word of" in message
    assert data.vocabulary_path(str(prepared_shapes)) in message
    assert data.check_prepared(cfg, stages=("damsm", "stream"))  # only the gan stage reads the key


def test_pair_discriminator_batches_hold_two_images_of_one_class_in_rows_2i_and_2i_plus_1(prepared_shapes):
    """model.pair_discriminator: the training pipeline regroups examples so that each pair of rows
    is two different images of one attribute class (its real pairs); without it they are not."""
    def batch(*overrides):
        return next(iter(data.make_dataset(_cfg(prepared_shapes, "shapes_smoke.yaml", *overrides), "train",
                                           batch_size=32)))

    paired, plain = batch("model.pair_discriminator=true"), batch()
    for b in (paired, plain):
        assert b["attributes"].shape == (32, 4)
    a = paired["attributes"].numpy()
    assert (a[0::2] == a[1::2]).all()
    images = paired["images"][-1].numpy()
    assert all(np.abs(images[2 * i] - images[2 * i + 1]).max() > 0.1 for i in range(16))  # two images, not one twice
    assert len({tuple(x) for x in a}) > 4  # many classes per batch
    p = plain["attributes"].numpy()
    assert not (p[0::2] == p[1::2]).all(axis=1).all()
    # Evaluation pipelines keep the manifest's order.
    test = next(iter(data.make_dataset(_cfg(prepared_shapes, "shapes_smoke.yaml", "model.pair_discriminator=true"),
                                       "test", batch_size=8)))
    plain_test = next(iter(data.make_dataset(_cfg(prepared_shapes, "shapes_smoke.yaml"), "test", batch_size=8)))
    np.testing.assert_array_equal(test["key"].numpy(), plain_test["key"].numpy())


def test_class_keys_take_the_class_where_known_else_the_attributes():
    keys = data.class_keys(tf.constant([7, -1, -1], tf.int64), tf.constant([[1, 2], [1, 2], [2, 1]], tf.int64))
    assert keys.numpy().tolist() == [7, 2001, 1002]
    assert data.class_keys(tf.constant([3, -1], tf.int64), tf.zeros([2, 0], tf.int64)).numpy().tolist() == [3, -1]


def test_check_prepared_refuses_the_pair_discriminator_on_a_dataset_without_classes(tmp_path, prepared_shapes):
    out = _own_captions(tmp_path, 40, test_fraction=0.25)
    cfg = _cfg(out, "shapes_smoke.yaml", "data.dataset=captions", "model.pair_discriminator=true",
               "train.batch_size=4", "damsm.batch_size=4", "stream.batch_size=4", "train.wrong_word_swaps=[]")
    message = _refusal(cfg)
    assert "model.pair_discriminator=true" in message and "neither attribute labels nor class ids" in message
    assert message.count("\n  - ") == 1
    data.check_prepared(_cfg(out, "shapes_smoke.yaml", "data.dataset=captions", "train.batch_size=4",
                             "damsm.batch_size=4", "stream.batch_size=4",
                             "train.wrong_word_swaps=[]"))  # without the switch: fine
    data.check_prepared(_cfg(prepared_shapes, "shapes_smoke.yaml", "model.pair_discriminator=true"))  # attributes
