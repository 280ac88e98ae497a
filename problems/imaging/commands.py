"""What the ``fpntools imaging`` commands do, as library functions (the CLI module only parses arguments).

* :func:`load_frozen_decoder`: the decoder for inference (weights frozen).
* :func:`restore_file`: ``denoise`` / ``inpaint`` / ``fit`` of one image file (grayscale, gray + alpha, RGB or
  RGBA, any size from 16 pixels a side up to :data:`MAX_PIXELS`): input and output checks before any
  computation, the restoration by :func:`problems.imaging.restore.restore_array` (colour planes, overlapping
  tiles in memory-bounded batches, the fast joint solve) with progress on stderr (:class:`ProgressCounter`), a
  verdict (:func:`verdict`), and the atomic write.
* :func:`run_tune` / :func:`run_bench_table`: the validation tuning and the benchmark table, line by line.

Usability (:func:`verdict`). Every tile's joint solve (a fixed number of iterations) starts at the encoder's
estimate and its latent objective (data fit + prior) is evaluated at both ends; a tile whose objective rose or
went non-finite keeps the encoder's restoration (:mod:`problems.imaging.restore`), so the output is never worse
than the amortised restoration in the objective. The output is *not usable* only when it is not finite (the
decoder itself overflowed): :class:`NotUsableError`, exit code 3, nothing written. Tiles that kept their start
are named in a warning (exit code 0).
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

from fpntools.augmented import Counter
from fpntools.cli_support import NotUsableError, check_output_path, warn
from fpntools.errors import UserInputError
from fpntools.metrics import psnr
from problems.imaging.model import SCIKIT_WEIGHTS, DEQDecoder, load_decoder
from problems.imaging.restore import COLOUR_MODES, RestoredImage, RestoreSettings, restore_array
from problems.imaging.tasks import LAM_MIN

__all__ = [
    "MAX_PIXELS",
    "ProgressCounter",
    "load_frozen_decoder",
    "verdict",
    "restore_file",
    "run_tune",
    "run_bench_table",
    "run_dataset_bench",
]

MAX_PIXELS = 4096 * 4096
"""Largest accepted image (pixel count, per channel; sides up to 8192). Memory is bounded by the tile batches
whatever the size; the time grows linearly with the pixel count (docs/imaging.md, "Speed": a few seconds per
256x256 plane on one core), so this is about 20 minutes per plane."""

_SIZE_HINT = "the time grows with the pixel count, about 20 minutes per 4096x4096 plane on one core; crop or downscale it"


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
    ``log`` (default: stderr); ``since`` (a ``perf_counter`` time) makes ``t`` the time of the whole command."""

    total: int = 0
    label: str = "imaging"
    every: float = 2.0
    log: Callable[[str], None] | None = None
    since: float | None = None
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
            t = self.elapsed if self.since is None else now - self.since
            line = f"{self.label}: joint iteration {self._iters}{of}, {t:.0f} s"
            if self.log is not None:
                self.log(line)
            else:
                print(line, file=sys.stderr, flush=True)


def verdict(out: RestoredImage) -> tuple[bool, str]:
    """``(usable, message)`` of a restoration (module docstring): usable when finite; the message names the
    tiles, the joint iterations and residual, the objective and the tiles that kept the encoder's restoration."""
    if not out.finite:
        return False, f"{out.summary()}: the result is not finite"
    return True, f"{out.summary()}: output usable"


