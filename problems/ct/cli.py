"""``fpntools ct``: simulate, reconstruct, train and benchmark CT reconstructions.

Commands:

* ``fpntools ct simulate --phantom ellipses -n 4 --out sino.npy [--truth-out x.npy]``
* ``fpntools ct reconstruct sino.npy --method fbp|tv|ffpn|unrolled --out rec.npy [--png rec.png] [--truth x.npy]``
* ``fpntools ct train --model ffpn --epochs 10 --out weights.safetensors --checkpoint run.pt``
* ``fpntools ct bench --n-test 16 --methods fbp,tv,ffpn,unrolled [--json results.json]``

Geometry options (all commands): ``--size 128 --angles 30 --detectors 183 --angle-range 3.14159...
--detector-width 1 [--fan --source-origin 256 --origin-detector 256]``; defaults are the toolbox contract.
Sinogram files are ``.npy`` arrays ``(n_angles, n_detectors)`` or ``(N, n_angles, n_detectors)``.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import typer

from fpntools.errors import UserInputError
from fpntools.training.checkpoint import atomic_write, atomic_write_bytes

app = typer.Typer(help="CT reconstruction: FBP, TV, F-FPN and unrolled networks.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)

from problems.ct.baselines import DEFAULT_TV_LAM  # noqa: E402  (tuned TV weight of the default problem)
METHODS = ("fbp", "tv", "ffpn", "unrolled")


def _geometry(size: int, angles: int, detectors: int, angle_range: float, detector_width: Optional[float],
              fan: bool, source_origin: float, origin_detector: float):
    from problems.ct.geometry import CTGeometry

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


# shared options -------------------------------------------------------------------------------------------
SizeOpt = typer.Option(128, "--size", help="image side length (pixels)")
AnglesOpt = typer.Option(30, "--angles", help="number of projection angles")
DetOpt = typer.Option(183, "--detectors", help="detector pixels")
RangeOpt = typer.Option(math.pi, "--angle-range", help="angular range in radians (fan beam: use 2 pi)")
WidthOpt = typer.Option(None, "--detector-width", help="detector pixel width (default 1; fan: covers the image)")
FanOpt = typer.Option(False, "--fan", help="fan beam (flat detector) instead of parallel beam")
SoOpt = typer.Option(256.0, "--source-origin", help="fan beam: source to rotation axis distance")
OdOpt = typer.Option(256.0, "--origin-detector", help="fan beam: rotation axis to detector distance")
CacheOpt = typer.Option(None, "--cache-dir", help="cache for projection matrices and data sets")


def _load_array(path: Path, what: str) -> np.ndarray:
    if not path.is_file():
        raise UserInputError(f"{what} file not found: {path}")
    try:
        return np.load(path, allow_pickle=False)
    except Exception as exc:
        raise UserInputError(f"cannot read {what} file {path} as .npy: {exc}") from exc


def _save_npy(path: Path, arr: np.ndarray) -> None:
    """Write ``arr`` to ``path`` atomically (no partial file on failure)."""
    atomic_write(path, lambda fh: np.save(fh, arr, allow_pickle=False))


def _save_figure(path: Path, fig) -> None:  # noqa: ANN001 - matplotlib figure
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def _save_png(path: Path, images: np.ndarray) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    imgs = images[None] if images.ndim == 2 else images
    n = imgs.shape[0]
    fig, axes = plt.subplots(1, n, figsize=(3 * n, 3), squeeze=False)
    for ax, im in zip(axes[0], imgs):
        ax.imshow(im, cmap="gray", vmin=0, vmax=1)
        ax.axis("off")
    fig.tight_layout()
    _save_figure(path, fig)


def _save_bench_figure(path: Path, truth: np.ndarray, recs: dict[str, np.ndarray], n_show: int = 2) -> None:
    """Ground truth and each method's reconstruction (top row per image) with its error map below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_show = min(n_show, truth.shape[0])
    cols = 1 + len(recs)
    fig, axes = plt.subplots(2 * n_show, cols, figsize=(2.6 * cols, 2.6 * 2 * n_show), squeeze=False)
    for i in range(n_show):
        top, bottom = axes[2 * i], axes[2 * i + 1]
        top[0].imshow(truth[i], cmap="gray", vmin=0, vmax=1)
        top[0].set_title(f"truth #{i}", fontsize=9)
        bottom[0].axis("off")
        for j, (name, rec) in enumerate(recs.items(), start=1):
            err = np.abs(rec[i] - truth[i])
            mse = float(np.mean((rec[i] - truth[i]) ** 2))
            psnr_i = 10 * np.log10(1.0 / max(mse, 1e-12))
            top[j].imshow(rec[i], cmap="gray", vmin=0, vmax=1)
            top[j].set_title(f"{name} {psnr_i:.1f} dB", fontsize=9)
            bottom[j].imshow(err, cmap="magma", vmin=0, vmax=0.25)
            bottom[j].set_title(f"|{name} - truth|", fontsize=9)
        for ax in list(top) + list(bottom):
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    _save_figure(path, fig)


