r"""The standard benchmark on natural images: ``fpntools imaging bench --dataset set12|bsd68``.

Denoising (additive white Gaussian noise, ``sigma`` on the 0-255 scale, one noise draw per image and level,
seeded by the image index and the level), per method the mean PSNR / SSIM over the images and the mean seconds
per image (also normalised to a 256x256 image by the pixel count):

* **augmented DEQ**: what ``fpntools imaging denoise`` runs (:func:`problems.imaging.restore.restore_array`: the
  encoder's estimate refined by the fast joint fixed point, tiles of at most 256 pixels);
* **encoder alone**: the amortised restoration ``h(z*(E(y)))`` (the starting point, no joint iterations);
* **TV (tuned)**: Chambolle TV with the weight that maximises the mean PSNR on validation images (the last
  images of ``train400``, never the test sets), one weight per noise level; **TV (oracle)**: the best weight of
  the same grid per test image (an upper bound for TV);
* **BM3D**: the ``bm3d`` package (``bm3d.bm3d(y, sigma)``, its default profile), run in the same process;
* the **published** BM3D and DnCNN-S figures of the data set's SOURCE.md beside them.

Seconds are CPU seconds of the process around each method's call (``time.process_time``; with one thread the
time on an idle core, robust to other jobs on a shared machine, which wall time is not; TV oracle: per weight).

Speed of the joint solve against the naive nested optimisation (:func:`problems.imaging.bench.run_task`): on the
central ``naive_crop`` x ``naive_crop`` crop of each image (the naive method pays a full forward and adjoint
equilibrium solve per outer step, minutes on a whole image on this CPU), the time each method needs to reach the
naive method's final objective (both with the accurate settings of that benchmark).

Inpainting (noiseless; 8x8 blocks missing at random, 25% / 50%, or single pixels, 50% / 80% missing): augmented
DEQ and encoder alone (``fpntools imaging inpaint``'s path) against ``skimage.restoration.inpaint_biharmonic``
and TV inpainting (:func:`problems.imaging.tasks.tv_inpaint`, weight chosen on validation images).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

from fpntools.errors import UserInputError
from fpntools.metrics import psnr, ssim
from problems.imaging.data import VALIDATION_COUNT, center_crop, load_natural_set
from problems.imaging.model import DEQDecoder
from problems.imaging.restore import RestoreSettings, restore_array
from problems.imaging.tasks import block_mask, tv_denoise, tv_inpaint

__all__ = [
    "DATASETS",
    "PUBLISHED",
    "MASKS",
    "TV_GRID",
    "TV_INPAINT_GRID",
    "MethodScore",
    "noisy_observation",
    "pixel_mask",
    "inpaint_mask",
    "tune_tv_weight",
    "tune_tv_inpaint_weight",
    "run_natural_bench",
]

DATASETS = {"set12": "Set12", "bsd68": "BSD68"}
PUBLISHED: dict[tuple[str, int], dict[str, float]] = {
    ("set12", 15): {"BM3D": 32.37, "DnCNN-S": 32.86}, ("set12", 25): {"BM3D": 29.97, "DnCNN-S": 30.44},
    ("set12", 50): {"BM3D": 26.72, "DnCNN-S": 27.18}, ("bsd68", 15): {"BM3D": 31.07, "DnCNN-S": 31.73},
    ("bsd68", 25): {"BM3D": 28.57, "DnCNN-S": 29.23}, ("bsd68", 50): {"BM3D": 25.62, "DnCNN-S": 26.23},
}
"""Published PSNR (dB) of BM3D and DnCNN-S on the full sets (``natural-images/SOURCE.md``)."""
MASKS: tuple[tuple[str, str, float], ...] = (
    ("blocks 25%", "blocks", 0.25), ("blocks 50%", "blocks", 0.5),
    ("pixels 50%", "pixels", 0.5), ("pixels 80%", "pixels", 0.8),
)
TV_GRID: tuple[float, ...] = (0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.1, 0.12, 0.15, 0.2, 0.25, 0.3)
TV_INPAINT_GRID: tuple[float, ...] = (0.05, 0.8)


@dataclass
class MethodScore:
    """Per-image PSNR, SSIM, seconds and pixel counts of one method on one row."""

    psnr: list[float] = field(default_factory=list)
    ssim: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    pixels: list[int] = field(default_factory=list)

    def add(self, out: np.ndarray, ref: np.ndarray, seconds: float) -> None:
        out = np.clip(out, 0.0, 1.0)
        self.psnr.append(float(psnr(out, ref)))
        self.ssim.append(float(ssim(out, ref)))
        self.seconds.append(float(seconds))
        self.pixels.append(int(ref.size))

    def row(self) -> str:
        per256 = np.mean([s * 65536 / p for s, p in zip(self.seconds, self.pixels)])
        return f"{np.mean(self.psnr):.2f} | {np.mean(self.ssim):.4f} | {np.mean(self.seconds):.2f} | {per256:.2f}"


def noisy_observation(img: np.ndarray, sigma255: float, index: int) -> np.ndarray:
    """``img + sigma N(0, 1)`` with ``sigma = sigma255 / 255``, the noise seeded by (image index, level)."""
    rng = np.random.default_rng([index, int(round(sigma255 * 100))])
    return img + sigma255 / 255 * rng.standard_normal(img.shape)


def pixel_mask(shape: tuple[int, int], fraction: float, seed: int) -> np.ndarray:
    """Known-pixel mask with a random ``fraction`` of the pixels missing (False)."""
    return np.random.default_rng(seed).random(shape) >= fraction


def inpaint_mask(shape: tuple[int, int], kind: str, fraction: float, index: int) -> np.ndarray:
    """The benchmark's mask of image ``index``: ``"blocks"`` (8x8 cells) or ``"pixels"``, ``fraction`` missing."""
    seed = int(index * 1000 + fraction * 100)
    return block_mask(shape, 8, fraction, seed) if kind == "blocks" else pixel_mask(shape, fraction, seed)


