"""``fpntools bench``: the engine benchmark here, the applications' benchmarks as plugins.

``fpntools bench engine`` is defined below. Other benchmarks are plugins of the entry-point group
``fpntools.bench`` (see :mod:`fpntools.plugins`), e.g. ``fpntools bench zoo`` from ``problems.zoo.bench``;
they are imported only when run.
"""

from __future__ import annotations

import typer

from fpntools.plugins import PluginGroup


class _BenchGroup(PluginGroup):
    plugin_group = "fpntools.bench"
    plugin_fallback = False


app = typer.Typer(cls=_BenchGroup, help="Benchmarks that print tables (median of several runs).",
                  no_args_is_help=True)


@app.command("engine")
def engine(
    batch: int = typer.Option(64, help="batch size"),
    repeats: int = typer.Option(5, help="timed repetitions (median reported)"),
    tol: float = typer.Option(1e-4, help="forward tolerance (relative residual)"),
    device: str = typer.Option("cpu", help="cpu or cuda"),
    threads: int = typer.Option(0, help="torch intra-op threads (0: torch's default)"),
    memory: bool = typer.Option(True, help="also measure peak memory (a separate, profiled run on CPU)"),
    buffers: bool = typer.Option(False, help="also print the solver working memory on a 32x32x32x32 conv state"),
) -> None:
    """fpntools vs torchdeq on the same DEQ layers: forward/backward time, steps, peak memory, gradient agreement."""
    from fpntools.bench.engine import buffer_table, run

    run(batch=batch, repeats=repeats, tol=tol, device=device, threads=threads, memory=memory)
    if buffers:
        buffer_table(device=device)
