"""The shared fixed-point loop: a solver is a small object that proposes the next iterate ("one step");
the loop evaluates ``f``, measures per-sample residuals, stops samples individually and keeps the best.

For iterates ``z_k`` (flat ``(B, N)``) the loop evaluates ``f(z_k)`` and the residuals
``a_k = ||f(z_k) - z_k||_2`` and ``r_k = a_k / ||f(z_k)||_2``. A sample stops when its residual in
``stop_mode`` is at most ``tol`` (status converged), when ``f`` returns NaN/inf for it (nonfinite), or when
``a_k > divergence_factor * a_0`` (diverged). Stopped samples are frozen at their best iterate, so the
returned ``z`` is the iterate with the smallest residual that was measured, never one step past it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch
from torch import Tensor

from fpntools.info import Status
from fpntools.kernels import residual_norms as _fused_residual_norms

__all__ = ["FlatMap", "SolverResult", "FixedPointSolver", "residual_norms"]

FlatMap = Callable[[Tensor], Tensor]
_TINY = 1e-30


def residual_norms(fz: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sample ``||f(z) - z||_2`` and ``||f(z)||_2`` of flat ``(B, N)`` tensors (no autograd).

    One fused pass on CUDA (:func:`fpntools.kernels.residual_norms`), torch elsewhere.
    """
    return _fused_residual_norms(fz.detach(), z.detach())


@dataclass
class SolverResult:
    """What a solver returns on flat states (the engine wraps it into :class:`~fpntools.info.FixedPointInfo`)."""

    z: Tensor
    steps: Tensor
    abs_residual: Tensor
    rel_residual: Tensor
    converged: Tensor
    sample_status: Tensor
    nfe: int
    trace: Tensor | None


class FixedPointSolver(ABC):
    """Base class of forward solvers. Subclasses implement :meth:`init` and :meth:`step`.

    ``step(z, fz, memory, k)`` returns the next iterate proposal and the updated solver memory; memory must
    stay bounded (a fixed-size history). The loop in :meth:`solve` is shared by every solver.
    """

    name: ClassVar[str] = "solver"

    def init(self, z0: Tensor) -> Any:
        """Solver memory before the first step (``None`` for memoryless solvers)."""
        return None

    @abstractmethod
    def step(self, z: Tensor, fz: Tensor, memory: Any, k: int) -> tuple[Tensor, Any]:
        """Propose ``z_{k+1}`` from ``z_k`` and ``f(z_k)``."""

    def solve(
        self,
        g: FlatMap,
        z0: Tensor,
        *,
        tol: float = 1e-4,
        max_iter: int = 50,
        stop_mode: str = "rel",
        trace: bool = False,
        divergence_factor: float | None = 1e3,
        progress: Callable[[int, Tensor], None] | None = None,
    ) -> SolverResult:
        """Iterate until every sample stopped or ``max_iter`` evaluations of ``g`` were spent.

        ``tol = 0`` runs a fixed number of steps (an unrolled network): every sample that stays finite and
        does not diverge takes exactly ``max_iter`` steps and the result is the last iterate
        ``z_K = step(z_{K-1}, f(z_{K-1}))`` (``f^K(z_0)`` for Picard), not the best measured one; the
        residuals reported are those of the best measured iterate, as always.

        Runs with autograd exactly as the caller's grad mode says (unrolled differentiation needs it on).
        """
        if stop_mode not in ("rel", "abs"):
            raise ValueError(f"stop_mode must be 'rel' or 'abs', got {stop_mode!r}")
        if max_iter < 1:
            raise ValueError(f"max_iter must be at least 1, got {max_iter}")
        if not tol >= 0:
            raise ValueError(f"tol must be >= 0, got {tol}")
        fixed_steps = tol == 0  # an unrolled network: exactly max_iter steps, the last iterate is returned
        b = z0.shape[0]
        dev = z0.device
        z = z0
        memory = self.init(z0)
        active = torch.ones(b, dtype=torch.bool, device=dev)
        status = torch.full((b,), int(Status.MAX_ITER), dtype=torch.int8, device=dev)
        steps = torch.zeros(b, dtype=torch.long, device=dev)
        best_abs = torch.full((b,), float("inf"), dtype=z0.dtype, device=dev)
        best_rel = torch.full((b,), float("inf"), dtype=z0.dtype, device=dev)
        best_z = z0
        first_abs: Tensor | None = None
        history: list[Tensor] = []
        nfe = 0
        for k in range(max_iter):
            fz = g(z)
            nfe += 1
            a, fn = residual_norms(fz, z)
            r = a / fn.clamp_min(_TINY)
            res = r if stop_mode == "rel" else a
            finite = torch.isfinite(a) & torch.isfinite(fn)
            if first_abs is None:
                first_abs = torch.where(finite, a, torch.zeros_like(a))
            steps = torch.where(active, steps + 1, steps)
            improved = active & finite & (a < best_abs)
            best_abs = torch.where(improved, a, best_abs)
            best_rel = torch.where(improved, r, best_rel)
            best_z = z if bool(improved.all()) else torch.where(improved[:, None], z, best_z)
            if trace:
                history.append(torch.where(active, res, torch.full_like(res, float("nan"))))
            newly_nonfinite = active & ~finite
            newly_converged = active & finite & (res <= tol)
            if divergence_factor is None:
                newly_diverged = torch.zeros_like(active)
            else:
                exploded = a > divergence_factor * first_abs.clamp_min(_TINY)
                newly_diverged = active & finite & ~newly_converged & exploded
            status = torch.where(newly_converged, int(Status.CONVERGED), status)  # stays int8
            status = torch.where(newly_nonfinite, int(Status.NONFINITE), status)
            status = torch.where(newly_diverged, int(Status.DIVERGED), status)
            active = active & ~(newly_converged | newly_nonfinite | newly_diverged)
            if progress is not None:
                progress(k, res)
            if not bool(active.any()) or k == max_iter - 1:
                if fixed_steps and bool(active.any()):  # z_K = step(z_{K-1}, f(z_{K-1})) for running samples
                    z_last, _ = self.step(z, fz, memory, k)
                    best_z = z_last if bool(active.all()) else torch.where(active[:, None], z_last, best_z)
                break
            fz_safe = fz if bool(finite.all()) else torch.where(finite[:, None], fz, z)
            z_next, memory = self.step(z, fz_safe, memory, k)
            z = z_next if bool(active.all()) else torch.where(active[:, None], z_next, best_z)
        converged = status == int(Status.CONVERGED)
        return SolverResult(
            z=best_z,
            steps=steps,
            abs_residual=best_abs,
            rel_residual=best_rel,
            converged=converged,
            sample_status=status,
            nfe=nfe,
            trace=torch.stack(history) if trace else None,
        )
