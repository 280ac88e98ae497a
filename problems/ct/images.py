"""Training, validation and test image distributions for CT (issue 15): natural-image crops, rich CT-like
phantoms, a distinct CT-like validation model, Shepp-Logan variants and their mixture.

Every generator returns ``(n, size, size)`` float32 arrays with values in ``[0, 1]`` and is deterministic
given its seed or ``numpy.random.Generator`` (an ``int`` is turned into ``numpy.random.default_rng(int)``).
Pure numpy (plus PIL for resampling and ``scipy.ndimage`` for smoothing); no torch.

Which set is used for what (issue 15: "do not tune on test images"):

===========================  =====================================================================
training                      :func:`sample_mixture`: :func:`natural_crops` of ``train400``,
                              :func:`rich_phantoms`, random ellipses (:mod:`problems.ct.phantoms`)
validation                    :func:`bsd68_crops` ``"validation"`` (first 34 BSD68 files),
                              :func:`ct_like_validation` (another anatomy model), :func:`shepp_logan_variants`
test                          :func:`bsd68_crops` ``"test"`` (the other 34 files), the standard Shepp-Logan,
                              held-out phantoms (other seeds)
===========================  =====================================================================

Geometry of the phantoms: pixel centres at ``(j + 1/2) - size/2`` (pixel units, origin at the image centre);
every object lies in the inscribed disc of radius ``0.95 size/2`` so each ray through it is measured.
Edges are partial-volume (anti-aliased): a shape with implicit function ``f`` (``f <= 1`` inside) covers a
pixel by ``clip(1/2 - d, 0, 1)`` with the first-order signed distance ``d = (f - 1) / |grad f|``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fpntools.errors import UserInputError

__all__ = [
    "load_image_set",
    "natural_images_root",
    "natural_crops",
    "bsd68_split",
    "bsd68_crops",
    "BSD68_VALIDATION_COUNT",
    "rich_phantoms",
    "ct_like_validation",
    "shepp_logan_variants",
    "MixtureConfig",
    "sample_mixture",
]

#: BSD68 files (sorted by name) ``[0, 34)`` are the validation images, ``[34, 68)`` the test images.
BSD68_VALIDATION_COUNT: int = 34
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".pgm")


def _as_rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


def _check_n_size(n: int, size: int) -> None:
    if int(n) != n or n < 0:
        raise UserInputError(f"the number of images must be an integer >= 0, got {n}")
    if int(size) != size or size < 8:
        raise UserInputError(f"the image size must be an integer >= 8, got {size}")


# --------------------------------------------------------------------------------------------- image files
def natural_images_root() -> Path | None:
    """The folder of the natural-image sets (``train400/``, ``BSD68/``, ``Set12/``).

    ``$FPNTOOLS_NATURAL_IMAGES`` when set (a one-line :class:`UserInputError` if it is not a folder), else
    ``<repository>/../shared/data/natural-images`` when that folder exists, else ``None``.
    """
    env = os.environ.get("FPNTOOLS_NATURAL_IMAGES")
    if env:
        p = Path(env).expanduser()
        if not p.is_dir():
            raise UserInputError(f"FPNTOOLS_NATURAL_IMAGES={env} is not a folder")
        return p
    p = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "natural-images"
    return p if p.is_dir() else None


def load_image_set(source: str | os.PathLike) -> np.ndarray | list[np.ndarray]:
    """Grayscale images of a folder or a ``.npy`` file, uint8.

    * a folder: every image file in it (``.png``, ``.jpg``, ...; not recursive), sorted by name, converted to
      grayscale (``L``: ``0.299 R + 0.587 G + 0.114 B``). One ``(n, h, w)`` uint8 array when all images
      share one size, else a **list** of ``(h_i, w_i)`` arrays in the same order (BSD68: 481 x 321 and
      321 x 481 images, so a list);
    * a ``.npy`` file: a uint8 array ``(n, h, w)`` (or one image ``(h, w)``, returned as ``(1, h, w)``).

    Raises a one-line :class:`UserInputError` when the source is missing, empty or unreadable.
    """
    from PIL import Image, UnidentifiedImageError

    p = Path(source).expanduser()
    if p.is_file():
        if p.suffix.lower() != ".npy":
            raise UserInputError(f"image set {p}: expected a folder of images or a .npy file")
        try:
            arr = np.load(p, allow_pickle=False)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
            raise UserInputError(f"cannot read image set {p}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
        if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or arr.size == 0:
            raise UserInputError(
                f"image set {p}: expected a non-empty uint8 array (n, h, w), got {arr.dtype} of shape {arr.shape}"
            )
        return arr[None] if arr.ndim == 2 else arr
    if not p.is_dir():
        raise UserInputError(f"image set not found: {p}")
    files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in _IMAGE_SUFFIXES)
    if not files:
        raise UserInputError(f"image folder {p} contains no images ({', '.join(_IMAGE_SUFFIXES)})")
    images: list[np.ndarray] = []
    for f in files:
        try:
            with Image.open(f) as im:
                images.append(np.asarray(im.convert("L"), dtype=np.uint8).copy())
        except (UnidentifiedImageError, OSError) as exc:
            raise UserInputError(f"cannot read image {f}: {str(exc).splitlines()[0]}") from None
    if all(im.shape == images[0].shape for im in images):
        return np.stack(images)
    return images


def _image_list(images: Any) -> list[np.ndarray]:
    if isinstance(images, np.ndarray):
        if images.ndim == 2:
            images = images[None]
        if images.ndim != 3:
            raise UserInputError(f"images must be (n, h, w) or a list of (h, w) arrays, got shape {images.shape}")
        seq = list(images)
    else:
        seq = [np.asarray(im) for im in images]
    if not seq:
        raise UserInputError("the image set is empty")
    for im in seq:
        if im.ndim != 2 or min(im.shape) < 2:
            raise UserInputError(f"every image must be 2-D (h, w) with h, w >= 2, got shape {im.shape}")
    return seq


def _to_unit_float(im: np.ndarray) -> np.ndarray:
    """uint8 -> ``[0, 1]`` float32; float arrays are taken as they are."""
    if im.dtype == np.uint8:
        return im.astype(np.float32) * np.float32(1.0 / 255.0)
    return np.asarray(im, dtype=np.float32)


def _resample(im: np.ndarray, box: tuple[float, float, float, float], size: int) -> np.ndarray:
    """The square ``box = (x0, y0, x1, y1)`` (pixel edges, may be fractional) of ``im`` resampled to
    ``(size, size)``: PIL's bilinear filter with its support widened by the reduction factor (area-like
    anti-aliasing when shrinking, bilinear interpolation when enlarging)."""
    from PIL import Image

    pil = Image.fromarray(np.ascontiguousarray(im, dtype=np.float32), mode="F")
    out = pil.resize((size, size), resample=Image.BILINEAR, box=box)
    return np.asarray(out, dtype=np.float32)


# --------------------------------------------------------------------------------------------- natural images
def _window(crop: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if hi - lo < 1e-6:
        return np.zeros_like(crop)
    return np.clip((crop - lo) / (hi - lo), 0.0, 1.0)


def natural_crops(
    images: np.ndarray | Sequence[np.ndarray],
    n: int,
    size: int = 128,
    rng: np.random.Generator | int | None = None,
    scale: tuple[float, float] = (0.5, 1.0),
    window: bool = True,
    gamma_prob: float = 0.3,
) -> np.ndarray:
    """``n`` random training crops ``(n, size, size)`` float32 in ``[0, 1]`` from natural grayscale images.

    Per crop (all draws independent): an image uniformly at random; a square window of side
    ``s = f * min(h, w)``, ``f ~ U[scale]``, at a uniform position inside the image; resampled to
    ``size x size`` (:func:`_resample`: area-like when shrinking); one of the 8 flips / 90-degree rotations
    uniformly; then, with ``window``, a random intensity window: ``lo`` the ``p``-th percentile of the crop,
    ``p ~ U[0, 15]``, ``hi`` the ``q``-th, ``q ~ U[85, 100]``, ``x -> clip((x - lo) / (hi - lo), 0, 1)``
    (a flat crop maps to 0), and with probability ``gamma_prob`` a gamma ``x -> x^g``,
    ``log g ~ U[log 0.6, log 1.6]``. Without ``window`` the values stay ``pixel / 255``.

    ``images``: a uint8 ``(n, h, w)`` array or a list of ``(h, w)`` arrays (uint8, or floats in [0, 1]), e.g.
    from :func:`load_image_set`. Models: the textures, edges and smooth gradients of real scenes, at many
    scales and contrasts, which random ellipses lack.
    """
    _check_n_size(n, size)
    lo_s, hi_s = float(scale[0]), float(scale[1])
    if not 0 < lo_s <= hi_s <= 1:
        raise UserInputError(f"crop scale must satisfy 0 < min <= max <= 1, got {scale}")
    seq = _image_list(images)
    rng = _as_rng(rng)
    out = np.empty((n, size, size), dtype=np.float32)
    for k in range(n):
        im = seq[int(rng.integers(len(seq)))]
        h, w = im.shape
        side = rng.uniform(lo_s, hi_s) * min(h, w)
        x0 = rng.uniform(0.0, w - side)
        y0 = rng.uniform(0.0, h - side)
        crop = _resample(_to_unit_float(im), (x0, y0, x0 + side, y0 + side), size)
        crop = np.rot90(crop, int(rng.integers(4)))
        if rng.integers(2):
            crop = crop[:, ::-1]
        if window:
            p, q = rng.uniform(0.0, 15.0), rng.uniform(85.0, 100.0)
            lo, hi = np.percentile(crop, [p, q])
            crop = _window(crop, float(lo), float(hi))
            if rng.uniform() < gamma_prob:
                crop = crop ** math.exp(rng.uniform(math.log(0.6), math.log(1.6)))
        out[k] = np.clip(crop, 0.0, 1.0)
    return out


def bsd68_split(images_or_root: Any = None, part: str = "validation") -> list[np.ndarray]:
    """The BSD68 images of ``part``: ``"validation"`` = the first :data:`BSD68_VALIDATION_COUNT` (34) files by
    sorted name, ``"test"`` = the other 34. Disjoint by construction.

    ``images_or_root``: the ``BSD68`` folder, the natural-images root holding ``BSD68/``, ``None`` for
    :func:`natural_images_root`, or the 68 images themselves (in sorted-name order, as
    :func:`load_image_set` returns them). Returns a list of uint8 ``(h, w)`` arrays.
    """
    if part in ("val", "valid"):
        part = "validation"
    if part not in ("validation", "test"):
        raise UserInputError(f"unknown BSD68 part {part!r}; use 'validation' or 'test'")
    if images_or_root is None:
        images_or_root = natural_images_root()
        if images_or_root is None:
            raise UserInputError(
                "BSD68 not found: set FPNTOOLS_NATURAL_IMAGES to the natural-images folder (holding BSD68/)"
            )
    if isinstance(images_or_root, (str, os.PathLike)):
        root = Path(images_or_root).expanduser()
        if (root / "BSD68").is_dir():
            root = root / "BSD68"
        images = _image_list(load_image_set(root))
    else:
        images = _image_list(images_or_root)
    if len(images) != 2 * BSD68_VALIDATION_COUNT:
        raise UserInputError(f"BSD68 must hold {2 * BSD68_VALIDATION_COUNT} images, got {len(images)}")
    k = BSD68_VALIDATION_COUNT
    return images[:k] if part == "validation" else images[k:]


def bsd68_crops(
    part: str,
    n: int,
    size: int = 128,
    seed: int = 0,
    root: Any = None,
    scale: float = 0.5,
) -> np.ndarray:
    """Deterministic BSD68 crops for validation / test, ``(n, size, size)`` float32 in ``[0, 1]``.

    Crop ``k`` comes from image ``k mod 34`` of :func:`bsd68_split` ``(root, part)`` (so ``n <= 34`` gives one
    crop per image, more cycle through the images): a square of side ``scale * min(h, w)`` whose centre is
    the image centre shifted by ``U[-1, 1] * 0.25 * (free room)`` per axis, drawn from
    ``SeedSequence([seed, k])``; resampled to ``size`` like :func:`natural_crops`; then the fixed window
    ``min / max of the crop -> [0, 1]``. No flips, no gamma. The default ``scale = 0.5`` (a 160-pixel
    square of a 321-pixel side) matches the detail density of the ``train400`` crops.
    """
    _check_n_size(n, size)
    if not 0 < scale <= 1:
        raise UserInputError(f"crop scale must be in (0, 1], got {scale}")
    images = bsd68_split(root, part)
    out = np.empty((n, size, size), dtype=np.float32)
    for k in range(n):
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), k]))
        im = _to_unit_float(images[k % len(images)])
        h, w = im.shape
        side = scale * min(h, w)
        x0 = (w - side) / 2 * (1.0 + 0.25 * rng.uniform(-1, 1))
        y0 = (h - side) / 2 * (1.0 + 0.25 * rng.uniform(-1, 1))
        crop = _resample(im, (x0, y0, x0 + side, y0 + side), size)
        out[k] = _window(crop, float(crop.min()), float(crop.max()))
    return out


# --------------------------------------------------------------------------------------------- drawing
class _Canvas:
    """Pixel-unit coordinates of a ``size x size`` image (origin at the centre, ``y`` up) and painting of
    anti-aliased shapes restricted to their bounding boxes."""

    def __init__(self, size: int) -> None:
        self.size = size
        c = (np.arange(size, dtype=np.float64) + 0.5) - size / 2.0
        self.xs = c  # column coordinates
        self.ys = -c  # row coordinates (row 0 at the top)
        self.half = size / 2.0

    def box(self, cx: float, cy: float, r: float) -> tuple[slice, slice, np.ndarray, np.ndarray] | None:
        """Rows / columns whose centres are within ``r + 1`` of ``(cx, cy)`` and their coordinates relative to
        ``(cx, cy)`` as a ``(1, w)`` row and a ``(h, 1)`` column."""
        h = self.half
        c0 = max(int(math.floor(cx - r - 1 + h)), 0)
        c1 = min(int(math.ceil(cx + r + 1 + h)), self.size)
        r0 = max(int(math.floor(h - cy - r - 1)), 0)
        r1 = min(int(math.ceil(h - cy + r + 1)), self.size)
        if c0 >= c1 or r0 >= r1:
            return None
        xx = (self.xs[c0:c1] - cx)[None, :]  # (1, w) and (h, 1): broadcast to the box
        yy = (self.ys[r0:r1] - cy)[:, None]
        return slice(r0, r1), slice(c0, c1), xx, yy


def _coverage_from_implicit(f: np.ndarray, gnorm: np.ndarray) -> np.ndarray:
    d = (f - 1.0) / np.maximum(gnorm, 1e-9)
    return np.clip(0.5 - d, 0.0, 1.0)


def _superellipse(cv: _Canvas, cx: float, cy: float, a: float, b: float, phi: float, p: float = 2.0
                  ) -> tuple[slice, slice, np.ndarray] | None:
    """Coverage of ``|u/a|^p + |v/b|^p <= 1`` (``u, v`` the coordinates rotated by ``phi``); ``p = 2``: an
    ellipse. Returns ``(rows, cols, coverage)`` on the bounding box or ``None`` if off the image."""
    if a < 0.5 or b < 0.5:
        return None
    r = max(a, b) * (2 ** (0.5 - 1.0 / p) if p > 2 else 1.0)
    bx = cv.box(cx, cy, r)
    if bx is None:
        return None
    rs, cs, xx, yy = bx
    c, s = math.cos(phi), math.sin(phi)
    u = np.abs(xx * c + yy * s) / a
    v = np.abs(-xx * s + yy * c) / b
    if p == 2.0:
        f = u * u + v * v
        g = 2.0 * np.sqrt((u / a) ** 2 + (v / b) ** 2)
    else:
        f = u**p + v**p
        g = p * np.sqrt((u ** (p - 1) / a) ** 2 + (v ** (p - 1) / b) ** 2)
    return rs, cs, _coverage_from_implicit(f, g)


def _blob(cv: _Canvas, rng: np.random.Generator, cx: float, cy: float, a: float, b: float, phi: float,
          wobble: float = 0.15) -> tuple[slice, slice, np.ndarray] | None:
    """An irregular blob: the ellipse ``(a, b, phi)`` whose normalised radius is modulated by
    ``1 + sum_{k=2..4} c_k cos(k theta + t_k)``, ``|c_k| <= wobble / k``."""
    if a < 0.5 or b < 0.5:
        return None
    ks = np.arange(2, 5)
    coef = rng.uniform(-wobble, wobble, 3) / ks
    ph = rng.uniform(0, 2 * np.pi, 3)
    r = max(a, b) * (1.0 + np.abs(coef).sum())
    bx = cv.box(cx, cy, r)
    if bx is None:
        return None
    rs, cs, xx, yy = bx
    c, s = math.cos(phi), math.sin(phi)
    u = (xx * c + yy * s) / a
    v = (-xx * s + yy * c) / b
    rho = np.sqrt(u * u + v * v)
    th = np.arctan2(v, u)
    rb = 1.0 + sum(coef[i] * np.cos(ks[i] * th + ph[i]) for i in range(3))
    cov = np.clip(0.5 - (rho - rb) * math.sqrt(a * b), 0.0, 1.0)
    return rs, cs, cov


def _polyline(cv: _Canvas, pts: np.ndarray, width: float) -> tuple[slice, slice, np.ndarray] | None:
    """Coverage of a polyline ``pts (m, 2)`` of the given width: ``clip(width/2 + 1/2 - dist, 0, 1)``."""
    lo, hi = pts.min(0), pts.max(0)
    cx, cy = (lo + hi) / 2
    r = float(np.max(hi - lo)) / 2 + width
    bx = cv.box(float(cx), float(cy), r)
    if bx is None:
        return None
    rs, cs, xx, yy = bx
    px, py = xx + cx, yy + cy
    dmin = np.full((yy.shape[0], xx.shape[1]), np.inf)
    for (x0, y0), (x1, y1) in zip(pts[:-1], pts[1:]):
        dx, dy = x1 - x0, y1 - y0
        ll = dx * dx + dy * dy
        t = np.clip(((px - x0) * dx + (py - y0) * dy) / max(ll, 1e-12), 0.0, 1.0)
        d = np.hypot(px - x0 - t * dx, py - y0 - t * dy)
        np.minimum(dmin, d, out=dmin)
    return rs, cs, np.clip(width / 2 + 0.5 - dmin, 0.0, 1.0)


def _paint(img: np.ndarray, shape: tuple[slice, slice, np.ndarray] | None, value: float | np.ndarray,
           mode: str = "set") -> None:
    """``set``: ``img <- img + cov (value - img)`` (replace, partial volume at edges); ``add``:
    ``img <- img + cov value``. ``value`` may be a full-image array (sampled on the box)."""
    if shape is None:
        return
    rs, cs, cov = shape
    v = value[rs, cs] if isinstance(value, np.ndarray) else value
    if mode == "set":
        img[rs, cs] += cov * (v - img[rs, cs])
    else:
        img[rs, cs] += cov * v


def _full(cv: _Canvas, shape: tuple[slice, slice, np.ndarray] | None) -> np.ndarray:
    """The coverage of ``shape`` as a full image."""
    m = np.zeros((cv.size, cv.size))
    if shape is not None:
        rs, cs, cov = shape
        m[rs, cs] = cov
    return m


def _smooth_field(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth random field with unit standard deviation: ``cells x cells`` normal values, bicubic-resampled to
    ``size x size`` (correlation length about ``size / cells`` pixels)."""
    from PIL import Image

    z = rng.standard_normal((cells + 2, cells + 2)).astype(np.float32)
    pil = Image.fromarray(z, mode="F").resize((size, size), Image.BICUBIC, box=(1, 1, cells + 1, cells + 1))
    f = np.asarray(pil, dtype=np.float64)
    return (f - f.mean()) / max(float(f.std()), 1e-9)


