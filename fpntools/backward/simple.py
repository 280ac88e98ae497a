"""Jacobian-free, phantom and unrolled backward modes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from fpntools.backward.base import BackwardMode, attach_surrogate
from fpntools.info import FixedPointInfo
from fpntools.solvers.base import FlatMap

__all__ = ["JFB", "Phantom", "Unroll"]


@dataclass
class JFB(BackwardMode):
    """Jacobian-free backpropagation (Wu Fung et al. 2022): differentiate one application of ``f`` at the
    detached fixed point, i.e. replace ``(I - J)^{-1}`` by ``I`` in the implicit gradient:
    ``dL/dtheta ~= dL/dz* . df(z*, theta)/dtheta``. Exact descent direction for contractive ``f``.
    """

    name: ClassVar[str] = "jfb"

    def attach(self, g: FlatMap, z_star: Tensor, info: FixedPointInfo) -> Tensor:
        return attach_surrogate(z_star, g(z_star.detach()))


@dataclass
class Phantom(BackwardMode):
    """Phantom gradient (Geng et al. 2021): differentiate ``k`` damped steps started at the detached fixed
    point, ``y_0 = z*``, ``y_{i+1} = (1 - tau) y_i + tau f(y_i)``. Its gradient tends to the implicit
    gradient as ``k -> inf`` (for ``tau`` in (0, 1] and contractive ``f``); ``k = 1, tau = 1`` is JFB.
    """

    k: int = 5
    tau: float = 0.5
    name: ClassVar[str] = "phantom"

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"Phantom steps k must be at least 1, got {self.k}")
        if not 0.0 < self.tau <= 1.0:
            raise ValueError(f"Phantom damping tau must lie in (0, 1], got {self.tau}")

    def attach(self, g: FlatMap, z_star: Tensor, info: FixedPointInfo) -> Tensor:
        y = z_star.detach()
        for _ in range(self.k):
            y = y + self.tau * (g(y) - y)
        return attach_surrogate(z_star, y)


@dataclass
class Unroll(BackwardMode):
    """Backpropagation through every forward iteration (the reference; memory grows with the steps)."""

    name: ClassVar[str] = "unroll"
    needs_forward_graph: ClassVar[bool] = True

    def attach(self, g: FlatMap, z_star: Tensor, info: FixedPointInfo) -> Tensor:
        return z_star
