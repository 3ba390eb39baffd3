"""`pipelines.prepare --vocab FILE`: preparing with a given vocabulary, such as the one converted
from AttnGAN's released captions.pickle (id 0 '<end>', ids 1.. words, no '<unk>')."""

import hashlib
import json
import subprocess
import sys

import pytest

from pipelines.prepare import prepare
from pipelines.source import DatasetError
from tests.conftest import REPO
from tests.test_coco_captions import _ids, _own

ATTNGAN = ["<end>", "bird", "a", "red", "wings", "small"]


def _dataset(tmp_path):
    rows = [{"image": "a.png", "captions": ["A red bird", "bird with red wings"], "split": "train"},
            {"image": "b.png", "caption": "a small bird, mostly red", "split": "train"},
            {"image": "t.png", "caption": "small wings", "split": "test"}]
    return _own(tmp_path / "mine", rows, ["a.png", "b.png", "t.png"])


def _vocab(tmp_path, words, name="vocab.txt", newline="\n", bom=b""):
    path = tmp_path / name
    path.write_bytes(bom + newline.join(words).encode() + newline.encode())
    return path


def test_prepare_with_a_vocabulary_without_unk(tmp_path):
    vocab = _vocab(tmp_path, ATTNGAN)
    manifest = prepare("captions", str(tmp_path / "out"), str(_dataset(tmp_path)), workers=1, vocab=str(vocab))
    # "bird" is id 1, a word; "with" and "mostly" are not in the vocabulary and are dropped.
    assert _ids(tmp_path / "out", "train") == {"a.png": [[2, 3, 1], [1, 3, 4]], "b.png": [[2, 5, 1, 3]]}
    assert _ids(tmp_path / "out", "test") == {"t.png": [[5, 4]]}
    assert (tmp_path / "out" / "vocab.txt").read_text() == "\n".join(ATTNGAN) + "\n"
    assert manifest["vocab_size"] == 6
    assert manifest["vocabulary_origin"] == {
        "given": True, "source": str(vocab), "sha256": hashlib.sha256(vocab.read_bytes()).hexdigest()}
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["vocabulary_origin"]["given"] is True


def test_prepare_with_a_vocabulary_with_unk_and_windows_line_ends(tmp_path):
    words = ["<end>", "<unk>", "red", "bird", "small", "wings", "a"]
    vocab = _vocab(tmp_path, words, newline="\r\n", bom=b"\xef\xbb\xbf")
    manifest = prepare("captions", str(tmp_path / "out"), str(_dataset(tmp_path)), workers=1, vocab=str(vocab))
    assert _ids(tmp_path / "out", "train")["a.png"] == [[6, 2, 3], [3, 2, 5]]
    assert (tmp_path / "out" / "vocab.txt").read_bytes() == ("\n".join(words) + "\n").encode()  # LF, no BOM
    assert manifest["vocab_size"] == 7
    assert manifest["vocabulary_origin"]["sha256"] == hashlib.sha256(vocab.read_bytes()).hexdigest()


def test_a_built_vocabulary_is_recorded_as_built(tmp_path):
    manifest = prepare("captions", str(tmp_path / "out"), str(_dataset(tmp_path)), workers=1)
    assert manifest["vocabulary_origin"] == {"given": False, "built_from": "training captions", "min_count": 1}
    assert (tmp_path / "out" / "vocab.txt").read_text().split("\n")[:2] == ["<end>", "<unk>"]


def test_captions_with_no_word_of_the_given_vocabulary_are_bad_input(tmp_path):
    vocab = _vocab(tmp_path, ["<end>", "small", "a"])
    root = _dataset(tmp_path)
    with pytest.raises(DatasetError) as e:
        prepare("captions", str(tmp_path / "out"), str(root), workers=1, vocab=str(vocab))
    assert f"captions.jsonl:1: no word of this caption is in the vocabulary {vocab}: 'bird with red wings'" in str(e.value)
    manifest = prepare("captions", str(tmp_path / "out"), str(root), workers=1, vocab=str(vocab), on_error="skip")
    assert [s["key"] for s in manifest["skipped"]] == ["a.png"]
    assert _ids(tmp_path / "out", "train") == {"b.png": [[2, 1]]}
    assert _ids(tmp_path / "out", "test") == {"t.png": [[1]]}


@pytest.mark.parametrize("words, kwargs, message", [
    (["bird", "<end>"], {}, "--vocab .*vocab.txt: not a vocabulary file"),
    (["<end>", "bird", "bird"], {}, r"--vocab .*vocab.txt:3: 'bird' is already at line 2"),
    (ATTNGAN, {"min_count": 2}, "--min-count 2 and --vocab"),
])
def test_a_given_vocabulary_is_checked_first(tmp_path, words, kwargs, message):
    vocab = _vocab(tmp_path, words)
    with pytest.raises(DatasetError, match=message):
        prepare("captions", str(tmp_path / "out"), str(_dataset(tmp_path)), workers=1, vocab=str(vocab), **kwargs)
    assert not (tmp_path / "out").exists()
    with pytest.raises(DatasetError, match="--vocab .*missing.txt: cannot read file"):
        prepare("captions", str(tmp_path / "out"), str(_dataset(tmp_path)), workers=1, vocab=str(tmp_path / "missing.txt"))


def test_cli_vocab_and_background_options(tmp_path):
    vocab = _vocab(tmp_path, ATTNGAN)
    r = subprocess.run([sys.executable, "-m", "pipelines.prepare", "--dataset", "captions", "--source",
                        str(_dataset(tmp_path)), "--out", str(tmp_path / "out"), "--workers", "1",
                        "--vocab", str(vocab), "--background", "#102030"],
                       cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["vocabulary_origin"]["source"] == str(vocab) and manifest["vocab_size"] == 6
    assert manifest["details"]["background"] == [16, 32, 48]
