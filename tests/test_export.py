"""The SavedModel export: TF Serving layout, both signatures, tokenisation in the graph, loading
with only tensorflow and tensorflow_text importable."""

import json
import os
import subprocess
import sys
import textwrap

from tests.conftest import REPO

LOADER = textwrap.dedent("""
    import json, sys
    sys.modules["mirrorgan_tf"] = None  # the project must not be needed to serve
    sys.modules["pipelines"] = None
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (its ops, as the stock model server links them)
    m = tf.saved_model.load(sys.argv[1])
    caps = tf.constant(["a small red circle on the left", "a huge blue block at the top"])
    noise = tf.random.stateless_normal([2, int(sys.argv[2])], seed=[1, 2])
    gen = m.signatures["generate"]
    a = gen(captions=caps, noise=noise)["images"].numpy()
    b = gen(captions=caps, noise=noise)["images"].numpy()
    c = gen(captions=caps, noise=noise + 1.0)["images"].numpy()
    s1 = m.signatures["serving_default"](captions=caps)["images"].numpy()
    s2 = m.signatures["serving_default"](captions=caps)["images"].numpy()
    long = m.signatures["serving_default"](captions=tf.constant(["red " * 60]))["images"].numpy()
    ignored = [m.signatures["serving_default"](captions=tf.constant(["a racoon detective with a microscope",
                                                                     "a huge blue block at the top"]))["ignored_words"],
               gen(captions=tf.constant(["a Racoon-red circle, racoon!"]), noise=noise[:1])["ignored_words"]]
    cut = m.signatures["serving_default"](captions=tf.constant(["a small red circle on the left a huge blue block "
                                                                "at the top a small red circle", "a red circle"]))
    try:
        m.signatures["serving_default"](captions=tf.constant(["a red circle", "zzz qqq"]))
        error = None
    except tf.errors.InvalidArgumentError as e:
        error = str(e)
    print(json.dumps({"signatures": sorted(m.signatures), "shape": list(a.shape), "dtype": str(a.dtype),
                      "deterministic": bool((a == b).all()), "noise_matters": bool((a != c).any()),
                      "fresh_noise": bool((s1 != s2).any()), "long_shape": list(long.shape), "error": error,
                      "ignored": [[w.decode() for w in t.numpy().tolist()] for t in ignored],
                      "ignored_dtypes": [t.dtype.name for t in ignored],
                      "cut": [w.decode() for w in cut["cut_words"].numpy().tolist()]}))
""")


def test_export_loads_and_runs_without_the_project(trained_run, tmp_path):
    run_dir, _ = trained_run
    stages = json.loads((run_dir / "stages.json").read_text())
    version = stages["export"]["path"]
    assert {"assets", "saved_model.pb", "variables"} <= set(os.listdir(version))  # TF Serving's layout
    assert os.path.exists(os.path.join(version, "assets", "vocab.txt"))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    r = subprocess.run([sys.executable, "-c", LOADER, version, "8"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["signatures"] == ["generate", "serving_default"]
    assert out["shape"] == [2, 64, 64, 3] and out["dtype"] == "uint8" and out["long_shape"] == [1, 64, 64, 3]
    assert out["deterministic"] and out["noise_matters"] and out["fresh_noise"]
    # what the stock model server answers: the element's index and its text (the Assert op escapes quotes)
    assert 'assertion failed: [no word of these captions is in the vocabulary: element 1 \\"zzz qqq\\"]' in out["error"]
    assert out["cut"] == ["red circle", ""]  # the known words past data.words_num (16)
    # Unknown words are still dropped, and each signature says which (normalised, in caption order)
    assert out["ignored"] == [["racoon detective with microscope", ""], ["racoon racoon"]]  # no "with" in shapes
    assert out["ignored_dtypes"] == ["string", "string"]


def test_saved_model_cli_lists_both_signatures(trained_run):
    run_dir, _ = trained_run
    version = json.loads((run_dir / "stages.json").read_text())["export"]["path"]
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    r = subprocess.run([cli, "show", "--all", "--dir", version], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    for text in ("signature_def['serving_default']", "signature_def['generate']", "inputs['captions']",
                 "inputs['noise']", "outputs['images']", "dtype: DT_UINT8", "dtype: DT_STRING",
                 "outputs['ignored_words']", "outputs['cut_words']"):
        assert text in r.stdout


def test_export_cli_writes_the_next_version_atomically(trained_run, tmp_path):
    run_dir, _ = trained_run
    base = tmp_path / "models"
    cmd = [sys.executable, "-m", "mirrorgan_tf.export", "--run-dir", str(run_dir), "--export-dir", str(base)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    for expected in ("1", "2"):
        r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
        assert r.returncode == 0, r.stderr[-2000:]
        assert r.stdout.strip().endswith(f"models/{expected}")
    assert sorted(os.listdir(base)) == ["1", "2"]  # no .incomplete-* left behind
    r = subprocess.run(cmd + ["--version", "2"], cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 2 and "already exists" in r.stderr
    r = subprocess.run([sys.executable, "-m", "mirrorgan_tf.export", "--run-dir", str(tmp_path)], cwd=REPO,
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 2 and "not a run directory" in r.stderr
