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


def _own(root, rows, images):
    """A captions.jsonl with `rows` and a distinct image per name in `images`."""
    for i, name in enumerate(images):
        _image(root / name, (7 * i, 255 - 7 * i, 90))
    (root / "captions.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return root


def _ids(out, split):
    return {e["key"].numpy().decode(): e["caption_ids"].to_list() for e in _examples(out, split)}


def test_a_caption_whose_words_are_all_rare_is_bad_input(tmp_path):
    rows = [{"image": f"{n}.png", "caption": "a red card", "split": "train"} for n in "abc"]
    rows += [{"image": "d.png", "captions": ["a red card", "zebra quokka"], "split": "train"},
             {"image": "t.png", "caption": "a red card", "split": "test"}]
    root = _own(tmp_path / "mine", rows, ["a.png", "b.png", "c.png", "d.png", "t.png"])
    with pytest.raises(DatasetError) as e:
        prepare("captions", str(tmp_path / "out"), str(root), workers=1, min_count=2)
    assert "captions.jsonl:4: no word of this caption is in the vocabulary" in str(e.value)
    assert "--min-count 2" in str(e.value) and "'zebra quokka'" in str(e.value)
    assert not (tmp_path / "out").exists()
    manifest = prepare("captions", str(tmp_path / "out"), str(root), workers=1, min_count=2, on_error="skip")
    assert [s["key"] for s in manifest["skipped"]] == ["d.png"]
    assert manifest["splits"]["train"]["examples"] == 3
    assert all(all(ids) for ids in _ids(tmp_path / "out", "train").values())


def test_dropping_an_example_can_make_another_caption_all_rare(tmp_path):
    # min_count 2: "w" occurs twice, once in a.png, whose other caption is all rare. Once a.png
    # is dropped, "w" occurs once, and b.png's only caption has no word left.
    rows = [{"image": "a.png", "captions": ["zebra", "w"]}, {"image": "b.png", "caption": "w"},
            {"image": "c.png", "caption": "a red card"}, {"image": "d.png", "caption": "a red card"}]
    for r in rows:
        r["split"] = "train"
    rows.append({"image": "t.png", "caption": "a card", "split": "test"})
    root = _own(tmp_path / "mine", rows, ["a.png", "b.png", "c.png", "d.png", "t.png"])
    manifest = prepare("captions", str(tmp_path / "out"), str(root), workers=1, min_count=2, on_error="skip")
    assert [s["key"] for s in manifest["skipped"]] == ["a.png", "b.png"]
    assert (tmp_path / "out" / "vocab.txt").read_text().split() == ["<end>", "<unk>", "a", "card", "red"]
    assert _ids(tmp_path / "out", "test") == {"t.png": [[2, 3]]}


def test_a_test_caption_with_no_word_seen_in_training_is_bad_input(tmp_path):
    rows = [{"image": "a.png", "caption": "a red card", "split": "train"},
            {"image": "t.png", "captions": ["a card", "purple hexagon"], "split": "test"}]
    root = _own(tmp_path / "mine", rows, ["a.png", "t.png"])
    with pytest.raises(DatasetError, match="captions.jsonl:2: no word of this caption .*'purple hexagon'"):
        prepare("captions", str(tmp_path / "out"), str(root), workers=1)


def test_one_image_spelt_two_ways_in_train_and_test_is_refused(tmp_path):
    rows = [{"image": "img/a.jpg", "caption": "a red card", "split": "train"},
            {"image": "img/b.jpg", "caption": "a blue card", "split": "train"},
            {"image": "./img/a.jpg", "caption": "a card", "split": "test"},
            {"image": "img/c.jpg", "caption": "a red card", "split": "test"}]
    root = _own(tmp_path / "mine", rows, ["img/a.jpg", "img/b.jpg", "img/c.jpg"])
    with pytest.raises(DatasetError) as e:
        prepare("captions", str(tmp_path / "out"), str(root), workers=1)
    assert "captions.jsonl:3: img/a.jpg is in both the train (" in str(e.value)
    manifest = prepare("captions", str(tmp_path / "out"), str(root), workers=1, on_error="skip")
    assert [(s["key"], s["file"].rsplit("/", 1)[1]) for s in manifest["skipped"]] == [("img/a.jpg", "captions.jsonl:3")]
    train = _examples(tmp_path / "out", "train")
    assert [e["key"].numpy().decode() for e in train] == ["img/a.jpg", "img/b.jpg"]
    assert [c.decode() for c in train[0]["captions"].numpy()] == ["a red card", "a card"]
    assert [e["key"].numpy().decode() for e in _examples(tmp_path / "out", "test")] == ["img/c.jpg"]


def test_paths_are_normalised_before_images_are_grouped_and_split():
    from pipelines.captions import normalise_image_path

    for spelling in ("img/a.jpg", "./img/a.jpg", "img//a.jpg", "img/./a.jpg", "img\\a.jpg", "x/../img/a.jpg"):
        assert normalise_image_path(spelling) == "img/a.jpg"


def test_the_same_file_under_another_name_in_test_is_refused(tmp_path):
    rows = [{"image": "a.png", "caption": "a red card", "split": "train"},
            {"image": "b.png", "caption": "a red card", "split": "train"},
            {"image": "copy.png", "caption": "a card", "split": "test"},
            {"image": "link.png", "caption": "a card", "split": "test"}]
    root = _own(tmp_path / "mine", rows, ["a.png", "b.png"])
    (root / "copy.png").write_bytes((root / "a.png").read_bytes())
    (root / "link.png").symlink_to(root / "b.png")
    with pytest.raises(DatasetError, match="copy.png is in the test split and, as a byte-identical copy of .*a.png"):
        prepare("captions", str(tmp_path / "out"), str(root), workers=1)
    manifest = prepare("captions", str(tmp_path / "out"), str(root), workers=1, on_error="skip")
    assert [s["key"] for s in manifest["skipped"]] == ["copy.png", "link.png"]
    assert "as the same file as" in manifest["skipped"][1]["problem"]
    assert manifest["splits"]["test"]["examples"] == 0 and manifest["splits"]["train"]["examples"] == 2


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_a_byte_order_mark_from_excel_is_accepted(tmp_path, suffix):
    root = tmp_path / "mine"
    _image(root / "a.png", (200, 0, 0))
    _image(root / "t.png", (0, 0, 200))
    if suffix == ".csv":
        body = "image,caption,split\r\na.png,a red card,train\r\nt.png,a card,test\r\n"
    else:
        body = '{"image": "a.png", "caption": "a red card", "split": "train"}\n' \
               '{"image": "t.png", "caption": "a card", "split": "test"}\n'
    (root / f"captions{suffix}").write_bytes(b"\xef\xbb\xbf" + body.encode("utf-8"))
    manifest = prepare("captions", str(tmp_path / "out"), str(root), workers=1)
    assert manifest["splits"]["train"]["examples"] == 1
    assert [c.decode() for c in _examples(tmp_path / "out", "train")[0]["captions"].numpy()] == ["a red card"]


def test_utf16_caption_files_are_named_as_such(tmp_path):
    root = tmp_path / "mine"
    _image(root / "a.png", (200, 0, 0))
    (root / "captions.csv").write_bytes("image,caption\na.png,a red card\n".encode("utf-16"))
    with pytest.raises(DatasetError, match="captions.csv: UTF-16 text .* save it as UTF-8"):
        prepare("captions", str(tmp_path / "out"), str(root), workers=1)


def test_coco_annotations_with_a_byte_order_mark_are_read(tmp_path):
    root = _coco(tmp_path / "coco")
    path = root / "annotations" / "captions_val2014.json"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    manifest = prepare("coco", str(tmp_path / "out"), str(root), workers=1)
    assert manifest["splits"]["test"]["examples"] == 1


def test_background_option_reaches_the_stored_image(tmp_path):
    root = tmp_path / "mine"
    root.mkdir()
    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(root / "clear.png")
    _image(root / "t.png", (0, 0, 200))
    (root / "captions.jsonl").write_text('{"image": "clear.png", "caption": "nothing", "split": "train"}\n'
                                         '{"image": "t.png", "caption": "nothing", "split": "test"}\n')
    import io

    import numpy as np

    for background, rgb in (("white", (255, 255, 255)), ("#204060", (32, 64, 96))):
        out = tmp_path / f"out-{rgb[0]}"
        manifest = prepare("captions", str(out), str(root), workers=1, background=background)
        stored = np.asarray(Image.open(io.BytesIO(_examples(out, "train")[0]["image"].numpy())))
        np.testing.assert_allclose(stored.reshape(-1, 3).mean(0), rgb, atol=1.5)
        assert manifest["details"]["background"] == list(rgb)
    with pytest.raises(DatasetError, match="--background"):
        prepare("captions", str(tmp_path / "bad"), str(root), workers=1, background="nope")


def _break_annotation(root, fix):
    """Apply `fix(images, annotations)` to the train annotation file of `_coco`."""
    path = root / "annotations" / "captions_train2014.json"
    data = json.loads(path.read_text())
    fix(data["images"], data["annotations"])
    path.write_text(json.dumps(data))
    return path


def _set(index, field, value, where="annotations"):
    def fix(imgs, anns):
        target = (anns if where == "annotations" else imgs)[index]
        if value is KeyError:
            del target[field]
        else:
            target[field] = value
    return fix


# (what is broken, message, the skipped key: None when the annotation names no listed image)
BROKEN_COCO = {
    "caption null": (_set(7, "caption", None), "annotation id 92 (image id 2, COCO_train2014_000000000001.jpg): "
                     "'caption' is null, expected a string", "train2014/COCO_train2014_000000000001"),
    "caption a number": (_set(0, "caption", 7), "annotation id 99 (image id 1, COCO_train2014_000000000000.jpg): "
                         "'caption' is the number 7", "train2014/COCO_train2014_000000000000"),
    "caption missing": (_set(0, "caption", KeyError), "annotation id 99 (image id 1, "
                        "COCO_train2014_000000000000.jpg): 'caption' is null", "train2014/COCO_train2014_000000000000"),
    "annotation id missing": (_set(0, "id", KeyError), "annotations[0] (image id 1, COCO_train2014_000000000000.jpg): "
                              "'id' is null, expected an integer", "train2014/COCO_train2014_000000000000"),
    "image_id missing": (_set(0, "image_id", KeyError), "annotation id 99: 'image_id' is null, expected an integer",
                         None),
    "image_id unknown": (_set(0, "image_id", 42), "annotation id 99: image id 42 is not in the 'images' list", None),
    "file_name missing": (_set(1, "file_name", KeyError, "images"), "images[1] (image id 2): 'file_name' is null",
                          "train2014/image id 2"),
    "image id a string": (_set(0, "id", "1", "images"), "images[0] ('COCO_train2014_000000000000.jpg'): 'id' is the string "
                          "'1', expected an integer", "train2014/COCO_train2014_000000000000"),
}


@pytest.mark.parametrize("case", BROKEN_COCO)
def test_malformed_coco_annotations_name_the_file_and_annotation(tmp_path, case):
    fix, message, key = BROKEN_COCO[case]
    root = _coco(tmp_path / "coco", per_image=(6, 6))
    path = _break_annotation(root, fix)
    with pytest.raises(DatasetError) as e:
        prepare("coco", str(tmp_path / "out"), str(root), workers=1)
    assert str(e.value).startswith(f"{path}: ") and message in str(e.value)
    assert not (tmp_path / "out").exists()
    manifest = prepare("coco", str(tmp_path / "out"), str(root), workers=1, on_error="skip")
    assert [(s["key"], s["file"]) for s in manifest["skipped"]] == [(key, str(path))]
    assert message in manifest["skipped"][0]["problem"]
    # the other image (or both, when the annotation named none: the image keeps five captions)
    assert manifest["splits"]["train"]["examples"] == (2 if key is None else 1)


def test_an_empty_coco_caption_is_named_by_its_annotation_id(tmp_path):
    root = _coco(tmp_path / "coco")
    path = _break_annotation(root, _set(0, "caption", "  "))
    with pytest.raises(DatasetError, match=rf"{path} \(image id 1, annotation id 99\): empty caption"):
        prepare("coco", str(tmp_path / "out"), str(root), workers=1)


@pytest.mark.parametrize("row, message", [
    ({"image": "x.png", "caption": None}, "'caption' is null, expected a string"),
    ({"image": "x.png", "caption": ["a", "b"]}, "'caption' is a list ['a', 'b'], expected a string"),
    ({"image": "x.png", "captions": []}, "'captions' must be a non-empty list of strings"),
    ({"image": "x.png", "captions": ["fine", None]}, "'captions' must be a non-empty list of strings"),
    ({"image": "x.png", "caption": "a red card", "label": "three"}, "'label' must be an integer"),
])
def test_own_captions_malformed_fields_skip_the_image(tmp_path, row, message):
    rows = [{"image": "y.png", "caption": "a red card", "split": "train"},
            {"image": "x.png", "caption": "a blue card", "split": "train"},
            {**row, "split": "train"},
            {"image": "t.png", "caption": "a card", "split": "test"}]
    root = _own(tmp_path / "mine", rows, ["x.png", "y.png", "t.png"])
    with pytest.raises(DatasetError) as e:
        prepare("captions", str(tmp_path / "out"), str(root), workers=1)
    assert f"captions.jsonl:3: {message}" in str(e.value)
    manifest = prepare("captions", str(tmp_path / "out"), str(root), workers=1, on_error="skip")
    assert [(s["key"], s["file"].rsplit("/", 1)[1]) for s in manifest["skipped"]] == [("x.png", "captions.jsonl:3")]
    assert [e["key"].numpy().decode() for e in _examples(tmp_path / "out", "train")] == ["y.png"]


def test_own_captions_row_naming_no_image_is_listed_under_skip(tmp_path):
    rows = [{"image": "y.png", "caption": "a red card", "split": "train"}, {"image": None, "caption": "lost"},
            {"image": "t.png", "caption": "a card", "split": "test"}]
    root = _own(tmp_path / "mine", rows, ["y.png", "t.png"])
    with pytest.raises(DatasetError, match="captions.jsonl:2: 'image' is null, expected a path"):
        prepare("captions", str(tmp_path / "out"), str(root), workers=1)
    manifest = prepare("captions", str(tmp_path / "out"), str(root), workers=1, on_error="skip")
    assert [(s["key"], s["file"].rsplit("/", 1)[1]) for s in manifest["skipped"]] == [(None, "captions.jsonl:2")]
    assert manifest["splits"]["train"]["examples"] == 1


def test_cli_names_the_null_caption_and_lists_it_under_skip(tmp_path, capsys):
    from pipelines.prepare import main

    root = _coco(tmp_path / "coco", per_image=(5, 5))
    path = _break_annotation(root, _set(0, "caption", None))
    args = ["--dataset", "coco", "--source", str(root), "--workers", "1", "--out", str(tmp_path / "out")]
    assert main(args) == 2  # run_cli: `error: ...`, no traceback
    assert capsys.readouterr().err == (f"error: {path}: annotation id 99 (image id 1, "
                                       "COCO_train2014_000000000000.jpg): 'caption' is null, expected a string\n")
    assert main(args + ["--on-error", "skip"]) == 0
    assert f"skipped train2014/COCO_train2014_000000000000: {path}: annotation id 99" in capsys.readouterr().out
