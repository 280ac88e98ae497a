"""Image quality metrics for CT reconstructions (images in ``[0, 1]``)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["psnr", "ssim", "mse"]


def _as_batch(x: Tensor | np.ndarray) -> Tensor:
    t = torch.as_tensor(x).detach().to(torch.float64)
    return t[None] if t.ndim == 2 else t


def mse(x: Tensor | np.ndarray, ref: Tensor | np.ndarray) -> Tensor:
    """Per-image mean squared error ``(B,)``."""
    a, b = _as_batch(x), _as_batch(ref)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {tuple(a.shape)} vs reference {tuple(b.shape)}")
    return (a - b).pow(2).flatten(1).mean(dim=1)


def psnr(x: Tensor | np.ndarray, ref: Tensor | np.ndarray, data_range: float = 1.0) -> Tensor:
    """Per-image PSNR ``10 log10(data_range^2 / MSE(x, ref))`` in dB, shape ``(B,)`` (float64)."""
    m = mse(x, ref).clamp_min(1e-20)
    return 10.0 * torch.log10(torch.as_tensor(data_range, dtype=torch.float64) ** 2 / m)


def ssim(x: Tensor | np.ndarray, ref: Tensor | np.ndarray, data_range: float = 1.0) -> Tensor:
    """Per-image SSIM (scikit-image, Gaussian-free 7x7 window) ``(B,)``."""
    from skimage.metrics import structural_similarity

    a, b = _as_batch(x).cpu().numpy(), _as_batch(ref).cpu().numpy()
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs reference {b.shape}")
    return torch.tensor([structural_similarity(u, v, data_range=data_range) for u, v in zip(a, b)])
