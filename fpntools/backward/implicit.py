"""Implicit differentiation through a fixed point."""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, ClassVar

import torch
from torch import Tensor

from fpntools.backward.base import BackwardMode
from fpntools.info import FixedPointInfo, FixedPointError, Status
from fpntools.solvers import FixedPointSolver, make_solver
from fpntools.solvers.base import FlatMap

__all__ = ["AdjointBackward", "Implicit"]


class _AdjointGate(torch.autograd.Function):
    """``z*`` in value (a view, no copy); in the backward pass the incoming gradient ``v`` of ``z*`` is replaced
    by the adjoint solution ``u = (I - J)^{-T} v``, which flows on as the gradient of ``f(z*)`` through ``f``'s
    own graph (rows of ``f(z*)`` that are not finite get none).

    The adjoint closure (holding ``f(z*)`` and ``z*``) lives on this node's context: downstream of ``f(z*)``,
    so it is freed with the caller's graph (a tensor hook on ``f(z*)`` that captures ``f(z*)`` would form a
    cycle through autograd's C++ graph that Python's collector cannot free), and the node works for any
    number of backward passes (``retain_graph=True``).
    """

    @staticmethod
    def forward(ctx, fz: Tensor, z_star: Tensor, adjoint: Callable[[Tensor], Tensor]) -> Tensor:  # noqa: ANN001
        ctx.adjoint = adjoint
        ctx.finite = torch.isfinite(fz.detach()).all(dim=1, keepdim=True)
        return z_star.view_as(z_star)

    @staticmethod
    def backward(ctx, v: Tensor) -> tuple[Tensor, None, None]:  # noqa: ANN001
        return ctx.adjoint(v) * ctx.finite, None, None


class AdjointBackward(BackwardMode):
    """Base of the implicit modes: saves one application ``f(z*)`` and, in the backward pass, replaces the
    incoming gradient ``v`` of ``z*`` by the adjoint solution ``u = (I - J)^{-T} v`` that
    :meth:`_adjoint` computes from that saved graph (subclasses choose the linear solver and provide ``tol``,
    ``stop_mode`` and ``raise_on_failure``, which :meth:`_record` reports)."""

    def attach(self, g: FlatMap, z_star: Tensor, info: FixedPointInfo) -> Tensor:
        z_in = z_star.detach().requires_grad_()
        with torch.enable_grad():
            fz = g(z_in)
        if not fz.requires_grad:  # f depends on nothing that requires grad: no graph to attach
            return z_star
        return _AdjointGate.apply(fz, z_star.detach(), partial(self._adjoint, fz, z_in, info=info))

    @abstractmethod
    def _adjoint(self, fz: Tensor, z_in: Tensor, v: Tensor, *, info: FixedPointInfo) -> Tensor:
        """``u = (I - J)^{-T} v`` with ``J = df/dz`` at ``z_in`` (``fz = f(z_in)`` holds the graph); records the
        solve in ``info.backward``."""

    def _record(
        self,
        info: FixedPointInfo,
        *,
        steps: Tensor,
        abs_residual: Tensor,
        rel_residual: Tensor,
        sample_status: Tensor,
        nfe: int,
        solver: str,
    ) -> None:
        """Store the adjoint solve's :class:`FixedPointInfo` in ``info.backward`` (with the mode's ``tol`` and
        ``stop_mode``) and raise :class:`FixedPointError` if ``raise_on_failure`` and it did not converge."""
        status = Status(int(sample_status.max()))
        info.backward = FixedPointInfo(
            steps=steps,
            abs_residual=abs_residual,
            rel_residual=rel_residual,
            converged=sample_status == int(Status.CONVERGED),
            sample_status=sample_status,
            status=status,
            nfe=nfe,
            solver=solver,
            tol=self.tol,
            stop_mode=self.stop_mode,
        )
        if self.raise_on_failure and status != Status.CONVERGED:
            raise FixedPointError(info.backward)


@dataclass
class Implicit(AdjointBackward):
    """Implicit function theorem gradient.

    With ``z* = f(z*, theta)`` and ``J = df/dz (z*)``, ``dL/dtheta = u^T df/dtheta`` where ``u`` solves the
    adjoint fixed point ``u = J^T u + dL/dz*``, i.e. ``(I - J)^T u = dL/dz*``. The adjoint is solved with
    its own solver (vector-Jacobian products through one saved application of ``f``), started from
    ``dL/dz*`` or, with ``warm_start``, from the previous adjoint solution of the same shape. The adjoint
    solve's :class:`FixedPointInfo` is stored in ``info.backward`` of the forward solve.
    ``raise_on_failure`` raises :class:`FixedPointError` when the adjoint solve does not converge.
    """

    solver: str | FixedPointSolver = "anderson"
    tol: float = 1e-6
    max_iter: int = 50
    stop_mode: str = "rel"
    warm_start: bool = False
    raise_on_failure: bool = False
    name: ClassVar[str] = "implicit"
    _last: Tensor | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self._solver = make_solver(self.solver)

    def _adjoint(self, fz: Tensor, z_in: Tensor, v: Tensor, *, info: FixedPointInfo) -> Tensor:
        v = v.detach()

        def adjoint_map(u: Tensor) -> Tensor:
            (jtu,) = torch.autograd.grad(fz, z_in, u, retain_graph=True)
            if _fresh(jtu, u, v):  # autograd's own new buffer: add in place, no second state-sized one
                return jtu.add_(v)
            return jtu + v

        u0 = self._last if (self.warm_start and self._last is not None and self._last.shape == v.shape) else v
        with torch.no_grad():
            res = self._solver.solve(adjoint_map, u0, tol=self.tol, max_iter=self.max_iter, stop_mode=self.stop_mode)
        if self.warm_start:
            self._last = res.z.detach()
        self._record(
            info, steps=res.steps, abs_residual=res.abs_residual, rel_residual=res.rel_residual,
            sample_status=res.sample_status, nfe=res.nfe, solver=self._solver.name,
        )
        return res.z


def _fresh(t: Tensor, *others: Tensor) -> bool:
    """``t`` is a plain contiguous tensor sharing memory with none of ``others`` (so it may be written in place;
    autograd hands a gradient through unchanged, e.g. for ``f(z) = z + c``, and then returns the very tensor
    it was given)."""
    if not t.is_contiguous():  # (a contiguous tensor has no overlapping entries)
        return False
    ptr = t.untyped_storage().data_ptr()
    return all(o.untyped_storage().data_ptr() != ptr for o in others)