def _timed(fn: Callable[[], np.ndarray]) -> tuple[np.ndarray, float]:
    """``(fn(), CPU seconds of this process)``: with one thread the time the call takes on an idle core, robust to
    other jobs on a shared machine (wall time is not)."""
    t0 = time.process_time()
    out = fn()
    return out, time.process_time() - t0


def tune_tv_weight(images: list[np.ndarray], sigma255: float, grid: tuple[float, ...] = TV_GRID) -> float:
    """The TV weight of ``grid`` with the best mean PSNR on ``images`` (validation images) at level ``sigma255``."""
    scores = {w: np.mean([float(psnr(tv_denoise(noisy_observation(im, sigma255, 10_000 + i), w), im))
                          for i, im in enumerate(images)]) for w in grid}
    return max(scores, key=scores.get)


def tune_tv_inpaint_weight(images: list[np.ndarray], kind: str, fraction: float,
                           grid: tuple[float, ...] = TV_INPAINT_GRID) -> float:
    """The TV-inpainting weight of ``grid`` with the best mean PSNR on ``images`` (validation images)."""
    def score(w: float) -> float:
        vals = []
        for i, im in enumerate(images):
            m = inpaint_mask(im.shape, kind, fraction, 10_000 + i)
            vals.append(float(psnr(tv_inpaint(np.where(m, im, 0.0), m, w), im)))
        return float(np.mean(vals))

    scores = {w: score(w) for w in grid}
    return max(scores, key=scores.get)


