"""python -m mirrorgan_tf.sample --run-dir R (--caption "..." ... | --captions-file F) [--num 8] [--seed S] --out DIR

Per caption, with the run's EMA generator:
  NNN-<words>.png            `num` samples (columns) at every stage (rows, upscaled to the last)
  NNN-<words>-attention.png  AttnGAN-style word attention of the first sample: per later stage
                             a row of the image, then each word's attention over it
Captions go through the project's tokenizer (unknown words dropped, cut to data.words_num); the
words ignored as unknown, and the known words past data.words_num that the length limit cuts, are
printed on stderr, per caption; a caption with no known word is an error that names it. Same
seed, same pictures.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

import numpy as np

from mirrorgan_tf.errors import MirrorganError, run_cli

LABEL_HEIGHT = 14


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
    empty = [c for c, ids in zip(captions, ragged) if not ids]
    if empty:
        raise SampleError("no word of these captions is in the vocabulary: " + "; ".join(repr(c) for c in empty))
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


def sample(run_dir: str, captions: list[str], out: str, num: int = 8, seed: int = 0) -> list[str]:
    from mirrorgan_tf.evaluation.generator import TrainedGenerator
    from mirrorgan_tf.images import image_grid, save_png

    if num < 1:
        raise SampleError(f"--num {num}: must be at least 1")
    if not captions:
        raise SampleError("give --caption or --captions-file")
    generator = TrainedGenerator(run_dir)
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
        index = np.arange(i * num, (i + 1) * num)
        result = generator(np.repeat(ids[i:i + 1], num, 0), np.repeat(lengths[i:i + 1], num, 0), index, seed)
        stages = [x.numpy() for x in result["images"]]
        name = os.path.join(out, f"{i:03d}-{slug(caption)}")
        save_png(image_grid(stages), f"{name}.png")  # a row per stage, upscaled to the last
        written.append(f"{name}.png")
        if result["word_attention"]:
            maps = [a.numpy()[0] for a in result["word_attention"]]
            save_png(attention_picture(stages[-1][0], maps, words[i]), f"{name}-attention.png")
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
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)

    def body() -> int:
        captions = read_captions(a.caption, a.captions_file)
        for path in sample(a.run_dir, captions, a.out, a.num, a.seed):
            print(path)
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
