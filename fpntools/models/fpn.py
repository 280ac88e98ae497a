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
import torch.nn.functional as F
from torch import Tensor, nn

from fpntools.models.base import SolveConfig, ZooOutput, check_tensor, collect, make_fixed_point

__all__ = ["ConvFPNClassifier", "ConvFPNLayer", "FPNClassifier", "FPNLayer"]


def _check_gamma(gamma: float) -> None:
    if not 0.0 < gamma < 1.0:
        raise ValueError(f"contraction factor gamma must lie in (0, 1), got {gamma}")


class FPNLayer(nn.Module):
    """``T(u; q, W) = relu(gamma W u / ||W||_2 + q)``; ``q = Q(d)`` and the weight are inputs."""

    def __init__(self, width: int, gamma: float = 0.9) -> None:
        super().__init__()
        _check_gamma(gamma)
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


class ConvFPNLayer(nn.Module):
    """``T(u; q, K) = relu(K * u + q)`` on feature maps ``(B, C, H, W)``, ``K`` a 3x3 circular convolution.

    The kernel is an input (the classifier normalises it once per forward pass), so every solver iteration
    sees the same map. With ``||K||_op <= gamma < 1`` (the norm of the convolution *operator* on ``H x W``
    maps) and 1-Lipschitz ``relu``, ``T`` is a ``gamma``-contraction in ``u``.
    """

    def forward(self, u: Tensor, q: Tensor, kernel: Tensor) -> Tensor:
        return torch.relu(F.conv2d(F.pad(u, (1, 1, 1, 1), mode="circular"), kernel) + q)

    def initial_state(self, q: Tensor, kernel: Tensor) -> Tensor:
        return torch.zeros_like(q)


class ConvFPNClassifier(nn.Module):
    """Convolutional FPN classifier for images ``(B, C_in, H, W)``, the kind the JFB paper trains.

    ``Q`` = two 3x3 convolutions (ReLU between), the latent map is :class:`ConvFPNLayer` whose kernel is
    bounded by :func:`fpntools.contraction.spectral_normalize` with ``method="fft"``: the exact operator norm
    of the circular convolution on ``H x W`` maps, ``max_omega ||K_hat(omega)||_2``, so
    ``||K||_op <= gamma`` holds exactly (not up to power-iteration error). ``S`` = 2x2 average pooling and a
    linear layer. Default solve: Anderson with the JFB backward.
    """

    def __init__(
        self, in_channels: int, image_size: tuple[int, int], n_classes: int, channels: int = 32,
        gamma: float = 0.9, cfg: SolveConfig | None = None,
    ) -> None:  # fmt: skip
        super().__init__()
        from fpntools.contraction import spectral_normalize

        _check_gamma(gamma)
        h, w = (int(s) for s in image_size)
        if h < 3 or w < 3 or h % 2 or w % 2:
            raise ValueError(f"image_size must be even and at least 3 per side (2x2 pooling), got {image_size}")
        self.cfg = cfg or SolveConfig(backward="jfb")
        self.in_channels, self.image_size, self.gamma = in_channels, (h, w), gamma
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, padding=1), nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1)
        )
        self.latent = nn.Conv2d(channels, channels, 3, padding=1, padding_mode="circular", bias=False)
        spectral_normalize(self.latent, coeff=gamma, input_shape=(channels, h, w), method="fft")
        self.layer = ConvFPNLayer()
        self.fpn = make_fixed_point(self.layer, self.cfg)
        pooled = channels * (h // 2) * (w // 2)
        self.classifier = nn.Sequential(nn.AvgPool2d(2), nn.Flatten(), nn.Linear(pooled, n_classes))

    def forward(self, x: Tensor) -> ZooOutput:
        h, w = self.image_size
        x = check_tensor(x, "x", ndim=4, shape={1: self.in_channels, 2: h, 3: w},
                         hint=f"ConvFPNClassifier expects images (batch, {self.in_channels}, {h}, {w})")
        q = self.features(x)
        u, info = self.fpn(q, self.latent.weight)  # the normalised kernel, computed once per forward
        return ZooOutput(self.classifier(u), [info], collect([info]))
