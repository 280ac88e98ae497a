"""The one input check for tensors given to fpntools (models, operators): a one-line error naming the problem.

Errors are :class:`~fpntools.errors.UserInputError` (a ``ValueError``; the top-level CLI prints it as one
line with exit code 2). A wrong type or dtype raises :class:`InputTypeError`, which is both a
``UserInputError`` and a ``TypeError``.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

from fpntools.errors import UserInputError

__all__ = ["InputTypeError", "check_tensor"]


class InputTypeError(UserInputError, TypeError):
    """Bad input of the wrong type or dtype (a ``UserInputError`` that is also a ``TypeError``)."""


def check_tensor(
    x: Any,
    name: str,
    *,
    ndim: int | Sequence[int] | None = None,
    min_ndim: int | None = None,
    floating: bool | None = True,
    shape: dict[int, int] | None = None,
    finite: bool = True,
    nonempty: bool = True,
    hint: str = "",
) -> Tensor:
    """Validate ``x`` and return it; raise a one-line error naming ``name`` and the problem.

    Args:
        ndim: allowed numbers of dimensions (``None``: any); ``min_ndim``: at least this many.
        floating: require a floating dtype (True), integer ids (False), or either (None).
        shape: required sizes of some dimensions, ``{dim: size}`` (negative ``dim`` allowed).
        finite: reject NaN / inf entries (one pass over ``x`` and a device sync; operators applied inside
            solver loops switch it off).
        nonempty: reject an empty batch (``x.shape[0] == 0``).
        hint: appended to every message, e.g. ``"DEQMLP expects (batch, 64)"``.
    """
    hint = f" ({hint})" if hint else ""
    if not isinstance(x, Tensor):
        raise InputTypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}{hint}")
    if ndim is not None:
        dims = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.dim() not in dims:
            want = " or ".join(str(d) for d in dims)
            raise UserInputError(f"{name} must have {want} dimensions, got shape {tuple(x.shape)}{hint}")
    if min_ndim is not None and x.dim() < min_ndim:
        raise UserInputError(
            f"{name} must have at least {min_ndim} dimensions (a batch of shape (B, ...)), got shape {tuple(x.shape)}{hint}"
        )
    if floating is True and not x.is_floating_point():
        raise InputTypeError(f"{name} must be floating point, got dtype {x.dtype}: expected a floating-point tensor{hint}")
    if floating is False and (x.is_floating_point() or x.is_complex() or x.dtype == torch.bool):
        raise InputTypeError(f"{name} must hold integer ids, got dtype {x.dtype}{hint}")
    for dim, size in (shape or {}).items():
        if x.shape[dim] != size:
            raise UserInputError(
                f"{name} has size {x.shape[dim]} in dimension {dim}, expected {size}; shape {tuple(x.shape)}{hint}"
            )
    if nonempty and x.dim() > 0 and x.shape[0] == 0:
        raise UserInputError(f"{name} has an empty batch{hint}")
    if finite and x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise UserInputError(f"{name} contains NaN or infinite values{hint}")
    return x
