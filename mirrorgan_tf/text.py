"""The one tokenizer and vocabulary, used by dataset preparation, the input pipeline and serving.

Everything is TensorFlow ops (tensorflow-text for normalisation and splitting), so the exported
serving graph runs exactly the code that prepared the training data. The rules follow the
original AttnGAN/MirrorGAN code: lower-case, `\\w+` tokens, index 0 is the end/padding token,
words outside the vocabulary are dropped. Unlike the original we apply Unicode NFKC
normalisation first and build the vocabulary from the training split only (the original counted
test captions too, which leaks test words into training).

A vocabulary file has one word per line; the line number is the id. Line 0 is always `<end>`.
The files `build_vocabulary` writes hold `<unk>` at line 1; a vocabulary taken from AttnGAN's
released `captions.pickle` (ixtoword) has no `<unk>`: its id 1 is a real word. Both are read;
in both, unknown words are dropped, and the vocabulary size is the number of lines.
"""

from __future__ import annotations

import collections
from typing import Iterable

import tensorflow as tf
import tensorflow_text as tf_text

from mirrorgan_tf.errors import MirrorganError

class VocabularyError(MirrorganError, ValueError):
    """A vocabulary file that cannot be read as one: the message names the file and line."""


END_TOKEN = "<end>"
UNK_TOKEN = "<unk>"
END_ID = 0
UNK_ID = 1
RESERVED = (END_TOKEN, UNK_TOKEN)
# What the lookup table returns for a word that is not in the file: no id a vocabulary can hold
# (UNK_ID is a real word in a vocabulary without `<unk>`).
_MISSING = -1

# RE2 has no Unicode-aware \w; this class is Python's `\w` for the characters captions contain.
_NON_WORD = r"[^\p{L}\p{N}_]+"


def split_words(captions: tf.Tensor) -> tf.RaggedTensor:
    """Captions (tf.string, any shape [N]) -> ragged [N, (words)] of normalised word strings."""
    captions = tf.convert_to_tensor(captions, tf.string)
    text = tf_text.normalize_utf8(captions, "NFKC")
    text = tf.strings.lower(text, encoding="utf-8")
    return tf_text.regex_split(text, _NON_WORD)


def build_vocabulary(word_lists: Iterable[Iterable[str]], min_count: int = 1) -> list[str]:
    """Deterministic vocabulary: reserved tokens, then words by descending count, then by spelling.

    The order does not depend on the order of the captions, so re-preparing a dataset with its
    files listed differently gives the same ids.
    """
    counts = collections.Counter(w for words in word_lists for w in words)
    for token in RESERVED:
        counts.pop(token, None)
    words = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
    return list(RESERVED) + words


def write_vocabulary(words: list[str], path: str) -> None:
    with tf.io.gfile.GFile(path, "w") as f:
        f.write("".join(w + "\n" for w in words))


def read_vocabulary(path: str) -> list[str]:
    """The words of a vocabulary file, in id order (id = line number).

    Accepted: line 0 `<end>`, optionally `<unk>` at line 1, then one word per line (LF or CRLF
    line ends, an optional UTF-8 byte-order mark). Raises VocabularyError naming the file and line for
    anything a lookup table would get wrong: a missing `<end>`, a reserved token elsewhere, an empty
    line, a line holding whitespace, a word listed twice.
    """
    with tf.io.gfile.GFile(path, "rb") as f:
        data = f.read()
    try:
        content = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise VocabularyError(f"{path}: not valid UTF-8 (byte {e.start})") from None
    words = content.replace("\r\n", "\n").split("\n")
    if words and words[-1] == "":
        words.pop()
    if not words or words[0] != END_TOKEN:
        raise VocabularyError(f"{path}: not a vocabulary file (its first line must be {END_TOKEN}, "
                         f"got {words[0] if words else 'nothing'!r})")
    seen: dict[str, int] = {}
    for i, w in enumerate(words):
        if not w or w != w.strip() or any(c.isspace() for c in w):
            raise VocabularyError(f"{path}:{i + 1}: a vocabulary line must be one word, got {w!r}")
        if w in RESERVED and (w, i) not in ((END_TOKEN, END_ID), (UNK_TOKEN, UNK_ID)):
            raise VocabularyError(f"{path}:{i + 1}: {w} may only stand at line {RESERVED.index(w) + 1}")
        if w in seen:
            raise VocabularyError(f"{path}:{i + 1}: {w!r} is already at line {seen[w] + 1}")
        seen[w] = i
    return words


