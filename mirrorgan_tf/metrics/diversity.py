"""`--metrics diversity`: how varied the generated images are, for any dataset (CUB, COCO, shapes,
your own), in a feature space. Needs `--samples-per-caption K` >= 2.

Two kinds of figure, both computed on feature vectors (float64, Euclidean distance):

1. Precision, recall, density and coverage of the generated images against the split's real
   images, from k-nearest-neighbour balls (the `prdc` package, Naeem et al.'s implementation):

   - precision = the share of generated samples inside at least one real sample's ball, the ball
     around a real sample reaching its k-th nearest real neighbour; recall = the share of real
     samples inside at least one generated sample's ball (Kynkaanniemi et al., "Improved Precision
     and Recall Metric for Assessing Generative Models", NeurIPS 2019);
   - density = the number of (generated sample, real ball) memberships divided by k * M, about 1
     when both sets come from one distribution; coverage = the share of real samples whose ball
     holds at least one generated sample (Naeem et al., "Reliable Fidelity and Diversity Metrics
     for Generative Models", ICML 2020). Two sets of one distribution give, in expectation,
     density 1 and, for large equal counts, coverage 1 - 1 / 2^k (0.969 at k = 5) (Naeem et al.).

   Two calls: k = 5 for all four (Naeem et al.'s recommended setting; their protocol), and k = 3 for
   precision and recall alone (Kynkaanniemi et al.'s protocol, so those two can be set beside the
   figures published with it). A ball holds a point strictly inside its radius (as `prdc` does).

2. The pairwise-distance ratio: the mean distance between two samples of one caption, divided by
   the mean distance between two real images of one class. 1.0 = the samples of a caption differ
   as much as the real images of a class do; 0 = one picture per caption whatever the noise (mode
   collapse). The real groups are, in this order of preference: the split's `class_id` (CUB;
   images whose class_id is -1 are left out); the full tuple of attribute labels (shapes:
   colour, shape, size, position); where the data labels neither (COCO, your own captions),
   random pairs of distinct real images, named "random real pairs" in the result. A caption says
   more than a class, so a generator that matches the data can score below 1 against a class
   reference; against random real pairs it should score well below 1. Each group counts once: the
   mean of the groups' mean pairwise distances (every group of generated samples has K members, so
   for them it is also the mean over all within-caption pairs). Groups of one image contribute
   nothing. Where classes exist, the result also gives random real pairs / within class: what a
   generator that ignored the caption and drew from the whole data would score.

Sets and counts. The real images are split at random (seeded) into two disjoint halves A and B.
A is the reference: the generated samples are scored against A, and B against A gives the same
figures for real images (the ceiling, at the same counts). Every set is cut to the same size
n = min(generated images, real images // 2, MAX_FEATURES): k-NN figures depend on the counts, and
the expectations above assume equal ones. Generated samples are taken by whole captions (captions
in a seeded random order, all K samples of each, the last caption cut short), so the subset keeps
its K-samples-per-caption structure. Each figure in the result carries its counts.

What a collapsed generator does to (1): its K samples of a caption coincide, so with K >= k + 1
(6 at k = 5) its k-NN radii are 0 and recall is exactly 0; with fewer samples per caption recall
and coverage fall only as far as the smaller number of distinct images covers less of the real
images. Ratio (2) sees the collapse at any K >= 2. For recall and coverage to react, draw
fewer captions with more samples each (`--num-images N --samples-per-caption 6` with N * 6 about
the number of real images).

Memory and time. `prdc` builds full distance matrices: at n = 10,000 (MAX_FEATURES), 2,048-d
features, one call peaked at 2.2 GB resident and took 2 minutes on the 2-core CPU machine (load
average 9; float64); the metric makes four calls (generated and real, k = 5 and k = 3). Memory
grows as n^2: 20,000 would need about 9 GB. The cap keeps it below that; a seeded subsample of each
set is taken above it.

Feature spaces, as for FID: `--inception-graph` (the 2015-12-05 graph's pool_3, 2,048-d) or
`--inception-weights` (keras.applications InceptionV3's average pool, 2,048-d). Both papers embed
images with an ImageNet VGG-16 (its second fully connected layer, 4,096-d), which this project
does not offer: in the Inception space the figures follow their procedure, not their numbers
(the result's note says so). Without either,
the DAMSM image encoder's global code (model.embedding_dim wide) of `--damsm-run`, else of the run
itself; the result names the space. Nothing is downloaded. Real images are read at the
generator's final size, as the generated ones; their Inception features are cached in
`<data.dir>/eval_cache` (DAMSM features are not: a run's DAMSM may be retrained).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os

import numpy as np
import tensorflow as tf

from mirrorgan_tf import data, runs
from mirrorgan_tf.config import load_config
from mirrorgan_tf.images import atomic_write
from mirrorgan_tf.metrics import inception
from mirrorgan_tf.metrics.base import EvalError, Metric, percent

K_COVERAGE = 5  # Naeem et al. 2020: k for precision, recall, density and coverage
K_PRECISION = 3  # Kynkaanniemi et al. 2019: k for precision and recall
MAX_FEATURES = 10_000  # per set (generated, real A, real B): prdc holds n x n distance matrices
MIN_FEATURES = K_COVERAGE + 2  # prdc reads each point's (k + 1)-th smallest distance, its own 0 included
MAX_GROUP = 500  # members of one group whose pairs are all measured; a seeded subsample above it
RANDOM_PAIRS = 100_000  # pairs of distinct real images for the "random real pairs" reference
RANDOM_REFERENCE = "random real pairs"


# --- precision, recall, density, coverage ---------------------------------------------------

def prdc_scores(real: np.ndarray, generated: np.ndarray, k: int) -> dict:
    """`prdc.compute_prdc` (Naeem et al.'s implementation) on real float [N, D] and generated float
    [M, D] features with k nearest neighbours -> {"precision", "recall", "coverage": rates in
    [0, 1]; "density": >= 0, about 1 for one distribution, above 1 where generated samples crowd
    into dense real regions; "k", "real": N, "generated": M}. Needs N, M >= k + 2 (EvalError
    otherwise). The package's own progress line on stdout is kept out of the evaluation table."""
    import prdc

    real, generated = np.asarray(real, np.float64), np.asarray(generated, np.float64)
    if min(len(real), len(generated)) < k + 2:
        raise EvalError(f"precision/recall with k = {k} needs at least {k + 2} images per set; got "
                        f"{len(real)} real and {len(generated)} generated")
    with contextlib.redirect_stdout(io.StringIO()):
        scores = prdc.compute_prdc(real_features=real, fake_features=generated, nearest_k=k)
    return {**{name: float(v) for name, v in scores.items()}, "k": k, "real": len(real), "generated": len(generated)}


def take_by_group(groups: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of n members of `groups` (int [M], e.g. each sample's caption row), whole groups at a
    time in a random order (the last one cut short), sorted. n >= M returns every index."""
    groups = np.asarray(groups)
    if n >= len(groups):
        return np.arange(len(groups))
    _, inverse = np.unique(groups, return_inverse=True)
    inverse = inverse.reshape(-1)
    rank = np.empty(inverse.max() + 1, np.int64)
    rank[rng.permutation(len(rank))] = np.arange(len(rank))  # each group's place in a random order
    return np.sort(np.argsort(rank[inverse], kind="stable")[:n])


def fidelity_diversity(real: np.ndarray, generated: np.ndarray, generated_groups: np.ndarray, seed: int = 0,
                       cap: int = MAX_FEATURES) -> dict:
    """Precision/recall/density/coverage at k = 5 and precision/recall at k = 3, of the generated
    features float [M, D] (their captions int [M] in `generated_groups`) and of half B of the real
    features float [N, D], each against real half A. All three sets hold n = min(M, N // 2, cap)
    samples (seeded; see the module docstring). Returns {"generated": {"prdc": prdc_scores(k=5),
    "pr_k3": {"precision", "recall", "k", "real", "generated"}}, "real": {same for B},
    "counts": {"n", "generated_total", "real_total"}}. EvalError when n < MIN_FEATURES."""
    real, generated = np.asarray(real, np.float64), np.asarray(generated, np.float64)
    n = min(len(generated), len(real) // 2, cap)
    if n < MIN_FEATURES:
        raise EvalError(f"diversity: {len(generated)} generated and {len(real)} real images give sets of {n}; "
                        f"k-NN precision/recall needs at least {MIN_FEATURES} per set (and twice that of real "
                        f"images, split into two halves)")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(real))
    half_a, half_b = real[order[:n]], real[order[n:2 * n]]
    fake = generated[take_by_group(generated_groups, n, rng)]
    out = {}
    for who, points in (("generated", fake), ("real", half_b)):
        pr3 = prdc_scores(half_a, points, K_PRECISION)
        out[who] = {"prdc": prdc_scores(half_a, points, K_COVERAGE),
                    "pr_k3": {key: pr3[key] for key in ("precision", "recall", "k", "real", "generated")}}
    out["counts"] = {"n": n, "generated_total": len(generated), "real_total": len(real)}
    return out


# --- pairwise distances -----------------------------------------------------------------------

def mean_pairwise_distance(features: np.ndarray) -> tuple[float, int]:
    """features float [m, D], m >= 2 -> (mean Euclidean distance over the m (m - 1) / 2 unordered
    pairs of distinct rows, in the features' units; that number of pairs). Differences are taken
    directly, so identical rows are exactly 0 apart."""
    x = np.asarray(features, np.float64)
    m = len(x)
    if m < 2:
        raise ValueError(f"mean_pairwise_distance needs at least 2 rows, got {m}")
    total = 0.0
    for i in range(m - 1):
        total += float(np.sqrt(np.sum((x[i + 1:] - x[i]) ** 2, axis=1)).sum())
    pairs = m * (m - 1) // 2
    return total / pairs, pairs


def within_group_distance(features: np.ndarray, groups: np.ndarray, seed: int = 0,
                          max_group: int = MAX_GROUP) -> dict:
    """The mean over groups of each group's mean pairwise distance (`mean_pairwise_distance`).
    features float [N, D]; groups int [N], a label per row (rows labelled -1 are left out).
    Groups of one row contribute nothing; a group larger than `max_group` is measured on a seeded
    random subset of that many members (an unbiased estimate of its mean). Returns {"distance"
    (nan when no group has two members), "groups": groups that counted, "images": their rows,
    "pairs": pairs measured}."""
    features, groups = np.asarray(features, np.float64), np.asarray(groups)
    keep = groups != -1
    features, groups = features[keep], groups[keep]
    rng = np.random.default_rng(seed)
    order = np.argsort(groups, kind="stable")
    _, starts, counts = np.unique(groups[order], return_index=True, return_counts=True)
    means, images, pairs = [], 0, 0
    for start, count in zip(starts, counts):
        if count < 2:
            continue
        members = order[start:start + count]
        if count > max_group:
            members = np.sort(rng.choice(members, size=max_group, replace=False))
        mean, p = mean_pairwise_distance(features[members])
        means.append(mean)
        images += int(count)
        pairs += p
    return {"distance": float(np.mean(means)) if means else float("nan"), "groups": len(means), "images": images,
            "pairs": pairs}


def random_pair_distance(features: np.ndarray, seed: int = 0, pairs: int = RANDOM_PAIRS) -> dict:
    """Mean Euclidean distance between `pairs` random pairs of distinct rows of features float
    [N, D] (N >= 2; seeded; pairs drawn with replacement) -> {"distance", "images": N, "pairs"}."""
    x = np.asarray(features, np.float64)
    if len(x) < 2:
        raise ValueError(f"random_pair_distance needs at least 2 rows, got {len(x)}")
    rng = np.random.default_rng(seed)
    first = rng.integers(0, len(x), pairs)
    second = (first + rng.integers(1, len(x), pairs)) % len(x)  # never the same row
    distances = np.concatenate([np.sqrt(np.sum((x[first[s:s + 4096]] - x[second[s:s + 4096]]) ** 2, axis=1))
                                for s in range(0, pairs, 4096)])
    return {"distance": float(distances.mean()), "images": len(x), "pairs": pairs}


def real_groups(class_id: np.ndarray, attributes: np.ndarray) -> tuple[np.ndarray, str]:
    """The real images' groups for the ratio's denominator: (int64 [N] labels, -1 = left out;
    the reference's name). class_id int [N] where any is >= 0 ("within class (class_id)"); else
    the attribute tuples, int [N, A] with A > 0 ("within attribute class"); else all -1 and
    RANDOM_REFERENCE."""
    class_id = np.asarray(class_id, np.int64).reshape(-1)
    attributes = np.asarray(attributes, np.int64).reshape(len(class_id), -1)
    if (class_id >= 0).any():
        return np.where(class_id >= 0, class_id, -1), "within class (class_id)"
    if attributes.shape[1]:
        return np.unique(attributes, axis=0, return_inverse=True)[1].reshape(-1).astype(np.int64), \
            "within attribute class (all labels equal)"
    return np.full(len(class_id), -1, np.int64), RANDOM_REFERENCE


def pairwise_ratio(generated: np.ndarray, generated_groups: np.ndarray, real: np.ndarray, groups: np.ndarray,
                   reference: str, seed: int = 0) -> dict:
    """Mean within-caption distance of the generated features float [M, D] (captions int [M]) /
    the real reference distance: within `groups` (int [N], -1 = left out), or between random real
    pairs when `reference` is RANDOM_REFERENCE or no group has two members. Returns {"ratio"
    (>= 0: 0 = collapse, 1 = as varied as the reference; nan when the reference distance is 0),
    "generated": within_group_distance of the generated, "real": that of the real (with
    "reference": its name), "random_real_pairs": random_pair_distance, "unconditional_ratio":
    random real pairs / the reference (present when the reference is a within-group one)}."""
    gen = within_group_distance(generated, generated_groups, seed)
    unconditional = random_pair_distance(real, seed)
    within = within_group_distance(real, groups, seed) if reference != RANDOM_REFERENCE else {"groups": 0}
    if within["groups"] == 0:
        ref, reference = dict(unconditional), RANDOM_REFERENCE
    else:
        ref = within

    def ratio(distance):
        return distance / ref["distance"] if ref["distance"] > 0 else float("nan")

    out = {"ratio": ratio(gen["distance"]), "generated": gen, "real": {**ref, "reference": reference},
           "random_real_pairs": unconditional}
    if reference != RANDOM_REFERENCE:
        out["unconditional_ratio"] = ratio(unconditional["distance"])
    return out


# --- the metric --------------------------------------------------------------------------------

class _DamsmFeatures:
    """The global code float32 [N, embedding_dim] of a run's DAMSM image encoder."""

    def __init__(self, cfg, vocab_size: int, checkpoint: str):
        _, self.encoder = runs.restore_damsm(cfg, vocab_size, checkpoint)
        self.path = checkpoint

    def __call__(self, images):
        return self.encoder(tf.constant(images, tf.float32), training=False)[1].numpy()


class Diversity(Metric):
    """`--metrics diversity` (any dataset; `--samples-per-caption` >= 2). See the module docstring.

    Built with the evaluation Context; raises EvalError at once, before any generation, when
    --samples-per-caption is below 2, when fewer than MIN_FEATURES images would be generated,
    when the split has fewer than 2 * MIN_FEATURES real images, when a given Inception file is
    missing, or (no Inception file given) when the DAMSM run has no config.yaml or no DAMSM
    checkpoint. `prepare` loads the feature extractor and computes (or reads from the cache) the
    real images' features; `update` takes generated images float32 [b, s, s, 3] in [-1, 1] and
    their sample numbers; `result` returns {"value": {"prdc": k = 5 figures, "pr_k3": k = 3
    figures, "pairwise": `pairwise_ratio`}, "real": {"value": the same for real half B},
    "counts", "features", "feature_dim", "weights", "protocol", "note", ...}, rates in [0, 1],
    density >= 0, distances in feature units, each with its counts."""

    name = "diversity"
    applies_to_real = True

    def __init__(self, ctx):
        super().__init__(ctx)
        k = int(ctx.option("samples_per_caption", 1))
        if k < 2:
            raise EvalError(f"--samples-per-caption {k}: the diversity metric needs at least 2 samples per caption "
                            f"(it compares the samples of one caption)")
        n = len(ctx.rows)
        if n < MIN_FEATURES:
            raise EvalError(f"--num-images {n // k} x --samples-per-caption {k} = {n} images: the diversity metric "
                            f"needs at least {MIN_FEATURES} (k-NN precision/recall with k = {K_COVERAGE})")
        real = int(((ctx.manifest.get("splits") or {}).get(ctx.split) or {}).get("examples", 0))
        if real and real < 2 * MIN_FEATURES:
            raise EvalError(f"--split {ctx.split}: {real} real images; the diversity metric needs at least "
                            f"{2 * MIN_FEATURES} (two halves of {MIN_FEATURES})")
        self.samples_per_caption = k
        self.graph, self.weights = ctx.option("inception_graph"), ctx.option("inception_weights")
        self.damsm_run = ctx.option("damsm_run")
        if self.graph or self.weights:
            inception.check_paths(self.graph, self.weights, "diversity")
            return
        root = self.damsm_run or ctx.run_dir
        config_path = os.path.join(root, "config.yaml")
        if not tf.io.gfile.exists(config_path):
            raise EvalError(f"--damsm-run {root}: not a run directory (no config.yaml)")
        self.damsm_cfg = ctx.cfg if self.damsm_run is None else load_config(config_path)
        configured = self.damsm_cfg.damsm.checkpoint if self.damsm_run is None else ""
        self.checkpoint_path = configured or os.path.join(root, "damsm")
        if runs.find_checkpoint(self.checkpoint_path, "damsm") is None:
            raise EvalError(f"{self.checkpoint_path}: no DAMSM checkpoint, and no Inception weights, for the diversity "
                            f"metric's feature space (give --inception-graph FILE, --inception-weights FILE or "
                            f"--damsm-run RUN)")
        self.vocab_size = runs.load_run(root).vocab_size

    def prepare(self):
        if self.graph or self.weights:
            self.extractor = inception.load(self.graph, self.weights, "diversity")
            self.features_name = f"{self.extractor.source} pool features"
            self.extract = lambda images: self.extractor(images)[0]
        else:
            self.extractor = _DamsmFeatures(self.damsm_cfg, self.vocab_size, self.checkpoint_path)
            own = "the run's own" if self.damsm_run is None else "--damsm-run"
            self.features_name = f"DAMSM image encoder global code ({own})"
            self.extract = self.extractor
        self.generated = [None] * len(self.ctx.rows)
        self.real, self.real_class_id, self.real_attributes = self._real_features()

    def _cache_path(self):
        if not (self.graph or self.weights):
            return None
        ctx = self.ctx
        source = os.path.abspath(self.graph or self.weights)
        key = hashlib.sha1(f"{self.extractor.source}|{source}|{os.path.getsize(source)}".encode()).hexdigest()[:12]
        return os.path.join(ctx.cfg.data.dir, "eval_cache",
                            f"diversity-{ctx.split}-{ctx.cfg.image_sizes[-1]}px-{key}.npz")

    def _real_features(self):
        path = self._cache_path()
        if path and tf.io.gfile.exists(path):
            with np.load(path) as f:
                return f["features"], f["class_id"], f["attributes"]
        ctx = self.ctx
        feats, class_id, attributes = [], [], []
        for batch in data.eval_images(ctx.cfg, ctx.split, ctx.batch_size):
            feats.append(np.asarray(self.extract(batch["images"].numpy()), np.float32))
            class_id.append(batch["class_id"].numpy())
            attributes.append(batch["attributes"].numpy())
        feats, class_id, attributes = np.concatenate(feats), np.concatenate(class_id), np.concatenate(attributes)
        if path:
            buffer = io.BytesIO()
            np.savez(buffer, features=feats, class_id=class_id, attributes=attributes,
                     about=json.dumps({"split": ctx.split, "extractor": self.extractor.source}))
            atomic_write(path, buffer.getvalue())
        return feats, class_id, attributes

    def update(self, images, samples):
        for s, f in zip(samples, np.asarray(self.extract(images), np.float32)):
            self.generated[s] = f

    def result(self):
        ctx = self.ctx
        generated = np.stack(self.generated)
        knn = fidelity_diversity(self.real, generated, ctx.rows, seed=ctx.seed)
        groups, reference = real_groups(self.real_class_id, self.real_attributes)
        pairwise = pairwise_ratio(generated, ctx.rows, self.real, groups, reference, seed=ctx.seed)
        if self.graph or self.weights:
            notes = [("keras.applications " if self.weights else "") + "Inception features, not the papers' VGG-16 "
                     "fc2: precision/recall/density/coverage are not comparable with published figures"]
        else:
            notes = ["DAMSM feature space, not the papers' VGG-16: not comparable with published figures"
                     + ("; the run's own DAMSM (--damsm-run takes an independently trained one)"
                        if self.damsm_run is None else "")]
        notes.append("k-NN figures depend on the image count and the feature space: compare only at equal counts "
                     "in one space")
        return {
            "value": {**knn["generated"], "pairwise": pairwise},
            "real": {"value": knn["real"], "what": "real half B against real half A: the ceiling, at the same counts"},
            "counts": knn["counts"], "samples_per_caption": self.samples_per_caption, "seed": ctx.seed,
            "features": self.features_name, "feature_dim": int(generated.shape[1]),
            "weights": self.extractor.path, "real_features_cache": self._cache_path(),
            "protocol": {"prdc": f"Naeem et al. 2020, k = {K_COVERAGE}, the prdc package",
                         "pr_k3": f"Kynkaanniemi et al. 2019, k = {K_PRECISION}, the prdc package",
                         "pairwise": "mean within-caption distance / mean within-group real distance"},
            "note": "; ".join(notes),
        }

    @staticmethod
    def format(r):
        v, real, c = r["value"], r["real"]["value"], r["counts"]
        p, q = v["prdc"], real["prdc"]
        lines = [
            f"diversity/prdc [k={p['k']}; {p['generated']:,} generated vs {p['real']:,} real]: precision "
            f"{percent(p['precision'])}, recall {percent(p['recall'])}, density {p['density']:.3f}, coverage "
            f"{percent(p['coverage'])}; real half vs half: {percent(q['precision'])}, {percent(q['recall'])}, "
            f"{q['density']:.3f}, {percent(q['coverage'])}",
            f"diversity/pr_k3 [k={v['pr_k3']['k']}; same sets]: precision {percent(v['pr_k3']['precision'])}, recall "
            f"{percent(v['pr_k3']['recall'])}; real half vs half: {percent(real['pr_k3']['precision'])}, "
            f"{percent(real['pr_k3']['recall'])}",
        ]
        w = v["pairwise"]
        g, ref = w["generated"], w["real"]
        extra = (f"; random real pairs {w['unconditional_ratio']:.2f}" if "unconditional_ratio" in w else "")
        lines.append(
            f"diversity/pairwise [{g['groups']:,} captions x {r['samples_per_caption']} samples; real: "
            + (f"{ref['groups']:,} groups of {ref['images']:,} images" if ref["reference"] != RANDOM_REFERENCE
               else f"{ref['pairs']:,} pairs of {ref['images']:,} images")
            + f"]: ratio {w['ratio']:.2f} ({g['distance']:.4g} / {ref['distance']:.4g}, {ref['reference']}){extra}")
        lines.append(f"  features: {r['features']}, {r['feature_dim']}-d; sets drawn from {c['generated_total']:,} "
                     f"generated and {c['real_total']:,} real images")
        return lines + ([f"  note: {r['note']}"] if r.get("note") else [])
