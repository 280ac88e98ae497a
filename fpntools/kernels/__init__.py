"""Fused engine steps as Triton kernels with torch fallbacks (Triton is optional and imported lazily).

See :mod:`fpntools.kernels.anderson` for the dispatch rules (``backend="auto" | "torch" | "triton"``).
"""

from fpntools.kernels.anderson import (
    Backend,
    anderson_combine,
    anderson_gram,
    anderson_mix,
    residual_norms,
    triton_available,
    triton_status,
)

__all__ = [
    "Backend",
    "anderson_combine",
    "anderson_gram",
    "anderson_mix",
    "residual_norms",
    "triton_available",
    "triton_status",
]
