"""Multi-process data-parallel training with ``torch.distributed`` (gloo on CPU, NCCL on GPU).

Launch with ``torchrun --nproc_per_node N ...`` (the trainer calls :func:`init_distributed`, which reads
``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` / ``MASTER_ADDR`` / ``MASTER_PORT``) or start processes from
Python with :func:`spawn`.

Exactness: every global batch of ``n`` samples is split into contiguous shards ``n_r`` (one per rank).
Each rank scales its mean loss by ``n_r / n`` and the gradients are summed with one ``all_reduce``, so

.. math::
    \\sum_r \\frac{n_r}{n} \\nabla \\frac{1}{n_r}\\sum_{i \\in r} \\ell_i = \\nabla \\frac{1}{n} \\sum_i \\ell_i,

the gradient of single-process training on the combined batch, for any split (uneven last batches
included). Parameters are broadcast from rank 0 at the start so all replicas begin identical.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "DistContext",
    "init_distributed",
    "shutdown_distributed",
    "all_reduce_gradients",
    "broadcast_parameters",
    "all_reduce_sums",
    "barrier",
    "shard_bounds",
    "spawn",
]


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job. ``world_size == 1`` means plain single-process training."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = "none"
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(backend: str | None = None, device: str | None = None) -> DistContext:
    """Join the process group described by the torchrun environment, or return a single-process context.

    ``backend`` defaults to ``"nccl"`` when CUDA is available (one GPU per local rank) and ``"gloo"`` otherwise.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        dev = torch.device(device or "cpu")
        return DistContext(device=dev)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device != "cpu"
    backend = backend or ("nccl" if use_cuda else "gloo")
    if backend == "nccl" and not torch.cuda.is_available():
        raise RuntimeError("backend 'nccl' needs CUDA; use backend='gloo' on CPU")
    if backend == "nccl" and local >= torch.cuda.device_count():
        from fpntools.errors import UserInputError

        raise UserInputError(f"process {local} of this node needs CUDA device cuda:{local} but only "
                             f"{torch.cuda.device_count()} exist; start fewer processes per node or use --device cpu")
    dev = torch.device(f"cuda:{local}") if backend == "nccl" else torch.device(device or "cpu")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
    return DistContext(rank, world, local, backend, dev)


def shutdown_distributed() -> None:
    """Leave the process group (no-op when none is active)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard_bounds(n: int, ctx: DistContext) -> tuple[int, int]:
    """Contiguous slice ``[lo, hi)`` of a global batch of ``n`` samples that rank ``ctx.rank`` takes."""
    base, extra = divmod(n, ctx.world_size)
    lo = ctx.rank * base + min(ctx.rank, extra)
    return lo, lo + base + (1 if ctx.rank < extra else 0)


def all_reduce_gradients(params: Iterable[nn.Parameter], ctx: DistContext) -> None:
    """Sum the gradients of ``params`` over all ranks in one flat ``all_reduce`` (missing grads count as 0)."""
    if not ctx.enabled:
        return
    params = [p for p in params if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for p in params:
        n = p.numel()
        p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
        offset += n


def broadcast_parameters(module: nn.Module, ctx: DistContext, src: int = 0) -> None:
    """Copy parameters and buffers of rank ``src`` to every rank."""
    if not ctx.enabled:
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=src)


def all_reduce_sums(values: list[float], ctx: DistContext) -> list[float]:
    """Element-wise sums of ``values`` over ranks (float64)."""
    if not ctx.enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, fn: Callable[..., Any], world: int, port: int, backend: str, args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    ctx = init_distributed(backend=backend, device="cpu" if backend == "gloo" else None)
    try:
        fn(ctx, *args)
    finally:
        shutdown_distributed()


def spawn(fn: Callable[..., Any], world_size: int, args: tuple = (), backend: str = "gloo") -> None:
    """Run ``fn(ctx, *args)`` in ``world_size`` fresh processes joined in one process group.

    ``fn`` must be importable (a module-level function). Raises if any process fails.
    """
    import torch.multiprocessing as mp

    if world_size < 1:
        raise ValueError(f"world_size must be at least 1, got {world_size}")
    mp.spawn(_entry, args=(fn, world_size, _free_port(), backend, args), nprocs=world_size, join=True)
