"""``fpntools imaging``: denoise / inpaint grayscale and colour images with the shipped DEQ decoder, and the benchmark.

Every restoration optimises the decoder's latent input by the augmented joint fixed point. Bad input files
give a one-line ``error: ...`` and exit code 2; the output file is written atomically at the very end, so a
failure never leaves a partial file.
"""

from __future__ import annotations

import sys
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
    """Run a command body: bad input -> ``error: ...`` and exit 2; an unusable result -> exit 3."""
    from fpntools.cli_support import EXIT_NOT_USABLE, EXIT_USER_ERROR, NotUsableError

    try:
        fn()
    except UserInputError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_USER_ERROR) from None
    except NotUsableError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_NOT_USABLE) from None


_SIZES = ("PNG/TIFF, grayscale, gray + alpha, RGB or RGBA (alpha kept), sides from 16 to 8192 px, at most 4096x4096 "
          "pixels; large images go in overlapping tiles")
_TILE_HELP = "largest tile side (multiple of 4; 0: 256); larger images are cut into overlapping tiles"
_COLOUR_HELP = "colour planes: opponent (luminance + two chrominance planes) or rgb (per channel)"


@app.command()
def denoise(
    image: Path = typer.Argument(..., help=f"image ({_SIZES})"),
    sigma: float = typer.Option(0.2, help="noise standard deviation (pixel range [0, 1])"),
    out: Path = typer.Option(..., help="output PNG"),
    weights: str = typer.Option("", help="decoder weights (default: the shipped data/imaging weights)"),
    max_iter: int = typer.Option(0, help="joint fixed-point iterations (0: default)"),
    tile: int = typer.Option(0, help=_TILE_HELP),
    colour: str = typer.Option("opponent", help=_COLOUR_HELP),
) -> None:
    """Denoise IMAGE by optimising the decoder latent (augmented DEQ) under a Gaussian noise model. Progress on
    stderr; exit code 3 (nothing written) when the result is not usable."""
    from problems.imaging.commands import restore_file

    _run(lambda: typer.echo(restore_file("denoise", image, out, sigma=sigma, weights=weights, max_iter=max_iter,
                                         tile=tile, colour=colour)))


@app.command()
def inpaint(
    image: Path = typer.Argument(..., help=f"image, missing pixels may hold any value ({_SIZES})"),
    mask: Path = typer.Option(..., help="mask PNG of the same size: white (nonzero) = known pixel, black = missing"),
    out: Path = typer.Option(..., help="output PNG"),
    sigma: float = typer.Option(0.0, help="noise level of the known pixels (0: noiseless)"),
    weights: str = typer.Option("", help="decoder weights (default: the shipped weights)"),
    max_iter: int = typer.Option(0, help="joint fixed-point iterations (0: default)"),
    tile: int = typer.Option(0, help=_TILE_HELP),
    colour: str = typer.Option("opponent", help=_COLOUR_HELP),
) -> None:
    """Fill the missing pixels of IMAGE (given by MASK) with the decoder fitted to the known pixels. Progress on
    stderr; exit code 3 (nothing written) when the result is not usable."""
    from problems.imaging.commands import restore_file

    _run(lambda: typer.echo(restore_file("inpaint", image, out, sigma=sigma, mask=mask, weights=weights,
                                         max_iter=max_iter, tile=tile, colour=colour)))


@app.command()
def fit(
    image: Path = typer.Argument(..., help=f"image to represent with the decoder ({_SIZES})"),
    out: Path = typer.Option(..., help="output PNG (the decoded fit)"),
    weights: str = typer.Option("", help="decoder weights (default: the shipped weights)"),
    max_iter: int = typer.Option(0, help="joint fixed-point iterations (0: default)"),
    tile: int = typer.Option(0, help=_TILE_HELP),
    colour: str = typer.Option("opponent", help=_COLOUR_HELP),
) -> None:
    """Latent fitting: find the latent whose decoding matches IMAGE (prints the PSNR of the fit)."""
    from problems.imaging.commands import restore_file

    _run(lambda: typer.echo(restore_file("fit", image, out, weights=weights, max_iter=max_iter, tile=tile,
                                         colour=colour)))


