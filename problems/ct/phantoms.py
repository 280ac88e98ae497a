"""Phantoms, simulated measurements and cached data sets for the CT problem.

Random-ellipse phantoms (:func:`random_ellipses`, distribution in :class:`EllipseConfig`) are drawn on the
normalised square ``[-1, 1]^2`` (pixel centres ``(j + 1/2) * 2 / n - 1``) and lie inside the inscribed disc,
so every ray through an ellipse is measured by the default geometry. Image ``i`` of a set depends only on
``(seed, i)`` (``numpy.random.SeedSequence([seed, i])``): the first images of a larger set are the same images.

Measurements (:func:`simulate`): ``y = A x + sigma * e``, ``e ~ N(0, I)``, with a per-sinogram noise level
``sigma = noise * RMS(A x) = noise * ||A x||_2 / sqrt(n_angles * n_detectors)`` (default ``noise = 0.015``).
The same discrete operator is used for simulation and reconstruction (the usual learned-CT benchmark
setting, an "inverse crime" for model-based methods that all compared methods share).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from fpntools.training.checkpoint import atomic_write
from problems.ct.cache import default_cache_dir
from problems.ct.geometry import DEFAULT_NOISE, CTGeometry

__all__ = [
    "EllipseConfig",
    "random_ellipses",
    "shepp_logan",
    "PHANTOMS",
    "make_phantoms",
    "simulate",
    "CTDataConfig",
    "CTSplit",
    "CTData",
    "make_dataset",
]


# --------------------------------------------------------------------------------------------- ellipses
@dataclass(frozen=True)
class EllipseConfig:
    """Distribution of the random-ellipse phantoms (all draws independent and uniform).

    For each image:

    * the number of ellipses ``K ~ U{min_ellipses, ..., max_ellipses}``;
    * per ellipse: semi-axes ``a, b ~ U[min_axis, max_axis]`` (fractions of the image half-width),
      rotation ``phi ~ U[0, pi)``, centre uniform in the disc of radius ``max_radius - max(a, b)`` (so the
      whole ellipse lies in the disc of radius ``max_radius``), intensity ``c ~ U[min_intensity, max_intensity]``;
    * ``x = clip(sum_k c_k 1[ellipse_k], 0, 1)`` (overlaps add up, then clipped to ``[0, 1]``).

    ``supersample = s > 1`` evaluates the indicators on an ``s x s`` sub-grid per pixel and averages
    (partial-volume edges instead of staircase ones).
    """

    min_ellipses: int = 5
    max_ellipses: int = 12
    min_axis: float = 0.05
    max_axis: float = 0.4
    max_radius: float = 0.95
    min_intensity: float = 0.1
    max_intensity: float = 0.6
    supersample: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.min_ellipses <= self.max_ellipses:
            raise ValueError(f"need 1 <= min_ellipses <= max_ellipses, got {self.min_ellipses}, {self.max_ellipses}")
        if not 0 < self.min_axis <= self.max_axis < self.max_radius <= 1:
            raise ValueError("need 0 < min_axis <= max_axis < max_radius <= 1")
        if not 0 <= self.min_intensity <= self.max_intensity <= 1:
            raise ValueError("need 0 <= min_intensity <= max_intensity <= 1")
        if self.supersample < 1:
            raise ValueError(f"supersample must be >= 1, got {self.supersample}")


def _grid(size: int, supersample: int) -> tuple[np.ndarray, np.ndarray]:
    n = size * supersample
    c = (np.arange(n, dtype=np.float64) + 0.5) * (2.0 / n) - 1.0
    xx, yy = np.meshgrid(c, -c)  # row 0 is the top (y = +1)
    return xx, yy


def _one_ellipse_image(rng: np.random.Generator, size: int, cfg: EllipseConfig) -> np.ndarray:
    xx, yy = _grid(size, cfg.supersample)
    img = np.zeros_like(xx)
    k = int(rng.integers(cfg.min_ellipses, cfg.max_ellipses + 1))
    for _ in range(k):
        a, b = rng.uniform(cfg.min_axis, cfg.max_axis, size=2)
        phi = rng.uniform(0.0, np.pi)
        r = (cfg.max_radius - max(a, b)) * np.sqrt(rng.uniform())
        t = rng.uniform(0.0, 2 * np.pi)
        cx, cy = r * np.cos(t), r * np.sin(t)
        c = rng.uniform(cfg.min_intensity, cfg.max_intensity)
        dx, dy = xx - cx, yy - cy
        u = dx * np.cos(phi) + dy * np.sin(phi)
        v = -dx * np.sin(phi) + dy * np.cos(phi)
        img += c * ((u / a) ** 2 + (v / b) ** 2 <= 1.0)
    np.clip(img, 0.0, 1.0, out=img)
    s = cfg.supersample
    if s > 1:
        img = img.reshape(size, s, size, s).mean(axis=(1, 3))
    return img


def random_ellipses(
    n: int, size: int = 128, seed: int = 0, config: EllipseConfig | None = None, start: int = 0
) -> np.ndarray:
    """``n`` random-ellipse phantoms ``(n, size, size)`` float32 in ``[0, 1]`` (see :class:`EllipseConfig`).

    Image ``i`` is drawn from ``SeedSequence([seed, start + i])``: reproducible, and independent of ``n``.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    cfg = config or EllipseConfig()
    out = np.empty((n, size, size), dtype=np.float32)
    for i in range(n):
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(start + i)]))
        out[i] = _one_ellipse_image(rng, size, cfg)
    return out


