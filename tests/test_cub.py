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
