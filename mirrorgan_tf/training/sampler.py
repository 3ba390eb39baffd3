"""Samples during training: fixed test captions and fixed noise through the EMA generator."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from mirrorgan_tf import data, images
from mirrorgan_tf.data import SAMPLE_CAPTIONS  # data.check_prepared refuses a test split smaller than this
from mirrorgan_tf.models.networks import generate
from mirrorgan_tf.runs import RunDir


class Sampler:
    """`sampler(step, writer)` writes <run>/samples/gan-<step>.png (a row per generator stage,
    upscaled to the last, then the real images; one column per caption) and, to TensorBoard, the
    grid, each stage's images and the word attention maps of caption 0.

    The captions are the first SAMPLE_CAPTIONS of the test split, the noise is drawn once from
    train.seed, so the grids of one run show the same captions and noise at every step."""

    def __init__(self, cfg, run: RunDir, stem, glam):
        self.run, self.stem, self.glam = run, stem, glam
        self.batch = next(iter(data.make_dataset(cfg, "test", batch_size=SAMPLE_CAPTIONS, training=False)))
        rng = np.random.default_rng(cfg.train.seed)
        self.z = tf.constant(rng.normal(size=(SAMPLE_CAPTIONS, cfg.model.z_dim)), tf.float32)
        self.eps = tf.constant(rng.normal(size=(SAMPLE_CAPTIONS, cfg.model.condition_dim)), tf.float32)

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
