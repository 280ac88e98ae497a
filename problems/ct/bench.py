"""``fpntools ct bench``: PSNR / SSIM / time per image of FBP, TV, the F-FPN and the unrolled network on the
simulated test split (random ellipses never used in training or validation).

:func:`run_bench` computes the results (one progress line per method on stderr), :func:`bench_table` renders
them, :func:`bench_document` is the JSON written by ``--json``; the figure is
:func:`problems.ct.figures.save_bench_figure`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from fpntools.errors import UserInputError
from fpntools.metrics import psnr, ssim
from problems.ct.baselines import DEFAULT_TV_LAM
from problems.ct.geometry import CTGeometry
from problems.ct.reconstruct import METHODS, load_network, reconstruct

__all__ = ["BenchConfig", "BenchResult", "run_bench", "bench_table", "bench_document", "parse_methods"]


def parse_methods(methods: str) -> list[str]:
    """``"fbp,tv"`` -> ``["fbp", "tv"]``; unknown names are a one-line :class:`UserInputError`."""
    chosen = [m.strip().lower() for m in methods.split(",") if m.strip()]
    bad = [m for m in chosen if m not in METHODS]
    if bad or not chosen:
        raise UserInputError(f"unknown methods {bad or [methods]}; choose from {', '.join(METHODS)}")
    return chosen


@dataclass
class BenchConfig:
    """What :func:`run_bench` measures.

    Attributes:
        methods: a subset of :data:`~problems.ct.reconstruct.METHODS`.
        n_test, seed: test phantoms of the simulated data set (:class:`~problems.ct.phantoms.CTDataConfig`).
        lam, iters: TV weight and PDHG budget. filter: FBP filter.
        ffpn_weights, unrolled_weights: network weights (``None``: shipped).
    """

    methods: list[str] = field(default_factory=lambda: list(METHODS))
    n_test: int = 16
    seed: int = 0
    lam: float = DEFAULT_TV_LAM
    iters: int = 500
    filter: str = "hann"
    ffpn_weights: str | os.PathLike | None = None
    unrolled_weights: str | os.PathLike | None = None

    def __post_init__(self) -> None:
        if self.n_test < 1:
            raise UserInputError(f"n_test must be >= 1, got {self.n_test}")
        bad = [m for m in self.methods if m not in METHODS]
        if bad or not self.methods:
            raise UserInputError(f"unknown methods {bad}; choose from {', '.join(METHODS)}")


@dataclass
class BenchResult:
    """Per-method metrics (``results[m]``: psnr, psnr_std, ssim, seconds_per_image, and for solved methods
    steps / status), the reconstructions (``recs[m]``, numpy) and the ground truth."""

    config: BenchConfig
    geometry: CTGeometry
    results: dict[str, dict[str, Any]]
    recs: dict[str, np.ndarray]
    truth: np.ndarray


def run_bench(config: BenchConfig, geometry: CTGeometry, cache_dir: str | os.PathLike | None = None,
              log: Callable[[str], None] | None = None) -> BenchResult:
    """Reconstruct the test split with every method of ``config``; ``log`` gets one progress line per step.

    Networks are loaded (and checked) before anything is timed; ``seconds_per_image`` covers everything from
    the sinograms on (for the networks, their TV reference included).
    """
    from problems.ct.phantoms import CTDataConfig, make_dataset
    from problems.ct.projector import ct_operator

    say = log or (lambda _msg: None)
    t0 = time.perf_counter()
    op = ct_operator(geometry, cache_dir=cache_dir)
    data = make_dataset(CTDataConfig(geometry=geometry, n_train=0, n_val=0, n_test=config.n_test, seed=config.seed),
                        cache_dir=cache_dir)
    x, y = data.test.images, data.test.sinograms
    models = {m: load_network(m, config.ffpn_weights if m == "ffpn" else config.unrolled_weights, op, geometry)
              for m in config.methods if m in ("ffpn", "unrolled")}
    say(f"ct bench: {config.n_test} test phantoms, operator and weights ready ({time.perf_counter() - t0:.1f} s)")
    results: dict[str, dict[str, Any]] = {}
    recs: dict[str, np.ndarray] = {}
    for i, m in enumerate(config.methods, start=1):
        say(f"[{i}/{len(config.methods)}] {m} ...")
        rec = reconstruct(m, y, geometry, op, lam=config.lam, iters=config.iters, filter=config.filter,
                          model=models.get(m))
        recs[m] = rec.images.detach().cpu().numpy()
        p, s = psnr(rec.images, x), ssim(rec.images, x)
        r: dict[str, Any] = {"psnr": float(p.mean()), "psnr_std": float(p.std()) if config.n_test > 1 else 0.0,
                             "ssim": float(s.mean()), "seconds_per_image": rec.seconds / config.n_test}
        if rec.info is not None:
            r["steps"] = rec.steps
            r["status"] = "FIXED_STEPS" if rec.fixed_steps else rec.info.status.name
        results[m] = r
        say(f"[{i}/{len(config.methods)}] {m}: PSNR {r['psnr']:.2f} dB in {rec.seconds:.1f} s"
            + (f", {r['steps']:.1f} steps ({r['status']})" if "steps" in r else ""))
    return BenchResult(config, geometry, results, recs, x.detach().cpu().numpy())


def bench_table(result: BenchResult) -> Any:
    """A :class:`rich.table.Table` of the results (steps: mean solver steps; unrolled: its fixed steps)."""
    from rich.table import Table

    table = Table(title=f"CT bench: {result.config.n_test} ellipse phantoms, {result.geometry.describe()}")
    for col in ("method", "PSNR (dB)", "SSIM", "s / image", "fp steps"):
        table.add_column(col)
    for m, r in result.results.items():
        steps = "-" if "steps" not in r else f"{r['steps']:.0f} (fixed)" if r["status"] == "FIXED_STEPS" \
            else f"{r['steps']:.1f}"
        table.add_row(m, f"{r['psnr']:.2f} ± {r['psnr_std']:.2f}", f"{r['ssim']:.4f}",
                      f"{r['seconds_per_image']:.3f}", steps)
    return table


def bench_document(result: BenchResult) -> dict[str, Any]:
    """The JSON document of ``--json``."""
    return {"geometry": result.geometry.to_dict(), "n_test": result.config.n_test, "seed": result.config.seed,
            "results": result.results}

