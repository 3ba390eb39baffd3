"""The published evaluation protocols (`evaluate --protocol cub|coco`): AttnGAN / MirrorGAN's
(and DM-GAN's, DF-GAN's after them) IS, FID and R-precision on 30,000 generated images, in one
resumable command.

What a protocol fixes (README, Sampling and evaluation, "The published protocol", says where each
fact comes from in the original code and which reading we take where that code is ambiguous):
- the samples: passes over the split's images, each pass in a seeded random order (the original's
  shuffled data loader) and each image with one of its usable captions drawn uniformly and
  independently per pass (the original draws a random caption per image on every pass), until
  the image count (30,000; CUB's 2,933 test images take 10.2 passes); caption ids keep their
  first `words_num` words (25 for CUB, 20 for COCO: the original evaluation configs);
- the noise: sample i's z and conditioning noise are a pure function of (seed, i) (as everywhere
  here), seed 100 by default (the original fixes manualSeed = 100 for evaluation);
- the images: the final stage's output quantised to uint8 by truncation, as the original's
  `((x + 1) * 127.5).astype(uint8)` before it writes PNG files that every metric then reads;
- the metrics: IS with 10 splits (CUB: StackGAN's Inception fine-tuned on CUB, given as
  --is-classifier; COCO: the 2015-12-05 graph with improved-GAN's bias-free softmax), FID from that
  graph's pool_3 against the split's real images, R-precision by the "published" rule of
  metrics/r_precision.py (1 + 99 captions, 10 folds, the run's own DAMSM as the original uses).

Resumable: images are written in shards of `shard_size` (npz: uint8 images [n, s, s, 3], their
sample numbers, caption rows, image and caption indices) under a temporary name and renamed when
whole, so a shard under its final name is complete; a re-run checks the folder's `protocol.json`
(same run checkpoint, protocol, count, seed, shard size and sample plan, else it refuses), keeps
every shard that loads with the expected samples and generates the rest. The metrics then read
the shards.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
import zipfile
from dataclasses import asdict, dataclass

import numpy as np
import tensorflow as tf

from mirrorgan_tf.images import INCOMPLETE, atomic_write
from mirrorgan_tf.metrics.base import PUBLISHED_IMAGES, EvalError, percent

STATE = "protocol.json"
RESULTS = "results.json"
PLAN_STREAM = 2  # the sample plan's random stream (0 and 1 are the generator's z and epsilon)


@dataclass(frozen=True)
class Protocol:
    name: str
    dataset: str  # the prepared dataset (manifest "dataset") the published figures are on
    words_num: int  # caption words fed to the text encoder (the original evaluation config's WORDS_NUM)
    is_classifier: str  # what --is-classifier must be
    is_softmax_bias: bool  # False: softmax(pool_3 @ W), improved-GAN's IS code for the 2015 graph
    published: str  # the papers' figures, for the table's last line
    images: int = PUBLISHED_IMAGES
    seed: int = 100  # the original's manualSeed when evaluating
    folds: int = 10
    is_splits: int = 10
    metrics: tuple = ("is", "fid", "r_precision")


PROTOCOLS = {
    "cub": Protocol(
        name="cub", dataset="cub", words_num=25, is_softmax_bias=True,
        is_classifier="StackGAN's Inception fine-tuned on CUB (inception_finetuned_models/birds_valid299/model.ckpt, "
                      "50 classes)",
        published="MirrorGAN IS 4.56 +- 0.05, R-precision 57.67 %; AttnGAN IS 4.36 +- 0.03, R 67.82 +- 4.43 %; "
                  "DM-GAN IS 4.75 +- 0.07, FID 16.09, R 72.31 +- 0.91 %; DF-GAN FID 14.81"),
    "coco": Protocol(
        name="coco", dataset="coco", words_num=20, is_softmax_bias=False,
        is_classifier="the 2015-12-05 Inception graph (classify_image_graph_def.pb)",
        published="MirrorGAN IS 26.47 +- 0.41, R-precision 74.52 %; AttnGAN IS 25.89 +- 0.47, R 85.47 +- 3.69 %; "
                  "DM-GAN IS 30.49 +- 0.57, FID 32.64, R 88.56 +- 0.28 %; DF-GAN FID 19.32"),
}


def plan(image_index: np.ndarray, count: int, seed: int) -> np.ndarray:
    """The protocol's samples: int64 [count] rows of the split's caption pairs (image_index [P],
    the image of each usable caption). Pass after pass over the images, each pass in a random
    order with one random caption per image (uniform over that image's captions, drawn anew each
    pass), cut at `count`. A pure function of (image_index, count, seed)."""
    image_index = np.asarray(image_index)
    order = np.argsort(image_index, kind="stable")  # rows grouped by image
    images, starts, counts = np.unique(image_index[order], return_index=True, return_counts=True)
    rng = np.random.default_rng([seed, PLAN_STREAM])
    out = []
    for _ in range(-(-count // len(images))):
        shuffled = rng.permutation(len(images))
        pick = np.floor(rng.random(len(images)) * counts[shuffled]).astype(np.int64)
        out.append(order[starts[shuffled] + pick])
    return np.concatenate(out)[:count].astype(np.int64)


def to_uint8(images) -> np.ndarray:
    """float [-1, 1] -> uint8 by truncation, as the original's `((x + 1) * 127.5).astype(uint8)`."""
    return np.floor(np.clip((np.asarray(images, np.float32) + 1.0) * 127.5, 0.0, 255.0)).astype(np.uint8)


