"""Small real SavedModels with the signatures of our export (captions -> uint8 images), for the
server's layer tests: they load in a second, need no training run, and count their calls in a
variable, so a test can tell whether a refused request reached the model."""

from __future__ import annotations

import shutil
from pathlib import Path

import tensorflow as tf

Z_DIM = 4


class CaptionPainter(tf.Module):
    """serving_default: captions string [None] -> images uint8 [None, size, size, 3], every pixel
    the caption's length in bytes (mod 256); generate: captions, noise float32 [None, Z_DIM] ->
    the same images plus round(noise[:, 0]). Each call adds one to `calls`. With echo=True both
    also answer `ignored_words` (string [None], as the export does): the captions themselves, an
    output whose size only the answer tells."""

    def __init__(self, size: int, echo: bool = False):
        super().__init__()
        self.size, self.echo = size, echo
        self.calls = tf.Variable(0, dtype=tf.int64)

    def _paint(self, captions, offset):
        self.calls.assign_add(1)
        value = tf.math.floormod(tf.strings.length(captions) + offset, 256)
        out = {"images": tf.cast(tf.broadcast_to(value[:, None, None, None],
                                                 [tf.shape(captions)[0], self.size, self.size, 3]), tf.uint8)}
        if self.echo:
            out["ignored_words"] = tf.identity(captions)
        return out

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="captions")])
    def serve(self, captions):
        return self._paint(captions, 0)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="captions"),
                                  tf.TensorSpec([None, Z_DIM], tf.float32, name="noise")])
    def generate(self, captions, noise):
        return self._paint(captions, tf.cast(tf.round(noise[:, 0]), tf.int32))


class WordPainter(tf.Module):
    """The export's caption handling (mirrorgan_tf.serving.export.CaptionWords: the project's
    tokenizer with its vocabulary as an asset, the no-known-word assertion, `ignored_words` and
    `cut_words`) over a painter: serving_default: captions string [None] -> images uint8
    [None, 4, 4, 3], every pixel the number of word ids the caption keeps, and both word outputs."""

    def __init__(self, vocab_path: str, words_num: int):
        super().__init__()
        from mirrorgan_tf import text
        from mirrorgan_tf.serving.export import CaptionWords

        self.tokenizer = text.Tokenizer(vocab_path, drop_unknown=True)  # tracked: the vocabulary ships
        self._words = CaptionWords(self.tokenizer, words_num)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="captions")])
    def serve(self, captions):
        _, lengths = self._words.ids(captions)
        images = tf.cast(tf.broadcast_to(lengths[:, None, None, None], [tf.shape(captions)[0], 4, 4, 3]), tf.uint8)
        return {"images": images, **self._words.reports(captions)}


WORDS = ["<end>", "<unk>", "a", "small", "red", "circle", "on", "the", "left", "top", "right", "of", "image",
         "bottom", "square"]


def save_word_painter(path: Path, words_num: int = 6) -> Path:
    """A WordPainter SavedModel at path (a version folder), its vocabulary WORDS."""
    from mirrorgan_tf import text

    vocab = path.parent / f"{path.name}-vocab.txt"
    text.write_vocabulary(WORDS, str(vocab))
    module = WordPainter(str(vocab), words_num)
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    vocab.unlink()  # the SavedModel must carry its own copy
    return path


def save_painter(path: Path, size: int, echo: bool = False) -> Path:
    """A CaptionPainter SavedModel at path (a version folder)."""
    module = CaptionPainter(size, echo)
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve,
                                                        "generate": module.generate})
    return path


class PainterExports:
    """Saves one painter per image size and copies it into version folders."""

    def __init__(self, root: Path):
        self.root = root

    def version(self, base: Path, version: int, size: int = 16, echo: bool = False) -> Path:
        saved = self.root / f"painter-{size}{'-echo' if echo else ''}"
        if not saved.exists():
            save_painter(saved, size, echo)
        target = base / str(version)
        shutil.copytree(saved, target)
        return target
