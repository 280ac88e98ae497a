"""Typed results of a fixed-point solve: the status and the per-sample diagnostics."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["Status", "FixedPointInfo", "FixedPointError"]


class Status(enum.IntEnum):
    """Outcome of a solve, per sample and overall (the overall status is the worst sample's).

    ``CONVERGED``: the residual reached the tolerance. ``MAX_ITER``: the iteration budget ran out first.
    ``DIVERGED``: the residual grew past ``divergence_factor`` times its initial value.
    ``NONFINITE``: ``f`` produced NaN or inf; the sample kept its last finite iterate.
    """

    CONVERGED = 0
    MAX_ITER = 1
    DIVERGED = 2
    NONFINITE = 3


@dataclass(repr=False)
class FixedPointInfo:
    """Diagnostics of one fixed-point solve of ``z = f(z)`` over a batch of ``B`` samples.

    Attributes:
        steps: ``(B,)`` number of evaluations of ``f`` each sample used until it stopped.
        abs_residual: ``(B,)`` ``||f(z) - z||_2`` at the returned ``z``.
        rel_residual: ``(B,)`` ``||f(z) - z||_2 / ||f(z)||_2`` at the returned ``z``.
        converged: ``(B,)`` bool, residual (in ``stop_mode``) at most ``tol``.
        sample_status: ``(B,)`` integer :class:`Status` codes.
        status: the worst sample status.
        nfe: evaluations of ``f`` (on the whole batch) spent by the solver.
        solver: name of the forward solver.
        tol, stop_mode: the stopping rule used.
        trace: optional ``(iterations, B)`` tensor of residuals in ``stop_mode``.
        backward: filled in by the implicit backward with the adjoint solve's own info.
        jacobian_loss: Jacobian penalty of :class:`~fpntools.FixedPoint` when one is configured (training).
    """

    steps: Tensor
    abs_residual: Tensor
    rel_residual: Tensor
    converged: Tensor
    sample_status: Tensor
    status: Status
    nfe: int
    solver: str
    tol: float
    stop_mode: str
    trace: Tensor | None = None
    backward: "FixedPointInfo | None" = field(default=None, repr=False)
    jacobian_loss: Tensor | None = field(default=None, repr=False)

    @property
    def residual(self) -> Tensor:
        """Per-sample residual in the stopping mode (relative or absolute)."""
        return self.rel_residual if self.stop_mode == "rel" else self.abs_residual

    @property
    def ok(self) -> bool:
        return self.status == Status.CONVERGED

    def summary(self) -> str:
        res = self.residual
        n_conv = int(self.converged.sum())
        return (
            f"{self.solver}: {self.status.name.lower()}, {n_conv}/{self.converged.numel()} converged, "
            f"steps max {int(self.steps.max()) if self.steps.numel() else 0}, "
            f"{self.stop_mode} residual max {float(res.max()) if res.numel() else 0.0:.3e} (tol {self.tol:.1e})"
        )

    def __repr__(self) -> str:
        extra = f", backward=<{self.backward.summary()}>" if self.backward is not None else ""
        return f"FixedPointInfo(<{self.summary()}>, nfe={self.nfe}{extra})"

    def raise_for_status(self) -> None:
        """Raise :class:`FixedPointError` unless every sample converged."""
        if self.status != Status.CONVERGED:
            raise FixedPointError(self)


class FixedPointError(RuntimeError):
    """A fixed-point solve ended without converging (raised only when asked to)."""

    def __init__(self, info: FixedPointInfo):
        self.info = info
        counts = torch.bincount(info.sample_status.long().flatten(), minlength=len(Status))
        detail = ", ".join(f"{int(c)} {s.name.lower()}" for s, c in zip(Status, counts) if int(c))
        super().__init__(f"fixed-point solve did not converge ({detail}): {info.summary()}")
