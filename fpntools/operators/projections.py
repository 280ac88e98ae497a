"""Euclidean projections ``P_C(x) = argmin_{z in C} ||z - x||_2`` onto closed convex sets, batched over dim 0.

Each set is a :class:`Projection` (an ``nn.Module``; its tensors are buffers, so ``.to()`` moves them).
``P(x)`` projects a batch ``x`` of shape ``(B, ...)``; ``P(x, tau)`` accepts and ignores a step ``tau`` because
a projection is the proximal map of the indicator of its set for every step, so a projection can be passed
wherever a prox ``prox(x, tau)`` is expected (see :mod:`fpntools.operators.splitting`). Projections are
differentiable almost everywhere with autograd (piecewise-affine maps), except where stated.

Where the set has one scalar per sample (a radius, a total, bounds of a hyperslab) a 1-D tensor of length ``B``
gives one value per sample.

Function forms: :func:`project_box`, :func:`project_nonnegative`, :func:`project_l2_ball`,
:func:`project_simplex`, :func:`project_simplex_product`, :func:`project_hyperslab`.

:func:`project_data_ball_relaxed` is the relaxed (subgradient) projection onto the data ball
``{x : ||A x - d|| <= eps}`` for a general linear ``A`` (no closed-form projection exists; see
:class:`DataBall` for ``A A^T = nu I``, where both coincide).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from fpntools.operators._util import check_tensor as _check_batch
from fpntools.operators._util import per_sample as _per_sample
from fpntools.operators.linear import LinearOperator, SparseOperator

__all__ = [
    "Projection",
    "Box",
    "Nonnegative",
    "L2Ball",
    "Simplex",
    "SimplexProduct",
    "AffineSet",
    "Hyperslab",
    "DataBall",
    "project_data_ball_relaxed",
    "project_box",
    "project_nonnegative",
    "project_l2_ball",
    "project_simplex",
    "project_simplex_product",
    "project_hyperslab",
]


# ---------------------------------------------------------------------- helpers
def _flat_dot(a: Tensor, x: Tensor) -> Tensor:
    """Per-sample inner product ``<a, x>`` over all non-batch dims, shape ``(B,)``."""
    return (a * x).reshape(x.shape[0], -1).sum(dim=1)


def _view_b(v: Tensor, x: Tensor) -> Tensor:
    """``(B,)`` -> ``(B, 1, ..., 1)`` matching ``x``."""
    return v.reshape(-1, *([1] * (x.ndim - 1)))


# ---------------------------------------------------------------------- function forms
def project_box(x: Tensor, lo: float | Tensor | None = None, hi: float | Tensor | None = None) -> Tensor:
    """``P(x) = min(max(x, lo), hi)`` elementwise (``lo``/``hi`` broadcast against ``x``; ``None``: unbounded)."""
    if lo is None and hi is None:
        return x
    if isinstance(lo, Tensor) or isinstance(hi, Tensor):
        lo_t = None if lo is None else torch.as_tensor(lo, dtype=x.dtype, device=x.device)
        hi_t = None if hi is None else torch.as_tensor(hi, dtype=x.dtype, device=x.device)
        return torch.clamp(x, min=lo_t, max=hi_t)
    return torch.clamp(x, min=lo, max=hi)


def project_nonnegative(x: Tensor) -> Tensor:
    """``P(x) = max(x, 0)`` elementwise."""
    return x.clamp_min(0)


def project_l2_ball(x: Tensor, radius: float | Tensor = 1.0, center: Tensor | None = None) -> Tensor:
    """Projection onto ``{z : ||z - c||_2 <= r}`` per sample (norm over all non-batch dims):
    ``P(x) = c + (x - c) min(1, r / ||x - c||)``."""
    _check_batch(x, "project_l2_ball")
    r = _per_sample(radius, x, "radius")
    d = x if center is None else x - center.to(dtype=x.dtype, device=x.device)
    n = _view_b(d.reshape(d.shape[0], -1).norm(dim=1), x)
    scale = torch.where(n > r, r / n.clamp_min(torch.finfo(x.dtype).tiny), torch.ones_like(n))
    out = d * scale
    return out if center is None else out + center.to(dtype=x.dtype, device=x.device)


def _simplex_threshold(u: Tensor, t: Tensor, valid: Tensor | None = None) -> Tensor:
    """Threshold ``theta`` (keepdim on the last axis) of the simplex projection for ``u`` sorted descending.

    ``rho = max{k : u_k - (sum_{j<=k} u_j - t) / k > 0}``, ``theta = (sum_{j<=rho} u_j - t) / rho``.
    """
    n = u.shape[-1]
    k = torch.arange(1, n + 1, dtype=u.dtype, device=u.device)
    css = u.cumsum(dim=-1) - t
    cond = u * k > css
    if valid is not None:
        cond = cond & valid
    rho = (cond.to(u.dtype) * k).amax(dim=-1, keepdim=True).clamp_min(1)
    return css.gather(-1, rho.long() - 1) / rho


def project_simplex(x: Tensor, total: float | Tensor = 1.0) -> Tensor:
    """Projection onto the simplex ``{z >= 0, sum_i z_i = t}`` along the last dim (exact, sort-based).

    With ``u`` the entries sorted in decreasing order, ``rho = max{k : u_k > (sum_{j<=k} u_j - t)/k}``
    and ``theta = (sum_{j<=rho} u_j - t)/rho``, the projection is ``max(x - theta, 0)``
    (Held-Wolfe-Crowder 1974, Michelot 1986, Duchi et al. 2008); ``O(n log n)``.

    ``total`` is ``t >= 0``: a scalar or a tensor broadcastable to ``x.shape[:-1]``.
    """
    _check_batch(x, "project_simplex")
    if isinstance(total, (int, float)) and total < 0:
        raise ValueError(f"simplex total must be >= 0, got {total}")
    t = torch.as_tensor(total, dtype=x.dtype, device=x.device)
    if t.ndim > 0:
        t = t.unsqueeze(-1)
    u = torch.sort(x, dim=-1, descending=True).values
    theta = _simplex_threshold(u, t)
    return (x - theta).clamp_min(0)


def project_simplex_product(
    x: Tensor, sizes: Sequence[int], totals: float | Tensor | Sequence[float] = 1.0
) -> Tensor:
    """Projection onto a product of simplices over consecutive blocks of the last dim (see :class:`SimplexProduct`)."""
    return SimplexProduct(sizes, totals).to(device=x.device)(x)


def project_hyperslab(x: Tensor, a: Tensor, lo: float | Tensor = -math.inf, hi: float | Tensor = math.inf) -> Tensor:
    """Projection onto ``{z : lo <= <a, z> <= hi}``: ``P(x) = x - a (s - clip(s, lo, hi)) / ||a||^2``, ``s = <a, x>``."""
    return Hyperslab(a, lo, hi).to(device=x.device)(x)


# ---------------------------------------------------------------------- classes
class Projection(nn.Module):
    """Base class: ``P(x)`` (or ``P(x, tau)``, ``tau`` ignored) returns the projection of the batch ``x``."""

    def project(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor, tau: Any = None) -> Tensor:
        return self.project(x)

    @torch.no_grad()
    def distance(self, x: Tensor) -> Tensor:
        """``dist(x, C) = ||x - P(x)||`` per sample, shape ``(B,)``."""
        return (x - self.project(x)).reshape(x.shape[0], -1).norm(dim=1)


def _register(module: nn.Module, name: str, value: float | Tensor | None) -> None:
    """Keep a tensor as a buffer (so ``.to()`` moves it) and a number / None as a plain attribute."""
    if isinstance(value, Tensor):
        module.register_buffer(name, value.detach().clone())
    elif isinstance(value, np.ndarray):
        module.register_buffer(name, torch.as_tensor(value))
    else:
        setattr(module, name, None if value is None else float(value))


class Box(Projection):
    """``C = {x : lo <= x <= hi}`` elementwise; ``P(x) = min(max(x, lo), hi)``.

    ``lo`` / ``hi``: numbers, ``None`` (unbounded) or tensors broadcastable to the batch (per-sample shape or
    batched).
    """

    def __init__(self, lo: float | Tensor | None = None, hi: float | Tensor | None = None) -> None:
        super().__init__()
        if lo is not None and hi is not None:
            if bool((torch.as_tensor(lo) > torch.as_tensor(hi)).any()):
                raise ValueError("Box: lo must be <= hi everywhere (empty box)")
        _register(self, "lo", lo)
        _register(self, "hi", hi)

    def project(self, x: Tensor) -> Tensor:
        _check_batch(x, "Box")
        return project_box(x, self.lo, self.hi)


class Nonnegative(Projection):
    """``C = {x : x >= 0}``; ``P(x) = max(x, 0)``."""

    def project(self, x: Tensor) -> Tensor:
        _check_batch(x, "Nonnegative")
        return project_nonnegative(x)


class L2Ball(Projection):
    """``C = {x : ||x - c||_2 <= r}`` per sample; ``P(x) = c + (x - c) min(1, r / ||x - c||)``.

    ``radius``: ``r >= 0`` (number or ``(B,)`` tensor). ``center``: ``c`` of the per-sample shape or batched
    (default ``0``).
    """

    def __init__(self, radius: float | Tensor = 1.0, center: Tensor | None = None) -> None:
        super().__init__()
        if bool((torch.as_tensor(radius) < 0).any()):
            raise ValueError(f"L2Ball: radius must be >= 0, got {radius}")
        _register(self, "radius", radius)
        _register(self, "center", center)

    def project(self, x: Tensor) -> Tensor:
        return project_l2_ball(x, self.radius, self.center)


class Simplex(Projection):
    """``C = {x : x >= 0, sum_i x_i = t}`` along the last dim (sort-based exact projection, see
    :func:`project_simplex`). ``total``: ``t >= 0``, a number or a tensor broadcastable to ``x.shape[:-1]``."""

    def __init__(self, total: float | Tensor = 1.0) -> None:
        super().__init__()
        if bool((torch.as_tensor(total) < 0).any()):
            raise ValueError(f"Simplex: total must be >= 0, got {total}")
        _register(self, "total", total)

    def project(self, x: Tensor) -> Tensor:
        return project_simplex(x, self.total)


class SimplexProduct(Projection):
    """Product of simplices over consecutive blocks of the last dim:
    ``C = {x : x >= 0, sum_{i in block k} x_i = t_k}`` with blocks of lengths ``sizes``.

    The projection is separable: each block is projected onto its simplex (:func:`project_simplex`).
    Vectorised: equal sizes reshape to ``(..., K, s)``; unequal sizes gather into a ``(..., K, max(sizes))``
    array padded with ``-inf`` (padding never enters the support), then scatter ``max(x - theta_k, 0)`` back.
    No Python loop over blocks in either case.

    Args:
        sizes: block lengths (positive; their sum is the last dim of the input).
        totals: ``t_k >= 0``: a number (all blocks), a ``(K,)`` tensor / sequence or a batched ``(B, K)``
            tensor (one total per block and sample, e.g. OD demands).
    """

    def __init__(self, sizes: Sequence[int], totals: float | Tensor | Sequence[float] = 1.0) -> None:
        super().__init__()
        sizes = [int(s) for s in sizes]
        if not sizes or any(s <= 0 for s in sizes):
            raise ValueError(f"SimplexProduct: sizes must be a nonempty list of positive ints, got {sizes}")
        self.sizes: tuple[int, ...] = tuple(sizes)
        self.n = sum(sizes)
        self.equal = len(set(sizes)) == 1
        if not isinstance(totals, (int, float, Tensor)):
            totals = torch.as_tensor(list(totals), dtype=torch.get_default_dtype())
        if isinstance(totals, Tensor) and totals.ndim > 0 and totals.shape[-1] != len(sizes):
            raise ValueError(f"SimplexProduct: totals has last dim {totals.shape[-1]} for {len(sizes)} blocks")
        if bool((torch.as_tensor(totals) < 0).any()):
            raise ValueError("SimplexProduct: totals must be >= 0")
        _register(self, "totals", totals)
        K, smax = len(sizes), max(sizes)
        if not self.equal:
            offsets = torch.tensor([0] + sizes[:-1]).cumsum(0)
            j = torch.arange(smax)
            mask = j[None, :] < torch.tensor(sizes)[:, None]
            idx = torch.where(mask, offsets[:, None] + j[None, :], torch.zeros_like(j)[None, :])
            self.register_buffer("gather_idx", idx, persistent=False)
            self.register_buffer("mask", mask, persistent=False)
            self.register_buffer("block_id", torch.repeat_interleave(torch.arange(K), torch.tensor(sizes)), persistent=False)

    def project(self, x: Tensor) -> Tensor:
        _check_batch(x, "SimplexProduct")
        if x.shape[-1] != self.n:
            raise ValueError(f"SimplexProduct: last dim must be sum(sizes) = {self.n}, got shape {tuple(x.shape)}")
        K = len(self.sizes)
        t = torch.as_tensor(self.totals, dtype=x.dtype, device=x.device)
        t = t.unsqueeze(-1) if t.ndim > 0 else t  # (..., K, 1)
        lead = x.shape[:-1]
        if self.equal:
            xb = x.reshape(*lead, K, self.sizes[0])
            u = torch.sort(xb, dim=-1, descending=True).values
            theta = _simplex_threshold(u, t)
            return (xb - theta).clamp_min(0).reshape(x.shape)
        xp = x[..., self.gather_idx]  # (..., K, smax)
        xp = torch.where(self.mask, xp, torch.full_like(xp, -math.inf))
        u = torch.sort(xp, dim=-1, descending=True).values
        theta = _simplex_threshold(u, t, valid=self.mask)  # (..., K, 1)
        return (x - theta.squeeze(-1)[..., self.block_id]).clamp_min(0)

    def extra_repr(self) -> str:
        return f"sizes={self.sizes}"


class Hyperslab(Projection):
    """``C = {x : lo <= <a, x> <= hi}`` (``<.,.>`` over all non-batch dims; ``a != 0``).

    ``P(x) = x - a (s - clip(s, lo, hi)) / ||a||^2`` with ``s = <a, x>``. ``lo = hi`` is a hyperplane,
    ``lo = -inf`` a half-space. ``lo`` / ``hi``: numbers or ``(B,)`` tensors.
    """

    def __init__(self, a: Tensor, lo: float | Tensor = -math.inf, hi: float | Tensor = math.inf) -> None:
        super().__init__()
        a = torch.as_tensor(a)
        if not a.is_floating_point():
            a = a.to(torch.get_default_dtype())
        if a.numel() == 0 or float(a.detach().abs().max()) == 0.0:
            raise ValueError("Hyperslab: the normal vector a must be nonzero")
        if bool((torch.as_tensor(lo) > torch.as_tensor(hi)).any()):
            raise ValueError("Hyperslab: lo must be <= hi (empty set)")
        self.register_buffer("a", a.detach().clone())
        _register(self, "lo", lo)
        _register(self, "hi", hi)

    def project(self, x: Tensor) -> Tensor:
        _check_batch(x, "Hyperslab")
        a = self.a.to(dtype=x.dtype, device=x.device)
        if x[0].numel() != a.numel():
            raise ValueError(f"Hyperslab: samples have shape {tuple(x.shape[1:])}, a has shape {tuple(a.shape)}")
        a = a.reshape(x.shape[1:])
        s = _flat_dot(a, x)
        lo = torch.as_tensor(self.lo, dtype=x.dtype, device=x.device)
        hi = torch.as_tensor(self.hi, dtype=x.dtype, device=x.device)
        excess = s - torch.minimum(torch.maximum(s, lo), hi)
        return x - _view_b(excess / a.pow(2).sum(), x) * a


class DataBall(Projection):
    """``C = {x : ||A x - d||_2 <= eps}`` per sample, for ``A A^T = nu I`` (``A`` with orthogonal rows of equal
    norm, e.g. a row subset of an orthonormal transform, a sampling mask, or ``A = I`` when ``A is None``).

    Closed form: ``P(x) = x + A^T (Q(A x) - A x) / nu`` with ``Q`` the projection onto the ball ``B(d, eps)``:
    ``A P(x) = Q(Ax)`` is feasible, and ``x - P(x)`` lies in ``range(A^T)`` with
    ``<x - P(x), z - P(x)> = <Ax - Q(Ax), Az - Q(Ax)> / nu <= 0`` for every feasible ``z``. No closed form
    exists for general ``A``; the constructor refuses operators failing a randomized test of ``A A^T = nu I``.

    Args:
        A: a :class:`LinearOperator` or ``None`` (identity).
        d: data of the per-sample output shape, or batched ``(B, *out_shape)``.
        eps: radius ``>= 0`` (number or ``(B,)`` tensor).
        nu: the constant in ``A A^T = nu I``.
        check: run the randomized test of ``A A^T = nu I`` (float64 where possible).
    """

    def __init__(
        self, A: LinearOperator | None, d: Tensor, eps: float | Tensor, nu: float = 1.0, check: bool = True
    ) -> None:
        super().__init__()
        if A is not None and not isinstance(A, LinearOperator):
            raise TypeError(f"DataBall: A must be a LinearOperator or None, got {type(A).__name__}")
        if nu <= 0:
            raise ValueError(f"DataBall: nu must be > 0, got {nu}")
        if bool((torch.as_tensor(eps) < 0).any()):
            raise ValueError(f"DataBall: eps must be >= 0, got {eps}")
        self.A = A
        self.nu = float(nu)
        d = torch.as_tensor(d)
        if A is not None and tuple(d.shape[-len(A.out_shape):] if A.out_shape else ()) != A.out_shape:
            raise ValueError(f"DataBall: d has shape {tuple(d.shape)}, A has out_shape {A.out_shape}")
        self.register_buffer("d", d.detach().clone())
        _register(self, "eps", eps)
        if check and A is not None:
            self._check_tight(A)

    def _check_tight(self, A: LinearOperator) -> None:
        gen = torch.Generator().manual_seed(0)
        ref = next((t for t in list(A.parameters()) + list(A.buffers()) if t.is_floating_point()), None)
        dtype = ref.dtype if ref is not None else torch.float64
        device = ref.device if ref is not None else torch.device("cpu")
        with torch.no_grad():
            y = torch.randn((2, *A.out_shape), generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)
            err = float((A._forward(A._adjoint(y)) - self.nu * y).norm() / (self.nu * y.norm()))
        tol = 1e-8 if dtype == torch.float64 else 1e-4
        if not err <= tol:
            raise ValueError(
                f"DataBall: the closed-form projection needs A A^T = nu I (nu={self.nu}); the random test gives "
                f"relative error {err:.2e} > {tol:.0e}. Use a splitting scheme (e.g. PDHG) for general A."
            )

    def project(self, x: Tensor) -> Tensor:
        _check_batch(x, "DataBall")
        if self.A is None:
            return project_l2_ball(x, self.eps, self.d)
        y = self.A(x)
        q = project_l2_ball(y, self.eps, self.d)
        return x + self.A.A_adjoint(q - y) / self.nu


def project_data_ball_relaxed(
    x: Tensor, A: LinearOperator, d: Tensor, eps: float | Tensor, relaxation: float = 1.0
) -> Tensor:
    """Relaxed (subgradient) projection onto ``C = {x : ||A x - d||_2 <= eps}`` for a general linear ``A``.

    With ``g(x) = ||A x - d|| - eps`` (convex, ``C = {g <= 0}``), ``r = A x - d`` and the gradient
    ``grad g(x) = A^T r / ||r||``, the subgradient projection (Polyak 1969; Bauschke & Combettes,
    *Convex analysis and monotone operator theory*, sec. 29.6) maps ``x`` onto the half-space
    ``H(x) = {z : g(x) + <grad g(x), z - x> <= 0} ⊇ C`` that supports ``C`` at ``x``, relaxed by ``lam``:

        ``P(x) = x - lam (g(x))_+ / ||grad g(x)||^2 grad g(x)
              = x - lam (||r|| - eps)_+ ||r|| / ||A^T r||^2  A^T r``.

    Per sample (norms over all non-batch dims). Properties (``lam in (0, 2)``): ``P(x) = x`` exactly when
    ``x in C``; ``P`` is firmly quasi-nonexpansive for ``lam = 1`` and, in general,
    ``||P(x) - z||^2 <= ||x - z||^2 - (2 - lam) / lam ||P(x) - x||^2`` for every ``z in C``. It is not
    idempotent in general (``P(x)`` lies on ``H(x)``, not necessarily in ``C``); for ``A A^T = nu I`` and
    ``lam = 1`` it is the exact projection (:class:`DataBall`). Needs ``A^T r != 0`` when ``x`` is outside
    ``C`` (``d`` outside ``range(A)`` far enough can violate it; the step is then 0 by a clamp).

    Args:
        x: ``(B, *A.in_shape)``.
        A: the :class:`LinearOperator`.
        d: data ``(B, *A.out_shape)``.
        eps: radius ``>= 0``, a number or ``(B,)``.
        relaxation: ``lam in (0, 2)``.
    """
    _check_batch(x, "project_data_ball_relaxed")
    if not 0.0 < relaxation < 2.0:
        raise ValueError(f"project_data_ball_relaxed: relaxation must lie in (0, 2), got {relaxation}")
    r = A(x) - d
    nr = r.reshape(r.shape[0], -1).norm(dim=1)
    g = torch.relu(nr - torch.as_tensor(eps, dtype=nr.dtype, device=nr.device))
    grad = A.A_adjoint(r)
    nd2 = grad.reshape(grad.shape[0], -1).norm(dim=1).pow(2)
    coef = relaxation * _view_b(g, x) * _view_b(nr, x)
    return x - coef / _view_b(nd2, x).clamp_min(torch.finfo(x.dtype).tiny) * grad


# ---------------------------------------------------------------------- affine sets
def _is_sparse(B: Any) -> bool:
    if isinstance(B, Tensor):
        return B.layout != torch.strided
    try:
        import scipy.sparse as sp

        return sp.issparse(B)
    except ImportError:  # pragma: no cover
        return False


def _scipy_csr(B: Any) -> Any:
    import scipy.sparse as sp

    if isinstance(B, Tensor):
        B = B.detach().cpu()
        if B.layout != torch.sparse_coo:
            B = B.to_sparse_coo() if B.layout != torch.strided else B.to_sparse()
        B = B.coalesce()
        idx = B.indices().numpy()
        return sp.csr_matrix((B.values().double().numpy(), (idx[0], idx[1])), shape=tuple(B.shape))
    return sp.csr_matrix(B, dtype=np.float64)


class _SparseAffine(torch.autograd.Function):
    """``(x, b) -> x - B^+ (B x - b)``; VJPs ``g - B^+ B g`` (null-space projector) and ``(B^+)^T g``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, b: Tensor, proj: AffineSet) -> Tensor:  # type: ignore[override]
        ctx.proj = proj
        bx = proj._B(x)
        return x - proj._pinv(bx - b, bx.norm(dim=1) + b.norm(dim=1))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, Tensor | None, None]:  # type: ignore[override]
        proj = ctx.proj
        gx = gb = None
        if ctx.needs_input_grad[0]:
            bg = proj._B(g)
            gx = g - proj._pinv(bg, bg.norm(dim=1))
        if ctx.needs_input_grad[1]:
            gb = proj._pinv_t(g)
        return gx, gb, None


