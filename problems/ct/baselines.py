"""Classical CT reconstructions: filtered backprojection (ASTRA) and TV-regularised least squares (PDHG).

FBP
    ASTRA's ``FBP`` (CPU, parallel beam) or ``FBP_CUDA`` (GPU; parallel and fan beam) with a selectable
    filter (:data:`FBP_FILTERS`), clipped to ``[0, 1]``.

TV
    ``min_x 0.5 ||A x - y||_2^2 + lam TV(x)  s.t.  0 <= x <= 1``, with the isotropic total variation
    ``TV(x) = sum_ij ||(D x)_ij||_2`` of forward differences ``D`` (Neumann boundary: the difference across
    the last row / column is 0). Solved by the primal-dual hybrid gradient method (Chambolle & Pock 2011)
    on the saddle point problem with ``K = [A; mu D]`` (``mu = ||A|| / sqrt 8`` balances the two blocks),
    ``min_x F(K x) + G(x)``, ``F(p, q) = 0.5 ||p - y||^2 + (lam / mu) ||q||_{2,1}``, ``G`` = box indicator,
    iterated with the toolbox's :class:`fpntools.operators.PDHG` fixed-point map (state ``(x, (p, q))``) by the
    engine's solver loop (:func:`fpntools.fixed_point`, Picard; every image stops on its own residual):

    ``x+ = clip(x - tau (A^T p + mu D^T q), 0, 1)``                 (prox of the box indicator)
    ``xb = x+ + theta (x+ - x)``
    ``p+ = (p + sigma (A xb - y)) / (1 + sigma)``                  (prox of ``sigma F1*``, ``F1 = 0.5||. - y||^2``)
    ``q+ = P_{|q_ij| <= lam / mu}(q + sigma mu D xb)``             (prox of ``sigma F2*``, ``F2 = (lam/mu)||.||_{2,1}``)

    with ``sigma tau ||K||^2 < 1`` and ``||K||^2 <= ||A||^2 + 8 mu^2 = 2 ||A||^2`` (``||A||`` from
    :meth:`fpntools.operators.LinearOperator.norm`). ``D`` / ``D^T`` are :func:`fpntools.operators.gradient` and
    ``-``:func:`fpntools.operators.divergence`, the ``q`` step :func:`fpntools.operators.prox_l21_conjugate`.
    Batched over sinograms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Literal, Sequence

import numpy as np
import torch
from torch import Tensor

from fpntools.fixed_point import fixed_point
from fpntools.info import FixedPointInfo
from fpntools.metrics import psnr
from fpntools.operators import PDHG, LinearOperator, divergence, gradient, prox_l21_conjugate, tv_norm
from problems.ct.geometry import CTGeometry

__all__ = [
    "FBP_FILTERS",
    "DEFAULT_TV_LAM",
    "FBP",
    "fbp",
    "tv_objective",
    "TVConfig",
    "TVResult",
    "tv_pdhg",
    "tv_reconstruct",
    "tune_tv_lambda",
    "StackedTVOperator",
    "TVWeightRule",
    "TV_WEIGHT_RULE",
    "tv_weight",
]

FBP_FILTERS = ("ram-lak", "shepp-logan", "cosine", "hamming", "hann")

#: TV weight tuned on the 16 validation phantoms of the default data set (random ellipses, default geometry, noise
#: 0.015, 500 PDHG iterations; ``fpntools ct tune-tv``): PSNR 35.45 dB at 0.75 vs 35.37 at 0.56 and 35.33 at 1.0.
DEFAULT_TV_LAM = 0.75


@dataclass(frozen=True)
class TVWeightRule:
    """The TV weight as a function of the geometry and the relative noise level,

        ``lam = scale * beam_factor * (n_angles / 30)^angle_power * (noise / 0.015)^noise_power * (n / 128)^size_power``

    (``beam_factor`` = 1 for parallel beam, ``fan_factor`` for fan beam; ``n`` the image side). The objective
    ``0.5 ||A x - y||^2`` grows with the number of rays, so the weight grows with the angles; the optimal weight of
    a denoising problem grows with the noise. The coefficients are a least-squares fit (in ``log lam``) of the
    weights that maximise the mean validation PSNR per geometry and noise level (``fpntools ct tune-tv --rule``;
    values and the table in ``docs/ct.md``): validation sets only, never the test images of ``ct bench``.
    """

    scale: float = 0.799
    angle_power: float = 0.3415
    noise_power: float = 1.421
    fan_factor: float = 1.197
    size_power: float = 1.0

    def __call__(self, geometry: CTGeometry, noise: float | Tensor) -> float | Tensor:
        beam = self.fan_factor if geometry.beam == "fan" else 1.0
        base = self.scale * beam * (geometry.n_angles / 30) ** self.angle_power * (geometry.image_size / 128) ** self.size_power
        if isinstance(noise, Tensor):
            return base * (noise.clamp_min(1e-4) / 0.015) ** self.noise_power
        return base * (max(float(noise), 1e-4) / 0.015) ** self.noise_power


#: the fitted rule (see :class:`TVWeightRule`): ``fpntools ct tune-tv --n-val 6 --iters 250`` (par20/30/60, fan60 at
#: noise 0.005/0.015/0.03; best weights 0.18-3.2 on a 10^(k/4) grid).
TV_WEIGHT_RULE = TVWeightRule()


def tv_weight(geometry: CTGeometry, noise: float | Tensor) -> float | Tensor:
    """The tuned TV weight of ``geometry`` at relative noise level ``noise`` (a number or ``(B,)`` tensor):
    :data:`TV_WEIGHT_RULE`."""
    return TV_WEIGHT_RULE(geometry, noise)


# ============================================================================================== FBP
class FBP:
    """Filtered backprojection with ASTRA for one geometry and filter; ``FBP(...)(sinograms)``.

    Args:
        geometry: acquisition geometry.
        filter: one of :data:`FBP_FILTERS`.
        clip: clip the result to ``[0, 1]``.
        backend: ``"auto"`` (``FBP_CUDA`` when ASTRA has CUDA, else CPU ``FBP``), ``"cpu"`` or ``"cuda"``.
        frequency_scaling: optional ASTRA ``FilterD`` (cut-off as a fraction of Nyquist, in ``(0, 1]``).

    The CPU ``FBP`` of ASTRA supports parallel beam only; fan beam needs ``FBP_CUDA``.
    """

    def __init__(
        self,
        geometry: CTGeometry | None = None,
        filter: str = "ram-lak",
        clip: bool = True,
        backend: Literal["auto", "cpu", "cuda"] = "auto",
        frequency_scaling: float | None = None,
    ) -> None:
        from problems.ct.projector import astra_has_cuda

        self.geometry = geometry or CTGeometry()
        f = filter.lower().replace("_", "-").replace("ramlak", "ram-lak").replace("hanning", "hann")
        if f not in FBP_FILTERS:
            raise ValueError(f"unknown FBP filter {filter!r}; use one of {FBP_FILTERS}")
        self.filter = f
        self.clip = clip
        if backend not in ("auto", "cpu", "cuda"):
            raise ValueError(f"backend must be 'auto', 'cpu' or 'cuda', got {backend!r}")
        cuda = backend == "cuda" or (backend == "auto" and astra_has_cuda())
        if backend == "cuda" and not astra_has_cuda():
            raise RuntimeError("backend='cuda' needs ASTRA built with CUDA and a visible GPU")
        if not cuda and self.geometry.beam != "parallel":
            raise NotImplementedError(
                "ASTRA's CPU FBP supports parallel beam only; fan-beam FBP needs a GPU (FBP_CUDA). "
                "Use tv_reconstruct for fan beam on the CPU."
            )
        if frequency_scaling is not None and not 0 < frequency_scaling <= 1:
            raise ValueError(f"frequency_scaling must lie in (0, 1], got {frequency_scaling}")
        self.frequency_scaling = frequency_scaling
        self.cuda = cuda

    def _run(self, sinos: np.ndarray) -> np.ndarray:
        import astra

        g = self.geometry
        vg, pg = g.astra_vol_geom(), g.astra_proj_geom()
        sid = astra.data2d.create("-sino", pg)
        rid = astra.data2d.create("-vol", vg)
        pid = None
        aid = None
        try:
            cfg = astra.astra_dict("FBP_CUDA" if self.cuda else "FBP")
            cfg["ReconstructionDataId"] = rid
            cfg["ProjectionDataId"] = sid
            if not self.cuda:
                pid = astra.create_projector(g.projector_type, pg, vg)
                cfg["ProjectorId"] = pid
            opt: dict[str, Any] = {"FilterType": self.filter}
            if self.frequency_scaling is not None:
                opt["FilterD"] = float(self.frequency_scaling)
            cfg["option"] = opt
            aid = astra.algorithm.create(cfg)
            out = np.empty((sinos.shape[0], *g.image_shape), np.float32)
            for b in range(sinos.shape[0]):
                astra.data2d.store(sid, sinos[b])
                astra.algorithm.run(aid)
                out[b] = astra.data2d.get(rid)
            return out
        finally:
            if aid is not None:
                astra.algorithm.delete(aid)
            if pid is not None:
                astra.projector.delete(pid)
            astra.data2d.delete([sid, rid])

    def __call__(self, sinograms: Tensor | np.ndarray) -> Tensor:
        """Reconstruct ``(N, n_angles, n_detectors)`` (or one sinogram) -> ``(N, n, n)`` float32 tensor."""
        y = torch.as_tensor(np.asarray(sinograms) if not isinstance(sinograms, Tensor) else sinograms)
        yb, batched = self.geometry.check_sinogram(y)
        arr = yb.detach().cpu().to(torch.float32).numpy()
        out = torch.from_numpy(self._run(np.ascontiguousarray(arr)))
        if self.clip:
            out.clamp_(0.0, 1.0)
        out = out.to(device=y.device)
        return out if batched else out[0]


def fbp(
    sinograms: Tensor | np.ndarray,
    geometry: CTGeometry | None = None,
    filter: str = "ram-lak",
    clip: bool = True,
    backend: Literal["auto", "cpu", "cuda"] = "auto",
    frequency_scaling: float | None = None,
) -> Tensor:
    """Filtered backprojection of ``sinograms``; see :class:`FBP`."""
    return FBP(geometry, filter, clip, backend, frequency_scaling)(sinograms)


# ============================================================================================== TV
def tv_objective(x: Tensor, y: Tensor, op: Callable[[Tensor], Tensor], lam: float | Tensor) -> Tensor:
    """``0.5 ||A x - y||^2 + lam TV(x)`` per image ``(B,)`` (the box constraint is not checked; ``TV`` is
    :func:`fpntools.operators.tv_norm`)."""
    r = op(x) - y
    return 0.5 * r.pow(2).flatten(1).sum(dim=1) + torch.as_tensor(lam, dtype=x.dtype) * tv_norm(x)


class StackedTVOperator(LinearOperator):
    """``K x = [A x; mu D x]`` flattened to one vector per sample: ``(B, n, n) -> (B, m + 2 n^2)``;
    ``K^T [p; q] = A^T p + mu D^T q`` with ``D`` = :func:`fpntools.operators.gradient` (forward differences,
    Neumann boundary) and ``D^T = -div`` (:func:`fpntools.operators.divergence`). ``||K||^2 <= ||A||^2 + 8 mu^2``."""

    def __init__(self, op: Any, mu: float) -> None:
        self.n_data = int(np.prod(op.out_shape))
        n_img = int(np.prod(op.in_shape))
        super().__init__(in_shape=tuple(op.in_shape), out_shape=(self.n_data + 2 * n_img,))
        object.__setattr__(self, "op", op)  # shared, not a submodule
        self.mu = float(mu)

    def _forward(self, x: Tensor) -> Tensor:
        b = x.shape[0]
        ax = self.op._forward(x).reshape(b, -1)
        return torch.cat([ax, self.mu * gradient(x).reshape(b, -1)], dim=1)

    def _adjoint(self, v: Tensor) -> Tensor:
        b = v.shape[0]
        p = v[:, : self.n_data].reshape(b, *self.op.out_shape)
        q = v[:, self.n_data :].reshape(b, 2, *self.op.in_shape)
        return self.op._adjoint(p) + self.mu * -divergence(q)


@dataclass(frozen=True)
class TVConfig:
    """Settings of :func:`tv_reconstruct`.

    Attributes:
        lam: TV weight ``lam`` (see :func:`tune_tv_lambda`).
        n_iter: maximum PDHG iterations.
        tol: per image, stop when the fixed-point residual of the PDHG state ``z = (x, (p, q))`` satisfies
            ``||T(z) - z|| / ||T(z)|| <= tol`` (the engine's criterion, :func:`fpntools.fixed_point`); ``0`` runs
            exactly ``n_iter`` iterations and returns the last iterate.
        step_ratio: ``r = sigma / tau``; ``tau = 0.99 / (||K|| sqrt(r))``, ``sigma = 0.99 sqrt(r) / ||K||``
            (``sigma tau ||K||^2 = 0.98``). Larger ``r`` = smaller primal steps, larger dual steps.
        theta: extrapolation parameter (1: Chambolle-Pock).
        box: ``(lo, hi)`` bounds of the image values; ``None`` drops the constraint.
    """

    lam: float = DEFAULT_TV_LAM
    n_iter: int = 500
    tol: float = 1e-5
    step_ratio: float = 10.0
    theta: float = 1.0
    box: tuple[float, float] | None = (0.0, 1.0)

    def __post_init__(self) -> None:
        if self.n_iter < 1:
            raise ValueError(f"n_iter must be >= 1, got {self.n_iter}")
        if not self.tol >= 0:
            raise ValueError(f"tol must be >= 0, got {self.tol}")
        if not self.step_ratio > 0:
            raise ValueError(f"step_ratio must be > 0, got {self.step_ratio}")


@dataclass
class TVResult:
    """What :func:`tv_reconstruct` returns with ``return_result=True``.

    Attributes:
        x: the reconstruction(s).
        info: the engine's :class:`~fpntools.info.FixedPointInfo` of the PDHG solve (per-image steps,
            residuals and status).
        objective: ``0.5 ||A x - y||^2 + lam TV(x)`` per image.
    """

    x: Tensor
    info: FixedPointInfo
    objective: Tensor

    @property
    def iterations(self) -> int:
        """The largest number of PDHG iterations any image took."""
        return int(self.info.steps.max())


def tv_pdhg(y: Tensor, op: Any, config: TVConfig, op_norm: float | None = None) -> PDHG:
    """The PDHG fixed-point map of ``min_{x in box} 0.5||A x - y||^2 + lam TV(x)`` for the batch ``y``
    (``(B, *op.out_shape)``), see the module docstring; ``config.lam`` may be a ``(B,)`` tensor.

    ``op_norm``: ``||A||`` if known (default: :meth:`~fpntools.operators.LinearOperator.norm`).
    """
    norm_a = float(op.norm()) if op_norm is None else float(op_norm)
    mu = norm_a / math.sqrt(8.0)
    norm_k = math.sqrt(norm_a**2 + 8.0 * mu**2)
    r = math.sqrt(config.step_ratio)
    tau, sigma = 0.99 / (norm_k * r), 0.99 * r / norm_k
    lam = torch.as_tensor(config.lam, dtype=y.dtype, device=y.device)
    if lam.ndim > 1 or (lam.ndim == 1 and lam.shape[0] not in (1, y.shape[0])):
        raise ValueError(f"lam has shape {tuple(lam.shape)} for {y.shape[0]} sinograms; give a number or (B,)")
    if bool((lam < 0).any()):
        raise ValueError(f"lam must be >= 0, got {config.lam}")
    K = StackedTVOperator(op, mu)
    n_a = K.n_data
    img_shape = tuple(op.in_shape)
    radius = lam / mu  # pointwise bound on |q_ij|
    y_flat = y.reshape(y.shape[0], -1)
    box = config.box

    def prox_f_conj(v: Tensor, s: float) -> Tensor:
        # f(p, q) = 0.5 ||p - y||^2 + (lam / mu) ||q||_{2,1}:  prox of s f* blockwise
        p = (v[:, :n_a] - s * y_flat) / (1.0 + s)
        q = prox_l21_conjugate(v[:, n_a:].reshape(v.shape[0], 2, *img_shape), radius)
        return torch.cat([p, q.reshape(v.shape[0], -1)], dim=1)

    def prox_g(v: Tensor, t: float) -> Tensor:
        return v if box is None else v.clamp(box[0], box[1])

    return PDHG(K, prox_f_conj, prox_g, tau=tau, sigma=sigma, theta=config.theta)


def tv_reconstruct(
    sinograms: Tensor,
    op: Any,
    config: TVConfig | None = None,
    x0: Tensor | None = None,
    return_result: bool = False,
    op_norm: float | None = None,
    **overrides: Any,
) -> Tensor | TVResult:
    """TV-regularised least squares ``argmin_{0<=x<=1} 0.5||A x - y||^2 + lam TV(x)`` by PDHG (batched).

    The PDHG map (:func:`tv_pdhg`, :class:`fpntools.operators.PDHG`) is iterated by the engine's solver loop
    (:func:`fpntools.fixed_point`, Picard, no autograd), which stops every image on its own residual.

    Args:
        sinograms: ``(B, *op.out_shape)`` or one sinogram.
        op: the CT operator (a :class:`fpntools.operators.LinearOperator`, e.g. ``ct_operator(geometry)``).
        config: :class:`TVConfig`; keyword ``overrides`` replace its fields (``lam=0.5, n_iter=1000``).
            ``lam`` may also be a ``(B,)`` tensor (one weight per sinogram).
        x0: initial image (default zeros).
        return_result: return a :class:`TVResult` (solver info, objective).
        op_norm: ``||A||`` if known (saves a power iteration per call).
    """
    cfg = config or TVConfig()
    if overrides:
        cfg = TVConfig(**{**cfg.__dict__, **overrides})
    out_shape = tuple(op.out_shape)
    y = torch.as_tensor(sinograms)
    batched = y.ndim == len(out_shape) + 1
    if not batched:
        y = y[None]
    if tuple(y.shape[1:]) != out_shape:
        raise ValueError(f"sinograms have shape {tuple(sinograms.shape)}; expected (B, {out_shape}) or {out_shape}")
    T = tv_pdhg(y, op, cfg, op_norm)
    img_shape = tuple(op.in_shape)
    x0_ = torch.zeros((y.shape[0], *img_shape), dtype=y.dtype, device=y.device) if x0 is None else x0
    with torch.no_grad():
        state, info = fixed_point(T, T.initial_state(x0_), solver="picard", backward="jfb", tol=cfg.tol,
                                  max_iter=cfg.n_iter, divergence_factor=None)
    x = T.solution(state)
    if not return_result:
        return x if batched else x[0]
    with torch.no_grad():
        obj = tv_objective(x, y, op, torch.as_tensor(cfg.lam, dtype=y.dtype, device=y.device))
    return TVResult(x if batched else x[0], info, obj)


def tune_tv_lambda(
    images: Tensor,
    sinograms: Tensor,
    op: Any,
    lambdas: Sequence[float] | None = None,
    config: TVConfig | None = None,
    refine: int = 1,
    verbose: bool = False,
) -> tuple[float, dict[float, float]]:
    """Pick the TV weight maximising the mean PSNR on a validation split.

    A log-spaced grid (default ``lam = 10^k``, ``k = -1, -0.5, ..., 1.5``) is evaluated; then ``refine``
    times a finer grid (factors ``10^{+-1/4}``, ``10^{+-1/8}``, ...) around the best value.
    Returns ``(best_lam, {lam: mean PSNR})``.
    """
    cfg = config or TVConfig()
    grid = list(lambdas) if lambdas is not None else [10.0**k for k in np.arange(-1.0, 1.51, 0.5)]
    table: dict[float, float] = {}
    op_norm = float(op.norm())

    def score(lam: float) -> float:
        if lam not in table:
            x = tv_reconstruct(sinograms, op, cfg, lam=float(lam), op_norm=op_norm)
            table[lam] = float(psnr(x, images).mean())
            if verbose:
                print(f"lam={lam:.4g}: PSNR {table[lam]:.3f} dB")
        return table[lam]

    for lam in grid:
        score(lam)
    best = max(table, key=table.get)  # type: ignore[arg-type]
    step = 0.25 if lambdas is None else None
    if step is None and len(grid) > 1:
        s = np.sort(np.log10(np.asarray(grid, dtype=float)))
        step = float(np.min(np.diff(s))) / 2 if len(s) > 1 else 0.25
    for _ in range(refine):
        for f in (10.0 ** (-step), 10.0**step):  # type: ignore[operator]
            score(best * f)
        best = max(table, key=table.get)  # type: ignore[arg-type]
        step /= 2  # type: ignore[operator]
    return best, dict(sorted(table.items()))