def run_natural_bench(model: DEQDecoder, dataset: str, sigmas: tuple[float, ...], emit: Callable[[str], None],
                      *, limit: int = 0, masks: bool = True, naive_crop: int = 96, tv_val: int = 8,
                      root: str | None = None, log: Callable[[str], None] | None = None,
                      settings: RestoreSettings = RestoreSettings()) -> dict:
    """Run the benchmark (module docstring) on the first ``limit`` images of ``dataset`` (0: all) and emit the
    tables (markdown) line by line; returns the raw scores. ``tv_val``: validation images (the last ones of
    train400) that choose the TV weights; ``naive_crop`` 0 skips the naive comparison; ``log`` gets progress."""
    import bm3d
    from skimage.restoration import inpaint_biharmonic

    from problems.imaging.bench import Task, run_task
    from problems.imaging.tasks import TaskConfig

    key = dataset.lower()
    if key not in DATASETS:
        raise UserInputError(f"--dataset must be one of {', '.join(DATASETS)}, got {dataset!r}")
    images = load_natural_set(DATASETS[key], root, limit or None)
    val = [im for _, im in load_natural_set("train400", root)[-VALIDATION_COUNT:]][:tv_val]
    say = log or (lambda s: None)
    denoise: dict[float, dict[str, MethodScore]] = {}
    speed: dict[float, list] = {}
    for s in sigmas:
        w_tv = tune_tv_weight(val, s)
        say(f"sigma {s:g}: TV weight {w_tv:g} (validation)")
        rows = denoise[s] = {k: MethodScore() for k in ("augmented DEQ", "encoder alone", f"TV (tuned, {w_tv:g})",
                                                        "TV (oracle)", "BM3D (bm3d package)")}
        speed[s] = []
        for i, (name, img) in enumerate(images):
            y = noisy_observation(img, s, i)
            sig = s / 255
            out, t = _timed(lambda: restore_array(model, y, None, sig, None, settings).image)
            rows["augmented DEQ"].add(out, img, t)
            out, t = _timed(lambda: restore_array(model, y, None, sig, None,
                                                  replace(settings, max_iter=0)).image)
            rows["encoder alone"].add(out, img, t)
            out, t = _timed(lambda: tv_denoise(y, w_tv))
            rows[f"TV (tuned, {w_tv:g})"].add(out, img, t)
            t0 = time.process_time()
            best = max((tv_denoise(y, w) for w in TV_GRID), key=lambda o: float(psnr(np.clip(o, 0, 1), img)))
            rows["TV (oracle)"].add(best, img, (time.process_time() - t0) / len(TV_GRID))
            out, t = _timed(lambda: np.asarray(bm3d.bm3d(y, sig)))
            rows["BM3D (bm3d package)"].add(out, img, t)
            if naive_crop:
                crop = center_crop(img, min(naive_crop, *img.shape) // 4 * 4)
                task = Task(f"denoise s={s:g}", "denoise", sig, lam=settings.lam(sig), tv_weight=w_tv, naive_lr=0.01)
                speed[s].append(run_task(model, crop, name, task, TaskConfig(), repeats=1))
            say(f"sigma {s:g}: {name} done ({i + 1}/{len(images)})")
    inpaint: dict[str, dict[str, MethodScore]] = {}
    if masks:
        for label, kind, frac in MASKS:
            w_tv = tune_tv_inpaint_weight(val[:2], kind, frac)
            rows = inpaint[label] = {k: MethodScore() for k in ("augmented DEQ", "encoder alone", "biharmonic",
                                                                f"TV inpainting ({w_tv:g})")}
            for i, (name, img) in enumerate(images):
                m = inpaint_mask(img.shape, kind, frac, i)
                y = np.where(m, img, 0.0)
                out, t = _timed(lambda: restore_array(model, y, m, 0.0, None, settings).image)
                rows["augmented DEQ"].add(out, img, t)
                out, t = _timed(lambda: restore_array(model, y, m, 0.0, None,
                                                      replace(settings, max_iter=0)).image)
                rows["encoder alone"].add(out, img, t)
                out, t = _timed(lambda: inpaint_biharmonic(y, ~m))
                rows["biharmonic"].add(out, img, t)
                out, t = _timed(lambda: tv_inpaint(y, m, w_tv))
                rows[f"TV inpainting ({w_tv:g})"].add(out, img, t)
                say(f"{label}: {name} done ({i + 1}/{len(images)})")
    n = len(images)
    emit(f"{DATASETS[key]}: {n} image(s){' (first ' + str(limit) + ')' if limit else ''}; mean PSNR (dB) / SSIM; "
         "CPU seconds of this process per image and per 256x256 (by pixel count; TV oracle: per weight tried)")
    emit("")
    emit("| sigma | method | PSNR | SSIM | s / image | s / 256x256 |")
    emit("|---|---|---|---|---|---|")
    for s, rows in denoise.items():
        for k, v in rows.items():
            emit(f"| {s:g} | {k} | {v.row()} |")
        for k, v in PUBLISHED.get((key, int(round(s))), {}).items():
            emit(f"| {s:g} | {k} (published, all of {DATASETS[key]}) | {v:.2f} | - | - | - |")
    if naive_crop:
        emit("")
        emit(f"Joint solve vs naive nested optimisation, central {naive_crop}x{naive_crop} crops (time to the naive "
             "method's final objective; medians over the images):")
        emit("")
        emit("| sigma | naive s | augmented s | speedup | reached |")
        emit("|---|---|---|---|---|")
        for s, res in speed.items():
            reached = [r for r in res if r.aug_time is not None]
            sp = [r.speedup for r in reached]
            aug = f"{np.median([r.aug_time for r in reached]):.2f}" if reached else "-"
            emit(f"| {s:g} | {np.median([r.naive_time for r in res]):.2f} | {aug} | "
                 f"{(f'{np.median(sp):.1f}x') if sp else '-'} | {len(reached)} of {len(res)} |")
    if masks:
        emit("")
        emit("| mask (missing) | method | PSNR | SSIM | s / image | s / 256x256 |")
        emit("|---|---|---|---|---|---|")
        for label, rows in inpaint.items():
            for k, v in rows.items():
                emit(f"| {label} | {k} | {v.row()} |")
    return {"denoise": denoise, "speed": speed, "inpaint": inpaint}
