"""R-precision (AttnGAN/MirrorGAN protocol): each generated image ranks its own caption among
1 + 99 mismatched captions by the cosine similarity of DAMSM's image code and sentence code; the
top-1 hit rate is averaged over folds of the images, reported as mean +- std. The published
protocol scores 30,000 images in 10 folds; the printed figure carries its count and candidates,
and a note below 30,000 images.

Two definitions, one implementation (option `r_precision_rule`):
- "strict" (the default): mismatched captions are 99 different captions of other images of the
  split; where the dataset labels what a caption says (the attributes of `shapes`), a caption
  with exactly the same labels would describe the image just as well, so it is not drawn as a
  mismatch. A hit needs the true caption strictly above every mismatch. The folds are the images
  in order, cut into `folds` near-equal parts (every image counted once).
- "published": the computation of the released R-precision code of the AttnGAN family (DM-GAN's
  `trainer.sampling`, which the later papers reuse), for `evaluate --protocol`: each mismatch is
  drawn independently (so with replacement) by picking an image uniformly among the split's
  images of another class (CUB: another species; a dataset without classes: another image) and
  then one of its captions uniformly; the true caption wins ties (its `argmax` is index 0, and
  argmax takes the first of equal maxima); the hits are shuffled and cut into `folds` folds of
  N // folds images, each fold's mean taken without its last image (the code's
  `R[i * 3000:(i + 1) * 3000 - 1]`, 2,999 of each 3,000).
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from mirrorgan_tf import data, runs
from mirrorgan_tf.config import load_config
from mirrorgan_tf.metrics.base import EvalError, Metric, below_protocol, mean_std, percent

CANDIDATES = 100


RULES = ("strict", "published")


def draw_mismatches(image_index, attributes, rows, pool_image, pool_attributes, rng, k=CANDIDATES - 1,
                    class_id=None, pool_class=None):
    """For each of `rows` (rows of the pairs described by image_index [P] / attributes [P, A]),
    k int64 indices into the pool of captions (pool_image [Q], pool_attributes [Q, A]) -> [len(rows), k].

    Without class_id (the "strict" rule): k different captions of other images (and, where
    attributes are labelled, with other labels); EvalError when fewer than k exist.
    With class_id [P] and pool_class [Q] (the "published" rule): each of the k drawn independently
    (repeats possible) from images of another class, the image uniformly, then its caption
    uniformly (a caption's weight is 1 / its image's caption count); where the class is unknown
    (-1) another image stands for another class. EvalError when no such caption exists."""
    out = np.empty((len(rows), k), np.int64)
    if class_id is not None:
        weight = 1.0 / np.bincount(pool_image)[pool_image]
        for n, r in enumerate(rows):
            ok = pool_class != class_id[r] if class_id[r] >= 0 else pool_image != image_index[r]
            choices = np.flatnonzero(ok)
            if not len(choices):
                raise EvalError(f"no caption of another class than caption {r}'s ({class_id[r]}): "
                                f"R-precision needs mismatched captions")
            p = weight[choices] / weight[choices].sum()
            out[n] = rng.choice(choices, size=k, replace=True, p=p)
        return out
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


def r_precision(image_codes, true_codes, mismatch_codes, folds: int, rule: str = "strict", rng=None):
    """image_codes [N, D]; true_codes [N, D]; mismatch_codes [N, K, D] (float, any scale: compared
    by cosine similarity) -> (mean, std, per-fold hit rates, hits [N] bool), rates in [0, 1].

    rule "strict": a hit needs the true caption strictly above every mismatch; folds are the
    images in order, np.array_split into `folds` parts. rule "published" (module docstring): a tie
    counts as a hit; the hits are shuffled with `rng` (a numpy Generator, required) and fold i is
    the mean of hits[i * m:(i + 1) * m - 1] with m = N // folds. Raises ValueError on an unknown
    rule, a missing rng, or (published) fewer than 2 images per fold."""
    if rule not in RULES:
        raise ValueError(f"R-precision rule {rule!r}: one of {', '.join(RULES)}")

    def unit(x):
        return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-8)

    img = unit(np.asarray(image_codes, np.float64))
    true = np.sum(img * unit(np.asarray(true_codes, np.float64)), axis=-1)
    others = np.einsum("nd,nkd->nk", img, unit(np.asarray(mismatch_codes, np.float64)))
    if rule == "strict":
        hits = true > others.max(axis=1)
        per_fold = [float(h.mean()) for h in np.array_split(hits, folds)]
    else:
        if rng is None:
            raise ValueError("the published R-precision rule shuffles the hits: give rng")
        m = len(true) // folds
        if m < 2:
            raise ValueError(f"the published R-precision rule needs 2 images per fold, got {len(true)} for {folds}")
        hits = true >= others.max(axis=1)
        shuffled = hits[rng.permutation(len(hits))]
        per_fold = [float(shuffled[i * m:(i + 1) * m - 1].mean()) for i in range(folds)]
    mean, std = mean_std(per_fold)
    return mean, std, per_fold, hits


def fold_size(images: int, folds: int, rule: str) -> int:
    """How many images each fold's rate comes from (the smallest fold for "strict")."""
    return images // folds - 1 if rule == "published" else images // folds


class RPrecision(Metric):
    name = "r_precision"

    def __init__(self, ctx):
        super().__init__(ctx)
        self.folds = int(ctx.option("folds", 10))
        self.rule = ctx.option("r_precision_rule", "strict")
        if self.rule not in RULES:
            raise EvalError(f"r_precision_rule {self.rule!r}: one of {', '.join(RULES)}")
        n = len(ctx.rows)
        per_fold = 2 if self.rule == "published" else 1  # published: each fold leaves out its last image
        if n < per_fold * self.folds:
            raise EvalError(f"--num-images {n}: R-precision needs at least {'two images' if per_fold == 2 else 'one image'}"
                            f" per fold ({self.folds} folds)")
        if self.rule == "strict" and len(ctx.all_pairs) < CANDIDATES:
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
        classes = dict(class_id=a.class_id, pool_class=a.class_id) if self.rule == "published" else {}
        self.mismatches = draw_mismatches(a.image_index, a.attributes, ctx.rows, a.image_index, a.attributes, rng,
                                          **classes)
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
        # The fold shuffle is seeded apart from the mismatch draw, and the same for generated and real.
        rng = np.random.default_rng([self.ctx.seed, 1])
        return r_precision(image_codes, self.sentences[self.ctx.rows], self.sentences[self.mismatches], self.folds,
                           rule=self.rule, rng=rng)

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
            "rule": self.rule, "fold_images": fold_size(len(ctx.rows), self.folds, self.rule),
            "mismatches": ("drawn independently: a uniform image of another class (another image where classes are "
                           "unknown), then one of its captions; ties count as hits; shuffled folds without their "
                           "last image (the released AttnGAN-family code)" if self.rule == "published" else
                           "captions of other images" + (" with different attribute labels" if labelled else "")),
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