def shepp_logan(size: int = 128) -> np.ndarray:
    """The (modified, high-contrast) Shepp-Logan phantom of scikit-image, resized (anti-aliased) to
    ``(size, size)`` float32 in ``[0, 1]``."""
    from skimage.data import shepp_logan_phantom
    from skimage.transform import resize

    img = shepp_logan_phantom()
    if img.shape != (size, size):
        img = resize(img, (size, size), order=1, anti_aliasing=True, mode="constant")
    return np.clip(img, 0.0, 1.0).astype(np.float32)


PHANTOMS = ("ellipses", "shepp-logan")


def make_phantoms(kind: str, n: int = 1, size: int = 128, seed: int = 0) -> np.ndarray:
    """``(n, size, size)`` phantoms of ``kind``: ``"ellipses"`` (:func:`random_ellipses`) or ``"shepp-logan"``
    (one image, :func:`shepp_logan`); unknown kinds or ``n < 1`` are a one-line ``UserInputError``."""
    from fpntools.errors import UserInputError

    if n < 1:
        raise UserInputError(f"the number of phantoms must be >= 1, got {n}")
    if kind == "ellipses":
        return random_ellipses(n, size, seed=seed)
    if kind in ("shepp-logan", "shepp_logan", "shepp"):
        return shepp_logan(size)[None]
    raise UserInputError(f"unknown phantom {kind!r}; use one of {', '.join(PHANTOMS)}")


# --------------------------------------------------------------------------------------------- measurements
def simulate(
    images: np.ndarray | Tensor,
    geometry: CTGeometry | None = None,
    noise: float = DEFAULT_NOISE,
    seed: int | None = 0,
    operator: Any = None,
    return_clean: bool = False,
    batch_size: int = 256,
) -> Tensor | tuple[Tensor, Tensor]:
    """Noisy sinograms ``y = A x + sigma e`` of ``images`` ``(N, n, n)`` or ``(n, n)``.

    ``sigma = noise * RMS(A x)`` per sinogram, ``e`` standard normal from ``numpy.random.default_rng(seed)``
    (``seed=None``: fresh entropy). ``operator`` defaults to :func:`problems.ct.projector.ct_operator`
    of ``geometry`` (exact sparse matrix). Returns float32 tensors ``(N, n_angles, n_detectors)`` (no batch
    dimension when a single image was given); ``(noisy, clean)`` with ``return_clean``.
    """
    geometry = geometry or CTGeometry()
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    x = torch.as_tensor(np.asarray(images) if not isinstance(images, Tensor) else images)
    xb, batched = geometry.check_image(x, "images")
    if operator is None:
        from problems.ct.projector import ct_operator

        operator = ct_operator(geometry)
    xb = xb.detach().to(dtype=torch.float32)
    with torch.no_grad():
        clean = torch.cat([operator(xb[i : i + batch_size]) for i in range(0, xb.shape[0], batch_size)])
    clean = clean.to(torch.float32).cpu()
    rms = clean.flatten(1).pow(2).mean(dim=1).sqrt()
    rng = np.random.default_rng(seed)
    e = torch.from_numpy(rng.standard_normal(tuple(clean.shape)).astype(np.float32))
    noisy = clean + (noise * rms).view(-1, 1, 1) * e
    if not batched:
        noisy, clean = noisy[0], clean[0]
    return (noisy, clean) if return_clean else noisy


