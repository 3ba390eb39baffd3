"""Every kind of bad input stops preparation with a message naming the file and the problem, and
leaves nothing behind; `--on-error skip` converts the rest and lists what it skipped."""

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines import images
from pipelines.prepare import prepare
from pipelines.source import DatasetError
from tests.conftest import REPO, make_mini_cub, mini_cub_names


def _missing_image(root, name):
    path = root / "CUB_200_2011" / "images" / (name + ".jpg")
    path.unlink()
    return path, "image file missing"


def _missing_captions(root, name):
    path = root / "text" / (name + ".txt")
    path.unlink()
    return path, "cannot read file"


def _truncated_image(root, name):
    path = root / "CUB_200_2011" / "images" / (name + ".jpg")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path, "unreadable image"


def _blank_caption(root, name):
    path = root / "text" / (name + ".txt")
    lines = path.read_text().split("\n")
    lines[3] = "   "
    path.write_text("\n".join(lines))
    return Path(f"{path}:4"), "empty caption"


def _punctuation_caption(root, name):
    path = root / "text" / (name + ".txt")
    lines = path.read_text().split("\n")
    lines[0] = "... !!"
    path.write_text("\n".join(lines))
    return Path(f"{path}:1"), "empty caption"


def _wrong_line_count(root, name):
    path = root / "text" / (name + ".txt")
    lines = path.read_text().strip().split("\n")
    path.write_text("\n".join(lines[:9]) + "\n")
    return path, "expected 10 caption lines, found 9"


def _empty_caption_file(root, name):
    path = root / "text" / (name + ".txt")
    path.write_bytes(b"")
    return path, "expected 10 caption lines, found 0"


def _not_utf8(root, name):
    path = root / "text" / (name + ".txt")
    data = path.read_bytes()
    path.write_bytes(data[:20] + b"\xff\xfe" + data[20:])
    return path, "not valid UTF-8"


def _unknown_split_entry(root, name):
    path = root / "train" / "filenames.pickle"
    names = mini_cub_names(root)
    classes = pickle.load(open(root / "train" / "class_info.pickle", "rb"))
    pickle.dump(names + ["999.Nowhere/Nowhere_0001_1"], open(path, "wb"), protocol=2)
    pickle.dump(classes + [999], open(root / "train" / "class_info.pickle", "wb"), protocol=2)
    return path, "'999.Nowhere/Nowhere_0001_1', which"


CASES = {
    "missing image": _missing_image,
    "missing caption file": _missing_captions,
    "truncated image": _truncated_image,
    "blank caption line": _blank_caption,
    "caption with no words": _punctuation_caption,
    "wrong number of lines": _wrong_line_count,
    "empty caption file": _empty_caption_file,
    "bytes that are not UTF-8": _not_utf8,
    "split list names a file that does not exist": _unknown_split_entry,
}


def _leftovers(parent: Path):
    return [p.name for p in parent.iterdir() if p.name.startswith("out")]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_stops_with_a_message_and_leaves_nothing(case, cub_sample, tmp_path):
    root = make_mini_cub(cub_sample, tmp_path / "birds")
    victim = mini_cub_names(root)[1]
    path, problem = CASES[case](root, victim)
    out = tmp_path / "out"
    with pytest.raises(DatasetError) as e:
        prepare("cub", str(out), str(root), workers=1)
    assert str(path) in str(e.value) and problem in str(e.value)
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("case", CASES)
def test_skip_converts_the_rest_and_lists_what_it_skipped(case, cub_sample, tmp_path):
    root = make_mini_cub(cub_sample, tmp_path / "birds")
    victim = mini_cub_names(root)[1]
    path, problem = CASES[case](root, victim)
    out = tmp_path / "out"
    manifest = prepare("cub", str(out), str(root), workers=1, on_error="skip")
    assert len(manifest["skipped"]) == 1
    skipped = manifest["skipped"][0]
    assert skipped["file"] == str(path)
    assert problem in skipped["problem"]
    expected_key = "999.Nowhere/Nowhere_0001_1" if case.startswith("split list") else victim
    assert skipped["key"] == expected_key
    assert manifest["splits"]["train"]["examples"] == (4 if case.startswith("split list") else 3)
    assert manifest["splits"]["test"]["examples"] == 3
    assert json.loads((out / "manifest.json").read_text()) == manifest


def test_missing_metadata_and_existing_output_are_errors(cub_sample, tmp_path):
    root = make_mini_cub(cub_sample, tmp_path / "birds")
    (root / "CUB_200_2011" / "bounding_boxes.txt").unlink()
    with pytest.raises(DatasetError, match="bounding_boxes.txt: cannot read required file"):
        prepare("cub", str(tmp_path / "out"), str(root), workers=1)
    with pytest.raises(DatasetError, match="--source is required"):
        prepare("cub", str(tmp_path / "out"))
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    with pytest.raises(DatasetError, match="already exists"):
        prepare("shapes", str(existing), num_train=2, num_test=1, workers=1)
    assert (existing / "keep.txt").read_text() == "mine"


def test_overwrite_replaces_a_dataset_whole(tmp_path):
    out = tmp_path / "out"
    prepare("shapes", str(out), num_train=4, num_test=2, workers=1)
    prepare("shapes", str(out), num_train=6, num_test=2, workers=1, overwrite=True)
    assert json.loads((out / "manifest.json").read_text())["splits"]["train"]["examples"] == 6
    assert _leftovers(tmp_path) == ["out"]


def test_an_interrupt_mid_write_leaves_no_dataset(cub_sample, tmp_path, monkeypatch):
    root = make_mini_cub(cub_sample, tmp_path / "birds")
    calls = []

    def interrupted(job):
        calls.append(job)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(job)

    real = images.prepare_file
    monkeypatch.setattr(images, "prepare_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare("cub", str(tmp_path / "out"), str(root), workers=1)
    assert len(calls) == 3 and _leftovers(tmp_path) == []


def test_sigkill_mid_write_never_leaves_a_dataset_that_looks_complete(tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "pipelines.prepare", "--dataset", "shapes", "--num-train", "3000",
           "--num-test", "10", "--workers", "1", "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            partial = [p for p in tmp_path.iterdir() if ".incomplete-" in p.name]
            if partial and any(partial[0].glob("train-*")):
                break
            time.sleep(0.05)
        else:
            pytest.fail("preparation never started writing")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert not out.exists()
    partial = [p for p in tmp_path.iterdir() if ".incomplete-" in p.name]
    assert len(partial) == 1 and not (partial[0] / "manifest.json").exists()


def test_cli_reports_bad_input_with_exit_code_2(cub_sample, tmp_path):
    root = make_mini_cub(cub_sample, tmp_path / "birds")
    path, _ = _wrong_line_count(root, mini_cub_names(root)[0])
    r = subprocess.run([sys.executable, "-m", "pipelines.prepare", "--dataset", "cub", "--source", str(root),
                        "--out", str(tmp_path / "out"), "--workers", "1"],
                       cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 2
    assert f"error: {path}: expected 10 caption lines, found 9" in r.stderr
    assert not (tmp_path / "out").exists()
