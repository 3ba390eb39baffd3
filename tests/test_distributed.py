"""The GAN step under MirroredStrategy equals one device; MultiWorkerMirroredStrategy workers agree.

Both need a fresh TensorFlow runtime (logical CPU devices, a cluster), so they run in subprocesses.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import tensorflow as tf

from mirrorgan_tf.config import load_config
from tests.conftest import CONFIGS, REPO

MIRRORED = textwrap.dedent("""
    import json, sys
    import numpy as np
    from mirrorgan_tf import distribute
    distribute.split_cpu(2)
    import keras
    import tensorflow as tf
    from mirrorgan_tf import data
    from mirrorgan_tf.config import load_config
    from mirrorgan_tf.training import gan

    # The bounds below were set under the released values (both rates 2e-4, lambda 10, KL 1): pin
    # them, whatever the config's default. Rounding differences scale with the loss weights too
    # (with shapes' searched lambda 38.75 and KL 0.1 GLAM's plain-BatchNorm difference read 8.3e-5).
    cfg = load_config(sys.argv[1], ["data.dir=" + sys.argv[2], "train.batch_size=8", "train.g_learning_rate=2e-4",
                                    "train.d_learning_rate=2e-4", "train.stream_weight=10", "train.kl_weight=1"]
                      + sys.argv[3:])
    vocab = data.vocab_size(cfg)
    batch = next(iter(data.make_dataset(cfg, "train", batch_size=8)))
    if "swapped" in batch:  # the replicas must hold different numbers of swapped captions
        flags = batch["swapped"].numpy()
        assert flags[:4].sum() != flags[4:].sum() and flags.sum() > 0, flags
    one = tf.distribute.OneDeviceStrategy("/cpu:0")
    two = distribute.build_strategy("mirrored")
    assert two.num_replicas_in_sync == 2
    keras.utils.set_random_seed(0)
    # "one_sync": one device with the synchronised BatchNorm layers, which compute the variance as
    # E[x^2] - E[x]^2 (one all-reduce) where plain BatchNorm subtracts the mean first.
    states = [gan.GanTrainState(cfg, one, vocab), gan.GanTrainState(cfg, one, vocab, sync_batch_norm=True),
              gan.GanTrainState(cfg, two, vocab)]
    strategies = (one, one, two)
    names = ("one", "one_sync", "two")

    def models(state):
        m = state.nets
        return [m.stem, m.stream_encoder, m.stream_decoder, m.glam, state.glam_ema] + list(m.discriminators)

    for other in states[1:]:  # the same starting point
        for a, b in zip(models(states[0]), models(other)):
            for va, vb in zip(a.weights, b.weights):
                vb.assign(va)
    glam_weights = len(states[0].nets.glam.weights)
    out = {}
    for name, strategy, state in zip(names, strategies, states):
        step = gan.make_train_step(cfg, strategy, state)
        dist = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors(batch))
        losses = step(next(iter(dist)))
        weights = [v.numpy() for m in models(state)[3:] for v in m.weights]
        out[name] = ({k: float(v) for k, v in losses.items()}, weights)
    def max_diff(a, b):
        return max(float(np.abs(x - y).max()) for x, y in zip(out[a][1], out[b][1]))

    def changed(a, b, tol):  # share of weight elements that differ by more than tol
        n = sum(x.size for x in out[a][1])
        return sum(int((np.abs(x - y) > tol).sum()) for x, y in zip(out[a][1], out[b][1])) / n

    print(json.dumps({**{k: out[k][0] for k in names}, "weights": len(out["one"][1]),
                      "diff_two_vs_one_sync": max_diff("two", "one_sync"),
                      "changed_two_vs_one": changed("two", "one", 1e-5),
                      "diff_two_vs_one_glam": max(float(np.abs(x - y).max()) for x, y in
                                                  zip(out["one"][1][:glam_weights], out["two"][1][:glam_weights]))}))