class AffineSet(Projection):
    """``C = {x : B x = b}`` (``x`` flattened per sample), ``P(x) = x - B^+ (B x - b)``.

    ``B`` may be rank-deficient (node-link incidence matrices: one redundant row per connected component);
    ``b`` must lie in ``range(B)`` (otherwise ``C`` is empty; a fixed ``b`` is checked at construction).

    Methods (``method="auto"`` picks ``"svd"`` for dense and ``"lu"`` for sparse ``B``):

    * ``"svd"`` (dense ``B``, ``m x n``): thin SVD ``B = U S V^T`` once in float64, rank ``r`` from
      ``s_i > rcond s_1``; stores ``V_r`` and ``B^+ = V_r S_r^{-1} U_r^T``, then
      ``P(x) = x - V_r V_r^T x + B^+ b`` (two matmuls, autograd-native).
    * ``"lu"`` (sparse ``B``, CPU ``scipy``): sparse LU of ``G_delta = B B^T + delta I`` with
      ``delta = 1e-8 max diag(B B^T)`` once; the singular system ``B B^T lam = r`` (consistent for ``r`` in
      ``range(B)``) is solved exactly by iterative refinement ``lam <- lam + G_delta^{-1}(r - B B^T lam)``
      (a proximal-point iteration converging linearly with rate ``delta / (mu_min + delta)``,
      ``mu_min`` the smallest nonzero eigenvalue), until ``||r - B B^T lam|| <= rtol scale``
      (``scale = ||B x|| + ||b||``). Then ``P(x) = x - B^T lam``. Inputs on another device go through the CPU.
    * ``"cg"`` (sparse ``B``, any device): ``B^+ r`` as the minimum-norm least-squares solution of
      ``B z = r`` by batched CGLS (CG on ``B^T B z = B^T r`` from ``z = 0``) with
      :class:`~fpntools.operators.SparseOperator` products; at most ``max_iter`` (default ``4 m + 20``)
      iterations, stopping when ``||B^T (r - B z)|| <= rtol ||B||_F (||B x|| + ||b||)``.

    For the sparse methods, autograd goes through a custom function with the exact VJPs
    ``d/dx: g - B^+ B g`` (the null-space projector, symmetric) and ``d/db: (B^+)^T g = (B B^T)^+ B g``.
    The derivative in ``b`` is meaningful along ``range(B)`` (where the set is nonempty).

    Args:
        B: ``(m, n)`` dense tensor / array, ``scipy.sparse`` matrix or torch sparse tensor.
        b: ``(m,)`` or batched ``(B, m)`` right-hand side; ``None`` for ``b = 0``. A ``b`` passed at call time
            (``P(x, b=...)``) overrides it.
        method: ``"auto" | "svd" | "lu" | "cg"``.
        rcond: relative singular-value cutoff for ``"svd"`` (default ``max(m, n) * eps_float64``).
        rtol: relative tolerance of the sparse solves.
        max_iter: refinement steps (``"lu"``, default 30) / CG iterations (``"cg"``).
    """

    def __init__(
        self,
        B: Any,
        b: Tensor | None = None,
        method: str = "auto",
        rcond: float | None = None,
        rtol: float = 1e-13,
        max_iter: int | None = None,
    ) -> None:
        super().__init__()
        sparse = _is_sparse(B)
        if method == "auto":
            method = "lu" if sparse else "svd"
        if method not in ("svd", "lu", "cg"):
            raise ValueError(f"AffineSet: method must be 'auto', 'svd', 'lu' or 'cg', got {method!r}")
        self.method = method
        self.rtol = float(rtol)
        if method == "svd":
            Bd = B.to_dense() if isinstance(B, Tensor) and sparse else B
            if not isinstance(Bd, Tensor):
                Bd = torch.as_tensor(Bd.toarray() if hasattr(Bd, "toarray") else np.asarray(Bd))
            if Bd.ndim != 2:
                raise ValueError(f"AffineSet: B must be 2-D (m, n), got shape {tuple(Bd.shape)}")
            out_dtype = Bd.dtype if Bd.is_floating_point() else torch.get_default_dtype()
            Bd = Bd.detach().to(torch.float64)
            self.m, self.n = Bd.shape
            U, S, Vh = torch.linalg.svd(Bd, full_matrices=False)
            cutoff = (rcond if rcond is not None else max(self.m, self.n) * torch.finfo(torch.float64).eps)
            r = int((S > cutoff * S[0]).sum()) if S.numel() and S[0] > 0 else 0
            self.rank = r
            V = Vh[:r].T
            pinv = V @ torch.diag(1.0 / S[:r]) @ U[:, :r].T
            self.register_buffer("V", V.to(out_dtype))
            self.register_buffer("pinv", pinv.to(out_dtype))
            self.register_buffer("B", Bd.to(out_dtype))
        else:
            Bs = _scipy_csr(B)
            self.m, self.n = Bs.shape
            self.rank = None
            self._Bs = Bs
            self.max_iter = max_iter if max_iter is not None else (30 if method == "lu" else 4 * self.m + 20)
            self.op = SparseOperator(Bs)  # B and B^T products (scipy on the CPU, torch CSR elsewhere)
            self.fro = float(np.sqrt((Bs.data**2).sum()))
            if method == "lu":
                G = (Bs @ Bs.T).tocsc()
                dmax = float(G.diagonal().max()) if self.m else 0.0
                self.delta = 1e-8 * dmax if dmax > 0 else 1.0
                self._G = G
                self._lu: Any = None
                self._factor()
        if b is not None:
            b = torch.as_tensor(b)
            if b.shape[-1] != self.m or b.ndim > 2:
                raise ValueError(f"AffineSet: b must have shape ({self.m},) or (B, {self.m}), got {tuple(b.shape)}")
            self.register_buffer("b", b.detach().clone())
            self._check_consistent(b)
        else:
            self.b = None

    # -------------------------------------------------------------- sparse kernels
    def _B(self, x: Tensor) -> Tensor:
        return self.op._forward(x)

    def _Bt(self, y: Tensor) -> Tensor:
        return self.op._adjoint(y)

    def _factor(self) -> Any:
        """The sparse LU factorisation of ``B B^T + delta I`` (built once; rebuilt after unpickling)."""
        if self._lu is None:
            import scipy.sparse as sp
            from scipy.sparse.linalg import splu

            self._lu = splu((self._G + self.delta * sp.identity(self.m, format="csc")).tocsc())
        return self._lu

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        if "_lu" in state:
            state["_lu"] = None  # SuperLU objects cannot be pickled or copied
        return state

    def __deepcopy__(self, memo: dict) -> AffineSet:
        import copy

        new = self.__class__.__new__(self.__class__)
        memo[id(self)] = new
        for key, value in self.__getstate__().items():
            new.__dict__[key] = copy.deepcopy(value, memo)
        return new

    def _lu_solve(self, r: Tensor, scale: Tensor) -> Tensor:
        """A solution ``lam`` (rows) of ``B B^T lam = r`` by LU of ``B B^T + delta I`` and iterative refinement,
        stopping per sample once ``||r - B B^T lam|| <= rtol * scale``."""
        R = r.detach().to(device="cpu", dtype=torch.float64).numpy().T  # (m, B)
        stop = self.rtol * scale.detach().to(device="cpu", dtype=torch.float64).numpy()
        lam = np.zeros_like(R)
        res = R
        for _ in range(self.max_iter):
            if np.all(np.linalg.norm(res, axis=0) <= stop):
                break
            lam = lam + self._factor().solve(np.ascontiguousarray(res))
            res = R - self._G @ lam
        return torch.from_numpy(np.ascontiguousarray(lam.T)).to(device=r.device, dtype=r.dtype)

    def _cgls(self, M: Any, Mt: Any, r: Tensor, scale: Tensor) -> Tensor:
        """Minimum-norm least-squares solutions ``z = M^+ r`` (rows) by batched CGLS (CG on ``M^T M z = M^T r``
        from ``z = 0``, which stays in ``range(M^T)``), stopping per sample once
        ``||M^T (r - M z)|| <= rtol * ||M||_F * scale``. Converged rows are frozen."""
        s = r.clone()
        g = Mt(s)
        z = torch.zeros_like(g)
        p = g.clone()
        gamma = (g * g).sum(dim=1)
        stop = (self.rtol * self.fro * scale.to(r)).pow(2)
        tiny = torch.finfo(r.dtype).tiny
        for _ in range(self.max_iter):
            active = gamma > stop
            if not bool(active.any()):
                break
            q = M(p)
            qq = (q * q).sum(dim=1)
            ok = active & (qq > 0)
            alpha = torch.where(ok, gamma / qq.clamp_min(tiny), torch.zeros_like(gamma))
            z = z + alpha[:, None] * p
            s = s - alpha[:, None] * q
            g = Mt(s)
            gamma_new = (g * g).sum(dim=1)
            beta = torch.where(ok, gamma_new / gamma.clamp_min(tiny), torch.zeros_like(gamma))
            p = torch.where(ok[:, None], g + beta[:, None] * p, p)
            gamma = torch.where(ok, gamma_new, torch.zeros_like(gamma))
        return z

    def _pinv(self, r: Tensor, scale: Tensor) -> Tensor:
        """``B^+ r`` for a batch ``r`` of shape ``(B, m)``."""
        if self.method == "lu":
            return self._Bt(self._lu_solve(r, scale))  # B^+ = B^T (B B^T)^+
        return self._cgls(self._B, self._Bt, r, scale)

    def _pinv_t(self, g: Tensor) -> Tensor:
        """``(B^+)^T g = (B B^T)^+ B g`` for a batch ``g`` of shape ``(B, n)``."""
        if self.method == "lu":
            bg = self._B(g)
            return self._lu_solve(bg, bg.norm(dim=1))
        return self._cgls(self._Bt, self._B, g, g.norm(dim=1))

    # -------------------------------------------------------------- checks / projection
    @torch.no_grad()
    def residual(self, x: Tensor, b: Tensor | None = None) -> Tensor:
        """``||B x - b||`` per sample, shape ``(B,)``."""
        xf = x.reshape(x.shape[0], -1)
        bx = xf @ self.B.to(xf).T if self.method == "svd" else self._B(xf)
        b = self.b if b is None else b
        if b is not None:
            bx = bx - torch.as_tensor(b, dtype=xf.dtype, device=xf.device)
        return bx.norm(dim=1)

    def _check_consistent(self, b: Tensor) -> None:
        bb = b.to(torch.float64).reshape(-1, self.m)
        x0 = self._project_flat(torch.zeros(bb.shape[0], self.n, dtype=torch.float64, device=self._device()), bb)
        res = self.residual(x0, bb)
        tol = 1e-6 * max(1.0, float(bb.norm(dim=1).max()))
        if float(res.max()) > tol:
            raise ValueError(
                f"AffineSet: b is not in the range of B (least-squares residual {float(res.max()):.3e}); "
                "the set {x : B x = b} is empty. For incidence matrices the demands must sum to zero "
                "over each connected component."
            )

    def _device(self) -> torch.device:
        return (self.V if self.method == "svd" else self.op.matrix).device

    def _project_flat(self, xf: Tensor, b: Tensor | None) -> Tensor:
        if self.method == "svd":
            V = self.V.to(dtype=xf.dtype, device=xf.device)
            out = xf - (xf @ V) @ V.T
            if b is not None:
                out = out + b.to(dtype=xf.dtype, device=xf.device) @ self.pinv.to(dtype=xf.dtype, device=xf.device).T
            return out
        bb = torch.zeros((), dtype=xf.dtype, device=xf.device) if b is None else b.to(dtype=xf.dtype, device=xf.device)
        bb = bb.expand(xf.shape[0], self.m)
        return _SparseAffine.apply(xf, bb, self)

    def project(self, x: Tensor, b: Tensor | None = None) -> Tensor:
        _check_batch(x, "AffineSet", min_ndim=2)
        if x[0].numel() != self.n:
            raise ValueError(f"AffineSet: samples must have {self.n} entries (B is {self.m} x {self.n}), got shape {tuple(x.shape)}")
        b = self.b if b is None else torch.as_tensor(b)
        if b is not None and b.shape[-1] != self.m:
            raise ValueError(f"AffineSet: b must have last dim {self.m}, got shape {tuple(b.shape)}")
        return self._project_flat(x.reshape(x.shape[0], -1), b).reshape(x.shape)

    def forward(self, x: Tensor, tau: Any = None, b: Tensor | None = None) -> Tensor:
        return self.project(x, b)

    def extra_repr(self) -> str:
        return f"m={self.m}, n={self.n}, method={self.method!r}" + (f", rank={self.rank}" if self.rank is not None else "")
