r"""Restoring whole user images: colour, overlapping tiles in memory-bounded batches, and the fast joint solve.

What ``fpntools imaging denoise`` / ``inpaint`` / ``fit`` run (:func:`restore_array`):

1. **Colour.** A grayscale image is one plane. An RGB image (RGBA: the alpha channel is kept unchanged, never
   restored) is split into three planes, by default the *opponent* transform of colour BM3D
   (``COLOUR_MODES``):

   .. math::  Y = (R + G + B) / 3, \quad C_1 = (R - B) / 2 + 1/2, \quad C_2 = (R - 2G + B) / 4 + 1/2,

   each in ``[0, 1]``. Gaussian noise of level ``sigma`` on ``R, G, B`` becomes noise of level
   ``sigma ||row||`` on each plane (``1/sqrt 3``, ``1/sqrt 2``, ``sqrt 6 / 4`` times ``sigma``): the luminance is
   restored at a lower noise level, which is where the opponent transform gains over per-channel restoration;
   the noise is correlated between the planes, which the per-plane restoration ignores. ``"rgb"``: each channel
   its own plane at level ``sigma``. Each plane is restored by the grayscale decoder with its own noise level
   and prior weight, and the planes are transformed back (clipped to ``[0, 1]``).
2. **Tiles.** A plane is padded by reflection to sides that are multiples of 4 and cut into overlapping tiles of
   at most ``tile`` pixels a side (equal sizes, multiples of 4, at least ``overlap`` pixels of overlap; an image
   that fits is one tile, so a 256x256 image is solved whole). Tiles are restored in batches of at most
   ``batch_pixels`` pixels (bounded memory, whatever the image size) and blended with weights that fall
   linearly to zero across each overlap (a partition of unity), so seams do not show.
3. **The joint solve per batch** (fast settings :class:`RestoreSettings`): encoder estimate ``x_hat``, its
   equilibrium ``z*(x_hat)`` (tolerance ``eq_tol``), then the augmented joint fixed point from there (a short
   settle stage, then ``max_iter`` joint iterations), and one warm-started equilibrium solve at the
   end point for the image and the final objective. The latent objective of every tile is known at both ends;
   a tile whose objective rose above its start (``RISE_TOL``) or went non-finite keeps the encoder's restoration
   ``h(z*(x_hat))`` (counted in the outcome), so the output is never worse than the starting point.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from fpntools.augmented import Counter, augmented_solve, solve_equilibrium
from problems.imaging.model import DEQDecoder
from problems.imaging.tasks import LAM_MIN, LatentProblem, TaskConfig, joint_config

__all__ = [
    "COLOUR_MODES",
    "RISE_TOL",
    "RestoreSettings",
    "TileReport",
    "RestoredImage",
    "to_planes",
    "from_planes",
    "tile_layout",
    "blend_weights",
    "solve_tiles",
    "restore_plane",
    "restore_array",
]

COLOUR_MODES = ("opponent", "rgb")
RISE_TOL = 1e-3
"""Relative rise of a tile's latent objective above its start beyond which the tile keeps its start."""

_OPP = np.array([[1 / 3, 1 / 3, 1 / 3], [1 / 2, 0.0, -1 / 2], [1 / 4, -1 / 2, 1 / 4]])
_OPP_OFFSET = np.array([0.0, 0.5, 0.5])


@dataclass(frozen=True)
class RestoreSettings:
    """Settings of :func:`restore_array`: ``tile`` (largest tile side), ``overlap`` (least overlap of
    neighbouring tiles), ``batch_pixels`` (pixels per batch of tiles: the memory bound), the fast joint solve
    (``settle_iters`` iterations with the latent frozen, stopping early at the relative residual ``settle_tol``,
    then ``max_iter`` joint iterations; ``tol = 0``:
    exactly that many and the last iterate, the default, since the engine otherwise returns the iterate of
    smallest joint residual, which early in a joint solve is its start; equilibrium tolerance ``eq_tol`` of the
    start and end solves), the prior weight ``lam = max(lam_per_variance sigma^2, LAM_MIN)`` of a plane of noise
    level ``sigma`` (:meth:`lam`) and the ``colour`` mode (:data:`COLOUR_MODES`). The defaults were chosen on
    validation crops of train400 (docs/imaging.md, "Fast joint solve")."""

    tile: int = 256
    overlap: int = 32
    batch_pixels: int = 2 * 256 * 256
    settle_iters: int = 30
    settle_tol: float = 1e-6
    max_iter: int = 20
    tol: float = 0.0
    lam_per_variance: float = 1500.0
    eq_tol: float = 1e-4
    eq_max_iter: int = 40
    colour: str = "opponent"

    def __post_init__(self) -> None:
        if self.tile % 4 or self.tile < 16:
            raise ValueError(f"tile must be a multiple of 4 and at least 16, got {self.tile}")
        if self.overlap % 4 or not 0 <= self.overlap <= self.tile // 2:
            raise ValueError(f"overlap must be a multiple of 4 in [0, tile / 2], got {self.overlap}")
        if self.batch_pixels < 1 or self.max_iter < 0 or self.settle_iters < 0:
            raise ValueError("batch_pixels must be positive, max_iter and settle_iters nonnegative")
        if self.colour not in COLOUR_MODES:
            raise ValueError(f"colour must be one of {COLOUR_MODES}, got {self.colour!r}")

    def lam(self, sigma: float) -> float:
        """Prior weight of a plane of noise level ``sigma``."""
        return max(self.lam_per_variance * sigma**2, LAM_MIN)


