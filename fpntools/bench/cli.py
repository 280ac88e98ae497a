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
    threads: int = typer.Option(0, help="torch intra-op threads (0: torch's default)"),
) -> None:
    """fpntools vs torchdeq on the same DEQ layers: forward/backward time, steps, memory, gradient agreement."""
    import torch

    from fpntools.bench.engine import run

    if threads > 0:
        torch.set_num_threads(threads)
    run(batch=batch, repeats=repeats, tol=tol, device=device)


@app.command("zoo")
def zoo(
    sections: str = typer.Option("memory,jfb,jacobian,compare,lm", help="comma-separated sections to run"),
    quick: bool = typer.Option(False, help="tiny smoke run (numbers not meaningful)"),
    epochs: int = typer.Option(None, help="training epochs for the digits experiments (default 10)"),
    lm_steps: int = typer.Option(None, help="training steps of the character-level LM (default 200)"),
    device: str = typer.Option("cpu", help="cpu or cuda (memory section: peak CUDA memory)"),
    seed: int = typer.Option(0, help="random seed"),
) -> None:
    """Model zoo claims: DEQ memory vs depth, JFB vs implicit, Jacobian regularisation, SIM/DEQ/MDEQ, char-LM."""
    from fpntools.bench.zoo import run

    run(sections=[s.strip() for s in sections.split(",") if s.strip()], quick=quick, device=device, epochs=epochs,
        lm_steps=lm_steps, seed=seed)
