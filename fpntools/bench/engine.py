"""``fpntools bench engine``: fpntools vs torchdeq on the same DEQ layers, measured side by side.

Both libraries solve ``z = f(z, x)`` with Anderson acceleration (memory 6, regularisation 1e-4, no damping)
to the same relative tolerance ``||f(z) - z|| / ||f(z)|| <= tol`` (both stop when every sample is below it;
steps are evaluations of ``f``) and differentiate it implicitly (adjoint solved by Anderson to relative
tolerance ``tol / 100``). Timed runs are interleaved (fpntools, torchdeq, fpntools, ...) and the median is
reported.

Memory: the peak of all tensor memory allocated during one forward+backward above what was allocated
before it (:class:`fpntools.bench.memory.PeakMemory`: ``torch.cuda.max_memory_allocated`` on CUDA, every
allocation event of the CPU allocator recorded by the torch profiler on CPU), so solver buffers, saved
activations, gradients and temporaries all count; measured in a separate run (the profiler slows it down)
and also given in units of one state (``state copies``).

Gradient agreement is measured separately in float64 with tight tolerances (1e-11 forward and backward),
as the largest relative difference over all parameter gradients of a random linear readout loss.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

import fpntools
from fpntools.backward import Implicit
from fpntools.bench.memory import PeakMemory
from fpntools.solvers import Anderson

__all__ = ["MLPLayer", "ConvLayer", "BenchRow", "BufferRow", "buffer_table", "run", "measure", "measure_memory"]


class MLPLayer(nn.Module):
    """``f(z, x) = tanh(W z + U x + b)`` with ``||W||_2 = 0.9`` at init (a contraction)."""

    def __init__(self, width: int = 256, in_dim: int = 64) -> None:
        super().__init__()
        self.lin = nn.Linear(width, width)
        self.inj = nn.Linear(in_dim, width)
        with torch.no_grad():
            self.lin.weight.mul_(0.9 / torch.linalg.matrix_norm(self.lin.weight, 2))
        self.width = width

    def forward(self, z: Tensor, x: Tensor) -> Tensor:
        return torch.tanh(self.lin(z) + self.inj(x))

    def make_input(self, batch: int, dtype: torch.dtype, device: str) -> Tensor:
        return torch.randn(batch, self.inj.in_features, dtype=dtype, device=device)

    def initial_state(self, x: Tensor) -> Tensor:
        return x.new_zeros(x.shape[0], self.width)


class ConvLayer(nn.Module):
    """DEQ residual conv block ``f(z, x) = GN(relu(z + GN(x + conv2(relu(GN(conv1(z)))))))`` on 16x16 maps."""

    def __init__(self, channels: int = 32, size: int = 16, groups: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.gn1, self.gn2, self.gn3 = (nn.GroupNorm(groups, channels) for _ in range(3))
        with torch.no_grad():
            self.conv1.weight.mul_(0.5)
            self.conv2.weight.mul_(0.5)
        self.channels, self.size = channels, size

    def forward(self, z: Tensor, x: Tensor) -> Tensor:
        y = self.gn1(torch.relu(self.conv1(z)))
        return self.gn3(torch.relu(z + self.gn2(x + self.conv2(y))))

    def make_input(self, batch: int, dtype: torch.dtype, device: str) -> Tensor:
        return torch.randn(batch, self.channels, self.size, self.size, dtype=dtype, device=device)

    def initial_state(self, x: Tensor) -> Tensor:
        return torch.zeros_like(x)


@dataclass
class BenchRow:
    """One library on one layer: median times (ms), steps (evaluations of ``f``), peak memory."""

    layer: str
    library: str
    forward_ms: float
    backward_ms: float
    forward_steps: float
    backward_steps: float
    peak_mb: float
    state_copies: float
    grad_rel_diff: float | None = None


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _fpntools_step(layer: nn.Module, x: Tensor, tol: float, btol: float, max_iter: int) -> tuple[Tensor, Callable, dict]:
    backward = Implicit(solver=Anderson(m=6, lam=1e-4), tol=btol, max_iter=max_iter)
    z, info = fpntools.fixed_point(
        lambda z: layer(z, x), layer.initial_state(x), Anderson(m=6, lam=1e-4), backward, tol=tol, max_iter=max_iter
    )
    stats = {"info": info}

    def steps() -> tuple[float, float]:
        b = info.backward.steps.float().max().item() if info.backward is not None else float("nan")
        return info.steps.float().max().item(), b

    return z, steps, stats


def _torchdeq_step(layer: nn.Module, x: Tensor, tol: float, btol: float, max_iter: int) -> tuple[Tensor, Callable, dict]:
    from torchdeq import get_deq

    deq = get_deq(
        f_solver="anderson", b_solver="anderson", f_tol=tol, b_tol=btol, f_max_iter=max_iter, b_max_iter=max_iter,
        f_stop_mode="rel", b_stop_mode="rel", ift=True,
    )
    deq.train()
    stats: dict = {}
    zs, info = deq(lambda z: layer(z, x), layer.initial_state(x), backward_writer=lambda i: stats.update(bwd=i))

    def steps() -> tuple[float, float]:
        b = stats["bwd"]["nstep"].float().max().item() if "bwd" in stats else float("nan")
        return info["nstep"].float().max().item(), b

    return zs[-1], steps, stats


LIBRARIES: dict[str, Callable] = {"fpntools": _fpntools_step, "torchdeq": _torchdeq_step}


def _readout(layer: nn.Module, x: Tensor) -> Tensor:
    gen = torch.Generator(device=x.device).manual_seed(0)
    return torch.randn(layer.initial_state(x).shape, generator=gen, dtype=x.dtype, device=x.device)


def measure(
    layer: nn.Module, library: str, x: Tensor, tol: float, btol: float, max_iter: int, device: str
) -> tuple[float, float, float, float]:
    """One timed forward+backward: (forward s, backward s, forward steps, backward steps)."""
    step = LIBRARIES[library]
    layer.zero_grad(set_to_none=True)
    readout = _readout(layer, x)
    _sync(device)
    t0 = time.perf_counter()
    z, steps, _ = step(layer, x, tol, btol, max_iter)
    loss = _loss(z, readout)
    _sync(device)
    t1 = time.perf_counter()
    loss.backward()
    _sync(device)
    t2 = time.perf_counter()
    fs, bs = steps()
    return t1 - t0, t2 - t1, fs, bs


def measure_memory(
    layer: nn.Module, library: str, x: Tensor, tol: float, btol: float, max_iter: int, device: str
) -> tuple[float, float]:
    """Peak memory of one forward+backward above the inputs: (MB, in units of one state)."""
    step = LIBRARIES[library]
    layer.zero_grad(set_to_none=True)
    readout = _readout(layer, x)
    with PeakMemory(device) as pm:
        z, _, _ = step(layer, x, tol, btol, max_iter)
        _loss(z, readout).backward()
        del z
    return pm.peak_mb, pm.peak_bytes / (readout.numel() * readout.element_size())


def _loss(z: Tensor, readout: Tensor) -> Tensor:
    """A linear readout loss ``<w, z> / B``: its gradient does not vanish through normalisation layers."""
    return (readout * z).sum() / z.shape[0]


def gradient_agreement(layer_factory: Callable[[], nn.Module], batch: int, device: str) -> float:
    """Largest relative difference of parameter gradients, fpntools vs torchdeq, float64, tolerances 1e-11."""
    torch.manual_seed(1)
    layer = layer_factory().to(device=device, dtype=torch.float64)
    x = layer.make_input(batch, torch.float64, device)
    readout = torch.randn_like(layer.initial_state(x))
    grads = {}
    for lib in LIBRARIES:
        layer.zero_grad(set_to_none=True)
        z, _, _ = LIBRARIES[lib](layer, x, 1e-11, 1e-11, 400)
        _loss(z, readout).backward()
        grads[lib] = [p.grad.clone() for p in layer.parameters()]
    return max(float((a - b).norm() / b.norm()) for a, b in zip(grads["fpntools"], grads["torchdeq"]))


DEFAULT_LAYERS: dict[str, Callable[[], nn.Module]] = {"mlp (256)": MLPLayer, "conv (32x16x16)": ConvLayer}


def run(batch: int = 64, repeats: int = 5, tol: float = 1e-4, device: str = "cpu", btol: float | None = None,
        max_iter: int = 100, print_table: bool = True,
        layers: dict[str, Callable[[], nn.Module]] | None = None, threads: int = 0,
        memory: bool = True) -> list[BenchRow]:
    """Run the benchmark on ``layers`` (name -> factory; default: the two layers above), print the table and
    return the rows. ``threads > 0`` sets torch's intra-op threads; ``memory=False`` skips the (profiled)
    memory runs (peak columns NaN)."""
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        import torchdeq  # noqa: F401

        libraries = ["fpntools", "torchdeq"]
    except ImportError:
        libraries = ["fpntools"]
    btol = tol / 100 if btol is None else btol
    factories = DEFAULT_LAYERS if layers is None else layers
    rows: list[BenchRow] = []
    for name, factory in factories.items():
        torch.manual_seed(0)
        layer = factory().to(device)
        x = layer.make_input(batch, torch.float32, device)
        samples: dict[str, list[tuple]] = {lib: [] for lib in libraries}
        for lib in libraries:  # warm-up
            measure(layer, lib, x, tol, btol, max_iter, device)
        for _ in range(repeats):
            for lib in libraries:
                samples[lib].append(measure(layer, lib, x, tol, btol, max_iter, device))
        mem = {lib: (measure_memory(layer, lib, x, tol, btol, max_iter, device) if memory else (math.nan, math.nan))
               for lib in libraries}
        agree = gradient_agreement(factory, min(batch, 8), device) if "torchdeq" in libraries else None
        for lib in libraries:
            med = [statistics.median(c) for c in zip(*samples[lib])]
            rows.append(BenchRow(name, lib, 1e3 * med[0], 1e3 * med[1], med[2], med[3], mem[lib][0], mem[lib][1],
                                 agree if lib == "fpntools" else None))
    if print_table:
        _print(rows, batch, tol, btol, repeats, device)
    return rows


def _print(rows: list[BenchRow], batch: int, tol: float, btol: float, repeats: int, device: str) -> None:
    from rich.console import Console
    from rich.table import Table

    mem_kind = "CUDA max_memory_allocated" if device.startswith("cuda") else "CPU, every allocation (profiler)"
    table = Table(title=f"DEQ engine: batch {batch}, Anderson(m=6), rel tol {tol:g} fwd / {btol:g} bwd, "
                        f"median of {repeats}, {device}, {torch.get_num_threads()} threads; peak memory of "
                        f"forward+backward above the inputs ({mem_kind})")
    for col in ["layer", "library", "forward ms", "fwd ratio", "backward ms", "fwd+bwd ms", "total ratio",
                "fwd steps", "bwd steps", "peak MB", "state copies", "grad rel diff (f64)"]:
        table.add_column(col, justify="right" if col not in ("layer", "library") else "left")
    by_layer: dict[str, dict[str, BenchRow]] = {}
    for r in rows:
        by_layer.setdefault(r.layer, {})[r.library] = r
    for layer, libs in by_layer.items():
        ref = libs.get("torchdeq")
        for lib, r in libs.items():
            total = r.forward_ms + r.backward_ms
            fwd_ratio = f"{r.forward_ms / ref.forward_ms:.2f}x" if ref is not None else "-"
            ratio = f"{total / (ref.forward_ms + ref.backward_ms):.2f}x" if ref is not None else "-"
            table.add_row(layer, lib, f"{r.forward_ms:.1f}", fwd_ratio, f"{r.backward_ms:.1f}", f"{total:.1f}", ratio,
                          f"{r.forward_steps:.0f}", f"{r.backward_steps:.0f}", f"{r.peak_mb:.2f}",
                          f"{r.state_copies:.1f}", "-" if r.grad_rel_diff is None else f"{r.grad_rel_diff:.1e}")
    Console(width=220).print(table)


@dataclass
class BufferRow:
    """Peak memory of one configuration in units of one state, and above its one-application baseline."""

    what: str
    copies: float
    above_baseline: float
    baseline: str


def buffer_table(device: str = "cpu", m: int = 5, batch: int = 32, channels: int = 32, size: int = 32,
                 iters: int = 15, print_table: bool = True) -> list[BufferRow]:
    """Solver working memory on a ``batch x channels x size x size`` state of :class:`ConvLayer` (default
    32x32x32x32, 4 MB), in state copies (peak bytes above the inputs / state bytes, :class:`PeakMemory`).

    Forward solves (no graph, ``iters`` iterations) are compared with one application of the layer without
    a graph; forward+backward (implicit, adjoint by the same solver, ``iters`` iterations) with one
    differentiable application and its backward pass.
    """
    torch.manual_seed(0)
    layer = ConvLayer(channels, size, 4).to(device)
    x = layer.make_input(batch, torch.float32, device)
    z0 = layer.initial_state(x)
    w = torch.randn_like(z0)
    state = z0.numel() * z0.element_size()

    def copies(fn: Callable[[], None]) -> float:
        fn()  # warm-up: lazy initialisation is not part of the peak
        with PeakMemory(device) as pm:
            fn()
        return pm.peak_bytes / state

    def one(grad: bool) -> Callable[[], None]:
        def run() -> None:
            layer.zero_grad(set_to_none=True)
            if grad:
                (layer(z0, x) * w).sum().backward()
            else:
                with torch.no_grad():
                    layer(z0, x)
        return run

    def solve(solver: fpntools.FixedPointSolver, grad: bool) -> Callable[[], None]:
        def run() -> None:
            layer.zero_grad(set_to_none=True)
            if grad:
                backward = Implicit(solver=solver, tol=1e-12, max_iter=iters)
                z, _ = fpntools.fixed_point(lambda z: layer(z, x), z0, solver, backward, tol=1e-12, max_iter=iters)
                (z * w).sum().backward()
            else:
                with torch.no_grad():
                    fpntools.fixed_point(lambda z: layer(z, x), z0, solver, "jfb", tol=1e-12, max_iter=iters)
        return run

    base_f, base_g = copies(one(False)), copies(one(True))
    rows = [BufferRow("one application (no graph)", base_f, 0.0, "-"),
            BufferRow("one application + backward", base_g, 0.0, "-")]
    for name, solver in ((f"Anderson(m={m})", Anderson(m=m)), ("Picard", fpntools.Picard())):
        c = copies(solve(solver, False))
        rows.append(BufferRow(f"forward solve, {name}", c, c - base_f, "one application"))
    for name, solver in ((f"Anderson(m={m})", Anderson(m=m)), ("Picard", fpntools.Picard())):
        c = copies(solve(solver, True))
        rows.append(BufferRow(f"forward + implicit backward, {name} (adjoint too)", c, c - base_g,
                              "one application + backward"))
    if print_table:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"Solver working memory: {batch}x{channels}x{size}x{size} conv state "
                            f"({state / 2**20:.0f} MB), {iters} iterations, {device}; state copies = peak / state")
        for col in ("configuration", "state copies", "above baseline", "baseline"):
            table.add_column(col, justify="left" if col in ("configuration", "baseline") else "right")
        for r in rows:
            table.add_row(r.what, f"{r.copies:.1f}", f"{r.above_baseline:.1f}", r.baseline)
        Console(width=160).print(table)
    return rows
