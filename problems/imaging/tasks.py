r"""Inverse problems solved by optimising the decoder's latent input, plus total-variation baselines.

For an observation ``y`` (noisy and/or with missing pixels, ``M`` the 0/1 mask of known pixels) and the
decoder ``x -> h(z*(x))`` the latent is found from

.. math::  \min_x \; \tfrac12 \| M \odot (h(z^*(x)) - y) \|_2^2 + \tfrac{\lambda}{2} \|x - \hat x\|_2^2,
           \qquad z^*(x) = f(z^*(x), x),

either by the augmented joint fixed point (:func:`fpntools.augmented.augmented_solve`) or by the naive
nested optimiser (:func:`fpntools.augmented.naive_solve`), both started at ``x = x_hat``. The restored image
is ``h(z*(x*))``. The prior centre ``x_hat = E(y, M, sigma)`` is the decoder's amortised encoder estimate
(``TaskConfig.amortized``; with ``amortized=False`` it is 0, a plain Gaussian latent prior). Latent fitting
to a clean target is the same problem with ``M = 1`` and a small ``lambda``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import Tensor

from fpntools.augmented import (
    AugmentedConfig,
    AugmentedResult,
    Counter,
    NaiveConfig,
    NaiveResult,
    augmented_solve,
    naive_solve,
    solve_equilibrium,
)
from fpntools.operators import gradient
from problems.imaging.model import DEQDecoder

__all__ = [
    "TaskConfig",
    "LatentProblem",
    "AUGMENTED_DEFAULT",
    "NAIVE_DEFAULT",
    "restore_augmented",
    "joint_config",
    "restore_naive",
    "restore_amortized",
    "keep_known",
    "make_problem",
    "shifted_batch",
    "unshift_mean",
    "tv_denoise",
    "tv_inpaint",
    "block_mask",
    "lam_for_sigma",
    "LAM_PER_VARIANCE",
    "LAM_MIN",
    "ANDERSON_MEMORY",
    "step_for_lam",
]

LAM_PER_VARIANCE = 250.0
"""Latent prior weight per unit noise variance: ``lam = LAM_PER_VARIANCE * sigma^2`` (MAP scaling; the best
weight on the validation crops is 10 at sigma 0.2 and 100-300 at sigma 0.4, see ``docs/imaging.md``)."""
LAM_MIN = 0.1
"""Smallest prior weight (noiseless inpainting, latent fitting; the best on the validation crops)."""


def lam_for_sigma(sigma: float) -> float:
    """Prior weight for noise level ``sigma`` (chosen on the validation crops)."""
    return max(LAM_PER_VARIANCE * sigma**2, LAM_MIN)


DATA_CURVATURE = 3.0
"""Rough curvature of the data term ``1/2 ||M(h(z*(x)) - y)||^2`` in the latent (found by trying joint step
sizes 0.01 ... 1 on the benchmark tasks with prior weights 0.3 ... 120: about 1 / (lam + 3) was fastest)."""


def step_for_lam(lam: float) -> float:
    """Joint-solver step on the latent, ``alpha = 1 / (lam + DATA_CURVATURE)`` (about 1 / Lipschitz of the
    objective's gradient: the prior contributes ``lam``)."""
    return 1.0 / (lam + DATA_CURVATURE)


ANDERSON_MEMORY = {"denoise": 5, "inpaint": 20}
"""Anderson memory of the joint solve when ``solver_options`` does not set ``m``: ``"inpaint"`` when a mask is
given, else ``"denoise"``. Chosen on the validation crops: memory 5 reaches the naive target 1.3-2.3x sooner
than 20 on denoising and diverges on inpainting (``examples/imaging_diagnostics.py --sections memory``)."""

AUGMENTED_DEFAULT = AugmentedConfig(
    settle_iters=40, adjoint_scale=1.0, solver="anderson", solver_options={"beta": 1.0},
    tol=1e-6, max_iter=300, backward="jfb",
)
"""Joint-solver settings used by the CLI and the benchmark (Anderson memory: :data:`ANDERSON_MEMORY`)."""

NAIVE_DEFAULT = NaiveConfig(optimizer="adam", lr=0.05, steps=150, inner_tol=1e-4, inner_max_iter=40, backward_tol=1e-4)
"""Nested-baseline settings used by the benchmark (Adam, warm-started inner solves)."""


@dataclass
class TaskConfig:
    """Prior weight ``lam`` (per sigma in the CLI/benchmark), the noise level ``sigma`` given to the amortised
    encoder, whether the prior is centred on the encoder's estimate (``amortized``) or on 0, solver settings
    (``step_size``: the joint solver's step on the latent, ``None`` = :func:`step_for_lam`),
    and ``shifts``: the image is restored at ``shifts`` offsets of the latent grid (2-pixel shifts, reflect
    padding) as one batch and the aligned results are averaged (translation averaging); 1 = no averaging."""

    lam: float = 0.05
    sigma: float = 0.0
    amortized: bool = True
    tv: float = 0.0
    shifts: int = 1
    step_size: float | None = None
    augmented: AugmentedConfig = field(default_factory=lambda: replace(AUGMENTED_DEFAULT))
    naive: NaiveConfig = field(default_factory=lambda: replace(NAIVE_DEFAULT))


def smooth_tv(u: Tensor, eps: float = 1e-2) -> Tensor:
    r"""Smoothed isotropic total variation per sample of images ``u`` ``(B, C, H, W)``,
    ``sum_ij sqrt(|(grad u)_ij|^2 + eps^2) - eps`` with the toolbox's image gradient
    (:func:`fpntools.operators.gradient`: forward differences, Neumann boundary)."""
    g = gradient(u, dims=(1, 2))  # (B, 2, C, H, W)
    return (torch.sqrt(g.pow(2).sum(1) + eps * eps) - eps).flatten(1).sum(1)


class LatentProblem:
    r"""``loss(z, x) = 1/2 ||M (h(z) - y)||^2 + lam/2 ||x - x_prior||^2 + tv TV_eps(h(z))`` for a
    :class:`DEQDecoder` (batch of images); ``x_prior`` defaults to 0 and is the starting latent;
    ``tv = 0`` (default) is the pure generative prior.

    ``f(z, x)`` is the decoder's DEQ layer; ``image(x)`` decodes with an accurate equilibrium solve.
    """

    def __init__(
        self,
        model: DEQDecoder,
        y: Tensor,
        mask: Tensor | None = None,
        lam: float = 0.05,
        tv: float = 0.0,
        tv_eps: float = 1e-2,
        x_prior: Tensor | None = None,
    ) -> None:
        if y.dim() != 4 or y.shape[1] != 1:
            raise ValueError(f"y must have shape (B, 1, H, W), got {tuple(y.shape)}")
        if y.shape[-1] % 4 or y.shape[-2] % 4:
            raise ValueError(f"image sides must be multiples of 4, got {tuple(y.shape[-2:])}")
        self.model = model
        self.y = y
        self.mask = mask
        self.lam = float(lam)
        self.tv = float(tv)
        self.tv_eps = float(tv_eps)
        b, _, h, w = y.shape
        shape = (b, *model.latent_shape(h, w))
        if x_prior is not None and tuple(x_prior.shape) != shape:
            raise ValueError(f"x_prior must have the latent shape {shape}, got {tuple(x_prior.shape)}")
        self.x_prior = y.new_zeros(shape) if x_prior is None else x_prior.detach().to(y.dtype)

    def f(self, z: Tensor, x: Tensor) -> Tensor:
        return self.model.layer(z, x)

    def loss(self, z: Tensor, x: Tensor) -> Tensor:
        r = self.model.head(z) - self.y
        if self.mask is not None:
            r = r * self.mask
        out = 0.5 * r.pow(2).flatten(1).sum(1) + 0.5 * self.lam * (x - self.x_prior).pow(2).flatten(1).sum(1)
        if self.tv > 0:
            out = out + self.tv * smooth_tv(self.model.head(z), self.tv_eps)
        return out

    def to(self, dtype: torch.dtype) -> "LatentProblem":
        """The same problem in ``dtype`` (a converted copy of the decoder, the observation and the prior centre),
        e.g. float64 for finite-difference checks."""
        model = copy.deepcopy(self.model).to(dtype)
        mask = None if self.mask is None else self.mask.to(dtype)
        return LatentProblem(model, self.y.to(dtype), mask, self.lam, self.tv, self.tv_eps, self.x_prior.to(dtype))

    def x0(self) -> Tensor:
        return self.x_prior.clone()

    def z0(self, x: Tensor) -> Tensor:
        return self.model.initial_state(x)

    def image(self, x: Tensor) -> Tensor:
        z = solve_equilibrium(self.f, x.detach(), self.z0(x), tol=1e-5, max_iter=100)
        with torch.no_grad():
            return self.model.head(z).clamp(0, 1)

    def objective(self, x: Tensor) -> Tensor:
        """True objective ``L(x)`` per sample (accurate equilibrium)."""
        z = solve_equilibrium(self.f, x.detach(), self.z0(x), tol=1e-6, max_iter=150)
        with torch.no_grad():
            return self.loss(z, x)


def _as_batch(img: np.ndarray, dtype: torch.dtype = torch.float32) -> Tensor:
    return torch.as_tensor(np.ascontiguousarray(img), dtype=dtype)[None, None]


_OFFSETS = ((0, 0), (2, 2), (0, 2), (2, 0))


def shifted_batch(img: np.ndarray, shifts: int) -> Tensor:
    """``(S, 1, H+4, W+4)`` reflect-padded copies of ``img`` offset by ``_OFFSETS[:S]`` (S=1: no padding)."""
    if shifts == 1:
        return _as_batch(img)
    if not 1 <= shifts <= len(_OFFSETS):
        raise ValueError(f"shifts must be 1..{len(_OFFSETS)}, got {shifts}")
    pads = [np.pad(img, ((dy, 4 - dy), (dx, 4 - dx)), mode="reflect") for dy, dx in _OFFSETS[:shifts]]
    return torch.as_tensor(np.stack(pads)[:, None], dtype=torch.float32)


def unshift_mean(batch: Tensor, shape: tuple[int, int]) -> np.ndarray:
    """Average the aligned crops of a batch made by :func:`shifted_batch`."""
    h, w = shape
    arr = batch[:, 0].detach().numpy().astype(np.float64)
    if arr.shape[0] == 1 and arr.shape[1:] == (h, w):
        return arr[0]
    return np.mean([arr[i, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(_OFFSETS[: arr.shape[0]])], axis=0)


def make_problem(model: DEQDecoder, y: np.ndarray, mask: np.ndarray | None, cfg: TaskConfig) -> LatentProblem:
    """The batched latent problem for ``y`` (with ``cfg.shifts`` shifted copies); with ``cfg.amortized`` the
    prior is centred on the encoder's estimate ``E(y, mask, cfg.sigma)``."""
    yb = shifted_batch(y, cfg.shifts)
    mb = None if mask is None else shifted_batch(mask.astype(np.float64), cfg.shifts)
    x_prior = None
    if cfg.amortized:
        with torch.no_grad():
            x_prior = model.encode(yb, mb, cfg.sigma)  # the encoder ignores missing pixels
    return LatentProblem(model, yb, mb, cfg.lam, cfg.tv, x_prior=x_prior)


def keep_known(out: np.ndarray, y: np.ndarray, mask: np.ndarray | None, sigma: float) -> np.ndarray:
    """Noiseless inpainting (``mask`` given, ``sigma == 0``): the known pixels of ``y`` replace the decoding."""
    return np.where(mask, y, out) if mask is not None and sigma == 0 else out


def restore_amortized(model: DEQDecoder, y: np.ndarray, mask: np.ndarray | None, cfg: TaskConfig) -> np.ndarray:
    """The encoder's restoration ``h(z*(x_hat))`` alone (no optimisation): the starting point of both solvers."""
    prob = make_problem(model, y, mask, replace(cfg, amortized=True))
    return unshift_mean(prob.image(prob.x_prior), y.shape)


def joint_config(cfg: TaskConfig, inpainting: bool) -> AugmentedConfig:
    """The joint solver's settings for a task: ``cfg.augmented`` with the latent step ``cfg.step_size`` (default
    :func:`step_for_lam`) and, for Anderson without an explicit ``m``, the memory :data:`ANDERSON_MEMORY` of
    the task kind (``inpainting``: a mask is given)."""
    step = step_for_lam(cfg.lam) if cfg.step_size is None else cfg.step_size
    options = dict(cfg.augmented.solver_options)
    if cfg.augmented.solver == "anderson":
        options.setdefault("m", ANDERSON_MEMORY["inpaint" if inpainting else "denoise"])
    return replace(cfg.augmented, step_size=step, solver_options=options)


def restore_augmented(
    model: DEQDecoder, y: np.ndarray, mask: np.ndarray | None, cfg: TaskConfig, counter: Counter | None = None
) -> tuple[np.ndarray, AugmentedResult]:
    """Restore ``y`` (``mask``: known pixels) by the augmented joint fixed point; returns the image and result."""
    prob = make_problem(model, y, mask, cfg)
    x0 = prob.x0()
    with torch.no_grad():
        res = augmented_solve(prob.f, prob.loss, x0, prob.z0(x0), None, joint_config(cfg, mask is not None),
                              counter=counter)
    return unshift_mean(prob.image(res.x), y.shape), res


def restore_naive(
    model: DEQDecoder, y: np.ndarray, mask: np.ndarray | None, cfg: TaskConfig, counter: Counter | None = None
) -> tuple[np.ndarray, NaiveResult]:
    """Restore ``y`` by the nested baseline (outer Adam over the latent, full DEQ solve per step)."""
    prob = make_problem(model, y, mask, cfg)
    x0 = prob.x0()
    res = naive_solve(prob.f, prob.loss, x0, prob.z0(x0), None, cfg.naive, counter=counter)
    return unshift_mean(prob.image(res.x), y.shape), res


# ----------------------------------------------------------------------------------------------------------
# TV baselines and masks


def tv_denoise(y: np.ndarray, weight: float) -> np.ndarray:
    """Isotropic TV denoising (Chambolle): ``argmin_u 1/2 ||u - y||^2 + weight * TV(u)``."""
    from skimage.restoration import denoise_tv_chambolle

    return np.clip(denoise_tv_chambolle(y, weight=weight), 0, 1)


def tv_inpaint(y: np.ndarray, mask: np.ndarray, weight: float = 0.02, iters: int = 300) -> np.ndarray:
    r"""TV inpainting ``min_u TV(u)`` s.t. ``u = y`` on known pixels, by alternating a TV prox with the data
    projection (``u <- P_data(prox_{w TV}(u))``), started from the mean of the known pixels; ``weight``
    decays geometrically to ``weight / 20`` over the iterations."""
    from skimage.restoration import denoise_tv_chambolle

    u = np.where(mask, y, y[mask].mean())
    for k in range(iters):
        w = weight * (1 / 20) ** (k / max(iters - 1, 1))
        u = denoise_tv_chambolle(u, weight=w, max_num_iter=20)
        u = np.where(mask, y, u)
    return np.clip(u, 0, 1)


def block_mask(shape: tuple[int, int], block: int = 8, fraction: float = 0.25, seed: int = 0) -> np.ndarray:
    """Known-pixel mask with a random ``fraction`` of ``block x block`` blocks missing (False)."""
    rng = np.random.default_rng(seed)
    h, w = shape
    gh, gw = -(-h // block), -(-w // block)
    missing = rng.random((gh, gw)) < fraction
    full = np.kron(missing, np.ones((block, block), dtype=bool))[:h, :w]
    return ~full
