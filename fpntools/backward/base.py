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


def attach_surrogate(z_star: Tensor, surrogate: Tensor) -> Tensor:
    """``z*`` in value, ``surrogate`` in gradient.

    Entries where the surrogate is not finite (a sample whose solve ended ``NONFINITE``) get no gradient
    instead of turning the value into ``inf - inf = NaN``.
    """
    delta = surrogate - surrogate.detach()
    if not bool(torch.isfinite(surrogate).all()):
        delta = torch.where(torch.isfinite(surrogate), delta, torch.zeros_like(delta))
    return z_star.detach() + delta


class BackwardMode(ABC):
    """Base class of backward modes.

    ``needs_forward_graph``: the forward solve must run with autograd on (unrolled differentiation).
    """

    name: ClassVar[str] = "backward"
    needs_forward_graph: ClassVar[bool] = False

    @abstractmethod
    def attach(self, g: FlatMap, z_star: Tensor, info: FixedPointInfo) -> Tensor:
        """Return ``z*`` (flat ``(B, N)``) connected to the graph of ``g`` (flat ``f``) by this mode's rule."""
