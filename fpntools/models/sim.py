"""Stable invariant models (SIM; Konishi & Kawahara 2023, "Stable Invariant Models via Koopman Spectra").

A DEQ computes the limit of the iterates ``z_{k+1} = f(z_k; x)``. SIM lifts the state into observables
``g = psi(x) in R^m`` where the dynamics act linearly through a Koopman operator ``K``,
``g_{k+1} = K g_k``. If ``K`` is stable (spectrum in the closed unit disk, the eigenvalue ``1``
semisimple and all other eigenvalues strictly inside), the limit exists and is the spectral projection

.. math::
    g_\\infty = \\lim_{n\\to\\infty} K^n g = P g, \\qquad P = \\sum_{\\lambda_i = 1} v_i w_i^*,

onto the invariant (eigenvalue-1) subspace. SIM learns this limit directly as a rank-``r`` linear map
``P = U V`` (``V: R^m -> R^r``, ``U: R^r -> R^m``), so the infinite-depth model is evaluated in one pass and
trained like a feedforward network: ``y = W_out rho(U V psi(x))`` with ``rho`` a decoder ("inverse basis").

Variants (both here):

* ``"single"`` (single tier): ``psi`` is a learned network.
* ``"two"`` (two tiers): after the learned ``psi`` a frozen random Fourier feature map
  ``phi(g) = [cos(Omega g), sin(Omega g)] / sqrt(m'/2)``, ``Omega_ij ~ N(0, 1/sigma^2)``, approximates the
  feature space of a Gaussian kernel of bandwidth ``sigma``, a richer dictionary of observables in which
  linear (Koopman) dynamics are more expressive; ``P`` acts on ``phi(psi(x))``.

:meth:`SIMClassifier.invariance_error` reports ``||P^2 - P||_F / ||P||_F``, how far the learned limit
operator is from a projection (zero for an exact Koopman limit).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from fpntools.models.base import ZooOutput, check_tensor

__all__ = ["RandomFourierFeatures", "SIMClassifier"]


class RandomFourierFeatures(nn.Module):
    """Frozen map ``g -> [cos(Omega g), sin(Omega g)] / sqrt(out_dim/2)`` with ``Omega ~ N(0, 1/sigma^2)``.

    ``<phi(a), phi(b)> ~= exp(-||a - b||^2 / (2 sigma^2))`` (Rahimi & Recht). ``Omega`` is a buffer (not trained).
    """

    def __init__(self, in_dim: int, out_dim: int, bandwidth: float = 1.0, generator: torch.Generator | None = None):
        super().__init__()
        if out_dim % 2:
            raise ValueError(f"random Fourier features need an even out_dim, got {out_dim}")
        if bandwidth <= 0:
            raise ValueError(f"bandwidth must be positive, got {bandwidth}")
        omega = torch.randn(out_dim // 2, in_dim, generator=generator) / bandwidth
        self.register_buffer("omega", omega)
        self.scale = 1.0 / math.sqrt(out_dim / 2)

    def forward(self, g: Tensor) -> Tensor:
        proj = g @ self.omega.T
        return torch.cat([torch.cos(proj), torch.sin(proj)], dim=-1) * self.scale


class SIMClassifier(nn.Module):
    """SIM for vector inputs ``(B, in_dim)`` (images flattened by the caller or by ``basis``).

    Args:
        in_dim, n_classes: input size and number of classes.
        variant: ``"single"`` or ``"two"`` (tiers of observables, see the module docstring).
        width: hidden width of the basis ``psi`` and the decoder ``rho`` (2 hidden layers each).
        tier_dim: number of learned observables ``m``.
        rff_dim: number of random Fourier observables (two-tier only).
        rank: rank ``r`` of the limit operator ``P = U V`` (default ``m'/2``).
        bandwidth: kernel bandwidth ``sigma`` of the random features.
        basis: optional custom observable network mapping inputs to ``(B, tier_dim)``.
    """

    def __init__(
        self,
        in_dim: int,
        n_classes: int,
        variant: str = "single",
        width: int = 64,
        tier_dim: int = 64,
        rff_dim: int = 128,
        rank: int | None = None,
        bandwidth: float = 4.0,
        basis: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if variant not in ("single", "two"):
            raise ValueError(f"SIM variant must be 'single' or 'two', got {variant!r}")
        self.variant, self.in_dim = variant, in_dim
        self._default_basis = basis is None
        self.basis = basis or nn.Sequential(
            nn.Linear(in_dim, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, tier_dim)
        )
        obs_dim = tier_dim
        self.rff: RandomFourierFeatures | None = None
        if variant == "two":
            self.rff = RandomFourierFeatures(tier_dim, rff_dim, bandwidth)
            obs_dim = rff_dim
        rank = rank or obs_dim // 2
        self.V = nn.Linear(obs_dim, rank, bias=False)
        self.U = nn.Linear(rank, obs_dim, bias=False)
        self.decoder = nn.Sequential(
            nn.Linear(obs_dim, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width)
        )
        self.out = nn.Linear(width, n_classes)

    def observables(self, x: Tensor) -> Tensor:
        """``psi(x)`` (single tier) or ``phi(psi(x))`` (two tiers)."""
        g = self.basis(x)
        return self.rff(g) if self.rff is not None else g

    def limit_operator(self) -> Tensor:
        """The learned Koopman limit ``P = U V`` as an ``(m, m)`` matrix."""
        return self.U.weight @ self.V.weight

    def invariance_error(self) -> float:
        """``||P^2 - P||_F / ||P||_F`` (0 when ``P`` is a projection, as an exact Koopman limit is)."""
        with torch.no_grad():
            p = self.limit_operator()
            return float(torch.linalg.norm(p @ p - p) / torch.linalg.norm(p).clamp_min(1e-30))

    def forward(self, x: Tensor) -> ZooOutput:
        if self._default_basis:
            x = check_tensor(x, "x", ndim=2, shape={1: self.in_dim}, hint=f"SIMClassifier expects (batch, {self.in_dim})")
        g_inf = self.U(self.V(self.observables(x)))  # P g: the invariant part of the observables
        return ZooOutput(self.out(self.decoder(g_inf)))
