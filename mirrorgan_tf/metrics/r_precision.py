"""R-precision (AttnGAN/MirrorGAN protocol): each generated image ranks its own caption among
1 + 99 mismatched captions by the cosine similarity of DAMSM's image code and sentence code; the
top-1 hit rate is averaged over folds of the images, reported as mean +- std. The published
protocol scores 30,000 images in 10 folds; the printed figure carries its count and candidates,
and a note below 30,000 images.

Mismatched captions are captions of other images of the split. Where the dataset labels what a
caption says (the attributes of `shapes`), a caption with exactly the same labels would describe
the image just as well, so it is not drawn as a mismatch. A hit needs the true caption strictly
above every mismatch.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from mirrorgan_tf import data, runs
from mirrorgan_tf.config import load_config
from mirrorgan_tf.metrics.base import EvalError, Metric, below_protocol, mean_std, percent

CANDIDATES = 100


def draw_mismatches(image_index, attributes, rows, pool_image, pool_attributes, rng, k=CANDIDATES - 1):
    """For each row (a pair), k indices into the pool of captions of other images (and, where
    attributes are labelled, with other labels)."""
    out = np.empty((len(rows), k), np.int64)
    labelled = attributes.shape[1] > 0
    for n, r in enumerate(rows):
        ok = pool_image != image_index[r]
        if labelled:
            ok &= (pool_attributes != attributes[r]).any(axis=1)
        choices = np.flatnonzero(ok)
        if len(choices) < k:
            raise EvalError(f"only {len(choices)} mismatched captions available for caption {r}; "
                            f"R-precision needs {k}")
        out[n] = rng.choice(choices, size=k, replace=False)
    return out


def r_precision(image_codes, true_codes, mismatch_codes, folds: int):
    """image_codes [N, D]; true_codes [N, D]; mismatch_codes [N, K, D] -> (mean, std, per-fold hit
    rates, hits [N] bool)."""
    def unit(x):
        return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-8)

    img = unit(np.asarray(image_codes, np.float64))
    true = np.sum(img * unit(np.asarray(true_codes, np.float64)), axis=-1)
    others = np.einsum("nd,nkd->nk", img, unit(np.asarray(mismatch_codes, np.float64)))
    hits = true > others.max(axis=1)
    per_fold = [float(h.mean()) for h in np.array_split(hits, folds)]
    mean, std = mean_std(per_fold)
    return mean, std, per_fold, hits


class RPrecision(Metric):
    name = "r_precision"

    def __init__(self, ctx):
        super().__init__(ctx)
        self.folds = int(ctx.option("folds", 10))
        n = len(ctx.rows)
        if n < self.folds:
            raise EvalError(f"--num-images {n}: R-precision needs at least one image per fold ({self.folds} folds)")
        if len(ctx.all_pairs) < CANDIDATES:
            raise EvalError(f"split {ctx.split!r} has {len(ctx.all_pairs)} usable captions; R-precision needs "
                            f"at least {CANDIDATES}")
        damsm_run = ctx.option("damsm_run")
        self.own = damsm_run is None
        root = ctx.run_dir if self.own else damsm_run
        config_path = os.path.join(root, "config.yaml")
        if not tf.io.gfile.exists(config_path):
            raise EvalError(f"--damsm-run {root}: not a run directory (no config.yaml)")
        self.damsm_cfg = ctx.cfg if self.own else load_config(config_path)
        # Word ids must mean the same words to both runs: compare the vocabularies' content.
        self.run = runs.load_run(ctx.run_dir)
        if not self.own:
            try:
                runs.check_same_vocabulary(self.run.vocab_path, runs.pinned_vocabulary(root), f"--damsm-run {root}")
            except runs.RunIntegrityError as e:
                raise EvalError(str(e)) from None
        configured = self.damsm_cfg.damsm.checkpoint if self.own else ""
        self.checkpoint_path = configured or os.path.join(root, "damsm")
        if runs.find_checkpoint(self.checkpoint_path, "damsm") is None:
            raise EvalError(f"{self.checkpoint_path}: no DAMSM checkpoint for R-precision "
                            f"(train the damsm stage, or give --damsm-run)")

    def prepare(self):
        ctx = self.ctx
        self.stem, self.encoder = runs.restore_damsm(self.damsm_cfg, self.run.vocab_size, self.checkpoint_path)
        self.sentences = self._sentence_codes(ctx.all_pairs)
        rng = np.random.default_rng(ctx.seed)
        a = ctx.all_pairs
        self.mismatches = draw_mismatches(a.image_index, a.attributes, ctx.rows, a.image_index, a.attributes, rng)
        self.reset()

    def reset(self):
        self.codes = np.zeros((len(self.ctx.rows), self.sentences.shape[1]), np.float32)  # the DAMSM stays

    def _sentence_codes(self, pairs, batch=512):
        out = []
        for s in range(0, len(pairs), batch):
            _, sentence, _ = self.stem(tf.constant(pairs.ids[s:s + batch]), tf.constant(pairs.lengths[s:s + batch]),
                                       training=False)
            out.append(sentence.numpy())
        return np.concatenate(out)

    def _image_codes(self, images):
        return self.encoder(tf.constant(images), training=False)[1].numpy()

    def update(self, images, samples):
        self.codes[samples] = self._image_codes(images)

    def _score(self, image_codes):
        return r_precision(image_codes, self.sentences[self.ctx.rows], self.sentences[self.mismatches], self.folds)

    def result(self):
        ctx = self.ctx
        mean, std, per_fold, _ = self._score(self.codes)
        real_codes = np.concatenate([self._image_codes(b["images"].numpy())
                                     for b in data.eval_images(ctx.cfg, ctx.split, ctx.batch_size)])
        real_mean, real_std, _, _ = self._score(real_codes[ctx.all_pairs.image_index[ctx.rows]])
        labelled = ctx.all_pairs.attributes.shape[1] > 0
        return {
            "value": mean, "std": std, "per_fold": per_fold, "folds": self.folds, "images": len(ctx.rows),
            "candidates": CANDIDATES, "damsm": self.checkpoint_path, "damsm_is_the_runs_own": self.own,
            "mismatches": "captions of other images" + (" with different attribute labels" if labelled else ""),
            "real": {"value": real_mean, "std": real_std,
                     "what": "the test images themselves, ranked against the same candidates"},
            **({"note": "scored with the DAMSM whose STEM the generator was trained on: it flatters the run; "
                        "--damsm-run takes an independently trained one"} if self.own else {}),
        }

    @staticmethod
    def format(r):
        lines = [f"r_precision: {percent(r['value'], r['std'])} over {r['folds']} folds of {r['images']:,} images "
                 f"(1 + {r.get('candidates', CANDIDATES) - 1} candidates each); "
                 f"real images {percent(r['real']['value'], r['real']['std'])}"]
        lines += [f"  note: {r['note']}"] if "note" in r else []
        count = below_protocol("R-precision", r["images"],
                               why="the rate is not biased by the count, but its +- (the std over folds of "
                                   f"{r['images'] // r['folds']:,} images) is wider than over the protocol's 10 folds "
                                   "of 3,000")
        return lines + ([f"  note: {count}"] if count else [])
