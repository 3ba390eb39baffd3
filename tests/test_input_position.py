"""The saved input position's size (benchmarks/input_position_size.py): it holds the shuffle
buffer's records as stored, so it grows by about one record per buffer slot."""

import importlib.util
from pathlib import Path

from mirrorgan_tf.config import load_config

ROOT = Path(__file__).resolve().parents[1]


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
                          [f"data.dir={folder}", f"data.shuffle_buffer={buffer}", "train.batch_size=2"])
        sizes[buffer], _ = bench.measure(cfg, 2, str(tmp_path / f"ckpt{buffer}"))
    # 128 more buffered records (400 in the shard, so the buffer stays full), each saved as its
    # serialized bytes; the slack allows for the prefetch, which autotuning sizes.
    grown = sizes[129] - sizes[1]
    assert 0.85 * 128 * mean <= grown <= 1.15 * 128 * mean, (grown, mean, sizes)
