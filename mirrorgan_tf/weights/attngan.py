"""AttnGAN's released DAMSM (`text_encoder*.pth`, `image_encoder*.pth`, `captions.pickle`) -> STEM,
the DAMSM image encoder and a vocabulary file.

Text encoder (AttnGAN's RNN_ENCODER, the one MirrorGAN reuses as STEM): keys
    encoder.weight                      [vocab, 300]   word embedding
    rnn.{weight_ih,weight_hh,bias_ih,bias_hh}_l0[_reverse]   one bidirectional LSTM layer,
                                        128 units per direction for CUB/COCO (D = 256)
Its dropout (0.5 on the embeddings) is off at evaluation in both frameworks. The original
returns word features of the longest caption in the batch (padding zero) and the sentence
feature as [forward final h, backward final h]; STEM returns the same, padded to the configured
caption length.

Image encoder (CNN_ENCODER): the whole torchvision Inception-v3 trunk under its own names
(Conv2d_1a_3x3 ... Mixed_7c; no AuxLogits, no fc), plus emb_features (1x1 conv 768 -> D, no
bias) and emb_cnn_code (Linear 2048 -> D).

captions.pickle is a Python 2 pickle of [train_captions, test_captions, ixtoword, wordtoix]:
id 0 is '<end>' (also the padding), words from 1, and no unknown-word token (the original drops
words outside the vocabulary).
"""

from __future__ import annotations

import os
import pickle

from mirrorgan_tf.weights import layout
from mirrorgan_tf.weights.layout import StateDict, WeightImportError

END_TOKEN = "<end>"


def load_stem(stem, state, source: str = "text encoder") -> None:
    """Fill a built `models.stem.STEM` from an RNN_ENCODER state dict ({key: numpy array}).

    The STEM must have been called once (weights exist) with the vocabulary size, embedding sizes
    and D of the file; any mismatch raises WeightImportError naming the key. Every key of the
    file must be used."""
    sd = state if isinstance(state, StateDict) else StateDict(state, source)
    if "encoder.weight" not in sd and "module.encoder.weight" in sd.state:
        sd.prefix = "module."  # saved from a DataParallel wrapper
    if "rnn.weight_ih_l1" in sd:
        raise WeightImportError(f"{sd.source}: a multi-layer RNN; STEM has one bidirectional layer")
    if "rnn.weight_ih_l0_reverse" not in sd:
        raise WeightImportError(f"{sd.source}: 'rnn.weight_ih_l0_reverse' is missing: not a bidirectional "
                                "LSTM text encoder (a GRU or one direction is not supported)")
    layout.embedding(stem.embedding, sd, "encoder")
    layout.lstm(stem.rnn.forward_layer, sd, "rnn", "_l0")
    layout.lstm(stem.rnn.backward_layer, sd, "rnn", "_l0_reverse")
    sd.finish()


def load_damsm_image_encoder(encoder, state, source: str = "image encoder") -> None:
    """Fill a built `models.damsm.DamsmImageEncoder` whose backbone has torchvision's Inception-v3
    layout (`damsm.backbone_weights` a `.pth` file) from a CNN_ENCODER state dict: the trunk's
    Conv2d_1a_3x3 ... Mixed_7c keys, emb_features (1x1 conv 768 -> D, no bias) and emb_cnn_code
    (Linear 2048 -> D). Every key must be used. Raises WeightImportError naming the key."""
    sd = state if isinstance(state, StateDict) else StateDict(state, source)
    if getattr(encoder.backbone, "layout", None) != "torchvision":
        raise WeightImportError(f"{sd.source}: the DAMSM image encoder's backbone must have torchvision's "
                                "layout (damsm.backbone_weights a .pth file), not Keras' InceptionV3")
    layout.torchvision_layout(encoder.backbone, sd)
    layout.conv2d(encoder.emb_features, sd, "emb_features")
    layout.dense(encoder.emb_cnn_code, sd, "emb_cnn_code")
    sd.finish()


def image_encoder_embedding_dim(state, source: str = "image encoder") -> int:
    """D of a CNN_ENCODER state dict (emb_cnn_code's output size)."""
    sd = state if isinstance(state, StateDict) else StateDict(state, source)
    return int(sd.get("emb_cnn_code.weight").shape[0])


def text_encoder_sizes(state, source: str = "text encoder") -> dict:
    """(vocab_size, word_embedding_dim, embedding_dim) of an RNN_ENCODER state dict, read from
    its shapes, so a network can be built to fit before loading."""
    sd = StateDict(state, source)
    if "encoder.weight" not in sd and "module.encoder.weight" in sd.state:
        sd.prefix = "module."
    emb = sd.get("encoder.weight")
    w_hh = sd.get("rnn.weight_hh_l0")
    if emb.ndim != 2 or w_hh.ndim != 2:
        raise WeightImportError(f"{source}: encoder.weight / rnn.weight_hh_l0 are not matrices")
    return {"vocab_size": int(emb.shape[0]), "word_embedding_dim": int(emb.shape[1]),
            "embedding_dim": int(2 * w_hh.shape[1])}


def _text(value, path: str, what: str) -> str:
    # Python 2 `str` objects unpickle as latin-1 text, `unicode` as text; both must be text here.
    if isinstance(value, bytes):
        value = value.decode("latin1")
    if not isinstance(value, str):
        raise WeightImportError(f"{path}: {what} is {type(value).__name__}, not a word")
    return value


def read_captions_pickle(path: str) -> list[str]:
    """AttnGAN's captions.pickle -> the vocabulary as a list, index = word id.

    Checks what the weights rely on: ids 0..n-1 without gaps, id 0 is '<end>', and wordtoix is
    the exact inverse of ixtoword. Raises WeightImportError naming the file otherwise."""
    if not os.path.isfile(path):
        raise WeightImportError(f"--captions-pickle {path}: file not found")
    try:
        with open(path, "rb") as f:
            # encoding='latin1': Python 2 byte strings (and any numpy arrays inside) load intact.
            data = pickle.load(f, encoding="latin1")
    except (pickle.UnpicklingError, EOFError, ValueError, AttributeError, ImportError) as e:
        raise WeightImportError(f"{path}: not a readable captions pickle ({e})") from e
    if not isinstance(data, (list, tuple)) or len(data) < 4 or not isinstance(data[2], dict) \
            or not isinstance(data[3], dict):
        raise WeightImportError(f"{path}: expected [train_captions, test_captions, ixtoword, wordtoix]")
    ixtoword, wordtoix = data[2], data[3]
    n = len(ixtoword)
    if sorted(int(k) for k in ixtoword) != list(range(n)):
        raise WeightImportError(f"{path}: ixtoword's ids are not 0..{n - 1}")
    words = [_text(ixtoword[i], path, f"ixtoword[{i}]") for i in range(n)]
    if words[0] != END_TOKEN:
        raise WeightImportError(f"{path}: ixtoword[0] is {words[0]!r}, expected {END_TOKEN!r}")
    inverse = {_text(w, path, "a wordtoix key"): int(i) for w, i in wordtoix.items()}
    if inverse != {w: i for i, w in enumerate(words)}:
        raise WeightImportError(f"{path}: wordtoix is not the inverse of ixtoword")
    if len(set(words)) != n or any(not w or "\n" in w for w in words):
        raise WeightImportError(f"{path}: the vocabulary has repeated, empty or multi-line words")
    return words


def write_vocabulary_file(words: list[str], path: str) -> None:
    """One word a line, line i = id i (write-then-rename, so no half-written file is left)."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("".join(w + "\n" for w in words))
    os.replace(tmp, path)