def from_uint8(images: np.ndarray) -> np.ndarray:
    """uint8 -> float32 in [-1, 1], what every metric takes (as the originals read the PNG files)."""
    return images.astype(np.float32) / 127.5 - 1.0


class ShardStore:
    """Generated images of one protocol run in `folder`: shard k holds samples
    [k * shard_size, min(total, (k + 1) * shard_size)) in `images-KKKKK.npz`."""

    def __init__(self, folder: str, total: int, shard_size: int):
        self.folder, self.total, self.shard_size = folder, total, shard_size
        self.count = -(-total // shard_size)

    def path(self, k: int) -> str:
        return os.path.join(self.folder, f"images-{k:05d}.npz")

    def samples(self, k: int) -> np.ndarray:
        return np.arange(k * self.shard_size, min(self.total, (k + 1) * self.shard_size), dtype=np.int64)

    def complete(self, k: int, rows: np.ndarray) -> bool:
        """Shard k is there, whole, and holds the samples and caption rows the plan gives it.
        A damaged file (e.g. copied in part) counts as missing; temporary files are never read."""
        path = self.path(k)
        if not tf.io.gfile.exists(path):
            return False
        try:
            with np.load(path) as f:
                samples, shard_rows = f["samples"], f["rows"]
            shape = _stored_shape(path, "images")
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            print(f"note: {path} is damaged ({type(e).__name__}); generating it again", flush=True)
            return False
        expected = self.samples(k)
        return (np.array_equal(samples, expected) and np.array_equal(shard_rows, rows[expected])
                and shape[0] == len(expected))

    def write(self, k: int, images: np.ndarray, rows: np.ndarray, pairs) -> None:
        samples = self.samples(k)
        buffer = io.BytesIO()
        np.savez(buffer, images=images, samples=samples, rows=rows[samples],
                 image_index=pairs.image_index[rows[samples]], caption_index=pairs.caption_index[rows[samples]])
        atomic_write(self.path(k), buffer.getvalue())  # write-then-rename: never half a shard under its name

    def read(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 images [n, s, s, 3], sample numbers int64 [n]) of shard k."""
        with np.load(self.path(k)) as f:
            return f["images"], f["samples"]

    def leftovers(self) -> list[str]:
        """Temporary files of writes that never finished (a killed run)."""
        if not tf.io.gfile.isdir(self.folder):
            return []
        return [os.path.join(self.folder, n) for n in tf.io.gfile.listdir(self.folder) if n.startswith(INCOMPLETE)]


def _stored_shape(path: str, name: str) -> tuple:
    """The shape of array `name` in the npz at `path`, from its header alone (a shard's images
    are about 100 MB: a resume should not read them all to count them)."""
    with tf.io.gfile.GFile(path, "rb") as raw, zipfile.ZipFile(raw) as z, z.open(f"{name}.npy") as member:
        version = np.lib.format.read_magic(member)
        header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        return header(member)[0]


def state(a, protocol: Protocol, ctx, checkpoint: str, count: int) -> dict:
    """What the shards in the folder depend on; a re-run must match it to reuse them."""
    digest = hashlib.sha1(np.ascontiguousarray(ctx.rows).tobytes()
                          + np.ascontiguousarray(ctx.all_pairs.ids[ctx.rows]).tobytes()).hexdigest()
    return {"protocol": protocol.name, "run_dir": os.path.abspath(a.run_dir), "gan_checkpoint": os.path.basename(checkpoint),
            "split": a.split, "images": count, "seed": ctx.seed, "shard_size": a.shard_size,
            "words_num": protocol.words_num, "plan_sha1": digest}


def check_state(folder: str, wanted: dict) -> None:
    """Refuse (EvalError) to add shards to a folder made with other settings; write the state otherwise."""
    path = os.path.join(folder, STATE)
    if tf.io.gfile.exists(path):
        with tf.io.gfile.GFile(path) as f:
            have = json.load(f)
        changed = [k for k in wanted if have.get(k) != wanted[k]]
        if changed:
            raise EvalError(f"{path}: its images were generated with other settings ("
                            + "; ".join(f"{k}: {have.get(k)!r} there, {wanted[k]!r} now" for k in changed)
                            + "); give another --out, or delete the folder to start again")
        return
    atomic_write(path, json.dumps(wanted, indent=2) + "\n")


def generate(store: ShardStore, generator, ctx, log=print) -> dict:
    """Every missing shard of `store`, from ctx.rows (the plan) with the run's generator.
    Returns {"generated": images made now, "reused": images of complete shards kept, ...}."""
    pairs, rows = ctx.all_pairs, ctx.rows
    for path in store.leftovers():  # a killed write's temporary file: never read, removed
        tf.io.gfile.remove(path)
    generated = reused = 0
    start = time.time()
    for k in range(store.count):
        if store.complete(k, rows):
            reused += len(store.samples(k))
            continue
        samples = store.samples(k)
        images = []
        for s in range(0, len(samples), ctx.batch_size):
            batch = samples[s:s + ctx.batch_size]
            out = generator(pairs.ids[rows[batch]], pairs.lengths[rows[batch]], batch, seed=ctx.seed)
            images.append(to_uint8(out["images"][-1].numpy()))
        store.write(k, np.concatenate(images), rows, pairs)
        generated += len(samples)
        rate = generated / max(time.time() - start, 1e-6)
        left = store.total - reused - generated
        log(f"shard {k + 1}/{store.count}: {reused + generated:,}/{store.total:,} images "
            f"({rate:.1f} images/s, about {left / rate / 60:.0f} min left)")
    return {"generated": generated, "reused": reused, "shards": store.count, "shard_size": store.shard_size,
            "folder": store.folder, "generation_seconds": round(time.time() - start, 1)}


def score(store: ShardStore, metrics, batch_size: int) -> None:
    """Feed every shard's images, as floats in [-1, 1], to every metric."""
    for k in range(store.count):
        images, samples = store.read(k)
        for s in range(0, len(samples), batch_size):
            x = from_uint8(images[s:s + batch_size])
            for m in metrics:
                m.update(x, samples[s:s + batch_size])


def run(a, ctx, metrics) -> dict:
    """Generate (resuming) and score a protocol run; returns the results (also written to
    <out>/results.json)."""
    from mirrorgan_tf.evaluation.generator import TrainedGenerator
    from mirrorgan_tf.metrics import prepare_metrics
    from mirrorgan_tf.runs import load_run

    protocol = PROTOCOLS[a.protocol]
    count = len(ctx.rows)
    checkpoint = load_run(a.run_dir).gan_checkpoint(getattr(a, "checkpoint", "latest"))
    folder = a.out
    check_state(folder, state(a, protocol, ctx, checkpoint, count))
    store = ShardStore(folder, count, a.shard_size)
    generation = generate(store, TrainedGenerator(a.run_dir, getattr(a, "checkpoint", "latest")), ctx)
    prepare_metrics(metrics)
    score(store, metrics, ctx.batch_size)
    results = {
        "protocol": {**asdict(protocol), "images": count, "published_images": protocol.images,
                     "dataset": ctx.manifest.get("dataset"), "run_dir": a.run_dir, "split": a.split,
                     "gan_checkpoint": checkpoint, "seed": ctx.seed},
        "generation": generation,
        "metrics": {m.name: m.result() for m in metrics},
    }
    atomic_write(os.path.join(folder, RESULTS), json.dumps(results, indent=2, default=_plain) + "\n")
    return results


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON: {type(value).__name__}")


def table(results: dict) -> str:
    """The papers' table (one row per metric: IS mean +- std, FID, R-precision mean +- std), each
    figure with its counts, then the protocol's settings and the published figures."""
    from mirrorgan_tf.metrics import REGISTRY

    p, g, m = results["protocol"], results["generation"], results["metrics"]
    rows = []
    if "is" in m:
        r = m["is"]
        rows.append(("IS", f"{r['value']:.2f} +- {r['std']:.2f}",
                     f"{r['images']:,} images in {r['splits']} splits of {r['images'] // r['splits']:,}; "
                     f"classifier {os.path.basename(str(r['classifier']))}"))
    if "fid" in m:
        r = m["fid"]
        rows.append(("FID", f"{r['value']:.2f}", f"{r['images']:,} generated vs {r['reference_images']:,} real "
                     f"images; {r['features']} pool_3"))
    if "r_precision" in m:
        r = m["r_precision"]
        rows.append(("R-precision", percent(r["value"], r["std"]),
                     f"{r['images']:,} images in {r['folds']} folds of {r['fold_images']:,}; "
                     f"1 + {r['candidates'] - 1} captions each; rule {r['rule']}"))
    width = max(len(v) for _, v, _ in rows) if rows else 0
    lines = [f"protocol {p['name']} ({p['dataset'] or 'unknown'} data, split {p['split']}): {p['images']:,} images "
             f"(published: {p['published_images']:,}), seed {p['seed']}, gan checkpoint "
             f"{os.path.basename(str(p['gan_checkpoint']))}",
             f"{'metric':<12} {'value':<{width}}  counts"]
    lines += [f"{name:<12} {value:<{width}}  {counts}" for name, value, counts in rows]
    lines.append(f"images: {g['generated']:,} generated now, {g['reused']:,} reused from complete shards "
                 f"({g['shards']} shards of {g['shard_size']:,} in {g['folder']})")
    if p["dataset"] != p["name"]:
        lines.append(f"note: the run's data is {p['dataset']!r}, not {p['name']!r}: not comparable with the papers")
    lines.append(f"published ({p['name']}, 30,000 images): {p['published']}")
    lines.append("details:")
    lines += [f"  {line}" for name, r in m.items() for line in REGISTRY[name].format(r)]
    return "\n".join(lines)


def check(a) -> Protocol:
    """The protocol's own argument checks, before anything loads (EvalError names the argument)."""
    protocol = PROTOCOLS[a.protocol]
    if a.num_images is not None or a.samples_per_caption != 1:
        raise EvalError(f"--protocol {a.protocol} fixes the images (one per sampled caption, {protocol.images:,}): "
                        f"use --protocol-images N instead of --num-images / --samples-per-caption")
    if a.protocol_images is not None and a.protocol_images < 2 * protocol.folds:
        raise EvalError(f"--protocol-images {a.protocol_images}: at least {2 * protocol.folds} "
                        f"(2 per R-precision fold and IS split)")
    if a.batch_size < 1:
        raise EvalError(f"--batch-size {a.batch_size}: must be at least 1")
    if a.shard_size < 1:
        raise EvalError(f"--shard-size {a.shard_size}: must be at least 1")
    if a.inception_weights:
        raise EvalError(f"--protocol {a.protocol}: FID is the 2015 graph's; give --inception-graph "
                        f"classify_image_graph_def.pb instead of --inception-weights")
    return protocol


def metric_names(a, protocol: Protocol) -> list[str]:
    if not a.metrics:
        return list(protocol.metrics)
    names = [n.strip() for n in a.metrics.split(",") if n.strip()]
    other = [n for n in names if n not in protocol.metrics]
    if other:
        raise EvalError(f"--metrics {','.join(other)}: not part of --protocol {a.protocol} "
                        f"({', '.join(protocol.metrics)})")
    return names


def options(a, protocol: Protocol) -> dict:
    """The metrics' settings under the protocol, and the inputs it requires (EvalError if absent)."""
    names = metric_names(a, protocol)
    is_classifier = a.is_classifier
    if "is" in names and not is_classifier:
        if protocol.name == "coco" and a.inception_graph:
            is_classifier = a.inception_graph  # the same 2015 graph scores both
        else:
            raise EvalError(f"--protocol {protocol.name}: the Inception Score needs --is-classifier: "
                            f"{protocol.is_classifier}")
    if "fid" in names and not a.inception_graph:
        raise EvalError(f"--protocol {protocol.name}: FID needs --inception-graph classify_image_graph_def.pb "
                        f"(the 2015-12-05 Inception graph)")
    return {"damsm_run": a.damsm_run, "inception_graph": a.inception_graph, "is_classifier": is_classifier,
            "folds": protocol.folds, "is_splits": protocol.is_splits, "r_precision_rule": "published",
            "is_softmax_bias": protocol.is_softmax_bias, "names": names}
