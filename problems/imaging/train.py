"""Train the shipped DEQ decoder and its amortised encoder on corrupted patches (implicit gradients), with the
toolbox's one training loop :class:`fpntools.training.Trainer`.

``fpntools imaging train --minutes 45 --run-dir runs/decoder --out w.safetensors``

Each clean patch ``p`` is corrupted by :func:`corrupt` (Gaussian noise of a random level, and for some
patches missing 8x8 blocks); with ``y, m, sigma`` the observation, mask and level the loss per batch is
``mean ||h(z*(E(y, m, sigma))) - p||^2 + latent_weight * mean ||E(y, m, sigma)||^2`` (the latent penalty
keeps latents on a fixed scale), ``z*`` solved and differentiated as the decoder's :class:`fpntools.SolveConfig`
says. Patches and corruptions come from :class:`PatchSource`, a :class:`fpntools.training.BatchSource`: every
sample is drawn from a generator seeded by the trainer's (seed, epoch, batch) and the sample's index, so a run
is reproducible, ``--resume`` continues it exactly, and data-parallel processes draw disjoint samples whose
union is the single-process batch. The run folder holds ``config.json``, ``history.json`` and the checkpoint;
the weights file (``--out``) is written at the end.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

import fpntools
from fpntools.augmented import AugmentedMap, AugmentedResult, augmented_solve
from fpntools.errors import UserInputError
from fpntools.metrics import psnr
from fpntools.training import Trainer, TrainerConfig
from problems.imaging.data import (
    TEST_IMAGES,
    PatchSampler,
    center_crop,
    load_image,
    load_training_images,
    split_train_validation,
)
from problems.imaging.model import ACTIVATIONS, DEFAULT_SOLVE, DecoderConfig, DEQDecoder, load_decoder, save_decoder
from problems.imaging.tasks import LatentProblem, TaskConfig, joint_config, lam_for_sigma

__all__ = [
    "TrainConfig", "Corruption", "corrupt", "PatchSource", "decoder_loss", "heldout_psnr", "JointBatch",
    "joint_batch_loss", "train_decoder", "TrainOutcome", "NATURAL_CORRUPTION", "ValidationSet", "VALIDATION_SIGMAS",
]


@dataclass
class TrainConfig:
    """The training recipe (everything that shapes the trajectory) and the run control.

    Recipe: batches of ``batch`` random ``patch x patch`` patches; Adam at ``lr``, multiplied by 0.1 once
    ``lr_drop`` of the run has passed (of the ``steps`` batches, or of the ``minutes`` budget when that ends the
    run first); gradient norm clipped at ``grad_clip``; loss ``mse + latent_weight * mean ||E(.)||^2`` plus the
    Jacobian penalty of the decoder's :class:`fpntools.SolveConfig` (``solve.jacobian``: ``weight *
    ||J_f(z*)||_F^2 / N``, Bai, Koltun, Kolter 2021; one Hutchinson sample, applied with probability ``prob``
    per batch), which keeps the equilibrium easy to solve. ``activation`` (with ``init``) switches the loaded
    weights to another activation before fine-tuning.

    Training through the joint fixed point (Gurumurthy et al.): a fraction ``joint_fraction`` of the batches are
    inpainting observations (every patch has missing blocks, no noise) restored by the augmented solve itself --
    the latent problem of :mod:`problems.imaging.tasks` with the prior weight of noiseless inpainting, started at
    the encoder's estimate, ``joint_iters`` joint iterations after the settle stage -- and the loss is
    ``mean ||h(z_K) - p||^2`` of the joint solve's end point, differentiated by ``joint_backward`` (``"jfb"``:
    one differentiated application of the joint map; ``"implicit"``: the implicit backward of the joint fixed
    point, second order). The decoder learns latent problems that the joint solve finishes in ``joint_iters``.

    ``data``: the training images, ``"scikit"`` (the scikit-image pictures of the first shipped weights, with
    :class:`Corruption`'s defaults), ``"train400"`` (the standard set from ``data_root``, default
    ``../shared/data/natural-images``) or a ``.npy`` stack of it; the natural sets train on all but their last
    :data:`problems.imaging.data.VALIDATION_COUNT` images with :data:`NATURAL_CORRUPTION`, and the held-out ones
    choose the best epoch (``val_psnr``, amortised restoration at sigma 25/255).

    Run control (not part of the recipe): ``data_root``, ``minutes`` (wall-clock budget of this invocation; 0: none),
    ``epoch_batches`` (batches per epoch, one progress line and one checkpoint each: the divisor of ``steps``
    closest to it from below, :func:`epoch_length`), ``threads``, ``device``.
    """

    patch: int = 32
    batch: int = 32
    lr: float = 2e-3
    minutes: float = 8.0
    steps: int = 2000
    lr_drop: float = 0.85
    grad_clip: float = 1.0
    latent_weight: float = 1e-3
    seed: int = 0
    threads: int = 1
    init: str | None = None
    activation: str | None = None
    joint_fraction: float = 0.0
    joint_iters: int = 50
    joint_backward: str = "jfb"
    joint_residual_weight: float = 0.0
    epoch_batches: int = 100
    device: str = "cpu"
    data: str = "scikit"
    data_root: str | None = None

    def __post_init__(self) -> None:
        for name in ("patch", "batch", "steps", "epoch_batches", "threads", "joint_iters"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise UserInputError(f"{name} must be a positive integer, got {v!r}")
        if self.patch % 4 or self.patch < 8:
            raise UserInputError(f"patch must be a multiple of 4 and at least 8, got {self.patch}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise UserInputError(f"lr must be a positive number, got {self.lr}")
        if not (math.isfinite(self.minutes) and self.minutes >= 0):
            raise UserInputError(f"minutes must be a nonnegative number (0: no budget), got {self.minutes}")
        if not 0.0 < self.lr_drop <= 1.0:
            raise UserInputError(f"lr_drop must lie in (0, 1] (1: never), got {self.lr_drop}")
        if not 0.0 <= self.joint_fraction <= 1.0:
            raise UserInputError(f"joint_fraction must lie in [0, 1], got {self.joint_fraction}")
        if not self.joint_residual_weight >= 0:
            raise UserInputError(f"joint_residual_weight must be nonnegative, got {self.joint_residual_weight}")
        if self.joint_backward not in ("jfb", "implicit"):
            raise UserInputError(f"joint_backward must be 'jfb' or 'implicit', got {self.joint_backward!r}")
        if self.activation is not None and self.activation not in ACTIVATIONS:
            raise UserInputError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}")

    def recipe(self) -> dict:
        """The fields that shape the trajectory (checked on ``--resume``): all but the run control."""
        control = {"minutes", "threads", "epoch_batches", "device", "data_root"}
        return {k: v for k, v in asdict(self).items() if k not in control}


@dataclass(frozen=True)
class Corruption:
    """Training corruptions: with probability ``p_clean`` a patch is clean (latent fitting), otherwise noisy
    with ``sigma ~ U(0, sigma_max)``; independently, with probability ``p_mask`` a random ``fraction`` in
    ``fraction_range`` of the ``block x block`` cells (random grid offset) is missing, and with probability
    ``p_pixels`` a random fraction in ``pixel_range`` of the pixels (``p_pixels = 0`` draws nothing, so the
    streams of the first recipe are unchanged)."""

    p_clean: float = 0.15
    sigma_max: float = 0.5
    p_mask: float = 0.35
    block: int = 8
    fraction_range: tuple[float, float] = (0.1, 0.4)
    p_pixels: float = 0.0
    pixel_range: tuple[float, float] = (0.4, 0.85)


NATURAL_CORRUPTION = Corruption(p_clean=0.05, sigma_max=50 / 255, p_mask=0.25, fraction_range=(0.1, 0.5),
                                p_pixels=0.2, pixel_range=(0.3, 0.9))
"""Corruptions of the natural-image recipe: noise ``sigma ~ U(0, 50/255)`` (95% of the patches), a quarter with
10-50% of the 8x8 cells missing, a fifth (independently) with 30-90% of the pixels missing; the benchmark's
levels (15, 25, 50) and masks (25 / 50% blocks, 50 / 80% pixels) lie inside these ranges."""


def corrupt(p: Tensor, rng: np.random.Generator, c: Corruption = Corruption()) -> tuple[Tensor, Tensor, Tensor]:
    """Observations ``(y, mask, sigma)`` for clean patches ``p`` ``(B, 1, S, S)``; missing pixels of ``y`` are 0."""
    b, _, h, w = p.shape
    sigma = np.where(rng.random(b) < c.p_clean, 0.0, rng.uniform(0, c.sigma_max, b))
    mask = np.ones((b, 1, h, w), dtype=np.float32)
    for k in np.flatnonzero(rng.random(b) < c.p_mask):
        gh, gw = h // c.block + 2, w // c.block + 2
        cells = rng.random((gh, gw)) < rng.uniform(*c.fraction_range)
        full = np.kron(cells, np.ones((c.block, c.block)))
        i, j = rng.integers(c.block), rng.integers(c.block)
        mask[k, 0] = 1.0 - full[i : i + h, j : j + w]
    if c.p_pixels > 0:
        for k in np.flatnonzero(rng.random(b) < c.p_pixels):
            mask[k, 0] *= rng.random((h, w)) >= rng.uniform(*c.pixel_range)
    s = torch.as_tensor(sigma, dtype=p.dtype)
    m = torch.from_numpy(mask).to(p.dtype)
    noise = torch.from_numpy(rng.standard_normal(p.shape)).to(p.dtype)
    return (p + s.view(-1, 1, 1, 1) * noise) * m, m, s


@dataclass
class JointBatch:
    """Loss terms of a batch restored by the joint solve: ``mse`` of ``h(z_K)`` against the clean patches, the
    Jacobian penalty (or ``None``), the squared joint residual ``||G(s_K) - s_K||^2 / N`` at the end state (or
    ``None`` when not asked for), the joint steps taken and the solve's :class:`AugmentedResult` (residuals at
    the end state)."""

    mse: Tensor
    jacobian_loss: Tensor | None
    residual_loss: Tensor | None
    steps: int
    result: AugmentedResult


def joint_batch_loss(
    model: DEQDecoder, p: Tensor, y: Tensor, m: Tensor, cfg: TrainConfig, penalty=None
) -> JointBatch:
    """Loss terms of one batch restored by the augmented joint solve (noiseless inpainting observations ``y``,
    known pixels ``m``, clean patches ``p``).

    The prior is centred on the encoder's (detached) estimate with weight ``lam_for_sigma(0)``; gradients reach
    the decoder through ``cfg.joint_backward``. With ``cfg.joint_residual_weight > 0`` the joint map ``G`` is
    applied once more at the (detached) end state ``s_K = (z, x, mu)``, differentiably in the weights, and
    ``||G(s_K) - s_K||^2 / N`` (DEQ, adjoint and ``alpha``-scaled input-gradient residuals) is returned: a
    penalty on joint solves that have not converged after ``joint_iters`` iterations."""
    with torch.no_grad():
        x_hat = model.encode(y, m, 0.0)
    task = TaskConfig(lam=lam_for_sigma(0.0))
    prob = LatentProblem(model, y, m, lam=task.lam, x_prior=x_hat)
    backward = fpntools.Implicit(tol=1e-4, max_iter=50) if cfg.joint_backward == "implicit" else "jfb"
    solver_cfg = replace(joint_config(task, inpainting=True), max_iter=cfg.joint_iters, backward=backward,
                         jacobian_penalty=penalty)
    alpha = solver_cfg.step_size
    res = augmented_solve(prob.f, prob.loss, x_hat, prob.z0(x_hat), None, solver_cfg)
    mse = ((model.head(res.z) - p) ** 2).mean()
    residual = None
    if cfg.joint_residual_weight > 0:
        z, x, mu = res.z.detach(), res.x.detach(), res.mu.detach()
        ev = AugmentedMap(prob.f, prob.loss, alpha).evaluate(z, x, mu)
        sq = (ev.fz - z).pow(2).sum() + (ev.mu_next - mu).pow(2).sum() + (alpha * ev.grad_x).pow(2).sum()
        residual = cfg.joint_residual_weight * sq / z.numel()
    return JointBatch(mse, res.jacobian_loss, residual, int(res.info.steps.max()), res)


class PatchSource:
    """Corrupted training patches as a :class:`fpntools.training.BatchSource`.

    ``len`` is the number of samples per epoch (``epoch_batches * batch``); ``batch(idx, generator)`` draws,
    from the trainer's per-batch ``generator``, a 62-bit batch seed and (with ``joint_fraction > 0``) whether the
    whole batch goes through the joint solve; sample ``i`` of ``idx`` is then a patch of :class:`PatchSampler`
    and its corruption (:func:`corrupt`) from ``numpy.random.default_rng([stream, batch seed, i])``.
    ``stream`` separates the streams of successive fine-tuning runs (the steps the ``--init`` weights had seen).
    Returns ``{"p", "y", "m", "s", "joint"}``: clean patches, observations, masks, noise levels, joint flag.
    """

    def __init__(self, images: list[np.ndarray], patch: int, epoch_size: int, joint_fraction: float = 0.0,
                 corruption: Corruption | None = None, stream: int = 0) -> None:
        self.sampler = PatchSampler(images, patch)
        self.epoch_size = int(epoch_size)
        self.joint_fraction = float(joint_fraction)
        self.corruption = corruption or Corruption()
        self.stream = int(stream)

    def __len__(self) -> int:
        return self.epoch_size

    def batch(self, idx: Tensor, generator: torch.Generator) -> dict[str, Any]:
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        joint = self.joint_fraction > 0 and float(torch.rand((), generator=generator)) < self.joint_fraction
        c = replace(self.corruption, p_clean=1.0, p_mask=1.0) if joint else self.corruption
        parts = []
        for i in idx.tolist():
            rng = np.random.default_rng([self.stream, seed, int(i)])
            p = self.sampler.sample(1, rng)
            parts.append((p, *corrupt(p, rng, c)))
        p, y, m, s = (torch.cat([q[k] for q in parts]) for k in range(4))
        return {"p": p, "y": y, "m": m, "s": s, "joint": joint}


VALIDATION_SIGMAS: tuple[float, ...] = (0.0, 15 / 255, 25 / 255, 50 / 255)
"""Noise levels of the natural recipe's validation report (the benchmark's levels and autoencoding)."""


class ValidationSet:
    """Fixed noisy central crops of validation images: ``psnr(model, sigma)`` is the mean PSNR of the amortised
    restoration ``h(z*(E(y, 1, sigma)))`` at level ``sigma`` (noise drawn once per level, seed 0), the decoder in
    eval mode; the natural recipe's per-epoch ``val_psnr`` (sigma 25/255) selects the best epoch."""

    def __init__(self, images: list[np.ndarray], size: int = 96) -> None:
        side = min(size, *(min(im.shape) for im in images)) // 4 * 4
        self.clean = torch.from_numpy(np.stack([center_crop(im, side) for im in images])).float()[:, None]
        self._noisy: dict[float, Tensor] = {}

    def noisy(self, sigma: float) -> Tensor:
        if sigma not in self._noisy:
            g = torch.Generator().manual_seed(0)
            self._noisy[sigma] = self.clean + sigma * torch.randn(self.clean.shape, generator=g)
        return self._noisy[sigma]

    def psnr(self, model: DEQDecoder, sigma: float) -> float:
        was = model.training
        model.eval()
        device = next(model.parameters()).device
        with torch.no_grad():
            y = self.noisy(sigma).to(device)
            z, _ = model.equilibrium(model.encode(y, None, sigma))
            out = model.head(z).clamp(0, 1).cpu().double()
        model.train(was)
        return float(psnr(out, self.clean.double()).mean())


