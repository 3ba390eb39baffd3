"""The COCO reader and the bring-your-own-captions reader, on small datasets made here."""

import json

import pytest
from PIL import Image

from pipelines.prepare import prepare
from pipelines.source import DatasetError
from tests.test_cub import _examples


def _image(path, colour, mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 30), colour).convert(mode).save(path, format="JPEG" if path.suffix == ".jpg" else "PNG")


def _coco(root, per_image=(5, 6), val=1):
    (root / "annotations").mkdir(parents=True)
    ann_id = 100
    for folder, count in (("train2014", len(per_image)), ("val2014", val)):
        imgs, anns = [], []
        for i in range(count):
            name = f"COCO_{folder}_{i:012d}.jpg"
            # val images differ from train ones: a byte-identical pair is a train/test overlap
            _image(root / folder / name, (10 * i, 100 if folder == "train2014" else 50, 200))
            imgs.append({"id": i + 1, "file_name": name})
            n = per_image[i] if folder == "train2014" else 5
            for j in range(n):
                ann_id -= 1  # ids not in file order: the reader sorts them
                anns.append({"id": ann_id, "image_id": i + 1, "caption": f"A photo number {i} caption {j}."})
        (root / "annotations" / f"captions_{folder}.json").write_text(json.dumps({"images": imgs, "annotations": anns}))
    return root


def test_coco_keeps_five_captions_per_image(tmp_path):
    root = _coco(tmp_path / "coco")
    manifest = prepare("coco", str(tmp_path / "out"), str(root), workers=1)
    assert manifest["splits"]["train"]["examples"] == 2 and manifest["splits"]["test"]["examples"] == 1
    assert manifest["captions_per_image"] == 5
    train = _examples(tmp_path / "out", "train")
    second = [c.decode() for c in train[1]["captions"].numpy()]
    assert second == [f"A photo number 1 caption {j}." for j in (5, 4, 3, 2, 1)]  # first five by annotation id
    assert train[0]["key"].numpy() == b"train2014/COCO_train2014_000000000000"
    assert int(train[0]["class_id"]) == -1


def test_coco_bad_input(tmp_path):
    root = _coco(tmp_path / "coco", per_image=(5, 4))
    with pytest.raises(DatasetError, match="captions_train2014.json: image id 2 .* has 4 captions"):
        prepare("coco", str(tmp_path / "out"), str(root), workers=1)
    (root / "annotations" / "captions_val2014.json").write_text("{not json")
    with pytest.raises(DatasetError, match="captions_val2014.json: not valid JSON"):
        prepare("coco", str(tmp_path / "out"), str(root), workers=1, on_error="skip")
    assert not (tmp_path / "out").exists()


def test_own_captions_jsonl_with_any_number_of_captions(tmp_path):
    root = tmp_path / "mine"
    _image(root / "photos" / "a.jpg", (200, 10, 10))
    _image(root / "photos" / "b.png", (10, 200, 10), mode="RGB")
    _image(root / "photos" / "c.jpg", (10, 10, 200), mode="L")
    rows = [
        {"image": "photos/a.jpg", "caption": "a red card", "split": "train", "label": 3},
        {"image": "photos/a.jpg", "captions": ["red", "a card that is red"], "split": "train"},
        {"image": "photos/b.png", "caption": "green card", "split": "train"},
        {"image": "photos/c.jpg", "caption": "a grey card", "split": "test"},
    ]
    (root / "captions.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    manifest = prepare("captions", str(tmp_path / "out"), str(root), workers=1)
    assert manifest["captions_per_image"] is None
    train = _examples(tmp_path / "out", "train")
    assert [e["key"].numpy().decode() for e in train] == ["photos/a.jpg", "photos/b.png"]
    assert [c.decode() for c in train[0]["captions"].numpy()] == ["a red card", "red", "a card that is red"]
    assert int(train[0]["class_id"]) == 3 and int(train[1]["class_id"]) == -1
    assert _examples(tmp_path / "out", "test")[0]["key"].numpy() == b"photos/c.jpg"


def test_own_captions_csv_with_a_deterministic_held_out_split(tmp_path):
    root = tmp_path / "mine"
    lines = ["image,caption"]
    for i in range(40):
        _image(root / f"{i}.png", (i, i, i))
        lines.append(f'{i}.png,"picture {i}, a square"')
    (root / "captions.csv").write_text("\n".join(lines) + "\n")
    m1 = prepare("captions", str(tmp_path / "o1"), str(root / "captions.csv"), workers=1, test_fraction=0.25)
    m2 = prepare("captions", str(tmp_path / "o2"), str(root), workers=1, test_fraction=0.25)
    assert m1["splits"] == m2["splits"]
    assert 2 <= m1["splits"]["test"]["examples"] <= 20
    assert m1["splits"]["train"]["examples"] + m1["splits"]["test"]["examples"] == 40


@pytest.mark.parametrize("content, message", [
    ('{"image": "x.png"}\n', "missing 'caption'"),
    ('{"caption": "hi"}\n', "missing 'image'"),
    ("[1, 2]\n", "expected a JSON object"),
    ("{oops\n", "not valid JSON"),
    ('{"image": "x.png", "caption": "hi", "split": "val"}\n', "'split' must be one of"),
    ('{"image": "x.png", "caption": "hi", "split": "train"}\n{"image": "y.png", "caption": "yo"}\n', "name a split"),
    ('{"image": "missing.png", "caption": "hi"}\n', "missing.png: image file missing"),
])
def test_own_captions_bad_input_names_the_line(tmp_path, content, message):
    root = tmp_path / "mine"
    _image(root / "x.png", (1, 2, 3))
    _image(root / "y.png", (1, 2, 3))
    (root / "captions.jsonl").write_text(content)
    with pytest.raises(DatasetError) as e:
        prepare("captions", str(tmp_path / "out"), str(root), workers=1)
    assert message in str(e.value) and "mine" in str(e.value)
    assert not (tmp_path / "out").exists()


def test_own_captions_need_a_caption_file(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no captions.jsonl or captions.csv"):
        prepare("captions", str(tmp_path / "out"), str(tmp_path / "empty"))
