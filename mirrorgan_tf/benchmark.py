"""Benchmark of the GAN training iteration and of generation through the exported SavedModel.

    python -m mirrorgan_tf.benchmark [--config configs/cub.yaml] [--batch 12] [--what train|infer|all]
        [--repeat N] [--warmup N] [--precision float32[,bfloat16,float16]] [--xla off|on|both]
        [--threads N] [--json] [--set key=value ...]

No dataset and no pretrained weights are needed: every network starts from random weights
(the frozen backbones too: `damsm.backbone_weights` and `stream.backbone_weights` are set to
`random`) and the inputs are random tensors of the config's shapes. Measured, after `--warmup`
untimed calls, as the median of `--repeat` timed calls:

train   one full GAN iteration (the training stage's own step: every D updated on real / fake /
        wrong, G on adversarial + KL + lambda x STREAM, the EMA moved) at `--batch` and at batch 4,
        its first call (`first_step_s`, of which tracing `trace_s`),
        with a breakdown timed part by part on the same inputs: generator forward, the
        discriminator updates, the STREAM loss forward + backward (to the image), EMA; derived
        from those: the G half-step (the whole step minus the D updates and EMA) and the
        generator's backward and update (the G half-step minus its generator forward and STREAM
        parts). The networks are built once (`build_s`) for every batch size.
infer   `serving_default` of a SavedModel exported (by serving/export.py) into a temporary folder:
        latency and images/s at batch 1 and at `--batch`.

Beside each time: the peak resident memory of the process during that part (Linux VmHWM, reset
before each part; the GPU allocator's peak where there is a GPU), the work of the step counted by
TensorFlow's own cost model (`tf.compat.v1.profiler`, float operations of the graph, before
Grappler's fusions) and the achieved rate, against this machine's peak as measured by a large
matrix product in the same precision. On a GPU the same command measures GPU figures, and
`--precision` / `--xla` default to every combination (float32, float16, bfloat16 x XLA off, on).

Exit status 2 and a message naming the argument on bad input.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time

PRECISIONS = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}
SMALL_BATCH = 4


# --------------------------------------------------------------------------------------------
# Machine and memory


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> set:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def machine_info(tf) -> dict:
    """CPU model, cores, vector extensions, GPU devices, TF / Keras / Python versions."""
    import keras

    gpus = []
    for gpu in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(gpu)
        gpus.append({"device": gpu.name, "name": details.get("device_name", "unknown"),
                     "compute_capability": details.get("compute_capability")})
    flags = _cpu_flags()
    return {
        "cpu": _cpu_model(), "cores": os.cpu_count(),
        "cpu_features": sorted(f for f in flags if f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16",
                                                          "avx512_vnni", "amx_tile")),
        "gpu": gpus, "tensorflow": tf.__version__, "keras": keras.__version__,
        "python": platform.python_version(),
        "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default (on for x86 Linux)"),
    }


def reset_peak_rss() -> bool:
    """Reset the kernel's resident-set high-water mark of this process (Linux clear_refs 5)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """Peak resident memory (MiB) since the last reset_peak_rss(), else since the process began."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _gpu_peak_mb(tf):
    if not tf.config.list_physical_devices("GPU"):
        return None
    return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20


def _reset_gpu_peak(tf):
    if tf.config.list_physical_devices("GPU"):
        tf.config.experimental.reset_memory_stats("GPU:0")


def measured_peak_gflops(tf, dtype: str, n: int = 2048, repeat: int = 5) -> float:
    """GFLOP/s of an n x n x n matrix product (2 n^3 operations) in `dtype`, best of `repeat`:
    what this device's dense kernels can reach, the ceiling the step's rate is read against."""
    device = "/GPU:0" if tf.config.list_physical_devices("GPU") else "/CPU:0"
    with tf.device(device):
        a = tf.random.normal((n, n), dtype=tf.float32)
        a = tf.cast(a, dtype)
        mm = tf.function(lambda x: tf.linalg.matmul(x, x))
        mm(a).numpy()
        best = float("inf")
        for _ in range(repeat):
            t0 = time.perf_counter()
            mm(a)[0, 0].numpy()
            best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best / 1e9


