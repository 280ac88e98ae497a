"""Anderson acceleration (type II) with a regularised, safeguarded least-squares step."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from fpntools.kernels.anderson import anderson_mix
from fpntools.solvers.base import FixedPointSolver

__all__ = ["Anderson", "anderson_weights"]


def anderson_weights(gram: Tensor, lam: float, newest: int = -1) -> Tensor:
    """Mixing weights ``alpha = argmin ||sum_i alpha_i g_i||^2 + lam' ||alpha||^2  s.t.  sum_i alpha_i = 1``.

    With ``H = G G^T`` the solution is ``alpha = (H + lam' I)^{-1} 1 / (1^T (H + lam' I)^{-1} 1)`` where
    ``lam' = lam * (tr H / n) + tiny`` scales the Tikhonov term with the residual size. ``H + lam' I`` is
    symmetric positive definite, so the Cholesky solve exists; samples where it still fails (NaN input,
    underflow) fall back to ``alpha = e_newest``, a plain Picard step. Never returns NaN for finite input.
    """
    b, n, _ = gram.shape
    eye = torch.eye(n, dtype=gram.dtype, device=gram.device)
    scale = gram.diagonal(dim1=1, dim2=2).mean(dim=1).clamp_min(torch.finfo(gram.dtype).tiny)
    reg = gram + (lam * scale + torch.finfo(gram.dtype).eps * scale)[:, None, None] * eye
    chol, bad = torch.linalg.cholesky_ex(reg)
    ones = torch.ones(b, n, 1, dtype=gram.dtype, device=gram.device)
    sol = torch.cholesky_solve(ones, chol).squeeze(-1)
    alpha = sol / sol.sum(dim=1, keepdim=True)
    ok = (bad == 0) & torch.isfinite(alpha).all(dim=1)
    fallback = torch.zeros_like(alpha)
    fallback[:, newest] = 1.0
    return torch.where(ok[:, None], alpha, fallback)


@dataclass
class _History:
    x: Tensor  # (B, m, N) iterates, slots 0..n-1 filled
    f: Tensor  # (B, m, N) f(iterates)
    gram: Tensor  # (B, m, m) inner products of the residuals g_i = f_i - x_i
    count: int = 0


@dataclass
class Anderson(FixedPointSolver):
    """Anderson acceleration with memory ``m``, mixing ``beta`` and Tikhonov regularisation ``lam``.

    Keeps the last ``m`` pairs ``(z_i, f(z_i))`` in a ring buffer (memory ``O(m N)`` per sample), updates the
    Gram matrix of residuals ``g_i = f(z_i) - z_i`` by one row per step (``O(m N)`` work), solves for the
    weights with :func:`anderson_weights` and mixes
    ``z_{k+1} = beta * sum_i alpha_i f(z_i) + (1 - beta) * sum_i alpha_i z_i``
    (fused in a Triton kernel on CUDA, see :mod:`fpntools.kernels.anderson`).
    """

    m: int = 5
    beta: float = 1.0
    lam: float = 1e-4
    name: ClassVar[str] = "anderson"

    def __post_init__(self) -> None:
        if self.m < 1:
            raise ValueError(f"Anderson memory m must be at least 1, got {self.m}")
        if not 0.0 < self.beta <= 1.0:
            raise ValueError(f"Anderson mixing beta must lie in (0, 1], got {self.beta}")
        if self.lam < 0:
            raise ValueError(f"Anderson regularisation lam must be nonnegative, got {self.lam}")

    def init(self, z0: Tensor) -> _History:
        b, n = z0.shape
        return _History(x=z0.new_zeros(b, self.m, n), f=z0.new_zeros(b, self.m, n), gram=z0.new_zeros(b, self.m, self.m))

    def step(self, z: Tensor, fz: Tensor, memory: _History, k: int) -> tuple[Tensor, _History]:
        h = memory
        slot = h.count % self.m
        if torch.is_grad_enabled():  # unrolled differentiation: no in-place writes into saved tensors
            h.x, h.f, h.gram = h.x.clone(), h.f.clone(), h.gram.clone()
        h.x[:, slot] = z
        h.f[:, slot] = fz
        h.count += 1
        n = min(h.count, self.m)
        g_new = fz - z  # <g_new, g_j> = <g_new, f_j> - <g_new, x_j>, without a (B, n, N) temporary
        row = torch.bmm(h.f[:, :n], g_new[:, :, None]).squeeze(-1) - torch.bmm(h.x[:, :n], g_new[:, :, None]).squeeze(-1)
        h.gram[:, slot, :n] = row
        h.gram[:, :n, slot] = row
        alpha = anderson_weights(h.gram[:, :n, :n], self.lam, newest=slot)
        return anderson_mix(h.x[:, :n], h.f[:, :n], alpha, self.beta), h
