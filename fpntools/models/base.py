"""Pieces shared by the model zoo: the output record and input checks (the solve configuration,
:class:`~fpntools.solve_config.SolveConfig`, lives beside ``fixed_point`` and is re-exported here).

Every zoo model returns a :class:`ZooOutput`: the prediction (``logits``), the
:class:`~fpntools.info.FixedPointInfo` of each equilibrium solve it ran, and an auxiliary loss (the Jacobian
penalty of Bai, Koltun & Kolter 2021 when it is switched on) that the training loop adds to the task loss.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import Tensor, nn

from fpntools.checks import check_tensor
from fpntools.fixed_point import FixedPoint
from fpntools.info import FixedPointInfo
from fpntools.solve_config import JacobianRegConfig, SolveConfig, make_fixed_point

__all__ = [
    "ZooOutput",
    "SolveConfig",
    "JacobianRegConfig",
    "make_fixed_point",
    "count_parameters",
    "check_tensor",
    "fixed_point_modules",
    "collect",
]


@dataclass
class ZooOutput:
    """What a zoo model returns.

    Attributes:
        logits: the prediction (class scores ``(B, C)``, token scores ``(B, T, V)``, pixel scores
            ``(B, C, H, W)`` or a regression output).
        infos: one :class:`FixedPointInfo` per equilibrium solve (empty for explicit models).
        aux_loss: scalar added to the task loss by the trainer (Jacobian penalty), or ``None``.
    """

    logits: Tensor
    infos: list[FixedPointInfo] = field(default_factory=list)
    aux_loss: Tensor | None = None

    @property
    def forward_steps(self) -> float:
        """Mean number of forward solver steps per sample over all solves (0 for explicit models)."""
        if not self.infos:
            return 0.0
        return float(sum(i.steps.float().mean() for i in self.infos) / len(self.infos))


def collect(infos: Sequence[FixedPointInfo]) -> Tensor | None:
    """Sum of the Jacobian losses recorded in ``infos`` (``None`` when there are none)."""
    losses = [i.jacobian_loss for i in infos if i.jacobian_loss is not None]
    if not losses:
        return None
    return torch.stack([torch.as_tensor(l).reshape(()) for l in losses]).sum()


def fixed_point_modules(model: nn.Module) -> list[FixedPoint]:
    """All :class:`~fpntools.FixedPoint` submodules of ``model`` in definition order."""
    return [m for m in model.modules() if isinstance(m, FixedPoint)]


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
