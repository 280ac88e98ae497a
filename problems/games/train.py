"""Training and evaluation of equilibrium predictors (N-FPN and the regression baselines).

Loss: mean squared error between predicted and certified equilibria, ``mean_b ||z(d_b) - z*_b||^2``.
The N-FPN is trained with JFB (gradients through one application of ``T`` at the fixed point).
Metrics on a data set (:func:`evaluate`):

* ``err``: mean ``||z(d) - z*(d)||_2`` over samples (``z = (x, y)`` stacked, so at most ``2 sqrt(2)``);
* ``rel_err``: ``sum ||z - z*|| / sum ||z*||``;
* ``gap``: mean Nash gap of the predictions under the *true* games (``0`` only at true equilibria);
* ``fp_iters`` / ``fp_converged``: mean forward iterations and fraction of converged solves (N-FPN).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

from fpntools.training.checkpoint import load_checkpoint, save_checkpoint
from problems.games.data import GameDataset

__all__ = ["TrainConfig", "train_model", "evaluate", "predict"]


@dataclass
class TrainConfig:
    """Optimisation settings.

    Attributes:
        epochs: passes over the training set.
        batch_size, lr, weight_decay: Adam mini-batch settings (learning rate cosine-decayed to ``lr / 20``).
        seed: seed of the shuffling (and of the model initialisation when the caller seeds with it).
        checkpoint: file to write ``{"model", "optimizer", "epoch", "history", ...}`` to (atomically) every
            ``checkpoint_every`` epochs and at the end; ``None`` disables checkpoints.
        resume: continue from ``checkpoint`` when it exists.
        progress: show a tqdm progress bar.
    """

    epochs: int = 100
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.0
    seed: int = 0
    checkpoint: str | None = None
    checkpoint_every: int = 10
    resume: bool = False
    progress: bool = False


def predict(model: nn.Module, d: Tensor, batch_size: int = 512) -> tuple[Tensor, dict[str, float]]:
    """Predictions of ``model`` (``forward(d) -> (z, info | None)``) without gradients, and solver stats."""
    model.eval()
    outs, iters, conv = [], [], []
    with torch.no_grad():
        for i in range(0, d.shape[0], batch_size):
            z, info = model(d[i : i + batch_size])
            outs.append(z)
            if info is not None:
                iters.append(info.steps.float())
                conv.append(info.converged.float())
    stats = {}
    if iters:
        stats = {"fp_iters": float(torch.cat(iters).mean()), "fp_converged": float(torch.cat(conv).mean())}
    return torch.cat(outs), stats


def evaluate(model: nn.Module, data: GameDataset) -> dict[str, float]:
    """Error to the certified equilibria and Nash gap under the true games (module docstring)."""
    d, z_star = data.tensors()
    t0 = time.perf_counter()
    z, stats = predict(model, d)
    elapsed = time.perf_counter() - t0
    diff = (z.double() - z_star.double()).norm(dim=1)
    gap = data.nash_gap(z)
    return {
        "err": float(diff.mean()),
        "rel_err": float(diff.sum() / z_star.double().norm(dim=1).sum()),
        "gap": float(gap.mean()),
        "ms_per_sample": 1e3 * elapsed / max(len(data), 1),
        **stats,
    }


def _lr_at(config: TrainConfig, epoch: int) -> float:
    frac = epoch / max(config.epochs, 1)
    return config.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))


def train_model(
    model: nn.Module,
    train: GameDataset,
    config: TrainConfig,
    val: GameDataset | None = None,
    extra_state: dict[str, Any] | None = None,
    log: Callable[[str], None] | None = None,
) -> list[dict[str, float]]:
    """Minimise the squared error of ``model``'s predictions on ``train`` with Adam.

    Returns the history: one dict per epoch with ``epoch``, ``loss`` (training mean squared error) and, when
    ``val`` is given, the :func:`evaluate` metrics on it prefixed ``val_``.  Checkpoints hold the model and
    optimiser state, the epoch, the history and ``extra_state`` (e.g. the configs), so ``resume`` continues.
    """
    d_all, z_all = train.tensors()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    history: list[dict[str, float]] = []
    start = 0
    ckpt = Path(config.checkpoint) if config.checkpoint else None
    if ckpt is not None and config.resume and ckpt.is_file():
        state = load_checkpoint(ckpt)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start, history = int(state["epoch"]), list(state["history"])
        if log:
            log(f"resumed from {ckpt} at epoch {start}")

    def save(epoch: int) -> None:
        if ckpt is not None:
            save_checkpoint(
                ckpt,
                {
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "epoch": epoch,
                    "history": history,
                    "train_config": asdict(config),
                    **(extra_state or {}),
                },
            )

    gen = torch.Generator().manual_seed(config.seed)
    for _ in range(start):  # keep the shuffles identical after a resume
        torch.randperm(len(train), generator=gen)
    bar = None
    if config.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.epochs, initial=start, desc=type(model).__name__, unit="epoch")
    for epoch in range(start, config.epochs):
        model.train()
        for group in opt.param_groups:
            group["lr"] = _lr_at(config, epoch)
        perm = torch.randperm(len(train), generator=gen)
        total, count = 0.0, 0
        for i in range(0, len(train), config.batch_size):
            idx = perm[i : i + config.batch_size]
            z, _ = model(d_all[idx])
            loss = ((z - z_all[idx]) ** 2).sum(dim=1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
        row = {"epoch": epoch + 1, "loss": total / count}
        if val is not None and (epoch + 1 == config.epochs or (epoch + 1) % max(config.checkpoint_every, 1) == 0):
            row.update({f"val_{k}": v for k, v in evaluate(model, val).items()})
        history.append(row)
        if bar is not None:
            bar.update(1)
            shown = ("loss", "val_err", "val_gap", "val_fp_iters")
            bar.set_postfix({k: f"{row[k]:.4g}" for k in shown if k in row})
        if (epoch + 1) % max(config.checkpoint_every, 1) == 0 or epoch + 1 == config.epochs:
            save(epoch + 1)
    if bar is not None:
        bar.close()
    return history


def seed_everything(seed: int) -> None:
    """Seed torch and numpy (model initialisation)."""
    torch.manual_seed(seed)
    np.random.seed(seed)
