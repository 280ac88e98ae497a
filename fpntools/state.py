"""States of a fixed-point map: a tensor or a tuple/list of tensors, batched along dim 0.

Solvers work on a flat batch matrix ``(B, N)``. :class:`StateSpec` records the structure of a state so it
can be flattened (``N = sum_i prod(shape_i[1:])``) and restored, and validates that ``f`` keeps it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence, Union

import torch
from torch import Tensor

__all__ = ["State", "StateSpec"]

State = Union[Tensor, tuple, list]


@dataclass(frozen=True)
class StateSpec:
    """Structure of a batched state: container kind, per-tensor shapes (batch included), dtype, device."""

    kind: str  # "tensor" | "tuple" | "list"
    shapes: tuple[torch.Size, ...]
    dtype: torch.dtype
    device: torch.device

    @property
    def batch_size(self) -> int:
        return self.shapes[0][0]

    @property
    def sizes(self) -> tuple[int, ...]:
        """Flattened per-sample size of each tensor."""
        return tuple(math.prod(s[1:]) for s in self.shapes)

    @property
    def dim(self) -> int:
        return sum(self.sizes)

    @staticmethod
    def _tensors(z: Any, name: str) -> tuple[str, Sequence[Tensor]]:
        if isinstance(z, Tensor):
            return "tensor", (z,)
        if isinstance(z, (tuple, list)):
            if len(z) == 0:
                raise ValueError(f"{name} is an empty {type(z).__name__}; a state needs at least one tensor")
            for i, t in enumerate(z):
                if not isinstance(t, Tensor):
                    raise TypeError(f"{name}[{i}] is a {type(t).__name__}, expected a torch.Tensor")
            return ("tuple" if isinstance(z, tuple) else "list"), z
        raise TypeError(f"{name} must be a tensor or a tuple/list of tensors, got {type(z).__name__}")

    @classmethod
    def of(cls, z0: State, name: str = "z0") -> "StateSpec":
        """Describe ``z0`` and check it is a valid initial state (floating, batched, finite, one device)."""
        kind, ts = cls._tensors(z0, name)
        first = ts[0]
        for i, t in enumerate(ts):
            where = name if kind == "tensor" else f"{name}[{i}]"
            if not t.is_floating_point():
                raise TypeError(f"{where} has dtype {t.dtype}; fixed-point states must be floating point")
            if t.dtype != first.dtype:
                raise TypeError(f"{where} has dtype {t.dtype} but {name}[0] has {first.dtype}; use one dtype")
            if t.device != first.device:
                raise ValueError(f"{where} is on {t.device} but {name}[0] is on {first.device}")
            if t.dim() == 0:
                raise ValueError(f"{where} is a scalar; states are batched along dim 0, e.g. shape (B, n)")
            if t.shape[0] != first.shape[0]:
                raise ValueError(f"{where} has batch size {t.shape[0]} but {name}[0] has {first.shape[0]}")
            if not bool(torch.isfinite(t).all()):
                raise ValueError(f"{where} contains NaN or inf")
        if first.shape[0] == 0:
            raise ValueError(f"{name} has an empty batch (batch size 0)")
        return cls(kind, tuple(t.shape for t in ts), first.dtype, first.device)

    def flatten(self, z: State) -> Tensor:
        _, ts = self._tensors(z, "state")
        b = self.batch_size
        if len(ts) == 1:
            return ts[0].reshape(b, -1)
        return torch.cat([t.reshape(b, -1) for t in ts], dim=1)

    def check(self, z: Any, name: str = "f(z)") -> None:
        """Raise a clear error unless ``z`` has exactly this structure, shapes and dtype."""
        kind, ts = self._tensors(z, name)
        if kind != self.kind or len(ts) != len(self.shapes):
            raise ValueError(
                f"{name} returned a {kind} of {len(ts)} tensor(s) but the state is a {self.kind} of "
                f"{len(self.shapes)} tensor(s); f must map a state to a state of the same structure"
            )
        for i, (t, s) in enumerate(zip(ts, self.shapes)):
            where = name if kind == "tensor" else f"{name}[{i}]"
            if t.shape != s:
                raise ValueError(f"{where} has shape {tuple(t.shape)} but the state has shape {tuple(s)}")
            if t.dtype != self.dtype:
                raise TypeError(f"{where} has dtype {t.dtype} but the state has dtype {self.dtype}")

    def unflatten(self, flat: Tensor) -> State:
        if self.kind == "tensor":
            return flat.reshape(self.shapes[0])
        parts = torch.split(flat, self.sizes, dim=1)
        ts = [p.reshape(s) for p, s in zip(parts, self.shapes)]
        return tuple(ts) if self.kind == "tuple" else ts
