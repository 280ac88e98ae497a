"""A fully connected DEQ (classifier or regressor) and the explicit unrolling of any weight-tied layer.

The equilibrium layer is the MLP analogue of the DEQ residual block (Bai, Kolter & Koltun 2019),

.. math::
    f(z; x) = \\mathrm{GN}_3\\big(\\mathrm{relu}(z + \\mathrm{GN}_2(u(x) + W_2\\,\\mathrm{relu}(\\mathrm{GN}_1(W_1 z))))\\big),
    \\qquad u(x) = U x + b,

and the model is ``y = head(z*)`` with ``z* = f(z*; x)`` found by :class:`~fpntools.FixedPoint` from
``z_0 = 0``. Group normalisation keeps the iterates bounded; the Jacobian penalty (``cfg.jacobian``)
keeps ``f`` contractive near ``z*`` so the solver needs few steps.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn

from fpntools.models.base import SolveConfig, ZooOutput, check_tensor, collect, make_fixed_point

__all__ = ["MLPBlock", "DEQMLP", "unroll"]


class MLPBlock(nn.Module):
    """``f(z; u) = GN(relu(z + GN(u + W2 relu(GN(W1 z)))))`` on ``(B, width)`` states; ``u`` is the injection."""

    def __init__(self, width: int, hidden: int | None = None, groups: int = 4, init_scale: float = 1.0) -> None:
        super().__init__()
        hidden = hidden or width
        if width % groups or hidden % groups:
            raise ValueError(f"width {width} and hidden {hidden} must be divisible by groups {groups}")
        self.lin1 = nn.Linear(width, hidden, bias=False)
        self.lin2 = nn.Linear(hidden, width, bias=False)
        self.gn1, self.gn2, self.gn3 = nn.GroupNorm(groups, hidden), nn.GroupNorm(groups, width), nn.GroupNorm(groups, width)
        with torch.no_grad():
            self.lin1.weight.mul_(init_scale)
            self.lin2.weight.mul_(init_scale)
        self.width = width

    def forward(self, z: Tensor, u: Tensor) -> Tensor:
        y = self.gn2(u + self.lin2(torch.relu(self.gn1(self.lin1(z)))))
        return self.gn3(torch.relu(z + y))

    def initial_state(self, u: Tensor) -> Tensor:
        return torch.zeros_like(u)


class DEQMLP(nn.Module):
    """DEQ for vector inputs: ``x (B, in_dim) -> u = Ux -> z* = f(z*; u) -> head(z*) (B, out_dim)``.

    Use ``out_dim = n_classes`` for classification (logits) or the target size for regression.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        width: int = 64,
        hidden: int | None = None,
        groups: int = 4,
        cfg: SolveConfig | None = None,
        init_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.cfg = cfg or SolveConfig()
        self.in_dim = in_dim
        self.inject = nn.Linear(in_dim, width)
        self.block = MLPBlock(width, hidden, groups, init_scale)
        self.deq = make_fixed_point(self.block, self.cfg)
        self.head = nn.Linear(width, out_dim)

    def forward(self, x: Tensor, z0: Tensor | None = None) -> ZooOutput:
        x = check_tensor(x, "x", ndim=2, shape={1: self.in_dim}, hint=f"DEQMLP expects (batch, {self.in_dim})")
        u = self.inject(x)
        z, info = self.deq(u, z0=z0)
        return ZooOutput(self.head(z), [info], collect([info]))


def unroll(layer: nn.Module, z0: Any, inputs: Sequence[Any], depth: int) -> Any:
    """Apply a weight-tied layer ``depth`` times explicitly, ``z_{k+1} = layer(z_k, *inputs)``.

    Backpropagation stores the activations of every application: memory grows linearly with ``depth``
    (the explicit baseline of the DEQ memory claim).
    """
    if depth < 1:
        raise ValueError(f"depth must be at least 1, got {depth}")
    z = z0
    for _ in range(depth):
        z = layer(z, *inputs)
    return z