def graph_flops(tf, concrete_function) -> int:
    """Float operations of a concrete function's graph by TensorFlow's cost model (ops with
    registered 'flops' statistics: convolutions and their gradients, matmuls, elementwise)."""
    from tensorflow.python.profiler import model_analyzer, option_builder

    opts = option_builder.ProfileOptionBuilder(option_builder.ProfileOptionBuilder.float_operation()) \
        .with_empty_output().build()
    info = model_analyzer.profile(concrete_function.graph, options=opts)
    return int(info.total_float_ops)


# --------------------------------------------------------------------------------------------
# Timing


def time_calls(fn, args, warmup: int, repeat: int, sync, cpu_times=None) -> list[float]:
    """Wall-clock seconds of each of `repeat` calls of fn(*args) after `warmup` untimed ones;
    `sync(result)` waits for the result (a device-to-host copy), so asynchronous devices are timed
    honestly. If `cpu_times` is a list, the process's CPU seconds of each call are appended to it:
    on a machine shared with other work they vary far less than wall time."""
    for _ in range(warmup):
        sync(fn(*args))
    times = []
    for _ in range(repeat):
        c0, t0 = time.process_time(), time.perf_counter()
        sync(fn(*args))
        times.append(time.perf_counter() - t0)
        if cpu_times is not None:
            cpu_times.append(time.process_time() - c0)
    return times


_START = time.perf_counter()


def _progress(message: str) -> None:
    """One line on stderr, stamped with the seconds since the module was loaded: where the
    benchmark's own wall time goes."""
    print(f"benchmark [{time.perf_counter() - _START:7.1f} s]: {message}", file=sys.stderr, flush=True)


def _sync(result):
    import tensorflow as tf

    for x in tf.nest.flatten(result):
        if hasattr(x, "numpy"):
            x.numpy()
    return result


# --------------------------------------------------------------------------------------------
# Training