@app.command()
def simulate(
    out: Path = typer.Option(..., "--out", help="output sinograms (.npy)"),
    phantom: str = typer.Option("ellipses", help="ellipses | shepp-logan"),
    n: int = typer.Option(1, "-n", help="number of phantoms (ellipses)"),
    seed: int = typer.Option(0, help="phantom and noise seed"),
    noise: float = typer.Option(0.015, help="relative noise level (sigma = noise * RMS(sinogram))"),
    truth_out: Optional[Path] = typer.Option(None, "--truth-out", help="also save the phantoms (.npy)"),
    size: int = SizeOpt, angles: int = AnglesOpt, detectors: int = DetOpt, angle_range: float = RangeOpt,
    detector_width: Optional[float] = WidthOpt, fan: bool = FanOpt, source_origin: float = SoOpt,
    origin_detector: float = OdOpt, cache_dir: Optional[Path] = CacheOpt,
) -> None:
    """Simulate noisy sinograms of phantoms."""
    from problems.ct.phantoms import random_ellipses, shepp_logan
    from problems.ct.phantoms import simulate as sim
    from problems.ct.projector import ct_operator

    g = _geometry(size, angles, detectors, angle_range, detector_width, fan, source_origin, origin_detector)
    if phantom == "ellipses":
        x = random_ellipses(n, g.image_size, seed=seed)
    elif phantom in ("shepp-logan", "shepp_logan", "shepp"):
        x = shepp_logan(g.image_size)[None]
    else:
        raise UserInputError(f"unknown phantom {phantom!r}; use 'ellipses' or 'shepp-logan'")
    y = sim(x, g, noise=noise, seed=seed, operator=ct_operator(g, cache_dir=cache_dir)).numpy()
    y = y[0] if y.shape[0] == 1 else y
    _save_npy(out, y)
    if truth_out is not None:
        _save_npy(truth_out, np.asarray(x[0] if x.shape[0] == 1 else x))
    typer.echo(f"wrote {out} {y.shape} ({g.describe()}, noise {noise})")


def _reconstruct(method: str, y: torch.Tensor, g, op, lam: float, filt: str, weights: Optional[Path],
                 cache_dir, iters: int):
    from problems.ct.baselines import fbp, tv_reconstruct

    if method == "fbp":
        return fbp(y, g, filter=filt), {}
    if method == "tv":
        return tv_reconstruct(y, op, lam=lam, n_iter=iters), {}
    if method in ("ffpn", "unrolled"):
        from problems.ct.train import load_model, shipped_weights

        from fpntools.training.checkpoint import CheckpointError

        try:
            path = weights if weights is not None else shipped_weights(method)  # type: ignore[arg-type]
            model, wg, meta = load_model(path, op=op)
        except CheckpointError as exc:
            raise UserInputError(str(exc)) from exc
        if wg != g:
            raise UserInputError(
                f"weights {path} were trained for another geometry ({wg.describe()}); requested {g.describe()}"
            )
        with torch.no_grad():
            u, info = model(y)
        extra = {"steps": float(info.steps.double().mean()), "status": info.status.name} if info is not None else {}
        return u, extra
    raise UserInputError(f"unknown method {method!r}; use one of {METHODS}")