def heldout_psnr(model: DEQDecoder, sigma: float = 0.0, size: int = 96) -> float:
    """Mean PSNR of the amortised restoration ``h(z*(E(y)))`` of the held-out central crops at noise ``sigma``
    (0: autoencoding), ``z*`` by the decoder's own solve in eval mode; a report, never used for selection."""
    was = model.training
    model.eval()
    vals = []
    rng = np.random.default_rng(0)
    device = next(model.parameters()).device
    with torch.no_grad():
        for name in TEST_IMAGES:
            img = center_crop(load_image(name), size)
            t = torch.from_numpy(img + sigma * rng.standard_normal(img.shape)).float()[None, None].to(device)
            x = model.encode(t, None, sigma)
            z, _ = model.equilibrium(x)
            vals.append(float(psnr(np.clip(model.head(z)[0, 0].cpu().numpy(), 0, 1), img)))
    model.train(was)
    return float(np.mean(vals))


def decoder_loss(model: DEQDecoder, batch: dict[str, Any], cfg: TrainConfig) -> tuple[Tensor, dict[str, float]]:
    """Loss and metrics of one batch of :class:`PatchSource` (the trainer's ``loss_fn``).

    Ordinary batch: ``mse + latent_weight * mean ||x_hat||^2 + jacobian_loss`` with ``x_hat = E(y, m, sigma)``
    and ``z*(x_hat)`` by the decoder's solve. Joint batch: ``mse + jacobian_loss + residual_loss`` of
    :func:`joint_batch_loss`. Metrics (batch means; zero where they do not apply): ``mse``, ``joint`` (1 for a
    joint batch), ``joint_mse``, ``fwd_steps`` (the forward solve's steps, ordinary batches), ``joint_steps``,
    ``jac`` (the Jacobian penalty) and ``residual`` (the squared joint residual per entry).
    """
    p, y, m, s = batch["p"], batch["y"], batch["m"], batch["s"]
    if batch["joint"]:
        jb = joint_batch_loss(model, p, y, m, cfg, model.deq.jacobian_penalty)
        extra = [t for t in (jb.jacobian_loss, jb.residual_loss) if t is not None]
        loss = jb.mse + sum(extra) if extra else jb.mse
        residual = 0.0 if jb.residual_loss is None else float(jb.residual_loss.detach()) / cfg.joint_residual_weight
        jac = 0.0 if jb.jacobian_loss is None else float(jb.jacobian_loss.detach())
        mse = float(jb.mse.detach())
        return loss, {"mse": mse, "joint": 1.0, "joint_mse": mse, "fwd_steps": 0.0, "joint_steps": float(jb.steps),
                      "jac": jac, "residual": residual}
    x = model.encode(y, m, s)
    z, info = model.equilibrium(x)
    mse_t = ((model.head(z) - p) ** 2).mean()
    loss = mse_t + cfg.latent_weight * (x**2).mean()
    jac = 0.0
    if info.jacobian_loss is not None:
        loss = loss + info.jacobian_loss
        jac = float(info.jacobian_loss.detach())
    return loss, {"mse": float(mse_t.detach()), "joint": 0.0, "joint_mse": 0.0,
                  "fwd_steps": float(info.steps.max()), "joint_steps": 0.0, "jac": jac, "residual": 0.0}


