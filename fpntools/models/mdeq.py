"""Multiscale deep equilibrium model (MDEQ; Bai, Koltun & Kolter 2020).

The state is a tuple of feature maps at ``K`` resolutions, ``z = (z_1, ..., z_K)`` with
``z_k in R^{C_k x H/2^{k-1} x W/2^{k-1}}``, all driven to one joint equilibrium ``z* = f(z*; x)``:

1. per-branch residual block (weight-normalised convolutions, group normalisation) with the input
   injected into every branch (``u_1`` = stem features, ``u_k`` = a 1x1 convolution of ``u_1`` average-pooled
   to resolution ``k``; injecting only into ``u_1`` leaves the coarse branches as scale-free normalised
   maps that converge slowly):

   .. math::
       b_k = \\mathrm{GN}(\\mathrm{relu}(z_k + \\mathrm{GN}(W^{(2)}_k * \\mathrm{relu}(\\mathrm{GN}(W^{(1)}_k * z_k)) + u_k)))

2. multiscale fusion: every branch receives every other branch resampled to its resolution,
   ``f_k = GN(relu(sum_j T_{jk}(b_j)))``, where ``T_{jk}`` is the identity for ``j = k``, a chain of
   ``k - j`` stride-2 3x3 convolutions for ``j < k`` (downsampling) and a 1x1 convolution followed by
   nearest-neighbour upsampling by ``2^{j-k}`` for ``j > k`` (no normalisation inside ``T_{jk}``, so
   ``init_scale`` sets how strongly the branches are coupled at initialisation).

Weight normalisation ``W = g v / ||v||`` (:func:`fpntools.contraction.weight_normalize`) decouples the
scale of each filter from its direction, which keeps the layer's Lipschitz constant controllable.
Heads: :class:`MDEQClassifier` (pool every branch, concatenate, linear) and :class:`MDEQSegmenter`
(upsample every branch to full resolution, concatenate, 1x1 convolutions to per-pixel class scores).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from fpntools.contraction import weight_normalize as weight_norm

from fpntools.errors import UserInputError
from fpntools.models.base import SolveConfig, ZooOutput, check_tensor, collect, make_fixed_point

__all__ = ["MDEQLayer", "MDEQBackbone", "MDEQClassifier", "MDEQSegmenter"]


def _wn_conv(cin: int, cout: int, k: int = 3, stride: int = 1, scale: float = 1.0) -> nn.Module:
    conv = nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False)
    with torch.no_grad():
        conv.weight.mul_(scale)
    return weight_norm(conv)


class _Branch(nn.Module):
    def __init__(self, c: int, groups: int, scale: float) -> None:
        super().__init__()
        self.conv1, self.conv2 = _wn_conv(c, c, 3, scale=scale), _wn_conv(c, c, 3, scale=scale)
        self.gn1, self.gn2, self.gn3 = nn.GroupNorm(groups, c), nn.GroupNorm(groups, c), nn.GroupNorm(groups, c)

    def forward(self, z: Tensor, inj: Tensor | None) -> Tensor:
        y = self.conv2(torch.relu(self.gn1(self.conv1(z))))
        if inj is not None:
            y = y + inj
        return self.gn3(torch.relu(z + self.gn2(y)))


class MDEQLayer(nn.Module):
    """The MDEQ map ``f((z_1..z_K); u) -> (z_1'..z_K')`` (residual branches + multiscale fusion)."""

    def __init__(self, channels: Sequence[int] = (16, 32), groups: int = 4, init_scale: float = 0.5) -> None:
        super().__init__()
        self.channels = tuple(channels)
        if len(self.channels) < 1:
            raise ValueError("MDEQ needs at least one resolution")
        for c in self.channels:
            if c % groups:
                raise ValueError(f"channel count {c} is not divisible by groups {groups}")
        K = len(self.channels)
        self.branches = nn.ModuleList(_Branch(c, groups, init_scale) for c in self.channels)
        self.fuse = nn.ModuleDict()
        for j in range(K):  # source
            for k in range(K):  # target
                if j == k:
                    continue
                cj, ck = self.channels[j], self.channels[k]
                if j < k:  # downsample j -> k in (k - j) stride-2 steps
                    steps: list[nn.Module] = []
                    for s in range(k - j):
                        cout = ck if s == k - j - 1 else cj
                        steps.append(_wn_conv(cj, cout, 3, stride=2, scale=init_scale))
                        if s < k - j - 1:
                            steps.append(nn.ReLU())
                    self.fuse[f"{j}_{k}"] = nn.Sequential(*steps)
                else:  # upsample j -> k: 1x1 conv, then nearest upsampling in forward
                    self.fuse[f"{j}_{k}"] = _wn_conv(cj, ck, 1, scale=init_scale)
        self.post = nn.ModuleList(nn.GroupNorm(groups, c) for c in self.channels)

    def forward(self, z: tuple[Tensor, ...], u: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        b = [br(zk, uk) for br, zk, uk in zip(self.branches, z, u)]
        out = []
        for k in range(len(b)):
            acc = b[k]
            for j in range(len(b)):
                if j == k:
                    continue
                t = self.fuse[f"{j}_{k}"](b[j])
                if j > k:
                    t = F.interpolate(t, scale_factor=2 ** (j - k), mode="nearest")
                acc = acc + t
            out.append(self.post[k](torch.relu(acc)))
        return tuple(out)

    def initial_state(self, u: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        return tuple(torch.zeros_like(uk) for uk in u)


class MDEQBackbone(nn.Module):
    """Stem (3x3 conv, GN, relu) + MDEQ equilibrium; returns the equilibrium tuple and its info."""

    def __init__(
        self, in_channels: int, channels: Sequence[int] = (16, 32), groups: int = 4,
        cfg: SolveConfig | None = None, init_scale: float = 0.5,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.cfg = cfg or SolveConfig()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, channels[0], 3, padding=1, bias=False), nn.GroupNorm(groups, channels[0]), nn.ReLU())
        self.layer = MDEQLayer(channels, groups, init_scale)
        self.inject = nn.ModuleList(nn.Conv2d(channels[0], c, 1) for c in channels[1:])
        self.deq = make_fixed_point(self.layer, self.cfg)

    def forward(self, x: Tensor):
        x = check_tensor(x, "images", ndim=4, shape={1: self.in_channels}, hint="MDEQ expects (batch, channels, H, W)")
        f = 2 ** (len(self.layer.channels) - 1)
        if x.shape[-1] % f or x.shape[-2] % f:
            raise UserInputError(
                f"image size {tuple(x.shape[-2:])} must be divisible by {f} for {len(self.layer.channels)} resolutions"
            )
        u0 = self.stem(x)
        u = (u0,) + tuple(inj(F.avg_pool2d(u0, 2 ** (k + 1))) for k, inj in enumerate(self.inject))
        z, info = self.deq(u)
        return z, info


class MDEQClassifier(nn.Module):
    """MDEQ image classifier: global average pool of every resolution, concatenated, linear."""

    def __init__(self, in_channels: int, n_classes: int, channels: Sequence[int] = (16, 32), groups: int = 4,
                 cfg: SolveConfig | None = None, init_scale: float = 0.5) -> None:
        super().__init__()
        self.backbone = MDEQBackbone(in_channels, channels, groups, cfg, init_scale)
        self.head = nn.Linear(sum(channels), n_classes)

    @property
    def deq(self):
        return self.backbone.deq

    def forward(self, x: Tensor) -> ZooOutput:
        z, info = self.backbone(x)
        feats = torch.cat([zk.mean(dim=(2, 3)) for zk in z], dim=1)
        return ZooOutput(self.head(feats), [info], collect([info]))


class MDEQSegmenter(nn.Module):
    """MDEQ segmentation: every resolution upsampled to the input size, concatenated, two 1x1 convs.

    Output: per-pixel class scores ``(B, n_classes, H, W)`` (use ``cross_entropy`` with ``(B, H, W)`` labels).
    """

    def __init__(self, in_channels: int, n_classes: int, channels: Sequence[int] = (16, 32), groups: int = 4,
                 cfg: SolveConfig | None = None, init_scale: float = 0.5) -> None:
        super().__init__()
        self.backbone = MDEQBackbone(in_channels, channels, groups, cfg, init_scale)
        c = sum(channels)
        self.head = nn.Sequential(nn.Conv2d(c, c, 1), nn.GroupNorm(groups, c), nn.ReLU(), nn.Conv2d(c, n_classes, 1))

    def forward(self, x: Tensor) -> ZooOutput:
        z, info = self.backbone(x)
        size = z[0].shape[-2:]
        ups = [z[0]] + [F.interpolate(zk, size=size, mode="bilinear", align_corners=False) for zk in z[1:]]
        return ZooOutput(self.head(torch.cat(ups, dim=1)), [info], collect([info]))
