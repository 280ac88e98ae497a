"""Backward modes: how gradients flow through a fixed point ``z* = f(z*)``.

Every mode returns a tensor whose *value* is exactly the solver's ``z*`` and whose *gradient* follows the
mode's rule. The trick is ``out = z* + (y - y.detach())`` for a differentiable surrogate ``y`` built from
the detached ``z*``: the parenthesis is exactly zero in value, so only ``y``'s graph is added.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch
from torch import Tensor

from fpntools.info import FixedPointInfo
from fpntools.solvers.base import FlatMap

__all__ = ["BackwardMode", "attach_surrogate"]


class _Surrogate(torch.autograd.Function):
    """``z*`` in value (a view of it, no copy), the gradient passed on unchanged to the surrogate ``y``; rows of
    ``y`` that are not finite (a sample whose solve ended ``NONFINITE``) receive no gradient."""

    @staticmethod
    def forward(ctx, y: Tensor, z_star: Tensor) -> Tensor:  # noqa: ANN001
        ctx.finite = torch.isfinite(y.detach()).all(dim=1, keepdim=True)
        return z_star.view_as(z_star)

    @staticmethod
    def backward(ctx, v: Tensor) -> tuple[Tensor, None]:  # noqa: ANN001
        return v * ctx.finite, None


def attach_surrogate(z_star: Tensor, surrogate: Tensor) -> Tensor:
    """``z*`` in value, ``surrogate`` in gradient (the backward pass hands the incoming gradient of ``z*`` to
    ``surrogate``'s graph unchanged).

    The result is a view of ``z*`` made by a custom autograd function: no state-sized copy is made (the
    former ``z* + (y - y.detach())`` allocated two), but it must not be modified in place (clone it first).
    Rows where the surrogate is not finite (a sample whose solve ended ``NONFINITE``) get no gradient.
    """
    if not surrogate.requires_grad:
        return z_star
    return _Surrogate.apply(surrogate, z_star.detach())


class BackwardMode(ABC):
    """Base class of backward modes.

    ``needs_forward_graph``: the forward solve must run with autograd on (unrolled differentiation).
    """

    name: ClassVar[str] = "backward"
    needs_forward_graph: ClassVar[bool] = False

    @abstractmethod
    def attach(self, g: FlatMap, z_star: Tensor, info: FixedPointInfo) -> Tensor:
        """Return ``z*`` (flat ``(B, N)``) connected to the graph of ``g`` (flat ``f``) by this mode's rule."""
