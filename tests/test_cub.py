import io
import json
import pickle

import numpy as np
import tensorflow as tf
from PIL import Image

from mirrorgan_tf import records, text
from pipelines import images
from pipelines.prepare import prepare
from tests.conftest import make_mini_cub, mini_cub_names


def _examples(root, split):
    manifest = json.loads((root / "manifest.json").read_text())
    files = [str(root / s) for s in manifest["splits"][split]["shards"]]
    return [records.parse_example(r) for r in tf.data.TFRecordDataset(files)]


def test_cub_sample_converts_with_all_its_captions(prepared_cub, cub_sample):
    manifest = json.loads((prepared_cub / "manifest.json").read_text())
    assert manifest["splits"]["train"]["examples"] == 275
    assert manifest["splits"]["test"]["examples"] == 268
    assert manifest["splits"]["train"]["captions"] == 2750
    assert manifest["captions_per_image"] == 10 and manifest["skipped"] == []
    assert manifest["dataset"] == "cub" and manifest["tool_version"]
    vocab = text.read_vocabulary(str(prepared_cub / "vocab.txt"))
    assert manifest["vocab_size"] == len(vocab) and vocab[:2] == ["<end>", "<unk>"]

    train = _examples(prepared_cub, "train")
    names = pickle.load(open(cub_sample / "train" / "filenames.pickle", "rb"), encoding="latin1")
    classes = pickle.load(open(cub_sample / "train" / "class_info.pickle", "rb"), encoding="latin1")
    assert [e["key"].numpy().decode() for e in train] == names
    assert [int(e["class_id"]) for e in train] == classes
    first = train[0]
    lines = (cub_sample / "text" / (names[0] + ".txt")).read_text().strip().split("\n")
    assert [c.decode() for c in first["captions"].numpy()] == lines
    tok = text.Tokenizer(str(prepared_cub / "vocab.txt"))
    assert first["caption_ids"].to_list() == tok(lines).to_list()
    # Train-only vocabulary: every training word is known, so no training caption lost a word.
    assert first["caption_ids"].row_lengths().numpy().tolist() == text.split_words(lines).row_lengths().numpy().tolist()


def test_images_are_cropped_around_the_bounding_box(prepared_cub, cub_sample):
    example = _examples(prepared_cub, "test")[0]
    key = example["key"].numpy().decode()
    ids = dict(l.split() for l in (cub_sample / "CUB_200_2011" / "images.txt").read_text().splitlines())
    image_id = next(i for i, p in ids.items() if p == key + ".jpg")
    box = [float(v) for v in next(l.split()[1:] for l in (cub_sample / "CUB_200_2011" / "bounding_boxes.txt")
                                  .read_text().splitlines() if l.split()[0] == image_id)]
    original = Image.open(cub_sample / "CUB_200_2011" / "images" / (key + ".jpg")).convert("RGB")
    x1, y1, x2, y2 = images.bbox_crop_box(box, original.width, original.height)
    stored = np.asarray(Image.open(io.BytesIO(example["image"].numpy())))
    assert stored.shape == (y2 - y1, x2 - x1, 3)
    expected = np.asarray(original.crop((x1, y1, x2, y2)), dtype=float)
    assert np.abs(stored.astype(float) - expected).mean() < 3  # JPEG q95 re-encoding


def test_crop_box_is_the_original_rule():
    # A 100 x 40 box at (50, 60): side 1.5 x 100 = 150 around centre (100, 80), clipped to the image.
    assert images.bbox_crop_box((50, 60, 100, 40), 500, 400) == (25, 5, 175, 155)
    assert images.bbox_crop_box((0, 0, 100, 40), 120, 60) == (0, 0, 120, 60)


def test_grayscale_and_cmyk_images_become_rgb(cub_sample, tmp_path):
    root = make_mini_cub(cub_sample, tmp_path / "birds", train=3, test=1)
    names = mini_cub_names(root)
    for name, mode in zip(names, ("L", "CMYK")):
        path = root / "CUB_200_2011" / "images" / (name + ".jpg")
        Image.open(path).convert(mode).save(path, format="JPEG", quality=95)
    out = tmp_path / "out"
    prepare("cub", str(out), str(root), workers=1)
    stored = {e["key"].numpy().decode(): np.asarray(Image.open(io.BytesIO(e["image"].numpy())))
              for e in _examples(out, "train")}
    for name in names[:2]:
        assert stored[name].ndim == 3 and stored[name].shape[2] == 3
    gray = stored[names[0]].astype(int)
    assert np.abs(gray[..., 0] - gray[..., 1]).max() <= 8  # grey stays grey


