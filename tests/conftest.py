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


# The slowest tests and groups, slowest first, started first so that under pytest-xdist
# (pytest.ini: -n 2) no long one is left running alone at the end. Entries are node id prefixes
# (a module's name stands for all its tests); the rest keep their collection order. The
# seconds are from one whole run on 2 cores with training experiments beside it (load average
# about 8, so 3-6 times the quiet figures); only their order matters here.
SLOWEST_FIRST = [
    "tests/test_training.py::test_a_run_killed_twice_and_resumed_ends_bit_identical_to_one_never_stopped",  # 639
    "tests/test_tune.py::test_a_chief_and_two_workers_run_each_trial_exactly_once",  # 487
    "tests/test_distributed.py::test_mirrored_on_two_cpus_equals_one_device",  # 412
    "tests/test_distributed.py::test_every_stage_resumes_on_another_replica_count_both_ways",  # 346-474 (loaded machine)
    "tests/test_run_integrity.py",  # 400 in all, most in its module fixture's training
    "tests/test_evaluate.py",  # 400 in all, most in its module fixture's evaluation
    "tests/test_tune.py::test_a_search_records_a_diverging_trial_as_failed_and_its_best_config_trains",  # 373
    "tests/test_tune.py::test_a_killed_search_continues_without_repeating_finished_trials_and_no_policy_leaks",  # 295
    "tests/test_training.py::test_mixed_precision_and_xla_on_one_device",  # 287
    "tests/test_training.py::test_a_later_run_reuses_pretrained_stages",  # 263
    "tests/test_import_cli.py",  # 225 in all
    "tests/test_summary.py::test_published_cub_networks_have_the_original_parameter_counts",  # 177
    "tests/test_export.py::test_export_cli_writes_the_next_version_atomically",  # 175
    "tests/test_training.py::test_sigkill_mid_stage_resumes_from_the_last_checkpoint",  # 132
    "tests/test_training.py::test_sigterm_saves_the_step_in_flight_and_a_second_train_on_the_run_is_refused",  # 121
    "tests/test_demo_page.py",  # 115 in all
    "tests/test_summary.py::test_summary_cli_prints_json_and_a_table",  # 114
    "tests/test_import_mirrorgan.py::test_discriminators_match_d_nets",  # 110 + 18
    "tests/test_training.py::test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint",  # 102
    # Added 2026-12-05, seconds measured by their authors at load average 15-23 (a few times the quiet ones):
    "tests/test_stackgan_inception.py",  # 57 in all, most in its module fixture (a TF1 checkpoint written)
    "tests/test_quality.py",  # 45 in its module fixture (a smoke GAN stage evaluated every step)
    "tests/test_protocol.py",  # 53 in all (a smoke protocol run, then its resume)
    "tests/test_input_position.py",  # 41 in all (a 2 -> 1 -> 2 replica subprocess)
    "tests/test_sample.py",  # 82 in all (load average 11), most in its two measured sample processes
    "tests/test_distributed.py::test_sigterm_to_one_worker_makes_both_save_the_same_step_and_stop",  # 66
]


def pytest_collection_modifyitems(config, items):
    """Order the tests for pytest-xdist (pytest.ini: `-n 2 --dist loadfile`, each file whole to one
    worker): the SLOWEST_FIRST tests move to the front, so the files holding them start first.
    The sort is stable: the rest keep their collection order. Without xdist only the order changes."""

    def rank(item):
        return next((i for i, prefix in enumerate(SLOWEST_FIRST) if item.nodeid.startswith(prefix)),
                    len(SLOWEST_FIRST))

    items.sort(key=rank)


@pytest.fixture(scope="session")
def cub_sample() -> Path:
    if not (CUB_SAMPLE / "CUB_200_2011").is_dir():
        pytest.fail(f"CUB sample not found at {CUB_SAMPLE} (set MIRRORGAN_CUB_SAMPLE)")
    return CUB_SAMPLE


def _built_once(tmp_path_factory, name: str, build) -> tuple[Path, str]:
    """`build(out)` (returning a str or None) run once per test session, even under pytest-xdist.

    Without xdist, `out` is in this session's temporary folder. Under xdist every worker is its
    own process with its own temporary folder; the folder shared by the workers of one run (the
    parent of theirs) holds `out`, and a file lock makes the first worker to ask build it while
    the others wait and then reuse it (the pattern of pytest-xdist's documentation). A marker
    written after `build` returns tells a finished build from one that raised; a worker meeting
    an unfinished one deletes it and builds again (and fails the same way, with its own error).
    Returns (out, the text `build` returned, "" for None)."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        out = tmp_path_factory.mktemp(name) / name
        return out, build(out) or ""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp().parent / "built-once"
    root.mkdir(exist_ok=True)
    out, done = root / name / name, root / f"{name}.done"
    with FileLock(str(root / f"{name}.lock")):
        if not done.exists():
            shutil.rmtree(out.parent, ignore_errors=True)
            out.parent.mkdir()
            done.write_text(build(out) or "")  # only reached when build returned
        return out, done.read_text()


@pytest.fixture(scope="session")
def prepared_cub(cub_sample, tmp_path_factory) -> Path:
    from pipelines.prepare import prepare

    def build(out):
        prepare("cub", str(out), str(cub_sample), workers=2)

    return _built_once(tmp_path_factory, "cub", build)[0]


@pytest.fixture(scope="session")
def prepared_shapes(tmp_path_factory) -> Path:
    from pipelines.prepare import prepare

    def build(out):
        prepare("shapes", str(out), num_train=96, num_test=48, workers=1, shard_size_mb=1)

    return _built_once(tmp_path_factory, "shapes", build)[0]


def smoke_train(run_dir, data_dir, *args, **kwargs):
    """python -m mirrorgan_tf.train on the smoke config, exporting to <run_dir>-export."""
    cmd = [sys.executable, "-m", "mirrorgan_tf.train", "--config", str(CONFIGS / "shapes_smoke.yaml"),
           "--run-dir", str(run_dir), "--export-dir", f"{run_dir}-export", "--set", f"data.dir={data_dir}", *args]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=600, **kwargs)


@pytest.fixture(scope="session")
def trained_run(prepared_shapes, tmp_path_factory):
    """The whole smoke pipeline through the command line (data -> damsm -> stream -> gan ->
    export), once per session (once for all xdist workers): training, export, serving and
    evaluation tests read it. Returns (run folder, the command's stdout)."""
    def train(run_dir):
        r = smoke_train(run_dir, prepared_shapes)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        return r.stdout

    return _built_once(tmp_path_factory, "smoke", train)


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
