"""python -m mirrorgan_tf.sample --run-dir R (--caption "..." ... | --captions-file F) [--num 8] [--seed S]
       [--batch-size 8] [--columns 16] [--checkpoint latest|best] --out DIR

Per caption, with the run's EMA generator (its latest gan checkpoint, or with --checkpoint best the
best one the run kept while training):
  NNN-<words>.png            when num <= columns: the `num` samples (columns) at every stage (rows,
                             upscaled to the last)
  NNN-<words>-PPP.png        when num > columns, instead: part PPP (000, 001, ...) holds samples
                             PPP * columns ... PPP * columns + columns - 1, laid out the same way, so
                             no picture is wider than `columns` samples
  NNN-<words>-attention.png  AttnGAN-style word attention of the first sample: per later stage
                             a row of the image, then each word's attention over it
Samples go through the generator `--batch-size` at a time and each picture is written (whole, by
write-then-rename) as soon as its samples exist, so memory does not grow with --num. The noise of
sample k of caption NNN is a pure function of (seed, NNN * num + k): same seed, same pictures,
whatever --batch-size and --columns.
Captions go through the project's tokenizer (unknown words dropped, cut to data.words_num); the
words ignored as unknown, and the known words past data.words_num that the length limit cuts, are
printed on stderr, per caption; a caption with no known word is an error that names it.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

import numpy as np

from mirrorgan_tf.errors import MirrorganError, run_cli

LABEL_HEIGHT = 14
BATCH_SIZE = 8  # samples per generator call: the forward pass's memory grows with it (CUB: 256 px, 3 stages)
COLUMNS = 16  # samples per picture: 16 x 256 px = 4,096 px wide for CUB


class SampleError(MirrorganError, ValueError):
    """Captions or flags that cannot be sampled; names the caption, file or flag."""


def read_captions(captions, captions_file) -> list[str]:
    if captions_file:
        if not os.path.exists(captions_file):
            raise SampleError(f"--captions-file {captions_file}: no such file")
        try:
            with open(captions_file, encoding="utf-8") as f:
                captions = [line.strip() for line in f if line.strip()]
        except UnicodeDecodeError as e:
            raise SampleError(f"--captions-file {captions_file}: not UTF-8 text ({e})") from None
        if not captions:
            raise SampleError(f"--captions-file {captions_file}: no captions in it")
    return list(captions)


def tokenize(captions: list[str], vocab_path: str, words_num: int):
    """-> ids int32 [N, words_num], lengths [N], the kept words of each caption (its first
    `words_num` known words), the words of each caption ignored as unknown (dropped, as the
    original code drops them), and its known words past the first `words_num` (cut). All are
    lists of word strings per caption, as the tokenizer normalises them. Raises SampleError
    naming every caption with no known word."""
    import tensorflow as tf

    from mirrorgan_tf import text

    tokenizer = text.Tokenizer(vocab_path, drop_unknown=True)
    ragged = tokenizer(tf.constant(captions)).to_list()
    ignored = [[w.decode() for w in row] for row in tokenizer.unknown_words(tf.constant(captions)).to_list()]
    cut = [[w.decode() for w in row] for row in tokenizer.cut_words(tf.constant(captions), words_num).to_list()]
    empty = [(i, c) for i, (c, ids) in enumerate(zip(captions, ragged)) if not ids]
    if empty:  # numbered as the server numbers batch elements, from 0 in the order given
        raise SampleError("no word of these captions is in the vocabulary: "
                          + "; ".join(f"caption {i} {c!r}" for i, c in empty))
    ids = np.zeros((len(captions), words_num), np.int32)
    lengths = np.zeros(len(captions), np.int32)
    words = []
    for i, caption_ids in enumerate(ragged):
        kept = caption_ids[:words_num]
        ids[i, : len(kept)] = kept
        lengths[i] = len(kept)
        words.append([tokenizer.words[w] for w in kept])
    return ids, lengths, words, ignored, cut


def attention_picture(image: np.ndarray, maps: list[np.ndarray], words: list[str]) -> np.ndarray:
    """image [s, s, 3] in [-1, 1]; maps: per stage [h, w, words_num]; -> uint8 picture, a row per
    stage: the image, then each word's attention (stretched to its own min..max) blended over it, the
    word written underneath."""
    from PIL import Image, ImageDraw

    from mirrorgan_tf.images import to_uint8

    size = image.shape[0]
    base = to_uint8(image).numpy().astype(np.float32)
    rows = []
    for attn in maps:
        tiles = [base]
        for w in range(len(words)):
            a = attn[..., w]
            a = (a - a.min()) / (a.max() - a.min() + 1e-8)  # each word's map is nearly flat: stretch it
            a = np.asarray(Image.fromarray((a * 255).astype(np.uint8)).resize((size, size), Image.BILINEAR),
                           np.float32)[..., None] / 255.0
            heat = np.concatenate([a * 255, a * 96, (1 - a) * 64], axis=-1)  # bright where attended
            tiles.append(0.45 * base + 0.55 * heat)
        rows.append(np.concatenate(tiles, axis=1))
    picture = np.concatenate(rows, axis=0).astype(np.uint8)
    canvas = Image.new("RGB", (picture.shape[1], picture.shape[0] + LABEL_HEIGHT * len(maps)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for r in range(len(maps)):
        top = r * (size + LABEL_HEIGHT)
        canvas.paste(Image.fromarray(picture[r * size:(r + 1) * size]), (0, top))
        for w, word in enumerate(["(image)"] + words):
            draw.text((w * size + 2, top + size + 1), word[: max(3, size // 6)], fill=(0, 0, 0))
    return np.asarray(canvas)


def slug(caption: str, limit: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", caption.lower()).strip("-")[:limit] or "caption"


def grid_parts(num: int, columns: int) -> list[tuple[str, int, int]]:
    """The pictures of one caption's `num` samples: (file name suffix, first sample, end sample)
    per picture, at most `columns` samples each; suffix "" for a single picture (NNN-<words>.png),
    else "-000", "-001", ..."""
    if num <= columns:
        return [("", 0, num)]
    return [(f"-{p:03d}", start, min(num, start + columns)) for p, start in enumerate(range(0, num, columns))]


def sample(run_dir: str, captions: list[str], out: str, num: int = 8, seed: int = 0,
           batch_size: int = BATCH_SIZE, columns: int = COLUMNS, checkpoint: str = "latest") -> list[str]:
    """Writes the pictures the module docstring lists into `out` and returns their paths, in
    order (per caption: its grid files, then its attention picture). Sample k of caption i draws
    its noise from (seed, i * num + k) (evaluation.generator.sample_noise), so the pixels do not
    depend on batch_size or columns. Holds at most batch_size + columns samples at once.
    `checkpoint`: "latest" or "best" (runs.NoBestCheckpointError naming the run when it has none).
    Raises SampleError (num, batch_size or columns below 1, no captions, a caption with no known
    word) before anything is written."""
    from mirrorgan_tf.evaluation.generator import TrainedGenerator
    from mirrorgan_tf.images import image_grid, save_png

    for flag, value in (("--num", num), ("--batch-size", batch_size), ("--columns", columns)):
        if value < 1:
            raise SampleError(f"{flag} {value}: must be at least 1")
    if not captions:
        raise SampleError("give --caption or --captions-file")
    generator = TrainedGenerator(run_dir, checkpoint)
    words_num = generator.cfg.data.words_num
    ids, lengths, words, ignored, cut = tokenize(captions, generator.vocab_path, words_num)
    for caption, unknown, beyond in zip(captions, ignored, cut):
        if unknown:  # dropped as the original does, but not silently
            print(f"ignored as unknown in {caption!r}: {' '.join(unknown)}", file=sys.stderr)
        if beyond:
            print(f"cut by the length limit (data.words_num {words_num}) in {caption!r}: {' '.join(beyond)}",
                  file=sys.stderr)
    import tensorflow as tf

    tf.io.gfile.makedirs(out)
    written = []
    for i, caption in enumerate(captions):
        name = os.path.join(out, f"{i:03d}-{slug(caption)}")
        attention = []

        def batches():  # per batch of samples, a list per stage of float32 [b, s, s, 3]
            for start in range(0, num, batch_size):
                k = np.arange(start, min(num, start + batch_size))
                result = generator(np.repeat(ids[i:i + 1], len(k), 0), np.repeat(lengths[i:i + 1], len(k), 0),
                                   i * num + k, seed)
                stages = [x.numpy() for x in result["images"]]
                if start == 0 and result["word_attention"]:
                    maps = [a.numpy()[0] for a in result["word_attention"]]
                    attention.append(attention_picture(stages[-1][0], maps, words[i]))
                yield stages

        drawn, pending = batches(), None  # pending: samples generated, not yet in a picture
        for suffix, first, end in grid_parts(num, columns):
            while pending is None or len(pending[0]) < end - first:
                stages = next(drawn)
                pending = stages if pending is None else [np.concatenate(x) for x in zip(pending, stages)]
            save_png(image_grid([p[:end - first] for p in pending]), f"{name}{suffix}.png")  # a row per stage
            written.append(f"{name}{suffix}.png")
            pending = [p[end - first:] for p in pending]
        if attention:
            save_png(attention[0], f"{name}-attention.png")
            written.append(f"{name}-attention.png")
    return written


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m mirrorgan_tf.sample", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", required=True)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--caption", action="append", default=[])
    src.add_argument("--captions-file")
    p.add_argument("--num", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE, help="samples per generator call (memory grows "
                   "with it, not with --num)")
    p.add_argument("--columns", type=int, default=COLUMNS, help="samples per picture; more samples go into "
                   "several pictures NNN-<words>-000.png, -001.png, ...")
    p.add_argument("--checkpoint", choices=("latest", "best"), default="latest",
                   help="the run's latest gan checkpoint, or the best one it kept while training (train.best_metric)")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)

    def body() -> int:
        captions = read_captions(a.caption, a.captions_file)
        for path in sample(a.run_dir, captions, a.out, a.num, a.seed, a.batch_size, a.columns, a.checkpoint):
            print(path)
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