@app.command()
def reconstruct(
    sinogram: Path = typer.Argument(..., help="sinogram(s) .npy: (n_angles, n_detectors) or (N, ...)"),
    out: Path = typer.Option(..., "--out", help="reconstruction output: .npy (array) or .png (image)"),
    method: str = typer.Option("ffpn", help="fbp | tv | ffpn | unrolled"),
    weights: Optional[Path] = typer.Option(None, help="network weights (.safetensors; default: shipped)"),
    lam: float = typer.Option(DEFAULT_TV_LAM, help="TV weight"),
    iters: int = typer.Option(500, help="TV: PDHG iterations"),
    filter: str = typer.Option("hann", "--filter", help="FBP filter: ram-lak shepp-logan cosine hamming hann"),
    png: Optional[Path] = typer.Option(None, help="also save a PNG"),
    truth: Optional[Path] = typer.Option(None, help="ground truth .npy: print PSNR / SSIM"),
    size: int = SizeOpt, angles: int = AnglesOpt, detectors: int = DetOpt, angle_range: float = RangeOpt,
    detector_width: Optional[float] = WidthOpt, fan: bool = FanOpt, source_origin: float = SoOpt,
    origin_detector: float = OdOpt, cache_dir: Optional[Path] = CacheOpt,
) -> None:
    """Reconstruct images from sinograms."""
    from fpntools.metrics import psnr, ssim
    from problems.ct.projector import ct_operator

    g = _geometry(size, angles, detectors, angle_range, detector_width, fan, source_origin, origin_detector)
    y_np, batched = g.check_sinogram(_load_array(sinogram, "sinogram"), f"sinogram {sinogram}")
    yb = torch.from_numpy(np.ascontiguousarray(y_np, dtype=np.float32))
    op = ct_operator(g, cache_dir=cache_dir)
    t0 = time.perf_counter()
    rec, extra = _reconstruct(method.lower(), yb, g, op, lam, filter, weights, cache_dir, iters)
    dt = time.perf_counter() - t0
    arr = rec.detach().cpu().numpy().astype(np.float32)
    arr = arr if batched else arr[0]
    if out.suffix.lower() == ".png":
        _save_png(out, arr)
    else:
        _save_npy(out, arr)
    msg = f"{method}: wrote {out} {arr.shape} in {dt:.2f} s"
    if extra:
        msg += f" ({extra.get('steps', 0):.1f} fixed-point steps, {extra.get('status')})"
    typer.echo(msg)
    if png is not None:
        _save_png(png, arr)
    if truth is not None:
        x = _load_array(truth, "ground truth").astype(np.float32)
        if x.shape != arr.shape:
            raise UserInputError(f"ground truth {truth} has shape {x.shape}, reconstruction {arr.shape}")
        typer.echo(f"PSNR {float(psnr(arr, x).mean()):.2f} dB, SSIM {float(ssim(arr, x).mean()):.4f}")


