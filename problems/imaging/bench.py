"""Benchmark: augmented joint fixed point vs naive nested optimisation vs TV on held-out images.

For each held-out crop and task (denoising at sigma 0.2 / 0.4, inpainting of missing 8x8 blocks) it reports
PSNR of every method, and the wall time and the number of DEQ function evaluations (+ vector-Jacobian
products) that the augmented and the naive method need to reach the same objective value. The problem is
non-convex, so the two methods may settle in different local minima; the common target is the worse of the
two best objectives (times ``1 + rtol``, ``rtol = 1e-4``), which both runs reach; both best values are
printed. The objective of each recorded iterate (every naive step, every 5th joint iteration) is evaluated
offline with an accurate equilibrium solve (not timed). Times are medians over ``repeats`` runs.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

from fpntools.augmented import Counter
from problems.imaging.data import TEST_IMAGES, center_crop, load_image, psnr
from problems.imaging.model import DEQDecoder
from problems.imaging.tasks import (
    LatentProblem,
    TaskConfig,
    block_mask,
    lam_for_sigma,
    make_problem,
    restore_augmented,
    restore_naive,
    tv_denoise,
    tv_inpaint,
)

__all__ = ["TASKS", "Task", "BenchRow", "make_observation", "run_task", "run_bench", "format_row", "format_table"]


@dataclass(frozen=True)
class Task:
    """A corruption: ``kind`` ``"denoise"`` (Gaussian noise ``sigma``) or ``"inpaint"`` (blocks missing,
    plus noise ``sigma``); ``lam`` latent prior weight; ``tv_weight`` of the TV baseline (both tuned on
    training images, see ``docs/imaging.md``)."""

    name: str
    kind: str
    sigma: float
    lam: float
    tv_weight: float
    fraction: float = 0.0


TASKS: tuple[Task, ...] = (
    Task("denoise s=0.2", "denoise", 0.2, lam=lam_for_sigma(0.2), tv_weight=0.2),
    Task("denoise s=0.4", "denoise", 0.4, lam=lam_for_sigma(0.4), tv_weight=0.4),
    Task("inpaint 25% 8x8", "inpaint", 0.0, lam=lam_for_sigma(0.0), tv_weight=0.05, fraction=0.25),
)


def make_observation(img: np.ndarray, task: Task, seed: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
    """Corrupted observation (and known-pixel mask for inpainting), deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    y = img + task.sigma * rng.standard_normal(img.shape) if task.sigma > 0 else img.copy()
    mask = None
    if task.kind == "inpaint":
        mask = block_mask(img.shape, 8, task.fraction, seed)
        y = np.where(mask, y, 0.0)
    return y, mask


@dataclass
class BenchRow:
    """One table row (times in seconds, medians)."""

    image: str
    task: str
    psnr_input: float
    psnr_tv: float
    psnr_naive: float
    psnr_augmented: float
    target: float
    naive_time: float
    naive_nfe: int
    naive_nvjp: int
    aug_time: float | None
    aug_nfe: int | None
    aug_nvjp: int | None
    aug_final: float
    extra: dict = field(default_factory=dict)

    @property
    def speedup(self) -> float | None:
        return None if self.aug_time is None else self.naive_time / max(self.aug_time, 1e-9)


def _curve(prob: LatentProblem, counter: Counter) -> list[float]:
    return [float(prob.objective(s.x.to(prob.y.dtype)).sum()) for s in counter.snapshots]