def random_batch(tf, cfg, batch: int, vocab_size: int, seed: int = 0) -> dict:
    """A batch with the input pipeline's keys and shapes, random values (images in [-1, 1])."""
    g = tf.random.Generator.from_seed(seed)
    t = cfg.data.words_num
    lengths = g.uniform([batch], minval=max(1, t // 2), maxval=t + 1, dtype=tf.int32)
    ids = g.uniform([batch, t], minval=2, maxval=vocab_size, dtype=tf.int32)
    ids = tf.where(tf.range(t)[None, :] < lengths[:, None], ids, 0)
    return {
        "images": [g.uniform([batch, s, s, 3], -1.0, 1.0) for s in cfg.image_sizes],
        "caption_ids": ids, "caption_len": lengths,
        "noise": g.normal([batch, cfg.model.z_dim]), "ca_noise": g.normal([batch, cfg.model.condition_dim]),
        "class_id": tf.range(batch, dtype=tf.int64), "attributes": tf.zeros([batch, 0], tf.int64),
    }


def _parts(tf, cfg, state):
    """tf.functions timing the parts of an iteration separately, on the step's own networks,
    optimizers and functions (gan.update_discriminators, GanTrainState.ema_update).

    The generator's half-step (forward, adversarial + KL + STREAM loss, backward, update) is not
    traced and timed again on its own: it is the whole step minus the discriminator updates and
    the EMA (the step computes the fakes once for both halves), so `bench_train` derives it from
    the step's own time. Timing it apart cost a third of the breakdown's time (a second trace of
    nearly the whole step, and warm-up + repeat calls of nearly a whole step)."""
    from mirrorgan_tf import losses
    from mirrorgan_tf.training import gan

    m, opts_d, t = state.nets, state.opts_d, cfg.train

    @tf.function
    def text(batch):
        words, sentence, mask = m.stem(batch["caption_ids"], batch["caption_len"], training=False)
        return words, sentence, mask

    @tf.function
    def generator_forward(batch, words, sentence, mask):
        return m.glam(batch["noise"], sentence, words, mask, eps=batch["ca_noise"], training=True)["images"]

    @tf.function
    def discriminator_updates(batch, fakes, sentence):
        total, _ = gan.update_discriminators(m.discriminators, opts_d, batch["images"], fakes, sentence,
                                             losses.wrong_pairs_across_replicas(sentence), 1.0)
        return total

    @tf.function
    def stream_forward_backward(batch, image):
        with tf.GradientTape() as tape:
            tape.watch(image)
            loss = t.stream_weight * losses.stream_loss(m.stream_encoder, m.stream_decoder, image,
                                                        batch["caption_ids"], batch["caption_len"])
        return loss, tape.gradient(loss, image)

    @tf.function
    def ema():
        state.ema_update(t.ema_decay, t.ema_warmup)
        return state.step

    return text, generator_forward, discriminator_updates, stream_forward_backward, ema


def use_precision(cfg) -> str:
    """Set Keras' global dtype policy to the one `train.mixed_precision` names
    (config.precision_policy) and return it. Call right before building networks:
    `keras.backend.clear_session()` drops the global policy back to float32, and every network
    built after it would silently run in float32 (the benchmark's bfloat16 training figures
    were float32 ones until this was called per build)."""
    import keras

    from mirrorgan_tf.config import precision_policy

    policy = precision_policy(cfg.train)
    keras.mixed_precision.set_global_policy(policy)
    return policy


def build_train_state(tf, cfg, vocab_size: int):
    """The GAN stage's state (training/gan.py: every network, optimizer and the EMA copy) on one
    device, seeded by train.seed. Returns (state, strategy, seconds taken). Built once and shared
    by every batch size `bench_train` measures: the networks do not depend on the batch size
    (ResNet-152 and the rest take 10-30 s to build)."""
    import keras

    from mirrorgan_tf.distribute import build_strategy
    from mirrorgan_tf.training import gan

    keras.utils.set_random_seed(cfg.train.seed)
    strategy = build_strategy("one_device")
    use_precision(cfg)
    t0 = time.perf_counter()
    state = gan.GanTrainState(cfg, strategy, vocab_size)
    build_s = time.perf_counter() - t0
    _progress(f"train: networks built in {build_s:.1f} s")
    return state, strategy, build_s


def train_step_on_random_batch(tf, cfg, batch: int, vocab_size: int):
    """(the GAN stage's own train step on one device, a random batch of `batch` examples) for
    `cfg`, networks built by `build_train_state`: what benchmarks/gan_step_ab.py times."""
    from mirrorgan_tf.training import gan

    state, strategy, _ = build_train_state(tf, cfg, vocab_size)
    return gan.make_train_step(cfg, strategy, state), random_batch(tf, cfg, batch, vocab_size)


def bench_train(tf, cfg, batch: int, vocab_size: int, warmup: int, repeat: int, breakdown: bool = True,
                built=None) -> dict:
    """Times of the GAN training iteration at `batch` (see the module's docstring for the keys).
    `built`: (state, strategy, build seconds) of `build_train_state`, shared across batch sizes;
    built here when None. The step is a new tf.function traced for this batch, so its tracing
    count and first-step time are this batch's own."""
    from mirrorgan_tf.training import gan

    reset_peak_rss()
    _reset_gpu_peak(tf)
    if built is None:
        built = build_train_state(tf, cfg, vocab_size)
    state, strategy, build_s = built
    train_step = gan.make_train_step(cfg, strategy, state)
    data = random_batch(tf, cfg, batch, vocab_size)
    # The first step's cost in two parts: tracing (Python builds the graph, gradients included),
    # then the first call (Grappler's graph optimisation, kernel set-up, first touch of the
    # memory, and the step itself).
    t0 = time.perf_counter()
    train_step.get_concrete_function(data)
    trace_s = time.perf_counter() - t0
    first = _sync(train_step(data))
    first_step_s = time.perf_counter() - t0
    if not all(bool(tf.math.is_finite(v)) for v in first.values()):
        raise RuntimeError(f"batch {batch}: non-finite losses on the first step: {first}")
    cpu = []
    times = time_calls(train_step, (data,), max(0, warmup - 1), repeat, _sync, cpu)
    result = {"batch": batch, "s_per_iter": statistics.median(times), "times_s": times,
              "cpu_s_per_iter": statistics.median(cpu),
              "images_per_s": batch / statistics.median(times), "build_s": build_s,
              "first_step_s": first_step_s, "trace_s": trace_s,
              # What the networks really compute in (the generator's and STREAM's backbone's).
              "compute_dtype": {"glam": state.nets.glam.compute_dtype,
                                "stream_encoder": state.nets.stream_encoder.backbone.compute_dtype},
              # More than 1 would mean the step retraces (a Python value or a shape changing per call).
              "traces": train_step.experimental_get_tracing_count()}
    _progress(f"train batch {batch}: first step {first_step_s:.1f} s (tracing {trace_s:.1f} s), "
              f"{result['s_per_iter']:.3f} s/iter (CPU {result['cpu_s_per_iter']:.3f} s) {times}")
    try:
        flops = graph_flops(tf, train_step.get_concrete_function(data))
        result["gflop_per_iter"] = flops / 1e9
        result["achieved_gflops"] = flops / 1e9 / result["s_per_iter"]
    except Exception as e:  # the cost model is an aid, not the measurement
        result["flops_error"] = f"{type(e).__name__}: {e}"
    _progress(f"train batch {batch}: cost model counted")
    if breakdown:
        text, g_fwd, d_upd, stream_fb, ema = _parts(tf, cfg, state)
        words, sentence, mask = text(data)
        fakes = _sync(g_fwd(data, words, sentence, mask))  # g_fwd's first (tracing) call
        parts = {
            "generator_forward": (g_fwd, (data, words, sentence, mask), 1),
            "discriminator_updates": (d_upd, (data, fakes, sentence), 0),
            "stream_loss_forward_backward": (stream_fb, (data, fakes[-1]), 0),
            "ema": (ema, (), 0),
        }
        medians, cpu_medians = {}, {}
        for name, (fn, args, calls_made) in parts.items():
            cpu = []
            # As for the step: `warmup` untimed calls in all, the first (tracing) one included.
            medians[name] = statistics.median(
                time_calls(fn, args, max(1, warmup) - calls_made, repeat, _sync, cpu))
            cpu_medians[name] = statistics.median(cpu)
            _progress(f"train batch {batch}: {name} {medians[name]:.3f} s (CPU {cpu_medians[name]:.3f} s)")
        for m, whole in ((medians, result["s_per_iter"]), (cpu_medians, result["cpu_s_per_iter"])):
            # Derived: the step minus its discriminator half and the EMA (STEM's forward, a few
            # milliseconds, included), and that minus the generator forward and STREAM parts.
            m["generator_half_step"] = whole - m["discriminator_updates"] - m["ema"]
            m["generator_backward_and_update"] = (
                m["generator_half_step"] - m["generator_forward"] - m["stream_loss_forward_backward"])
        result["breakdown_s"] = medians
        result["breakdown_cpu_s"] = cpu_medians
    result["peak_rss_mb"] = peak_rss_mb()
    gpu_peak = _gpu_peak_mb(tf)
    if gpu_peak is not None:
        result["gpu_peak_mb"] = gpu_peak
    del train_step
    return result


# --------------------------------------------------------------------------------------------
# Generation through the SavedModel


def _random_vocabulary(size: int) -> list[str]:
    """`size` distinct lowercase words (letters only, as the tokenizer splits)."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = []
    i = 0
    while len(words) < size:
        n, w = i, ""
        while True:
            w = letters[n % 26] + w
            n //= 26
            if n == 0:
                break
        words.append("w" + w)
        i += 1
    return words


def export_random_generator(tf, cfg, vocab_size: int, root: str, networks: dict | None = None) -> str:
    """A run directory with random STEM and EMA generator, exported by serving/export.py exactly
    as after training; returns the SavedModel's version folder. If `networks` is a dict, the
    exported `stem` and `glam` are put into it (for the cost model, instead of building them twice)."""
    from mirrorgan_tf import config as config_lib
    from mirrorgan_tf import text
    from mirrorgan_tf.models.networks import build_glam, build_stem
    from mirrorgan_tf.runs import RunDir, pin_data
    from mirrorgan_tf.serving import export

    data_dir = os.path.join(root, "data")
    os.makedirs(data_dir)
    words = list(text.RESERVED) + _random_vocabulary(vocab_size - len(text.RESERVED))
    text.write_vocabulary(words, os.path.join(data_dir, "vocab.txt"))
    with open(os.path.join(data_dir, "manifest.json"), "w") as f:
        json.dump({"vocabulary": "vocab.txt", "vocab_size": vocab_size}, f)
    cfg.data.dir = data_dir
    cfg.data.vocab_size = 0
    run = RunDir(os.path.join(root, "run"))
    config_lib.save_config(cfg, run.config_path())
    pin_data(run, cfg)  # the run's own copy of the vocabulary, as training gives it
    use_precision(cfg)
    stem = build_stem(cfg, vocab_size, batch=1)
    glam = build_glam(cfg, seed=cfg.train.seed, batch=1)
    for stage, objects in (("damsm", {"stem": stem}), ("gan", {"glam_ema": glam})):
        manager = tf.train.CheckpointManager(tf.train.Checkpoint(**objects), run.checkpoints(stage), 1)
        run.mark_done(stage, {"steps": 1, "checkpoint": manager.save(checkpoint_number=1)})
    if networks is not None:
        networks.update(stem=stem, glam=glam)
    return export.export(run.root, os.path.join(root, "export"), version=1)


def bench_infer(tf, cfg, batch: int, vocab_size: int, warmup: int, repeat: int) -> dict:
    import copy

    import keras
    import numpy as np

    keras.utils.set_random_seed(cfg.train.seed)
    reset_peak_rss()
    _reset_gpu_peak(tf)
    out = {}
    with tempfile.TemporaryDirectory(prefix="mirrorgan-bench-") as root:
        t0 = time.perf_counter()
        built = {}
        path = export_random_generator(tf, copy.deepcopy(cfg), vocab_size, root, built)
        out["export_s"] = time.perf_counter() - t0
        out["compute_dtype"] = {"glam": built["glam"].compute_dtype}
        _progress(f"infer: exported in {out['export_s']:.1f} s")
        gc.collect()
        t0 = time.perf_counter()
        serve = tf.saved_model.load(path).signatures["serving_default"]
        out["load_s"] = time.perf_counter() - t0
        _progress(f"infer: loaded in {out['load_s']:.1f} s")
        vocab = _random_vocabulary(vocab_size - 2)
        rng = np.random.default_rng(0)
        size = cfg.image_sizes[-1]
        for n in sorted({1, batch}):
            captions = tf.constant([" ".join(rng.choice(vocab, cfg.data.words_num)) for _ in range(n)])
            t0 = time.perf_counter()
            images = serve(captions=captions)["images"]
            first = time.perf_counter() - t0
            if tuple(images.shape) != (n, size, size, 3) or images.dtype != tf.uint8:
                raise RuntimeError(f"serving_default gave {images.shape} {images.dtype}, expected "
                                   f"({n}, {size}, {size}, 3) uint8")
            times = time_calls(lambda c: serve(captions=c), (captions,), max(0, warmup - 1), repeat, _sync)
            latency = statistics.median(times)
            out[f"batch{n}"] = {"batch": n, "latency_s": latency, "images_per_s": n / latency, "times_s": times,
                                "first_call_s": first}
            _progress(f"infer batch {n}: first call {first:.1f} s, {latency:.3f} s")
        # The generator's work per image, by the cost model, on the same networks outside the SavedModel.
        try:
            from mirrorgan_tf.models import networks

            stem, glam = built["stem"], built["glam"]
            t = cfg.data.words_num

            @tf.function
            def generate(ids, lengths, z):
                return networks.generate(stem, glam, ids, lengths, z)["images"][-1]

            spec = (tf.TensorSpec([batch, t], tf.int32), tf.TensorSpec([batch], tf.int32),
                    tf.TensorSpec([batch, cfg.model.z_dim], tf.float32))
            flops = graph_flops(tf, generate.get_concrete_function(*spec))
            out["gflop_per_image"] = flops / 1e9 / batch
            b = out[f"batch{batch}"]
            b["achieved_gflops"] = out["gflop_per_image"] * b["images_per_s"]
        except Exception as e:
            out["flops_error"] = f"{type(e).__name__}: {e}"
        _progress("infer: cost model counted")
    out["peak_rss_mb"] = peak_rss_mb()
    gpu_peak = _gpu_peak_mb(tf)
    if gpu_peak is not None:
        out["gpu_peak_mb"] = gpu_peak
    return out


# --------------------------------------------------------------------------------------------
# CLI


def _variants(tf, precision_arg, xla_arg):
    gpu = bool(tf.config.list_physical_devices("GPU"))
    precisions = precision_arg.split(",") if precision_arg else (list(PRECISIONS) if gpu else ["float32"])
    for p in precisions:
        if p not in PRECISIONS:
            raise ValueError(f"--precision: {p!r} is not one of {', '.join(PRECISIONS)}")
    xla = xla_arg or ("both" if gpu else "off")
    xlas = {"off": [False], "on": [True], "both": [False, True]}[xla]
    return [(p, x) for p in precisions for x in xlas]


def _variant_config(cfg, precision: str, xla: bool):
    import copy

    c = copy.deepcopy(cfg)
    # As the config names them (config.precision_policy): float16 gets loss scaling, bfloat16 none.
    c.train.mixed_precision = {"float32": False, "bfloat16": "bfloat16", "float16": "float16"}[precision]
    c.train.xla = xla
    return c


def _fmt(x, digits=3):
    return "-" if x is None else f"{x:.{digits}g}" if isinstance(x, float) else str(x)


def print_table(report: dict) -> None:
    m = report["machine"]
    print(f"machine: {m['cpu']}, {m['cores']} cores, GPU: {', '.join(g['name'] for g in m['gpu']) or 'none'}, "
          f"TensorFlow {m['tensorflow']}, threads {report['threads']}")
    peaks = report["peak_gflops"]
    print("peak (n=2048 matrix product): " + ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in peaks.items()))
    for v in report["variants"]:
        print(f"\n== precision {v['precision']}, XLA {'on' if v['xla'] else 'off'}")
        for r in v.get("train", []):
            rate = r.get("achieved_gflops")
            peak = peaks.get(v["precision"]) or peaks.get("float32")
            share = f" ({100 * rate / peak:.0f} % of peak)" if rate and peak else ""
            print(f"train batch {r['batch']:>3}: {r['s_per_iter']:.3f} s/iter, {r['images_per_s']:.2f} images/s, "
                  f"first step {r['first_step_s']:.1f} s ({r['traces']} trace, {r['trace_s']:.1f} s), "
                  f"peak RSS {r['peak_rss_mb']:.0f} MB, "
                  f"{_fmt(r.get('gflop_per_iter'), 4)} GFLOP/iter -> {_fmt(rate, 3)} GFLOP/s{share}, "
                  f"computing in {r['compute_dtype']['glam']}")
            for k, s in r.get("breakdown_s", {}).items():
                print(f"    {k:<32} {s:8.3f} s   CPU {r['breakdown_cpu_s'][k]:8.3f} s")
        inf = v.get("infer")
        if inf:
            for k in sorted(x for x in inf if x.startswith("batch")):
                b = inf[k]
                print(f"infer batch {b['batch']:>3}: latency {b['latency_s']:.4f} s, {b['images_per_s']:.2f} images/s"
                      + (f", {b['achieved_gflops']:.1f} GFLOP/s" if b.get("achieved_gflops") else ""))
            print(f"infer: export {inf['export_s']:.1f} s, load {inf['load_s']:.1f} s, peak RSS "
                  f"{inf['peak_rss_mb']:.0f} MB, {_fmt(inf.get('gflop_per_image'), 4)} GFLOP/image")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m mirrorgan_tf.benchmark", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/cub.yaml")
    p.add_argument("--batch", type=int, default=12)
    p.add_argument("--what", choices=("train", "infer", "all"), default="all")
    p.add_argument("--train-batches", help="comma-separated training batch sizes (default: --batch and 4)")
    p.add_argument("--repeat", type=int, default=4)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--precision", help="comma-separated from float32, bfloat16, float16 "
                                       "(default: float32 on a CPU, all three on a GPU)")
    p.add_argument("--xla", choices=("off", "on", "both"), help="default: off on a CPU, both on a GPU")
    p.add_argument("--threads", type=int, default=0, help="intra-op threads (0 = TensorFlow's default)")
    p.add_argument("--no-breakdown", action="store_true", help="time whole iterations only")
    p.add_argument("--vocab-size", type=int, default=5450, help="words in the random vocabulary")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    a = p.parse_args(argv)
    for name in ("batch", "repeat", "vocab_size"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(a, name)}")
    if a.warmup < 0 or a.threads < 0:
        p.error("--warmup and --threads must be >= 0")
    if a.vocab_size < 3:
        p.error("--vocab-size must be at least 3")
    if a.train_batches:
        try:
            if min(int(b) for b in a.train_batches.split(",")) < 1:
                raise ValueError
        except ValueError:
            p.error(f"--train-batches: expected positive integers separated by commas, got {a.train_batches!r}")
    for name in (a.precision or "float32").split(","):
        if name not in PRECISIONS:  # checked before TensorFlow's 4 s import
            p.error(f"--precision: {name!r} is not one of {', '.join(PRECISIONS)}")

    from mirrorgan_tf.config import ConfigError, load_config

    overrides = ["damsm.backbone_weights=random", "stream.backbone_weights=random"] + a.overrides
    try:
        cfg = load_config(a.config, overrides)
    except (ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    if a.threads:
        tf.config.threading.set_intra_op_parallelism_threads(a.threads)
    try:
        variants = _variants(tf, a.precision, a.xla)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    threads = a.threads or tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count()
    report = {"config": a.config, "batch": a.batch, "repeat": a.repeat, "warmup": a.warmup, "threads": threads,
              "machine": machine_info(tf), "peak_gflops": {}, "variants": []}
    for precision in sorted({v[0] for v in variants}, key=list(PRECISIONS).index):
        report["peak_gflops"][precision] = measured_peak_gflops(tf, precision.replace("float32", "float32"))
        _progress(f"peak {precision}: {report['peak_gflops'][precision]:.1f} GFLOP/s")
    if a.train_batches:
        batches = [int(b) for b in a.train_batches.split(",")]
    else:
        batches = [a.batch] + ([SMALL_BATCH] if a.batch != SMALL_BATCH else [])
    for precision, xla in variants:
        c = _variant_config(cfg, precision, xla)
        entry = {"precision": precision, "xla": xla}
        if a.what in ("infer", "all"):
            entry["infer"] = bench_infer(tf, c, a.batch, a.vocab_size, a.warmup, a.repeat)
            keras.backend.clear_session()
            gc.collect()
        if a.what in ("train", "all"):
            # One set of networks for every batch size; the smallest batch runs first, so that its
            # peak memory is not raised by what the larger batch's step left allocated.
            built = build_train_state(tf, c, a.vocab_size)
            by_batch = {}
            for b in sorted(set(batches)):
                c.train.batch_size = b
                by_batch[b] = bench_train(tf, c, b, a.vocab_size, a.warmup, a.repeat, not a.no_breakdown, built)
                gc.collect()
            entry["train"] = [by_batch[b] for b in dict.fromkeys(batches)]
            del built
            keras.backend.clear_session()
            gc.collect()
        report["variants"].append(entry)
        _progress(f"{precision}, XLA {'on' if xla else 'off'} done")
    keras.mixed_precision.set_global_policy("float32")

    # The headline keys: the first variant at --batch.
    first = report["variants"][0]
    if "train" in first:
        report["train_s_per_iter"] = first["train"][0]["s_per_iter"]
    if "infer" in first:
        report["infer_images_per_s"] = first["infer"][f"batch{a.batch}"]["images_per_s"]
        report["infer_latency_s"] = {"batch1": first["infer"]["batch1"]["latency_s"],
                                     f"batch{a.batch}": first["infer"][f"batch{a.batch}"]["latency_s"]}
    report["peak_rss_mb"] = max([r["peak_rss_mb"] for v in report["variants"] for r in v.get("train", [])]
                                + [v["infer"]["peak_rss_mb"] for v in report["variants"] if "infer" in v])
    if a.json:
        print(json.dumps(report, indent=1, sort_keys=True))
    else:
        print_table(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
