"""Proximal maps ``prox_{tau g}(v) = argmin_x g(x) + ||x - v||^2 / (2 tau)``, batched over dim 0.

A *prox* in this package is any callable ``prox(v, tau) -> Tensor`` returning ``prox_{tau g}(v)``; the
splitting schemes (:mod:`fpntools.operators.splitting`) call their proxes this way. Projections
(:mod:`fpntools.operators.projections`) follow the same convention (``tau`` ignored).

* :func:`prox_l1` / :class:`L1Prox`: soft thresholding, ``g = lam ||x||_1``.
* :class:`TVProx`: isotropic total variation ``g = lam TV(x)``, ``TV(x) = sum_i ||(grad x)_i||_2``, by the
  fast (FISTA) projected gradient on the dual (Chambolle 2004; Beck and Teboulle 2009).
* :class:`IndicatorProx`: the prox of the indicator of a convex set is its projection.
* :class:`SquaredL2Prox`: ``g = (lam/2) ||A x - d||^2`` for ``A = I`` (closed form), handy for tests/PDHG.
* :func:`conjugate_prox`: Moreau's identity ``prox_{s g*}(y) = y - s prox_{g/s}(y / s)``.
* :func:`prox_l21_conjugate`: the prox of the conjugate of ``r ||.||_{2,1}`` (the dual step of TV in PDHG),
  the projection onto ``{p : ||p_i||_2 <= r}``.

Image gradients for TV are :func:`fpntools.operators.gradient` / :func:`fpntools.operators.divergence`
(``grad^T = -div``) and :class:`fpntools.operators.FiniteDifferenceGradient`; :func:`tv_norm` is ``TV``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from fpntools.operators._util import check_tensor as _check
from fpntools.operators._util import per_sample as _per_sample
from fpntools.operators.linear import FiniteDifferenceGradient, divergence, gradient

__all__ = [
    "prox_l1",
    "L1Prox",
    "TVProx",
    "tv_norm",
    "IndicatorProx",
    "SquaredL2Prox",
    "ConjugateProx",
    "conjugate_prox",
    "prox_l21_conjugate",
]

ProxFn = Callable[[Tensor, Any], Tensor]


def prox_l1(x: Tensor, tau: float | Tensor) -> Tensor:
    """Soft thresholding ``prox_{tau ||.||_1}(x) = sign(x) max(|x| - tau, 0) = x - clip(x, -tau, tau)``.

    ``tau >= 0``: a number or a tensor broadcastable to ``x`` (elementwise thresholds; use shape
    ``(B, 1, ..., 1)`` for one threshold per sample).
    """
    _check(x, "prox_l1")
    if isinstance(tau, Tensor):
        t = tau.to(dtype=x.dtype, device=x.device)
        if bool((t < 0).any()):
            raise ValueError("prox_l1: tau must be >= 0")
        return x - torch.maximum(torch.minimum(x, t), -t)
    if tau < 0:
        raise ValueError(f"prox_l1: tau must be >= 0, got {tau}")
    return x - x.clamp(-tau, tau)


class L1Prox(nn.Module):
    """``prox_{tau g}`` for ``g(x) = lam sum_i w_i |x_i|``: soft thresholding at ``tau lam w``.

    Args:
        lam: weight ``lam >= 0`` (number or tensor broadcastable to the batch).
        weights: optional elementwise weights ``w >= 0`` (per-sample shape), stored as a buffer.
    """

    def __init__(self, lam: float | Tensor = 1.0, weights: Tensor | None = None) -> None:
        super().__init__()
        if bool((torch.as_tensor(lam) < 0).any()):
            raise ValueError(f"L1Prox: lam must be >= 0, got {lam}")
        if isinstance(lam, Tensor):
            self.register_buffer("lam", lam.detach().clone())
        else:
            self.lam = float(lam)
        if weights is not None:
            if bool((torch.as_tensor(weights) < 0).any()):
                raise ValueError("L1Prox: weights must be >= 0")
            self.register_buffer("weights", torch.as_tensor(weights).detach().clone())
        else:
            self.weights = None

    def forward(self, x: Tensor, tau: float | Tensor = 1.0) -> Tensor:
        t = torch.as_tensor(tau, dtype=x.dtype, device=x.device) * torch.as_tensor(
            self.lam, dtype=x.dtype, device=x.device
        )
        if self.weights is not None:
            t = t * self.weights.to(dtype=x.dtype, device=x.device)
        return prox_l1(x, t)

    def value(self, x: Tensor) -> Tensor:
        """``g(x)`` per sample, shape ``(B,)``."""
        a = x.abs() if self.weights is None else x.abs() * self.weights.to(x)
        return torch.as_tensor(self.lam, dtype=x.dtype, device=x.device) * a.reshape(x.shape[0], -1).sum(dim=1)


def tv_norm(x: Tensor, dims: Sequence[int] | None = None) -> Tensor:
    """Isotropic total variation ``TV(x) = sum_i sqrt(sum_k (grad_k x)_i^2)`` per sample, shape ``(B,)``
    (forward differences with Neumann boundary, see :func:`fpntools.operators.gradient`)."""
    sq = gradient(x, dims).pow(2).sum(dim=1)
    pos = sq > 0
    mag = torch.where(pos, torch.where(pos, sq, torch.ones_like(sq)).sqrt(), torch.zeros_like(sq))
    return mag.reshape(x.shape[0], -1).sum(dim=1)


class TVProx(nn.Module):
    """``prox_{tau g}`` for the isotropic total variation ``g(x) = lam TV(x)`` on samples of shape ``shape``.

    Dual problem (Chambolle 2004): with ``t = tau lam``,
    ``prox(v) = v - t grad^T p*``,  ``p* = argmin_{|p_i|_2 <= 1} ||v - t grad^T p||^2 / 2``.
    Solved by FISTA on the dual (fast gradient projection, Beck and Teboulle 2009): with
    ``L = t^2 ||grad||^2 <= 4 k t^2`` (``k`` differentiated dims),

    ``x_k = v - t grad^T q_k``,
    ``p_{k+1} = Proj_{|.|<=1}(q_k + grad x_k / (4 k t))``,
    ``s_{k+1} = (1 + sqrt(1 + 4 s_k^2)) / 2``,  ``q_{k+1} = p_{k+1} + (s_k - 1)/s_{k+1} (p_{k+1} - p_k)``,

    where ``Proj`` rescales each pixel's gradient vector to norm ``<= 1``. Stops after ``iters`` steps or when
    ``max_b ||x_{k+1} - x_k|| / max(||x_{k+1}||, 1e-12) <= tol`` (checked every ``check_every`` steps).
    Autograd differentiates through the iterations (unrolled).

    Args:
        shape: per-sample shape (e.g. ``(H, W)``).
        lam: TV weight (number or ``(B,)`` tensor).
        iters: maximum inner iterations.
        tol: relative-change tolerance (``0`` runs all ``iters``).
        dims: differentiated per-sample dims (default all; ``(1, 2)`` for ``(C, H, W)``).
    """

    def __init__(
        self,
        shape: int | Sequence[int],
        lam: float | Tensor = 1.0,
        iters: int = 200,
        tol: float = 1e-6,
        dims: Sequence[int] | None = None,
        check_every: int = 10,
    ) -> None:
        super().__init__()
        if iters < 1:
            raise ValueError(f"TVProx: iters must be >= 1, got {iters}")
        self.grad = FiniteDifferenceGradient(shape, dims)
        self.shape = self.grad.in_shape
        self.dims = self.grad.dims
        if bool((torch.as_tensor(lam) < 0).any()):
            raise ValueError(f"TVProx: lam must be >= 0, got {lam}")
        if isinstance(lam, Tensor):
            self.register_buffer("lam", lam.detach().clone())
        else:
            self.lam = float(lam)
        self.iters = int(iters)
        self.tol = float(tol)
        self.check_every = max(1, int(check_every))
        self.last_iters = 0

    def value(self, x: Tensor) -> Tensor:
        """``g(x) = lam TV(x)`` per sample."""
        return torch.as_tensor(self.lam, dtype=x.dtype, device=x.device) * tv_norm(x, self.dims)

    def forward(
        self, v: Tensor, tau: float | Tensor = 1.0, p0: Tensor | None = None, return_dual: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """``prox_{tau lam TV}(v)`` for ``v`` of shape ``(B, *shape)``; ``p0`` warm-starts the dual
        ``(B, k, *shape)``; ``return_dual`` also returns the final dual field."""
        _check(v, "TVProx")
        if tuple(v.shape[1:]) != self.shape:
            raise ValueError(f"TVProx: expected input of shape (B, *{self.shape}), got {tuple(v.shape)}")
        k = len(self.dims)
        t = _per_sample(tau, v, "tau") * _per_sample(self.lam, v, "lam")  # (B,1,..) or scalar
        t_p = t.unsqueeze(1) if t.ndim else t  # broadcast against (B, k, *shape)
        safe_t = torch.where(t_p > 0, t_p, torch.ones_like(t_p))
        p = v.new_zeros((v.shape[0], k, *self.shape)) if p0 is None else p0.to(v)
        q, s = p, 1.0
        x_last: Tensor | None = None
        for it in range(1, self.iters + 1):
            x = v + t * divergence(q, self.dims)  # primal point of the extrapolated dual q
            p_new = q + gradient(x, self.dims) / (4.0 * k * safe_t)
            p_new = p_new * p_new.pow(2).sum(dim=1, keepdim=True).clamp_min(1.0).rsqrt()  # no sqrt(0) in autograd
            s_new = (1.0 + (1.0 + 4.0 * s * s) ** 0.5) / 2.0
            q = p_new + ((s - 1.0) / s_new) * (p_new - p)
            p, s = p_new, s_new
            self.last_iters = it
            if self.tol > 0 and it % self.check_every == 0:
                with torch.no_grad():
                    x_p = (v + t * divergence(p, self.dims)).reshape(v.shape[0], -1)
                    if x_last is not None:
                        rel = (x_p - x_last).norm(dim=1) / x_p.norm(dim=1).clamp_min(1e-12)
                        if bool((rel <= self.tol).all()):
                            break
                    x_last = x_p
        out = v + t * divergence(p, self.dims)
        return (out, p) if return_dual else out

    def extra_repr(self) -> str:
        return f"shape={self.shape}, dims={self.dims}, iters={self.iters}, tol={self.tol}"


class IndicatorProx(nn.Module):
    """``prox_{tau i_C}(v) = P_C(v)`` for every ``tau > 0``: wraps a projection (any callable ``P(x)``)."""

    def __init__(self, projection: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        if not callable(projection):
            raise TypeError("IndicatorProx: projection must be callable")
        self.projection = projection

    def forward(self, x: Tensor, tau: Any = None) -> Tensor:
        return self.projection(x)


class SquaredL2Prox(nn.Module):
    """``prox_{tau g}`` for ``g(x) = (lam/2) ||x - d||^2``: ``(v + tau lam d) / (1 + tau lam)``.

    ``d`` (per-sample shape or batched; default ``0``) is a buffer.
    """

    def __init__(self, d: Tensor | None = None, lam: float = 1.0) -> None:
        super().__init__()
        if lam < 0:
            raise ValueError(f"SquaredL2Prox: lam must be >= 0, got {lam}")
        self.lam = float(lam)
        if d is not None:
            self.register_buffer("d", torch.as_tensor(d).detach().clone())
        else:
            self.d = None

    def forward(self, x: Tensor, tau: float | Tensor = 1.0) -> Tensor:
        t = _per_sample(tau, x, "tau") * self.lam
        num = x if self.d is None else x + t * self.d.to(dtype=x.dtype, device=x.device)
        return num / (1.0 + t)


class ConjugateProx(nn.Module):
    """``prox_{s g*}(y) = y - s prox_{g/s}(y / s)`` (Moreau's identity) from a prox of ``g``."""

    def __init__(self, prox: ProxFn) -> None:
        super().__init__()
        self.prox = prox

    def forward(self, y: Tensor, sigma: float | Tensor = 1.0) -> Tensor:
        s = _per_sample(sigma, y, "sigma")
        if bool((s <= 0).any()):
            raise ValueError("ConjugateProx: sigma must be > 0")
        return y - s * self.prox(y / s, 1.0 / s)


def conjugate_prox(prox: ProxFn) -> ConjugateProx:
    """The prox of the convex conjugate ``g*`` by Moreau's identity (see :class:`ConjugateProx`)."""
    return ConjugateProx(prox)


def prox_l21_conjugate(v: Tensor, radius: float | Tensor, dim: int = 1) -> Tensor:
    """``prox_{s f*}(v)`` for ``f = r ||.||_{2,1}`` (the group norm ``sum_i ||v_i||_2`` over the vectors
    ``v_i`` along ``dim``), for every step ``s > 0``.

    ``f*`` is the indicator of the dual ball ``{p : max_i ||p_i||_2 <= r}``, so its prox is the projection
    ``p_i = v_i / max(1, ||v_i||_2 / r)`` (``0`` where ``r = 0``). With ``v`` the dual variable of the
    image gradient (``dim = 1`` of a ``(B, k, *shape)`` field from :func:`~fpntools.operators.gradient`) it is
    the dual step of isotropic TV in PDHG. ``r >= 0``: a number or one value per sample ``(B,)``.
    """
    _check(v, "prox_l21_conjugate")
    r = _per_sample(radius, v, "radius")
    if bool((r < 0).any()):
        raise ValueError("prox_l21_conjugate: radius must be >= 0")
    n = v.pow(2).sum(dim=dim, keepdim=True).sqrt()
    out = v / torch.clamp(n / r, min=1.0)
    return out if bool((r > 0).all()) else torch.where(r > 0, out, torch.zeros_like(out))
