"""Anderson acceleration (type II) with a regularised, safeguarded least-squares step."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from fpntools.kernels.anderson import _combine
from fpntools.solvers.base import FixedPointSolver

__all__ = ["Anderson", "anderson_weights", "anderson_weights_host"]


def anderson_weights(gram: Tensor, lam: float, newest: int = -1) -> Tensor:
    """Mixing weights ``alpha = argmin ||sum_i alpha_i g_i||^2 + lam' ||alpha||^2  s.t.  sum_i alpha_i = 1``.

    With ``H = G G^T`` the solution is ``alpha = (H + lam' I)^{-1} 1 / (1^T (H + lam' I)^{-1} 1)`` where
    ``lam' = lam * (tr H / n) + tiny`` scales the Tikhonov term with the residual size. ``H + lam' I`` is
    symmetric positive definite, so the Cholesky solve exists; samples where it still fails (NaN input,
    underflow) fall back to ``alpha = e_newest``, a plain Picard step. Never returns NaN for finite input.
    Differentiable (the unrolled backward goes through it); :func:`anderson_weights_host` is the same map on
    host arrays, used by the solver when no gradient is needed.
    """
    b, n, _ = gram.shape
    scale = gram.diagonal(dim1=1, dim2=2).mean(dim=1).clamp_min(torch.finfo(gram.dtype).tiny)
    reg = gram.clone()
    reg.diagonal(dim1=1, dim2=2).add_(((lam + torch.finfo(gram.dtype).eps) * scale)[:, None])
    chol, bad = torch.linalg.cholesky_ex(reg)
    sol = torch.cholesky_solve(gram.new_ones(b, n, 1), chol).squeeze(-1)
    alpha = sol / sol.sum(dim=1, keepdim=True)
    ok = (bad == 0) & torch.isfinite(alpha).all(dim=1)
    fallback = torch.zeros(n, dtype=gram.dtype, device=gram.device)
    fallback[newest] = 1.0
    return torch.where(ok[:, None], alpha, fallback)


def anderson_weights_host(gram: np.ndarray, lam: float, newest: int = -1) -> np.ndarray:
    """:func:`anderson_weights` on a float64 host array ``(B, n, n)`` (no autograd): the forward solver's path.

    The ``(B, n)`` problem is tiny; solving it on the host in float64 replaces about fifteen kernel launches
    per step by a few numpy operations and one batched LAPACK solve, and it is the more accurate of the two.
    Same regularisation and fallback as the torch version (``H + lam' I`` is symmetric positive definite, so
    the LU solve with partial pivoting that numpy batches is as stable as a Cholesky solve here).
    """
    b, n, _ = gram.shape
    eps, tiny = np.finfo(np.float64).eps, np.finfo(np.float64).tiny
    ones = np.ones((b, n, 1))
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        scale = np.maximum(np.trace(gram, axis1=1, axis2=2) / n, tiny)
        reg = gram + ((lam + eps) * scale)[:, None, None] * np.eye(n)
        try:
            sol = np.linalg.solve(reg, ones)[..., 0]
        except np.linalg.LinAlgError:  # an exactly singular sample stops the batched call: solve one by one
            sol = np.full((b, n), np.nan)
            for i in range(b):
                try:
                    sol[i] = np.linalg.solve(reg[i], ones[i])[:, 0]
                except np.linalg.LinAlgError:
                    pass
        alpha = sol / sol.sum(axis=1, keepdims=True)
        ok = np.isfinite(alpha).all(axis=1)
    if not ok.all():
        alpha[~ok] = 0.0
        alpha[~ok, newest] = 1.0
    return alpha


@dataclass
class _History:
    """One ring buffer ``(B, m, 2, N)`` of the last ``m`` iterates ``z_i`` (``ring[:, i, 0]``) and residuals
    ``g_i = f(z_i) - z_i`` (``ring[:, i, 1]``), written in place.

    Storing ``g_i`` gives the Gram row ``<g_new, g_j>`` in one product (no cancellation between ``<g, f_j>``
    and ``<g, z_j>``); ``f(z_i) = z_i + g_i``. Interleaving the pairs makes the first ``2n`` rows of
    ``ring.view(B, 2m, N)`` exactly the ``n`` pairs in use, so the mixing step is one product with the
    coefficients ``(alpha_0, beta alpha_0, alpha_1, beta alpha_1, ...)``. The step writes ``z_{k+1}`` straight
    into its ring slot, so the loop's iterate (and, while the residual decreases, its best iterate) is a view
    of the ring, not a buffer of its own. The Gram matrix lives on the host in float64 (``gram_host``); under
    autograd it is a tensor (``gram``) so that the weights are differentiated too.
    """

    ring: Tensor  # (B, m, 2, N)
    gram_host: np.ndarray  # (B, m, m) inner products <g_i, g_j>, float64
    gram: Tensor | None = None  # (B, m, m), only under autograd
    count: int = 0  # pairs stored so far (the current one goes to slot count % m)
    observed: bool = False  # slot count % m holds the current pair (observe ran, step not yet)
    row: Tensor | None = None  # the current residual's Gram row <g_new, g_j>, j < min(count + 1, m)
    row_host: np.ndarray | None = None  # the same on the host, once the loop has copied it

    def rows(self, n: int) -> Tensor:
        """The ``2n`` rows ``z_0, g_0, ..., z_{n-1}, g_{n-1}`` as a ``(B, 2n, N)`` view."""
        b, m, _, d = self.ring.shape
        return self.ring.view(b, 2 * m, d)[:, : 2 * n]


@dataclass
class Anderson(FixedPointSolver):
    """Anderson acceleration with memory ``m``, mixing ``beta`` and Tikhonov regularisation ``lam``.

    Keeps the last ``m`` iterates ``z_i`` and residuals ``g_i = f(z_i) - z_i`` in a preallocated ring buffer
    written in place (``2 m N`` numbers per sample; the next iterate is written into its ring slot, so the
    solve holds ``2m`` state-sized buffers besides ``f(z)`` and what ``f`` allocates), updates the Gram matrix
    of the residuals by one row per step (``O(m N)`` work, its ``B m`` numbers copied to the host with the
    loop's residual norms), solves for the weights on the host with :func:`anderson_weights_host` and mixes
    ``z_{k+1} = beta * sum_i alpha_i f(z_i) + (1 - beta) * sum_i alpha_i z_i
    = sum_i alpha_i z_i + beta * sum_i alpha_i g_i``
    in one pass over the ring. Under autograd (unrolled differentiation) the ring is copied instead of written
    in place and the weights come from the differentiable :func:`anderson_weights`.

    ``backend`` chooses the mixing pass (:func:`fpntools.kernels.anderson_combine`): ``"torch"`` (default,
    one batched GEMM), ``"triton"`` (the fused kernel, writing straight into the ring slot) or ``"auto"``
    (Triton on CUDA). On an H200 the GEMM was faster at every size measured (``bench_anderson_mix``: 0.05 vs
    0.14 ms at 32 x 5 x 256, 0.04 vs 0.12 ms at 16 x 5 x 65536, 0.08 vs 0.09 ms at 4 x 6 x 1M; the kernel's
    launch costs more than the pass), hence the default.
    """

    m: int = 5
    beta: float = 1.0
    lam: float = 1e-4
    backend: str = "torch"
    name: ClassVar[str] = "anderson"

    def __post_init__(self) -> None:
        if self.m < 1:
            raise ValueError(f"Anderson memory m must be at least 1, got {self.m}")
        if not 0.0 < self.beta <= 1.0:
            raise ValueError(f"Anderson mixing beta must lie in (0, 1], got {self.beta}")
        if self.lam < 0:
            raise ValueError(f"Anderson regularisation lam must be nonnegative, got {self.lam}")
        if self.backend not in ("torch", "triton", "auto"):
            raise ValueError(f"Anderson backend must be 'torch', 'triton' or 'auto', got {self.backend!r}")

    def init(self, z0: Tensor) -> _History:
        b, n = z0.shape
        return _History(ring=z0.new_empty(b, self.m, 2, n), gram_host=np.zeros((b, self.m, self.m)))

    def observe(self, z: Tensor, fz: Tensor, memory: _History) -> Tensor:
        h = memory
        slot = h.count % self.m
        n = min(h.count + 1, self.m)
        if torch.is_grad_enabled():  # unrolled differentiation: no in-place writes into saved tensors
            g_new = fz - z
            h.ring = h.ring.clone()
            h.ring[:, slot, 0] = z
            h.ring[:, slot, 1] = g_new
        else:
            xs = h.ring[:, slot, 0]
            if not _same_view(z, xs):  # z0, or an iterate with frozen samples put back
                xs.copy_(z)
            g_new = torch.sub(fz, xs, out=h.ring[:, slot, 1])
        # <g_new, g_j> as a (1 x N) (N x n) product per sample (a matrix-vector bmm is several times slower)
        h.row = torch.bmm(g_new.unsqueeze(1), h.ring[:, :n, 1].transpose(1, 2)).squeeze(1)
        h.row_host, h.observed = None, True
        return g_new

    def host_request(self, memory: _History) -> Tensor | None:
        return None if torch.is_grad_enabled() else memory.row

    def host_reply(self, memory: _History, values: np.ndarray) -> None:
        memory.row_host = values

    def overwrites(self, memory: _History) -> Tensor | None:
        return None if torch.is_grad_enabled() else memory.ring[:, (memory.count + 1) % self.m, 0]

    def owns(self, memory: _History, t: Tensor) -> bool:
        return t.untyped_storage().data_ptr() == memory.ring.untyped_storage().data_ptr()

    def step(self, z: Tensor, fz: Tensor, memory: _History, k: int) -> tuple[Tensor, _History]:
        h = memory
        if not h.observed:  # called on its own (outside the loop)
            self.observe(z, fz, h)
        slot = h.count % self.m
        n = min(h.count + 1, self.m)
        h.count += 1
        h.observed = False
        b = h.ring.shape[0]
        if torch.is_grad_enabled():
            gram = h.gram if h.gram is not None else torch.from_numpy(h.gram_host).to(h.ring)
            h.gram = gram = gram.clone()
            gram[:, slot, :n] = h.row
            gram[:, :n, slot] = h.row
            alpha = anderson_weights(gram[:, :n, :n], self.lam, newest=slot)
            coef = torch.stack([alpha, self.beta * alpha], dim=2).reshape(b, 2 * n)
            out = None
        else:
            row = h.row_host if h.row_host is not None else h.row.double().cpu().numpy()
            h.gram_host[:, slot, :n] = row
            h.gram_host[:, :n, slot] = row
            alpha = anderson_weights_host(h.gram_host[:, :n, :n], self.lam, newest=slot)
            coef_host = np.empty((b, 2 * n))
            coef_host[:, 0::2] = alpha
            coef_host[:, 1::2] = self.beta * alpha
            coef = torch.from_numpy(coef_host).to(device=h.ring.device, dtype=h.ring.dtype, non_blocking=True)
            out = h.ring[:, h.count % self.m, 0]  # may be the oldest pair, still being mixed
        h.row = h.row_host = None
        return _combine(h.rows(n), coef, None, None, self.backend, out=out), h


def _same_view(a: Tensor, b: Tensor) -> bool:
    return a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride()
