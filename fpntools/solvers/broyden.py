"""Limited-memory ("good") Broyden method on the residual ``g(z) = f(z) - z``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from fpntools.solvers.base import FixedPointSolver

__all__ = ["Broyden"]


@dataclass
class _BroydenMemory:
    u: Tensor  # (B, mem, N)
    v: Tensor  # (B, mem, N)
    count: int = 0
    z_prev: Tensor | None = None
    g_prev: Tensor | None = None
    best: Tensor | None = None  # (B,) smallest residual norm seen


@dataclass
class Broyden(FixedPointSolver):
    """Root finding for ``g(z) = f(z) - z = 0`` with Broyden's good update of the inverse Jacobian.

    The inverse Jacobian of ``g`` is approximated by ``H = -I + sum_i u_i v_i^T`` (``-I`` is exact when
    ``f`` is constant; the first step is then a Picard step). Each step moves ``z <- z - alpha H g(z)`` and
    applies the Sherman-Morrison form of the good Broyden update with ``dz = z_k - z_{k-1}``,
    ``dg = g_k - g_{k-1}``:  ``u = (dz - H dg) / (dz^T H dg)``, ``v = H^T dz``.
    At most ``memory`` rank-one terms are kept: when the memory is full it restarts from ``H = -I`` (dropping
    single old terms instead breaks the secant conditions the newer terms rely on and can diverge). A sample
    whose residual grows past ``restart_factor`` times its best residual also restarts. Samples whose
    denominator is tiny skip the update, so the step never divides by zero.
    """

    memory: int = 20
    alpha: float = 1.0
    restart_factor: float = 1e3
    name: ClassVar[str] = "broyden"

    def __post_init__(self) -> None:
        if self.memory < 1:
            raise ValueError(f"Broyden memory must be at least 1, got {self.memory}")
        if not self.alpha > 0:
            raise ValueError(f"Broyden step alpha must be positive, got {self.alpha}")

    def init(self, z0: Tensor) -> _BroydenMemory:
        b, n = z0.shape
        return _BroydenMemory(u=z0.new_zeros(b, self.memory, n), v=z0.new_zeros(b, self.memory, n))

    @staticmethod
    def _h(u: Tensor, v: Tensor, x: Tensor) -> Tensor:
        """``H x = -x + sum_i u_i (v_i . x)``."""
        return -x + torch.einsum("bjn,bj->bn", u, torch.einsum("bjn,bn->bj", v, x))

    @staticmethod
    def _ht(u: Tensor, v: Tensor, x: Tensor) -> Tensor:
        """``H^T x = -x + sum_i v_i (u_i . x)``."""
        return -x + torch.einsum("bjn,bj->bn", v, torch.einsum("bjn,bn->bj", u, x))

    def step(self, z: Tensor, fz: Tensor, memory: _BroydenMemory, k: int) -> tuple[Tensor, _BroydenMemory]:
        mem = memory
        gz = fz - z
        gnorm = torch.linalg.vector_norm(gz, dim=1)
        mem.best = gnorm if mem.best is None else torch.minimum(mem.best, gnorm)
        keep = (gnorm <= self.restart_factor * mem.best)[:, None, None]  # per-sample restart on growth
        if mem.count == self.memory:  # full: restart every sample from H = -I
            mem.count, keep = 0, torch.zeros_like(keep)
        if torch.is_grad_enabled():
            mem.u, mem.v = mem.u.clone(), mem.v.clone()
        if not bool(keep.all()):
            mem.u.mul_(keep)
            mem.v.mul_(keep)
        n = mem.count
        if mem.z_prev is not None and n < self.memory:
            dz, dg = z - mem.z_prev, gz - mem.g_prev
            u_act, v_act = mem.u[:, :n], mem.v[:, :n]
            h_dg = self._h(u_act, v_act, dg)
            vt = self._ht(u_act, v_act, dz)
            denom = (vt * dg).sum(dim=1, keepdim=True)
            scale = torch.linalg.vector_norm(vt, dim=1, keepdim=True) * torch.linalg.vector_norm(dg, dim=1, keepdim=True)
            ok = denom.abs() > 1e-10 * scale.clamp_min(torch.finfo(z.dtype).tiny)
            ok &= keep[:, :, 0]
            u_new = torch.where(ok, (dz - h_dg) / torch.where(ok, denom, torch.ones_like(denom)), torch.zeros_like(dz))
            mem.u[:, n] = u_new
            mem.v[:, n] = torch.where(ok, vt, torch.zeros_like(vt))
            mem.count = n = n + 1
        mem.z_prev, mem.g_prev = z, gz
        direction = -self._h(mem.u[:, :n], mem.v[:, :n], gz) if n else gz
        return z + self.alpha * direction, mem
