"""A damaged prepared dataset (a shard cut short, a byte changed in place, a manifest from before
shard sizes were kept) is named, with the shard, the byte offset and the fix: sizes on every
start, checksums and record CRCs on demand (`python -m pipelines.check`), and a record that fails
to read mid-training."""

import hashlib
import json
import shutil
import struct

import pytest
import tensorflow as tf

from mirrorgan_tf import data
from mirrorgan_tf.config import load_config
from pipelines import check
from tests.conftest import CONFIGS, smoke_train


def _copy(prepared, tmp_path, name="copy", old=False):
    """A copy of the prepared dataset; `old`: its manifest without shard sizes and checksums, as
    datasets prepared before they were kept have."""
    out = tmp_path / name
    shutil.copytree(prepared, out)
    if old:
        manifest = json.loads((out / data.MANIFEST).read_text())
        del manifest[data.SHARD_FILES]
        (out / data.MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return out


def _train_shard(out):
    return out / json.loads((out / data.MANIFEST).read_text())["splits"]["train"]["shards"][0]


def _flip(path, at=None):
    raw = bytearray(path.read_bytes())
    at = len(raw) // 2 if at is None else at
    raw[at] ^= 0xFF
    path.write_bytes(bytes(raw))


def _cfg(out):
    return load_config(CONFIGS / "shapes_smoke.yaml", [f"data.dir={out}"])


def test_the_manifest_records_each_shards_size_and_sha256(prepared_shapes):
    manifest = json.loads((prepared_shapes / data.MANIFEST).read_text())
    names = [n for info in manifest["splits"].values() for n in info["shards"]]
    assert len(names) > 2 and sorted(manifest[data.SHARD_FILES]) == sorted(names)
    for name in names:
        raw = (prepared_shapes / name).read_bytes()
        assert manifest[data.SHARD_FILES][name] == {"bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}
    assert data.check_shards(str(prepared_shapes)) == ([], None)
    assert data.verify_shards(str(prepared_shapes)) == ([], [])


def test_a_truncated_shard_is_refused_before_any_stage_writes_anything(prepared_shapes, tmp_path):
    out = _copy(prepared_shapes, tmp_path)
    shard = _train_shard(out)
    size = shard.stat().st_size
    with open(shard, "r+b") as f:
        f.truncate(size - 1000)  # the issue's `truncate -s -1000`
    message = str(pytest.raises(data.DataError, data.check_prepared, _cfg(out)).value)
    assert f"{shard}: {size - 1000} bytes, but the manifest records {size} (truncated)" in message
    assert "copy the file again" in message and "prepare the dataset again" in message

    run = tmp_path / "run"
    r = smoke_train(run, out)
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    assert f"error: {out / data.MANIFEST}: this dataset cannot be trained on as configured" in r.stderr
    assert f"{shard}: {size - 1000} bytes" in r.stderr and "Traceback" not in r.stderr
    assert not run.exists() or not any(run.iterdir())  # no config.yaml, data.json, vocab.txt or logs
    assert "damsm" not in r.stdout


def test_a_byte_changed_in_place_keeps_the_size_and_is_caught_by_verify(prepared_shapes, tmp_path, capsys):
    out = _copy(prepared_shapes, tmp_path)
    shard = _train_shard(out)
    _flip(shard)
    assert data.check_shards(str(out)) == ([], None)  # the size alone cannot tell
    problems, _ = data.verify_shards(str(out))
    assert len(problems) == 1
    assert problems[0].startswith(f"{shard}: sha256 ")
    assert "but the manifest records" in problems[0] and "corrupted record at byte " in problems[0]
    assert problems[0].endswith(data.SHARD_FIX)

    assert check.main([str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {out}: 1 problem(s)") and str(shard) in err
    assert check.main([str(prepared_shapes)]) == 0
    assert "every shard intact" in capsys.readouterr().out


def test_a_read_error_mid_training_names_the_shard_and_the_offset(prepared_shapes, tmp_path):
    out = _copy(prepared_shapes, tmp_path)
    shard = _train_shard(out)
    _flip(shard)
    r = smoke_train(tmp_path / "run", out)
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    assert f"error: {shard}: corrupted record at byte " in r.stderr
    assert "the shard is damaged; copy the file again" in r.stderr


def test_explain_read_error_finds_the_shard_behind_tensorflows_message(prepared_shapes, tmp_path):
    out = _copy(prepared_shapes, tmp_path, old=True)  # no sizes: found by reading the shards
    shard = _train_shard(out)
    size = shard.stat().st_size
    with open(shard, "r+b") as f:
        f.truncate(size - 1000)
    with pytest.raises(tf.errors.DataLossError) as read:
        for _ in data.eval_images(_cfg(out), "train"):
            pass
    assert str(out) not in str(read.value)  # what the issue saw: no file named
    error = data.explain_read_error(str(out), read.value)
    assert isinstance(error, data.DataError)
    assert str(error).startswith(f"{shard}: truncated record at byte ")
    # An error from elsewhere (a checkpoint, say) is not blamed on intact shards.
    assert data.explain_read_error(str(prepared_shapes), read.value) is None


def test_a_manifest_without_shard_sizes_is_still_accepted_and_says_what_went_unchecked(prepared_shapes, tmp_path,
                                                                                       capsys):
    out = _copy(prepared_shapes, tmp_path, old=True)
    assert data.check_prepared(_cfg(out))["splits"]["train"]["examples"] == 96
    printed = capsys.readouterr().out
    assert printed.startswith(f"note: {out / data.MANIFEST} records no size for ")
    assert f"python -m pipelines.check {out}" in printed
    problems, notes = data.verify_shards(str(out))
    assert problems == [] and "CRCs" in notes[0]

    # Without checksums, verify still reads every record's CRCs ...
    _flip(_train_shard(out))
    problems, _ = data.verify_shards(str(out))
    assert len(problems) == 1 and problems[0].startswith(f"{_train_shard(out)}: corrupted record at byte ")


def test_verify_counts_records_when_a_shard_without_checksum_is_cut_at_a_record_boundary(prepared_shapes, tmp_path):
    out = _copy(prepared_shapes, tmp_path, old=True)
    shard = _train_shard(out)
    raw = shard.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])  # TFRecord: length, its CRC, the data, its CRC
    shard.write_bytes(raw[:8 + 4 + length + 4])  # the first record, whole
    problems, _ = data.verify_shards(str(out))
    assert len(problems) == 1
    assert problems[0].startswith("the train split's shards hold ")
    assert "but the manifest counts 96 examples" in problems[0]


def test_a_run_resumed_on_a_truncated_shard_is_told_the_shard_is_damaged_not_that_the_data_changed(
        prepared_shapes, tmp_path):
    from mirrorgan_tf import runs

    out = _copy(prepared_shapes, tmp_path)
    cfg = _cfg(out)
    run = runs.RunDir(str(tmp_path / "run"))
    runs.pin_data(run, cfg)  # what the run's first stage recorded
    shard = _train_shard(out)
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size - 1000)
    message = str(pytest.raises(data.DataError, runs.check_data, run, cfg, training=True).value)
    assert f"{shard}: " in message and "(truncated)" in message and "changed" not in message
