r"""Adversarial robustness demo on scikit-learn digits (8x8, pixels scaled to [0, 1]).

Classifier: a DEQ ``z* = tanh(W z* + U x + b)`` (``||W||_2 <= 0.9`` by rescaling, a contraction), logits
``V z* + c``. An L2 attack finds ``delta`` with ``||delta||_2 <= eps`` maximising the cross-entropy:

.. math::  \min_{\|\delta\| \le \epsilon} \; -\mathrm{CE}(V z^*(x + \delta) + c, y).

* augmented: the joint fixed point over ``(z, delta, mu)`` (:func:`fpntools.augmented.augmented_solve`,
  projection :class:`fpntools.operators.L2Ball`), one evaluation + one VJP per iteration;
* PGD: ``K`` normalised projected gradient steps, each a full DEQ solve + implicit backward
  (:func:`fpntools.augmented.naive_solve` with ``optimizer="normalized"``).

Adversarial training replaces each batch by its augmented-attack perturbation (a few joint iterations). Both
classifiers are trained by the toolbox's one training loop (:class:`fpntools.training.Trainer`: seeded sample
order, run folder, ``--resume``). ``fpntools imaging adversarial`` prints the table (clean / robust accuracy,
attack costs).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from fpntools.augmented import AugmentedConfig, Counter, NaiveConfig, augmented_solve, naive_solve
from fpntools.errors import UserInputError
from fpntools.solve_config import SolveConfig, make_fixed_point
from fpntools.training import Trainer, TrainerConfig
from fpntools.training.trainer import print_to_stderr

__all__ = [
    "AdvConfig", "CLASSIFIER_SOLVE", "DEQClassifier", "load_digits_split", "attack_augmented", "attack_pgd",
    "classifier_loss", "run_demo", "format_demo", "train", "demo_command",
]

CLASSIFIER_SOLVE = SolveConfig(solver="anderson", backward="implicit", tol=1e-5, max_iter=60, backward_tol=1e-6,
                               backward_max_iter=50, anderson_m=5)
"""The classifier's equilibrium solve: Anderson (memory 5) to relative residual 1e-5 in at most 60 iterations,
implicit backward with the adjoint solved to 1e-6 in at most 50."""


@dataclass
class AdvConfig:
    """Demo settings: hidden width, radius ``eps``, training epochs, attack budgets."""

    hidden: int = 64
    eps: float = 1.0
    epochs: int = 15
    batch: int = 64
    lr: float = 5e-3
    aug_iters: int = 30
    aug_step: float = 0.5
    train_aug_iters: int = 10
    pgd_steps: int = 20
    pgd_lr: float = 0.25
    seed: int = 0


class _TanhCell(nn.Module):
    """``f(z, x) = tanh(W' z + U x + b)`` with ``W' = W min(1, 0.9 / ||W||_2)`` (a contraction)."""

    def __init__(self, d_in: int, hidden: int) -> None:
        super().__init__()
        self.W = nn.Linear(hidden, hidden, bias=False)
        self.U = nn.Linear(d_in, hidden)

    def w(self) -> Tensor:
        s = torch.linalg.matrix_norm(self.W.weight, 2)
        return self.W.weight * torch.clamp(0.9 / s, max=1.0)

    def forward(self, z: Tensor, x: Tensor) -> Tensor:
        return torch.tanh(z @ self.w().T + self.U(x))


class DEQClassifier(nn.Module):
    """``z = tanh(W z + U x + b)``, logits ``V z + c`` with ``W`` rescaled to spectral norm at most 0.9; the
    equilibrium is solved as ``solve`` says (default :data:`CLASSIFIER_SOLVE`)."""

    def __init__(self, d_in: int = 64, hidden: int = 64, classes: int = 10, solve: SolveConfig | None = None) -> None:
        super().__init__()
        cell = _TanhCell(d_in, hidden)
        self.V = nn.Linear(hidden, classes)
        self.hidden = hidden
        self.solve = solve or CLASSIFIER_SOLVE
        self.deq = make_fixed_point(cell, self.solve)

    def layer(self, z: Tensor, x: Tensor) -> Tensor:
        """``f(z, x)``."""
        return self.deq.layer(z, x)

    def forward(self, x: Tensor) -> Tensor:
        z, _ = self.deq(x, z0=x.new_zeros(x.shape[0], self.hidden))
        return self.V(z)


def load_digits_split(seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(x_train, y_train, x_test, y_test)``; 1297 / 500 samples, pixels in [0, 1]."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data / 16.0, dtype=torch.float32)
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    x, y = x[perm], y[perm]
    return x[500:], y[500:], x[:500], y[:500]


def _attack_problem(model: DEQClassifier, x: Tensor, y: Tensor):
    def f(z: Tensor, delta: Tensor) -> Tensor:
        return model.layer(z, x + delta)

    def loss(z: Tensor, delta: Tensor) -> Tensor:
        return -nn.functional.cross_entropy(model.V(z), y, reduction="none")

    return f, loss


def attack_augmented(
    model: DEQClassifier, x: Tensor, y: Tensor, eps: float, iters: int, step: float, counter: Counter | None = None
) -> Tensor:
    """L2 perturbation by the augmented joint fixed point (``iters`` joint iterations)."""
    from fpntools.operators import L2Ball

    f, loss = _attack_problem(model, x, y)
    cfg = AugmentedConfig(step_size=step, tol=1e-6, max_iter=iters, solver_options={"m": 6}, backward="jfb")
    with torch.no_grad():
        res = augmented_solve(f, loss, torch.zeros_like(x), x.new_zeros(x.shape[0], model.hidden), L2Ball(eps), cfg, counter=counter)
    return res.x.detach()


def attack_pgd(
    model: DEQClassifier, x: Tensor, y: Tensor, eps: float, steps: int, lr: float, counter: Counter | None = None
) -> Tensor:
    """L2 PGD with normalised steps; each step a full DEQ solve + implicit backward."""
    from fpntools.operators import L2Ball

    f, loss = _attack_problem(model, x, y)
    cfg = NaiveConfig(optimizer="normalized", lr=lr * eps, steps=steps, inner_tol=1e-5, backward_tol=1e-5)
    res = naive_solve(f, loss, torch.zeros_like(x), x.new_zeros(x.shape[0], model.hidden), L2Ball(eps), cfg, counter=counter)
    return res.x.detach()


def _accuracy(model: DEQClassifier, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def classifier_loss(model: DEQClassifier, batch: tuple[Tensor, Tensor], cfg: AdvConfig,
                    adversarial: bool) -> tuple[Tensor, dict[str, float]]:
    """Cross-entropy of a batch ``(x, y)`` (the trainer's ``loss_fn``); with ``adversarial`` the inputs are first
    replaced by their augmented-attack perturbations (``cfg.train_aug_iters`` joint iterations, weights frozen
    during the attack). Metric: ``acc`` on the (perturbed) batch."""
    xb, yb = batch
    if adversarial:
        for p in model.parameters():
            p.requires_grad_(False)
        try:
            xb = xb + attack_augmented(model, xb, yb, cfg.eps, cfg.train_aug_iters, cfg.aug_step)
        finally:
            for p in model.parameters():
                p.requires_grad_(True)
    logits = model(xb)
    return nn.functional.cross_entropy(logits, yb), {"acc": float((logits.argmax(1) == yb).float().mean())}


def train(model: DEQClassifier, xtr: Tensor, ytr: Tensor, cfg: AdvConfig, adversarial: bool,
          run_dir: str | Path | None = None, resume: bool = False, force: bool = False, device: str = "cpu",
          evaluate: Any = None, progress: bool = False) -> float:
    """Train with :class:`fpntools.training.Trainer` (Adam, ``cfg.lr``, batches of ``cfg.batch``, ``cfg.epochs``
    epochs, sample order seeded by ``cfg.seed``; optionally on augmented-attack perturbations); returns the
    seconds spent in training steps (over all invocations of a resumed run)."""
    tcfg = TrainerConfig(epochs=cfg.epochs, batch_size=cfg.batch, lr=cfg.lr, seed=cfg.seed, device=device,
                         run_dir=None if run_dir is None else str(run_dir), resume=resume, force=force,
                         progress=progress)
    run_config = {"demo": {k: v for k, v in vars(cfg).items() if k not in ("epochs",)}, "adversarial": adversarial,
                  "solve": model.solve.to_dict()}
    trainer = Trainer(model, lambda m, b: classifier_loss(m, b, cfg, adversarial), TensorDataset(xtr, ytr), tcfg,
                      evaluate=evaluate, run_config=run_config, log=print_to_stderr if progress else None)
    result = trainer.fit()
    trainer.model.cpu()
    return float(sum(h.get("seconds", 0.0) for h in result.history))


def run_demo(cfg: AdvConfig | None = None, run_dir: str | Path | None = None, resume: bool = False,
             force: bool = False, device: str = "cpu", progress: bool = False) -> list[dict]:
    """Train a standard and an adversarially trained DEQ (in ``run_dir/standard`` and ``run_dir/adversarial``
    when given); attack both with augmented and PGD on the test set (on the CPU)."""
    cfg = cfg or AdvConfig()
    xtr, ytr, xte, yte = load_digits_split(cfg.seed)
    rows = []
    for name, sub, adv in (("standard", "standard", False), ("adv-trained (augmented attack)", "adversarial", True)):
        torch.manual_seed(cfg.seed)
        model = DEQClassifier(hidden=cfg.hidden)
        folder = None if run_dir is None else Path(run_dir) / sub
        evaluate = lambda m: {"test_acc": _accuracy(m, xte.to(next(m.parameters()).device),  # noqa: E731
                                                    yte.to(next(m.parameters()).device))}
        secs = train(model, xtr, ytr, cfg, adv, folder, resume, force, device, evaluate, progress)
        for p in model.parameters():
            p.requires_grad_(False)
        row = {"model": name, "train_s": secs, "clean": _accuracy(model, xte, yte)}
        for attack in ("augmented", "pgd"):
            c = Counter()
            c.start()
            if attack == "augmented":
                d = attack_augmented(model, xte, yte, cfg.eps, cfg.aug_iters, cfg.aug_step, c)
            else:
                d = attack_pgd(model, xte, yte, cfg.eps, cfg.pgd_steps, cfg.pgd_lr, c)
            row[attack] = {"robust": _accuracy(model, xte + d, yte), "s": c.elapsed, "nfe": c.nfe, "nvjp": c.nvjp}
        rows.append(row)
    return rows


def format_demo(rows: list[dict], cfg: AdvConfig) -> str:
    lines = [
        f"digits, L2 eps = {cfg.eps}, test set 500 images; augmented attack {cfg.aug_iters} joint iterations, PGD {cfg.pgd_steps} steps",
        "| model | train s | clean acc | robust acc (augmented) | augmented s (nfe+vjp) | robust acc (PGD) | PGD s (nfe+vjp) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        a, p = r["augmented"], r["pgd"]
        lines.append(
            f"| {r['model']} | {r['train_s']:.1f} | {r['clean']:.3f} | {a['robust']:.3f} | {a['s']:.2f} ({a['nfe']}+{a['nvjp']}) "
            f"| {p['robust']:.3f} | {p['s']:.2f} ({p['nfe']}+{p['nvjp']}) |"
        )
    return "\n".join(lines)


def demo_command(*, epochs: int, eps: float, run_dir: str | None, device: str, seed: int, resume: bool,
                 force: bool) -> str:
    """``fpntools imaging adversarial``: check the options, run the demo on one thread, return the table."""
    if epochs < 1:
        raise UserInputError(f"--epochs must be at least 1, got {epochs}")
    if not (eps > 0 and eps < float("inf")):
        raise UserInputError(f"--eps must be a positive number, got {eps}")
    if seed < 0:
        raise UserInputError(f"--seed must be nonnegative, got {seed}")
    torch.set_num_threads(1)
    cfg = AdvConfig(epochs=epochs, eps=eps, seed=seed)
    return format_demo(run_demo(cfg, run_dir, resume, force, device, progress=True), cfg)
