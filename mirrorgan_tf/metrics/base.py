"""The evaluation context and the interface every metric implements."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mirrorgan_tf.errors import MirrorganError


class EvalError(MirrorganError, ValueError):
    """Evaluation cannot start: names the argument, file or run that is wrong."""


@dataclass
class Context:
    cfg: object  # the run's resolved config
    run_dir: str
    split: str
    all_pairs: object  # evaluation.pairs.Pairs: every usable caption of the split
    rows: np.ndarray  # the generated samples' captions, as rows of all_pairs (sample i from rows[i])
    manifest: dict
    batch_size: int = 64
    seed: int = 0
    options: dict = field(default_factory=dict)  # metric-specific paths and settings

    @property
    def pairs(self):
        return self.all_pairs.select(self.rows)

    def option(self, name: str, default=None):
        value = self.options.get(name)
        return default if value in (None, "") else value


class Metric:
    name = ""
    applies_to_real = True

    def __init__(self, ctx: Context):
        self.ctx = ctx

    def prepare(self) -> None:
        """Load or build what the metric needs (may take a while)."""

    def reset(self) -> None:
        """Forget the images seen so far, to score the same captions again (the evaluation during
        training calls it before each evaluation after the first). Metrics whose `prepare` loads a
        network or reads real images override it to keep what they loaded; the default prepares
        anew."""
        self.prepare()

    def update(self, images: np.ndarray, samples: np.ndarray) -> None:
        """images: generated float32 [b, s, s, 3] in [-1, 1]; samples: their sample numbers (ctx.rows[samples]
        are their captions)."""
        raise NotImplementedError

    def result(self) -> dict:
        """{"value": ..., ... settings ...} for the generated images, and "real" where it applies."""
        raise NotImplementedError

    @staticmethod
    def format(result: dict) -> list[str]:
        """`result` (as `result()` returned it, or as read back from metrics.json) as the lines
        the evaluation table prints: the figures with the image counts behind them, then any note
        or warning, indented."""
        raise NotImplementedError


def percent(value: float, std: float | None = None) -> str:
    """A rate in [0, 1] as a percentage: "87.5 %", or "87.50 +- 2.10 %" with a spread."""
    return f"{100 * value:.2f} +- {100 * std:.2f} %" if std is not None else f"{100 * value:.1f} %"


# The published evaluation protocol of AttnGAN and MirrorGAN (and DM-GAN, DF-GAN after them): IS,
# FID and R-precision on 30,000 images generated from the test captions; R-precision over 10
# folds, each image ranking its caption among 1 + 99 candidates.
PUBLISHED_IMAGES = 30_000


def below_protocol(what: str, count: int, published: int = PUBLISHED_IMAGES, why: str = "") -> str | None:
    """The note a figure computed from `count` images needs when its published protocol uses
    `published` (None at or above it): figures from different counts are not comparable, and
    published ones come from `published`. `why` says which way the count biases the figure."""
    if count >= published:
        return None
    return (f"{what} from {count:,} images, below the {published:,} of the published protocol"
            + (f": {why}" if why else "") + f"; compare it only with figures from {count:,} images")


def mean_std(values) -> tuple[float, float]:
    values = np.asarray(values, np.float64)
    return float(values.mean()), float(values.std())
