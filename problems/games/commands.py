"""The work behind ``fpntools games make-data | predict | evaluate`` (the CLI module only parses arguments).

* :func:`make_data_file`: certified equilibria of a built-in family written in the data-file format of
  :mod:`problems.games.datafile` (what ``train --data`` reads);
* :func:`predict_file`: a trained model's equilibria for the contexts of a file, written to ``.npy`` (float64,
  ``(m, n1 + n2)``: player 1's strategy, then player 2's) or ``.csv`` (header ``x1..xn1,y1..yn2``);
* :func:`evaluate_command`: held-out metrics of a trained model, or its metrics on a data file.
"""

from __future__ import annotations

import io
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fpntools.atomic_io import atomic_write, atomic_write_bytes
from problems.games.data import GameDataConfig, make_dataset
from problems.games.datafile import load_contexts, save_game_data
from problems.games.train import evaluate_file, evaluate_run, load_trained, predict_contexts

__all__ = ["make_data_file", "predict_file", "evaluate_command", "write_strategies"]


def make_data_file(
    family: str, n: int, out: str | Path, n_actions: int = 3, context_dim: int = 4, seed: int = 1, family_seed: int = 0
) -> str:
    """Draw ``n`` contexts of ``family`` (context draws seeded with ``seed``, payoff map with ``family_seed``),
    solve and certify their games (:func:`problems.games.data.make_dataset`) and write them to ``out``.
    Returns the summary line."""
    cfg = GameDataConfig(family=family, n_actions=n_actions, context_dim=context_dim, n_train=n, n_test=0,
                         family_seed=family_seed, data_seed=seed)
    data, _ = make_dataset(cfg)
    save_game_data(out, data)
    accept = f", unique-equilibrium acceptance {data.acceptance:.2f}" if data.acceptance < 1 else ""
    return (f"wrote {len(data)} certified games ({data.info['family']}; {data.info['method']}, largest Nash gap "
            f"{float(data.gap.max()):.1e}{accept}) to {out}")


def write_strategies(out: str | Path, z: np.ndarray, n: int) -> None:
    """Write predicted strategies ``z`` ``(m, n + n2)`` atomically to ``.npy`` or ``.csv`` (by suffix)."""
    out = Path(out)
    if out.suffix.lower() == ".csv":
        header = ",".join([f"x{i + 1}" for i in range(n)] + [f"y{j + 1}" for j in range(z.shape[1] - n)])
        buf = io.StringIO()
        np.savetxt(buf, z, delimiter=",", header=header, comments="", fmt="%.17g")
        atomic_write_bytes(out, buf.getvalue().encode())
    else:
        atomic_write(out, lambda fh: np.save(fh, z, allow_pickle=False))


def predict_file(
    model_path: str | Path,
    context_file: str | Path,
    out: str | Path,
    solve_changes: dict[str, Any] | None = None,
    device: str | torch.device = "cpu",
) -> str:
    """Load a trained model, predict the equilibria of the contexts in ``context_file`` and write them to ``out``
    (nothing is written when the solves fail: :class:`~fpntools.cli_support.NotUsableError`). Returns the
    summary line."""
    model, _ = load_trained(model_path, solve_changes, device)
    contexts = load_contexts(context_file, model.context_dim)
    z, stats = predict_contexts(model, contexts, what=str(model_path))
    write_strategies(out, z, model.n)
    solve = f" ({stats['fp_iters']:.1f} fixed-point iterations on average)" if stats else ""
    return f"wrote {z.shape[0]} predicted equilibria ({model.n}+{model.m} strategies per row) to {out}{solve}"


def evaluate_command(
    run: str | Path,
    data_file: str | Path | None,
    n_test: int | None,
    solve_changes: dict[str, Any],
    device: str | torch.device,
) -> tuple[str, dict[str, float], dict[str, Any]]:
    """Metrics of a trained model on its held-out split or on ``data_file``: ``(line, metrics, json document)``."""
    if data_file is not None:
        metrics, data = evaluate_file(run, data_file, solve_changes, device)
        where = f"{len(data)} samples of {data_file}"
        doc: dict[str, Any] = {"metrics": metrics, "data": {"source": "file", "path": str(data_file)}}
    else:
        metrics, cfg = evaluate_run(run, n_test=n_test, solve_changes=solve_changes, device=device)
        if getattr(cfg, "source", None) == "file":
            where = f"{cfg.n_val} held-out samples of {cfg.path}"
        else:
            where = f"{cfg.family} games, {cfg.n_test} held-out"
        doc = {"metrics": metrics, "data": asdict(cfg)}
    return where + ": " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()), metrics, doc