""")


# With one-word-swap wrong pairs of colours only some captions name (red, blue), the two replicas
# hold 3 and 2 of the 5 swapped captions: their weights must still average over the global batch.
# Mode seeking and the pair head ride along (one subprocess less): their pairs (2i, 2i + 1) never
# straddle replicas, and the wrong pairs skip two rows across the replicas' boundary.
# The published case keeps the smoke config's three stages; the other runs two (a third less
# tracing for each of its three states), enough for the multi-stage mode seeking term.
@pytest.mark.parametrize("overrides", [["train.mode_seeking_weight=0", "train.wrong_word_swaps=[]", "model.stage_noise=false"],
                                       ["train.wrong_word_swaps=[red blue]", "train.mode_seeking_weight=1",
                                        "model.stages=2", "model.pair_discriminator=true"]],
                         ids=["published", "word_swaps_mode_seeking_pairs"])
def test_mirrored_on_two_cpus_equals_one_device(prepared_shapes, overrides):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    r = subprocess.run([sys.executable, "-c", MIRRORED, str(CONFIGS / "shapes_smoke.yaml"), str(prepared_shapes),
                        *overrides], cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-4000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    one, one_sync, two = result["one"], result["one_sync"], result["two"]
    stages = load_config(CONFIGS / "shapes_smoke.yaml", overrides).model.stages  # one discriminator per stage
    assert set(one) == set(two) == {"d", "g", "g_adv", "kl", "stream"} | {f"d{i + 1}" for i in range(stages)} | (
        {"mode_seeking"} if "train.mode_seeking_weight=1" in overrides else set())
    # Same first-step losses and updated weights (GLAM, its EMA, every discriminator, BatchNorm
    # statistics included) as one device with the same BatchNorm arithmetic: float32 sums in
    # another order only. Adam's first step moves every weight by about the learning rate (2e-4)
    # whatever its gradient's size, so a missed, doubled or wrong-signed update shows as >= 2e-4;
    # rounding on near-zero gradients stays well below a quarter of that.
    for k in one:
        np.testing.assert_allclose(two[k], one_sync[k], rtol=1e-5, atol=1e-6, err_msg=k)
    # Mode seeking's 1 / (d_image / d_latent) turns float32 rounding of the images into larger
    # gradient noise (measured 9.5e-5 here); still under half of a wrong update (>= 2e-4), and the
    # share of changed elements below stays under 1 %.
    bound = 1.5e-4 if "train.mode_seeking_weight=1" in overrides else 5e-5
    assert result["weights"] > 100 and result["diff_two_vs_one_sync"] < bound
    # Against plain one-device BatchNorm only the variance formula's rounding adds: the same
    # bounds hold, and fewer than 1 % of the weight elements differ by more than 1e-5.
    for k in one:
        np.testing.assert_allclose(two[k], one[k], rtol=1e-4, atol=1e-6, err_msg=k)
    assert result["diff_two_vs_one_glam"] < bound
    assert result["changed_two_vs_one"] < 0.01


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _train_two_workers(prepared_shapes, run_dir, envs):
    """Train 3 DAMSM steps in two multi_worker processes (environments `envs`) and check that they
    formed one cluster: both end with identical weights, the chief wrote the run directory."""
    procs = []
    for env in envs:
        env = {k: v for k, v in {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **env}.items() if v is not None}
        cmd = [sys.executable, "-m", "mirrorgan_tf.train", "--config", str(CONFIGS / "shapes_smoke.yaml"),
               "--run-dir", str(run_dir), "--stage", "damsm", "--strategy", "multi_worker",
               "--set", f"data.dir={prepared_shapes}", "--set", "damsm.max_steps=3",
               "--set", "train.checkpoint_every=3"]
        procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=600))
    finally:
        for p in procs:
            p.kill()
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-4000:]
    chief = tf.train.latest_checkpoint(str(run_dir / "damsm" / "checkpoints"))
    other = tf.train.latest_checkpoint(str(run_dir / ".worker-worker-1" / "damsm"))
    assert chief.endswith("ckpt-3") and other.endswith("ckpt-3")
    a, b = tf.train.load_checkpoint(chief), tf.train.load_checkpoint(other)
    # Each worker reads its own shards: its input pipeline position (input_pipeline/) is its own.
    names = [n for n, _ in tf.train.list_variables(chief)
             if n != "_CHECKPOINTABLE_OBJECT_GRAPH" and not n.startswith("input_pipeline/")]
    # Trainable weights are stored under the optimizers' paths, which reach them first.
    assert len(names) > 50 and any(n.startswith("opt_text/") for n in names)
    for name in names:
        np.testing.assert_array_equal(a.get_tensor(name), b.get_tensor(name), err_msg=name)
    stages = json.loads((run_dir / "stages.json").read_text())
    assert stages["damsm"]["steps"] == 3
    metrics = json.loads((run_dir / "damsm" / "metrics.json").read_text())
    assert metrics["replicas"] == 2
    assert not (run_dir / "train.lock").exists()  # the chief held the run, and let it go


def test_two_multi_worker_processes_end_with_identical_weights(prepared_shapes, tmp_path):
    ports = _free_ports(2)
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    _train_two_workers(prepared_shapes, tmp_path / "mw", [
        {"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})}
        for index in range(2)])


def _slurm_step(procid, tasks=2, nodelist="localhost", tasks_per_node="2", port=None):
    """The variables srun sets for task `procid` of a job step (those the cluster is built from, and
    a few beside them), TF_CONFIG removed."""
    return {"TF_CONFIG": None, "SLURM_JOB_ID": "4242", "SLURM_STEP_ID": "0", "SLURM_PROCID": str(procid),
            "SLURM_LOCALID": str(procid), "SLURM_NODEID": "0", "SLURM_NTASKS": str(tasks),
            "SLURM_STEP_NUM_TASKS": str(tasks), "SLURM_STEP_NUM_NODES": str(len(nodelist.split(","))),
            "SLURM_JOB_NODELIST": nodelist, "SLURM_STEP_NODELIST": nodelist,
            "SLURM_STEP_TASKS_PER_NODE": tasks_per_node, "SLURM_TASKS_PER_NODE": tasks_per_node,
            "MIRRORGAN_SLURM_PORT": None if port is None else str(port)}


def _set_env(monkeypatch, env):
    for k, v in env.items():
        if v is None:
            monkeypatch.delenv(k, raising=False)
        else:
            monkeypatch.setenv(k, v)


def test_the_slurm_cluster_is_built_from_the_job_steps_variables(monkeypatch):
    from mirrorgan_tf.config import ConfigError
    from mirrorgan_tf.distribute import build_strategy, slurm_cluster_resolver

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")  # no nvidia-smi: a CPU node
    _set_env(monkeypatch, _slurm_step(1, port=23456))
    r = slurm_cluster_resolver()
    assert r.cluster_spec().as_dict() == {"worker": ["localhost:23456", "localhost:23457"]}
    assert (r.task_type, r.task_id, r.num_accelerators()) == ("worker", 1, {})
    # Two nodes of one task each, default port; SLURM's compressed host list.
    _set_env(monkeypatch, _slurm_step(0, nodelist="gpu[07-08]", tasks_per_node="1(x2)"))
    r = slurm_cluster_resolver()
    assert r.cluster_spec().as_dict() == {"worker": ["gpu07:8888", "gpu08:8888"]} and r.task_id == 0
    # The batch script itself (no srun): no step variables, refused by name before TF starts.
    for name in ("SLURM_STEP_NUM_TASKS", "SLURM_STEP_NODELIST", "SLURM_STEP_TASKS_PER_NODE"):
        monkeypatch.delenv(name)
    with pytest.raises(ConfigError, match="SLURM_STEP_NUM_TASKS, SLURM_STEP_NODELIST, SLURM_STEP_TASKS_PER_NODE "
                                          "are not set: start one task per worker with srun"):
        build_strategy("multi_worker")
    _set_env(monkeypatch, _slurm_step(0, nodelist="gpu[07-"))
    with pytest.raises(ConfigError, match=r"SLURM_STEP_NODELIST='gpu\[07-'.*Invalid hostlist"):
        build_strategy("multi_worker")
    _set_env(monkeypatch, {k: None for k in _slurm_step(0)})
    with pytest.raises(ConfigError, match="needs the TF_CONFIG environment variable"):
        build_strategy("multi_worker")


def _free_port_pair():
    """A port p with p + 1 free as well (a node's two SLURM tasks take consecutive ports)."""
    for _ in range(50):
        (p,) = _free_ports(1)
        try:
            with socket.socket() as s:
                s.bind(("localhost", p + 1))
            return p
        except OSError:
            continue
    pytest.fail("no two consecutive free ports")


def test_two_slurm_tasks_form_one_cluster_without_tf_config(prepared_shapes, tmp_path):
    """Two tasks of one SLURM job step on one node (the variables as srun sets them, no TF_CONFIG)
    train as one 2-worker cluster."""
    port = _free_port_pair()
    _train_two_workers(prepared_shapes, tmp_path / "slurm", [_slurm_step(i, port=port) for i in range(2)])


RESUME = textwrap.dedent("""
    import json, sys
    from mirrorgan_tf import distribute
    distribute.split_cpu(2)
    from mirrorgan_tf.config import load_config
    from mirrorgan_tf.train import train
    config, data_dir, run_dir, kind, steps = sys.argv[1:6]
    cfg = load_config(config, ["data.dir=" + data_dir, "damsm.max_steps=" + steps, "stream.max_steps=" + steps,
                               "train.max_steps=" + steps, "train.checkpoint_every=2", "train.sample_every=0",
                               # two stages resume as three do, at two thirds of the tracing; the EMA's
                               # standing statistics are overwritten by every training step, so they
                               # carry nothing across a resume (their mirrored pass: test_standing_statistics)
                               "model.stages=2", "train.ema_standing_statistics=0"])
    strategy = distribute.build_strategy(kind)
    out = {}
    for stage in ("damsm", "stream", "gan"):
        result = train(cfg, run_dir, stage, strategy=strategy)[stage]
        out[stage] = [result.start, result.steps, strategy.num_replicas_in_sync]
    print(json.dumps(out))
""")


def test_every_stage_resumes_on_another_replica_count_both_ways(prepared_shapes, tmp_path):
    """2 replicas -> 1 -> 2 (issue: an 8-GPU job restarted on 4): every stage (DAMSM, STREAM, GAN)
    trains 2 steps on two CPU replicas, resumes on one device for steps 3-4, then on two replicas
    for steps 5-6. Networks, optimizers, EMA, seed states and step restore (the checkpoint's
    objects must all match), and the input continues: its position holds whole global batches
    (data.DistributedInput; test_data pins that the batches go on where they stopped in both
    directions). The resume is run_loop's for all three stages; running each stage pins that no
    stage keeps anything per replica. Stopping between sessions is what a kill -9 after a checkpoint
    leaves: the latest checkpoint (test_training kills real processes)."""
    run_dir = tmp_path / "run"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    logs = []
    for kind, steps in (("mirrored", 2), ("one_device", 4), ("mirrored", 6)):
        r = subprocess.run([sys.executable, "-c", RESUME, str(CONFIGS / "shapes_smoke.yaml"), str(prepared_shapes),
                            str(run_dir), kind, str(steps)], cwd=REPO, capture_output=True, text=True,
                           timeout=600, env=env)
        assert r.returncode == 0, r.stderr[-4000:]
        logs.append(r.stdout)
        replicas = 2 if kind == "mirrored" else 1
        assert json.loads(r.stdout.strip().splitlines()[-1]) == {
            stage: [steps - 2 if steps > 2 else 0, steps, replicas] for stage in ("damsm", "stream", "gan")}
    for log, steps in zip(logs[1:], (2, 4)):
        for stage in ("damsm", "stream", "gan"):
            assert f"{stage}: resumed from {run_dir / stage / 'checkpoints'}/ckpt-{steps} at step {steps}" in log
        assert "cannot continue here" not in log and "starts afresh" not in log
    assert json.loads((run_dir / "gan" / "metrics.json").read_text())["replicas"] == 2


def test_sigterm_to_one_worker_makes_both_save_the_same_step_and_stop(prepared_shapes, tmp_path):
    """A real SIGTERM to the non-chief worker of two: through TensorFlow's
    PreemptionCheckpointHandler both workers save the same step, then exit 143; the same command
    resumes both from it."""
    ports = _free_ports(2)
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    run_dir = tmp_path / "mw"
    procs, logs = [], [tmp_path / f"worker{i}.log" for i in range(2)]
    for index in range(2):
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2",
               "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})}
        cmd = [sys.executable, "-m", "mirrorgan_tf.train", "--config", str(CONFIGS / "shapes_smoke.yaml"),
               "--run-dir", str(run_dir), "--stage", "damsm", "--strategy", "multi_worker",
               "--set", f"data.dir={prepared_shapes}", "--set", "damsm.max_steps=100000",
               "--set", "train.checkpoint_every=1000", "--set", "train.log_every=1"]
        procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=open(logs[index], "w"), stderr=subprocess.STDOUT))
    try:
        deadline = time.time() + 400
        while time.time() < deadline and all(p.poll() is None for p in procs) and " 3/100000 " not in logs[0].read_text():
            time.sleep(0.05)
        assert all(p.poll() is None for p in procs), logs[0].read_text()[-3000:] + logs[1].read_text()[-3000:]
        os.kill(procs[1].pid, signal.SIGTERM)
        statuses = [p.wait(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert statuses == [143, 143], logs[0].read_text()[-3000:] + logs[1].read_text()[-3000:]
    chief = tf.train.latest_checkpoint(str(run_dir / "damsm" / "checkpoints"))
    other = tf.train.latest_checkpoint(str(run_dir / ".worker-worker-1" / "damsm"))
    step = int(chief.rsplit("-", 1)[1])
    assert step >= 3 and other.endswith(f"ckpt-{step}")
    for log in logs:
        assert f"stopped: stage 'damsm' stopped by SIGTERM at step {step}" in log.read_text()
    a, b = tf.train.load_checkpoint(chief), tf.train.load_checkpoint(other)
    names = [n for n, _ in tf.train.list_variables(chief)
             if n != "_CHECKPOINTABLE_OBJECT_GRAPH" and not n.startswith("input_pipeline/")]
    assert len(names) > 50
    for name in names:
        np.testing.assert_array_equal(a.get_tensor(name), b.get_tensor(name), err_msg=name)
    assert not (run_dir / "train.lock").exists()
    # The same command (one more step) resumes both workers from the step they saved.
    ports = _free_ports(2)
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    procs = []
    for index in range(2):
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2",
               "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})}
        cmd = [sys.executable, "-m", "mirrorgan_tf.train", "--config", str(CONFIGS / "shapes_smoke.yaml"),
               "--run-dir", str(run_dir), "--stage", "damsm", "--strategy", "multi_worker",
               "--set", f"data.dir={prepared_shapes}", "--set", f"damsm.max_steps={step + 1}",
               "--set", "train.checkpoint_every=1000", "--set", "train.log_every=1"]
        procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    try:
        outputs = [p.communicate(timeout=400)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    assert f"resumed from {chief} at step {step}" in outputs[0]
    assert f"at step {step}" in outputs[1] and json.loads((run_dir / "stages.json").read_text())["damsm"]["steps"] == step + 1
