"""PyTorch state dicts -> NumPy arrays, and PyTorch -> Keras tensor layouts.

Reading needs torch (the optional extra ``pip install -e ".[torch]"``); it is imported lazily, on
the first read, so nothing else in the project depends on it. Converting layouts needs only NumPy.

`torch.load` still reads the legacy (non-zip) serialisation that PyTorch 0.3 and 0.4 wrote (and the
released MirrorGAN / AttnGAN `.pth` files and torchvision's 2017 ImageNet files use): tensors
rebuilt through `torch._utils._rebuild_tensor` (0.3) or `_rebuild_tensor_v2` (0.4+), both on the
`weights_only` unpickler's allow list, so we read with ``weights_only=True``: a weights file runs
no code while it loads.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

from mirrorgan_tf.errors import MirrorganError


class TorchFileError(MirrorganError, ValueError):
    """A PyTorch file that cannot be read as a state dict (the message names the file)."""


class TorchMissingError(MirrorganError, ImportError):
    """torch is not installed; the message names the optional extra that brings it."""


TORCH_EXTRA_HINT = 'reading PyTorch .pth files needs torch: pip install -e ".[torch]" (or "mirrorgan_tf[torch]")'

# Suffixes we treat as PyTorch files; anything else given as a weights path is a Keras file.
TORCH_SUFFIXES = (".pth", ".pt", ".pth.tar", ".ckpt")


def is_torch_file(path: str) -> bool:
    """True when `path` names a PyTorch file by its suffix (.pth, .pt, .pth.tar, .ckpt)."""
    return str(path).lower().endswith(TORCH_SUFFIXES)


def import_torch():
    """Imports and returns the torch module. Raises ImportError naming the `torch` extra."""
    try:
        import torch
    except ImportError as e:  # also a broken install (e.g. a CUDA wheel without its libraries)
        raise TorchMissingError(f"{TORCH_EXTRA_HINT} ({e})") from e
    return torch


def read_state_dict(path: str, what: str = "weights") -> dict[str, np.ndarray]:
    """Reads a PyTorch state dict (legacy non-zip or zip format) into float32/int64 NumPy arrays.

    Args:
      path: the `.pth` file.
      what: what the file is for (a config key, say), put in error messages.
    Returns:
      {key: array} in the file's order, with PyTorch's layouts unchanged (conv weights
      [out, in, kh, kw], linear weights [out, in]). Floating tensors become float32; integer
      tensors (BatchNorm's `num_batches_tracked`) int64. A checkpoint that wraps the state dict
      under "state_dict" or "model" is unwrapped. A `module.` prefix (nn.DataParallel) is removed.
    Raises:
      FileNotFoundError: the file does not exist (message names `what` and the path).
      ImportError: torch is not installed (message names the extra).
      ValueError: the file is not a state dict of tensors (e.g. a pickled nn.Module).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what}: PyTorch weights file not found: {path}")
    torch = import_torch()
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except UnicodeDecodeError:
        # Files pickled by Python 2 (PyTorch 0.3 era) hold byte strings that are not UTF-8.
        obj = torch.load(path, map_location="cpu", weights_only=True, encoding="latin1")
    except Exception as e:  # noqa: BLE001 - torch raises many kinds; the file is what failed
        raise TorchFileError(f"{what}: cannot read {path} as a PyTorch state dict of tensors "
                         f"(weights_only load; a pickled nn.Module is not supported): {e}") from e
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, Mapping) and wrapper in obj and isinstance(obj[wrapper], Mapping):
            obj = obj[wrapper]
    if not isinstance(obj, Mapping) or not obj:
        raise TorchFileError(f"{what}: {path} holds {type(obj).__name__}, not a state dict (a mapping of names "
                         f"to tensors)")
    out = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{what}: {path}: entry {key!r} is {type(value).__name__}, not a tensor")
        array = value.detach().cpu().numpy()
        array = array.astype(np.float32) if np.issubdtype(array.dtype, np.floating) else array.astype(np.int64)
        out[key[len("module."):] if key.startswith("module.") else key] = array
    return out


def conv2d_kernel(weight: np.ndarray) -> np.ndarray:
    """PyTorch Conv2d weight [out, in, kh, kw] -> Keras Conv2D kernel [kh, kw, in, out]."""
    if weight.ndim != 4:
        raise ValueError(f"a Conv2d weight has 4 dimensions [out, in, kh, kw], got shape {weight.shape}")
    return np.ascontiguousarray(np.transpose(weight, (2, 3, 1, 0)))


def dense_kernel(weight: np.ndarray) -> np.ndarray:
    """PyTorch Linear weight [out, in] -> Keras Dense kernel [in, out]."""
    if weight.ndim != 2:
        raise ValueError(f"a Linear weight has 2 dimensions [out, in], got shape {weight.shape}")
    return np.ascontiguousarray(weight.T)
