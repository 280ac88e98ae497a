"""``fpntools games ...``: certified equilibria of contextual games and the N-FPN that predicts them.

* ``fpntools games solve``  : the certified equilibrium of one game of a family, for a given context.
* ``fpntools games bench``  : N-FPN vs an MLP regressor and a constant predictor on a held-out split.
* ``fpntools games train``  : train one model with a progress bar and (resumable) checkpoints.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import typer

from fpntools.errors import UserInputError
from problems.games.baselines import ConstantPredictor, MLPRegressor
from problems.games.data import GameDataConfig, make_dataset
from problems.games.equilibria import nash_gap, solve_games, support_enumeration
from problems.games.families import make_family
from problems.games.model import NashFPN, NFPNConfig
from problems.games.train import TrainConfig, evaluate, seed_everything, train_model

__all__ = ["app", "run_bench", "build_model", "load_trained"]

app = typer.Typer(
    help="Contextual matrix games: certified Nash equilibria and Nash fixed point networks (N-FPN).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

MODELS = ("nfpn", "mlp", "constant")


def _parse_context(text: str) -> np.ndarray:
    try:
        return np.array([float(v) for v in text.replace(",", " ").split()], dtype=np.float64)
    except ValueError:
        raise UserInputError(f"--context must be numbers separated by commas, got {text!r}") from None


def build_model(
    name: str, n: int, m: int, context_dim: int, hidden: int = 64, layers: int = 2, splitting: str = "pg"
) -> torch.nn.Module:
    """``"nfpn"`` (:class:`NashFPN`), ``"mlp"`` (:class:`MLPRegressor`) or ``"constant"``."""
    if name == "nfpn":
        return NashFPN(n, m, context_dim, NFPNConfig(hidden=hidden, layers=layers, splitting=splitting))
    if name == "mlp":
        return MLPRegressor(n, m, context_dim, hidden=hidden, layers=layers)
    if name == "constant":
        return ConstantPredictor(n, m, context_dim)
    raise UserInputError(f"unknown model {name!r}; choose one of {list(MODELS)}")


def _n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def run_bench(
    data_config: GameDataConfig,
    epochs: int = 100,
    hidden: int = 64,
    layers: int = 2,
    seed: int = 0,
    progress: bool = False,
    splitting: str = "pg",
    lr: float = 1e-2,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Train each model on the same certified data and evaluate on the held-out split.

    Returns ``(rows, data_summary)``: one row per model with ``model``, ``params``, ``train_s`` and the
    :func:`~problems.games.train.evaluate` metrics; the summary states the ground-truth method and the
    largest certified Nash gap of the training and test targets.
    """
    t0 = time.perf_counter()
    train, test = make_dataset(data_config)
    summary = {
        "family": train.info["family"],
        "method": train.info["method"],
        "n_train": len(train),
        "n_test": len(test),
        "max_target_gap": float(max(train.gap.max(), test.gap.max() if len(test) else 0.0)),
        "acceptance": train.acceptance,
        "data_s": time.perf_counter() - t0,
    }
    rows = []
    for name in MODELS:
        seed_everything(seed)
        model = build_model(name, train.n, train.m, data_config.context_dim, hidden, layers, splitting)
        t0 = time.perf_counter()
        if name == "constant":
            model.fit(train.tensors()[1])
        else:
            train_model(model, train, TrainConfig(epochs=epochs, lr=lr, seed=seed, progress=progress))
        train_s = time.perf_counter() - t0
        rows.append({"model": name, "params": _n_params(model), "train_s": train_s, **evaluate(model, test)})
    return rows, summary


def _data_config(family: str, n_actions: int, context_dim: int, n_train: int, n_test: int, seed: int) -> GameDataConfig:
    return GameDataConfig(
        family=family, n_actions=n_actions, context_dim=context_dim, n_train=n_train, n_test=n_test, data_seed=seed + 1
    )


@app.command()
def solve(
    context: str = typer.Option(..., help="context d, comma-separated (length = --context-dim)"),
    family: str = typer.Option("rps", help="rps | zero-sum | general"),
    n_actions: int = typer.Option(3, help="actions per player (random families)"),
    context_dim: int = typer.Option(4, help="context dimension p"),
    family_seed: int = typer.Option(0, help="seed of the context -> payoff map"),
) -> None:
    """Print the game A(d), B(d) of one context, its equilibrium (all of them for general-sum) and the Nash gap."""
    fam = make_family(family, n_actions, context_dim, family_seed)
    A, B = fam.payoffs(_parse_context(context))
    np.set_printoptions(precision=4, suppress=True)
    typer.echo(fam.describe())
    typer.echo(f"A(d) =\n{A[0]}")
    if fam.zero_sum:
        eq = solve_games(A, B, zero_sum=True)
        typer.echo("method: lp (minimax LPs with cvxpy, polished on the supports)")
        typer.echo(f"x* = {eq.x[0]}\ny* = {eq.y[0]}\nNash gap = {eq.gap[0]:.3e}")
        return
    typer.echo(f"B(d) =\n{B[0]}")
    eqs = support_enumeration(A, B)[0]
    typer.echo(f"method: support-enumeration; equilibria found: {len(eqs)}")
    for k, (x, y) in enumerate(eqs):
        gap = nash_gap(A, B, x, y)[0]
        typer.echo(f"[{k}] x* = {x}  y* = {y}  Nash gap = {gap:.3e}")


