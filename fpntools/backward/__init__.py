"""Backward modes: implicit differentiation (adjoint by a fixed-point solver or by CG on the normal equations),
Jacobian-free, phantom and unrolled gradients."""

from __future__ import annotations

from typing import Any

from fpntools.backward.base import BackwardMode, attach_surrogate
from fpntools.backward.implicit import Implicit
from fpntools.backward.implicit_cg import ImplicitCG
from fpntools.backward.simple import JFB, Phantom, Unroll

__all__ = [
    "BackwardMode",
    "Implicit",
    "ImplicitCG",
    "JFB",
    "Phantom",
    "Unroll",
    "attach_surrogate",
    "make_backward",
    "BACKWARDS",
]

BACKWARDS: dict[str, type[BackwardMode]] = {
    "implicit": Implicit,
    "implicit_cg": ImplicitCG,
    "jfb": JFB,
    "phantom": Phantom,
    "unroll": Unroll,
}


def make_backward(backward: str | BackwardMode, **options: Any) -> BackwardMode:
    """A backward mode from a name and its options (``make_backward("phantom", k=10)``), or pass one through."""
    if isinstance(backward, BackwardMode):
        if options:
            raise TypeError(f"options {sorted(options)} given together with a backward object; set them on the object")
        return backward
    if not isinstance(backward, str) or backward.lower() not in BACKWARDS:
        raise ValueError(f"unknown backward mode {backward!r}; choose one of {sorted(BACKWARDS)} or pass a BackwardMode")
    cls = BACKWARDS[backward.lower()]
    try:
        return cls(**options)
    except TypeError as exc:
        raise TypeError(f"invalid option for backward {backward!r}: {exc}") from None
