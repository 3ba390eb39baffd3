"""How the Inception Score depends on the image count, on one fixed distribution of classifier
outputs (no network): 1,000 classes with Zipf frequencies; each image's p(y|x) a softmax of
10 x a one-hot on its class plus standard normal logits. Prints IS (10 splits, mean +- std) at
200, 2,928 and 30,000 images, numpy seed 0.

    python benchmarks/is_sample_size.py
"""

import numpy as np

from mirrorgan_tf.metrics.inception_score import inception_score

CLASSES = 1000
rng = np.random.default_rng(0)
frequencies = 1.0 / np.arange(1, CLASSES + 1)
frequencies /= frequencies.sum()


def draw(n: int) -> np.ndarray:
    """n images' p(y|x), float64 [n, CLASSES], rows summing to 1."""
    labels = rng.choice(CLASSES, size=n, p=frequencies)
    logits = rng.normal(size=(n, CLASSES))
    logits[np.arange(n), labels] += 10.0
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


if __name__ == "__main__":
    for n in (200, 2_928, 30_000):
        mean, std = inception_score(draw(n), 10)
        print(f"{n:>6,} images: IS {mean:.2f} +- {std:.2f}")
