"""Image quality metrics (images in ``[0, data_range]``), one definition for every application.

All functions accept a single image ``(H, W)`` or a batch ``(B, ...)`` as a tensor or array and return
per-image values ``(B,)`` as a float64 tensor (``float(psnr(x, ref))`` for one image).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["psnr", "ssim", "mse"]


def _as_batch(x: Tensor | np.ndarray) -> Tensor:
    t = torch.as_tensor(np.ascontiguousarray(x) if isinstance(x, np.ndarray) else x).detach().to(torch.float64)
    return t[None] if t.ndim == 2 else t


def mse(x: Tensor | np.ndarray, ref: Tensor | np.ndarray, mask: Tensor | np.ndarray | None = None) -> Tensor:
    """Per-image mean squared error ``(B,)``; with ``mask`` (boolean, broadcastable to one image or the batch)
    only the pixels where it is true count."""
    a, b = _as_batch(x), _as_batch(ref)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {tuple(a.shape)} vs reference {tuple(b.shape)}")
    d = (a - b).pow(2)
    if mask is None:
        return d.flatten(1).mean(dim=1)
    m = torch.as_tensor(np.asarray(mask) if not isinstance(mask, Tensor) else mask).to(torch.bool)
    m = torch.broadcast_to(m, d.shape).to(d.device)
    return (d * m).flatten(1).sum(dim=1) / m.flatten(1).sum(dim=1).clamp_min(1)


def psnr(x: Tensor | np.ndarray, ref: Tensor | np.ndarray, data_range: float = 1.0,
         mask: Tensor | np.ndarray | None = None) -> Tensor:
    """Per-image PSNR ``10 log10(data_range^2 / MSE(x, ref))`` in dB, shape ``(B,)`` (float64)."""
    m = mse(x, ref, mask).clamp_min(1e-20)
    return 10.0 * torch.log10(torch.as_tensor(data_range, dtype=torch.float64) ** 2 / m)


def ssim(x: Tensor | np.ndarray, ref: Tensor | np.ndarray, data_range: float = 1.0) -> Tensor:
    """Per-image SSIM (scikit-image, 7x7 uniform window) ``(B,)``; a trailing channel axis is not supported,
    pass ``(B, H, W)`` per channel."""
    from skimage.metrics import structural_similarity

    a, b = _as_batch(x).cpu().numpy(), _as_batch(ref).cpu().numpy()
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs reference {b.shape}")
    return torch.tensor([structural_similarity(u, v, data_range=data_range) for u, v in zip(a, b)])
