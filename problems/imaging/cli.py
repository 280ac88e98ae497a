"""``fpntools imaging``: denoise / inpaint grayscale images with the shipped DEQ decoder, and the benchmark.

Every restoration optimises the decoder's latent input by the augmented joint fixed point. Bad input files
give a one-line ``error: ...`` and exit code 2; the output file is written atomically at the very end, so a
failure never leaves a partial file.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Callable

import typer

from fpntools.errors import UserInputError

app = typer.Typer(
    help="Augmented DEQ imaging: denoising and inpainting by joint inference and input optimisation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _run(fn: Callable[[], None]) -> None:
    try:
        fn()
    except UserInputError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def _check_out(out: Path) -> None:
    if out.suffix.lower() != ".png":
        raise UserInputError(f"output {out} must end in .png")
    if not out.parent.exists():
        raise UserInputError(f"output directory {out.parent} does not exist")


def _load(weights: str | None):
    import torch

    from problems.imaging.model import load_decoder

    model = load_decoder(weights or None)
    for p in model.parameters():
        p.requires_grad_(False)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    return model


@app.command()
def denoise(
    image: Path = typer.Argument(..., help="grayscale image (PNG/TIFF, sides multiples of 4, 16..1024 px)"),
    sigma: float = typer.Option(0.2, help="noise standard deviation (pixel range [0, 1])"),
    out: Path = typer.Option(..., help="output PNG"),
    weights: str = typer.Option("", help="decoder weights (default: the shipped data/imaging weights)"),
    max_iter: int = typer.Option(0, help="joint fixed-point iterations (0: default)"),
) -> None:
    """Denoise IMAGE by optimising the decoder latent (augmented DEQ) under a Gaussian noise model."""

    def go() -> None:
        from problems.imaging.data import read_image, write_image
        from problems.imaging.tasks import TaskConfig, lam_for_sigma, restore_augmented

        if not 0 < sigma <= 1:
            raise UserInputError(f"--sigma must lie in (0, 1], got {sigma}")
        _check_out(out)
        y = read_image(image)
        model = _load(weights)
        cfg = TaskConfig(lam=lam_for_sigma(sigma), sigma=sigma)
        if max_iter > 0:
            cfg = replace(cfg, augmented=replace(cfg.augmented, max_iter=max_iter))
        img, res = restore_augmented(model, y, None, cfg)
        write_image(out, img)
        typer.echo(f"wrote {out} ({res.info.summary()}, {res.wall_time:.1f}s)")

    _run(go)


@app.command()
def inpaint(
    image: Path = typer.Argument(..., help="grayscale image (missing pixels may hold any value)"),
    mask: Path = typer.Option(..., help="mask PNG of the same size: white (nonzero) = known pixel, black = missing"),
    out: Path = typer.Option(..., help="output PNG"),
    sigma: float = typer.Option(0.0, help="noise level of the known pixels (0: noiseless)"),
    weights: str = typer.Option("", help="decoder weights (default: the shipped weights)"),
    max_iter: int = typer.Option(0, help="joint fixed-point iterations (0: default)"),
) -> None:
    """Fill the missing pixels of IMAGE (given by MASK) with the decoder fitted to the known pixels."""

    def go() -> None:
        import numpy as np

        from problems.imaging.data import read_image, read_mask, write_image
        from problems.imaging.tasks import TaskConfig, keep_known, lam_for_sigma, restore_augmented

        if not 0 <= sigma <= 1:
            raise UserInputError(f"--sigma must lie in [0, 1], got {sigma}")
        _check_out(out)
        y = read_image(image)
        known = read_mask(mask, y.shape)
        model = _load(weights)
        cfg = TaskConfig(lam=lam_for_sigma(sigma), sigma=sigma)
        if max_iter > 0:
            cfg = replace(cfg, augmented=replace(cfg.augmented, max_iter=max_iter))
        img, res = restore_augmented(model, np.where(known, y, 0.0), known, cfg)
        write_image(out, keep_known(img, y, known, sigma))
        typer.echo(f"wrote {out} ({res.info.summary()}, {res.wall_time:.1f}s)")

    _run(go)


@app.command()
def fit(
    image: Path = typer.Argument(..., help="grayscale image to represent with the decoder"),
    out: Path = typer.Option(..., help="output PNG (the decoded fit)"),
    weights: str = typer.Option("", help="decoder weights (default: the shipped weights)"),
    max_iter: int = typer.Option(0, help="joint fixed-point iterations (0: default)"),
) -> None:
    """Latent fitting: find the latent whose decoding matches IMAGE (prints the PSNR of the fit)."""

    def go() -> None:
        from problems.imaging.data import psnr, read_image, write_image
        from problems.imaging.tasks import LAM_MIN, TaskConfig, restore_augmented

        _check_out(out)
        y = read_image(image)
        model = _load(weights)
        cfg = TaskConfig(lam=LAM_MIN)
        if max_iter > 0:
            cfg = replace(cfg, augmented=replace(cfg.augmented, max_iter=max_iter))
        img, res = restore_augmented(model, y, None, cfg)
        write_image(out, img)
        typer.echo(f"wrote {out}: PSNR of the fit {psnr(img, y):.2f} dB ({res.info.summary()}, {res.wall_time:.1f}s)")

    _run(go)


@app.command()
def adversarial(
    epochs: int = typer.Option(15, help="training epochs of each classifier"),
    eps: float = typer.Option(1.0, help="L2 radius of the attack (pixels in [0, 1])"),
) -> None:
    """Digits demo: L2 attack by the augmented joint fixed point vs PGD, and adversarial training with it."""
    import torch

    from problems.imaging.adversarial import AdvConfig, format_demo, run_demo

    torch.set_num_threads(1)
    cfg = AdvConfig(epochs=epochs, eps=eps)
    typer.echo(format_demo(run_demo(cfg), cfg))


@app.command()
def tune(
    size: int = typer.Option(96, help="side of the validation crops"),
    lams: str = typer.Option("0.03,0.1,0.3,1,3,10,30,100,300", help="comma-separated prior weights to try"),
    tv_weights: str = typer.Option("0.02,0.05,0.1,0.15,0.2,0.3,0.4,0.6,0.8,1", help="comma-separated TV weights to try"),
    naive_lrs: str = typer.Option("0.01,0.02,0.05,0.1", help="Adam learning rates of the naive baseline to try"),
    weights: str = typer.Option("", help="decoder weights"),
    threads: int = typer.Option(1, help="torch threads"),
) -> None:
    """Choose the latent prior weight, the TV baseline's weight and the naive baseline's Adam learning rate per
    benchmark task on validation crops, images used neither in training nor by the benchmark (prints the mean
    PSNR, or final objective, of every value tried)."""

    def go() -> None:
        import torch

        from problems.imaging.bench import TASKS, tune_naive_lr, tune_task
        from problems.imaging.data import validation_crops

        torch.set_num_threads(threads)
        try:
            lam_grid = tuple(float(v) for v in lams.split(","))
            tv_grid = tuple(float(v) for v in tv_weights.split(","))
            lr_grid = tuple(float(v) for v in naive_lrs.split(","))
        except ValueError:
            raise UserInputError("--lams, --tv-weights and --naive-lrs must be comma-separated numbers") from None
        model = _load(weights)
        crops = validation_crops(size)
        typer.echo(f"validation crops {size}x{size}: {', '.join(name for name, _ in crops)}")
        for task in TASKS:
            by_lam, by_tv = tune_task(model, task, lam_grid, tv_grid, crops)
            best_lam, best_tv = max(by_lam, key=by_lam.get), max(by_tv, key=by_tv.get)
            typer.echo(f"{task.name}: lam " + ", ".join(f"{k:g}: {v:.2f}" for k, v in by_lam.items()) + f" -> {best_lam:g}")
            typer.echo(f"{task.name}: TV  " + ", ".join(f"{k:g}: {v:.2f}" for k, v in by_tv.items()) + f" -> {best_tv:g}")
            by_lr = tune_naive_lr(model, task, lr_grid, crops[:2], lam=best_lam)
            best_lr = min(by_lr, key=by_lr.get)
            typer.echo(
                f"{task.name}: naive Adam lr (final objective) "
                + ", ".join(f"{k:g}: {v:.3f}" for k, v in by_lr.items()) + f" -> {best_lr:g}"
            )

    _run(go)


@app.command()
def bench(
    size: int = typer.Option(96, help="side of the central crop of each held-out image"),
    images: str = typer.Option("camera,coins", help="comma-separated held-out scikit-image pictures"),
    repeats: int = typer.Option(3, help="timed repetitions (medians are reported)"),
    tasks: str = typer.Option("all", help="'all' or comma-separated task names: denoise0.2,denoise0.4,inpaint"),
    weights: str = typer.Option("", help="decoder weights"),
    threads: int = typer.Option(1, help="torch threads"),
) -> None:
    """PSNR of augmented DEQ vs naive nested vs TV on held-out images, and the wall time / evaluations each
    needs to reach the same objective value (the naive method's final objective, see docs/imaging.md)."""

    def go() -> None:
        import torch

        from problems.imaging.bench import HEADER, TASKS, format_row, run_bench
        from problems.imaging.data import TEST_IMAGES, TRAIN_IMAGES

        torch.set_num_threads(threads)
        names = tuple(n.strip() for n in images.split(",") if n.strip())
        leaked = [n for n in names if n in TRAIN_IMAGES]
        if leaked:
            raise UserInputError(f"{', '.join(leaked)} are training images; held-out ones are {', '.join(TEST_IMAGES)}")
        if size % 4 or size < 16:
            raise UserInputError(f"--size must be a multiple of 4 and at least 16, got {size}")
        keys = {"denoise0.2": TASKS[0], "denoise0.4": TASKS[1], "inpaint": TASKS[2]}
        chosen = TASKS if tasks == "all" else tuple(keys[t] for t in tasks.split(",") if t in keys)
        if not chosen:
            raise UserInputError(f"--tasks must be 'all' or names from {sorted(keys)}")
        model = _load(weights)
        typer.echo(f"fpntools imaging bench --size {size} --images {images} --repeats {repeats} --threads {threads}")
        for line in HEADER:
            typer.echo(line)
        run_bench(model, names, size, chosen, repeats=repeats, progress=lambda row: typer.echo(format_row(row)))

    _run(go)


if __name__ == "__main__":  # pragma: no cover
    app()
    sys.exit(0)
