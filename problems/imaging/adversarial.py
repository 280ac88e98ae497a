r"""Adversarial robustness demo on scikit-learn digits (8x8, pixels scaled to [0, 1]).

Classifier: a DEQ ``z* = tanh(W z* + U x + b)`` (``||W||_2 <= 0.9`` by rescaling, a contraction), logits
``V z* + c``. An L2 attack finds ``delta`` with ``||delta||_2 <= eps`` maximising the cross-entropy:

.. math::  \min_{\|\delta\| \le \epsilon} \; -\mathrm{CE}(V z^*(x + \delta) + c, y).

* augmented: the joint fixed point over ``(z, delta, mu)`` (:func:`fpntools.augmented.augmented_solve`,
  projection :class:`fpntools.operators.L2Ball`), one evaluation + one VJP per iteration;
* PGD: ``K`` normalised projected gradient steps, each a full DEQ solve + implicit backward
  (:func:`fpntools.augmented.naive_solve` with ``optimizer="normalized"``).

Adversarial training replaces each batch by its augmented-attack perturbation (a few joint iterations).
``python -m problems.imaging.adversarial`` prints the table (clean / robust accuracy, attack costs).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import Tensor, nn

import fpntools
from fpntools.augmented import AugmentedConfig, Counter, NaiveConfig, augmented_solve, naive_solve

__all__ = ["AdvConfig", "DEQClassifier", "load_digits_split", "attack_augmented", "attack_pgd", "run_demo", "format_demo", "train"]


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


class DEQClassifier(nn.Module):
    """``z = tanh(W z + U x + b)``, logits ``V z + c`` with ``W`` rescaled to spectral norm at most 0.9."""

    def __init__(self, d_in: int = 64, hidden: int = 64, classes: int = 10) -> None:
        super().__init__()
        self.W = nn.Linear(hidden, hidden, bias=False)
        self.U = nn.Linear(d_in, hidden)
        self.V = nn.Linear(hidden, classes)
        self.hidden = hidden

    def w(self) -> Tensor:
        s = torch.linalg.matrix_norm(self.W.weight, 2)
        return self.W.weight * torch.clamp(0.9 / s, max=1.0)

    def layer(self, z: Tensor, x: Tensor) -> Tensor:
        return torch.tanh(z @ self.w().T + self.U(x))

    def forward(self, x: Tensor) -> Tensor:
        z, _ = fpntools.fixed_point(lambda z: self.layer(z, x), x.new_zeros(x.shape[0], self.hidden), tol=1e-5, max_iter=60)
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


def train(model: DEQClassifier, xtr: Tensor, ytr: Tensor, cfg: AdvConfig, adversarial: bool) -> float:
    """Train (optionally on augmented-attack perturbations); returns seconds."""
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    g = torch.Generator().manual_seed(cfg.seed)
    t0 = time.perf_counter()
    for _ in range(cfg.epochs):
        perm = torch.randperm(len(ytr), generator=g)
        for i in range(0, len(ytr), cfg.batch):
            idx = perm[i : i + cfg.batch]
            xb, yb = xtr[idx], ytr[idx]
            if adversarial:
                for p in model.parameters():
                    p.requires_grad_(False)
                xb = xb + attack_augmented(model, xb, yb, cfg.eps, cfg.train_aug_iters, cfg.aug_step)
                for p in model.parameters():
                    p.requires_grad_(True)
            loss = nn.functional.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return time.perf_counter() - t0


def run_demo(cfg: AdvConfig | None = None) -> list[dict]:
    """Train a standard and an adversarially trained DEQ; attack both with augmented and PGD on the test set."""
    cfg = cfg or AdvConfig()
    torch.manual_seed(cfg.seed)
    xtr, ytr, xte, yte = load_digits_split(cfg.seed)
    rows = []
    for name, adv in (("standard", False), ("adv-trained (augmented attack)", True)):
        torch.manual_seed(cfg.seed)
        model = DEQClassifier(hidden=cfg.hidden)
        secs = train(model, xtr, ytr, cfg, adv)
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


if __name__ == "__main__":  # pragma: no cover
    torch.set_num_threads(1)
    c = AdvConfig()
    print(format_demo(run_demo(c), c))
