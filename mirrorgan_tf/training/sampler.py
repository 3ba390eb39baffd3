"""Samples during training: fixed test captions and fixed noise through the EMA generator, and
diversity figures on them that show a mode collapse while it happens."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from mirrorgan_tf import data, images
from mirrorgan_tf.data import SAMPLE_CAPTIONS  # data.check_prepared refuses a test split smaller than this
from mirrorgan_tf.metrics import spread
from mirrorgan_tf.models.networks import generate
from mirrorgan_tf.runs import RunDir

VARIETY_SAMPLES = 8  # K: samples of each fixed caption, each with its own fixed noise


def pairwise_difference(x) -> float:
    """x float [N, ...] -> the mean over the N (N - 1) / 2 pairs i < j of mean |x_i - x_j| (over
    every other axis), in x's units (for images in [-1, 1]: 0 = identical, 2 = black against
    white). nan when N < 2."""
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    if len(x) < 2:
        return float("nan")
    total = sum(np.abs(x[i + 1:] - x[i]).mean(axis=1).sum() for i in range(len(x) - 1))
    return float(total / (len(x) * (len(x) - 1) / 2))


def diversity(samples, real, reference: dict | None = None) -> dict[str, float]:
    """Within-caption diversity figures of generated images, as logged under `diversity/`.

    samples float [C, K, S, S, 3] in [-1, 1]: K samples of each of C captions (K >= 2);
    real float [R, S', S', 3] in [-1, 1]: real images of different captions (R >= 2);
    reference: {factor: the real within-class std} (`spread.real_reference(...)["all"]["spread"]`,
    images read at size S), or None for a dataset without attribute labels.

    Returns {name: float}:
    - `pixel_pairwise`: the mean over captions of the pairwise mean absolute pixel difference
      between the K samples of one caption, divided by the same between the R real images. A
      trend indicator, not a calibrated figure: 0 = one picture per caption (mode collapse),
      and the real images belong to different captions (other colour, shape, place), so a
      generator as varied as the data stays well below 1. nan when the real images are identical.
    - with `reference`, for each factor of `spread.FACTORS` (background, colour, size, centre_x,
      centre_y) `ratio_<factor>`: the pooled within-caption std of the factor read from the
      pixels (`spread.read_factors`) / the reference's (1.0 = as varied as the data, 0 = one
      picture per caption; nan where the reference is 0 or nan), and `balance`: `spread.balance`
      of those ratios, in [0, 1] (1 only when every factor is as varied as the data, 0 when any
      collapses). C captions x K samples give C (K - 1) degrees of freedom (8 x 8: 56), enough
      for a trend.
    Raises ValueError for fewer than 2 samples per caption or 2 real images."""
    samples = np.asarray(samples, np.float32)
    real = np.asarray(real, np.float32)
    if samples.ndim != 5 or samples.shape[1] < 2:
        raise ValueError(f"samples: expected [captions, K >= 2, S, S, 3], got shape {samples.shape}")
    if len(real) < 2:
        raise ValueError(f"real: expected at least 2 images, got shape {real.shape}")
    within = float(np.mean([pairwise_difference(s) for s in samples]))
    between = pairwise_difference(real)
    out = {"pixel_pairwise": within / between if between > 0 else float("nan")}
    if reference is not None:
        c, k = samples.shape[:2]
        generated = spread.spreads(spread.read_factors(samples.reshape((c * k,) + samples.shape[2:])),
                                   np.repeat(np.arange(c), k))
        ratios = {f: generated[f] / reference[f] if reference[f] > 0 else float("nan") for f in spread.FACTORS}
        out.update({f"ratio_{f}": r for f, r in ratios.items()})
        out["balance"] = spread.balance(ratios)
    return out


class Sampler:
    """`sampler(step, writer)` writes <run>/samples/gan-<step>.png (a row per generator stage,
    upscaled to the last, then the real images; one column per caption) and, to TensorBoard, the
    grid, each stage's images and the word attention maps of caption 0.

    The captions are the first SAMPLE_CAPTIONS of the test split, the noise is drawn once from
    train.seed, so the grids of one run show the same captions and noise at every step.

    Then (`variety`) each of those captions is drawn `samples_per_caption` (K) times, with K
    noises per caption drawn once at init from the same generator after the grid's (so the grid
    is unchanged and the curves of one run are comparable across steps), through the same
    `generate` path: <run>/samples/gan-<step>-variety.png and TensorBoard `samples/variety` (a
    row per caption, K columns, final size), and the scalars `diversity/<name>` of `diversity`
    (`pixel_pairwise` always; `ratio_<factor>` and `balance` where the dataset has attribute
    labels, against the test split's real within-class spreads, read once at init with
    `spread.real_reference`, group "all"). The K-sample images are generated in batches of
    max(SAMPLE_CAPTIONS, train.batch_size) so that the forward pass never holds more images
    than a training step does."""

    def __init__(self, cfg, run: RunDir, stem, glam, samples_per_caption: int = VARIETY_SAMPLES):
        if samples_per_caption < 2:
            raise ValueError(f"samples_per_caption {samples_per_caption}: diversity needs at least 2")
        self.run, self.stem, self.glam = run, stem, glam
        self.batch = next(iter(data.make_dataset(cfg, "test", batch_size=SAMPLE_CAPTIONS, training=False)))
        rng = np.random.default_rng(cfg.train.seed)
        self.z = tf.constant(rng.normal(size=(SAMPLE_CAPTIONS, cfg.model.z_dim)), tf.float32)
        self.eps = tf.constant(rng.normal(size=(SAMPLE_CAPTIONS, cfg.model.condition_dim)), tf.float32)
        # The K-sample noise: drawn after the grid's from the same generator, so the grid keeps its noise.
        k = self.samples_per_caption = samples_per_caption
        n = SAMPLE_CAPTIONS * k
        self.variety_z = tf.constant(rng.normal(size=(n, cfg.model.z_dim)), tf.float32)
        self.variety_eps = tf.constant(rng.normal(size=(n, cfg.model.condition_dim)), tf.float32)
        self.variety_ids = tf.repeat(self.batch["caption_ids"], k, axis=0)  # caption c at rows c K .. c K + K - 1
        self.variety_len = tf.repeat(self.batch["caption_len"], k, axis=0)
        self.chunk = max(SAMPLE_CAPTIONS, cfg.train.batch_size)
        self.real = self.batch["images"][-1].numpy()
        manifest = data.load_manifest(cfg.data.dir)
        self.reference = None
        if data.attribute_names(manifest):
            self.reference = spread.real_reference(cfg, manifest, "test")["all"]["spread"]

    def __call__(self, step: int, writer) -> None:
        batch = self.batch
        out = generate(self.stem, self.glam, batch["caption_ids"], batch["caption_len"], self.z, self.eps)
        grid = images.image_grid([x.numpy() for x in out["images"]] + [batch["images"][-1].numpy()])
        images.save_png(grid, f"{self.run.samples()}/gan-{step:07d}.png")
        with writer.as_default():
            tf.summary.image("samples/grid", grid[None], step=step)
            for i, stage_images in enumerate(out["images"]):
                tf.summary.image(f"samples/stage{i + 1}", (stage_images + 1.0) / 2.0, step=step, max_outputs=4)
            if out["word_attention"]:
                # Each word's attention over the last attended map, side by side, for caption 0.
                attn = out["word_attention"][-1][0]  # H, W, T
                n = int(batch["caption_len"][0])
                maps = tf.transpose(attn[..., :n], (2, 0, 1))[..., None]
                maps = maps / (tf.reduce_max(maps, axis=(1, 2, 3), keepdims=True) + 1e-8)
                tf.summary.image("attention/words", tf.concat(tf.unstack(maps), axis=1)[None], step=step)
                tf.summary.text("attention/caption", batch["caption"][0], step=step)
        self.variety(step, writer)

    def variety(self, step: int, writer) -> dict[str, float]:
        """K samples of each fixed caption: writes <run>/samples/gan-<step>-variety.png (uint8
        [C S, K S, 3], S the final size) and, to TensorBoard, `samples/variety` and the scalars
        `diversity/<name>`; returns those figures ({name: float}, see `diversity`)."""
        final = []
        for s in range(0, len(self.variety_z), self.chunk):
            part = slice(s, s + self.chunk)
            out = generate(self.stem, self.glam, self.variety_ids[part], self.variety_len[part],
                           self.variety_z[part], self.variety_eps[part])
            final.append(tf.cast(out["images"][-1], tf.float32).numpy())
        final = np.concatenate(final)
        samples = final.reshape((SAMPLE_CAPTIONS, self.samples_per_caption) + final.shape[1:])
        figures = diversity(samples, self.real, self.reference)
        grid = images.image_grid(list(samples))
        images.save_png(grid, f"{self.run.samples()}/gan-{step:07d}-variety.png")
        with writer.as_default():
            tf.summary.image("samples/variety", grid[None], step=step)
            for name, value in figures.items():
                tf.summary.scalar(f"diversity/{name}", value, step=step, description=self.counts)
        return figures

    @property
    def counts(self) -> str:
        """What the `diversity/` curves are computed from (their TensorBoard description)."""
        c, k = SAMPLE_CAPTIONS, self.samples_per_caption
        return (f"{c} fixed test captions x {k} samples ({c * (k - 1)} degrees of freedom) against "
                f"{len(self.real)} real images: a trend within this run, not comparable with the figures of "
                f"`python -m mirrorgan_tf.evaluate --metrics spread` from more captions")