@app.command()
def train(
    out: Path = typer.Option(Path("ct_ffpn.safetensors"), "--out", help="weights output (.safetensors + .json)"),
    model: str = typer.Option("ffpn", help="ffpn | unrolled"),
    epochs: int = typer.Option(10), batch_size: int = typer.Option(8), lr: float = typer.Option(2e-3),
    lr_decay: float = typer.Option(0.93), n_train: int = typer.Option(200), n_val: int = typer.Option(8),
    seed: int = typer.Option(0),
    backward: str = typer.Option("jfb", help="F-FPN gradient: jfb | implicit | phantom"),
    data_step: str = typer.Option("relaxed", help="relaxed (data-ball subgradient projection) | gradient"),
    channels: int = typer.Option(16), layers: int = typer.Option(3),
    activation: str = typer.Option("leaky_relu", help="leaky_relu | maxmin"),
    condition: str = typer.Option("fbp", help="fbp (FBP as a second input channel of the regulariser) | none"),
    reference: str = typer.Option("tv", help="reference reconstruction the network starts from: tv | fbp"),
    reference_tv_iters: int = typer.Option(80, help="PDHG iterations of the TV reference"),
    prior: str = typer.Option("unet", help="unet (U-Net on the reference gating the regulariser, plus an offset) | none"),
    prior_width: int = typer.Option(16, help="U-Net prior: channels of the first level"),
    prior_levels: int = typer.Option(3, help="U-Net prior: number of resolutions"),
    unrolled_steps: int = typer.Option(10),
    max_minutes: float = typer.Option(0.0, help="stop after this many minutes (0: no limit)"),
    checkpoint: Optional[Path] = typer.Option(None, help="checkpoint file (resumes when it exists)"),
    threads: int = typer.Option(0, help="torch CPU threads (0: torch default)"),
    size: int = SizeOpt, angles: int = AnglesOpt, detectors: int = DetOpt, angle_range: float = RangeOpt,
    detector_width: Optional[float] = WidthOpt, fan: bool = FanOpt, source_origin: float = SoOpt,
    origin_detector: float = OdOpt, cache_dir: Optional[Path] = CacheOpt,
) -> None:
    """Train an F-FPN (or the unrolled baseline) on simulated random-ellipse data."""
    from problems.ct.ffpn import FFPNConfig
    from problems.ct.train import TrainConfig, save_weights
    from problems.ct.train import train as run_train

    if threads > 0:
        torch.set_num_threads(threads)
    g = _geometry(size, angles, detectors, angle_range, detector_width, fan, source_origin, origin_detector)
    try:
        mcfg = FFPNConfig(channels=channels, layers=layers, backward=backward, data_step=data_step,  # type: ignore[arg-type]
                          unrolled_steps=unrolled_steps, activation=activation,  # type: ignore[arg-type]
                          condition=condition, prior=prior, prior_width=prior_width,  # type: ignore[arg-type]
                          prior_levels=prior_levels, reference=reference,  # type: ignore[arg-type]
                          reference_tv_iters=reference_tv_iters)
    except ValueError as exc:
        raise UserInputError(str(exc)) from exc
    cfg = TrainConfig(model=model, epochs=epochs, batch_size=batch_size, lr=lr, lr_decay=lr_decay,  # type: ignore[arg-type]
                      n_train=n_train, n_val=n_val, seed=seed, max_minutes=max_minutes,
                      checkpoint=str(checkpoint) if checkpoint else None)
    net, history = run_train(cfg, mcfg, g, cache_dir=cache_dir, log=typer.echo)
    save_weights(net, out, model, g, {"history": history, "train_config": cfg.__dict__})
    best = max((h["val_psnr"] for h in history), default=float("nan"))
    typer.echo(f"wrote {out} (best validation PSNR {best:.2f} dB)")