def run_task(
    model: DEQDecoder, img: np.ndarray, name: str, task: Task, cfg: TaskConfig, repeats: int = 3, record_every: int = 5,
    verbose: bool = False,
    rtol: float = 1e-4,
) -> BenchRow:
    """Run TV, naive and augmented on one image and task; see the module docstring."""
    y, mask = make_observation(img, task)
    cfg = replace(cfg, lam=task.lam)
    tv = tv_denoise(y, task.tv_weight) if mask is None else tv_inpaint(y, mask, task.tv_weight)
    prob = make_problem(model, y, mask, cfg)
    naive_runs, aug_runs = [], []
    for _ in range(repeats):
        c = Counter(record_every=1)
        c.start()
        out_n, res_n = restore_naive(model, y, mask, cfg, c)
        naive_runs.append((c, out_n, res_n))
        c2 = Counter(record_every=record_every)
        c2.start()
        out_a, res_a = restore_augmented(model, y, mask, cfg, c2)
        c2.snapshot(res_a.x, force=True)
        aug_runs.append((c2, out_a, res_a))
    cn, out_n, _ = naive_runs[0]
    ca, out_a, res_a = aug_runs[0]
    vn, va = _curve(prob, cn), _curve(prob, ca)
    if verbose:
        print("naive", [round(v, 2) for v in vn[::5]], "\naug", [round(v, 2) for v in va], flush=True)
    best_n = min(v for v in vn if np.isfinite(v))
    best_a = min((v for v in va if np.isfinite(v)), default=float("inf"))
    # common target: the worse of the two best objectives (+ rtol), so that both methods reach it
    target = max(best_n, best_a) * (1 + rtol)
    i_n = next(i for i, v in enumerate(vn) if v <= target)
    i_a = next((i for i, v in enumerate(va) if v <= target), None)
    t_n = statistics.median(r[0].snapshots[i_n].time for r in naive_runs)
    t_a = None if i_a is None else statistics.median(r[0].snapshots[i_a].time for r in aug_runs)
    if mask is not None and task.sigma == 0:  # noiseless inpainting: keep the known pixels
        out_n, out_a = np.where(mask, y, out_n), np.where(mask, y, out_a)
    shown = y if mask is None else np.where(mask, y, y[mask].mean())  # input: holes filled with the mean
    return BenchRow(
        image=name,
        task=task.name,
        psnr_input=psnr(shown, img),
        psnr_tv=psnr(tv, img),
        psnr_naive=psnr(out_n, img),
        psnr_augmented=psnr(out_a, img),
        target=target,
        naive_time=t_n,
        naive_nfe=cn.snapshots[i_n].nfe,
        naive_nvjp=cn.snapshots[i_n].nvjp,
        aug_time=t_a,
        aug_nfe=None if i_a is None else ca.snapshots[i_a].nfe,
        aug_nvjp=None if i_a is None else ca.snapshots[i_a].nvjp,
        aug_final=va[-1],
        extra={"naive_best": best_n, "aug_best": best_a},
    )


def run_bench(
    model: DEQDecoder,
    images: tuple[str, ...] = TEST_IMAGES,
    size: int = 96,
    tasks: tuple[Task, ...] = TASKS,
    cfg: TaskConfig | None = None,
    repeats: int = 3,
    progress: Callable[[BenchRow], None] | None = None,
) -> list[BenchRow]:
    """All rows of the benchmark table."""
    cfg = cfg or TaskConfig()
    rows = []
    for name in images:
        img = center_crop(load_image(name), size)
        for task in tasks:
            row = run_task(model, img, name, task, cfg, repeats)
            if progress is not None:
                progress(row)
            rows.append(row)
    return rows


HEADER = (
    "| image | task | PSNR in | TV | naive | augmented | best obj naive / aug | naive s (nfe+vjp) | augmented s (nfe+vjp) | speedup time (evals) |",
    "|---|---|---|---|---|---|---|---|---|---|",
)


def format_row(r: BenchRow) -> str:
    if r.aug_time is None:
        aug = f"not reached (final {r.aug_final:.2f})"
        sp = "-"
    else:
        aug = f"{r.aug_time:.2f} ({r.aug_nfe}+{r.aug_nvjp})"
        sp = f"{r.speedup:.1f}x ({(r.naive_nfe + r.naive_nvjp) / max(1, r.aug_nfe + r.aug_nvjp):.1f}x)"
    return (
        f"| {r.image} | {r.task} | {r.psnr_input:.2f} | {r.psnr_tv:.2f} | {r.psnr_naive:.2f} | {r.psnr_augmented:.2f} "
        f"| {r.extra['naive_best']:.2f} / {r.extra['aug_best']:.2f} | {r.naive_time:.2f} ({r.naive_nfe}+{r.naive_nvjp}) | {aug} | {sp} |"
    )


def format_table(rows: list[BenchRow]) -> str:
    return "\n".join([*HEADER, *(format_row(r) for r in rows)])
