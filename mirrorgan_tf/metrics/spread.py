"""Within-caption variety for `shapes`, read from pixels: does the generator draw the variety the
data has inside one attribute class, or one picture per caption?

The shapes specification (docs/shapes_dataset.md) varies five continuous factors inside a class:
the background colour (a level drawn in [190, 235] plus a per-channel offset), the object colour
(+-12 per channel), the object size (x [0.92, 1.08]) and the object centre (+-0.03 of the width, x
and y). Each is read off an image by fixed arithmetic, with no learned model:

| factor | reading | unit |
|---|---|---|
| background | per-channel median of the border pixels | RGB levels 0-255, pooled over channels |
| colour | mean of the object's inner pixels (foreground map >= 0.9; the whole map's weights if none) | RGB levels, pooled over channels |
| size | log of sqrt(foreground area), the area the sum of the foreground map | log pixels: a relative spread |
| centre_x, centre_y | the foreground map's centroid | fractions of the image width / height |

The foreground map is the attribute classifier's colour-blind one (`attributes.foreground`), with
its background noise floor (`FLOOR`) taken off.

For generated images a *group* is one caption's samples (fresh z and conditioning noise each, as
`serving_default` draws them); for real images a group is the test images of one attribute class
(the same colour, shape, size and position). The spread of a factor is the pooled within-group
standard deviation, sqrt(sum_g sum_i (x_gi - mean_g)^2 / sum_g (n_g - 1)), groups of one member
left out; the ratio generated / real is reported per factor, for seen and unseen colour-shape
pairs apart: 1.0 = as varied as the data, 0 = one picture per caption (mode collapse), 2 = twice
the data's jitter. Real images are read at the generator's final size, as the generated ones.

Variety alone can be had by drawing varied wrong pictures, so each factor's *shift* is reported
beside it: the rms distance of the generated images from the real mean of their caption's class,
in real within-class stds (about 1.1 for images drawn like the data: the within-class spread plus
the uncertainty of a mean of ~5 real images).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from mirrorgan_tf import data
from mirrorgan_tf.metrics.attributes import foreground, unseen_mask
from mirrorgan_tf.metrics.base import EvalError, Metric

FACTORS = ("background", "colour", "size", "centre_x", "centre_y")
INNER = 0.9  # foreground map level that counts as the object's inside (its anti-aliased rim is lower)
# The foreground map is ~0.04 on background pixels (their noise over the object's contrast), which
# summed over a 64 x 64 picture weighs as much as a small object and drags its centroid to the
# middle. Levels up to FLOOR count as background; the ramp from FLOOR to 1 - FLOOR keeps the rim's
# partial coverage.
FLOOR = 0.1


def read_factors(images) -> dict[str, np.ndarray]:
    """images float [B, S, S, 3] in [-1, 1] -> {factor: float64 [B, k]}: background and colour
    [B, 3] in RGB levels 0-255, size [B, 1] log(sqrt(foreground area in pixels)), centre_x and
    centre_y [B, 1] in fractions of the width and height (0 = left / top edge)."""
    images = tf.convert_to_tensor(images, tf.float32)
    levels = (images + 1.0) * 127.5
    border = tf.concat([levels[:, 0], levels[:, -1], levels[:, 1:-1, 0], levels[:, 1:-1, -1]], axis=1)
    background = tf.sort(border, axis=1)[:, tf.shape(border)[1] // 2]  # [B, 3]
    mask = tf.clip_by_value((foreground(images)[..., 0] - FLOOR) / (1.0 - 2.0 * FLOOR), 0.0, 1.0)  # [B, S, S]
    inner = tf.cast(mask >= INNER, tf.float32)
    weights = tf.where(tf.reduce_sum(inner, axis=(1, 2), keepdims=True) > 0, inner, mask)
    colour = tf.reduce_sum(levels * weights[..., None], axis=(1, 2)) / (
        tf.reduce_sum(weights, axis=(1, 2))[:, None] + 1e-6)
    area = tf.reduce_sum(mask, axis=(1, 2))
    size = tf.math.log(tf.sqrt(area) + 1e-3)
    s = tf.cast(tf.shape(images)[1], tf.float32)
    coords = (tf.range(s) + 0.5) / s
    total = area + 1e-6
    centre_x = tf.reduce_sum(mask * coords[None, None, :], axis=(1, 2)) / total
    centre_y = tf.reduce_sum(mask * coords[None, :, None], axis=(1, 2)) / total
    out = {"background": background, "colour": colour, "size": size[:, None],
           "centre_x": centre_x[:, None], "centre_y": centre_y[:, None]}
    return {k: v.numpy().astype(np.float64) for k, v in out.items()}


def pooled_std(values: np.ndarray, groups: np.ndarray) -> tuple[float, int]:
    """values float [N, k] (k channels pooled together), groups int [N] -> (pooled within-group
    standard deviation, degrees of freedom sum_g (n_g - 1)). Groups of one contribute nothing;
    (nan, 0) when no group has two members."""
    values = np.asarray(values, np.float64).reshape(len(values), -1)
    groups = np.asarray(groups)
    _, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    sums = np.zeros((len(counts), values.shape[1]))
    np.add.at(sums, inverse, values)
    means = sums / counts[:, None]
    squares = np.sum((values - means[inverse]) ** 2)
    dof = int(np.sum(counts - 1))
    if dof == 0:
        return float("nan"), 0
    return float(np.sqrt(squares / (dof * values.shape[1]))), dof


def spreads(factors: dict[str, np.ndarray], groups: np.ndarray) -> dict[str, float]:
    """{factor: pooled within-group std} of `read_factors` output."""
    return {f: pooled_std(factors[f], groups)[0] for f in FACTORS}


def balance(ratios: dict[str, float]) -> float:
    """One figure in [0, 1] for a dict of spread ratios: the geometric mean over factors of
    min(r, 1 / r), so 1 only when every factor is as varied as the data, and near 0 when any
    factor collapses (or explodes). A nan ratio counts as 0."""
    terms = [min(r, 1.0 / r) if np.isfinite(r) and r > 0 else 0.0 for r in ratios.values()]
    if not terms or min(terms) == 0.0:
        return 0.0
    return float(np.exp(np.mean(np.log(terms))))


def real_reference(cfg, manifest, split: str, batch_size: int = 256) -> dict:
    """The real images' pooled within-class spreads: {"seen"|"unseen"|"all": {"spread": {factor:
    std}, "images": n, "classes": c}} (a group only where the split holds it), and under
    "class_means" {attribute tuple: {factor: float64 [k] mean}}. Classes are the full attribute
    tuples; images are read at the generator's final size."""
    factors, attributes = {f: [] for f in FACTORS}, []
    for batch in data.eval_images(cfg, split, batch_size):
        for f, v in read_factors(batch["images"].numpy()).items():
            factors[f].append(v)
        attributes.append(batch["attributes"].numpy())
    factors = {f: np.concatenate(v) for f, v in factors.items()}
    attributes = np.concatenate(attributes)
    classes = class_ids(attributes)
    unseen = unseen_mask(manifest, attributes)
    out = {}
    for group, mask in (("all", np.ones(len(classes), bool)), ("seen", ~unseen), ("unseen", unseen)):
        if mask.any():
            out[group] = {"spread": spreads({f: v[mask] for f, v in factors.items()}, classes[mask]),
                          "images": int(mask.sum()), "classes": int(len(np.unique(classes[mask])))}
    out["class_means"] = {tuple(int(a) for a in attributes[classes == c][0]):
                          {f: v[classes == c].mean(axis=0) for f, v in factors.items()} for c in np.unique(classes)}
    return out