@app.command()
def bench(
    methods: str = typer.Option("fbp,tv,ffpn,unrolled", help="comma-separated: fbp,tv,ffpn,unrolled"),
    n_test: int = typer.Option(16, help="test phantoms (random ellipses, test split)"),
    seed: int = typer.Option(0),
    lam: float = typer.Option(DEFAULT_TV_LAM, help="TV weight"),
    iters: int = typer.Option(500, help="TV: PDHG iterations"),
    filter: str = typer.Option("hann", "--filter", help="FBP filter"),
    ffpn_weights: Optional[Path] = typer.Option(None, help="F-FPN weights (default: shipped)"),
    unrolled_weights: Optional[Path] = typer.Option(None, help="unrolled weights (default: shipped)"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="write the results as JSON"),
    figure: Optional[Path] = typer.Option(Path("out/ct/bench.png"), help="figure: truth, reconstructions, error maps"),
    threads: int = typer.Option(0, help="torch CPU threads (0: torch default)"),
    size: int = SizeOpt, angles: int = AnglesOpt, detectors: int = DetOpt, angle_range: float = RangeOpt,
    detector_width: Optional[float] = WidthOpt, fan: bool = FanOpt, source_origin: float = SoOpt,
    origin_detector: float = OdOpt, cache_dir: Optional[Path] = CacheOpt,
) -> None:
    """PSNR / SSIM / time per image of the methods on simulated test phantoms."""
    from rich.console import Console
    from rich.table import Table

    from fpntools.metrics import psnr, ssim
    from problems.ct.phantoms import CTDataConfig, make_dataset
    from problems.ct.projector import ct_operator

    if threads > 0:
        torch.set_num_threads(threads)
    g = _geometry(size, angles, detectors, angle_range, detector_width, fan, source_origin, origin_detector)
    chosen = [m.strip().lower() for m in methods.split(",") if m.strip()]
    bad = [m for m in chosen if m not in METHODS]
    if bad:
        raise UserInputError(f"unknown methods {bad}; choose from {METHODS}")
    data = make_dataset(CTDataConfig(geometry=g, n_train=0, n_val=0, n_test=n_test, seed=seed), cache_dir=cache_dir)
    x, y = data.test.images, data.test.sinograms
    op = ct_operator(g, cache_dir=cache_dir)
    results = {}
    recs: dict[str, np.ndarray] = {}
    for m in chosen:
        w = ffpn_weights if m == "ffpn" else unrolled_weights if m == "unrolled" else None
        t0 = time.perf_counter()
        rec, extra = _reconstruct(m, y, g, op, lam, filter, w, cache_dir, iters)
        dt = (time.perf_counter() - t0) / n_test
        recs[m] = rec.detach().cpu().numpy()
        p, s = psnr(rec, x), ssim(rec, x)
        results[m] = {"psnr": float(p.mean()), "psnr_std": float(p.std()) if n_test > 1 else 0.0,
                      "ssim": float(s.mean()), "seconds_per_image": dt, **extra}
    table = Table(title=f"CT bench: {n_test} ellipse phantoms, {g.describe()}")
    for col in ("method", "PSNR (dB)", "SSIM", "s / image", "fp steps"):
        table.add_column(col)
    for m, r in results.items():
        table.add_row(m, f"{r['psnr']:.2f} ± {r['psnr_std']:.2f}", f"{r['ssim']:.4f}", f"{r['seconds_per_image']:.3f}",
                      f"{r['steps']:.1f}" if "steps" in r else "-")
    Console().print(table)
    if figure is not None:
        _save_bench_figure(figure, x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x), recs)
        typer.echo(f"wrote {figure}")
    if json_out is not None:
        doc = {"geometry": g.to_dict(), "n_test": n_test, "seed": seed, "results": results}
        atomic_write_bytes(json_out, json.dumps(doc, indent=2).encode())


@app.command("tune-tv")
def tune_tv(
    n_val: int = typer.Option(16, help="validation phantoms (random ellipses, validation split)"),
    seed: int = typer.Option(0),
    iters: int = typer.Option(500, help="PDHG iterations per reconstruction"),
    refine: int = typer.Option(2, help="refinements of the grid around the best value (factors 10^(1/4), 10^(1/8), ...)"),
    threads: int = typer.Option(0, help="torch CPU threads (0: torch default)"),
    size: int = SizeOpt, angles: int = AnglesOpt, detectors: int = DetOpt, angle_range: float = RangeOpt,
    detector_width: Optional[float] = WidthOpt, fan: bool = FanOpt, source_origin: float = SoOpt,
    origin_detector: float = OdOpt, cache_dir: Optional[Path] = CacheOpt,
) -> None:
    """Choose the TV weight by validation PSNR (log grid 0.1 ... 31.6, then refined); prints the table."""
    from problems.ct.baselines import TVConfig, tune_tv_lambda
    from problems.ct.phantoms import CTDataConfig, make_dataset
    from problems.ct.projector import ct_operator

    if threads > 0:
        torch.set_num_threads(threads)
    g = _geometry(size, angles, detectors, angle_range, detector_width, fan, source_origin, origin_detector)
    if n_val < 1:
        raise UserInputError(f"n_val must be >= 1, got {n_val}")
    data = make_dataset(CTDataConfig(geometry=g, n_train=0, n_val=n_val, n_test=0, seed=seed), cache_dir=cache_dir)
    op = ct_operator(g, cache_dir=cache_dir)
    best, table = tune_tv_lambda(data.val.images, data.val.sinograms, op, config=TVConfig(n_iter=iters),
                                 refine=refine)
    for lam in sorted(table):
        typer.echo(f"lam {lam:8.4f}: validation PSNR {table[lam]:.3f} dB" + ("  <- best" if lam == best else ""))
    typer.echo(f"best lam = {best:.4g} ({n_val} validation phantoms, {iters} PDHG iterations)")
