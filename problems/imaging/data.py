"""Offline grayscale images (scikit-image's bundled set), the train/test split, patch sampling, image I/O.

Images are float arrays in ``[0, 1]``. Training images and held-out (test) images are disjoint whole images,
so reported numbers are on images the decoder never saw.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from fpntools.errors import UserInputError

__all__ = [
    "TRAIN_IMAGES",
    "TEST_IMAGES",
    "VALIDATION_IMAGES",
    "validation_crops",
    "load_image",
    "center_crop",
    "PatchSampler",
    "read_image",
    "read_mask",
    "write_image",
    "NATURAL_ROOT",
    "NATURAL_SETS",
    "VALIDATION_COUNT",
    "natural_root",
    "load_natural_set",
    "load_training_images",
    "split_train_validation",
]

TRAIN_IMAGES: tuple[str, ...] = ("moon", "text", "brick", "grass", "gravel", "page", "clock", "astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "cell")
"""Images whose patches train the decoder (colour ones are converted to luminance)."""
TEST_IMAGES: tuple[str, ...] = ("camera", "coins")
"""Held-out images (never seen in training) used by the benchmark."""
VALIDATION_IMAGES: tuple[str, ...] = ("stereo_motorcycle", "microaneurysms")
"""Images seen neither in training nor by the benchmark: they choose prior weights, TV weights and learning
rates (:func:`validation_crops`). Tuning on training images would favour the encoder, which has seen them."""


NATURAL_ROOT = Path(__file__).resolve().parents[3] / "shared" / "data" / "natural-images"
"""Default folder of the natural-image sets (``../shared/data/natural-images`` next to the repository);
``FPNTOOLS_NATURAL_IMAGES`` overrides it."""
NATURAL_SETS: tuple[str, ...] = ("train400", "Set12", "BSD68")
"""The standard grayscale sets: ``train400`` trains (its last :data:`VALIDATION_COUNT` images validate),
``Set12`` and ``BSD68`` only test."""
VALIDATION_COUNT = 20
"""Images at the end of ``train400`` (sorted names ``test_381`` ... ``test_400``) held out of training: they
choose prior weights, TV weights, learning rates and the training run's best epoch (never the test sets)."""


def natural_root(root: str | os.PathLike | None = None) -> Path:
    """The folder holding ``train400/``, ``Set12/`` and ``BSD68/`` (``root``, else ``FPNTOOLS_NATURAL_IMAGES``,
    else :data:`NATURAL_ROOT`)."""
    return Path(root or os.environ.get("FPNTOOLS_NATURAL_IMAGES") or NATURAL_ROOT)


def load_natural_set(name: str, root: str | os.PathLike | None = None, limit: int | None = None
                     ) -> list[tuple[str, np.ndarray]]:
    """``(file name, image)`` pairs of a standard set (sorted by name), float64 ``(H, W)`` in ``[0, 1]``;
    ``limit`` keeps the first ones. A missing folder is a :class:`UserInputError` naming it."""
    if name not in NATURAL_SETS:
        raise UserInputError(f"unknown image set {name!r}; expected one of {', '.join(NATURAL_SETS)}")
    folder = natural_root(root) / name
    files = sorted(folder.glob("*.png")) if folder.is_dir() else []
    if not files:
        raise UserInputError(f"image set {name} not found: no PNG files in {folder} (pass --data-root or set "
                             "FPNTOOLS_NATURAL_IMAGES)")
    import imageio.v3 as iio

    out = []
    for f in files[:limit]:
        arr = np.asarray(iio.imread(f))
        if arr.ndim == 3:  # stored as RGB(A) by some copies: luminance
            arr = arr[..., :3].astype(np.float64) @ np.array([0.2125, 0.7154, 0.0721]) if arr.shape[2] >= 3 else arr[..., 0]
        out.append((f.name, _to_unit(np.asarray(arr), f, "image")))
    return out


def load_training_images(data: str, root: str | os.PathLike | None = None) -> list[np.ndarray]:
    """All images of a training source: ``"scikit"`` (:data:`TRAIN_IMAGES`), ``"train400"`` (the standard set,
    :func:`load_natural_set`) or a ``.npy`` file with a ``(N, H, W)`` uint8 / float ``[0, 1]`` stack (e.g. train400
    packed for a machine without the data folder). The validation split is :func:`split_train_validation`."""
    if data == "scikit":
        return [load_image(n) for n in TRAIN_IMAGES]
    if data == "train400":
        return [img for _, img in load_natural_set("train400", root)]
    p = Path(data)
    if p.suffix != ".npy" or not p.is_file():
        raise UserInputError(f"training data {data!r} is neither 'scikit', 'train400' nor an existing .npy file")
    arr = np.load(p, allow_pickle=False)
    if arr.ndim != 3 or min(arr.shape[1:]) < 32:
        raise UserInputError(f"training data {p} has shape {arr.shape}; expected (N, H, W) with sides of at least 32")
    return [_to_unit(a, p, "training image") for a in arr]


