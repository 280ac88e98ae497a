"""U-Net on a reference reconstruction that adapts the F-FPN regulariser to each sinogram.

The F-FPN map must stay a contraction in ``u``; anything computed from the measurements alone is a constant of
the map and may be as expressive as we like. :class:`ReferenceConditioner` looks at the reference reconstruction
``u_ref(y)`` (the FBP or a short TV solve, ``FFPNConfig.reference``) once per reconstruction and returns

* per-pixel, per-channel **gates** ``g_l in (0, 1)^{C x n x n}`` that multiply the hidden features of the
  1-Lipschitz CNN ``Phi`` (an elementwise product with values in ``[0, 1]`` is 1-Lipschitz, so ``Phi`` stays
  1-Lipschitz in ``u``): the regulariser smooths where ``u_ref`` shows flat regions and keeps edges elsewhere,
  a learned, spatially adaptive prior;
* an additive **offset image** ``b`` (``a * u_ref + head(u_ref)``, ``a`` a learned scalar), which shifts the fixed
  point towards a learned estimate without changing the Lipschitz constant.

Architecture: a U-Net (Ronneberger et al. 2015) with ``levels`` resolutions, two 3x3 convolutions + GroupNorm +
ReLU per block, average pooling down, bilinear upsampling and skip concatenation up, 1x1 head.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ReferenceConditioner"]


def _block(c_in: int, c_out: int) -> nn.Sequential:
    groups = math.gcd(c_out, 8)
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1), nn.GroupNorm(groups, c_out), nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1), nn.GroupNorm(groups, c_out), nn.ReLU(inplace=True),
    )


class ReferenceConditioner(nn.Module):
    """``u_ref (B, n, n) -> (gates, offset)``: ``gates[l]`` of shape ``(B, gate_channels[l], n, n)`` in ``(0, 1)``
    and ``offset`` of shape ``(B, n, n)``.

    Args:
        gate_channels: channels of each gated hidden layer of ``Phi``.
        width: channels of the first U-Net level (doubled at every coarser level).
        levels: number of resolutions (``>= 1``); any image size works (skips are resized to match).
        offset_scale: initial ``a`` in ``offset = a * u_ref + head(u_ref)``.
        gate_bias: initial pre-sigmoid gate value (``2`` opens the gates to ~0.88 at initialisation).
        extra_channels: further input images beside ``u_ref`` (e.g. a constant map of the noise level).
    """

    def __init__(self, gate_channels: list[int], width: int = 16, levels: int = 3, offset_scale: float = 0.0,
                 gate_bias: float = 2.0, extra_channels: int = 0) -> None:
        super().__init__()
        if levels < 1 or width < 1:
            raise ValueError(f"levels and width must be >= 1, got {levels}, {width}")
        self.gate_channels = list(gate_channels)
        widths = [width * 2**i for i in range(levels)]
        self.down = nn.ModuleList([_block(1 + extra_channels, widths[0])] + [_block(widths[i - 1], widths[i]) for i in range(1, levels)])
        self.up = nn.ModuleList(_block(widths[i + 1] + widths[i], widths[i]) for i in range(levels - 1))
        n_out = 1 + sum(self.gate_channels)
        self.head = nn.Conv2d(widths[0], n_out, 1)
        nn.init.zeros_(self.head.weight)
        with torch.no_grad():
            self.head.bias.zero_()
            self.head.bias[1:] = gate_bias
        self.offset_scale = nn.Parameter(torch.tensor(float(offset_scale)))

    def forward(self, reference: Tensor, extra: Tensor | None = None) -> tuple[list[Tensor], Tensor]:
        """``extra``: ``(B, extra_channels, n, n)`` further inputs (``None`` when ``extra_channels == 0``)."""
        h = reference[:, None] if extra is None else torch.cat([reference[:, None], extra], dim=1)
        skips = []
        for i, block in enumerate(self.down):
            if i > 0:
                h = F.avg_pool2d(h, 2, ceil_mode=True)
            h = block(h)
            skips.append(h)
        for i in reversed(range(len(self.up))):
            skip = skips[i]
            h = F.interpolate(h, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            h = self.up[i](torch.cat([h, skip], dim=1))
        out = self.head(h)
        offset = self.offset_scale * reference + out[:, 0]
        gates, start = [], 1
        for c in self.gate_channels:
            gates.append(torch.sigmoid(out[:, start : start + c]))
            start += c
        return gates, offset
