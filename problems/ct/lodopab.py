"""Loader for the LoDoPaB-CT ground-truth images (Leuschner et al., Sci. Data 2021), for users who have them.

The data set ships as HDF5 files ``ground_truth_{train,validation,test}_XXX.hdf5`` (``XXX`` = 000, 001, ...),
each with a dataset ``data`` of shape ``(n, 362, 362)`` (128 images per file except the last), values the
attenuation normalised to ``[0, 1]``. Only the ground truth is read: the sinograms are re-simulated for the
chosen :class:`~problems.ct.geometry.CTGeometry` with :func:`problems.ct.phantoms.simulate`.

The images are resized to ``image_size x image_size`` by area averaging (anti-aliased) and clipped to
``[0, 1]``. The 362-pixel LoDoPaB images span the same square (26 cm) as the resized ones.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from fpntools.errors import UserInputError

__all__ = ["LoDoPaBError", "lodopab_files", "load_lodopab", "SPLITS"]

SPLITS = ("train", "validation", "test")
_ALIASES = {"val": "validation", "valid": "validation"}
_FILE_RE = re.compile(r"^ground_truth_(train|validation|test)_(\d{3})\.hdf5$")


class LoDoPaBError(UserInputError):
    """The LoDoPaB-CT files are missing or do not hold what is expected."""


def _split_name(split: str) -> str:
    s = _ALIASES.get(split, split)
    if s not in SPLITS:
        raise ValueError(f"unknown LoDoPaB split {split!r}; use one of {SPLITS} (or 'val')")
    return s


def lodopab_files(root: str | os.PathLike, split: str = "train") -> list[Path]:
    """The ground-truth files of ``split`` under ``root``, sorted by their index ``XXX``.

    Raises :class:`LoDoPaBError` when ``root`` does not exist or holds no file of the split.
    """
    s = _split_name(split)
    root = Path(root)
    if not root.is_dir():
        raise LoDoPaBError(f"LoDoPaB directory not found: {root}")
    files = []
    for p in root.iterdir():
        m = _FILE_RE.match(p.name)
        if m and m.group(1) == s and p.is_file():
            files.append((int(m.group(2)), p))
    if not files:
        raise LoDoPaBError(
            f"no LoDoPaB ground-truth files for split {s!r} in {root} "
            f"(expected ground_truth_{s}_000.hdf5, ground_truth_{s}_001.hdf5, ...)"
        )
    files.sort()
    idx = [i for i, _ in files]
    if idx != list(range(len(idx))):
        missing = sorted(set(range(max(idx) + 1)) - set(idx))
        raise LoDoPaBError(f"LoDoPaB split {s!r} in {root} is incomplete: missing file indices {missing}")
    return [p for _, p in files]


def _resize(batch: np.ndarray, size: int) -> np.ndarray:
    """Area-average / bilinear resize ``(n, h, w) -> (n, size, size)``."""
    t = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))[:, None]
    if t.shape[-1] == size and t.shape[-2] == size:
        out = t
    elif t.shape[-1] > size:
        out = F.interpolate(t, size=(size, size), mode="area")
    else:
        out = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)
    return out[:, 0].clamp_(0.0, 1.0).numpy()


def load_lodopab(
    root: str | os.PathLike,
    split: Literal["train", "validation", "val", "test"] = "train",
    image_size: int = 128,
    max_images: int | None = None,
    key: str = "data",
    chunk: int = 64,
) -> np.ndarray:
    """Ground-truth images of a LoDoPaB-CT split, resized: ``(N, image_size, image_size)`` float32 in ``[0, 1]``.

    Args:
        root: the directory holding ``ground_truth_<split>_XXX.hdf5``.
        split: ``"train"``, ``"validation"`` (alias ``"val"``) or ``"test"``.
        image_size: output side length (use ``geometry.image_size``).
        max_images: read at most this many images (in file order); ``None`` reads all.
        key: the HDF5 dataset name.
        chunk: images read and resized at a time.

    Raises:
        LoDoPaBError: missing directory or files, a file that is not HDF5, a missing ``key``,
            or a dataset that is not ``(n, h, w)`` with square images.
    """
    import h5py

    if image_size < 2:
        raise ValueError(f"image_size must be >= 2, got {image_size}")
    if max_images is not None and max_images < 0:
        raise ValueError(f"max_images must be >= 0, got {max_images}")
    out: list[np.ndarray] = []
    count = 0
    for path in lodopab_files(root, split):
        if max_images is not None and count >= max_images:
            break
        try:
            fh = h5py.File(path, "r")
        except OSError as exc:
            raise LoDoPaBError(f"cannot read LoDoPaB file {path} as HDF5: {exc}") from exc
        with fh:
            if key not in fh:
                raise LoDoPaBError(f"LoDoPaB file {path} has no dataset {key!r} (found: {sorted(fh.keys())})")
            ds = fh[key]
            if not isinstance(ds, h5py.Dataset) or ds.ndim != 3 or ds.shape[1] != ds.shape[2]:
                raise LoDoPaBError(
                    f"LoDoPaB dataset {key!r} in {path} has shape {getattr(ds, 'shape', None)}; "
                    "expected (n, 362, 362) square images"
                )
            n = ds.shape[0]
            if max_images is not None:
                n = min(n, max_images - count)
            for i in range(0, n, chunk):
                out.append(_resize(ds[i : min(n, i + chunk)], image_size))
            count += n
    if not out:
        return np.zeros((0, image_size, image_size), np.float32)
    return np.concatenate(out, axis=0)