def split_train_validation(images: list[np.ndarray], data: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``(training, validation)`` images: for the natural sets (``data`` not ``"scikit"``) the last
    :data:`VALIDATION_COUNT` images validate; the scikit-image recipe trains on all of :data:`TRAIN_IMAGES` (its
    validation pictures are :data:`VALIDATION_IMAGES`) and returns no validation images here."""
    if data == "scikit":
        return images, []
    if len(images) <= VALIDATION_COUNT:
        raise UserInputError(f"training data has {len(images)} images; more than {VALIDATION_COUNT} are needed "
                             "(the last ones validate)")
    return images[:-VALIDATION_COUNT], images[-VALIDATION_COUNT:]


def load_image(name: str) -> np.ndarray:
    """A bundled scikit-image picture as a float64 ``(H, W)`` array in ``[0, 1]`` (colour -> luminance)."""
    import skimage.data
    from skimage.color import rgb2gray, rgba2rgb
    from skimage.util import img_as_float

    fn = getattr(skimage.data, name, None)
    if fn is None:
        raise UserInputError(f"unknown scikit-image picture {name!r}")
    img = fn()
    if isinstance(img, tuple):  # stereo pair (left, right, disparity): the left view
        img = img[0]
    if img.ndim == 3:
        if img.shape[2] == 4:
            img = rgba2rgb(img)
        img = rgb2gray(img)
    return np.clip(img_as_float(img), 0.0, 1.0).astype(np.float64)


def center_crop(img: np.ndarray, size: int) -> np.ndarray:
    """The central ``size x size`` crop."""
    h, w = img.shape
    i, j = (h - size) // 2, (w - size) // 2
    return img[i : i + size, j : j + size]


def validation_crops(size: int = 96) -> list[tuple[str, np.ndarray]]:
    """The tuning crops: six ``size x size`` tiles of the motorcycle photo (left view; a 2 x 3 grid around its
    centre) and the centre of microaneurysms when it is large enough."""
    out = []
    moto = load_image("stereo_motorcycle")
    h, w = moto.shape
    for r in range(2):
        for c in range(3):
            i, j = h // 2 - size + r * size, w // 2 - (3 * size) // 2 + c * size
            out.append((f"motorcycle[{r},{c}]", moto[i : i + size, j : j + size]))
    micro = load_image("microaneurysms")
    if min(micro.shape) >= size:
        out.append(("microaneurysms", center_crop(micro, size)))
    return out


@dataclass
class PatchSampler:
    """Random ``size x size`` patches (with flips and 90-degree rotations) from a list of images."""

    images: list[np.ndarray]
    size: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        self._rng = np.random.default_rng(self.seed)

    def sample(self, n: int, rng: np.random.Generator | None = None) -> Tensor:
        """``(n, 1, size, size)`` float32 patches drawn from ``rng`` (default: the sampler's own stream)."""
        rng = self._rng if rng is None else rng
        out = np.empty((n, self.size, self.size), dtype=np.float32)
        for k in range(n):
            img = self.images[rng.integers(len(self.images))]
            i = rng.integers(img.shape[0] - self.size + 1)
            j = rng.integers(img.shape[1] - self.size + 1)
            p = img[i : i + self.size, j : j + self.size]
            p = np.rot90(p, rng.integers(4))
            if rng.integers(2):
                p = p[:, ::-1]
            out[k] = p
        return torch.from_numpy(out)[:, None]


# ----------------------------------------------------------------------------------------------------------
# user files


def _read_raw(path: str | os.PathLike, what: str) -> np.ndarray:
    p = Path(path)
    if not p.is_file():
        raise UserInputError(f"{what} file not found: {p}")
    try:
        from skimage import io

        arr = io.imread(str(p))
    except Exception:  # imageio raises many unrelated types for unreadable files
        raise UserInputError(f"cannot read {what} {p}: not a readable image file") from None
    arr = np.asarray(arr)
    if arr.dtype == object or arr.size == 0:
        raise UserInputError(f"cannot read {what} {p}: empty or not an image")
    return arr


def _check_gray(arr: np.ndarray, path: str | os.PathLike, what: str) -> np.ndarray:
    if arr.ndim == 3 and arr.shape[2] in (1,):
        arr = arr[..., 0]
    if arr.ndim != 2:
        shape = "x".join(map(str, arr.shape))
        raise UserInputError(
            f"{what} {path} has shape {shape}; expected a single-channel (grayscale) 2-D image"
        )
    return arr


def _to_unit(arr: np.ndarray, path: str | os.PathLike, what: str) -> np.ndarray:
    if arr.dtype == bool:
        out = arr.astype(np.float64)
    elif np.issubdtype(arr.dtype, np.integer):
        out = arr.astype(np.float64) / float(np.iinfo(arr.dtype).max)
    elif np.issubdtype(arr.dtype, np.floating):
        out = arr.astype(np.float64)
        if not np.isfinite(out).all():
            raise UserInputError(f"{what} {path} contains NaN or infinite pixel values")
        if out.min() < -1e-6 or out.max() > 1 + 1e-6:
            raise UserInputError(
                f"{what} {path} has float pixel values in [{out.min():.3g}, {out.max():.3g}]; expected [0, 1]"
            )
    else:
        raise UserInputError(f"{what} {path} has unsupported pixel type {arr.dtype}")
    return np.clip(out, 0.0, 1.0)


def read_image(path: str | os.PathLike, *, multiple: int = 4, min_size: int = 16, max_size: int = 1024,
               max_pixels: int | None = None, size_hint: str = "", colour: bool = False) -> np.ndarray:
    """Read an image as float64 ``(H, W)`` (or ``(H, W, C)`` with ``colour``) in ``[0, 1]``; clear
    :class:`UserInputError` otherwise.

    Accepted: 8/16-bit integer or float ([0, 1], finite) files (PNG, TIFF, ...), single-channel, or with
    ``colour`` also gray + alpha, RGB and RGBA (``C`` = 2, 3, 4); side lengths between ``min_size`` and
    ``max_size`` that are multiples of ``multiple`` (1: any). ``max_pixels`` bounds ``H * W`` (the cost of a
    restoration grows with it); ``size_hint`` is appended to the message for an image above ``max_size`` or
    ``max_pixels`` (why the limit, what to do).
    """
    raw = _read_raw(path, "image")
    if colour and raw.ndim == 3 and raw.shape[2] in (2, 3, 4):
        arr = raw
    elif colour and raw.ndim == 3 and raw.shape[2] != 1:
        raise UserInputError(f"image {path} has {raw.shape[2]} channels; expected grayscale, gray + alpha, RGB or "
                             "RGBA (1-4 channels)")
    else:
        arr = _check_gray(raw, path, "image")
    h, w = arr.shape[:2]
    if h < min_size or w < min_size or h > max_size or w > max_size:
        hint = f" ({size_hint})" if size_hint and max(h, w) > max_size else ""
        raise UserInputError(f"image {path} is {h}x{w}; sides must lie between {min_size} and {max_size} pixels{hint}")
    if max_pixels is not None and h * w > max_pixels:
        hint = f" ({size_hint})" if size_hint else ""
        raise UserInputError(f"image {path} is {h}x{w} = {h * w:,} pixels; at most {max_pixels:,} are accepted{hint}")
    if multiple > 1 and (h % multiple or w % multiple):
        raise UserInputError(f"image {path} is {h}x{w}; both sides must be multiples of {multiple}")
    return _to_unit(arr, path, "image")


def read_mask(path: str | os.PathLike, shape: tuple[int, int]) -> np.ndarray:
    """Read a mask (nonzero = known pixel) of the given shape as a bool array."""
    arr = _check_gray(_read_raw(path, "mask"), path, "mask")
    if arr.shape != tuple(shape):
        raise UserInputError(f"mask {path} is {arr.shape[0]}x{arr.shape[1]} but the image is {shape[0]}x{shape[1]}")
    un = _to_unit(arr, path, "mask")
    known = un > 0.5
    if not known.any():
        raise UserInputError(f"mask {path} marks no known pixel (all zero)")
    return known


def write_image(path: str | os.PathLike, img: np.ndarray) -> None:
    """Write ``img`` ``(H, W)`` or ``(H, W, C)`` in ``[0, 1]`` as an 8-bit PNG atomically (no partial file on
    failure)."""
    from fpntools.training.checkpoint import atomic_write_bytes

    p = Path(path)
    if p.suffix.lower() != ".png":
        raise UserInputError(f"output {p} must end in .png")
    if not p.parent.exists():
        raise UserInputError(f"output directory {p.parent} does not exist")
    data = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
    import imageio.v3 as iio

    atomic_write_bytes(p, iio.imwrite("<bytes>", data, extension=".png"))
