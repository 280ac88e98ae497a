r"""Spectrum estimates of symmetric operators given only as matrix-vector products (Lanczos).

For a symmetric ``A`` (a Hessian, ``J^T J``, a Gram operator) and a start vector ``v_1``, ``k`` Lanczos steps
build an orthonormal basis ``V_k`` of the Krylov space ``span{v_1, A v_1, ..., A^{k-1} v_1}`` and the
tridiagonal ``T_k = V_k^T A V_k``:

.. math::  w = A v_j - \alpha_j v_j - \beta_{j-1} v_{j-1}, \quad \alpha_j = v_j^T A v_j, \quad
           \beta_j = \|w\|, \quad v_{j+1} = w / \beta_j

(with full reorthogonalisation against ``V_k``, so the basis stays orthonormal in floating point). The
eigenvalues of ``T_k`` (Ritz values) approximate the extreme eigenvalues of ``A`` first; the squared first
components of ``T_k``'s eigenvectors are the weights of the Ritz values in ``v_1`` (a Gauss quadrature of the
spectral density seen from ``v_1``; for a random ``v_1`` they show where the bulk of the spectrum lies).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

__all__ = ["LanczosResult", "lanczos"]


@dataclass
class LanczosResult:
    """Ritz values (ascending), their weights in the start vector (summing to 1), and the steps taken
    (fewer than asked when the Krylov space became invariant)."""

    ritz_values: Tensor
    weights: Tensor
    steps: int

    @property
    def condition_estimate(self) -> float:
        """``max / min`` Ritz value (a lower bound on the condition number of a positive definite ``A``)."""
        lo, hi = float(self.ritz_values[0]), float(self.ritz_values[-1])
        return hi / lo if lo > 0 else float("inf")


def lanczos(matvec: Callable[[Tensor], Tensor], v0: Tensor, steps: int, breakdown_tol: float = 1e-10) -> LanczosResult:
    """``steps`` Lanczos steps for the symmetric operator ``matvec`` from ``v0`` (any shape; not all zero).

    Costs ``steps`` products with ``A`` and ``O(steps^2 N)`` work for the reorthogonalisation. Stops early
    when ``beta_j <= breakdown_tol * ||A||_est`` (the Krylov space is invariant: the Ritz values are then exact
    eigenvalues of ``A``).
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if not torch.is_floating_point(v0) or not bool(torch.isfinite(v0).all()):
        raise ValueError("v0 must be a finite floating-point tensor")
    norm0 = torch.linalg.vector_norm(v0)
    if float(norm0) == 0.0:
        raise ValueError("v0 must not be zero")
    basis = [v0 / norm0]
    alphas: list[float] = []
    betas: list[float] = []
    scale = 0.0
    for _ in range(steps):
        v = basis[-1]
        w = matvec(v)
        if w.shape != v.shape:
            raise ValueError(f"matvec must preserve the shape {tuple(v.shape)}, got {tuple(w.shape)}")
        a = float((w * v).sum())
        alphas.append(a)
        for _ in range(2):  # full reorthogonalisation, twice (twice is enough: Kahan-Parlett)
            for u in basis:
                w = w - (w * u).sum() * u
        b = float(torch.linalg.vector_norm(w))
        scale = max(scale, abs(a), b)
        if b <= breakdown_tol * max(scale, 1e-300) or len(alphas) == steps:
            break
        betas.append(b)
        basis.append(w / b)
    k = len(alphas)
    t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if k > 1:
        off = torch.tensor(betas[: k - 1], dtype=torch.float64)
        t = t + torch.diag(off, 1) + torch.diag(off, -1)
    values, vectors = torch.linalg.eigh(t)
    return LanczosResult(ritz_values=values, weights=vectors[0] ** 2, steps=k)