def shifts(factors: dict[str, np.ndarray], attributes: np.ndarray, class_means: dict, real_spread: dict) -> dict:
    """How far the generated images sit from their class, per factor: the root mean square over
    images (and channels) of (x - the real class mean of the image's caption's attributes), in
    units of the real within-class spread. About sqrt(1 + 1 / n_class) ~ 1.1 for images drawn like
    the real ones; much more for a generator whose pictures are off in that factor (e.g. a white
    background for a grey one). Images of a class the real split lacks are left out; nan if none."""
    keys = [tuple(int(a) for a in row) for row in attributes]
    known = np.array([k in class_means for k in keys])
    out = {}
    for f in FACTORS:
        if not known.any() or not real_spread[f] > 0:
            out[f] = float("nan")
            continue
        means = np.stack([class_means[k][f] for k, ok in zip(keys, known) if ok])
        out[f] = float(np.sqrt(np.mean((factors[f][known] - means) ** 2)) / real_spread[f])
    return out


def class_ids(attributes: np.ndarray) -> np.ndarray:
    """int [N, A] attribute labels -> int64 [N], one id per distinct label tuple."""
    attributes = np.asarray(attributes, np.int64)
    return np.unique(attributes, axis=0, return_inverse=True)[1].reshape(-1)



# No published protocol measures these ratios. A pooled std from df degrees of freedom has a
# relative standard error of about 1 / sqrt(2 df) (normal data), so a ratio of two has about
# sqrt(1 / (2 df_generated) + 1 / (2 df_real)); above this a note says so.
NOTE_ABOVE_RELATIVE_ERROR = 0.05


