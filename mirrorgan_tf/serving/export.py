"""Export the trained generator as a SavedModel in TensorFlow Serving's layout:
<export_dir>/<version>/{saved_model.pb, variables/, assets/vocab.txt}.

The graph holds the project's one tokenizer (tensorflow-text ops, the vocabulary as an asset),
STEM and the EMA generator, so it needs only TensorFlow and TensorFlow Text to run: exactly the
op set of the stock model server. Signatures:
    serving_default  captions tf.string [None] -> images tf.uint8 [None, H, W, 3], fresh noise,
                     ignored_words and cut_words tf.string [None]
    generate         captions tf.string [None], noise tf.float32 [None, z_dim] -> images,
                     ignored_words and cut_words; deterministic: the conditioning augmentation
                     uses its mean
`ignored_words` holds, per caption, its words outside the vocabulary joined by spaces ("" when
none): they are dropped, as the original code drops them, and this says which. `cut_words` holds
the known words past the first `data.words_num`, which the length limit cuts ("" when none).
A caption with no word in the vocabulary is an INVALID_ARGUMENT error (a failed assertion, as the
stock model server reports it) naming each such element by index with its text quoted:
`no word of these captions is in the vocabulary: element 2 ""`.

The graph computes in float32 (runs.INFERENCE_POLICY) whatever `train.mixed_precision` the run
trained with, and whichever process writes it (the training's export stage runs under the run's
mixed policy; `python -m mirrorgan_tf.export` under float32): one export per run, the same pixels
for the same captions and noise. float32 because it is the accurate answer of the float32 weights
mixed training keeps, and because the CPUs TF Serving mostly runs on have no fast float16.
"""

from __future__ import annotations

import os
import re

import keras
import tensorflow as tf

from mirrorgan_tf import images, runs, text
from mirrorgan_tf.models import networks
from mirrorgan_tf.models.networks import generate


class CaptionWords:
    """The export's caption handling, in TensorFlow ops: word ids cut to `words_num`, and the
    `ignored_words` / `cut_words` outputs that say what was left out. All three come from the
    one tokenizer (mirrorgan_tf.text); this only wires them into the graph.

    tokenizer: a text.Tokenizer (drop_unknown=True); words_num: data.words_num (> 0)."""

    def __init__(self, tokenizer: text.Tokenizer, words_num: int):
        self.tokenizer, self.words_num = tokenizer, words_num

    def ids(self, captions):
        """captions tf.string [N] -> (ids int32 [N, words_num], lengths int32 [N]); an
        INVALID_ARGUMENT error names the captions with no word in the vocabulary, by index, with
        their text quoted (the Assert's data is the whole message a TF Serving client gets)."""
        ids = self.tokenizer(captions)
        lengths = tf.cast(ids.row_lengths(), tf.int32)
        problem = self.tokenizer.no_known_word_message(captions, lengths)
        check = tf.debugging.Assert(tf.equal(problem, ""), [problem])
        with tf.control_dependencies([check]):
            lengths = tf.minimum(lengths, self.words_num)
        padded = ids[:, : self.words_num].to_tensor(default_value=text.END_ID, shape=[None, self.words_num])
        return tf.cast(padded, tf.int32), lengths

    def reports(self, captions) -> dict:
        """captions tf.string [N] -> {"ignored_words", "cut_words"}: tf.string [N] each, words
        joined by spaces ("" when none)."""
        return {"ignored_words": self.tokenizer.ignored_words(captions),
                "cut_words": self.tokenizer.cut_text(captions, self.words_num)}


class ServingGraph:
    """The serving functions over the tokenizer, STEM and the EMA generator."""

    def __init__(self, cfg, vocab_path: str, stem, glam):
        self.tokenizer = text.Tokenizer(vocab_path, drop_unknown=True)
        self.words = CaptionWords(self.tokenizer, cfg.data.words_num)
        self.stem, self.glam = stem, glam
        self.z_dim = cfg.model.z_dim
        self.condition_dim = cfg.model.condition_dim

    def _images(self, captions, noise, eps):
        ids, lengths = self.words.ids(captions)
        return images.to_uint8(generate(self.stem, self.glam, ids, lengths, noise, eps)["images"][-1])

    def _outputs(self, captions, noise, eps):
        return {"images": self._images(captions, noise, eps), **self.words.reports(captions)}

    def serve(self, captions):
        n = tf.shape(captions)[0]
        noise = tf.random.normal([n, self.z_dim])
        eps = tf.random.normal([n, self.condition_dim])
        return self._outputs(captions, noise, eps)

    def generate(self, captions, noise):
        check = tf.debugging.assert_equal(tf.shape(noise), tf.stack([tf.shape(captions)[0], self.z_dim]),
                                          message="noise must be [number of captions, z_dim]")
        with tf.control_dependencies([check]):
            eps = tf.zeros([tf.shape(captions)[0], self.condition_dim])
        return self._outputs(captions, noise, eps)


def next_version(export_dir: str) -> int:
    if not tf.io.gfile.isdir(export_dir):
        return 1
    versions = [int(n.rstrip("/")) for n in tf.io.gfile.listdir(export_dir) if re.fullmatch(r"\d+/?", n)]
    return max(versions, default=0) + 1


def export(run_dir: str, export_dir: str = "saved_models/mirrorgan", version: int | None = None,
           checkpoint: str = "latest") -> str:
    """Write the SavedModel atomically, built and traced under runs.INFERENCE_POLICY (float32)
    and the process's policy put back afterwards; returns its version folder. `checkpoint`:
    the run's latest gan checkpoint or its best one ("best": runs.NoBestCheckpointError naming the
    run when it kept none)."""
    with networks.dtype_policy(runs.INFERENCE_POLICY):
        return _export(run_dir, export_dir, version, checkpoint)


def _export(run_dir: str, export_dir: str, version: int | None, checkpoint: str = "latest") -> str:
    run = runs.load_run(run_dir)
    cfg = run.cfg
    stem, glam = run.generator(finished=True, checkpoint=checkpoint)
    version = version or next_version(export_dir)
    target = os.path.join(export_dir, str(version))
    if tf.io.gfile.exists(target):
        raise FileExistsError(f"{target}: version {version} already exists")
    graph = ServingGraph(cfg, run.vocab_path, stem, glam)
    archive = keras.export.ExportArchive()
    archive.track(stem)
    archive.track(glam)
    archive.track(graph.tokenizer.table)  # the vocabulary file becomes an asset
    archive.add_endpoint("serving_default", graph.serve,
                         input_signature=[tf.TensorSpec([None], tf.string, name="captions")])
    archive.add_endpoint("generate", graph.generate,
                         input_signature=[tf.TensorSpec([None], tf.string, name="captions"),
                                          tf.TensorSpec([None, cfg.model.z_dim], tf.float32, name="noise")])
    # TF Serving watches export_dir for numeric folders: build under a name it ignores, then rename.
    with images.staged(target) as tmp:
        archive.write_out(tmp, verbose=False)
    return target