def test_a_name_in_both_split_lists_is_refused_or_kept_in_train_only(cub_sample, tmp_path):
    import pytest

    from pipelines.source import DatasetError

    root = make_mini_cub(cub_sample, tmp_path / "birds", train=3, test=2)
    shared = mini_cub_names(root, "train")[1]
    names = mini_cub_names(root, "test") + [shared]
    classes = pickle.load(open(root / "test" / "class_info.pickle", "rb")) + [7]
    pickle.dump(names, open(root / "test" / "filenames.pickle", "wb"), protocol=2)
    pickle.dump(classes, open(root / "test" / "class_info.pickle", "wb"), protocol=2)
    with pytest.raises(DatasetError) as e:
        prepare("cub", str(tmp_path / "out"), str(root), workers=1)
    message = str(e.value)
    assert message.startswith(f"{root / 'test' / 'filenames.pickle'}: {shared} is in the test split")
    assert str(root / "train" / "filenames.pickle") in message
    manifest = prepare("cub", str(tmp_path / "out"), str(root), workers=1, on_error="skip")
    assert [s["key"] for s in manifest["skipped"]] == [shared]
    assert manifest["splits"]["train"]["examples"] == 3 and manifest["splits"]["test"]["examples"] == 2
    assert shared not in [e["key"].numpy().decode() for e in _examples(tmp_path / "out", "test")]


def test_split_pickles_with_bytes_names_and_numpy_classes_are_read(cub_sample, tmp_path):
    root = make_mini_cub(cub_sample, tmp_path / "birds", train=3, test=2)
    names = mini_cub_names(root, "train")
    classes = pickle.load(open(root / "train" / "class_info.pickle", "rb"))
    pickle.dump([n.encode("utf-8") for n in names], open(root / "train" / "filenames.pickle", "wb"))
    pickle.dump(np.array(classes, np.int64), open(root / "train" / "class_info.pickle", "wb"))
    test_names = mini_cub_names(root, "test")
    pickle.dump(np.array(test_names), open(root / "test" / "filenames.pickle", "wb"))  # NumPy str_ names
    manifest = prepare("cub", str(tmp_path / "out"), str(root), workers=1)
    assert manifest["splits"]["train"]["examples"] == 3
    train = _examples(tmp_path / "out", "train")
    assert [e["key"].numpy().decode() for e in train] == names
    assert [int(e["class_id"]) for e in train] == classes
    assert [e["key"].numpy().decode() for e in _examples(tmp_path / "out", "test")] == test_names


def test_split_pickles_of_another_shape_are_named(cub_sample, tmp_path):
    import pytest

    from pipelines.source import DatasetError

    root = make_mini_cub(cub_sample, tmp_path / "birds", train=3, test=2)
    names_path = root / "train" / "filenames.pickle"
    classes_path = root / "train" / "class_info.pickle"
    pickle.dump(np.zeros((3, 2), np.int64), open(classes_path, "wb"))
    with pytest.raises(DatasetError, match=r"class_info.pickle: expected one class number per name in .* "
                                           r"\(3 names\), found a numpy.ndarray of shape \(3, 2\)"):
        prepare("cub", str(tmp_path / "out"), str(root), workers=1)
    pickle.dump({"names": mini_cub_names(root, "test")}, open(names_path, "wb"))
    with pytest.raises(DatasetError, match="filenames.pickle: expected a list of names .*, found a dict of 1"):
        prepare("cub", str(tmp_path / "out"), str(root), workers=1)


def test_cub_text_files_with_a_byte_order_mark(cub_sample, tmp_path):
    root = make_mini_cub(cub_sample, tmp_path / "birds", train=3, test=2)
    name = mini_cub_names(root)[0]
    caption_file = root / "text" / (name + ".txt")
    lines = caption_file.read_text().strip().split("\n")
    caption_file.write_bytes(b"\xef\xbb\xbf" + caption_file.read_bytes())
    for meta in ("images.txt", "bounding_boxes.txt"):
        path = root / "CUB_200_2011" / meta
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    prepare("cub", str(tmp_path / "out"), str(root), workers=1)
    first = _examples(tmp_path / "out", "train")[0]
    assert [c.decode() for c in first["captions"].numpy()] == lines  # no "\ufeff" before the first caption


def test_a_name_listed_twice_in_one_split_is_reported(cub_sample, tmp_path):
    root = make_mini_cub(cub_sample, tmp_path / "birds", train=3, test=2)
    names = mini_cub_names(root)
    classes = pickle.load(open(root / "train" / "class_info.pickle", "rb"))
    pickle.dump(names + [names[0]], open(root / "train" / "filenames.pickle", "wb"), protocol=2)
    pickle.dump(classes + [classes[0]], open(root / "train" / "class_info.pickle", "wb"), protocol=2)
    manifest = prepare("cub", str(tmp_path / "out"), str(root), workers=1, on_error="skip")
    assert [(s["key"], s["problem"]) for s in manifest["skipped"]] == [
        (names[0], f"{names[0]} is listed twice in the train split")]
    assert [e["key"].numpy().decode() for e in _examples(tmp_path / "out", "train")] == names