def small_count_note(group: str, df_generated: int, df_real: int) -> str | None:
    """The note a group's ratios need when their relative standard error, from the degrees of
    freedom behind the generated (images - captions) and real (images - classes) spreads, is
    above NOTE_ABOVE_RELATIVE_ERROR; else None."""
    if min(df_generated, df_real) < 1:
        return f"spread/{group}: no caption or class with two images, so no spread to measure"
    error = (1 / (2 * df_generated) + 1 / (2 * df_real)) ** 0.5
    if error <= NOTE_ABOVE_RELATIVE_ERROR:
        return None
    return (f"spread/{group} from {df_generated:,} generated and {df_real:,} real degrees of freedom: each ratio "
            f"carries a relative standard error of about {100 * error:.0f} % (sqrt(1 / (2 df) + 1 / (2 df_real)))")


class FactorSpread(Metric):
    """`--metrics spread` (shapes only; needs `--samples-per-caption` >= 2)."""

    name = "spread"
    applies_to_real = True

    def __init__(self, ctx):
        super().__init__(ctx)
        if not data.attribute_names(ctx.manifest):
            raise EvalError(f"{ctx.cfg.data.dir}: the spread metric reads the shapes factors from pixels; this "
                            f"dataset has no attribute labels (use --metrics diversity)")
        k = int(ctx.option("samples_per_caption", 1))
        if k < 2:
            raise EvalError(f"--samples-per-caption {k}: the spread metric needs at least 2 samples per caption")

    def prepare(self):
        ctx = self.ctx
        self.reference = real_reference(ctx.cfg, ctx.manifest, ctx.split)
        self.reset()

    def reset(self):
        ctx = self.ctx
        self.factors = {f: np.zeros((len(ctx.rows),) + (3 if f in ("background", "colour") else 1,))
                        for f in FACTORS}

    def update(self, images, samples):
        for f, v in read_factors(images).items():
            self.factors[f][samples] = v

    def result(self):
        ctx = self.ctx
        unseen = unseen_mask(ctx.manifest, ctx.all_pairs.attributes[ctx.rows])
        out = {}
        for group, mask in (("all", np.ones(len(ctx.rows), bool)), ("seen", ~unseen), ("unseen", unseen)):
            if not mask.any() or group not in self.reference:
                continue
            generated = spreads({f: v[mask] for f, v in self.factors.items()}, ctx.rows[mask])
            real = self.reference[group]["spread"]
            ratios = {f: generated[f] / real[f] if real[f] > 0 else float("nan") for f in FACTORS}
            shift = shifts({f: v[mask] for f, v in self.factors.items()}, ctx.all_pairs.attributes[ctx.rows][mask],
                           self.reference["class_means"], real)
            out[group] = {"ratio": ratios, "generated": generated, "real": real, "shift": shift,
                          "balance": balance(ratios), "captions": int(len(np.unique(ctx.rows[mask]))),
                          "images": int(mask.sum()), "real_images": self.reference[group]["images"],
                          "real_classes": self.reference[group]["classes"]}
        return {"value": out, "samples_per_caption": int(ctx.option("samples_per_caption")),
                "factors": list(FACTORS),
                "what": "pooled within-caption std of each pixel-read factor / the same within the real test "
                        "images of one attribute class (1.0 = as varied as the data, 0 = one picture per caption)"}

    @staticmethod
    def format(r):
        lines = []
        for group, g in r["value"].items():
            if group == "all":
                continue
            cells = ", ".join(f"{f} {g['ratio'][f]:.2f}" for f in r["factors"])
            lines.append(f"spread/{group} [{g['captions']} captions x {r['samples_per_caption']} samples; "
                         f"real: {g['real_images']} images in {g['real_classes']} classes]: {cells}; "
                         f"balance {g['balance']:.2f}")
            note = small_count_note(group, g["images"] - g["captions"], g["real_images"] - g["real_classes"])
            lines += [f"  note: {note}"] if note else []
            if "shift" in g:
                shifted = ", ".join(f"{f} {g['shift'][f]:.2f}" for f in r["factors"])
                lines.append(f"  shift/{group}: {shifted}")
        return lines + ["  (spread: generated within-caption std / real within-class std, per factor; 1.0 = as "
                        "varied as the data. shift: rms distance from the real class mean in real within-class "
                        "stds; ~1.1 for images drawn like the real ones)"]