def _texture(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """Fine texture: white noise smoothed by a Gaussian of ``sigma`` pixels, unit standard deviation."""
    from scipy.ndimage import gaussian_filter

    f = gaussian_filter(rng.standard_normal((size, size)), sigma, mode="wrap")
    return (f - f.mean()) / max(float(f.std()), 1e-9)


def _point_in(rng: np.random.Generator, mask: np.ndarray, cv: _Canvas) -> tuple[float, float] | None:
    """A uniform random pixel centre where ``mask`` is true, jittered within the pixel."""
    idx = np.flatnonzero(mask)
    if idx.size == 0:
        return None
    k = int(idx[rng.integers(idx.size)])
    r, c = divmod(k, cv.size)
    return float(cv.xs[c] + rng.uniform(-0.5, 0.5)), float(cv.ys[r] + rng.uniform(-0.5, 0.5))


def _bezier(p0: np.ndarray, p1: np.ndarray, p2: np.ndarray, m: int = 10) -> np.ndarray:
    t = np.linspace(0, 1, m)[:, None]
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2


def _fit_radius(a: float, b: float, p: float, rmax: float) -> tuple[float, float]:
    """``(k, R)``: the factor ``k <= 1`` that shrinks the superellipse ``(a, b, p)`` into the disc of radius
    ``rmax`` and the largest radius ``R`` of the shrunk shape."""
    t = np.linspace(0, np.pi / 2, 64)
    ct, st = np.cos(t), np.sin(t)
    x = a * np.sign(ct) * np.abs(ct) ** (2 / p)
    y = b * np.sign(st) * np.abs(st) ** (2 / p)
    rad = float(np.max(np.hypot(x, y)))
    k = min(1.0, rmax / rad)
    return k, k * rad


# --------------------------------------------------------------------------------------------- rich phantoms
def _rich_body(rng: np.random.Generator, cv: _Canvas, info: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Trunk-like slice: body outline, bone-like rim, soft tissue, organs, lungs, spine. Returns
    ``(image, interior mask)``."""
    size, h = cv.size, cv.half
    img = np.zeros((size, size))
    a = rng.uniform(0.6, 0.92) * h
    b = a * rng.uniform(0.6, 1.0)
    p = rng.uniform(2.0, 3.2)
    phi = rng.uniform(0, np.pi)
    k, rad = _fit_radius(a, b, p, 0.95 * h - 0.5)
    a, b = a * k, b * k
    cx, cy = rng.uniform(-1, 1, 2) * (0.95 * h - 0.5 - rad) / math.sqrt(2)
    body = _superellipse(cv, cx, cy, a, b, phi, p)
    sc = size / 128.0  # thicknesses below are for 128 x 128 images
    t = max(1.0, rng.uniform(1.0, 6.0) * sc)  # rim thickness (pixels)
    inner = _superellipse(cv, cx, cy, a - t, b - t, phi, p)
    tissue = rng.uniform(0.2, 0.45)
    rim = rng.uniform(0.7, 1.0)
    _paint(img, body, rim)
    body_mask = _full(cv, body)
    if rng.uniform() < 0.4:  # broken rim (rib-like segments): tissue between the bone segments
        th = np.arctan2(*np.meshgrid(cv.ys - cy, cv.xs - cx, indexing="ij"))
        gaps = np.cos(rng.integers(8, 20) * th + rng.uniform(0, 2 * np.pi)) < rng.uniform(-0.3, 0.4)
        img = np.where(gaps & (body_mask > 0), img + body_mask * (tissue - img), img)
    if rng.uniform() < 0.5:  # fat layer under the rim
        tf = max(1.0, rng.uniform(2.0, 8.0) * sc)
        fat = _superellipse(cv, cx, cy, a - t - tf, b - t - tf, phi, p)
        _paint(img, inner, rng.uniform(0.1, 0.2))
        inner2 = fat
    else:
        inner2 = inner
    field = tissue + rng.uniform(0.01, 0.05) * _smooth_field(rng, size, int(rng.integers(3, 7)))
    _paint(img, inner2, field)
    interior = _full(cv, inner2) > 0.99
    # lungs: a pair of dark regions, with vessels
    if rng.uniform() < 0.45:
        c, s = math.cos(phi), math.sin(phi)
        for side in (-1, 1):
            la, lb = rng.uniform(0.25, 0.42) * a, rng.uniform(0.3, 0.6) * b
            off = side * rng.uniform(0.35, 0.5) * a
            lx, ly = cx + off * c, cy + off * s + rng.uniform(-0.1, 0.1) * b
            lung = _blob(cv, rng, lx, ly, la, lb, phi + rng.uniform(-0.3, 0.3), 0.2)
            _paint(img, lung, rng.uniform(0.0, 0.1))
            m = _full(cv, lung) > 0.99
            for _ in range(int(rng.integers(3, 12))):
                pt = _point_in(rng, m, cv)
                if pt is not None:
                    _paint(img, _superellipse(cv, pt[0], pt[1], rng.uniform(0.5, 1.8), rng.uniform(0.5, 1.8), 0.0),
                           rng.uniform(0.15, 0.4))
            interior &= ~(_full(cv, lung) > 0.01)
    # organs
    for _ in range(int(rng.integers(2, 7))):
        pt = _point_in(rng, interior, cv)
        if pt is None:
            break
        oa, ob = rng.uniform(0.06, 0.3) * a, rng.uniform(0.06, 0.3) * b
        val = float(np.clip(tissue + rng.choice([-1, 1]) * rng.uniform(0.03, 0.3), 0.05, 0.8))
        _paint(img, _blob(cv, rng, pt[0], pt[1], oa, ob, rng.uniform(0, np.pi), 0.25), val)
    # spine: bright vertebral body with a cortical rim and a posterior process
    if rng.uniform() < 0.7:
        c, s = math.cos(phi + np.pi / 2), math.sin(phi + np.pi / 2)
        dist = -(b - t) * rng.uniform(0.55, 0.75)
        vx, vy = cx + dist * c, cy + dist * s
        vr = rng.uniform(0.06, 0.1) * h
        _paint(img, _superellipse(cv, vx, vy, vr, vr * rng.uniform(0.8, 1.1), phi), rng.uniform(0.8, 1.0))
        _paint(img, _superellipse(cv, vx, vy, vr - rng.uniform(1, 2.5), vr * 0.8 - 1.5, phi), rng.uniform(0.5, 0.75))
        tip = np.array([vx, vy]) + np.array([c, s]) * (-vr * rng.uniform(1.4, 2.0))
        _paint(img, _polyline(cv, np.stack([np.array([vx, vy]) - np.array([c, s]) * vr, tip]),
                              rng.uniform(2, 4)), rng.uniform(0.7, 0.95))
    info["body"] = (cx, cy, a, b, phi, p)
    return img * body_mask, interior  # nothing outside the outline (the spine's process may reach it)


def _rich_head(rng: np.random.Generator, cv: _Canvas, info: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Head-like slice: round skull rim, brain with gray / white matter variation and ventricles."""
    size, h = cv.size, cv.half
    img = np.zeros((size, size))
    a = rng.uniform(0.65, 0.9) * h
    b = a * rng.uniform(0.78, 1.0)
    phi = rng.uniform(0, np.pi)
    cx, cy = rng.uniform(-1, 1, 2) * (0.95 * h - 0.5 - a) / math.sqrt(2)
    sc = size / 128.0
    skin = max(1.0, rng.uniform(1.0, 3.0) * sc)
    t = max(1.0, rng.uniform(2.0, 7.0) * sc)
    _paint(img, _superellipse(cv, cx, cy, a, b, phi), rng.uniform(0.25, 0.4))
    _paint(img, _superellipse(cv, cx, cy, a - skin, b - skin, phi), rng.uniform(0.75, 1.0))
    brain = _superellipse(cv, cx, cy, a - skin - t, b - skin - t, phi)
    gm = rng.uniform(0.3, 0.42)
    wm = gm + rng.uniform(-0.06, -0.02)
    g = _smooth_field(rng, size, int(rng.integers(6, 12)))
    field = np.where(g > rng.uniform(-0.3, 0.5), wm, gm) + rng.uniform(0.005, 0.02) * _smooth_field(rng, size, 4)
    from scipy.ndimage import gaussian_filter

    field = gaussian_filter(field, 0.8)
    _paint(img, brain, field)
    interior = _full(cv, brain) > 0.99
    c, s = math.cos(phi), math.sin(phi)
    csf = rng.uniform(0.05, 0.18)
    vb = rng.uniform(0.12, 0.25) * b
    for side in (-1, 1):  # lateral ventricles: two curved dark bands
        off = side * rng.uniform(0.06, 0.14) * a
        p0 = np.array([cx + off * c, cy + off * s]) - vb * np.array([-s, c])
        p2 = np.array([cx + off * c, cy + off * s]) + vb * np.array([-s, c])
        p1 = (p0 + p2) / 2 + side * rng.uniform(0.03, 0.1) * a * np.array([c, s])
        _paint(img, _polyline(cv, _bezier(p0, p1, p2), rng.uniform(2.0, 5.0)), csf)
    if rng.uniform() < 0.6:  # third ventricle / midline
        _paint(img, _superellipse(cv, cx, cy, rng.uniform(0.8, 2.0), rng.uniform(3, 8), phi), csf)
    info["head"] = (cx, cy, a, b, phi)
    return img, interior


@dataclass(frozen=True)
class RichPhantomConfig:
    """Knobs of :func:`rich_phantoms` (defaults = the training distribution)."""

    head_prob: float = 0.25
    inclusions: tuple[int, int] = (2, 8)
    inclusion_contrast: tuple[float, float] = (0.01, 0.05)
    inclusion_diameter: tuple[float, float] = (2.0, 15.0)
    vessels: tuple[int, int] = (1, 7)
    dots: tuple[int, int] = (2, 12)
    texture: tuple[float, float] = (0.01, 0.03)


def _rich_one(rng: np.random.Generator, size: int, cfg: RichPhantomConfig) -> tuple[np.ndarray, dict[str, Any]]:
    cv = _Canvas(size)
    info: dict[str, Any] = {"kind": "head" if rng.uniform() < cfg.head_prob else "body"}
    img, interior = (_rich_head if info["kind"] == "head" else _rich_body)(rng, cv, info)
    body = img > 0.02
    # low-contrast inclusions (added: local contrast = c exactly on a smooth background)
    # (centred at least radius + 3 px from any edge, an edge being a pixel whose gradient magnitude exceeds
    # 0.012 per pixel, which the smooth variation never reaches and an organ edge always does: a detection
    # task on a smooth background, as in low-contrast phantoms; where no such place exists, at the interior
    # point farthest from the edges)
    from scipy.ndimage import distance_transform_edt

    incl = []
    lo_d, hi_d = cfg.inclusion_diameter
    gy, gx = np.gradient(img)
    dist = np.where(interior, distance_transform_edt(np.hypot(gx, gy) < 0.012), 0.0)
    for _ in range(int(rng.integers(cfg.inclusions[0], cfg.inclusions[1] + 1))):
        r = rng.uniform(lo_d, hi_d) / 2
        where = dist > r + 3.0
        if not where.any():
            if dist.max() <= 0:
                break
            where = dist >= dist.max()
        pt = _point_in(rng, where, cv)
        if pt is None:
            break
        e = rng.uniform(0.75, 1.0)
        c = float(rng.choice([-1, 1]) * rng.uniform(*cfg.inclusion_contrast))
        _paint(img, _superellipse(cv, pt[0], pt[1], r, r * e, rng.uniform(0, np.pi)), c, mode="add")
        incl.append({"x": pt[0], "y": pt[1], "radius": r, "aspect": e, "contrast": c})
        np.minimum(dist, np.hypot((cv.xs - pt[0])[None, :], (cv.ys - pt[1])[:, None]) - r - 1.0, out=dist)  # the next inclusions keep clear of this one
    info["inclusions"] = incl
    # thin structures: vessels / ducts (1-2 px), bright or dark
    for _ in range(int(rng.integers(cfg.vessels[0], cfg.vessels[1] + 1))):
        p0 = _point_in(rng, interior, cv)
        if p0 is None:
            break
        ang, ln = rng.uniform(0, 2 * np.pi), rng.uniform(0.08, 0.35) * size
        p2 = np.array(p0) + ln * np.array([math.cos(ang), math.sin(ang)])
        p1 = (np.array(p0) + p2) / 2 + rng.normal(0, 0.15 * ln, 2)
        pts = _bezier(np.array(p0), p1, p2)
        rc = np.clip(np.round(cv.half - pts[:, 1] - 0.5).astype(int), 0, size - 1)
        cc = np.clip(np.round(pts[:, 0] + cv.half - 0.5).astype(int), 0, size - 1)
        inside = interior[rc, cc]
        stop = int(np.argmin(inside)) if not inside.all() else len(pts)
        if stop < 2:
            continue
        pts = pts[:stop]  # the part from the start up to where the curve leaves the interior
        val = float(np.clip(img[interior].mean() + rng.choice([-1, 1]) * rng.uniform(0.05, 0.3), 0.0, 1.0))
        _paint(img, _polyline(cv, pts, rng.uniform(1.0, 2.0)), val)
    # small dots (calcifications, small vessels in cross-section)
    for _ in range(int(rng.integers(cfg.dots[0], cfg.dots[1] + 1))):
        pt = _point_in(rng, interior, cv)
        if pt is None:
            break
        r = rng.uniform(0.5, 1.5)
        _paint(img, _superellipse(cv, pt[0], pt[1], r, r, 0.0), float(rng.choice([rng.uniform(0.6, 1.0), rng.uniform(0.0, 0.15)])))
    # mild texture inside the object
    amp = rng.uniform(*cfg.texture)
    if amp > 0:
        img += body * amp * _texture(rng, size, rng.uniform(0.7, 1.5))
    return np.clip(img, 0.0, 1.0).astype(np.float32), info


def rich_phantoms(
    n: int,
    size: int = 128,
    rng: np.random.Generator | int | None = None,
    config: RichPhantomConfig | None = None,
    return_info: bool = False,
) -> np.ndarray | tuple[np.ndarray, list[dict[str, Any]]]:
    """``n`` CT-like phantoms ``(n, size, size)`` float32 in ``[0, 1]``, covering what random ellipses lack.

    Per image, a **body** slice (probability ``1 - head_prob``): a superellipse outline (exponent 2-3.2, random
    size, aspect 0.6-1, rotation) with a bone-like rim (0.7-1.0, 1-6 px thick; in 40% broken into rib-like
    segments), an optional fat layer (0.1-0.2), soft tissue (0.2-0.45) with a smooth low-frequency variation
    (amplitude 1-5%), 2-6 organs (irregular blobs of other values), in 45% a pair of dark lungs (0-0.1) with
    vessel cross-sections, in 70% a spine (bright vertebral body with cortical rim and posterior process);
    or a **head** slice: skin, round skull rim (0.75-1.0), brain with gray / white matter regions, lateral and
    third ventricles (0.05-0.18). Then in both: thin vessels (quadratic Bezier curves, 1-2 px wide, brighter
    or darker than the tissue), small dots (radius 0.5-1.5 px, bright or dark), low-contrast inclusions
    (diameter 2-15 px, added contrast ``+-1..5%``) and mild texture (Gaussian-smoothed noise, amplitude 1-3%)
    inside the object. Partial-volume edges; everything in the disc of radius ``0.95 size/2``.

    ``return_info``: also a list with, per image, ``kind`` and ``inclusions`` (centre ``x, y`` in pixel units
    from the image centre with ``y`` up, ``radius``, ``aspect``, ``contrast``).
    """
    _check_n_size(n, size)
    cfg = config or RichPhantomConfig()
    rng = _as_rng(rng)
    out = np.empty((n, size, size), dtype=np.float32)
    infos = []
    for i in range(n):
        out[i], info = _rich_one(rng, size, cfg)
        infos.append(info)
    return (out, infos) if return_info else out


# --------------------------------------------------------------------------------------------- validation
# Hounsfield-unit tissue values of the validation model (windowed to [0, 1] afterwards)
_HU = {"air": -1000.0, "lung": -850.0, "fat": -100.0, "water": 0.0, "csf": 8.0, "white": 25.0, "gray": 40.0,
       "muscle": 45.0, "liver": 60.0, "kidney": 35.0, "blood": 45.0, "contrast": 180.0, "cancellous": 250.0,
       "cortical": 1000.0, "bowel_air": -900.0}
_WINDOWS = {  # (level, width)
    "soft": (40.0, 400.0), "abdomen": (60.0, 360.0), "brain": (40.0, 90.0), "bone": (400.0, 1800.0),
    "full": (0.0, 2000.0), "lung": (-500.0, 1600.0), "subdural": (60.0, 250.0)}


def _ct_like_one(rng: np.random.Generator, size: int) -> np.ndarray:
    """One slice of the validation anatomy model (values in HU), windowed to [0, 1]."""
    from scipy.ndimage import gaussian_filter

    cv = _Canvas(size)
    h = cv.half
    hu = np.full((size, size), _HU["air"])
    kind = rng.choice(["abdomen", "thorax", "head"], p=[0.4, 0.3, 0.3])
    noise_hu = rng.uniform(5.0, 20.0)
    sc = size / 128.0  # thicknesses in pixels are for 128 x 128 images
    if kind == "head":
        noise_hu = rng.uniform(1.0, 4.0)
        a = rng.uniform(0.7, 0.9) * h
        b = a * rng.uniform(0.8, 0.95)
        cx, cy = 0.0, rng.uniform(-0.05, 0.05) * h
        _paint(hu, _superellipse(cv, cx, cy, a, b, np.pi / 2), _HU["muscle"])
        t = max(1.5, rng.uniform(3.0, 6.0) * sc)
        sk = max(1.0, 2.0 * sc)  # skin
        _paint(hu, _superellipse(cv, cx, cy, a - sk, b - sk, np.pi / 2), _HU["cortical"])
        # diploe: cancellous band inside the skull
        _paint(hu, _superellipse(cv, cx, cy, a - sk - t * 0.3, b - sk - t * 0.3, np.pi / 2), _HU["cancellous"] + 300)
        _paint(hu, _superellipse(cv, cx, cy, a - sk - t * 0.7, b - sk - t * 0.7, np.pi / 2), _HU["cortical"])
        ia, ib = a - sk - t, b - sk - t
        _paint(hu, _superellipse(cv, cx, cy, ia, ib, np.pi / 2), _HU["csf"])
        # cortex folds: gray matter with white matter below a wiggly boundary
        g = gaussian_filter(rng.standard_normal((size, size)), size / 40)
        g = g / g.std()
        inner = _superellipse(cv, cx, cy, ia - 1.5 * sc, ib - 1.5 * sc, np.pi / 2)
        wmask = _full(cv, _superellipse(cv, cx, cy, ia * 0.8, ib * 0.8, np.pi / 2))
        tissue = np.where((g > -0.2) & (wmask > 0.5), _HU["white"], _HU["gray"])
        _paint(hu, inner, gaussian_filter(tissue, 0.7))
        # falx, ventricles (butterfly), optional lesion
        _paint(hu, _polyline(cv, np.array([[cx, cy + ib * 0.95], [cx, cy + ib * 0.2]]), 1.0), 80.0)
        vb = rng.uniform(0.15, 0.3) * ib
        for side in (-1, 1):
            x0 = cx + side * rng.uniform(0.05, 0.1) * ia
            pts = np.array([[x0, cy + vb], [x0 + side * 0.1 * ia, cy], [x0 + side * 0.05 * ia, cy - vb],
                            [x0 + side * 0.15 * ia, cy - 1.4 * vb]])
            _paint(hu, _polyline(cv, pts, rng.uniform(2.0, 4.5)), _HU["csf"])
        if rng.uniform() < 0.5:
            lx, ly = rng.uniform(-0.5, 0.5) * ia, rng.uniform(-0.5, 0.5) * ib
            lr = rng.uniform(2.0, 8.0)
            _paint(hu, _blob(cv, rng, cx + lx, cy + ly, lr, lr * rng.uniform(0.7, 1), 0.0), _HU["gray"] + rng.uniform(-15, 25))
        window = _WINDOWS[str(rng.choice(["brain", "subdural", "bone", "full"], p=[0.45, 0.25, 0.15, 0.15]))]
    else:
        a = rng.uniform(0.75, 0.93) * h
        b = a * rng.uniform(0.6, 0.8)
        cx, cy = 0.0, rng.uniform(-0.05, 0.05) * h
        _paint(hu, _superellipse(cv, cx, cy, a, b, 0.0, 2.4), _HU["fat"])
        fat = max(1.0, rng.uniform(2.0, 10.0) * sc)
        ma, mb = a - fat, b - fat
        _paint(hu, _superellipse(cv, cx, cy, ma, mb, 0.0, 2.4), _HU["muscle"])
        wall = max(1.0, rng.uniform(4.0, 8.0) * sc)
        ia, ib = ma - wall, mb - wall
        _paint(hu, _superellipse(cv, cx, cy, ia, ib, 0.0, 2.2), _HU["fat"] + rng.uniform(0, 60))
        # spine at the back (bottom): vertebral body, canal, processes, paraspinal muscles
        vr = rng.uniform(0.09, 0.12) * h
        vx, vy = cx, cy - ib + vr * 1.6
        for side in (-1, 1):
            _paint(hu, _blob(cv, rng, vx + side * vr * 1.6, vy - vr * 1.3, vr * 1.2, vr * 0.9, 0.0, 0.1), _HU["muscle"])
        _paint(hu, _superellipse(cv, vx, vy, vr, vr * 0.9, 0.0), _HU["cortical"])
        _paint(hu, _superellipse(cv, vx, vy, vr - 1.5, vr * 0.9 - 1.5, 0.0), _HU["cancellous"])
        _paint(hu, _superellipse(cv, vx, vy - vr * 1.35, vr * 0.45, vr * 0.4, 0.0), _HU["csf"])
        _paint(hu, _polyline(cv, np.array([[vx - vr * 0.7, vy - vr * 1.1], [vx, vy - vr * 2.0],
                                           [vx + vr * 0.7, vy - vr * 1.1]]), 2.0), _HU["cortical"] * 0.8)
        # aorta (contrast or not) in front of the spine
        ar = rng.uniform(0.035, 0.05) * h
        blood = _HU["contrast"] if rng.uniform() < 0.5 else _HU["blood"]
        _paint(hu, _superellipse(cv, vx - vr * 0.5, vy + vr + ar + 1, ar, ar, 0.0), blood)
        if kind == "thorax":
            for side in (-1, 1):
                lung = _blob(cv, rng, cx + side * ia * 0.5, cy + rng.uniform(-0.05, 0.1) * ib, ia * 0.42,
                             ib * 0.8, 0.0, 0.12)
                _paint(hu, lung, _HU["lung"])
                m = _full(cv, lung) > 0.9
                # vessel tree: branching dark-to-bright segments from the hilum
                hx, hy = cx + side * ia * 0.25, cy
                for _ in range(int(rng.integers(4, 9))):
                    end = _point_in(rng, m, cv)
                    if end is None:
                        break
                    mid = (np.array([hx, hy]) + np.array(end)) / 2 + rng.normal(0, 3, 2)
                    _paint(hu, _polyline(cv, _bezier(np.array([hx, hy]), mid, np.array(end), 6),
                                         rng.uniform(0.7, 1.8)), _HU["blood"])
            # heart
            _paint(hu, _blob(cv, rng, cx - 0.12 * ia, cy + 0.05 * ib, ia * 0.3, ib * 0.45, 0.4, 0.1), _HU["blood"] + 5)
            # ribs: small bright segments along the wall
            for th in np.linspace(0.15, np.pi - 0.15, int(rng.integers(6, 11))):
                for sgn in (-1, 1):
                    px, py = cx + (ma - wall / 2) * math.cos(th), cy + sgn * (mb - wall / 2) * math.sin(th)
                    _paint(hu, _superellipse(cv, px, py, rng.uniform(1.5, 3.0), rng.uniform(1.0, 2.0), th), _HU["cortical"] * 0.9)
            window = _WINDOWS[str(rng.choice(["lung", "soft", "full", "bone"], p=[0.2, 0.5, 0.2, 0.1]))]
        else:
            # liver (right = image left), kidneys, bowel with air and contrast, spleen
            _paint(hu, _blob(cv, rng, cx - 0.45 * ia, cy + 0.15 * ib, ia * 0.45, ib * 0.6, -0.3, 0.12),
                   _HU["liver"] + rng.uniform(-10, 15))
            _paint(hu, _blob(cv, rng, cx + 0.55 * ia, cy + 0.25 * ib, ia * 0.22, ib * 0.35, 0.5, 0.12), _HU["liver"] - 10)
            for side in (-1, 1):
                kx, ky = vx + side * vr * 2.8, vy + vr * 0.6
                _paint(hu, _blob(cv, rng, kx, ky, vr * 1.0, vr * 1.4, side * 0.4, 0.1), _HU["kidney"] + rng.uniform(0, 120))
                _paint(hu, _superellipse(cv, kx + side * vr * 0.3, ky, vr * 0.3, vr * 0.5, 0.0), _HU["fat"])
            for _ in range(int(rng.integers(3, 9))):
                bx, by = cx + rng.uniform(-0.3, 0.5) * ia, cy + rng.uniform(-0.2, 0.7) * ib
                br = rng.uniform(0.05, 0.11) * h
                _paint(hu, _blob(cv, rng, bx, by, br, br * rng.uniform(0.6, 1), rng.uniform(0, np.pi), 0.2),
                       _HU["muscle"] - 10)
                fill = rng.uniform()
                inner = _superellipse(cv, bx, by, br * 0.6, br * 0.5, 0.0)
                if fill < 0.35:
                    _paint(hu, inner, _HU["bowel_air"])
                elif fill < 0.6:
                    _paint(hu, inner, _HU["contrast"] + rng.uniform(0, 200))
                else:
                    _paint(hu, inner, _HU["water"] + 10)
            # liver lesions (low contrast)
            for _ in range(int(rng.integers(0, 4))):
                lx, ly = cx - 0.45 * ia + rng.uniform(-0.2, 0.2) * ia, cy + 0.15 * ib + rng.uniform(-0.25, 0.25) * ib
                lr = rng.uniform(1.5, 6.0)
                _paint(hu, _superellipse(cv, lx, ly, lr, lr, 0.0), _HU["liver"] - rng.uniform(10, 40))
            window = _WINDOWS[str(rng.choice(["abdomen", "soft", "full", "bone"], p=[0.4, 0.3, 0.2, 0.1]))]
        # patient table below the body
        if rng.uniform() < 0.5:
            ty = cy - b - rng.uniform(2.0, 5.0)
            if ty > -0.9 * h:
                xs = np.linspace(-0.6, 0.6, 9) * h
                ys = ty - 0.002 * xs**2 / h * 10
                _paint(hu, _polyline(cv, np.stack([xs, ys], 1), rng.uniform(1.5, 3.0)), 200.0)
    # tissue noise / texture (Hounsfield units), partial-volume blur of the whole slice
    inside = hu > -950
    hu = hu + inside * noise_hu * _texture(rng, size, rng.uniform(0.6, 1.2))
    hu = gaussian_filter(hu, rng.uniform(0.3, 0.6))
    level, width = window
    return np.clip((hu - (level - width / 2)) / width, 0.0, 1.0).astype(np.float32)


def ct_like_validation(n: int, size: int = 128, seed: int = 0) -> np.ndarray:
    """``n`` realistic CT-like validation slices ``(n, size, size)`` float32 in ``[0, 1]``.

    A model **distinct from the training generator** :func:`rich_phantoms`: anatomy built from fixed templates
    in Hounsfield units (abdomen 40%: subcutaneous fat, muscle wall, liver with low-contrast lesions, spleen,
    kidneys with fatty hilum, bowel loops holding air, contrast or fluid, aorta, vertebra with canal and
    processes, paraspinal muscles; thorax 30%: lungs with branching vessel trees, heart, ribs; head 30%: skin,
    skull with diploe, cortex folds of gray / white matter, falx, butterfly ventricles, optional lesion), with
    an optional patient table, tissue noise (5-20 HU), a slight blur, and a clinical display window (e.g. soft
    tissue L40/W400, brain L40/W90, lung L-500/W1600, bone, full range) mapping HU to ``[0, 1]``. Bodies are
    upright (spine at the bottom), as in real scans. Image ``i`` depends only on ``(seed, i)``.
    (scikit-image's anatomical sample ``skimage.data.brain`` needs a download through ``pooch``, so no
    bundled real slice is available offline; this model stands in for one.)
    For validation only (choosing the mixture, TV weights, checkpoints): never train on it.
    """
    _check_n_size(n, size)
    out = np.empty((n, size, size), dtype=np.float32)
    for i in range(n):
        out[i] = _ct_like_one(np.random.default_rng(np.random.SeedSequence([int(seed), 7919, i])), size)
    return out


# (x0, y0, a, b, phi in degrees, additive intensity): the modified Shepp-Logan phantom (Toft), range [0, 1]
_SHEPP_LOGAN = (
    (0.0, 0.0, 0.69, 0.92, 0.0, 1.0),
    (0.0, -0.0184, 0.6624, 0.874, 0.0, -0.8),
    (0.22, 0.0, 0.11, 0.31, -18.0, -0.2),
    (-0.22, 0.0, 0.16, 0.41, 18.0, -0.2),
    (0.0, 0.35, 0.21, 0.25, 0.0, 0.1),
    (0.0, 0.1, 0.046, 0.046, 0.0, 0.1),
    (0.0, -0.1, 0.046, 0.046, 0.0, 0.1),
    (-0.08, -0.605, 0.046, 0.023, 0.0, 0.1),
    (0.0, -0.605, 0.023, 0.023, 0.0, 0.1),
    (0.06, -0.605, 0.023, 0.046, 0.0, 0.1),
)


def shepp_logan_variants(n: int, size: int = 128, rng: np.random.Generator | int | None = None) -> np.ndarray:
    """``n`` validation variants of the modified Shepp-Logan phantom ``(n, size, size)`` float32 in ``[0, 1]``.

    The 10 ellipses of the phantom (analytic, partial-volume edges) under a random similarity transform
    (rotation ``U[-15, 15]`` degrees, scale ``U[0.85, 1.0]``, shift ``U[-0.04, 0.04]`` of the half-width per
    axis) and a random contrast change: each inner ellipse's intensity (all but the skull and the brain) is
    multiplied by ``U[0.5, 2.0]`` and the brain level is shifted by ``U[-0.1, 0.15]``; clipped to ``[0, 1]``.
    The standard phantom (:func:`problems.ct.phantoms.shepp_logan`) stays a test image; these are for
    validation.
    """
    _check_n_size(n, size)
    rng = _as_rng(rng)
    cv = _Canvas(size)
    h = cv.half
    out = np.empty((n, size, size), dtype=np.float32)
    for k in range(n):
        rot = math.radians(rng.uniform(-15, 15))
        sc = rng.uniform(0.85, 1.0)
        sx, sy = rng.uniform(-0.04, 0.04, 2)
        mult = rng.uniform(0.5, 2.0, len(_SHEPP_LOGAN))
        brain = rng.uniform(-0.1, 0.15)
        img = np.zeros((size, size))
        cr, sr = math.cos(rot), math.sin(rot)
        for j, (x0, y0, a, b, phi, val) in enumerate(_SHEPP_LOGAN):
            x1, y1 = (x0 * cr - y0 * sr) * sc + sx, (x0 * sr + y0 * cr) * sc + sy
            v = val + (brain if j == 1 else 0.0) if j < 2 else val * mult[j]
            # table: a along x, b along y, phi counter-clockwise
            _paint(img, _superellipse(cv, x1 * h, y1 * h, a * sc * h, b * sc * h, math.radians(phi) + rot), v,
                   mode="add")
        out[k] = np.clip(img, 0.0, 1.0)
    return out


# --------------------------------------------------------------------------------------------- mixture
@dataclass(frozen=True)
class MixtureConfig:
    """The training mixture: each image is a natural crop, a rich phantom or a random-ellipse phantom with
    probabilities ``natural : rich : ellipses`` (normalised to sum 1), at ``size``, crops with ``scale``."""

    natural: float = 0.4
    rich: float = 0.4
    ellipses: float = 0.2
    size: int = 128
    scale: tuple[float, float] = (0.5, 1.0)

    def __post_init__(self) -> None:
        w = (self.natural, self.rich, self.ellipses)
        if any(not math.isfinite(x) or x < 0 for x in w) or sum(w) <= 0:
            raise UserInputError(f"mixture weights must be >= 0 with a positive sum, got {w}")
        if int(self.size) != self.size or self.size < 8:
            raise UserInputError(f"mixture image size must be an integer >= 8, got {self.size}")
        if len(self.scale) != 2 or not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise UserInputError(f"crop scale must be (min, max) with 0 < min <= max <= 1, got {self.scale}")

    def probabilities(self, natural_available: bool = True) -> tuple[float, float, float]:
        """``(natural, rich, ellipses)`` probabilities (the weights divided by their sum). With
        ``natural_available=False`` the natural weight is dropped, i.e. redistributed to the two phantom kinds in
        proportion to their weights, or all to ``rich`` when both phantom weights are 0."""
        nat, rich, ell = self.natural, self.rich, self.ellipses
        if not natural_available:
            nat = 0.0
            if rich + ell == 0:
                rich = 1.0
        s = nat + rich + ell
        return nat / s, rich / s, ell / s


def sample_mixture(
    config: MixtureConfig,
    n: int,
    rng: np.random.Generator | int | None = None,
    natural_images: np.ndarray | Sequence[np.ndarray] | None = None,
) -> np.ndarray:
    """``n`` training images ``(n, size, size)`` float32 in ``[0, 1]`` from the mixture of ``config``.

    Each image independently: a :func:`natural_crops` crop of ``natural_images`` (e.g. ``train400``) with
    probability ``p_natural``, a :func:`rich_phantoms` phantom with ``p_rich``, a random-ellipse phantom
    (:func:`problems.ct.phantoms.random_ellipses`, default :class:`~problems.ct.phantoms.EllipseConfig`)
    with ``p_ellipses`` (:meth:`MixtureConfig.probabilities`). **When ``natural_images`` is None** the natural
    weight is redistributed to the two phantom kinds in proportion to their weights (all to the rich
    phantoms if both are 0). Deterministic given ``rng``.
    """
    from problems.ct.phantoms import random_ellipses

    _check_n_size(n, config.size)
    rng = _as_rng(rng)
    p = config.probabilities(natural_images is not None)
    kinds = rng.choice(3, size=n, p=p)
    out = np.empty((n, config.size, config.size), dtype=np.float32)
    idx = [np.flatnonzero(kinds == k) for k in range(3)]
    if idx[0].size:
        out[idx[0]] = natural_crops(natural_images, idx[0].size, config.size, rng, config.scale)
    if idx[1].size:
        out[idx[1]] = rich_phantoms(idx[1].size, config.size, rng)
    if idx[2].size:
        out[idx[2]] = random_ellipses(idx[2].size, config.size, seed=int(rng.integers(2**31)))
    return out
