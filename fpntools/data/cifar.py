"""CIFAR-10 in its "python version" format (``cifar-10-batches-py``): pickled batch files.

Each of ``data_batch_1`` ... ``data_batch_5`` and ``test_batch`` is a pickled dict with ``b"data"``, a
``uint8`` array ``(10000, 3072)`` (row-major 3x32x32, channels R, G, B), and ``b"labels"``, a list of ints in
``0..9``. Files are read with a restricted unpickler that only rebuilds numpy arrays, lists, dicts and
strings: a crafted file cannot run code.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from fpntools.errors import UserInputError

__all__ = ["load_cifar10", "read_cifar_batch", "CIFAR10_CLASSES"]

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):  # type: ignore[override]
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only numpy arrays are allowed)")


def read_cifar_batch(path: str | Path) -> tuple[Tensor, Tensor]:
    """One batch file -> ``(images float32 (N, 3, 32, 32) in [0, 1], labels long (N,))``."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"CIFAR-10 batch file not found: {path}")
    try:
        with path.open("rb") as fh:
            obj = _SafeUnpickler(fh, encoding="bytes").load()
    except Exception as exc:
        raise UserInputError(f"{path} is not a readable CIFAR-10 python batch: {exc}") from None
    if not isinstance(obj, dict):
        raise UserInputError(f"{path} holds a {type(obj).__name__}, expected a dict with b'data' and b'labels'")
    data = obj.get(b"data", obj.get("data"))
    labels = obj.get(b"labels", obj.get("labels"))
    if data is None or labels is None:
        raise UserInputError(f"{path} lacks the 'data' or 'labels' entry (keys: {sorted(map(str, obj))})")
    data = np.asarray(data)
    if data.ndim != 2 or data.shape[1] != 3072:
        raise UserInputError(f"{path}: 'data' has shape {data.shape}, expected (N, 3072) = 3x32x32 pixels per row")
    labels = np.asarray(labels)
    if labels.shape != (data.shape[0],):
        raise UserInputError(f"{path}: {labels.shape[0] if labels.ndim else 0} labels for {data.shape[0]} images")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise UserInputError(f"{path}: labels must lie in 0..9, got range [{labels.min()}, {labels.max()}]")
    images = torch.from_numpy(data.astype(np.uint8, copy=False).reshape(-1, 3, 32, 32).copy()).float() / 255.0
    return images, torch.from_numpy(labels.astype(np.int64))


def load_cifar10(root: str | Path, split: str = "train") -> tuple[Tensor, Tensor]:
    """Load the ``train`` (5 data batches) or ``test`` split from the ``cifar-10-batches-py`` directory.

    ``root`` may be that directory or its parent.
    """
    root = Path(root)
    if (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    if not root.is_dir():
        raise UserInputError(f"CIFAR-10 directory not found: {root}")
    if split == "train":
        names = [f"data_batch_{i}" for i in range(1, 6)]
    elif split == "test":
        names = ["test_batch"]
    else:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    missing = [n for n in names if not (root / n).is_file()]
    if missing:
        raise UserInputError(f"CIFAR-10 directory {root} lacks {', '.join(missing)}")
    parts = [read_cifar_batch(root / n) for n in names]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
