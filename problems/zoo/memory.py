"""Training memory of an equilibrium layer vs the same weight-tied layer unrolled explicitly.

Method: the peak of all tensor memory allocated during one forward+backward above what was allocated
before it (:class:`fpntools.bench.memory.PeakMemory`): on CPU every allocation and free of the CPU allocator
recorded by the torch profiler, on CUDA ``torch.cuda.max_memory_allocated``. This counts the activations
autograd saves, the solver's working buffers (Anderson's history, the adjoint solve's), gradients and
temporaries. The explicit network keeps every layer's activations for the backward pass, so its peak grows
with depth; the DEQ solves without a graph, keeps one application of ``f`` for the implicit backward and
solves the adjoint with a fixed-size history, so its peak does not depend on the number of iterations.
Times come from a separate, unprofiled run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from fpntools.bench.memory import PeakMemory, state_bytes
from fpntools.models import DEQTransformerLayer, MDEQLayer, SolveConfig, make_fixed_point, unroll

__all__ = ["MemoryRow", "SavedTensorBytes", "measure_memory", "LAYERS", "METHOD_CPU", "METHOD_CUDA"]

METHOD_CPU = "CPU: every allocation, torch profiler"
METHOD_CUDA = "CUDA max_memory_allocated"


class SavedTensorBytes:
    """Context manager: bytes of distinct non-parameter tensors saved for backward while active (the
    activation memory alone, without solver buffers or temporaries; the ``lm`` table's "act. MB")."""

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
    deq_copies: float = float("nan")
    """The DEQ's peak in units of one state (all tensors of ``z``)."""

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


def _step(layer: nn.Module, inputs: tuple, depth: int, deq: bool) -> Tensor:
    """One training step's forward+backward; returns the initial state (for its size)."""
    cfg = SolveConfig(tol=1e-12, max_iter=depth, backward_tol=1e-12, backward_max_iter=depth)
    layer.zero_grad(set_to_none=True)
    z0 = layer.initial_state(*inputs)
    z = make_fixed_point(layer, cfg)(*inputs, z0=z0)[0] if deq else unroll(layer, z0, inputs, depth)
    _loss(z).backward()
    return z0


def _run(layer: nn.Module, inputs: tuple, depth: int, deq: bool, device: str) -> tuple[float, float, float]:
    """(peak MB, ms, peak in state copies) of one forward+backward; memory and time from separate runs."""
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    _step(layer, inputs, depth, deq)
    if cuda:
        torch.cuda.synchronize()
    ms = 1e3 * (time.perf_counter() - t0)
    with PeakMemory(device) as pm:
        z0 = _step(layer, inputs, depth, deq)
    return pm.peak_mb, ms, pm.peak_bytes / state_bytes(z0)


def measure_memory(depths: tuple[int, ...] = (5, 10, 20, 30, 50), batch: int = 8, device: str = "cpu",
                   layers: tuple[str, ...] | None = None) -> list[MemoryRow]:
    """Peak memory and time of one forward+backward at each depth (solver iterations = explicit layers)."""
    rows = []
    for name in layers or tuple(LAYERS):
        torch.manual_seed(0)
        layer, inputs = LAYERS[name](batch, device)
        _step(layer, inputs, 2, True)  # warm-up (lazy imports, allocator) outside the measurements
        for d in depths:
            em, et, _ = _run(layer, inputs, d, False, device)
            dm, dt, dc = _run(layer, inputs, d, True, device)
            rows.append(MemoryRow(name, d, em, dm, et, dt, dc))
    return rows