class _DecoderRun:
    """Trainer hook of the decoder training: the learning-rate drop (x0.1 once ``lr_drop`` of the steps, or of
    this invocation's time budget, has passed; written into the scheduler's base rate too, so the checkpoint keeps
    it), the count of joint batches, the derived epoch metrics (PSNR of the mean MSE per batch kind) and the
    checkpointed state (drop flag, joint batches, seconds trained, the Jacobian penalty's step counter)."""

    def __init__(self, model: DEQDecoder, cfg: TrainConfig) -> None:
        self.model, self.cfg = model, cfg
        self.dropped = False
        self.joint_batches = 0
        self.seconds_before = 0.0
        self._t0 = time.monotonic()

    @property
    def seconds(self) -> float:
        """Seconds trained over all invocations of this run."""
        return self.seconds_before + time.monotonic() - self._t0

    def on_step(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        self.joint_batches += int(round(metrics.get("joint", 0.0)))
        if self.dropped or self.cfg.lr_drop >= 1.0:
            return
        frac = trainer.step / self.cfg.steps
        if self.cfg.minutes > 0:
            frac = max(frac, (time.monotonic() - self._t0) / (60.0 * self.cfg.minutes))
        if frac >= self.cfg.lr_drop:
            self.dropped = True
            lr = self.cfg.lr * 0.1
            for g in trainer.optimizer.param_groups:
                g["lr"] = lr
            trainer.scheduler.base_lrs = [lr] * len(trainer.optimizer.param_groups)

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        joint = record.get("train_joint", 0.0)
        plain_mse = (record.get("train_mse", 0.0) - record.get("train_joint_mse", 0.0)) / max(1e-12, 1.0 - joint)
        if joint < 1.0 and plain_mse > 0:
            record["plain_psnr"] = -10.0 * math.log10(plain_mse)
        if joint > 0 and record.get("train_joint_mse", 0.0) > 0:
            record["joint_psnr"] = -10.0 * math.log10(record["train_joint_mse"] / joint)

    def state_dict(self) -> dict[str, Any]:
        return {"dropped": self.dropped, "joint_batches": self.joint_batches, "seconds": self.seconds,
                "penalty_step": int(self.model.deq.penalty_step)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.dropped = bool(state["dropped"])
        self.joint_batches = int(state["joint_batches"])
        self.seconds_before, self._t0 = float(state["seconds"]), time.monotonic()
        self.model.deq.penalty_step.fill_(int(state["penalty_step"]))


def epoch_length(steps: int, wanted: int) -> int:
    """Batches per epoch: the divisor of ``steps`` closest to ``wanted`` (not above it), so that the run is a
    whole number of epochs and every batch lands in an epoch record."""
    best = 1
    for d in range(1, min(steps, wanted) + 1):
        if steps % d == 0:
            best = d
    return best


@dataclass
class TrainOutcome:
    """What :func:`train_decoder` did: the weights file, the summary written into it, the trainer's result."""

    out: Path
    summary: dict
    result: Any = field(repr=False, default=None)


def _initial_model(cfg: TrainConfig, model_cfg: DecoderConfig) -> tuple[DEQDecoder, int]:
    """A fresh decoder (seeded) or the ``--init`` weights (optionally switched to ``cfg.activation``), and the
    number of steps those weights had seen."""
    torch.manual_seed(cfg.seed)
    if cfg.init is None:
        return DEQDecoder(replace(model_cfg, activation=cfg.activation or model_cfg.activation)), 0
    model = load_decoder(cfg.init)
    if cfg.activation is not None and cfg.activation != model.cfg.activation:
        # fine-tune the same weights under another activation (e.g. relu -> softplus for a smooth decoder)
        state = model.state_dict()
        model = DEQDecoder(replace(model.cfg, activation=cfg.activation))
        model.load_state_dict(state)
    from safetensors import safe_open

    with safe_open(cfg.init, framework="pt") as fh:
        prev = json.loads((fh.metadata() or {}).get("summary", "{}"))
    return model, int(prev.get("total_steps", prev.get("steps", 0)))


def train_decoder(
    cfg: TrainConfig,
    model_cfg: DecoderConfig,
    out: str | Path,
    *,
    solve: fpntools.SolveConfig = DEFAULT_SOLVE,
    run_dir: str | Path | None = None,
    resume: bool = False,
    force: bool = False,
    max_steps: int | None = None,
    log: bool = True,
    corruption: Corruption = Corruption(),
    logger: Callable[[str], None] | None = None,
) -> TrainOutcome:
    """Train the decoder (see the module docstring) and write ``out`` (weights, architecture, ``solve`` and a
    summary with the held-out PSNRs). ``run_dir``: the run folder (checkpoint, ``config.json``,
    ``history.json``); ``resume`` continues its checkpoint, ``force`` starts over; a checkpoint there without
    either is refused. ``max_steps`` stops this invocation after that many steps in total (a budget; the weights
    are written and ``--resume`` continues). ``model_cfg`` is the architecture of a fresh decoder (``cfg.init``
    brings its own)."""
    from fpntools.cli_support import check_output_path
    from fpntools.training.trainer import print_to_stderr

    out = check_output_path(out, (".safetensors",), what="weights file")
    torch.set_num_threads(cfg.threads)
    model, prior_steps = _initial_model(cfg, model_cfg)
    model.set_solve(solve)
    model.train()
    per_epoch = epoch_length(cfg.steps, cfg.epoch_batches)
    natural = cfg.data != "scikit"
    train_images, val_images = split_train_validation(load_training_images(cfg.data, cfg.data_root), cfg.data)
    if natural and corruption == Corruption():
        corruption = NATURAL_CORRUPTION
    source = PatchSource(train_images, cfg.patch, per_epoch * cfg.batch,
                         cfg.joint_fraction, corruption, stream=prior_steps)
    validation = ValidationSet(val_images) if natural else None
    evaluate = None if validation is None else (lambda m: {"val_psnr": validation.psnr(m, 25 / 255)})
    tcfg = TrainerConfig(
        epochs=cfg.steps // per_epoch, batch_size=cfg.batch, lr=cfg.lr, optimizer="adam", grad_clip=cfg.grad_clip,
        seed=cfg.seed, device=cfg.device, run_dir=None if run_dir is None else str(run_dir), resume=resume,
        force=force, max_minutes=cfg.minutes, max_steps=max_steps, progress=log,
        select_metric="val_psnr" if natural else None,
    )
    run_config = {"recipe": cfg.recipe(), "decoder": asdict(model.cfg), "solve": solve.to_dict(),
                  "corruption": asdict(corruption), "prior_steps": prior_steps}
    hook = _DecoderRun(model, cfg)
    trainer = Trainer(model, lambda m, b: decoder_loss(m, b, cfg), source, tcfg, hooks=[hook], evaluate=evaluate,
                      run_config=run_config, log=(logger or print_to_stderr) if log else None)
    result = trainer.fit()
    model = trainer.model
    summary = {
        "steps": result.steps, "total_steps": prior_steps + result.steps, "patches": result.steps * cfg.batch,
        "joint_batches": hook.joint_batches, "seconds": round(hook.seconds, 1), "stop_reason": result.stop_reason,
        "train": asdict(cfg), "corruption": asdict(corruption),
    }
    if trainer.ctx.is_main and validation is not None:
        summary["best_epoch"] = getattr(result, "best_epoch", None)
        summary["validation_psnr"] = {f"sigma={round(s * 255)}/255": round(validation.psnr(model, s), 2)
                                      for s in VALIDATION_SIGMAS}
        save_decoder(model, out, {"summary": summary})
    elif trainer.ctx.is_main:
        summary["heldout_psnr"] = {f"sigma={s}": round(heldout_psnr(model, s), 2) for s in (0.0, 0.2, 0.4)}
        save_decoder(model, out, {"summary": summary})
    return TrainOutcome(out, summary, result)




def train_command(*, run_dir: str | Path, out: str | Path | None, channels: int, latent_channels: int,
                  encoder_width: int, jac_weight: float, jac_prob: float, resume: bool, force: bool,
                  activation: str | None, **recipe: Any) -> str:
    """``fpntools imaging train``: build the configs from the command's options, train, and return the final
    message. ``recipe`` holds the :class:`TrainConfig` fields; the Jacobian penalty goes into the decoder's
    :class:`fpntools.SolveConfig` (:data:`problems.imaging.model.DEFAULT_SOLVE` otherwise)."""
    from fpntools.solve_config import JacobianRegConfig

    try:
        jac = JacobianRegConfig(weight=jac_weight, prob=jac_prob)
    except ValueError as exc:
        raise UserInputError(f"--jac-weight / --jac-prob: {exc}") from None
    cfg = TrainConfig(activation=activation, **recipe)
    model_cfg = DecoderConfig(channels=channels, latent_channels=latent_channels, encoder_width=encoder_width,
                              activation=activation or "relu")
    run_dir = Path(run_dir)
    weights = Path(out) if out is not None else run_dir / "decoder.safetensors"
    if out is None:
        from fpntools.cli_support import check_output_dir

        check_output_dir(run_dir, what="run folder")
    res = train_decoder(cfg, model_cfg, weights, solve=DEFAULT_SOLVE.with_(jacobian=jac), run_dir=run_dir,
                        resume=resume, force=force)
    s = res.summary
    which = "validation" if "validation_psnr" in s else "held-out"
    psnrs = ", ".join(f"{k} {v:.2f} dB" for k, v in s.get("validation_psnr", s.get("heldout_psnr", {})).items())
    return (f"wrote {res.out}: {s['steps']} batches ({s['joint_batches']} through the joint solve), stopped: "
            f"{s['stop_reason']}; {which} amortised PSNR {psnrs}; run folder {run_dir}")
