"""Fixed-point network (FPN) classifier trained with Jacobian-free backpropagation (Wu Fung et al. 2022).

The model is ``N(d) = S(u*_d)`` where ``u*_d`` is the fixed point of the latent map

.. math::
    T(u; d) = \\mathrm{relu}\\big(\\gamma\\, \\bar W u + Q(d)\\big), \\qquad \\bar W = W / \\|W\\|_2,

with ``Q`` a small feature extractor and ``S`` a linear classifier. ``relu`` is 1-Lipschitz, so ``T`` is a
``gamma``-contraction in ``u`` (``gamma < 1``) and ``u*`` exists, is unique and is reached by any of the
solvers. ``||W||_2`` is computed exactly (``torch.linalg.matrix_norm(W, 2)``, differentiable) once per
forward pass and passed to the layer, so every solver iteration sees the same map.

Training: ``cfg.backward = "jfb"`` (default) differentiates one application of ``T`` at the detached
fixed point, ``dL/dtheta ~= dL/du* . dT(u*, d)/dtheta``, which is a descent direction for contractive
``T`` and costs one layer backward. ``cfg.backward = "implicit"`` uses the exact implicit gradient
``dL/du* (I - J_T)^{-1} dT/dtheta`` (an adjoint fixed-point solve per step).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fpntools.models.base import SolveConfig, ZooOutput, check_tensor, collect, make_fixed_point

__all__ = ["FPNLayer", "FPNClassifier"]


class FPNLayer(nn.Module):
    """``T(u; q, W) = relu(gamma W u / ||W||_2 + q)``; ``q = Q(d)`` and the weight are inputs."""

    def __init__(self, width: int, gamma: float = 0.9) -> None:
        super().__init__()
        if not 0.0 < gamma < 1.0:
            raise ValueError(f"contraction factor gamma must lie in (0, 1), got {gamma}")
        self.weight = nn.Parameter(torch.empty(width, width))
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)  # distinct singular values: ||W||_2 is differentiable
        self.gamma, self.width = gamma, width

    def normalised_weight(self) -> Tensor:
        """``gamma W / ||W||_2`` (exact spectral norm; differentiable)."""
        return self.gamma * self.weight / torch.linalg.matrix_norm(self.weight, 2)

    def forward(self, u: Tensor, q: Tensor, w: Tensor) -> Tensor:
        return torch.relu(u @ w.T + q)

    def initial_state(self, q: Tensor, w: Tensor) -> Tensor:
        return torch.zeros_like(q)


class FPNClassifier(nn.Module):
    """FPN classifier for vector inputs ``(B, in_dim)``: ``Q`` = 2-layer MLP, ``S`` = linear.

    Default solve: Anderson, JFB backward; pass ``cfg=SolveConfig(backward="implicit")`` for implicit
    training.
    """

    def __init__(
        self, in_dim: int, n_classes: int, width: int = 64, gamma: float = 0.9, cfg: SolveConfig | None = None
    ) -> None:
        super().__init__()
        self.cfg = cfg or SolveConfig(backward="jfb")
        self.in_dim = in_dim
        self.features = nn.Sequential(nn.Linear(in_dim, width), nn.ReLU(), nn.Linear(width, width))
        self.layer = FPNLayer(width, gamma)
        self.fpn = make_fixed_point(self.layer, self.cfg)
        self.classifier = nn.Linear(width, n_classes)

    def forward(self, x: Tensor) -> ZooOutput:
        x = check_tensor(x, "x", ndim=2, shape={1: self.in_dim}, hint=f"FPNClassifier expects (batch, {self.in_dim})")
        q = self.features(x)
        u, info = self.fpn(q, self.layer.normalised_weight())
        return ZooOutput(self.classifier(u), [info], collect([info]))