@app.command()
def bench(
    family: str = typer.Option("rps", help="rps | zero-sum | general"),
    n_actions: int = typer.Option(3, help="actions per player (random families)"),
    context_dim: int = typer.Option(4, help="context dimension p"),
    n_train: int = typer.Option(1000, help="training games"),
    n_test: int = typer.Option(500, help="held-out games"),
    epochs: int = typer.Option(100, help="training epochs (N-FPN and MLP)"),
    lr: float = typer.Option(1e-2, help="Adam learning rate (cosine decay to lr / 20)"),
    hidden: int = typer.Option(64, help="hidden width of both networks"),
    seed: int = typer.Option(0, help="seed of data draws and initialisation"),
    splitting: str = typer.Option("pg", help="N-FPN map: pg (projected gradient) | davis-yin"),
    threads: int = typer.Option(1, help="torch CPU threads"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="also write the rows to this JSON file"),
) -> None:
    """Held-out error of N-FPN vs an MLP regressor and a constant predictor, and their Nash gap under the true game."""
    from rich.console import Console
    from rich.table import Table

    torch.set_num_threads(threads)
    cfg = _data_config(family, n_actions, context_dim, n_train, n_test, seed)
    rows, summary = run_bench(cfg, epochs=epochs, hidden=hidden, seed=seed, splitting=splitting, lr=lr)
    console = Console(width=max(Console().width, 100))
    console.print(
        f"{summary['family']}; targets by {summary['method']}, largest certified Nash gap "
        f"{summary['max_target_gap']:.1e}; {summary['n_train']} train / {summary['n_test']} test games"
        + (f" (unique-equilibrium acceptance {summary['acceptance']:.2f})" if summary["acceptance"] < 1 else "")
    )
    table = Table(title=f"equilibrium prediction on the held-out split ({epochs} epochs)")
    headers = ["model", "params", "err", "rel err", "Nash gap", "train s", "ms/sample", "FP iters"]
    for col in headers:
        table.add_column(col, justify="left" if col == "model" else "right", no_wrap=True)
    for r in rows:
        table.add_row(
            r["model"],
            str(r["params"]),
            f"{r['err']:.4f}",
            f"{r['rel_err']:.4f}",
            f"{r['gap']:.4f}",
            f"{r['train_s']:.1f}",
            f"{r['ms_per_sample']:.3f}",
            f"{r['fp_iters']:.1f}" if "fp_iters" in r else "-",
        )
    console.print(table)
    console.print(
        "err: mean ||z - z*||_2 of z = (x, y) to the certified equilibrium; rel err: sum ||z - z*|| / sum ||z*||; "
        "Nash gap: mean exploitability of the prediction under the true game; FP iters: mean forward solver steps."
    )
    if json_out is not None:
        json_out.write_text(json.dumps({"summary": summary, "rows": rows, "config": asdict(cfg)}, indent=2))


@app.command()
def train(
    model: str = typer.Option("nfpn", help="nfpn | mlp"),
    family: str = typer.Option("rps", help="rps | zero-sum | general"),
    n_actions: int = typer.Option(3, help="actions per player (random families)"),
    context_dim: int = typer.Option(4, help="context dimension p"),
    n_train: int = typer.Option(1000, help="training games"),
    n_test: int = typer.Option(500, help="held-out games"),
    epochs: int = typer.Option(100, help="training epochs"),
    batch_size: int = typer.Option(64, help="mini-batch size"),
    lr: float = typer.Option(1e-2, help="Adam learning rate (cosine decay to lr / 20)"),
    hidden: int = typer.Option(64, help="hidden width"),
    seed: int = typer.Option(0, help="seed of data draws and initialisation"),
    checkpoint: Path = typer.Option(Path("games_checkpoint.pt"), help="checkpoint file (written atomically)"),
    checkpoint_every: int = typer.Option(5, help="epochs between checkpoints (and validation)"),
    resume: bool = typer.Option(False, help="continue from --checkpoint when it exists"),
    splitting: str = typer.Option("pg", help="N-FPN map: pg (projected gradient) | davis-yin"),
    threads: int = typer.Option(1, help="torch CPU threads"),
    progress: bool = typer.Option(True, help="show a progress bar"),
) -> None:
    """Train one predictor on certified equilibria (progress bar, resumable checkpoints), then report test metrics."""
    if model not in ("nfpn", "mlp"):
        raise UserInputError(f"--model must be nfpn or mlp, got {model!r}")
    torch.set_num_threads(threads)
    cfg = _data_config(family, n_actions, context_dim, n_train, n_test, seed)
    train_set, test_set = make_dataset(cfg)
    seed_everything(seed)
    net = build_model(model, train_set.n, train_set.m, context_dim, hidden, splitting=splitting)
    tcfg = TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        checkpoint=str(checkpoint),
        checkpoint_every=checkpoint_every,
        resume=resume,
        progress=progress,
    )
    extra = {"data_config": asdict(cfg), "model_name": model, "hidden": hidden, "splitting": splitting}
    history = train_model(net, train_set, tcfg, val=test_set if len(test_set) else None, extra_state=extra, log=typer.echo)
    if history:
        typer.echo(f"final training loss {history[-1]['loss']:.5f}")
    if len(test_set):
        metrics = evaluate(net, test_set)
        typer.echo("test: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
    typer.echo(f"checkpoint: {checkpoint}")


def load_trained(checkpoint: Path) -> tuple[torch.nn.Module, GameDataConfig]:
    """Rebuild a model written by ``fpntools games train`` from its checkpoint."""
    from fpntools.training.checkpoint import load_checkpoint

    state = load_checkpoint(checkpoint)
    cfg = GameDataConfig(**state["data_config"])
    fam = cfg.make_family()
    net = build_model(
        state["model_name"], fam.n, fam.m, cfg.context_dim, int(state["hidden"]), splitting=state.get("splitting", "pg")
    )
    net.load_state_dict(state["model"])
    return net, cfg