@app.command()
def train(
    run_dir: Path = typer.Option(Path("runs/imaging-decoder"),
                                 help="run folder: config.json, history.json, checkpoint.pt"),
    out: str = typer.Option("", help="weights file written at the end (default: RUN_DIR/decoder.safetensors)"),
    minutes: float = typer.Option(10.0, help="wall-clock budget of this invocation (0: none)"),
    steps: int = typer.Option(2000, help="batches in total (of --batch patches)"),
    batch: int = typer.Option(32, help="patches per batch"),
    patch: int = typer.Option(32, help="patch side"),
    lr: float = typer.Option(2e-3, help="Adam learning rate (x0.1 after --lr-drop of the steps or of --minutes)"),
    lr_drop: float = typer.Option(0.85, help="fraction of the run after which the learning rate drops x0.1 (1: never)"),
    latent_weight: float = typer.Option(1e-3, help="weight of the latent penalty mean ||E(y)||^2"),
    channels: int = typer.Option(32, help="state channels of a fresh decoder"),
    latent_channels: int = typer.Option(8, help="latent channels of a fresh decoder"),
    encoder_width: int = typer.Option(32, help="encoder width of a fresh decoder"),
    init: str = typer.Option("", help="fine-tune these weights instead of a fresh decoder"),
    activation: str = typer.Option("", help="relu or softplus (default: relu, or that of --init, which this switches)"),
    jac_weight: float = typer.Option(0.0, help="Jacobian penalty weight (0: off)"),
    jac_prob: float = typer.Option(1.0, help="probability of applying the Jacobian penalty per batch"),
    joint_fraction: float = typer.Option(0.0, help="fraction of batches trained through the joint solve (0: off)"),
    joint_iters: int = typer.Option(50, help="joint iterations per joint batch"),
    joint_backward: str = typer.Option("jfb", help="jfb or implicit"),
    joint_residual_weight: float = typer.Option(0.0, help="weight of the squared joint residual (0: off)"),
    epoch_batches: int = typer.Option(100, help="batches per epoch: one progress line and one checkpoint each"),
    seed: int = typer.Option(0, help="seed of the patches, corruptions and initial weights"),
    threads: int = typer.Option(1, help="torch threads"),
    device: str = typer.Option("auto", help="auto (cuda when available), cpu or cuda"),
    data: str = typer.Option("scikit", help="training images: scikit (the first recipe), train400 (natural images, "
                             "last 20 validate) or a .npy (N, H, W) stack of them"),
    data_root: str = typer.Option("", help="folder holding train400/ (default ../shared/data/natural-images)"),
    resume: bool = typer.Option(False, "--resume", help="continue the checkpoint in RUN_DIR"),
    force: bool = typer.Option(False, "--force", help="start over even though RUN_DIR holds a checkpoint"),
) -> None:
    """Train the DEQ decoder and its encoder on corrupted patches of the training pictures (the shipped weights'
    recipe, docs/imaging.md); progress on stderr, the weights file at the end."""
    from problems.imaging.train import train_command

    _run(lambda: typer.echo(train_command(
        run_dir=run_dir, out=out or None, minutes=minutes, steps=steps, batch=batch, patch=patch, lr=lr, lr_drop=lr_drop,
        latent_weight=latent_weight, channels=channels, latent_channels=latent_channels, encoder_width=encoder_width,
        init=init or None, activation=activation or None, jac_weight=jac_weight, jac_prob=jac_prob,
        joint_fraction=joint_fraction, joint_iters=joint_iters, joint_backward=joint_backward,
        joint_residual_weight=joint_residual_weight, epoch_batches=epoch_batches, seed=seed, threads=threads,
        device=device, data=data, data_root=data_root or None, resume=resume, force=force)))


@app.command()
def adversarial(
    epochs: int = typer.Option(15, help="training epochs of each classifier"),
    eps: float = typer.Option(1.0, help="L2 radius of the attack (pixels in [0, 1])"),
    run_dir: str = typer.Option("", help="run folder (one sub-folder per classifier; default: none, no resume)"),
    device: str = typer.Option("auto", help="auto (cuda when available), cpu or cuda"),
    seed: int = typer.Option(0, help="seed of the split, the initial weights and the sample order"),
    resume: bool = typer.Option(False, "--resume", help="continue (or reuse) the checkpoints in RUN_DIR"),
    force: bool = typer.Option(False, "--force", help="start over even though RUN_DIR holds checkpoints"),
) -> None:
    """Digits demo: L2 attack by the augmented joint fixed point vs PGD, and adversarial training with it."""
    from problems.imaging.adversarial import demo_command

    _run(lambda: typer.echo(demo_command(epochs=epochs, eps=eps, run_dir=run_dir or None, device=device, seed=seed,
                                         resume=resume, force=force)))


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
    from problems.imaging.commands import run_tune

    _run(lambda: run_tune(size, lams, tv_weights, naive_lrs, typer.echo, weights=weights, threads=threads))


@app.command()
def bench(
    size: int = typer.Option(96, help="side of the central crop of each held-out image"),
    images: str = typer.Option("camera,coins", help="comma-separated held-out scikit-image pictures"),
    repeats: int = typer.Option(3, help="timed repetitions (medians are reported)"),
    tasks: str = typer.Option("all", help="'all' or comma-separated task names: denoise0.2,denoise0.4,inpaint"),
    weights: str = typer.Option("", help="decoder weights"),
    threads: int = typer.Option(1, help="torch threads"),
    dataset: str = typer.Option("", help="set12 or bsd68: the natural-image benchmark (then --size, --images, "
                                "--repeats and --tasks do not apply)"),
    sigma: str = typer.Option("15,25,50", help="with --dataset: noise levels on the 0-255 scale"),
    limit: int = typer.Option(0, help="with --dataset: the first N images only (0: all)"),
    masks: bool = typer.Option(True, "--masks/--no-masks", help="with --dataset: the inpainting rows"),
    naive_crop: int = typer.Option(96, help="with --dataset: crop side of the naive-vs-joint speed rows (0: skip)"),
    data_root: str = typer.Option("", help="folder holding Set12/, BSD68/, train400/ "
                                  "(default ../shared/data/natural-images)"),
) -> None:
    """PSNR of augmented DEQ vs naive nested vs TV on held-out images, and the wall time / evaluations each
    needs to reach the same objective value (the naive method's final objective, see docs/imaging.md). With
    --dataset: the standard benchmark on Set12 / BSD68 (augmented DEQ, encoder alone, TV tuned and oracle, BM3D,
    published figures, naive speed, inpainting against biharmonic and TV)."""
    from problems.imaging.commands import run_bench_table, run_dataset_bench

    if dataset:
        _run(lambda: run_dataset_bench(dataset, sigma, limit, masks, naive_crop, typer.echo, weights=weights,
                                       threads=threads, data_root=data_root or None))
        return
    _run(lambda: run_bench_table(size, images, repeats, tasks, typer.echo, weights=weights, threads=threads))


if __name__ == "__main__":  # pragma: no cover
    app()
    sys.exit(0)
