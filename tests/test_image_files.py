"""images.py (mirrorgan_tf): [-1, 1] -> uint8, grids, and the write-then-rename every file goes through."""

import numpy as np
import pytest
import tensorflow as tf

from mirrorgan_tf import images, runs


def test_to_uint8_rounds_to_the_nearest_level_and_clips():
    x = np.array([-2.0, -1.0, 0.0, 0.5, 1.0, 3.0], np.float32)
    np.testing.assert_array_equal(images.to_uint8(x).numpy(), [0, 0, 128, 191, 255, 255])
    assert images.to_uint8(x).dtype == tf.uint8


def test_image_grid_upscales_each_row_to_the_largest_size():
    small = np.full((2, 2, 2, 3), -1.0, np.float32)  # two black 2 x 2 images
    large = np.ones((2, 4, 4, 3), np.float32)  # two white 4 x 4 images
    grid = images.image_grid([small, large])
    assert grid.shape == (8, 8, 3) and grid.dtype == np.uint8
    assert (grid[:4] == 0).all() and (grid[4:] == 255).all()


def test_atomic_write_replaces_the_whole_file_and_leaves_no_temporary(tmp_path):
    path = str(tmp_path / "sub" / "a.json")
    images.atomic_write(path, "old")
    images.atomic_write(path, b"new")
    assert open(path).read() == "new"
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["a.json"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    path = str(tmp_path / "a.txt")
    images.atomic_write(path, "old")
    with pytest.raises(RuntimeError, match="disk full"):
        with images.staged(path) as tmp:
            with open(tmp, "w") as f:
                f.write("half")
            raise RuntimeError("disk full")
    assert open(path).read() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_a_staged_folder_appears_whole_or_not_at_all(tmp_path):
    target = tmp_path / "models" / "1"
    with images.staged(str(target)) as tmp:
        assert tmp.endswith("-1") and "/.incomplete-" in tmp
        tf.io.gfile.makedirs(tmp)
        open(f"{tmp}/saved_model.pb", "w").write("x")
        assert not target.exists()
    assert (target / "saved_model.pb").read_text() == "x"
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["1"]


def test_save_png_round_trips(tmp_path):
    picture = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    images.save_png(picture, str(tmp_path / "p.png"))
    np.testing.assert_array_equal(tf.io.decode_png((tmp_path / "p.png").read_bytes()).numpy(), picture)


def test_load_run_names_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        runs.load_run(str(tmp_path))
