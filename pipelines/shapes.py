"""The built-in `shapes` dataset, rendered per its specification, docs/shapes_dataset.md (whose
numbers are this module's constants).

Every image is a pure function of (split, index): its random generator is seeded with
(SEED, split, index), so the dataset is byte-identical on every run, a smaller dataset
(`num_train`, `num_test`) is a prefix of the full one, and images can be rendered in parallel.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from pipelines import images
from pipelines.source import RawExample, Source

SEED = 2019
SIZE = 128
SUPERSAMPLE = 4
NUM_TRAIN = 10_000
NUM_TEST = 1_000
CAPTIONS_PER_IMAGE = 10
SPLITS = ("train", "test")

COLOURS = {
    "red": (210, 35, 35),
    "green": (35, 150, 60),
    "blue": (35, 75, 210),
    "yellow": (225, 195, 25),
    "purple": (130, 50, 165),
    "orange": (240, 125, 20),
}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 0.22, "large": 0.44}
POSITIONS = {
    "left": (0.27, 0.50),
    "right": (0.73, 0.50),
    "top": (0.50, 0.27),
    "bottom": (0.50, 0.73),
    "center": (0.50, 0.50),
}
# The compositional hold-out: never in train, drawn like every other pair in test.
HELD_OUT_PAIRS = (("purple", "triangle"), ("orange", "circle"))

COLOUR_JITTER = 12
SIZE_JITTER = 0.08
POSITION_JITTER = 0.03
BACKGROUND_LEVEL = (190, 235)
BACKGROUND_OFFSET = 12
NOISE_SIGMA = 3.0

SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big", "huge")}
SHAPE_WORDS = {"circle": ("circle", "disc"), "square": ("square", "block"), "triangle": ("triangle",)}
POSITION_WORDS = {
    "left": ("on the left", "at the left side"),
    "right": ("on the right", "at the right side"),
    "top": ("at the top", "in the upper part"),
    "bottom": ("at the bottom", "in the lower part"),
    "center": ("in the center", "in the middle"),
}
# Different word orders, so that a model has to read the words rather than their positions.
TEMPLATES = (
    "a {size} {colour} {shape} {pos}",
    "there is a {size} {colour} {shape} {pos} of the image",
    "{pos}, a {colour} {shape} that is {size}",
    "the picture shows a {size} {shape} colored {colour} {pos}",
    "{pos} of the picture there is a {colour} {shape}, and it is {size}",
    "a {shape} in {colour}, {size}, placed {pos}",
    "this image contains one {size} {colour} {shape}, located {pos}",
    "{colour} is the colour of the {size} {shape} {pos}",
    "the {shape} {pos} is {size} and {colour}",
    "{size} {shape}, {colour}, {pos} of the frame",
)

ATTRIBUTES = {
    "colour": list(COLOURS),
    "shape": list(SHAPES),
    "size": list(SIZES),
    "position": list(POSITIONS),
}


@dataclass(frozen=True)
class Scene:
    """Everything needed to render one image; drawn from the (SEED, split, index) generator."""

    split: int
    index: int
    colour: str
    shape: str
    size: str
    position: str
    background: tuple[int, int, int]
    rgb: tuple[int, int, int]
    side: float  # bounding-box side in pixels
    centre: tuple[float, float]  # (x, y) in pixels


def _pairs(split: str) -> list[tuple[str, str]]:
    pairs = [(c, s) for c in COLOURS for s in SHAPES]
    if split == "train":
        pairs = [p for p in pairs if p not in HELD_OUT_PAIRS]
    return pairs


def _rng(split: int, index: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([SEED, split, index, stream])


def sample_scene(split: str, index: int) -> tuple[Scene, list[str]]:
    """The scene and its ten captions for image `index` of `split`."""
    split_id = SPLITS.index(split)
    rng = _rng(split_id, index, 0)
    pairs = _pairs(split)
    colour, shape = pairs[rng.integers(len(pairs))]
    size = list(SIZES)[rng.integers(len(SIZES))]
    position = list(POSITIONS)[rng.integers(len(POSITIONS))]
    level = rng.integers(BACKGROUND_LEVEL[0], BACKGROUND_LEVEL[1] + 1)
    offsets = rng.integers(-BACKGROUND_OFFSET, BACKGROUND_OFFSET + 1, size=3)
    background = tuple(int(v) for v in np.clip(level + offsets, 0, 255))
    jitter = rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, size=3)
    rgb = tuple(int(v) for v in np.clip(np.array(COLOURS[colour]) + jitter, 0, 255))
    side = SIZES[size] * SIZE * (1.0 + rng.uniform(-SIZE_JITTER, SIZE_JITTER))
    fx, fy = POSITIONS[position]
    cx = (fx + rng.uniform(-POSITION_JITTER, POSITION_JITTER)) * SIZE
    cy = (fy + rng.uniform(-POSITION_JITTER, POSITION_JITTER)) * SIZE
    scene = Scene(split_id, index, colour, shape, size, position, background, rgb, float(side),
                  (float(cx), float(cy)))
    captions = [_caption(scene, rng) for _ in range(CAPTIONS_PER_IMAGE)]
    return scene, captions


def _pick(rng: np.random.Generator, options):
    return options[rng.integers(len(options))]


def _caption(scene: Scene, rng: np.random.Generator) -> str:
    text = _pick(rng, TEMPLATES).format(
        size=_pick(rng, SIZE_WORDS[scene.size]),
        colour=scene.colour,
        shape=_pick(rng, SHAPE_WORDS[scene.shape]),
        pos=_pick(rng, POSITION_WORDS[scene.position]),
    )
    return re.sub(r"\ba (?=[aeiou])", "an ", text)


def caption_attributes(caption: str) -> dict[str, str]:
    """The attributes a caption in this dataset's vocabulary names: {"colour", "shape", "size",
    "position"} -> value names as in `COLOURS`, `SHAPES`, `SIZES`, `POSITIONS`, read by the word
    tables the captions are written from (any template, synonyms included). For picking real images
    of a caption's class; raises ValueError naming the caption when an attribute is named by no
    word or by words of two values."""
    words = re.findall(r"[a-z]+", caption.lower())
    padded = " " + " ".join(words) + " "
    found = {
        "colour": [c for c in COLOURS if c in words],
        "shape": [s for s, names in SHAPE_WORDS.items() if any(n in words for n in names)],
        "size": [s for s, names in SIZE_WORDS.items() if any(n in words for n in names)],
        "position": [p for p, phrases in POSITION_WORDS.items() if any(f" {ph} " in padded for ph in phrases)],
    }
    bad = {k: v for k, v in found.items() if len(v) != 1}
    if bad:
        raise ValueError(f"caption {caption!r} names " + ", ".join(
            f"{'no ' + k if not v else k + ' ' + ' and '.join(v)}" for k, v in bad.items()))
    return {k: v[0] for k, v in found.items()}


def render(scene: Scene) -> np.ndarray:
    """Scene -> uint8 [128, 128, 3]: flat background, one filled anti-aliased object, pixel noise."""
    k = SUPERSAMPLE
    canvas = Image.new("RGB", (SIZE * k, SIZE * k), scene.background)
    draw = ImageDraw.Draw(canvas)
    half = scene.side / 2
    cx, cy = scene.centre
    x0, y0, x1, y1 = (cx - half) * k, (cy - half) * k, (cx + half) * k, (cy + half) * k
    if scene.shape == "circle":
        draw.ellipse([x0, y0, x1, y1], fill=scene.rgb)
    elif scene.shape == "square":
        draw.rectangle([x0, y0, x1, y1], fill=scene.rgb)
    else:  # upright isosceles: apex at the top centre of the box, base along its bottom edge
        draw.polygon([(cx * k, y0), (x1, y1), (x0, y1)], fill=scene.rgb)
    image = np.asarray(canvas.resize((SIZE, SIZE), Image.BOX), dtype=np.float64)
    noise = _rng(scene.split, scene.index, 1).normal(0.0, NOISE_SIGMA, size=image.shape)
    return np.clip(np.rint(image + noise), 0, 255).astype(np.uint8)


def render_png(scene: Scene):
    """Worker: scene -> ("ok", png bytes, "png", height, width). Lossless, so the stored pixels are
    exactly the rendered ones an evaluator can rely on."""
    pixels = render(scene)
    return ("ok", images.encode(Image.fromarray(pixels), "png"), "png", SIZE, SIZE)


def read(num_train: int = NUM_TRAIN, num_test: int = NUM_TEST) -> Source:
    examples = []
    for split, count in (("train", num_train), ("test", num_test)):
        for i in range(count):
            scene, captions = sample_scene(split, i)
            examples.append(RawExample(
                key=f"{split}/{i:05d}",
                split=split,
                captions=captions,
                caption_origins=[f"shapes {split}/{i:05d} caption {j}" for j in range(len(captions))],
                image_job=scene,
                attributes=[ATTRIBUTES[a].index(getattr(scene, a)) for a in ATTRIBUTES],
            ))
    return Source(
        name="shapes",
        source=f"rendered (seed {SEED})",
        examples=examples,
        image_worker=render_png,
        captions_per_image=CAPTIONS_PER_IMAGE,
        attributes=ATTRIBUTES,
        extra={"held_out_pairs": [list(p) for p in HELD_OUT_PAIRS], "seed": SEED},
    )
