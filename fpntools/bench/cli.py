"""``fpntools bench``: each benchmark is a module of this package exposing a typer command function."""

from __future__ import annotations

import typer

app = typer.Typer(help="Benchmarks that print tables (median of several runs).", no_args_is_help=True)


@app.command("engine")
def engine(
    batch: int = typer.Option(64, help="batch size"),
    repeats: int = typer.Option(5, help="timed repetitions (median reported)"),
    tol: float = typer.Option(1e-4, help="forward tolerance (relative residual)"),
    device: str = typer.Option("cpu", help="cpu or cuda"),
) -> None:
    """fpntools vs torchdeq on the same DEQ layers: forward/backward time, steps, memory, gradient agreement."""
    from fpntools.bench.engine import run

    run(batch=batch, repeats=repeats, tol=tol, device=device)