def has_unknown_token(words: list[str]) -> bool:
    """Whether a vocabulary (as read by `read_vocabulary`) reserves id 1 for `<unk>`."""
    return len(words) > UNK_ID and words[UNK_ID] == UNK_TOKEN


class Tokenizer(tf.Module):
    """Captions -> word ids with a vocabulary file. A tf.Module, so a SavedModel can track it and
    ship the vocabulary as an asset.

    `drop_unknown=True` (the original behaviour) removes out-of-vocabulary words; otherwise they
    map to UNK_ID, which needs a vocabulary with `<unk>` (VocabularyError otherwise). Every word of the
    file keeps its id: the lookup's miss value is -1, not an id.
    """

    def __init__(self, vocab_path: str, drop_unknown: bool = True, name: str = "tokenizer"):
        super().__init__(name=name)
        self.vocab_path = vocab_path
        self.words = read_vocabulary(vocab_path)
        self.drop_unknown = drop_unknown
        self.has_unknown_token = has_unknown_token(self.words)
        if not drop_unknown and not self.has_unknown_token:
            raise VocabularyError(f"{vocab_path}: has no {UNK_TOKEN} at line 2, so unknown words can only be dropped")
        # The table reads the file itself (so a SavedModel ships it as an asset); a CRLF file or a
        # byte-order mark would give it keys no word matches.
        with tf.io.gfile.GFile(vocab_path, "rb") as f:
            raw = f.read()
        if raw.startswith(b"\xef\xbb\xbf") or b"\r" in raw:
            raise VocabularyError(f"{vocab_path}: write it with LF line ends and no byte-order mark "
                             "(pipelines.prepare --vocab does this when it copies a vocabulary)")
        initializer = tf.lookup.TextFileInitializer(
            vocab_path,
            key_dtype=tf.string,
            key_index=tf.lookup.TextFileIndex.WHOLE_LINE,
            value_dtype=tf.int64,
            value_index=tf.lookup.TextFileIndex.LINE_NUMBER,
        )
        self.table = tf.lookup.StaticHashTable(initializer, default_value=_MISSING)

    @property
    def vocab_size(self) -> int:
        return len(self.words)

    def __call__(self, captions: tf.Tensor) -> tf.RaggedTensor:
        """tf.string [N] -> ragged int64 [N, (words)]."""
        words = split_words(captions)
        ids = tf.ragged.map_flat_values(self.table.lookup, words)
        if self.drop_unknown:
            return tf.ragged.boolean_mask(ids, tf.not_equal(ids, _MISSING))
        return tf.ragged.map_flat_values(lambda v: tf.where(tf.not_equal(v, _MISSING), v, UNK_ID), ids)

    def unknown_words(self, captions: tf.Tensor) -> tf.RaggedTensor:
        """tf.string [N] -> ragged tf.string [N, (words)]: each caption's words (normalised as the
        tokenizer sees them, in caption order, repeats kept) that the vocabulary does not hold,
        i.e. exactly the words `__call__` drops (or maps to UNK_ID). TensorFlow ops only, so the
        serving graph runs it too."""
        words = split_words(captions)
        missing = tf.ragged.map_flat_values(lambda w: tf.equal(self.table.lookup(w), _MISSING), words)
        return tf.ragged.boolean_mask(words, missing)

    def ignored_words(self, captions: tf.Tensor) -> tf.Tensor:
        """tf.string [N] -> tf.string [N]: each caption's unknown words (see `unknown_words`)
        joined by single spaces; "" when every word is known. E.g. with the shapes vocabulary,
        "a racoon detective with a microscope" -> "racoon detective with microscope"."""
        return tf.strings.reduce_join(self.unknown_words(captions), axis=-1, separator=" ")

    def cut_words(self, captions: tf.Tensor, words_num: int) -> tf.RaggedTensor:
        """tf.string [N] -> ragged tf.string [N, (words)]: each caption's known words past the
        first `words_num` known ones (normalised, in caption order), i.e. the words that `fit_caption`
        cuts at inference (`data.words_num`). Unknown words are not counted: they are dropped
        before the cut (see `unknown_words`). TensorFlow ops only, so the serving graph runs it too."""
        words = split_words(captions)
        known = tf.ragged.map_flat_values(lambda w: tf.not_equal(self.table.lookup(w), _MISSING), words)
        return tf.ragged.boolean_mask(words, known)[:, words_num:]

    def cut_text(self, captions: tf.Tensor, words_num: int) -> tf.Tensor:
        """tf.string [N] -> tf.string [N]: `cut_words` joined by single spaces; "" when a caption
        fits in `words_num` known words."""
        return tf.strings.reduce_join(self.cut_words(captions, words_num), axis=-1, separator=" ")

    def no_known_word_message(self, captions: tf.Tensor, lengths: tf.Tensor | None = None) -> tf.Tensor:
        """tf.string [N] -> tf.string scalar: "" when every caption keeps a word, else the
        elements that keep none, by index with their text quoted, e.g.
        `no word of these captions is in the vocabulary: element 1 ""; element 3 "zebra"`.
        For a graph's `tf.debugging.Assert`, whose message is all a TF Serving client sees.
        `lengths`: the captions' numbers of known words ([N], any int dtype) when the caller
        has tokenized them already; otherwise they are computed here."""
        captions = tf.convert_to_tensor(captions, tf.string)
        if lengths is None:
            lengths = self(captions).row_lengths()
        bad = tf.where(tf.equal(lengths, 0))[:, 0]
        listed = tf.strings.join(["element ", tf.strings.as_string(bad), ' "', tf.gather(captions, bad), '"'])
        return tf.cond(tf.size(bad) > 0,
                       lambda: tf.strings.join(["no word of these captions is in the vocabulary: ",
                                                tf.strings.reduce_join(listed, separator="; ")]),
                       lambda: tf.constant(""))

    def decode(self, ids: Iterable[int]) -> str:
        """Word ids -> text, stopping at the first END_ID (for inspecting captions)."""
        out = []
        for i in ids:
            i = int(i)
            if i == END_ID:
                break
            out.append(self.words[i] if 0 <= i < len(self.words) else UNK_TOKEN)
        return " ".join(out)


