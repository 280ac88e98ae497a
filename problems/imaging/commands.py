"""What the ``fpntools imaging`` commands do, as library functions (the CLI module only parses arguments).

* :func:`load_frozen_decoder`: the decoder for inference (weights frozen).
* :func:`restore_file`: ``denoise`` / ``inpaint`` / ``fit`` of one image file: input and output checks before
  any computation, the augmented joint solve with progress on stderr (:class:`ProgressCounter`), a verdict on
  whether the result is usable (:func:`judge_restoration`), and the atomic write.
* :func:`run_tune` / :func:`run_bench_table`: the validation tuning and the benchmark table, line by line.

Usability of a restoration (:func:`judge_restoration`). The joint solve is a fixed-point iteration on the
stacked state ``(z, x, mu)``; it stops when its relative residual reaches ``tol`` (1e-6) or after its budget
(``settle_iters + max_iter`` iterations). Its output is the decoding ``h(z*(x_K))`` of the last latent, with an
accurate equilibrium solve, so it is a valid image whenever ``x_K`` is finite. It is *usable* when it is finite
and the latent objective ``L(x_K)`` (data fit + prior, evaluated with that accurate equilibrium) is not above
``L(x_hat) (1 + 1e-3)``, the objective of the encoder's estimate where the solve started: the optimisation has
then improved on the amortised restoration or kept it. A solve that stopped at its budget with a usable output is
reported with a warning and exit code 0 (inpainting often ends so: docs/imaging.md, "Speed, inpainting"); a
non-finite solve or one that ended above its start raises :class:`~fpntools.cli_support.NotUsableError`
(exit code 3) and nothing is written.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from fpntools.augmented import AugmentedResult, Counter
from fpntools.cli_support import NotUsableError, check_output_path, warn
from fpntools.errors import UserInputError
from fpntools.info import Status
from fpntools.metrics import psnr
from problems.imaging.model import DEQDecoder, load_decoder
from problems.imaging.tasks import (
    LAM_MIN,
    TaskConfig,
    keep_known,
    lam_for_sigma,
    make_problem,
    restore_augmented,
)

__all__ = [
    "MAX_PIXELS",
    "RISE_TOL",
    "ProgressCounter",
    "RestoreOutcome",
    "load_frozen_decoder",
    "judge_restoration",
    "restore_image",
    "restore_file",
    "run_tune",
    "run_bench_table",
]

MAX_PIXELS = 256 * 256
"""Largest accepted image (pixel count; sides up to 1024). The joint solve runs about 340 applications of the
DEQ layer, its VJP and the decoder head at full resolution, linear in the pixel count: with the commands of
docs/imaging.md ("Image size and time") a 256x256 image took 1-3 minutes on this project's shared 2-core CPU,
so 1024x1024 would take 15-50. Larger images: crop or downscale them first."""

RISE_TOL = 1e-3
"""Relative rise of the latent objective above its start beyond which a restoration is not usable."""

_SIZE_HINT = (
    "a restoration's time grows with the pixel count: 256x256 takes 1-3 minutes on a 2-core CPU, 1024x1024 "
    "would take 15-50; crop or downscale it"
)


def load_frozen_decoder(weights: str | Path | None = None) -> DEQDecoder:
    """The decoder of ``weights`` (default: the shipped ones) in eval mode with frozen parameters."""
    model = load_decoder(weights or None)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@dataclass
class ProgressCounter(Counter):
    """A :class:`fpntools.augmented.Counter` that also reports the joint solve's progress: at the first joint
    iteration and then every ``every`` seconds one line ``<label>: joint iteration k of at most N, t s`` through
    ``log`` (default: stderr)."""

    total: int = 0
    label: str = "imaging"
    every: float = 2.0
    log: Callable[[str], None] | None = None
    _last: float = field(default=0.0, repr=False)
    _iters: int = field(default=0, repr=False)

    def start(self) -> None:
        super().start()
        self._iters, self._last = 0, time.perf_counter()

    def snapshot(self, x: torch.Tensor, force: bool = False) -> None:
        super().snapshot(x, force)
        self._iters += 1
        now = time.perf_counter()
        if self._iters == 1 or now - self._last >= self.every:
            self._last = now
            of = f" of at most {self.total}" if self.total else ""
            line = f"{self.label}: joint iteration {self._iters}{of}, {self.elapsed:.0f} s"
            if self.log is not None:
                self.log(line)
            else:
                print(line, file=sys.stderr, flush=True)


@dataclass
class RestoreOutcome:
    """A restoration and its verdict: the ``image``, the joint solve's ``result``, the latent objective at the
    start (the encoder's estimate) and at the end (accurate equilibria), ``usable`` and a one-line ``message``."""

    image: np.ndarray
    result: AugmentedResult
    start_objective: float
    final_objective: float
    usable: bool
    message: str


def judge_restoration(image: np.ndarray, res: AugmentedResult, start: float, final: float) -> tuple[bool, str]:
    """``(usable, message)`` for a joint solve's output (see the module docstring for the rule)."""
    status = res.info.status
    done = {Status.CONVERGED: "converged", Status.MAX_ITER: "stopped at its iteration budget",
            Status.DIVERGED: "diverged", Status.NONFINITE: "went non-finite"}[status]
    iters = sum(int(i.steps.max()) for i in res.infos)
    what = (f"joint solve {done} after {iters} iterations "
            f"(relative residual {float(res.info.residual.max()):.2e}, tol {res.info.tol:.0e})")
    if status == Status.NONFINITE or not np.isfinite(image).all() or not math.isfinite(final):
        return False, f"{what}: the result is not finite"
    if final > start * (1 + RISE_TOL):
        return False, (f"{what}: the latent objective rose from {start:.6g} (encoder's estimate) to {final:.6g}; "
                       "the output would be worse than the starting point")
    if status == Status.CONVERGED:
        verdict = "converged"
    elif final < start:
        verdict = "stopped early but improved on its start"
    else:
        verdict = "the solve did not improve on its start: the output is the encoder's restoration"
    return True, f"{what}, objective {start:.6g} -> {final:.6g}: output usable ({verdict})"


def restore_image(model: DEQDecoder, y: np.ndarray, mask: np.ndarray | None, cfg: TaskConfig,
                  progress: ProgressCounter | None = None) -> RestoreOutcome:
    """Restore ``y`` by the augmented joint solve (:func:`problems.imaging.tasks.restore_augmented`) and judge
    the output (:func:`judge_restoration`); noiseless inpainting keeps the known pixels."""
    prob = make_problem(model, y, mask, cfg)
    start = float(prob.objective(prob.x0()).sum())
    if progress is not None:
        progress.start()
    img, res = restore_augmented(model, y, mask, cfg, counter=progress)
    final = float(prob.objective(res.x).sum())
    img = keep_known(img, y, mask, cfg.sigma)
    usable, message = judge_restoration(img, res, start, final)
    return RestoreOutcome(img, res, start, final, usable, message)


def restore_file(kind: str, image: str | Path, out: str | Path, *, sigma: float = 0.0, mask: str | Path | None = None,
                 weights: str | None = None, max_iter: int = 0, threads: int = 0,
                 log: Callable[[str], None] | None = None) -> str:
    """``denoise`` / ``inpaint`` / ``fit`` the image file ``image`` into the PNG ``out``; returns the final
    message (progress and warnings go to stderr).

    Every input (options, image, mask, output path, weights) is checked before the solve: bad input is a
    one-line :class:`UserInputError`. A result that is not usable raises :class:`NotUsableError` and writes
    nothing; a usable one that stopped at its budget gives a warning.
    """
    from problems.imaging.data import read_image, read_mask, write_image

    if kind not in ("denoise", "inpaint", "fit"):
        raise ValueError(f"kind must be denoise, inpaint or fit, got {kind!r}")
    if kind == "denoise" and not 0 < sigma <= 1:
        raise UserInputError(f"--sigma must lie in (0, 1], got {sigma}")
    if kind == "inpaint" and not 0 <= sigma <= 1:
        raise UserInputError(f"--sigma must lie in [0, 1], got {sigma}")
    if max_iter < 0:
        raise UserInputError(f"--max-iter must be nonnegative (0: default), got {max_iter}")
    out = check_output_path(out, (".png",))
    y = read_image(image, max_pixels=MAX_PIXELS, size_hint=_SIZE_HINT)
    known = read_mask(mask, y.shape) if kind == "inpaint" else None
    model = load_frozen_decoder(weights)
    if threads > 0:
        torch.set_num_threads(threads)
    cfg = TaskConfig(lam=LAM_MIN, sigma=0.0) if kind == "fit" else TaskConfig(lam=lam_for_sigma(sigma), sigma=sigma)
    if max_iter > 0:
        cfg = replace(cfg, augmented=replace(cfg.augmented, max_iter=max_iter))
    h, w = y.shape
    total = cfg.augmented.settle_iters + cfg.augmented.max_iter
    progress = ProgressCounter(total=total, label=f"{kind} {h}x{w}", log=log)
    obs = np.where(known, y, 0.0) if known is not None else y
    outcome = restore_image(model, obs, known, cfg, progress)
    seconds = outcome.result.wall_time
    if not outcome.usable:
        raise NotUsableError(f"{outcome.message}; {out} not written")
    if outcome.result.info.status != Status.CONVERGED:
        warn(outcome.message)
    write_image(out, outcome.image)
    fit = f", PSNR of the fit {float(psnr(np.clip(outcome.image, 0, 1), y)):.2f} dB" if kind == "fit" else ""
    return f"wrote {out}{fit} ({outcome.message}; {seconds:.1f} s)"


def _numbers(text: str, option: str) -> tuple[float, ...]:
    try:
        vals = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UserInputError(f"{option} must be comma-separated numbers, got {text!r}") from None
    if not vals or not all(math.isfinite(v) and v >= 0 for v in vals):
        raise UserInputError(f"{option} must be nonnegative finite numbers, got {text!r}")
    return vals


def run_tune(size: int, lams: str, tv_weights: str, naive_lrs: str, emit: Callable[[str], None],
             weights: str | None = None, threads: int = 1) -> None:
    """``fpntools imaging tune``: per benchmark task, the mean PSNR on the validation crops of every prior weight
    and TV weight tried, and the naive baseline's final objective per Adam learning rate, one line at a time
    through ``emit``."""
    from problems.imaging.bench import TASKS, tune_naive_lr, tune_task
    from problems.imaging.data import validation_crops

    if size % 4 or not 16 <= size <= 256:
        raise UserInputError(f"--size must be a multiple of 4 between 16 and 256, got {size}")
    lam_grid, tv_grid = _numbers(lams, "--lams"), _numbers(tv_weights, "--tv-weights")
    lr_grid = _numbers(naive_lrs, "--naive-lrs")
    torch.set_num_threads(max(1, threads))
    model = load_frozen_decoder(weights)
    crops = validation_crops(size)
    emit(f"validation crops {size}x{size}: {', '.join(name for name, _ in crops)}")
    for task in TASKS:
        by_lam, by_tv = tune_task(model, task, lam_grid, tv_grid, crops)
        best_lam, best_tv = max(by_lam, key=by_lam.get), max(by_tv, key=by_tv.get)
        emit(f"{task.name}: lam " + ", ".join(f"{k:g}: {v:.2f}" for k, v in by_lam.items()) + f" -> {best_lam:g}")
        emit(f"{task.name}: TV  " + ", ".join(f"{k:g}: {v:.2f}" for k, v in by_tv.items()) + f" -> {best_tv:g}")
        by_lr = tune_naive_lr(model, task, lr_grid, crops[:2], lam=best_lam)
        best_lr = min(by_lr, key=by_lr.get)
        emit(f"{task.name}: naive Adam lr (final objective) "
             + ", ".join(f"{k:g}: {v:.3f}" for k, v in by_lr.items()) + f" -> {best_lr:g}")


def run_bench_table(size: int, images: str, repeats: int, tasks: str, emit: Callable[[str], None],
                    weights: str | None = None, threads: int = 1) -> None:
    """``fpntools imaging bench``: the command line, the table header and one row per image and task
    (:func:`problems.imaging.bench.run_bench`), one line at a time through ``emit``."""
    from problems.imaging.bench import HEADER, TASKS, format_row, run_bench
    from problems.imaging.data import TEST_IMAGES, TRAIN_IMAGES, load_image

    names = tuple(n.strip() for n in images.split(",") if n.strip())
    leaked = [n for n in names if n in TRAIN_IMAGES]
    if leaked:
        raise UserInputError(f"{', '.join(leaked)} are training images; held-out ones are {', '.join(TEST_IMAGES)}")
    if not names:
        raise UserInputError("--images must name at least one held-out picture")
    if size % 4 or size < 16:
        raise UserInputError(f"--size must be a multiple of 4 and at least 16, got {size}")
    for n in names:
        side = min(load_image(n).shape)
        if size > side:
            raise UserInputError(f"--size {size} is larger than {n} ({side} pixels on its short side)")
    if repeats < 1:
        raise UserInputError(f"--repeats must be at least 1, got {repeats}")
    keys = {"denoise0.2": TASKS[0], "denoise0.4": TASKS[1], "inpaint": TASKS[2]}
    chosen = TASKS if tasks == "all" else tuple(keys[t] for t in tasks.split(",") if t in keys)
    if not chosen:
        raise UserInputError(f"--tasks must be 'all' or names from {sorted(keys)}")
    torch.set_num_threads(max(1, threads))
    model = load_frozen_decoder(weights)
    emit(f"fpntools imaging bench --size {size} --images {images} --repeats {repeats} --threads {threads}")
    for line in HEADER:
        emit(line)
    run_bench(model, names, size, chosen, repeats=repeats, progress=lambda row: emit(format_row(row)))
