"""Training memory of an equilibrium layer vs the same weight-tied layer unrolled explicitly.

Method (CPU, exact for activations): every tensor autograd saves for the backward pass goes through
``torch.autograd.graph.saved_tensors_hooks``; we add up the bytes of distinct storages, excluding the
parameters (stored anyway). This is the memory that grows with depth in an explicit network. The DEQ runs
its forward solve without a graph and keeps one application of ``f`` for the implicit backward, so its
count does not depend on the number of iterations. On CUDA the peak of ``torch.cuda.max_memory_allocated``
above the baseline is reported instead.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from fpntools.models import DEQTransformerLayer, MDEQLayer, SolveConfig, make_fixed_point, unroll

__all__ = ["SavedTensorBytes", "MemoryRow", "measure_memory", "LAYERS"]


class SavedTensorBytes:
    """Context manager: bytes of distinct non-parameter tensors saved for backward while active."""

    def __init__(self, module: nn.Module) -> None:
        self.bytes = 0
        self._seen = {p.untyped_storage().data_ptr() for p in module.parameters()}

    def __enter__(self) -> "SavedTensorBytes":
        def pack(t: Tensor) -> Tensor:
            key = t.untyped_storage().data_ptr()
            if key not in self._seen:
                self._seen.add(key)
                self.bytes += t.untyped_storage().nbytes()
            return t

        self._ctx = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._ctx.__exit__(*exc)


@dataclass
class MemoryRow:
    layer: str
    depth: int
    explicit_mb: float
    deq_mb: float
    explicit_ms: float
    deq_ms: float

    @property
    def reduction(self) -> float:
        return 1.0 - self.deq_mb / self.explicit_mb


def _transformer(batch: int, device: str) -> tuple[nn.Module, tuple]:
    layer = DEQTransformerLayer(d_model=64, n_heads=4).to(device)
    u = torch.randn(batch, 64, 64, device=device)
    return layer, (u,)


def _mdeq(batch: int, device: str) -> tuple[nn.Module, tuple]:
    layer = MDEQLayer(channels=(16, 32), groups=4).to(device)
    u = (torch.randn(batch, 16, 16, 16, device=device), torch.randn(batch, 32, 8, 8, device=device))
    return layer, (u,)


LAYERS: dict[str, Callable[[int, str], tuple[nn.Module, tuple]]] = {
    "DEQ-Transformer (d=64, T=64)": _transformer,
    "MDEQ (16x16x16 + 32x8x8)": _mdeq,
}


def _loss(z) -> Tensor:
    zs = z if isinstance(z, tuple) else (z,)
    return sum((t * t).mean() for t in zs)


def _run(layer: nn.Module, inputs: tuple, depth: int, deq: bool, device: str) -> tuple[float, float]:
    cfg = SolveConfig(tol=1e-12, max_iter=depth, backward_tol=1e-12, backward_max_iter=depth)
    fp = make_fixed_point(layer, cfg) if deq else None
    layer.zero_grad(set_to_none=True)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    with SavedTensorBytes(layer) as saved:
        z0 = layer.initial_state(*inputs)
        z = fp(*inputs, z0=z0)[0] if deq else unroll(layer, z0, inputs, depth)
        loss = _loss(z)
    loss.backward()
    if cuda:
        torch.cuda.synchronize()
        mem = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        mem = saved.bytes / 2**20
    return mem, 1e3 * (time.perf_counter() - t0)


def measure_memory(depths: tuple[int, ...] = (5, 10, 20, 30, 50), batch: int = 8, device: str = "cpu",
                   layers: tuple[str, ...] | None = None) -> list[MemoryRow]:
    """Memory and time of one forward+backward at each depth (solver iterations = explicit layers)."""
    rows = []
    for name in layers or tuple(LAYERS):
        torch.manual_seed(0)
        layer, inputs = LAYERS[name](batch, device)
        _run(layer, inputs, 2, True, device)  # warm-up (lazy imports, allocator) outside the timings
        for d in depths:
            em, et = _run(layer, inputs, d, False, device)
            dm, dt = _run(layer, inputs, d, True, device)
            rows.append(MemoryRow(name, d, em, dm, et, dt))
    return rows