def fit_caption(ids: tf.Tensor, words_num: int, seed: tf.Tensor | None = None):
    """One caption's ids (1-D) -> (ids padded with END_ID to `words_num` [words_num], length).

    A caption longer than `words_num` keeps its first words when `seed` is None (inference), or a
    random in-order subset of its words when a stateless `seed` (shape [2]) is given (training),
    as the original code does.
    """
    ids = tf.convert_to_tensor(ids)
    n = tf.shape(ids, out_type=tf.int32)[0]
    if seed is None:
        kept = ids[:words_num]
    else:
        order = tf.random.experimental.stateless_shuffle(tf.range(n), seed=seed)
        keep = tf.sort(order[:words_num])
        kept = tf.gather(ids, keep)
    length = tf.minimum(n, words_num)
    padded = tf.pad(kept, [[0, words_num - length]], constant_values=END_ID)
    padded = tf.ensure_shape(padded, [words_num])
    return padded, length


class WordSwap:
    """Counterfactual captions by one word swap: "a small orange square" -> "a small orange
    circle". The wrong pairs they make (a real image with its caption so changed) differ from the
    truth in one attribute only, so a discriminator cannot reject them by an easier cue, as it can
    the reference's wrong pairs (another image's caption, which differs in most attributes).
    `train.wrong_word_swaps` in the config; its use is in `losses.discriminator_loss`.

    groups: each a string of classes separated by spaces, each class a word or synonyms joined by
    "/" ("circle/disc square/block triangle"). A swap replaces one word of a class by a word of
    another class of the same group (class first, then synonym, both uniform). Words are
    normalised as the tokenizer normalises them and must be single vocabulary words.

    Raises VocabularyError naming `where` and the word for a word the vocabulary lacks, a word in
    two classes, a group of fewer than two classes, or a multi-word entry.
    """

    def __init__(self, words: list[str], groups: Iterable[str], where: str = "train.wrong_word_swaps",
                 vocab_path: str = "the vocabulary"):
        ids = {w: i for i, w in enumerate(words)}
        class_words: list[list[int]] = []   # global class index -> its word ids
        class_group: list[int] = []         # global class index -> group index
        owner: dict[int, int] = {}          # word id -> its class index
        for g, group in enumerate(groups):
            classes = str(group).split()
            if len(classes) < 2:
                raise VocabularyError(f"{where}[{g}] = {group!r}: a group needs at least two classes separated by "
                                      "spaces (synonyms of one class are joined by '/')")
            for entry in classes:
                members = []
                for raw in entry.split("/"):
                    normalised = [w.decode() for w in split_words(tf.constant([raw])).to_list()[0]]
                    if len(normalised) != 1:
                        raise VocabularyError(f"{where}[{g}]: {raw!r} is not one word as the tokenizer splits it")
                    word = normalised[0]
                    if word not in ids:  # normalising already turned "<end>" into "end"
                        raise VocabularyError(f"{where}[{g}]: {word!r} is not a word of {vocab_path}")
                    if ids[word] in owner:
                        raise VocabularyError(f"{where}[{g}]: {word!r} is listed twice")
                    owner[ids[word]] = len(class_words)
                    members.append(ids[word])
                class_words.append(members)
                class_group.append(g)
        num_classes = len(class_words)
        # For each word id: the classes it may become (the other classes of its group), padded.
        others = [[c for c in range(num_classes) if class_group[c] == class_group[owner[i]] and c != owner[i]]
                  if i in owner else [] for i in range(len(words))]
        width = max([len(o) for o in others] + [1])
        synonyms = max([len(m) for m in class_words] + [1])
        self._others = tf.constant([o + [0] * (width - len(o)) for o in others], tf.int32)          # [V, width]
        self._num_others = tf.constant([len(o) for o in others], tf.int32)                          # [V]
        self._class_words = tf.constant([m + [0] * (synonyms - len(m)) for m in class_words] or [[0]], tf.int32)
        self._class_size = tf.constant([len(m) for m in class_words] or [0], tf.int32)

    def __call__(self, ids: tf.Tensor, length: tf.Tensor, seed: tf.Tensor):
        """One padded caption int32 [W] (END_ID after `length` words) and a stateless seed [2] ->
        (int32 [W], the caption with one swappable word replaced; float32 scalar, 1.0 if a swap
        was made, 0.0 if the caption has no swappable word, when the ids come back unchanged)."""
        ids = tf.convert_to_tensor(ids, tf.int32)
        position_seed, class_seed, word_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
        in_caption = tf.range(tf.shape(ids)[0]) < tf.cast(length, tf.int32)
        choices = tf.where(in_caption, tf.gather(self._num_others, ids), 0)
        candidates = tf.cast(tf.where(choices > 0)[:, 0], tf.int32)
        found = tf.size(candidates) > 0

        def swap():
            pick = tf.random.stateless_uniform([], position_seed, 0, tf.size(candidates), dtype=tf.int32)
            position = candidates[pick]
            word = ids[position]
            to_class = self._others[word, tf.random.stateless_uniform([], class_seed, 0, self._num_others[word],
                                                                      dtype=tf.int32)]
            new = self._class_words[to_class, tf.random.stateless_uniform([], word_seed, 0,
                                                                          self._class_size[to_class], dtype=tf.int32)]
            return tf.tensor_scatter_nd_update(ids, [[position]], [new])

        swapped = tf.cond(found, swap, lambda: ids)
        return tf.ensure_shape(swapped, ids.shape), tf.cast(found, tf.float32)
