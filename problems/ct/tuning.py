"""Tune the TV weight per geometry and noise level on validation images and fit :class:`~problems.ct.baselines.TVWeightRule`.

For every geometry ``g`` and relative noise level ``s`` the validation sets of :func:`problems.ct.train.validation_images`
(BSD68 validation half, CT-like slices, Shepp-Logan variants, ellipses; never test images) are simulated with a
fixed seed and reconstructed by TV for the weights ``lam = 10^k`` on a log grid; the best weight maximises the mean
over the sets of each set's mean PSNR (every kind of image counts the same, however many images it has). The rule
is then the least-squares fit of ``log lam*(g, s)`` by
``log scale + log beam_factor + angle_power log(n_angles / 30) + noise_power log(s / 0.015)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from fpntools.metrics import psnr
from problems.ct.acquisition import acquisition
from problems.ct.baselines import TVWeightRule, tv_reconstruct
from problems.ct.geometry import CTGeometry

__all__ = ["TVTuning", "tune_tv_grid", "fit_tv_rule"]


@dataclass
class TVTuning:
    """``psnr[(geometry name, noise)][lam] = {set: mean PSNR}``, the best weight per case and the fitted rule."""

    psnr: dict[tuple[str, float], dict[float, dict[str, float]]] = field(default_factory=dict)
    best: dict[tuple[str, float], float] = field(default_factory=dict)
    rule: TVWeightRule | None = None


def tune_tv_grid(images: dict[str, np.ndarray], geometries: dict[str, CTGeometry], noises: Sequence[float],
                 lambdas: Sequence[float] | None = None, iters: int = 300, seed: int = 3,
                 log: Callable[[str], None] | None = None) -> TVTuning:
    """Grid search of the TV weight (module docstring); ``lambdas`` default ``10^k``, ``k = -1.25, -1, ..., 1.25``."""
    grid = list(lambdas) if lambdas is not None else [float(10.0**k) for k in np.arange(-1.25, 1.26, 0.25)]
    out = TVTuning()
    x = {k: torch.from_numpy(v) for k, v in images.items()}
    for gname, g in geometries.items():
        acq = acquisition(g)
        clean = {k: acq.op(v) for k, v in x.items()}
        for s in noises:
            gen = torch.Generator().manual_seed(seed)
            ys = {k: c + s * c.flatten(1).pow(2).mean(1).sqrt().view(-1, 1, 1) * torch.randn(c.shape, generator=gen)
                  for k, c in clean.items()}
            x0 = {k: acq.filtered_backprojection(y) for k, y in ys.items()}
            table: dict[float, dict[str, float]] = {}
            for lam in grid:
                table[lam] = {k: float(psnr(tv_reconstruct(ys[k], acq.op, lam=lam, n_iter=iters, x0=x0[k],
                                                           op_norm=acq.op_norm), x[k]).mean()) for k in ys}
            best = max(grid, key=lambda lam: np.mean(list(table[lam].values())))
            out.psnr[(gname, s)] = table
            out.best[(gname, s)] = best
            if log is not None:
                log(f"{gname} noise {s:g}: best lam {best:.3g} (mean PSNR {np.mean(list(table[best].values())):.2f} "
                    f"dB; " + ", ".join(f"{k} {v:.2f}" for k, v in table[best].items()) + ")")
    out.rule = fit_tv_rule(out.best, geometries)
    return out


def fit_tv_rule(best: dict[tuple[str, float], float], geometries: dict[str, CTGeometry]) -> TVWeightRule:
    """Least-squares fit of ``log lam`` (module docstring); a fan factor only when fan geometries were tuned."""
    rows, rhs = [], []
    has_fan = any(geometries[g].beam == "fan" for g, _ in best)
    for (gname, s), lam in best.items():
        g = geometries[gname]
        row = [1.0, math.log(g.n_angles / 30), math.log(s / 0.015)]
        if has_fan:
            row.append(1.0 if g.beam == "fan" else 0.0)
        rows.append(row)
        rhs.append(math.log(lam))
    coef, *_ = np.linalg.lstsq(np.asarray(rows), np.asarray(rhs), rcond=None)
    return TVWeightRule(scale=float(math.exp(coef[0])), angle_power=float(coef[1]), noise_power=float(coef[2]),
                        fan_factor=float(math.exp(coef[3])) if has_fan else 1.0)
