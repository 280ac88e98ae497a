"""Small helpers shared by the operator modules."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from fpntools.checks import check_tensor as _check_tensor


def per_sample(v: float | Tensor, x: Tensor, name: str) -> Tensor:
    """A per-sample scalar as a tensor broadcastable to ``x`` (same dtype/device).

    Accepts a number, a 0-d tensor, a ``(B,)`` (or ``(1,)``) tensor, which becomes ``(B, 1, ..., 1)``, or a
    tensor already of shape ``(B, 1, ..., 1)`` / ``(1, ..., 1)`` with ``x.ndim`` dims.
    """
    t = torch.as_tensor(v, dtype=x.dtype, device=x.device)
    if t.ndim == 0:
        return t
    if t.ndim == 1 and t.shape[0] in (1, x.shape[0]):
        return t.reshape(-1, *([1] * (x.ndim - 1)))
    if t.ndim == x.ndim and t.shape[0] in (1, x.shape[0]) and all(s == 1 for s in t.shape[1:]):
        return t
    raise ValueError(f"{name} must be a scalar or have shape (B,) = ({x.shape[0]},), got {tuple(t.shape)}")


def check_tensor(x: Any, name: str, min_ndim: int = 1) -> None:
    """Operator inputs: :func:`fpntools.checks.check_tensor` requiring a floating tensor with at least
    ``min_ndim`` dims; no finiteness or empty-batch test (operators run inside solver loops, where that pass
    and its sync would cost every iteration). Wrong type or dtype: ``InputTypeError`` (a ``TypeError``);
    too few dims: ``UserInputError`` (a ``ValueError``)."""
    _check_tensor(x, name, min_ndim=min_ndim, finite=False, nonempty=False)
