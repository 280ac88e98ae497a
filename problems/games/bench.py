"""``fpntools games bench``: the N-FPN against an MLP regressor and the constant predictor on certified data.

:func:`run_bench` trains each model on the same certified training games with the games recipe
(:func:`problems.games.train.recipe`) and evaluates it on the held-out games; :func:`bench_report` renders
the table that ``docs/games.md`` quotes.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from dataclasses import asdict
from typing import Any, Callable

import numpy as np
import torch

from fpntools.training.trainer import print_to_stderr
from fpntools.errors import UserInputError
from problems.games.data import GameDataConfig, GameDataset, make_dataset
from problems.games.datafile import load_game_data
from problems.games.equilibria import solve_games
from problems.games.model import NFPNConfig
from problems.games.train import MODELS, ModelSpec, evaluate, recipe, seed_everything, solver_report, train_model

__all__ = ["run_bench", "bench_files", "bench_models", "solver_time", "bench_report", "bench_json", "data_config"]


def data_config(family: str, n_actions: int, context_dim: int, n_train: int, n_test: int, seed: int) -> GameDataConfig:
    """The data of a bench or training run: family seed 0, context draws seeded with ``seed + 1``."""
    return GameDataConfig(
        family=family, n_actions=n_actions, context_dim=context_dim, n_train=n_train, n_test=n_test, data_seed=seed + 1
    )


def _n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def solver_time(data: GameDataset, repeats: int = 1) -> tuple[float, str]:
    """Milliseconds per game that the certified solver (:func:`~problems.games.equilibria.solve_games`: the
    minimax LP for zero-sum games, support enumeration otherwise) takes on the games of ``data`` (the best of
    ``repeats`` timings), and the method's name. Zero-sum means ``B = -A`` for every game."""
    zero_sum = bool(np.allclose(data.B, -data.A))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        eq = solve_games(data.A, data.B, zero_sum)
        best = min(best, time.perf_counter() - t0)
    return 1e3 * best / max(len(data), 1), eq.method