# ----------------------------------------------------------------------------------------------------------
# colour


def to_planes(img: np.ndarray, mode: str = "opponent") -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``(planes (K, H, W), noise scales (K,), alpha or None)`` of an image ``(H, W)``, ``(H, W, 1|2|3|4)`` in
    ``[0, 1]``: grayscale is one plane (scale 1); the last channel of a 2- or 4-channel image is alpha (returned
    as is); RGB becomes the opponent planes (``mode="opponent"``, scales the row norms) or the three channels."""
    if img.ndim == 2:
        return img[None], np.ones(1), None
    if img.ndim != 3 or img.shape[2] not in (1, 2, 3, 4):
        raise ValueError(f"image must be (H, W) or (H, W, 1-4), got {img.shape}")
    alpha = img[..., -1] if img.shape[2] in (2, 4) else None
    colour = img[..., : 3 if img.shape[2] >= 3 else 1]
    if colour.shape[2] == 1:
        return colour[..., 0][None], np.ones(1), alpha
    if mode == "rgb":
        return np.moveaxis(colour, 2, 0), np.ones(3), alpha
    planes = np.einsum("kc,hwc->khw", _OPP, colour) + _OPP_OFFSET[:, None, None]
    return planes, np.linalg.norm(_OPP, axis=1), alpha


def from_planes(planes: np.ndarray, alpha: np.ndarray | None, mode: str = "opponent") -> np.ndarray:
    """Inverse of :func:`to_planes` (clipped to ``[0, 1]``; alpha appended as the last channel)."""
    if planes.shape[0] == 1:
        out = planes[0] if alpha is None else np.stack([planes[0], alpha], axis=-1)
        return np.clip(out, 0.0, 1.0)
    if mode == "rgb":
        rgb = np.moveaxis(planes, 0, 2)
    else:
        rgb = np.einsum("ck,khw->hwc", np.linalg.inv(_OPP), planes - _OPP_OFFSET[:, None, None])
    rgb = np.clip(rgb, 0.0, 1.0)
    return rgb if alpha is None else np.concatenate([rgb, alpha[..., None]], axis=-1)


# ----------------------------------------------------------------------------------------------------------
# tiles


def tile_layout(n: int, tile: int, overlap: int) -> tuple[int, list[int]]:
    """``(size, starts)`` of the tiles along a side of ``n`` pixels (``n`` a multiple of 4): one tile of ``n``
    when ``n <= tile``, else the fewest equal tiles of at most ``tile`` pixels (multiples of 4) that overlap by at
    least ``overlap``, the first at 0 and the last ending at ``n``, starts multiples of 4."""
    if n <= tile:
        return n, [0]
    k = math.ceil((n - overlap) / (tile - overlap))
    size = min(tile, 4 * math.ceil((n + (k - 1) * overlap) / (4 * k)))
    starts = sorted({4 * round(i * (n - size) / (4 * (k - 1))) for i in range(k)})
    return size, starts


def blend_weights(size: int, starts: list[int], n: int) -> np.ndarray:
    """``(len(starts), size)`` 1-D blending weights: 1 inside a tile, falling linearly to 0 across each overlap
    with a neighbour (from both sides, so the weights of overlapping tiles sum to 1 everywhere)."""
    w = np.ones((len(starts), size))
    for a in range(len(starts) - 1):
        lo, hi = starts[a + 1], starts[a] + size  # overlap [lo, hi) of tiles a and a + 1
        if hi <= lo:
            continue
        ramp = (np.arange(lo, hi) - lo + 0.5) / (hi - lo)
        w[a, lo - starts[a] :] = np.minimum(w[a, lo - starts[a] :], 1.0 - ramp)
        w[a + 1, : hi - lo] = np.minimum(w[a + 1, : hi - lo], ramp)
    return w


# ----------------------------------------------------------------------------------------------------------
# the joint solve of a batch of tiles


@dataclass
class TileReport:
    """Per-tile outcome of :func:`solve_tiles`: objectives at the start (encoder's estimate) and the end, whether
    the tile kept its start (``kept_start``), the smallest relative joint residual measured (``residual``),
    whether it went non-finite, the joint iterations and the solve's seconds."""

    start: np.ndarray
    final: np.ndarray
    kept_start: np.ndarray
    residual: np.ndarray
    nonfinite: np.ndarray
    iterations: int
    seconds: float


def solve_tiles(model: DEQDecoder, y: Tensor, mask: Tensor | None, sigma: float, lam: float,
                settings: RestoreSettings, counter: Counter | None = None) -> tuple[np.ndarray, TileReport]:
    """Restore a batch of tiles ``y`` ``(B, 1, h, w)`` (``mask`` of known pixels or ``None``) at noise level
    ``sigma`` with prior weight ``lam`` by the fast joint solve (module docstring, step 3); returns the images
    ``(B, h, w)`` (float64, not clipped) and the :class:`TileReport`."""
    t0 = time.perf_counter()
    with torch.no_grad():
        x_hat = model.encode(y, mask, sigma)
    prob = LatentProblem(model, y, mask, lam, x_prior=x_hat)
    eq = {"tol": settings.eq_tol, "max_iter": settings.eq_max_iter}
    z_hat = solve_equilibrium(prob.f, x_hat, prob.z0(x_hat), **eq)
    with torch.no_grad():
        start = prob.loss(z_hat, x_hat).double()
        img0 = model.head(z_hat).double()
    b = y.shape[0]
    if settings.max_iter == 0:
        finite0 = torch.isfinite(start).numpy()
        return img0[:, 0].numpy(), TileReport(start.numpy(), start.numpy(), np.zeros(b, bool), np.zeros(b), ~finite0,
                                              0, time.perf_counter() - t0)
    cfg = replace(joint_config(TaskConfig(lam=lam), mask is not None), settle_iters=settings.settle_iters,
                  settle_tol=settings.settle_tol, max_iter=settings.max_iter, tol=settings.tol)
    with torch.no_grad():
        res = augmented_solve(prob.f, prob.loss, x_hat, z_hat, None, cfg, counter=counter)
    solved = torch.isfinite(res.x).flatten(1).all(1) & torch.isfinite(res.z).flatten(1).all(1)
    x = torch.where(solved.view(-1, 1, 1, 1), res.x, x_hat)  # failed tiles: re-solved at x_hat, then kept at start
    z = solve_equilibrium(prob.f, x, torch.where(solved.view(-1, 1, 1, 1), res.z, z_hat), **eq)
    with torch.no_grad():
        final = prob.loss(z, x).double()
        img = model.head(z).double()
    finite = solved & torch.isfinite(final) & torch.isfinite(img).flatten(1).all(1)
    keep = ~finite | (final > start * (1 + RISE_TOL))
    img = torch.where(keep.view(-1, 1, 1, 1), img0, img)
    final = torch.where(keep, start, final)
    residual = torch.where(finite, res.info.residual.detach().double(), torch.full_like(start, math.inf))
    iters = sum(int(i.steps.max()) for i in res.infos)
    return img[:, 0].numpy(), TileReport(start.numpy(), final.numpy(), keep.numpy(), residual.numpy(),
                                         (~finite).numpy(), iters, time.perf_counter() - t0)


# ----------------------------------------------------------------------------------------------------------
# whole planes and images


@dataclass
class RestoredImage:
    """The restored ``image`` (same shape and channels as the input, alpha kept) and the tiles' reports."""

    image: np.ndarray
    reports: list[TileReport] = field(default_factory=list)
    tiles: int = 0
    seconds: float = 0.0

    @property
    def start(self) -> float:
        return float(sum(r.start.sum() for r in self.reports))

    @property
    def final(self) -> float:
        return float(sum(r.final.sum() for r in self.reports))

    @property
    def kept_start(self) -> int:
        return int(sum(r.kept_start.sum() for r in self.reports))

    @property
    def residual(self) -> float:
        return float(max((r.residual.max() for r in self.reports), default=0.0))

    @property
    def finite(self) -> bool:
        return bool(np.isfinite(self.image).all()) and math.isfinite(self.start) and math.isfinite(self.final)

    def summary(self) -> str:
        """One line: tiles, joint iterations, residual, objective start -> end, tiles that kept the encoder's
        restoration."""
        iters = max((r.iterations for r in self.reports), default=0)
        kept = (f", {self.kept_start} kept the encoder's restoration (objective rose)" if self.kept_start else "")
        return (f"{self.tiles} tile(s), {iters} iterations of the joint solve (relative residual {self.residual:.1e}),"
                f" objective {self.start:.6g} -> {self.final:.6g}{kept}")


def restore_plane(model: DEQDecoder, plane: np.ndarray, mask: np.ndarray | None, sigma: float, lam: float,
                  settings: RestoreSettings, progress: Callable[[int, int], Counter | None] | None = None,
                  done: int = 0, total: int | None = None) -> tuple[np.ndarray, list[TileReport]]:
    """Restore one plane ``(H, W)`` tile by tile (module docstring, step 2). ``progress(first, total)`` may return
    a :class:`Counter` for each batch (``first``: index of its first tile among ``total``)."""
    h, w = plane.shape
    hp, wp = 4 * math.ceil(h / 4), 4 * math.ceil(w / 4)
    pad = ((0, hp - h), (0, wp - w))
    u = np.pad(plane, pad, mode="reflect") if (hp, wp) != (h, w) else plane
    m = None if mask is None else (np.pad(mask, pad, mode="reflect") if (hp, wp) != (h, w) else mask)
    th, rows = tile_layout(hp, settings.tile, settings.overlap)
    tw, cols = tile_layout(wp, settings.tile, settings.overlap)
    wr, wc = blend_weights(th, rows, hp), blend_weights(tw, cols, wp)
    spots = [(a, b) for a in range(len(rows)) for b in range(len(cols))]
    per_batch = max(1, settings.batch_pixels // (th * tw))
    total = len(spots) if total is None else total
    acc = np.zeros((hp, wp))
    reports = []
    for first in range(0, len(spots), per_batch):
        chunk = spots[first : first + per_batch]
        yb = torch.as_tensor(np.stack([u[rows[a] : rows[a] + th, cols[b] : cols[b] + tw] for a, b in chunk]),
                             dtype=torch.float32)[:, None]
        mb = None if m is None else torch.as_tensor(
            np.stack([m[rows[a] : rows[a] + th, cols[b] : cols[b] + tw] for a, b in chunk]), dtype=torch.float32)[:, None]
        counter = progress(done + first, total) if progress is not None else None
        if counter is not None:
            counter.start()
        out, rep = solve_tiles(model, yb, mb, sigma, lam, settings, counter)
        reports.append(rep)
        for (a, b), tile in zip(chunk, out):
            acc[rows[a] : rows[a] + th, cols[b] : cols[b] + tw] += np.outer(wr[a], wc[b]) * tile
    return acc[:h, :w], reports


def restore_array(model: DEQDecoder, img: np.ndarray, mask: np.ndarray | None, sigma: float,
                  lam_for: Callable[[float], float] | None = None, settings: RestoreSettings = RestoreSettings(),
                  progress: Callable[[int, int], Counter | None] | None = None) -> RestoredImage:
    """Restore an image ``(H, W)`` or ``(H, W, C)`` in ``[0, 1]`` (module docstring): ``mask`` ``(H, W)`` bool of
    known pixels (all channels) or ``None``; ``sigma`` the noise level of the channels; ``lam_for(sigma_k)`` the
    prior weight of a plane of level ``sigma_k`` (default :meth:`RestoreSettings.lam`). Noiseless inpainting (``mask`` given, ``sigma == 0``) keeps the
    known pixels exactly. ``progress(first, total)``: called before every batch of tiles (over all planes)."""
    t0 = time.perf_counter()
    lam_for = settings.lam if lam_for is None else lam_for
    planes, scales, alpha = to_planes(img, settings.colour)
    hp, wp = (4 * math.ceil(s / 4) for s in img.shape[:2])
    per_plane = len(tile_layout(hp, settings.tile, settings.overlap)[1]) * len(
        tile_layout(wp, settings.tile, settings.overlap)[1])
    total = per_plane * planes.shape[0]
    m = None if mask is None else mask.astype(np.float64)
    out, reports = [], []
    for k, plane in enumerate(planes):
        s = float(sigma * scales[k])
        obs = plane if mask is None else np.where(mask, plane, 0.0)
        res, rep = restore_plane(model, obs, m, s, lam_for(s), settings, progress, done=k * per_plane, total=total)
        out.append(res)
        reports += rep
    image = from_planes(np.stack(out), alpha, settings.colour)
    if mask is not None and sigma == 0:
        known = mask if image.ndim == 2 else mask[..., None]
        image = np.where(known, img, image)
    return RestoredImage(image, reports, total, time.perf_counter() - t0)
