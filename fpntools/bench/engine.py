"""``fpntools bench engine``: fpntools vs torchdeq on the same DEQ layers, measured side by side.

Both libraries solve ``z = f(z, x)`` with Anderson acceleration (memory 6, regularisation 1e-4, no damping)
to the same relative tolerance and differentiate it implicitly (adjoint solved by Anderson to the same
relative tolerance). Runs are interleaved (fpntools, torchdeq, fpntools, ...) and the median is reported.

Memory: on CUDA the peak of ``torch.cuda.max_memory_allocated`` during forward+backward; on CPU the bytes of
tensors autograd saves for the backward pass (``torch.autograd.graph.saved_tensors_hooks``), which is what
grows with depth and what the DEQ saves.

Gradient agreement is measured separately in float64 with tight tolerances (1e-11 forward and backward),
as the largest relative difference over all parameter gradients of a random linear readout loss.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

import fpntools
from fpntools.backward import Implicit
from fpntools.solvers import Anderson

__all__ = ["MLPLayer", "ConvLayer", "BenchRow", "run", "measure"]


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
    layer: str
    library: str
    forward_ms: float
    backward_ms: float
    forward_steps: float
    backward_steps: float
    memory_mb: float
    grad_rel_diff: float | None = None


class _SavedBytes:
    """Counts bytes of activations saved for backward while active (parameters, which are stored anyway,
    and repeated saves of one tensor are not counted)."""

    def __init__(self, module: nn.Module) -> None:
        self.bytes = 0
        self._seen = {p.data_ptr() for p in module.parameters()}

    def __enter__(self) -> "_SavedBytes":
        def pack(t: Tensor) -> Tensor:
            key = t.data_ptr()
            if key not in self._seen:
                self._seen.add(key)
                self.bytes += t.numel() * t.element_size()
            return t

        self._ctx = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._ctx.__exit__(*exc)


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


def measure(
    layer: nn.Module, library: str, x: Tensor, tol: float, btol: float, max_iter: int, device: str
) -> tuple[float, float, float, float, float]:
    """One timed forward+backward: (forward s, backward s, forward steps, backward steps, memory MB)."""
    step = LIBRARIES[library]
    layer.zero_grad(set_to_none=True)
    gen = torch.Generator(device=x.device).manual_seed(0)
    readout = torch.randn(layer.initial_state(x).shape, generator=gen, dtype=x.dtype, device=x.device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    _sync(device)
    t0 = time.perf_counter()
    with _SavedBytes(layer) as saved:
        z, steps, _ = step(layer, x, tol, btol, max_iter)
        loss = _loss(z, readout)
    _sync(device)
    t1 = time.perf_counter()
    loss.backward()
    _sync(device)
    t2 = time.perf_counter()
    if device.startswith("cuda"):
        mem = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        mem = saved.bytes / 2**20
    fs, bs = steps()
    return t1 - t0, t2 - t1, fs, bs, mem


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
        layers: dict[str, Callable[[], nn.Module]] | None = None) -> list[BenchRow]:
    """Run the benchmark on ``layers`` (name -> factory; default: the two layers above), print the table and
    return the rows."""
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
        agree = gradient_agreement(factory, min(batch, 8), device) if "torchdeq" in libraries else None
        for lib in libraries:
            cols = list(zip(*samples[lib]))
            med = [statistics.median(c) for c in cols]
            rows.append(BenchRow(name, lib, 1e3 * med[0], 1e3 * med[1], med[2], med[3], med[4],
                                 agree if lib == "fpntools" else None))
    if print_table:
        _print(rows, batch, tol, btol, repeats, device)
    return rows


def _print(rows: list[BenchRow], batch: int, tol: float, btol: float, repeats: int, device: str) -> None:
    from rich.console import Console
    from rich.table import Table

    mem_kind = "peak CUDA MB" if device.startswith("cuda") else "saved-for-backward MB"
    table = Table(title=f"DEQ engine: batch {batch}, Anderson(m=6), rel tol {tol:g} fwd / {btol:g} bwd, "
                        f"median of {repeats}, {device}, {torch.get_num_threads()} threads")
    for col in ["layer", "library", "forward ms", "backward ms", "fwd+bwd ms", "ratio", "fwd steps",
                "bwd steps", mem_kind, "grad rel diff (f64)"]:
        table.add_column(col, justify="right" if col not in ("layer", "library") else "left")
    by_layer: dict[str, dict[str, BenchRow]] = {}
    for r in rows:
        by_layer.setdefault(r.layer, {})[r.library] = r
    for layer, libs in by_layer.items():
        ref = libs.get("torchdeq")
        for lib, r in libs.items():
            total = r.forward_ms + r.backward_ms
            ratio = f"{total / (ref.forward_ms + ref.backward_ms):.2f}x" if ref is not None else "-"
            table.add_row(layer, lib, f"{r.forward_ms:.1f}", f"{r.backward_ms:.1f}", f"{total:.1f}", ratio,
                          f"{r.forward_steps:.0f}", f"{r.backward_steps:.0f}", f"{r.memory_mb:.2f}",
                          "-" if r.grad_rel_diff is None else f"{r.grad_rel_diff:.1e}")
    Console(width=200).print(table)
