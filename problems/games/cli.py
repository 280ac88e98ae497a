"""``fpntools games ...``: certified equilibria of contextual games and the N-FPN that predicts them.

* ``fpntools games solve``    : the certified equilibrium of one game of a family, for a given context.
* ``fpntools games bench``    : N-FPN vs an MLP regressor and a constant predictor on a held-out split.
* ``fpntools games train``    : train one model in a run folder (progress bar, resumable checkpoints).
* ``fpntools games evaluate`` : held-out metrics of a trained model (or its metrics on a data file).
* ``fpntools games make-data``: a data file (context, x, y, A, B) of certified equilibria of a built-in family.
* ``fpntools games predict``  : equilibria predicted by a trained model for the contexts of a file.

This module only parses arguments; the work is done by :mod:`problems.games.solve`,
:mod:`problems.games.bench`, :mod:`problems.games.train` and :mod:`problems.games.datafile`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np
import typer

from fpntools.errors import UserInputError

__all__ = ["app"]

app = typer.Typer(
    help="Contextual matrix games: certified Nash equilibria and Nash fixed point networks (N-FPN).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

FAMILY_HELP = "rps | zero-sum | general"


def _parse_context(text: str) -> np.ndarray:
    try:
        return np.array([float(v) for v in text.replace(",", " ").split()], dtype=np.float64)
    except ValueError:
        raise UserInputError(f"--context must be numbers separated by commas, got {text!r}") from None


def _threads(threads: int) -> None:
    import torch

    if threads < 1:
        raise UserInputError(f"--threads must be at least 1, got {threads}")
    torch.set_num_threads(threads)


@app.command()
def solve(
    context: str = typer.Option(..., help="context d, comma-separated (length = --context-dim)"),
    family: str = typer.Option("rps", help=FAMILY_HELP),
    n_actions: int = typer.Option(3, help="actions per player (random families)"),
    context_dim: int = typer.Option(4, help="context dimension p"),
    family_seed: int = typer.Option(0, help="seed of the context -> payoff map"),
) -> None:
    """Print the game A(d), B(d) of one context, its equilibrium (all of them for general-sum) and the Nash gap."""
    from problems.games.families import make_family
    from problems.games.solve import solve_context

    typer.echo(solve_context(make_family(family, n_actions, context_dim, family_seed), _parse_context(context)))


@app.command()
def bench(
    family: str = typer.Option("rps", help=FAMILY_HELP),
    n_actions: int = typer.Option(3, help="actions per player (random families)"),
    context_dim: int = typer.Option(4, help="context dimension p"),
    n_train: int = typer.Option(1000, help="training games"),
    n_test: int = typer.Option(500, help="held-out games"),
    epochs: int = typer.Option(100, help="training epochs (N-FPN and MLP)"),
    lr: float = typer.Option(1e-2, help="Adam learning rate (cosine decay per step to lr / 20)"),
    hidden: int = typer.Option(64, help="hidden width of both networks"),
    seed: int = typer.Option(0, help="seed of data draws and initialisation"),
    splitting: str = typer.Option("pg", help="N-FPN map: pg (projected gradient) | davis-yin"),
    face_solve: bool = typer.Option(True, help="N-FPN: exact face solve of the learned VI after the fixed-point solver"),
    temperature: float = typer.Option(2.0, help="N-FPN: log-range of the learned per-player regularisers (0: fixed mu)"),
    gamma: float = typer.Option(0.9, help="N-FPN: bound on the common-interest part of the learned game (< mu = 1)"),
    device: str = typer.Option("cpu", help="cpu | cuda | auto (the documented table is CPU, one thread)"),
    threads: int = typer.Option(1, help="torch CPU threads"),
    progress: bool = typer.Option(True, help="show a progress bar per training epoch"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="also write the rows to this JSON file"),
    data: Optional[Path] = typer.Option(None, help="your own training data file instead of a family (with --test-data)"),
    test_data: Optional[Path] = typer.Option(None, help="your own held-out data file (with --data)"),
) -> None:
    """Held-out error of N-FPN vs an MLP regressor and a constant predictor, and their Nash gap under the true game."""
    from fpntools.atomic_io import atomic_write_bytes
    from fpntools.cli_support import check_output_path
    from problems.games.bench import bench_files, bench_json, bench_report, data_config, run_bench
    from problems.games.model import NFPNConfig

    if json_out is not None:
        check_output_path(json_out, suffixes=(".json",), what="--json")
    if (data is None) != (test_data is None):
        raise UserInputError("--data and --test-data go together (a training and a held-out data file)")
    _threads(threads)
    nfpn = NFPNConfig(hidden=hidden, splitting=splitting, face_solve=face_solve, temperature=temperature, gamma=gamma)
    options = dict(epochs=epochs, seed=seed, lr=lr, device=device, progress=progress)
    if data is not None:
        rows, summary = bench_files(data, test_data, nfpn, **options)
        described: dict = {"data": str(data), "test_data": str(test_data)}
    else:
        cfg = data_config(family, n_actions, context_dim, n_train, n_test, seed)
        rows, summary = run_bench(cfg, nfpn=nfpn, **options)
        described = cfg
    bench_report(rows, summary, epochs)
    if json_out is not None:
        atomic_write_bytes(json_out, json.dumps(bench_json(rows, summary, described), indent=2).encode())


@app.command()
def train(
    model: str = typer.Option("nfpn", help="nfpn | mlp"),
    data: Optional[Path] = typer.Option(
        None, help="train on your own data: .npz with context (n, p), x (n, n1), y (n, n2) [, A, B (n, n1, n2)]"
    ),
    val_fraction: float = typer.Option(0.1, help="--data: fraction of the samples held out for validation (0: train on all)"),
    simplex_tol: float = typer.Option(1e-6, help="--data: how far a stored strategy may miss the simplex"),
    family: Optional[str] = typer.Option(None, help=FAMILY_HELP + " (default rps; not with --data)"),
    n_actions: Optional[int] = typer.Option(None, help="actions per player (random families; default 3)"),
    context_dim: Optional[int] = typer.Option(None, help="context dimension p (families; default 4)"),
    n_train: Optional[int] = typer.Option(None, help="training games (families; default 1000)"),
    n_test: Optional[int] = typer.Option(None, help="held-out games, evaluated after every epoch (families; default 500)"),
    epochs: int = typer.Option(100, help="training epochs"),
    batch_size: int = typer.Option(64, help="mini-batch size"),
    lr: float = typer.Option(1e-2, help="Adam learning rate (cosine decay per step to lr / 20)"),
    hidden: int = typer.Option(64, help="hidden width"),
    layers: int = typer.Option(2, help="hidden layers"),
    seed: int = typer.Option(0, help="seed of data draws / validation split, initialisation and sample order"),
    out: Path = typer.Option(Path("runs/games"), "--out", help="run folder: config.json, history.json, checkpoint.pt, weights.pt"),
    resume: bool = typer.Option(False, help="continue the run in --out from its checkpoint"),
    force: bool = typer.Option(False, help="start over even though --out holds a checkpoint"),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N"),
    splitting: str = typer.Option("pg", help="N-FPN map: pg (projected gradient) | davis-yin"),
    face_solve: bool = typer.Option(True, help="N-FPN: exact face solve of the learned VI after the fixed-point solver"),
    temperature: float = typer.Option(2.0, help="N-FPN: log-range of the learned per-player regularisers (0: fixed mu)"),
    gamma: float = typer.Option(0.9, help="N-FPN: bound on the common-interest part of the learned game (< mu = 1)"),
    threads: int = typer.Option(1, help="torch CPU threads"),
    progress: bool = typer.Option(True, help="show a progress bar"),
) -> None:
    """Train one predictor on certified equilibria of a family, or on your own data file (--data), in a run folder."""
    from fpntools.cli_support import check_output_dir
    from problems.games.bench import data_config
    from problems.games.datafile import FileDataConfig
    from problems.games.model import NFPNConfig
    from problems.games.train import recipe, solver_report, train_run

    check_output_dir(out, what="run folder")
    _threads(threads)
    family_options = {"--family": family, "--n-actions": n_actions, "--context-dim": context_dim,
                      "--n-train": n_train, "--n-test": n_test}
    if data is not None:
        given = [k for k, v in family_options.items() if v is not None]
        if given:
            raise UserInputError(f"--data takes the games from the file; {', '.join(given)} describe a built-in family")
        cfg = FileDataConfig.from_file(data, val_fraction=val_fraction, seed=seed, simplex_tol=simplex_tol)
    else:
        cfg = data_config(family or "rps", n_actions or 3, context_dim or 4, 1000 if n_train is None else n_train,
                          500 if n_test is None else n_test, seed)
    tcfg = recipe(
        epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=device, run_dir=str(out), resume=resume,
        force=force, progress=progress,
    )
    nfpn = NFPNConfig(hidden=hidden, layers=layers, splitting=splitting, face_solve=face_solve, temperature=temperature,
                      gamma=gamma)
    run = train_run(cfg, model, nfpn, tcfg)
    if run.result.history:
        typer.echo(f"final training loss {run.result.final['train_loss']:.5f}")
    if run.test_metrics:
        typer.echo(("validation: " if data is not None else "test: ")
                   + ", ".join(f"{k}={v:.4g}" for k, v in run.test_metrics.items()))
    typer.echo(f"weights: {run.weights} (run folder {out})")
    if run.test_metrics:
        solver_report(run.test_metrics, what=model)


@app.command("make-data")
def make_data(
    family: str = typer.Option("rps", help=FAMILY_HELP),
    n: int = typer.Option(1000, "--n", help="number of games"),
    out: Path = typer.Option(..., "--out", help="data file to write (.npz: context, x, y, A, B, gap)"),
    n_actions: int = typer.Option(3, help="actions per player (random families)"),
    context_dim: int = typer.Option(4, help="context dimension p"),
    seed: int = typer.Option(1, help="seed of the context draws (use another seed for a test file)"),
    family_seed: int = typer.Option(0, help="seed of the context -> payoff map (the same family for the same seed)"),
) -> None:
    """Write certified equilibria of a built-in family in the data-file format of `train --data`."""
    from fpntools.cli_support import check_output_path
    from problems.games.commands import make_data_file

    check_output_path(out, suffixes=(".npz",), what="--out")
    typer.echo(make_data_file(family, n, out, n_actions, context_dim, seed, family_seed))


@app.command()
def predict(
    model: Path = typer.Option(..., "--model", help="run folder of `games train`, or its weights.pt / checkpoint.pt"),
    context_file: Path = typer.Option(..., help="contexts (m, p): .npy, .npz (key context), .csv or .txt"),
    out: Path = typer.Option(..., "--out", help="predicted (x, y) per context: (m, n1 + n2) to .npy, or .csv"),
    max_iter: Optional[int] = typer.Option(None, help="N-FPN: forward iteration budget (default: the model's)"),
    tol: Optional[float] = typer.Option(None, help="N-FPN: forward tolerance (default: the model's)"),
    device: str = typer.Option("cpu", help="cpu | cuda | auto"),
) -> None:
    """Predict the equilibrium strategies of a trained model for the contexts of a file."""
    from fpntools.cli_support import check_output_path
    from fpntools.training.trainer import resolve_device
    from problems.games.commands import predict_file

    check_output_path(out, suffixes=(".npy", ".csv"), what="--out")
    typer.echo(predict_file(model, context_file, out, _solve_changes(max_iter, tol), resolve_device(device)))


def _solve_changes(max_iter: Optional[int], tol: Optional[float]) -> dict:
    changes = {k: v for k, v in (("max_iter", max_iter), ("tol", tol)) if v is not None}
    return changes | {f"eval_{k}": v for k, v in changes.items()}


@app.command()
def evaluate(
    run: Path = typer.Argument(..., help="run folder of `games train`, or its weights.pt / checkpoint.pt"),
    data: Optional[Path] = typer.Option(None, help="score on the samples of this data file instead of the held-out split"),
    n_test: Optional[int] = typer.Option(None, help="held-out games (default: the run's own test split)"),
    max_iter: Optional[int] = typer.Option(None, help="N-FPN: forward iteration budget (default: the model's)"),
    tol: Optional[float] = typer.Option(None, help="N-FPN: forward tolerance (default: the model's)"),
    device: str = typer.Option("cpu", help="cpu | cuda | auto"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="also write the metrics to this JSON file"),
) -> None:
    """Held-out error and Nash gap of a trained model (or on a data file); exit 3 when its solves fail."""
    from fpntools.atomic_io import atomic_write_bytes
    from fpntools.cli_support import check_output_path
    from fpntools.training.trainer import resolve_device
    from problems.games.commands import evaluate_command
    from problems.games.train import solver_report

    if json_out is not None:
        check_output_path(json_out, suffixes=(".json",), what="--json")
    if data is not None and n_test is not None:
        raise UserInputError("--data and --n-test exclude each other")
    line, metrics, doc = evaluate_command(run, data, n_test, _solve_changes(max_iter, tol), resolve_device(device))
    typer.echo(line)
    solver_report(metrics, what=str(run))
    if json_out is not None:
        atomic_write_bytes(json_out, json.dumps(doc, indent=2).encode())
