"""``fpntools ct``: simulate, reconstruct, train and benchmark CT reconstructions.

Commands:

* ``fpntools ct simulate --phantom ellipses -n 4 --out sino.npy [--truth-out x.npy]``
* ``fpntools ct reconstruct sino.npy --method fbp|tv|ffpn|unrolled --out rec.npy [--png rec.png] [--truth x.npy]``
* ``fpntools ct train --model ffpn --epochs 10 --out weights.safetensors [--run-dir DIR] [--resume|--force]``
* ``fpntools ct bench --n-test 16 --methods fbp,tv,ffpn,unrolled [--json results.json]``
* ``fpntools ct tune-tv --geometries par20,par30,par60,fan60 --noises 0.005,0.015,0.03``

Geometry options (all commands): ``--size 128 --angles 30 --detectors 183 --angle-range 3.14159...
--detector-width 1 [--fan --source-origin 256 --origin-detector 256]``; defaults are the toolbox contract.
Sinogram files are ``.npy`` arrays ``(n_angles, n_detectors)`` or ``(N, n_angles, n_detectors)``.

This module only parses arguments and calls the library (:mod:`problems.ct.reconstruct`,
:mod:`problems.ct.bench`, :mod:`problems.ct.train`, :mod:`problems.ct.weights`, :mod:`problems.ct.figures`).
Exit codes: 2 for bad input (nothing written), 3 when the reconstruction is not usable (nothing written).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

import typer

from fpntools.cli_support import NotUsableError, check_output_dir, check_output_path, warn
from fpntools.errors import UserInputError

app = typer.Typer(help="CT reconstruction: FBP, TV, F-FPN and unrolled networks.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)


def _geometry(size: int, angles: int, detectors: int, angle_range: Optional[float], detector_width: Optional[float],
              fan: bool, source_origin: float, origin_detector: float, beam: str = "parallel"):
    from problems.ct.geometry import CTGeometry

    if beam not in ("parallel", "fan"):
        raise UserInputError(f"--beam must be parallel or fan, got {beam!r}")
    fan = fan or beam == "fan"
    if angle_range is None:
        angle_range = 2 * math.pi if fan else math.pi
    if not (math.isfinite(angle_range) and angle_range > 0):
        raise UserInputError(f"--angle-range must be a positive number of radians, got {angle_range}")
    try:
        if fan:
            kw = dict(image_size=size, n_angles=angles, n_detectors=detectors, angle_range=angle_range)
            if detector_width is not None:
                kw["detector_width"] = detector_width
            return CTGeometry.fan(source_origin, origin_detector, **kw)
        return CTGeometry(image_size=size, n_angles=angles, n_detectors=detectors, angle_range=angle_range,
                          detector_width=1.0 if detector_width is None else detector_width)
    except ValueError as exc:
        raise UserInputError(str(exc)) from exc


def _threads(threads: int) -> None:
    if threads > 0:
        import torch

        torch.set_num_threads(threads)


def _stderr(message: str) -> None:
    typer.echo(message, err=True)


# shared options -------------------------------------------------------------------------------------------
SizeOpt = typer.Option(128, "--size", help="image side length (pixels)")
AnglesOpt = typer.Option(30, "--angles", help="number of projection angles")
DetOpt = typer.Option(183, "--detectors", help="detector pixels")
RangeOpt = typer.Option(None, "--angle-range", help="angular range in radians (default: pi parallel, 2 pi fan)")
WidthOpt = typer.Option(None, "--detector-width", help="detector pixel width (default 1; fan: covers the image)")
FanOpt = typer.Option(False, "--fan", help="same as --beam fan")
BeamOpt = typer.Option("parallel", "--beam", help="parallel | fan (flat detector)")
SoOpt = typer.Option(256.0, "--source-origin", help="fan beam: source to rotation axis distance")
OdOpt = typer.Option(256.0, "--origin-detector", help="fan beam: rotation axis to detector distance")
CacheOpt = typer.Option(None, "--cache-dir", help="cache for projection matrices and data sets")
ThreadsOpt = typer.Option(0, help="torch CPU threads (0: torch default)")


@app.command()
def simulate(
    out: Path = typer.Option(..., "--out", help="output sinograms (.npy)"),
    phantom: str = typer.Option("ellipses", help="ellipses | shepp-logan"),
    n: int = typer.Option(1, "-n", help="number of phantoms (ellipses)"),
    seed: int = typer.Option(0, help="phantom and noise seed"),
    noise: float = typer.Option(0.015, help="relative noise level (sigma = noise * RMS(sinogram))"),
    truth_out: Optional[Path] = typer.Option(None, "--truth-out", help="also save the phantoms (.npy)"),
    size: int = SizeOpt, angles: int = AnglesOpt, detectors: int = DetOpt, angle_range: Optional[float] = RangeOpt,
    detector_width: Optional[float] = WidthOpt, beam: str = BeamOpt, fan: bool = FanOpt, source_origin: float = SoOpt,
    origin_detector: float = OdOpt, cache_dir: Optional[Path] = CacheOpt,
) -> None:
    """Simulate noisy sinograms of phantoms."""
    from problems.ct.phantoms import make_phantoms
    from problems.ct.phantoms import simulate as sim
    from problems.ct.projector import ct_operator
    from problems.ct.reconstruct import save_array

    check_output_path(out, (".npy",), "--out")
    if truth_out is not None:
        check_output_path(truth_out, (".npy",), "--truth-out")
    if not (noise >= 0 and math.isfinite(noise)):
        raise UserInputError(f"--noise must be a finite number >= 0, got {noise}")
    g = _geometry(size, angles, detectors, angle_range, detector_width, fan, source_origin, origin_detector, beam)
    x = make_phantoms(phantom, n, g.image_size, seed)
    y = sim(x, g, noise=noise, seed=seed, operator=ct_operator(g, cache_dir=cache_dir)).numpy()
    y = y[0] if y.shape[0] == 1 else y
    save_array(out, y)
    if truth_out is not None:
        save_array(truth_out, x[0] if x.shape[0] == 1 else x)
    typer.echo(f"wrote {out} {y.shape} ({g.describe()}, noise {noise})")


@app.command()
def reconstruct(
    sinogram: Path = typer.Argument(..., help="sinogram(s) .npy: (n_angles, n_detectors) or (N, ...)"),
    out: Path = typer.Option(..., "--out", help="reconstruction output: .npy (array) or .png (image)"),
    method: str = typer.Option("ffpn", help="ffpn (default, shipped weights for any geometry) | unrolled | tv | fbp"),
    weights: Optional[Path] = typer.Option(None, help="network weights (.safetensors; default: shipped)"),
    noise: Optional[float] = typer.Option(None, help="relative noise level sigma / RMS(sinogram) (default: "
                                          "estimated from the sinogram)"),
    lam: Optional[float] = typer.Option(None, help="TV weight (default: tuned for the geometry and noise level)"),
    iters: int = typer.Option(500, help="TV: maximum PDHG iterations"),
    filter: str = typer.Option("hann", "--filter", help="FBP filter: ram-lak shepp-logan cosine hamming hann"),
    png: Optional[Path] = typer.Option(None, help="also save a PNG"),
    truth: Optional[Path] = typer.Option(None, help="ground truth .npy: print PSNR / SSIM"),
    threads: int = ThreadsOpt,
    size: int = SizeOpt, angles: int = AnglesOpt, detectors: int = DetOpt, angle_range: Optional[float] = RangeOpt,
    detector_width: Optional[float] = WidthOpt, beam: str = BeamOpt, fan: bool = FanOpt, source_origin: float = SoOpt,
    origin_detector: float = OdOpt, cache_dir: Optional[Path] = CacheOpt,
) -> None:
    """Reconstruct images from sinograms; says whether the output is usable (exit 3 and nothing written if not)."""
    from fpntools.metrics import psnr, ssim
    from problems.ct.acquisition import acquisition, estimate_noise
    from problems.ct.reconstruct import METHODS, check_sinogram_range, load_array, load_network, load_sinograms, save_images
    from problems.ct.reconstruct import reconstruct as run

    method = method.lower()
    if method not in METHODS:
        raise UserInputError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    if noise is not None and not (math.isfinite(noise) and 0 <= noise < 1):
        raise UserInputError(f"--noise must be a relative level in [0, 1), got {noise}")
    check_output_path(out, (".npy", ".png"), "--out")
    if png is not None:
        check_output_path(png, (".png",), "--png")
    _threads(threads)
    g = _geometry(size, angles, detectors, angle_range, detector_width, fan, source_origin, origin_detector, beam)
    y, batched = load_sinograms(sinogram, g)
    x = None
    if truth is not None:
        x = load_array(truth, "ground truth")
        want = (y.shape[0], *g.image_shape) if batched else g.image_shape
        if tuple(x.shape) != tuple(want):
            raise UserInputError(f"ground truth {truth} has shape {tuple(x.shape)}; the reconstruction will have {want}")
    model = load_network(method, weights) if method in ("ffpn", "unrolled") else None
    acq = acquisition(g, cache_dir=cache_dir)
    rng = check_sinogram_range(y, acq.op, f"sinogram {sinogram}")
    if rng.fraction_above or rng.fraction_below:
        warn(f"sinogram {sinogram}: {rng.describe()}")
    if noise is None and method != "fbp":
        est = estimate_noise(y)
        _stderr(f"estimated relative noise level {float(est.mean()):.4f}"
                + (f" (range {float(est.min()):.4f} - {float(est.max()):.4f})" if est.numel() > 1 else "")
                + "; pass --noise to set it")
    rec = run(method, y, acq, noise=noise, lam=lam, iters=iters, filter=filter, model=model)
    verdict = rec.verdict()
    for w in verdict.warnings:
        warn(w)
    if not verdict.usable:
        raise NotUsableError(f"{'; '.join(verdict.problems)}; nothing written ({verdict.summary})")
    arr = rec.images.detach().cpu().numpy().astype("float32")
    arr = arr if batched else arr[0]
    save_images(out, arr)
    if png is not None:
        save_images(png, arr)
    typer.echo(f"{method}: wrote {out} {arr.shape} in {rec.seconds:.2f} s")
    typer.echo(verdict.summary)
    if x is not None:
        typer.echo(f"PSNR {float(psnr(arr, x.astype('float32')).mean()):.2f} dB, "
                   f"SSIM {float(ssim(arr, x.astype('float32')).mean()):.4f}")


@app.command()
def train(
    out: Path = typer.Option(Path("ct_ffpn.safetensors"), "--out", help="weights output (.safetensors + .json)"),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir",
                                           help="run folder: config, history, checkpoint (default: <out>_run)"),
    resume: bool = typer.Option(False, "--resume", help="continue the run in the run folder"),
    force: bool = typer.Option(False, "--force", help="start over although the run folder holds a checkpoint"),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N"),
    model: str = typer.Option("ffpn", help="ffpn | unrolled"),
    epochs: int = typer.Option(10), batch_size: int = typer.Option(8), lr: float = typer.Option(2e-3),
    grad_clip: float = typer.Option(1.0, help="gradient norm clip (0: off)"),
    epoch_size: int = typer.Option(256, help="images in the training pool (one epoch)"),
    n_val: int = typer.Option(8, help="validation images per validation set"),
    noise_min: float = typer.Option(0.005, help="smallest relative noise level of training"),
    noise_max: float = typer.Option(0.03, help="largest relative noise level of training"),
    natural_images: Optional[Path] = typer.Option(None, help="natural training images: folder of PNGs or .npy "
                                                  "(default: ../shared/data/natural-images/train400)"),
    validation_file: Optional[Path] = typer.Option(None, help="validation images .npz (default: built from BSD68 "
                                                   "validation half and the generators)"),
    workers: int = typer.Option(0, help="processes generating the image pool (0: this one)"),
    init: Optional[Path] = typer.Option(None, help="start from these weights (.safetensors, same kind; fine-tuning)"),
    seed: int = typer.Option(0, help="pool, initialisation and sample-order seed"),
    backward: Optional[str] = typer.Option(None, help="F-FPN gradient: jfb (default) | implicit | implicit_cg | phantom"),
    unrolled_steps: int = typer.Option(10, help="unrolled network: number of steps"),
    channels: int = typer.Option(16), layers: int = typer.Option(3),
    prior_width: int = typer.Option(32, help="U-Net prior: channels of the first level"),
    prior_levels: int = typer.Option(4, help="U-Net prior: number of resolutions"),
    max_minutes: float = typer.Option(0.0, help="stop (with a checkpoint) after this many minutes (0: no limit)"),
    max_steps: Optional[int] = typer.Option(None, help="stop (with a checkpoint) after this many optimizer steps"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="progress bar"),
    threads: int = ThreadsOpt,
    size: int = typer.Option(128, "--size", help="training image side (geometries scale with it)"),
    reference_tv_iters: int = typer.Option(80, help="PDHG iterations of the TV reference"),
) -> None:
    """Train an F-FPN (or the unrolled baseline) for many geometries and noise levels on natural images and
    CT-like phantoms (one set of weights for parallel beam with 15-90 angles and fan beam)."""
    from problems.ct.ffpn import FFPN_SOLVE, FFPNConfig, default_solve
    from problems.ct.train import TrainConfig, train_summary
    from problems.ct.train import train as run_train
    from problems.ct.weights import save_weights

    check_output_path(out, (".safetensors",), "--out")
    run_dir = run_dir if run_dir is not None else out.with_name(out.stem + "_run")
    check_output_dir(run_dir, "--run-dir")
    _threads(threads)
    try:
        mcfg = FFPNConfig(channels=channels, layers=layers, prior_width=prior_width, prior_levels=prior_levels,
                          reference_tv_iters=reference_tv_iters)
    except ValueError as exc:
        raise UserInputError(str(exc)) from None
    if model == "ffpn":
        solve = FFPN_SOLVE.with_(backward=backward or FFPN_SOLVE.backward)
        if solve.backward == "unroll":
            raise UserInputError("--backward unroll is the unrolled network: use --model unrolled")
    elif model == "unrolled":
        if backward is not None:
            raise UserInputError("--backward applies to --model ffpn; the unrolled network backpropagates "
                                 "through its --unrolled-steps")
        if unrolled_steps < 1:
            raise UserInputError(f"--unrolled-steps must be >= 1, got {unrolled_steps}")
        solve = default_solve("unrolled", unrolled_steps)
    else:
        raise UserInputError(f"--model must be ffpn or unrolled, got {model!r}")
    cfg = TrainConfig(model=model, epochs=epochs, batch_size=batch_size, lr=lr, grad_clip=grad_clip,
                      epoch_size=epoch_size, n_val=n_val, noise_min=noise_min, noise_max=noise_max, image_size=size,
                      natural_images=None if natural_images is None else str(natural_images),
                      validation_file=None if validation_file is None else str(validation_file), workers=workers,
                      init=None if init is None else str(init),
                      seed=seed, max_minutes=max_minutes, max_steps=max_steps, device=device, run_dir=str(run_dir), resume=resume,
                      force=force, progress=progress)
    net, result = run_train(cfg, mcfg, solve=solve, log=_stderr)
    if not result.history:
        raise NotUsableError(f"no epoch finished ({result.stop_reason}); nothing written; the checkpoint in "
                             f"{run_dir} continues with --resume")
    save_weights(net.cpu(), out, train_summary(cfg, result))
    done = "" if result.completed else f" (stopped early: {result.stop_reason}; --resume continues the run)"
    typer.echo(f"wrote {out} and {out.with_suffix('.json').name}: weights of epoch {result.best_epoch}, validation "
               f"PSNR {result.best_value:.2f} dB{done}; run folder {run_dir}")


@app.command()
def bench(
    methods: str = typer.Option("fbp,tv,unrolled,ffpn", help="comma-separated: fbp,tv,unrolled,ffpn"),
    geometries: Optional[str] = typer.Option(None, help="comma-separated geometries: parN (parallel, N angles) or "
                                             "fanN (fan beam, N angles over a full turn); default: "
                                             "par20,par30,par60,fan60 (VALIDATION_GEOMETRIES)"),
    sets: str = typer.Option("phantoms,bsd68,shepp-logan,ct-like", help="test sets: phantoms (held-out CT-like "
                             "phantoms), bsd68 (BSD68 test crops), shepp-logan (the standard phantom), ct-like "
                             "(slices of a generator never trained on, test seeds)"),
    n_test: int = typer.Option(16, help="images per test set (Shepp-Logan: one)"),
    seed: int = typer.Option(0, help="seed of the test images and the noise"),
    noise: float = typer.Option(0.015, help="relative noise level of the simulated sinograms"),
    known_noise: bool = typer.Option(False, "--known-noise", help="give the methods the true noise level "
                                     "(default: each estimates it from the sinograms)"),
    iters: int = typer.Option(500, help="TV: maximum PDHG iterations (tuned weight)"),
    filter: str = typer.Option("hann", "--filter", help="FBP filter (parallel beam)"),
    batch_size: int = typer.Option(16, help="images per reconstruction call"),
    ffpn_weights: Optional[Path] = typer.Option(None, help="F-FPN weights (default: shipped data/ct/ffpn)"),
    unrolled_weights: Optional[Path] = typer.Option(None, help="unrolled weights (default: shipped)"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="write everything (per-image PSNRs too) as JSON"),
    figure: Path = typer.Option(Path("out/ct/bench.png"), help="figure: truth, reconstructions, error maps (par30)"),
    no_figure: bool = typer.Option(False, "--no-figure", help="do not write the figure"),
    size: int = typer.Option(128, "--size", help="side of the test images and geometries (the issue's bench: 128)"),
    threads: int = ThreadsOpt, cache_dir: Optional[Path] = CacheOpt,
) -> None:
    """PSNR / SSIM / time per image of FBP, tuned TV, unrolled and F-FPN on held-out test sets at several
    geometries, and the targets of issue 15 (progress on stderr)."""
    from rich.console import Console

    from fpntools.atomic_io import atomic_write_bytes
    from problems.ct.bench import (BenchConfig, bench_document, bench_table, default_geometries, run_bench,
                                   targets_table)
    from problems.ct.figures import save_bench_figure

    cfg = BenchConfig(methods=methods, geometries=geometries or default_geometries(), sets=sets, n_test=n_test,
                      seed=seed, noise=noise, known_noise=known_noise, iters=iters, filter=filter,
                      batch_size=batch_size, ffpn_weights=ffpn_weights, unrolled_weights=unrolled_weights,
                      image_size=size)
    if not no_figure:
        check_output_dir(figure.parent, "--figure folder")
        check_output_path(figure, (".png",), "--figure")
    if json_out is not None:
        check_output_path(json_out, (".json",), "--json")
    _threads(threads)
    result = run_bench(cfg, cache_dir=cache_dir, log=_stderr)
    console = Console(width=max(Console().width, 110))
    console.print(bench_table(result))
    tt = targets_table(result)
    if tt is not None:
        console.print(tt)
    if not no_figure:
        save_bench_figure(figure, result.panels, f"ct bench at {result.figure_geometry}, noise {noise:g}")
        typer.echo(f"wrote {figure}")
    if json_out is not None:
        atomic_write_bytes(json_out, json.dumps(bench_document(result), indent=2).encode())
        typer.echo(f"wrote {json_out}")


@app.command("tune-tv")
def tune_tv(
    geometries: str = typer.Option("par20,par30,par60,fan60", help="comma-separated geometries: parN (parallel, N "
                                   "angles) or fanN (fan beam, N angles over a full turn)"),
    noises: str = typer.Option("0.005,0.015,0.03", help="comma-separated relative noise levels"),
    n_val: int = typer.Option(6, help="validation images per validation set"),
    iters: int = typer.Option(300, help="PDHG iterations per reconstruction"),
    size: int = typer.Option(128, "--size", help="image side of the validation images and geometries"),
    threads: int = ThreadsOpt,
) -> None:
    """Tune the TV weight per geometry and noise level on the validation sets and fit the weight rule
    (prints the table and the rule's coefficients for problems/ct/baselines.py)."""
    from problems.ct.train import geometry_by_name, validation_images
    from problems.ct.tuning import tune_tv_grid

    if n_val < 1 or iters < 1:
        raise UserInputError(f"--n-val and --iters must be >= 1, got {n_val}, {iters}")
    try:
        geoms = {name.strip(): geometry_by_name(name.strip(), size) for name in geometries.split(",") if name.strip()}
        levels = [float(v) for v in noises.split(",") if v.strip()]
    except ValueError as exc:
        raise UserInputError(str(exc).splitlines()[0]) from None
    if not geoms or not levels or not all(0 < v < 1 for v in levels):
        raise UserInputError("give at least one geometry and noise levels in (0, 1)")
    _threads(threads)
    res = tune_tv_grid(validation_images(n_val, size=size), geoms, levels, iters=iters, log=_stderr)
    for (g, s), lam in res.best.items():
        typer.echo(f"{g:6s} noise {s:<6g} best lam {lam:8.4g}  rule {res.rule(geoms[g], s):8.4g}")
    r = res.rule
    typer.echo(f"rule: TVWeightRule(scale={r.scale:.4g}, angle_power={r.angle_power:.4g}, "
               f"noise_power={r.noise_power:.4g}, fan_factor={r.fan_factor:.4g})")
