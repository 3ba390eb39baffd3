import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before anything imports TensorFlow

import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
CUB_SAMPLE = Path(os.environ.get("MIRRORGAN_CUB_SAMPLE", REPO.parent / "shared" / "data" / "cub_sample" / "birds"))


@pytest.fixture(scope="session")
def cub_sample() -> Path:
    if not (CUB_SAMPLE / "CUB_200_2011").is_dir():
        pytest.fail(f"CUB sample not found at {CUB_SAMPLE} (set MIRRORGAN_CUB_SAMPLE)")
    return CUB_SAMPLE


@pytest.fixture(scope="session")
def prepared_cub(cub_sample, tmp_path_factory) -> Path:
    from pipelines.prepare import prepare

    out = tmp_path_factory.mktemp("cub") / "cub"
    prepare("cub", str(out), str(cub_sample), workers=2)
    return out


@pytest.fixture(scope="session")
def prepared_shapes(tmp_path_factory) -> Path:
    from pipelines.prepare import prepare

    out = tmp_path_factory.mktemp("shapes") / "shapes"
    prepare("shapes", str(out), num_train=96, num_test=48, workers=1, shard_size_mb=1)
    return out


def smoke_train(run_dir, data_dir, *args, **kwargs):
    """python -m mirrorgan_tf.train on the smoke config, exporting to <run_dir>-export."""
    cmd = [sys.executable, "-m", "mirrorgan_tf.train", "--config", str(CONFIGS / "shapes_smoke.yaml"),
           "--run-dir", str(run_dir), "--export-dir", f"{run_dir}-export", "--set", f"data.dir={data_dir}", *args]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=600, **kwargs)


@pytest.fixture(scope="session")
def trained_run(prepared_shapes, tmp_path_factory):
    """The whole smoke pipeline through the command line (data -> damsm -> stream -> gan ->
    export), once per session: training, export, serving and evaluation tests read it."""
    run_dir = tmp_path_factory.mktemp("run") / "smoke"
    r = smoke_train(run_dir, prepared_shapes)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return run_dir, r.stdout


def make_mini_cub(sample: Path, dest: Path, train: int = 4, test: int = 3) -> Path:
    """A small copy of the CUB sample in the original layout, to corrupt in bad-input tests."""
    for name in ("images.txt", "bounding_boxes.txt"):
        (dest / "CUB_200_2011").mkdir(parents=True, exist_ok=True)
        shutil.copy(sample / "CUB_200_2011" / name, dest / "CUB_200_2011" / name)
    for split, count in (("train", train), ("test", test)):
        names = pickle.load(open(sample / split / "filenames.pickle", "rb"), encoding="latin1")[:count]
        classes = pickle.load(open(sample / split / "class_info.pickle", "rb"), encoding="latin1")[:count]
        (dest / split).mkdir(parents=True)
        pickle.dump(names, open(dest / split / "filenames.pickle", "wb"), protocol=2)
        pickle.dump(classes, open(dest / split / "class_info.pickle", "wb"), protocol=2)
        for n in names:
            for sub, ext in (("CUB_200_2011/images", ".jpg"), ("text", ".txt")):
                target = dest / sub / (n + ext)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(sample / sub / (n + ext), target)
    return dest


def mini_cub_names(root: Path, split: str = "train") -> list:
    return pickle.load(open(root / split / "filenames.pickle", "rb"), encoding="latin1")