# --------------------------------------------------------------------------------------------- data sets
@dataclass(frozen=True)
class CTDataConfig:
    """A simulated CT data set: phantoms, geometry, noise and split sizes.

    Split ``s`` (``train``, ``val``, ``test`` with offsets ``o_s = 0, 1, 2``) uses phantom seed ``10 seed + o_s``
    and noise seed ``10 seed + 1000 + o_s``: the splits never share an image.
    """

    geometry: CTGeometry = field(default_factory=CTGeometry)
    n_train: int = 1000
    n_val: int = 50
    n_test: int = 50
    noise: float = DEFAULT_NOISE
    seed: int = 0
    phantom: Literal["ellipses"] = "ellipses"
    ellipses: EllipseConfig = field(default_factory=EllipseConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def key(self) -> str:
        blob = json.dumps(self.to_dict(), sort_keys=True, default=repr).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


@dataclass
class CTSplit:
    """Ground-truth images ``(N, n, n)`` and noisy sinograms ``(N, n_angles, n_detectors)``, float32."""

    images: Tensor
    sinograms: Tensor

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, idx: Any) -> "CTSplit":
        return CTSplit(self.images[idx], self.sinograms[idx])

    def index_batches(self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None
                      ) -> tuple[Tensor, ...]:
        """Index tensors of the mini-batches (a random permutation from ``generator`` when ``shuffle``)."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        return order.split(batch_size)

    def batches(self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None):
        """Yield ``(images, sinograms)`` mini-batches."""
        for j in self.index_batches(batch_size, shuffle, generator):
            yield self.images[j], self.sinograms[j]


@dataclass
class CTData:
    config: CTDataConfig
    train: CTSplit
    val: CTSplit
    test: CTSplit

    def split(self, name: str) -> CTSplit:
        if name not in ("train", "val", "test"):
            raise ValueError(f"unknown split {name!r}; use 'train', 'val' or 'test'")
        return getattr(self, name)


_SPLIT_OFFSETS = {"train": 0, "val": 1, "test": 2}


def _generate(cfg: CTDataConfig, operator: Any) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    for name, n in (("train", cfg.n_train), ("val", cfg.n_val), ("test", cfg.n_test)):
        off = _SPLIT_OFFSETS[name]
        imgs = random_ellipses(n, cfg.geometry.image_size, seed=cfg.seed * 10 + off, config=cfg.ellipses)
        if n:
            sino = simulate(imgs, cfg.geometry, cfg.noise, seed=cfg.seed * 10 + 1000 + off, operator=operator)
            sino_np = sino.numpy()
        else:
            sino_np = np.zeros((0, *cfg.geometry.sino_shape), np.float32)
        arrays[f"{name}_images"] = imgs
        arrays[f"{name}_sinograms"] = sino_np
    return arrays


def _atomic_savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    atomic_write(path, lambda fh: np.savez(fh, **arrays))


def make_dataset(
    config: CTDataConfig | None = None,
    cache_dir: str | os.PathLike | None = None,
    operator: Any = None,
    use_cache: bool = True,
) -> CTData:
    """Generate (or load from the cache) the simulated data set of ``config``.

    The cache file is ``<cache_dir>/ct_<phantom>_<config hash>.npz`` (default directory
    :func:`default_cache_dir`), written atomically (temporary file + ``os.replace``). A corrupt cache
    file is regenerated.
    """
    cfg = config or CTDataConfig()
    arrays: dict[str, np.ndarray] | None = None
    path: Path | None = None
    if use_cache:
        path = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        path = path / f"ct_{cfg.phantom}_{cfg.key()}.npz"
        if path.is_file():
            try:
                with np.load(path) as z:
                    arrays = {k: z[k] for k in z.files}
                expected = {f"{s}_{k}" for s in _SPLIT_OFFSETS for k in ("images", "sinograms")}
                if set(arrays) != expected:
                    arrays = None
            except Exception:  # corrupt / truncated cache: regenerate
                arrays = None
    if arrays is None:
        arrays = _generate(cfg, operator)
        if path is not None:
            _atomic_savez(path, arrays)

    def split(name: str) -> CTSplit:
        return CTSplit(torch.from_numpy(arrays[f"{name}_images"]), torch.from_numpy(arrays[f"{name}_sinograms"]))

    return CTData(cfg, split("train"), split("val"), split("test"))
