"""Picard and Krasnosel'skii-Mann iterations."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from fpntools.solvers.base import FixedPointSolver

__all__ = ["Picard", "KM"]


@dataclass
class KM(FixedPointSolver):
    """Krasnosel'skii-Mann (relaxed) iteration ``z_{k+1} = (1 - alpha) z_k + alpha f(z_k)``.

    Converges to a fixed point for any averaged / nonexpansive ``f`` with ``0 < alpha < 1``
    (weak convergence in general, linear for contractions).
    """

    alpha: float = 0.5
    name: ClassVar[str] = "km"

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha <= 1.0:
            raise ValueError(f"KM relaxation alpha must lie in (0, 1], got {self.alpha}")

    def step(self, z: Tensor, fz: Tensor, memory: Any, k: int) -> tuple[Tensor, Any]:
        if self.alpha == 1.0:
            return fz, memory
        return torch.lerp(z, fz, self.alpha), memory  # (1 - alpha) z + alpha f(z), one new buffer


@dataclass
class Picard(KM):
    """Plain fixed-point iteration ``z_{k+1} = f(z_k)`` (KM with ``alpha = 1``)."""

    alpha: float = 1.0
    name: ClassVar[str] = "picard"
