"""Real inputs for the import tests: captions and photos from the CUB sample, and saving a state
dict in PyTorch's legacy (0.3/0.4, non-zip) format as the released files are."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np
from PIL import Image


def cub_captions(root: Path, count: int = 4) -> tuple[list[str], list[list[str]], list[str]]:
    """(captions, their tokens, vocabulary): the first caption of the first `count` text files
    (sorted), and a vocabulary in AttnGAN's
    manner built from those images' captions: id 0 '<end>', then the words sorted."""
    files = sorted((root / "text").rglob("*.txt"))[:count]
    captions, words = [], set()
    for f in files:
        lines = [line for line in f.read_text().split("\n") if line.strip()]
        captions.append(lines[0])
        for line in lines:
            words.update(re.findall(r"\w+", line.lower()))
    vocab = ["<end>"] + sorted(words)
    return captions, [re.findall(r"\w+", c.lower()) for c in captions], vocab


def caption_ids(token_lists, vocab, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """-> ids int32 [B, steps] (0-padded, cut at steps), lengths int32 [B]."""
    index = {w: i for i, w in enumerate(vocab)}
    ids = np.zeros((len(token_lists), steps), "int32")
    lengths = np.zeros((len(token_lists),), "int32")
    for b, tokens in enumerate(token_lists):
        row = [index[t] for t in tokens][:steps]
        ids[b, : len(row)] = row
        lengths[b] = len(row)
    return ids, lengths


def cub_images(root: Path, size: int, count: int = 2) -> np.ndarray:
    """float32 [count, size, size, 3] in [-1, 1]: the first photos (sorted), resized."""
    files = sorted((root / "CUB_200_2011" / "images").rglob("*.jpg"))[:count]
    out = [np.asarray(Image.open(f).convert("RGB").resize((size, size), Image.BILINEAR), "float32")
           for f in files]
    return np.stack(out) / 127.5 - 1.0


def save_legacy(module_or_state, path) -> str:
    """torch.save in the legacy non-zip format PyTorch 0.3/0.4 wrote."""
    import torch

    state = module_or_state.state_dict() if hasattr(module_or_state, "state_dict") else module_or_state
    torch.save(state, str(path), _use_new_zipfile_serialization=False)
    with open(path, "rb") as f:
        assert f.read(2) != b"PK", "expected the legacy format, got a zip file"
    return str(path)


def randomize_batch_norm(module, seed: int = 0) -> None:
    """Random BatchNorm statistics and affine parameters, so evaluation-mode normalisation (and its
    epsilon) shows in the outputs."""
    import torch

    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            with torch.no_grad():
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.02)
                m.weight.copy_(1.0 + torch.randn(n, generator=g) * 0.2)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
                m.num_batches_tracked.fill_(1000)


def max_rel_diff(a, b) -> float:
    """max |a - b| / max |b| (the tolerance measure of the import tests)."""
    a, b = np.asarray(a, "float64"), np.asarray(b, "float64")
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def py2_pickle(obj) -> bytes:
    """A protocol-2 pickle as Python 2's cPickle writes it: `str` (bytes here) as SHORT_BINSTRING,
    `unicode` (str here) as BINUNICODE, small ints as BININT1/BININT."""
    out = bytearray(b"\x80\x02")

    def put(x):
        if isinstance(x, bytes):
            out.extend(b"U" + bytes([len(x)]) + x)
        elif isinstance(x, str):
            data = x.encode("utf-8")
            out.extend(b"X" + struct.pack("<I", len(data)) + data)
        elif isinstance(x, int):
            out.extend(b"K" + bytes([x]) if 0 <= x < 256 else b"J" + struct.pack("<i", x))
        elif isinstance(x, list):
            out.extend(b"](")
            for item in x:
                put(item)
            out.extend(b"e")
        elif isinstance(x, dict):
            out.extend(b"}(")
            for k, v in x.items():
                put(k)
                put(v)
            out.extend(b"u")
        else:
            raise TypeError(type(x))

    put(obj)
    out.extend(b".")
    return bytes(out)
