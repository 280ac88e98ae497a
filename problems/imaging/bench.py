"""Benchmark: augmented joint fixed point vs naive nested optimisation vs TV on held-out images.

For each held-out crop and task (denoising at sigma 0.2 / 0.4, inpainting of missing 8x8 blocks) it reports
PSNR of every method (TV, the amortised encoder's starting point, naive, augmented), and the wall time, the
number of DEQ function evaluations (+ vector-Jacobian products) and the number of objective evaluations
(decoder head and its gradient) that the augmented and the naive method need to reach the same objective value:
the naive method's final objective (times ``1 + rtol``, ``rtol = 1e-4``). Both start from the encoder's
latent. The objective of each recorded iterate (every naive step, every 5th joint iteration) is evaluated
offline with an accurate equilibrium solve (not timed). Times are medians over ``repeats`` runs.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

from fpntools.augmented import Counter
from fpntools.metrics import psnr
from problems.imaging.data import TEST_IMAGES, center_crop, load_image, validation_crops
from problems.imaging.model import DEQDecoder
from problems.imaging.tasks import (
    LatentProblem,
    TaskConfig,
    block_mask,
    keep_known,
    lam_for_sigma,
    make_problem,
    restore_amortized,
    restore_augmented,
    restore_naive,
    tv_denoise,
    tv_inpaint,
)

__all__ = [
    "TASKS",
    "Task",
    "BenchRow",
    "make_observation",
    "run_task",
    "run_bench",
    "tune_task",
    "tune_naive_lr",
    "format_row",
    "format_table",
]


@dataclass(frozen=True)
class Task:
    """A corruption: ``kind`` ``"denoise"`` (Gaussian noise ``sigma``) or ``"inpaint"`` (blocks missing,
    plus noise ``sigma``); ``lam`` latent prior weight; ``tv_weight`` of the TV baseline; ``naive_lr`` the
    naive baseline's Adam learning rate (all three chosen on the validation crops, see ``docs/imaging.md``)."""

    name: str
    kind: str
    sigma: float
    lam: float
    tv_weight: float
    fraction: float = 0.0
    naive_lr: float = 0.05


