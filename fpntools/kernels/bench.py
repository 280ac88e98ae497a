"""Timing of the fused Anderson mixing step: torch (``bmm``) against the Triton kernel.

Only meaningful on CUDA; on CPU the Triton kernel would run in the (slow, debugging-only) interpreter, so
only the torch path is timed there.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from fpntools.kernels.anderson import anderson_mix, triton_available

__all__ = ["DEFAULT_SIZES", "bench_anderson_mix"]

#: ``(B, m, N)`` problems: a small MLP DEQ, a conv DEQ state (64 x 32 x 32), a large image state.
DEFAULT_SIZES: tuple[tuple[int, int, int], ...] = ((32, 5, 256), (16, 5, 65_536), (4, 6, 1_048_576))


def _median_seconds(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int) -> float:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_anderson_mix(
    device: str | torch.device = "cuda",
    sizes: Sequence[tuple[int, int, int]] = DEFAULT_SIZES,
    dtype: torch.dtype = torch.float32,
    beta: float = 1.0,
    repeats: int = 20,
    warmup: int = 3,
) -> list[dict[str, Any]]:
    """Time :func:`anderson_mix` with both backends on ``(B, m, N)`` problems; median of ``repeats`` runs.

    Returns one row per size and backend: ``{"B", "m", "N", "dtype", "backend", "ms", "GB/s"}`` where
    ``GB/s`` counts the bytes the mixing must move (read ``F`` -- and ``X`` when ``beta != 1`` -- plus write
    the output). Rows for Triton appear only for CUDA devices with Triton installed.
    """
    dev = torch.device(device)
    backends = ["torch"]
    if dev.type == "cuda" and triton_available():
        backends.append("triton")
    rows: list[dict[str, Any]] = []
    for b, m, n in sizes:
        X = torch.randn(b, m, n, dtype=dtype, device=dev)
        F = torch.randn(b, m, n, dtype=dtype, device=dev)
        alpha = torch.softmax(torch.randn(b, m, device=dev), dim=1).to(dtype)
        moved = (b * m * n * (2 if beta != 1.0 else 1) + b * n) * X.element_size()
        for backend in backends:
            secs = _median_seconds(lambda: anderson_mix(X, F, alpha, beta, backend=backend), dev, repeats, warmup)
            rows.append(
                {"B": b, "m": m, "N": n, "dtype": str(dtype).replace("torch.", ""), "backend": backend,
                 "ms": secs * 1e3, "GB/s": moved / secs / 1e9}
            )  # fmt: skip
        del X, F
    return rows