def restore_file(kind: str, image: str | Path, out: str | Path, *, sigma: float = 0.0, mask: str | Path | None = None,
                 weights: str | None = None, max_iter: int = 0, threads: int = 0, tile: int = 0,
                 colour: str = "opponent", log: Callable[[str], None] | None = None) -> str:
    """``denoise`` / ``inpaint`` / ``fit`` the image file ``image`` into the PNG ``out``; returns the final
    message (progress and warnings go to stderr).

    Every input (options, image, mask, output path, weights) is checked before the solve: bad input is a
    one-line :class:`UserInputError`. A result that is not usable raises :class:`NotUsableError` and writes
    nothing; a usable one whose joint solves stopped at their budget gives a warning.
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
    if tile and (tile % 4 or not 32 <= tile <= 1024):
        raise UserInputError(f"--tile must be a multiple of 4 from 32 to 1024 (0: default), got {tile}")
    if colour not in COLOUR_MODES:
        raise UserInputError(f"--colour must be one of {', '.join(COLOUR_MODES)}, got {colour!r}")
    out = check_output_path(out, (".png",))
    y = read_image(image, multiple=1, max_size=8192, max_pixels=MAX_PIXELS, size_hint=_SIZE_HINT, colour=True)
    known = read_mask(mask, y.shape[:2]) if kind == "inpaint" else None
    model = load_frozen_decoder(weights)
    if threads > 0:
        torch.set_num_threads(threads)
    settings = RestoreSettings(colour=colour)
    if tile:
        settings = replace(settings, tile=tile, overlap=min(settings.overlap, tile // 4 // 4 * 4))
    if max_iter > 0:
        settings = replace(settings, max_iter=max_iter)
    lam_for = (lambda s: LAM_MIN) if kind == "fit" else settings.lam
    h, w = y.shape[:2]
    total_iters = settings.settle_iters + settings.max_iter
    t0 = time.perf_counter()

    def progress(first: int, total: int) -> ProgressCounter:
        where = f" [tiles from {first + 1} of {total}]" if total > 1 else ""
        return ProgressCounter(total=total_iters, label=f"{kind} {h}x{w}{where}", log=log, since=t0)

    outcome = restore_array(model, y, known, 0.0 if kind == "fit" else sigma, lam_for, settings, progress)
    usable, message = verdict(outcome)
    if not usable:
        raise NotUsableError(f"{message}; {out} not written")
    if outcome.kept_start:
        warn(f"the joint solve did not lower the objective in {outcome.kept_start} of {outcome.tiles} tile(s); "
             "they keep the encoder's restoration")
    write_image(out, outcome.image)
    fit = f", PSNR of the fit {float(psnr(np.clip(outcome.image, 0, 1), y)):.2f} dB" if kind == "fit" else ""
    return f"wrote {out}{fit} ({message}; {outcome.seconds:.1f} s)"


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
    model = load_frozen_decoder(weights or SCIKIT_WEIGHTS)
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
    model = load_frozen_decoder(weights or SCIKIT_WEIGHTS)
    emit(f"fpntools imaging bench --size {size} --images {images} --repeats {repeats} --threads {threads}")
    for line in HEADER:
        emit(line)
    run_bench(model, names, size, chosen, repeats=repeats, progress=lambda row: emit(format_row(row)))


def run_dataset_bench(dataset: str, sigmas: str, limit: int, masks: bool, naive_crop: int, emit: Callable[[str], None],
                      weights: str | None = None, threads: int = 1, data_root: str | None = None) -> None:
    """``fpntools imaging bench --dataset set12|bsd68``: options checked, then
    :func:`problems.imaging.natural.run_natural_bench` (tables through ``emit``, progress on stderr)."""
    from problems.imaging.natural import DATASETS, run_natural_bench

    if dataset.lower() not in DATASETS:
        raise UserInputError(f"--dataset must be one of {', '.join(DATASETS)}, got {dataset!r}")
    levels = _numbers(sigmas, "--sigma")
    if not all(0 < s <= 100 for s in levels):
        raise UserInputError(f"--sigma must be noise levels in (0, 100] on the 0-255 scale, got {sigmas!r}")
    if limit < 0:
        raise UserInputError(f"--limit must be nonnegative (0: all images), got {limit}")
    if naive_crop and (naive_crop % 4 or not 32 <= naive_crop <= 256):
        raise UserInputError(f"--naive-crop must be 0 or a multiple of 4 from 32 to 256, got {naive_crop}")
    torch.set_num_threads(max(1, threads))
    model = load_frozen_decoder(weights)
    emit(f"fpntools imaging bench --dataset {dataset} --sigma {sigmas} --limit {limit} --naive-crop {naive_crop}"
         f"{'' if masks else ' --no-masks'} --threads {threads}")
    run_natural_bench(model, dataset, levels, emit, limit=limit, masks=masks, naive_crop=naive_crop, root=data_root,
                      log=lambda line: print(line, file=sys.stderr, flush=True))
