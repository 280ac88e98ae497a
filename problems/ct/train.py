"""Training of the CT F-FPN and of the unrolled baseline, for many geometries and noise levels at once, with the
toolbox's one training loop, :class:`fpntools.training.Trainer`.

Data (:class:`CTSimulationSource`). A pool of ``epoch_size`` images is drawn once from the training mixture
(:func:`problems.ct.images.sample_mixture`: random crops of the natural images of ``train400`` with random
rescaling and intensity windows, CT-like phantoms with a bone rim, low-contrast inclusions, thin structures and
texture, random ellipses), generated in parallel worker processes from per-chunk seeds (the pool is the same for
any number of workers). Every batch then takes its images from the pool (the trainer shuffles the order each
epoch) with a random flip / quarter turn each, one random geometry of :data:`TRAIN_GEOMETRIES` (parallel beam with
15 to 90 angles, fan beam with 30 to 90 angles over a full turn), a relative noise level per image drawn
log-uniformly from ``[noise_min, noise_max]`` and standard normal noise; the loss (:func:`ct_loss`) simulates the
sinograms on the training device, ``y = A x + noise RMS(A x) e``, with the operator of the batch's geometry, and
the network sees the noise level :func:`~problems.ct.acquisition.estimate_noise` reads from ``y`` (as a user
without a ``--noise`` gets). All randomness comes from the trainer's per-batch generator: runs are reproducible
and resume exactly.

Recipe: Adam on the mean squared error, cosine learning-rate schedule, gradient norm clipped, validation PSNR
(mean over the validation sets of :func:`validation_images` at the geometries of :data:`VALIDATION_GEOMETRIES`)
after every epoch, the weights of the best validation epoch kept (``select_metric="val_psnr"``), a time budget.
Validation images are never test images: BSD68 validation half, Shepp-Logan variants (not the standard one),
ellipses and CT-like phantoms from seeds of their own.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from fpntools.errors import UserInputError
from fpntools.metrics import psnr
from fpntools.solve_config import SolveConfig
from fpntools.training import Trainer, TrainerConfig, TrainResult, resolve_device
from fpntools.training.trainer import print_to_stderr
from problems.ct.acquisition import Acquisition, acquisition, estimate_noise
from problems.ct.ffpn import MODEL_KINDS, FFPN, FFPNConfig, build_model, default_solve
from problems.ct.geometry import CTGeometry

__all__ = [
    "TRAIN_GEOMETRIES",
    "VALIDATION_GEOMETRIES",
    "geometry_by_name",
    "train_geometries",
    "validation_geometries",
    "TrainConfig",
    "CTSimulationSource",
    "make_image_pool",
    "validation_images",
    "ValidationSet",
    "simulate_batch",
    "ct_loss",
    "train",
    "train_summary",
]


def _detectors(size: int) -> int:
    """Odd detector count covering the image diagonal: 183 for 128 x 128 images."""
    return 2 * math.ceil(size * math.sqrt(2) / 2) + 1


def _parallel(n_angles: int, size: int = 128) -> CTGeometry:
    return CTGeometry(image_size=size, n_angles=n_angles, n_detectors=_detectors(size))


def _fan(n_angles: int, size: int = 128) -> CTGeometry:
    return CTGeometry.fan(2.0 * size, 2.0 * size, image_size=size, n_angles=n_angles, n_detectors=_detectors(size))


def train_geometries(size: int = 128) -> tuple[CTGeometry, ...]:
    """Geometries of training for ``size x size`` images: parallel beam (``2 ceil(size / sqrt 2) + 1`` detectors
    of width 1, angles in ``[0, pi)``) with 15 ... 90 angles, fan beam (flat detector, source-axis and
    axis-detector distances ``2 size``, angles over a full turn) with 30 ... 90 angles. The angle counts divide
    180, so every matrix is a row subset of the 180-angle one."""
    return tuple([_parallel(k, size) for k in (15, 20, 30, 45, 60, 90)] + [_fan(k, size) for k in (30, 45, 60, 90)])


def validation_geometries(size: int = 128) -> tuple[CTGeometry, ...]:
    """Geometries of validation and of ``ct bench``: parallel beam with 20, 30, 60 angles, fan beam with 60."""
    return (_parallel(20, size), _parallel(30, size), _parallel(60, size), _fan(60, size))


#: :func:`train_geometries` of 128 x 128 images.
TRAIN_GEOMETRIES: tuple[CTGeometry, ...] = train_geometries(128)
def geometry_by_name(name: str, size: int = 128) -> CTGeometry:
    """``"par30"`` -> parallel beam with 30 angles, ``"fan60"`` -> the fan beam of training with 60 angles
    (``ValueError`` naming the accepted forms otherwise)."""
    for prefix, make in (("par", _parallel), ("fan", _fan)):
        if name.startswith(prefix) and name[len(prefix):].isdigit() and int(name[len(prefix):]) >= 1:
            return make(int(name[len(prefix):]), size)
    raise ValueError(f"unknown geometry {name!r}: use parN (parallel beam, N angles) or fanN (fan beam, N angles)")


#: :func:`validation_geometries` of 128 x 128 images (those of ``ct bench``).
VALIDATION_GEOMETRIES: tuple[CTGeometry, ...] = validation_geometries(128)


# ============================================================================================ config
@dataclass
class TrainConfig:
    """Training settings (the trainer's, the data's).

    Attributes:
        model: ``"ffpn"`` (fixed point, JFB / implicit gradients) or ``"unrolled"``.
        epochs, batch_size, lr: Adam with learning rate ``lr`` and a cosine schedule down to ``lr * lr_min_ratio``.
        grad_clip: clip the gradient norm (``0`` disables).
        epoch_size: images in the training pool (one epoch visits each once, with a fresh geometry, noise level
            and orientation each time).
        n_val: validation images per validation set (see :func:`validation_images`).
        noise_min, noise_max: range of the relative noise level (log-uniform).
        image_size: side of the training images (the geometries are :func:`train_geometries` of it).
        natural, rich, ellipses: weights of the training mixture (natural-image crops, CT-like phantoms, ellipses).
        natural_images: the natural training images (a folder of PNGs or a ``.npy`` file; default
            ``train400`` of the shared natural-image folder; missing: the natural weight goes to the phantoms).
        validation_file: a ``.npz`` of validation images written by :func:`save_validation_images` (default: built
            from the shared BSD68 folder and the generators).
        workers: processes generating the image pool (``0``: in this process).
        init: weights (``.safetensors`` of :func:`~problems.ct.weights.save_weights`, same kind and architecture)
            to start from instead of a random initialisation (fine-tuning).
        seed: pool, initialisation and sample-order seed.
        max_minutes: stop (with a checkpoint) once this much wall time has passed (``0``: no limit).
        max_steps: stop (with a checkpoint) after this many optimizer steps (``None``: no limit).
        device: ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``.
        run_dir, resume, force, progress: the trainer's run folder options.
    """

    model: str = "ffpn"
    epochs: int = 10
    batch_size: int = 8
    lr: float = 2e-3
    lr_min_ratio: float = 0.05
    grad_clip: float = 1.0
    epoch_size: int = 256
    n_val: int = 8
    noise_min: float = 0.005
    noise_max: float = 0.03
    image_size: int = 128
    natural: float = 0.5
    rich: float = 0.35
    ellipses: float = 0.15
    natural_images: str | None = None
    validation_file: str | None = None
    workers: int = 0
    init: str | None = None
    seed: int = 0
    max_minutes: float = 0.0
    max_steps: int | None = None
    device: str = "auto"
    run_dir: str | None = None
    resume: bool = False
    force: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if self.model not in MODEL_KINDS:
            raise UserInputError(f"model must be 'ffpn' or 'unrolled', got {self.model!r}")
        for name in ("epoch_size", "n_val"):
            if getattr(self, name) < 1:
                raise UserInputError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.noise_min <= self.noise_max < 1:
            raise UserInputError(f"need 0 < noise_min <= noise_max < 1, got {self.noise_min}, {self.noise_max}")
        if min(self.natural, self.rich, self.ellipses) < 0 or self.natural + self.rich + self.ellipses <= 0:
            raise UserInputError("the mixture weights natural, rich, ellipses must be >= 0 and not all 0")
        if not 8 <= self.image_size <= 1024:
            raise UserInputError(f"image_size must lie in [8, 1024], got {self.image_size}")
        if self.workers < 0:
            raise UserInputError(f"workers must be >= 0, got {self.workers}")
        self.trainer_config()  # the trainer checks its own fields (one-line errors)

    def trainer_config(self) -> TrainerConfig:
        """The :class:`~fpntools.training.TrainerConfig` of this recipe."""
        return TrainerConfig(
            epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, optimizer="adam", schedule="cosine",
            lr_min_ratio=self.lr_min_ratio, grad_clip=self.grad_clip or None, seed=self.seed, device=self.device,
            run_dir=self.run_dir, resume=self.resume, force=self.force, max_minutes=self.max_minutes,
            max_steps=self.max_steps, select_metric="val_psnr", select_mode="max", progress=self.progress,
        )


# ============================================================================================ training data
def _pool_chunk(args: tuple[Any, ...]) -> np.ndarray:
    from problems.ct.images import MixtureConfig, sample_mixture

    weights, n, seed, chunk, natural, size = args
    cfg = MixtureConfig(natural=weights[0], rich=weights[1], ellipses=weights[2], size=size)
    rng = np.random.default_rng(np.random.SeedSequence([seed, chunk]))
    return sample_mixture(cfg, n, rng, natural).astype(np.float16)


def _load_natural(path: str | None) -> Any:
    from problems.ct.images import load_image_set, natural_images_root

    if path is not None:
        return load_image_set(path)
    root = natural_images_root()
    if root is None or not (root / "train400").is_dir():
        return None
    return load_image_set(root / "train400")


def make_image_pool(n: int, weights: tuple[float, float, float], seed: int, natural: Any = None,
                    workers: int = 0, chunk: int = 64, size: int = 128) -> Tensor:
    """``(n, size, size)`` float16 images of the training mixture (``weights`` = natural, rich, ellipses), in
    chunks of ``chunk`` images seeded ``(seed, chunk index)``: the same pool for any number of ``workers``."""
    jobs = [(weights, min(chunk, n - i), seed, k, natural, size) for k, i in enumerate(range(0, n, chunk))]
    if workers > 0 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=workers) as ex:
            parts = list(ex.map(_pool_chunk, jobs))
    else:
        parts = [_pool_chunk(j) for j in jobs]
    return torch.from_numpy(np.concatenate(parts))


class CTSimulationSource:
    """The trainer's :class:`~fpntools.training.BatchSource` of CT training batches (module docstring).

    ``batch(idx, generator) -> (images (B, n, n), e (B, n_angles, n_detectors) standard normal, noise (B,),
    geometry index)``; the sinograms are simulated on the training device by :func:`simulate_batch`.
    """

    def __init__(self, pool: Tensor, geometries: Sequence[CTGeometry] = TRAIN_GEOMETRIES,
                 noise_range: tuple[float, float] = (0.005, 0.03)) -> None:
        self.pool = pool
        self.geometries = tuple(geometries)
        self.noise_range = noise_range

    def __len__(self) -> int:
        return int(self.pool.shape[0])

    def batch(self, idx: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor, int]:
        x = self.pool[idx].float()
        b = x.shape[0]
        k = torch.randint(4, (b,), generator=generator)
        flip = torch.rand(b, generator=generator) < 0.5
        x = torch.stack([torch.rot90(xi.flip(-1) if f else xi, int(ki), dims=(-2, -1))
                         for xi, ki, f in zip(x, k, flip)])
        gi = int(torch.randint(len(self.geometries), (1,), generator=generator))
        lo, hi = math.log(self.noise_range[0]), math.log(self.noise_range[1])
        noise = torch.exp(lo + (hi - lo) * torch.rand(b, generator=generator))
        e = torch.randn((b, *self.geometries[gi].sino_shape), generator=generator)
        return x.contiguous(), e, noise, gi


def simulate_batch(x: Tensor, e: Tensor, noise: Tensor, acq: Acquisition) -> Tensor:
    """``y = A x + noise RMS(A x) e`` per image, on the device of ``x``."""
    with torch.no_grad():
        clean = acq.op(x)
        rms = clean.flatten(1).pow(2).mean(dim=1).sqrt()
        return clean + (noise * rms).view(-1, 1, 1) * e


class _Loss:
    """``loss_fn(model, batch)`` of the trainer: simulate, reconstruct, mean squared error (picklable state:
    the geometries; acquisitions are memoised per device)."""

    def __init__(self, geometries: Sequence[CTGeometry]) -> None:
        self.geometries = tuple(geometries)

    def __call__(self, model: FFPN, batch: tuple[Tensor, Tensor, Tensor, int]) -> tuple[Tensor, dict[str, float]]:
        x, e, noise, gi = batch
        acq = acquisition(self.geometries[int(gi)], device=x.device)
        return ct_loss(model, x, simulate_batch(x, e, noise, acq), acq)


def ct_loss(model: FFPN, x: Tensor, y: Tensor, acq: Acquisition, noise: Tensor | None = None
            ) -> tuple[Tensor, dict[str, float]]:
    """Mean squared error of the reconstructions of ``y`` to ``x`` (noise level estimated when ``None``), with the
    batch PSNR and the mean solver steps as metrics."""
    u, info = model(y, acq, noise=noise)
    loss = torch.mean((u - x) ** 2)
    mse = float(loss.detach())
    return loss, {"psnr": -10 * math.log10(max(mse, 1e-12)), "steps": float(info.steps.double().mean())}


# ============================================================================================ validation
def validation_images(n: int = 8, seed: int = 1, root: Any = None, size: int = 128) -> dict[str, np.ndarray]:
    """Validation sets ``{name: (k, size, size) float32}``: ``bsd68-val`` (crops of the BSD68 validation half,
    skipped when the natural images are absent), ``ct-like`` (CT-like slices of a generator distinct from the
    training one), ``shepp-logan-variants`` (rotated / shifted / rescaled Shepp-Logan, never the standard one) and
    ``ellipses`` (random ellipses of a validation seed)."""
    from problems.ct.images import bsd68_crops, ct_like_validation, natural_images_root, shepp_logan_variants
    from problems.ct.phantoms import random_ellipses

    sets: dict[str, np.ndarray] = {}
    root = root if root is not None else natural_images_root()
    if root is not None and (Path(root) / "BSD68").is_dir():
        sets["bsd68-val"] = bsd68_crops("validation", n, size, seed=seed, root=root).astype(np.float32)
    sets["ct-like"] = ct_like_validation(n, size, seed=seed).astype(np.float32)
    sets["shepp-logan-variants"] = shepp_logan_variants(max(1, n // 2), size, np.random.default_rng(seed)).astype(
        np.float32)
    sets["ellipses"] = random_ellipses(max(1, n // 2), size, seed=10_000 + seed).astype(np.float32)
    return sets


def save_validation_images(path: str | os.PathLike, n: int = 8, seed: int = 1) -> None:
    """Write :func:`validation_images` to a ``.npz`` (for training machines without the shared data)."""
    from fpntools.atomic_io import atomic_write

    sets = validation_images(n, seed)
    atomic_write(Path(path), lambda fh: np.savez(fh, **sets))


def _load_validation(cfg: TrainConfig) -> dict[str, np.ndarray]:
    if cfg.validation_file is None:
        return validation_images(cfg.n_val, size=cfg.image_size)
    try:
        with np.load(cfg.validation_file) as z:
            sets = {k: z[k][: cfg.n_val].astype(np.float32) for k in z.files}
    except (OSError, ValueError) as exc:
        raise UserInputError(f"cannot read validation file {cfg.validation_file}: {exc}") from None
    bad = [k for k, v in sets.items() if v.ndim != 3 or v.shape[1:] != (cfg.image_size, cfg.image_size)]
    if bad:
        raise UserInputError(f"validation file {cfg.validation_file}: sets {bad} are not (n, {cfg.image_size}, "
                             f"{cfg.image_size}) images")
    return sets


@dataclass
class ValidationSet:
    """Simulated validation sinograms at fixed geometries and noise levels (seeded), with the reference
    reconstructions cached after the first evaluation (they have no parameters)."""

    images: dict[str, np.ndarray]
    geometries: Sequence[CTGeometry] = VALIDATION_GEOMETRIES
    noise_range: tuple[float, float] = (0.005, 0.03)
    seed: int = 1
    _cache: dict[tuple, tuple[Tensor, Tensor, Tensor, Tensor]] = field(default_factory=dict, repr=False)

    def _data(self, name: str, gi: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        key = (name, gi, str(device))
        if key not in self._cache:
            g = self.geometries[gi]
            x = torch.from_numpy(self.images[name]).to(device)
            gen = torch.Generator().manual_seed(self.seed * 1000 + gi)
            lo, hi = math.log(self.noise_range[0]), math.log(self.noise_range[1])
            noise = torch.exp(lo + (hi - lo) * torch.rand(x.shape[0], generator=gen)).to(device)
            e = torch.randn((x.shape[0], *g.sino_shape), generator=gen).to(device)
            y = simulate_batch(x, e, noise, acquisition(g, device=device))
            self._cache[key] = (x, y, estimate_noise(y), None)  # type: ignore[assignment]
        return self._cache[key][:3]

    @torch.no_grad()
    def evaluate(self, model: FFPN, batch_size: int = 32) -> dict[str, float]:
        """``val_psnr`` (mean over sets and geometries) and ``val_psnr_<set>`` (mean over geometries)."""
        dev = next(model.parameters()).device
        per_set: dict[str, list[float]] = {}
        steps = []
        for name in self.images:
            for gi, g in enumerate(self.geometries):
                x, y, nz = self._data(name, gi, dev)
                acq = acquisition(g, device=dev)
                key = (name, gi, str(dev))
                ref = self._cache[key][3]
                if ref is None and model.T.uses_reference:
                    ref = torch.cat([model.T.reference_image(y[i:i + batch_size], acq, nz[i:i + batch_size])
                                     for i in range(0, y.shape[0], batch_size)])
                    self._cache[key] = (x, y, nz, ref)
                ps = []
                for i in range(0, y.shape[0], batch_size):
                    u, info = model(y[i:i + batch_size], acq, noise=nz[i:i + batch_size],
                                    reference=None if ref is None else ref[i:i + batch_size])
                    ps.append(psnr(u, x[i:i + batch_size]).cpu())
                    steps.append(float(info.steps.double().mean()))
                per_set.setdefault(name, []).append(float(torch.cat(ps).mean()))
        out = {"val_psnr": float(np.mean([np.mean(v) for v in per_set.values()])),
               "val_steps": float(np.mean(steps))}
        out.update({f"val_psnr_{k}": float(np.mean(v)) for k, v in per_set.items()})
        return out


# ============================================================================================ train
def train(
    config: TrainConfig | None = None,
    model_config: FFPNConfig | None = None,
    solve: SolveConfig | None = None,
    geometries: Sequence[CTGeometry] | None = None,
    log: Callable[[str], None] | None = print_to_stderr,
) -> tuple[FFPN, TrainResult]:
    """Train an F-FPN (or the unrolled baseline) with :class:`fpntools.training.Trainer`; returns ``(model with
    the weights of the best validation epoch, the trainer's result)``.

    ``solve``: the :class:`fpntools.SolveConfig` (default :func:`~problems.ct.ffpn.default_solve` of the kind).
    ``geometries``: default :func:`train_geometries` of ``config.image_size``; validation runs at
    :func:`validation_geometries` of it.
    Epoch records hold ``epoch``, ``train_loss``, ``train_psnr``, ``train_steps``, ``lr``, ``seconds``,
    ``steps``, ``val_psnr``, ``val_steps`` and ``val_psnr_<set>``.
    """
    cfg = config or TrainConfig()
    geometries = tuple(geometries) if geometries is not None else train_geometries(cfg.image_size)
    mcfg = model_config or FFPNConfig()
    solve = solve if solve is not None else default_solve(cfg.model)
    tcfg = cfg.trainer_config()
    tcfg.check_run_folder()
    device = resolve_device(cfg.device)
    say = log or (lambda _m: None)
    weights = (cfg.natural, cfg.rich, cfg.ellipses)
    natural = _load_natural(cfg.natural_images) if cfg.natural > 0 else None
    if natural is None and cfg.natural > 0:
        say("natural training images not found: their share of the mixture goes to the phantoms")
    t0 = time.perf_counter()
    pool = make_image_pool(cfg.epoch_size, weights, cfg.seed, natural, cfg.workers, size=cfg.image_size)
    say(f"training pool: {pool.shape[0]} images in {time.perf_counter() - t0:.1f} s")
    val = ValidationSet(_load_validation(cfg), validation_geometries(cfg.image_size),
                        noise_range=(cfg.noise_min, cfg.noise_max))
    for g in set(geometries) | set(val.geometries):
        acquisition(g, device=device)  # read / export the matrices before the clock of the first epoch
    torch.manual_seed(cfg.seed)  # the initial weights
    try:
        model = build_model(cfg.model, mcfg, solve)
    except ValueError as exc:
        raise UserInputError(str(exc)) from None
    if cfg.init is not None:
        from problems.ct.weights import load_model

        start, _ = load_model(cfg.init, kind=cfg.model)
        if start.config != mcfg:
            raise UserInputError(f"--init {cfg.init} has another architecture than this run: {start.config}")
        model.load_state_dict(start.state_dict())
        say(f"starting from the weights {cfg.init}")
    model = model.to(device)
    run_config = {
        "model": cfg.model,
        "model_config": mcfg.to_dict(),
        "solve_config": solve.to_dict(),
        "geometries": [g.to_dict() for g in geometries],
        "data": {k: getattr(cfg, k) for k in ("epoch_size", "n_val", "noise_min", "noise_max", "natural", "rich",
                                                "ellipses", "seed")},
        "init": cfg.init,
    }
    source = CTSimulationSource(pool, geometries, (cfg.noise_min, cfg.noise_max))
    trainer = Trainer(model, _Loss(geometries), source, tcfg, evaluate=lambda m: val.evaluate(m, cfg.batch_size),
                      run_config=run_config, log=log)
    result = trainer.fit()
    return model, result


def train_summary(config: TrainConfig, result: TrainResult, geometries: Sequence[CTGeometry] | None = None
                  ) -> dict[str, Any]:
    """What the weights' metadata records about the training run."""
    geometries = tuple(geometries) if geometries is not None else train_geometries(config.image_size)
    return {"history": result.history, "train_config": dataclasses.asdict(config), "best_epoch": result.best_epoch,
            "completed": result.completed, "geometries": [g.to_dict() for g in geometries],
            "noise_range": [config.noise_min, config.noise_max]}