def run_bench(
    data_config: GameDataConfig,
    epochs: int = 100,
    hidden: int = 64,
    layers: int = 2,
    seed: int = 0,
    progress: bool = False,
    splitting: str = "pg",
    lr: float = 1e-2,
    device: str = "cpu",
    log: Callable[[str], None] | None = print_to_stderr,
    nfpn: NFPNConfig | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Build the certified data of a family and :func:`bench_models` on it.

    Returns ``(rows, data_summary)``: one row per model with ``model``, ``params``, ``train_s`` and the
    :func:`~problems.games.train.evaluate` metrics; the summary states the ground-truth method, the largest
    certified Nash gap of the training and test targets and the solver's time per game. ``log`` gets one line
    per model. ``nfpn`` overrides the N-FPN configuration (default ``NFPNConfig(hidden, layers, splitting)``).
    """
    t0 = time.perf_counter()
    if log is not None:
        log(f"building {data_config.n_train} + {data_config.n_test} certified {data_config.family} games ...")
    train, test = make_dataset(data_config)
    data_s = time.perf_counter() - t0
    nfpn = nfpn or NFPNConfig(hidden=hidden, layers=layers, splitting=splitting)
    rows, summary = bench_models(train, test, nfpn, epochs=epochs, seed=seed, progress=progress, lr=lr, device=device,
                                 log=log)
    return rows, {**summary, "data_s": data_s}


def bench_files(
    train_file: str | Path, test_file: str | Path, nfpn: NFPNConfig, **options: Any
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """:func:`bench_models` on the user's own training and held-out data files (same sizes required)."""
    train, test = load_game_data(train_file), load_game_data(test_file)
    a, b = (train.n, train.m, train.d.shape[1]), (test.n, test.m, test.d.shape[1])
    if a != b:
        raise UserInputError(f"{test_file} holds {b[0]}x{b[1]} games with {b[2]} context entries, but {train_file} "
                             f"holds {a[0]}x{a[1]} games with {a[2]}")
    return bench_models(train, test, nfpn, **options)


def bench_models(
    train: GameDataset,
    test: GameDataset,
    nfpn: NFPNConfig,
    epochs: int = 100,
    seed: int = 0,
    progress: bool = False,
    lr: float = 1e-2,
    device: str = "cpu",
    log: Callable[[str], None] | None = print_to_stderr,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Train the N-FPN (``nfpn``), the MLP regressor (same width and depth) and the constant predictor on
    ``train`` and score them on ``test`` (families' generated data or the user's files). ``rows`` as in
    :func:`run_bench`; with payoffs the summary holds the largest Nash gap of the targets and the certified
    solver's milliseconds per test game (``solver_ms``)."""
    specs = {name: ModelSpec(name, train.n, train.m, int(train.d.shape[1]), nfpn) for name in MODELS}
    summary: dict[str, Any] = {
        "family": train.info.get("family", "data"),
        "method": train.info.get("method", "given"),
        "n_train": len(train),
        "n_test": len(test),
        "acceptance": train.acceptance,
    }
    if train.has_payoffs and test.has_payoffs and len(test):
        summary["max_target_gap"] = float(max(train.gap.max(), test.gap.max()))
        summary["solver_ms"], summary["solver"] = solver_time(test)
    config = recipe(epochs=epochs, lr=lr, seed=seed, device=device, progress=progress)
    rows = []
    for name, spec in specs.items():
        seed_everything(seed)
        model = spec.build()
        t0 = time.perf_counter()
        if name == "constant":
            model.fit(train.tensors()[1])
            model.eval()
        else:
            if log is not None:
                log(f"training {name} ({epochs} epochs)")
            train_model(model, train, config, log=None)
        train_s = time.perf_counter() - t0
        rows.append({"model": name, "params": _n_params(model), "train_s": train_s, **evaluate(model, test)})
    return rows, summary


def bench_report(rows: list[dict[str, Any]], summary: dict[str, Any], epochs: int) -> None:
    """Print the bench table (rich) on stdout, and judge the N-FPN's solves (:func:`solver_report`)."""
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 100), file=sys.stdout)
    certified = (f", largest certified Nash gap {summary['max_target_gap']:.1e}" if "max_target_gap" in summary else
                 " (no payoffs: no Nash gap)")
    console.print(
        f"{summary['family']}; targets by {summary['method']}{certified}; {summary['n_train']} train / "
        f"{summary['n_test']} test games"
        + (f" (unique-equilibrium acceptance {summary['acceptance']:.2f})" if summary["acceptance"] < 1 else "")
    )
    if "solver_ms" in summary:
        console.print(f"certified solver ({summary['solver']}): {summary['solver_ms']:.3f} ms per test game")
    table = Table(title=f"equilibrium prediction on the held-out split ({epochs} epochs)")
    headers = ["model", "params", "err", "rel err", "Nash gap", "train s", "ms/sample", "x faster", "FP iters"]
    for col in headers:
        table.add_column(col, justify="left" if col == "model" else "right", no_wrap=True)
    for r in rows:
        table.add_row(
            r["model"],
            str(r["params"]),
            f"{r['err']:.4f}",
            f"{r['rel_err']:.4f}",
            f"{r['gap']:.4f}" if "gap" in r else "-",
            f"{r['train_s']:.1f}",
            f"{r['ms_per_sample']:.3f}",
            f"{summary['solver_ms'] / r['ms_per_sample']:.0f}" if "solver_ms" in summary and r["ms_per_sample"] > 0 else "-",
            f"{r['fp_iters']:.1f}" if "fp_iters" in r else "-",
        )
    console.print(table)
    console.print(
        "err: mean ||z - z*||_2 of z = (x, y) to the certified equilibrium; rel err: sum ||z - z*|| / sum ||z*||; "
        "Nash gap: mean exploitability of the prediction under the true game; ms/sample: batched prediction time; "
        "x faster: the certified solver's time per game over it; FP iters: mean forward solver steps."
    )
    for r in rows:
        solver_report(r, what=r["model"])


def bench_json(rows: list[dict[str, Any]], summary: dict[str, Any], config: GameDataConfig | dict) -> dict[str, Any]:
    """The JSON document of ``--json`` (``config``: the family's data configuration or the data files)."""
    return {"summary": summary, "rows": rows, "config": config if isinstance(config, dict) else asdict(config)}
