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

import numpy as np
import torch
from torch import Tensor

from fpntools.info import Status
from fpntools.kernels import residual_norms as _checked_residual_norms
from fpntools.kernels.anderson import _residual_norms as _fused_residual_norms

__all__ = ["FlatMap", "SolverResult", "FixedPointSolver", "residual_norms"]

FlatMap = Callable[[Tensor], Tensor]
_TINY = 1e-30


def residual_norms(fz: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sample ``||f(z) - z||_2`` and ``||f(z)||_2`` of flat ``(B, N)`` tensors (no autograd).

    One fused pass on CUDA (:func:`fpntools.kernels.residual_norms`), torch elsewhere.
    """
    return _checked_residual_norms(fz.detach(), z.detach())


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
    worst_status: int = -1
    """The largest code in ``sample_status`` (the overall :class:`~fpntools.info.Status`), -1 if not given."""


class FixedPointSolver(ABC):
    """Base class of forward solvers. Subclasses implement :meth:`init` and :meth:`step` (and may implement
    :meth:`observe`).

    ``step(z, fz, memory, k)`` returns the next iterate proposal and the updated solver memory; memory must
    stay bounded (a fixed-size history). The loop in :meth:`solve` is shared by every solver.
    """

    name: ClassVar[str] = "solver"

    def init(self, z0: Tensor) -> Any:
        """Solver memory before the first step (``None`` for memoryless solvers)."""
        return None

    def observe(self, z: Tensor, fz: Tensor, memory: Any) -> Tensor | None:
        """Record the pair ``(z_k, f(z_k))`` before the loop measures it; return ``g_k = f(z_k) - z_k`` if the
        solver keeps it anyway (the loop then takes its residual norm from it instead of forming it again).

        May be called again with the same ``k`` (the loop replaces non-finite entries of ``f(z_k)`` by
        ``z_k`` and observes again); :meth:`step` then uses the last observation. Default: nothing kept.
        """
        return None

    def host_request(self, memory: Any) -> Tensor | None:
        """A small ``(B, j)`` tensor the next :meth:`step` needs on the host (e.g. Anderson's new Gram row): the
        loop copies it together with the residual norms, in its one device-to-host transfer per iteration, and
        hands the copy to :meth:`host_reply`. Default ``None``."""
        return None

    def host_reply(self, memory: Any, values: np.ndarray) -> None:
        """Receive the host copy (float64 ``(B, j)``) of what :meth:`host_request` asked for."""

    def overwrites(self, memory: Any) -> Tensor | None:
        """The part of ``memory`` the next :meth:`step` writes over (the loop copies its best iterate out of it
        first when it lives there); ``None`` when a step writes nothing in place."""
        return None

    def owns(self, memory: Any, t: Tensor) -> bool:
        """Whether ``t`` lives in ``memory`` (the loop then returns a copy, so the buffers can be freed)."""
        return False

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

        Cost per iteration, besides ``g``: the two residual norms (from the solver's own ``g_k`` when
        :meth:`observe` returns it, else one fused pass over ``f(z_k)`` and ``z_k``), one device-to-host copy
        of the ``2B`` norms and of what :meth:`host_request` asks for (the only synchronisation), and the
        per-sample bookkeeping on the host in numpy.
        State-sized buffers held by the loop: ``z_k``, ``f(z_k)`` and the best iterate (an alias of ``z_k``
        while every running sample improves).
        """
        if stop_mode not in ("rel", "abs"):
            raise ValueError(f"stop_mode must be 'rel' or 'abs', got {stop_mode!r}")
        if max_iter < 1:
            raise ValueError(f"max_iter must be at least 1, got {max_iter}")
        if not tol >= 0:
            raise ValueError(f"tol must be >= 0, got {tol}")
        fixed_steps = tol == 0  # an unrolled network: exactly max_iter steps, the last iterate is returned
        rel = stop_mode == "rel"
        b = z0.shape[0]
        dev = z0.device
        differentiable = torch.is_grad_enabled()
        acc = torch.float64 if z0.dtype == torch.float64 else torch.float32
        on_host = dev.type == "cpu"

        def device_mask(mask: np.ndarray) -> Tensor:
            t = torch.from_numpy(mask)[:, None]
            return t if on_host else t.to(dev, non_blocking=True)

        # per-sample bookkeeping on the host: B numbers per iteration, one transfer instead of ~30 tiny kernels
        active = np.ones(b, dtype=bool)
        status = np.full(b, int(Status.MAX_ITER), dtype=np.int8)
        steps = np.zeros(b, dtype=np.int64)
        all_active = True  # active.all(), kept as a flag (samples only ever stop)
        best_abs = np.full(b, np.inf)
        best_rel = np.full(b, np.inf)
        threshold: np.ndarray | None = None
        history: list[np.ndarray] = []
        z = z0
        best_z = z0
        best_owned = False  # best_z is a buffer of this loop (not an alias of an iterate or of z0)
        memory = self.init(z0)
        nfe = 0
        for k in range(max_iter):
            fz = g(z)
            nfe += 1
            gz = self.observe(z, fz, memory)
            request = self.host_request(memory)
            with torch.no_grad():
                if gz is not None:
                    cols = [torch.linalg.vector_norm(gz, dim=1, dtype=acc)[:, None],
                            torch.linalg.vector_norm(fz, dim=1, dtype=acc)[:, None]]
                else:
                    cols = [t.to(acc)[:, None] for t in _fused_residual_norms(fz.detach(), z.detach())]
                if request is not None:
                    cols.append(request.detach().to(acc))
                host = torch.cat(cols, dim=1).cpu().numpy().astype(np.float64, copy=False)  # the one sync
            a, fn = host[:, 0], host[:, 1]
            if request is not None:
                self.host_reply(memory, host[:, 2:])
            finite = np.isfinite(a) & np.isfinite(fn)
            all_finite = bool(finite.all())
            with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
                r = a / np.maximum(fn, _TINY)
                if threshold is None and divergence_factor is not None:
                    threshold = divergence_factor * np.maximum(np.where(finite, a, 0.0), _TINY)
            res = r if rel else a
            if trace:
                history.append(np.where(active, res, np.nan))
            # the same per-sample rules in both branches; the first skips the masks that are all true
            if all_active and all_finite:
                steps += 1
                improved = a < best_abs
                newly_converged = res <= tol
                exploded = (a > threshold) if threshold is not None else None
            else:
                running = active & finite
                steps += active
                improved = running & (a < best_abs)
                newly_converged = running & (res <= tol)
                exploded = running & (a > threshold) if threshold is not None else None
            np.copyto(best_abs, a, where=improved)
            np.copyto(best_rel, r, where=improved)
            if improved.all():
                best_z, best_owned = z, False
            elif improved.any():
                if best_owned and not differentiable:
                    torch.where(device_mask(improved), z, best_z, out=best_z)
                else:
                    best_z, best_owned = torch.where(device_mask(improved), z, best_z), True
            stopped = newly_converged
            if newly_converged.any():
                status[newly_converged] = int(Status.CONVERGED)
            if not all_finite:
                newly_nonfinite = active & ~finite
                status[newly_nonfinite] = int(Status.NONFINITE)
                stopped = stopped | newly_nonfinite
            if exploded is not None and exploded.any():
                newly_diverged = exploded & ~newly_converged
                status[newly_diverged] = int(Status.DIVERGED)
                stopped = stopped | newly_diverged
            if stopped.any():
                active &= ~stopped
                all_active = False
            if progress is not None:
                progress(k, torch.from_numpy(res))
            any_active = all_active or bool(active.any())
            if not any_active or k == max_iter - 1:
                if fixed_steps and any_active:  # z_K = step(z_{K-1}, f(z_{K-1})) for running samples
                    z_last, _ = self.step(z, fz, memory, k)
                    best_z = z_last if all_active else torch.where(device_mask(active), z_last, best_z)
                break
            if not all_finite:  # a non-finite f(z) for some samples: they keep z (and are stopped)
                fz = torch.where(device_mask(finite), fz, z)
                self.observe(z, fz, memory)
            if not best_owned:  # an alias of an earlier iterate: keep it out of a slot the step overwrites
                target = self.overwrites(memory)
                if target is not None and best_z.data_ptr() == target.data_ptr():
                    best_z, best_owned = best_z.clone(), True
            z_next, memory = self.step(z, fz, memory, k)
            del fz  # not alive while g evaluates the next iterate
            z = z_next if all_active else torch.where(device_mask(active), z_next, best_z)
        if self.owns(memory, best_z):  # a view of the solver's buffers: copy it so they can be freed
            best_z = best_z.clone()
        return SolverResult(
            z=best_z,
            steps=torch.from_numpy(steps).to(dev),
            abs_residual=torch.from_numpy(best_abs).to(device=dev, dtype=_result_dtype(z0.dtype)),
            rel_residual=torch.from_numpy(best_rel).to(device=dev, dtype=_result_dtype(z0.dtype)),
            converged=torch.from_numpy(status == int(Status.CONVERGED)).to(dev),
            sample_status=torch.from_numpy(status).to(dev),
            nfe=nfe,
            trace=torch.from_numpy(np.stack(history)).to(device=dev, dtype=_result_dtype(z0.dtype)) if trace else None,
            worst_status=int(status.max()),
        )


def _result_dtype(dtype: torch.dtype) -> torch.dtype:
    """Residuals are reported in the state's dtype, float32 for half-precision states (no overflow)."""
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32
