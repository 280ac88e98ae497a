"""Peak memory of a block of code, counting every tensor allocation (solver buffers included).

``with PeakMemory(device) as pm: ...`` then ``pm.peak_bytes`` is the largest amount of tensor memory that was
allocated *above what was allocated on entry* at any moment inside the block:

* CUDA: ``torch.cuda.max_memory_allocated() - memory_allocated()`` at entry (after resetting the peak).
* CPU: torch keeps no allocation statistics for CPU tensors (and ``tracemalloc`` does not see them), so the
  block runs under ``torch.profiler.profile(profile_memory=True)``, which records every allocation and free
  of the CPU allocator with its size and time stamp; the running sum of those events, in time order, is the
  live memory above the entry level and its maximum is the peak. Frees of tensors allocated before the block
  count as negative, so the level can go below zero; the peak is at least 0.

The profiler slows the block down (it records every operator), so time a block and meter its memory in
separate runs. :func:`state_copies` reports a peak in units of one state's bytes.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from torch import Tensor

__all__ = ["PeakMemory", "peak_bytes_of_events", "state_bytes", "state_copies"]


def peak_bytes_of_events(deltas: list[tuple[int, int]]) -> int:
    """Largest running sum of ``(time, bytes)`` allocation deltas taken in time order (0 if it never rises)."""
    level = peak = 0
    for _, nbytes in sorted(deltas, key=lambda e: e[0]):
        level += nbytes
        peak = max(peak, level)
    return peak


@dataclass
class PeakMemory:
    """Context manager measuring the peak tensor memory above the entry level on ``device`` (bytes).

    Attributes (after exit): ``peak_bytes``; ``method``, one of ``"cuda max_memory_allocated"`` or
    ``"cpu profiler allocation events"``.
    """

    device: str | torch.device = "cpu"
    peak_bytes: int = 0
    method: str = ""
    _prof: Any = field(default=None, init=False, repr=False)
    _base: int = field(default=0, init=False, repr=False)

    @property
    def peak_mb(self) -> float:
        return self.peak_bytes / 2**20

    def __enter__(self) -> "PeakMemory":
        dev = torch.device(self.device)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
            torch.cuda.reset_peak_memory_stats(dev)
            self._base = torch.cuda.memory_allocated(dev)
            self.method = "cuda max_memory_allocated"
        elif dev.type == "cpu":
            from torch.profiler import ProfilerActivity, profile

            _warm_up_profiler()
            self._prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
            with _quiet_stderr():  # kineto prints "profiler_start" / "profiler_stop" on stderr
                self._prof.__enter__()
            self.method = "cpu profiler allocation events"
        else:
            raise ValueError(f"PeakMemory supports cpu and cuda devices, got {dev}")
        return self

    def __exit__(self, *exc: object) -> None:
        dev = torch.device(self.device)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
            self.peak_bytes = max(0, torch.cuda.max_memory_allocated(dev) - self._base)
            return
        with _quiet_stderr():
            self._prof.__exit__(*exc)
        if exc[0] is not None:
            return
        deltas = []
        for e in self._prof.profiler.kineto_results.events():
            if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU:
                deltas.append((e.start_ns(), e.nbytes()))
        self._prof = None
        self.peak_bytes = peak_bytes_of_events(deltas)


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2 (C++ libraries write there directly) for the duration of the block."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no usable descriptor 2: nothing to silence
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


@functools.lru_cache(maxsize=None)
def _warm_up_profiler() -> None:
    """Start the profiler once, quietly, and free inside it a block allocated before it: the CPU allocator's
    one-time warning about such blocks (their frees are not matched by an allocation event, which the running
    sum handles) and kineto's first-use messages then do not reach the user's terminal."""
    from torch.profiler import ProfilerActivity, profile

    block = torch.empty(1)
    with _quiet_stderr():
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True):
            del block


def state_bytes(z: Tensor | tuple | list) -> int:
    """Bytes of a state (a tensor or a tuple/list of tensors)."""
    ts = z if isinstance(z, (tuple, list)) else (z,)
    return sum(t.numel() * t.element_size() for t in ts)


def state_copies(peak: int, state: Tensor | tuple | list | int) -> float:
    """``peak`` bytes in units of one state's bytes."""
    size = state if isinstance(state, int) else state_bytes(state)
    return peak / max(1, size)
