"""``fpntools games bench``: the N-FPN against an MLP regressor and the constant predictor on certified data.

:func:`run_bench` trains each model on the same certified training games with the games recipe
(:func:`problems.games.train.recipe`) and evaluates it on the held-out games; :func:`bench_report` renders
the table that ``docs/games.md`` quotes.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict
from typing import Any, Callable

import torch

from fpntools.training.trainer import print_to_stderr
from problems.games.data import GameDataConfig, make_dataset
from problems.games.model import NFPNConfig
from problems.games.train import MODELS, ModelSpec, evaluate, recipe, seed_everything, solver_report, train_model

__all__ = ["run_bench", "bench_report", "bench_json", "data_config"]


def data_config(family: str, n_actions: int, context_dim: int, n_train: int, n_test: int, seed: int) -> GameDataConfig:
    """The data of a bench or training run: family seed 0, context draws seeded with ``seed + 1``."""
    return GameDataConfig(
        family=family, n_actions=n_actions, context_dim=context_dim, n_train=n_train, n_test=n_test, data_seed=seed + 1
    )


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
    device: str = "cpu",
    log: Callable[[str], None] | None = print_to_stderr,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Train each model on the same certified data and evaluate on the held-out split.

    Returns ``(rows, data_summary)``: one row per model with ``model``, ``params``, ``train_s`` and the
    :func:`~problems.games.train.evaluate` metrics; the summary states the ground-truth method and the
    largest certified Nash gap of the training and test targets. ``log`` gets one line per model.
    """
    nfpn = NFPNConfig(hidden=hidden, layers=layers, splitting=splitting)
    fam = data_config.make_family()
    specs = {name: ModelSpec(name, fam.n, fam.m, data_config.context_dim, nfpn) for name in MODELS}
    t0 = time.perf_counter()
    if log is not None:
        log(f"building {data_config.n_train} + {data_config.n_test} certified {data_config.family} games ...")
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
    config = recipe(epochs=epochs, lr=lr, seed=seed, device=device, progress=progress)
    rows = []
    for name, spec in specs.items():
        seed_everything(seed)
        model = spec.build()
        t0 = time.perf_counter()
        if name == "constant":
            model.fit(train.tensors()[1])
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
    for r in rows:
        solver_report(r, what=r["model"])


def bench_json(rows: list[dict[str, Any]], summary: dict[str, Any], config: GameDataConfig) -> dict[str, Any]:
    """The JSON document of ``--json``."""
    return {"summary": summary, "rows": rows, "config": asdict(config)}