TASKS: tuple[Task, ...] = (
    Task("denoise s=0.2", "denoise", 0.2, lam=lam_for_sigma(0.2), tv_weight=0.2, naive_lr=0.01),
    Task("denoise s=0.4", "denoise", 0.4, lam=lam_for_sigma(0.4), tv_weight=0.8, naive_lr=0.02),
    Task("inpaint 25% 8x8", "inpaint", 0.0, lam=lam_for_sigma(0.0), tv_weight=0.8, fraction=0.25, naive_lr=0.02),
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
    psnr_amortized: float
    psnr_naive: float
    psnr_augmented: float
    target: float
    naive_time: float
    naive_nfe: int
    naive_nvjp: int
    naive_nloss: int
    aug_time: float | None
    aug_nfe: int | None
    aug_nvjp: int | None
    aug_nloss: int | None
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
    cfg = replace(cfg, lam=task.lam, sigma=task.sigma, naive=replace(cfg.naive, lr=task.naive_lr))
    tv = tv_denoise(y, task.tv_weight) if mask is None else tv_inpaint(y, mask, task.tv_weight)
    out_e = restore_amortized(model, y, mask, cfg)
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
    # common target: the naive method's final objective (+ rtol); the naive time is when it first gets there
    target = vn[-1] * (1 + rtol)
    i_n = next(i for i, v in enumerate(vn) if v <= target)
    i_a = next((i for i, v in enumerate(va) if v <= target), None)
    t_n = statistics.median(r[0].snapshots[i_n].time for r in naive_runs)
    t_a = None if i_a is None else statistics.median(r[0].snapshots[i_a].time for r in aug_runs)
    out_n, out_a, out_e = (keep_known(o, y, mask, task.sigma) for o in (out_n, out_a, out_e))
    shown = y if mask is None else np.where(mask, y, y[mask].mean())  # input: holes filled with the mean
    return BenchRow(
        image=name,
        task=task.name,
        psnr_input=float(psnr(np.clip(shown, 0, 1), img)),
        psnr_tv=float(psnr(np.clip(tv, 0, 1), img)),
        psnr_amortized=float(psnr(np.clip(out_e, 0, 1), img)),
        psnr_naive=float(psnr(np.clip(out_n, 0, 1), img)),
        psnr_augmented=float(psnr(np.clip(out_a, 0, 1), img)),
        target=target,
        naive_time=t_n,
        naive_nfe=cn.snapshots[i_n].nfe,
        naive_nvjp=cn.snapshots[i_n].nvjp,
        naive_nloss=cn.snapshots[i_n].nloss,
        aug_time=t_a,
        aug_nfe=None if i_a is None else ca.snapshots[i_a].nfe,
        aug_nvjp=None if i_a is None else ca.snapshots[i_a].nvjp,
        aug_nloss=None if i_a is None else ca.snapshots[i_a].nloss,
        aug_final=va[-1],
        extra={"naive_best": best_n, "aug_best": best_a, "naive_final": vn[-1]},
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
    "| image | task | PSNR in | TV | encoder | naive | augmented | final obj naive / aug | naive s (nfe+vjp, loss) "
    "| augmented s (nfe+vjp, loss) | speedup time (f evals) |",
    "|---|---|---|---|---|---|---|---|---|---|---|",
)


def format_row(r: BenchRow) -> str:
    if r.aug_time is None:
        aug = f"not reached (best {r.extra['aug_best']:.2f})"
        sp = "-"
    else:
        aug = f"{r.aug_time:.2f} ({r.aug_nfe}+{r.aug_nvjp}, {r.aug_nloss})"
        sp = f"{r.speedup:.1f}x ({(r.naive_nfe + r.naive_nvjp) / max(1, r.aug_nfe + r.aug_nvjp):.1f}x)"
    naive = f"{r.naive_time:.2f} ({r.naive_nfe}+{r.naive_nvjp}, {r.naive_nloss})"
    return (
        f"| {r.image} | {r.task} | {r.psnr_input:.2f} | {r.psnr_tv:.2f} | {r.psnr_amortized:.2f} | {r.psnr_naive:.2f} "
        f"| {r.psnr_augmented:.2f} | {r.extra['naive_final']:.2f} / {r.aug_final:.2f} | {naive} | {aug} | {sp} |"
    )


def format_table(rows: list[BenchRow]) -> str:
    return "\n".join([*HEADER, *(format_row(r) for r in rows)])


Crops = list[tuple[str, np.ndarray]]
"""Named image crops, e.g. :func:`problems.imaging.data.validation_crops`."""


def tune_task(
    model: DEQDecoder,
    task: Task,
    lams: tuple[float, ...],
    tv_weights: tuple[float, ...],
    crops: Crops | None = None,
    size: int = 96,
    cfg: TaskConfig | None = None,
) -> tuple[dict[float, float], dict[float, float]]:
    """Mean PSNR over ``crops`` (default: the validation crops of side ``size``, images used neither in training
    nor by the benchmark) of the augmented restoration for each prior weight in ``lams`` and of the TV baseline
    for each weight in ``tv_weights`` (same observations)."""
    crops = validation_crops(size) if crops is None else crops
    cfg = replace(cfg or TaskConfig(), sigma=task.sigma)
    by_lam: dict[float, list[float]] = {lam: [] for lam in lams}
    by_tv: dict[float, list[float]] = {w: [] for w in tv_weights}
    for _, img in crops:
        y, mask = make_observation(img, task)
        for lam in lams:
            out, _ = restore_augmented(model, y, mask, replace(cfg, lam=lam))
            by_lam[lam].append(float(psnr(np.clip(keep_known(out, y, mask, task.sigma), 0, 1), img)))
        for w in tv_weights:
            out = tv_denoise(y, w) if mask is None else tv_inpaint(y, mask, w)
            by_tv[w].append(float(psnr(np.clip(out, 0, 1), img)))
    return {k: float(np.mean(v)) for k, v in by_lam.items()}, {k: float(np.mean(v)) for k, v in by_tv.items()}


def tune_naive_lr(
    model: DEQDecoder,
    task: Task,
    lrs: tuple[float, ...],
    crops: Crops | None = None,
    size: int = 96,
    cfg: TaskConfig | None = None,
    lam: float | None = None,
) -> dict[float, float]:
    """Mean final objective of the naive nested baseline for each Adam learning rate in ``lrs`` on ``crops``
    (default: the first two validation crops of side ``size``), with prior weight ``lam`` (default
    ``task.lam``); lower is better, and the benchmark gives the baseline the best one."""
    crops = validation_crops(size)[:2] if crops is None else crops
    cfg = replace(cfg or TaskConfig(), lam=task.lam if lam is None else lam, sigma=task.sigma)
    out: dict[float, list[float]] = {lr: [] for lr in lrs}
    for _, img in crops:
        y, mask = make_observation(img, task)
        prob = make_problem(model, y, mask, cfg)
        for lr in lrs:
            _, res = restore_naive(model, y, mask, replace(cfg, naive=replace(cfg.naive, lr=lr)))
            out[lr].append(float(prob.objective(res.x).sum()))
    return {k: float(np.mean(v)) for k, v in out.items()}
