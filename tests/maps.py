"""Small fixed-point maps with known properties, shared by the engine tests."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class TanhLayer(nn.Module):
    """``f(z) = tanh(W z + U x + b)`` with ``||W||_2 = rho``: a contraction with Lipschitz constant ``rho``."""

    def __init__(self, n: int, d: int, rho: float = 0.9, dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        w = torch.randn(n, n, dtype=dtype)
        self.W = nn.Parameter(rho * w / torch.linalg.matrix_norm(w, 2))
        self.U = nn.Parameter(torch.randn(n, d, dtype=dtype) / d**0.5)
        self.b = nn.Parameter(0.1 * torch.randn(n, dtype=dtype))

    def forward(self, z: Tensor, x: Tensor) -> Tensor:
        return torch.tanh(z @ self.W.T + x @ self.U.T + self.b)

    def initial_state(self, x: Tensor) -> Tensor:
        return x.new_zeros(x.shape[0], self.W.shape[0])


def linear_slow_map(n: int, rho: float, batch: int, dtype=torch.float64) -> tuple:
    """Affine map ``f(z) = A z + c`` with spectrum of ``A`` in ``[-rho, rho]``: slow for Picard when rho ~ 1."""
    q, _ = torch.linalg.qr(torch.randn(n, n, dtype=dtype))
    eig = torch.linspace(-rho, rho, n, dtype=dtype)
    a = q @ torch.diag(eig) @ q.T
    c = torch.randn(batch, n, dtype=dtype)
    return (lambda z: z @ a.T + c), a, c
