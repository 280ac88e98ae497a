"""Training of the CT F-FPN and of the unrolled baseline with the toolbox's one training loop,
:class:`fpntools.training.Trainer`.

Recipe (``fpntools ct train``): Adam on the mean squared error to the ground truth of simulated
random-ellipse phantoms, learning rate multiplied by ``lr_decay`` after every epoch (schedule
``"exponential"``), gradient norm clipped to ``grad_clip``, validation PSNR after every epoch and the weights
of the best validation epoch kept (``select_metric="val_psnr"``), an optional time budget. The parameter-free
reference reconstructions (a short TV solve, :meth:`~problems.ct.ffpn.CTFeasibilityOperator.reference_image`)
of all training and validation sinograms are computed once and stored beside the data.

The trainer gives the run folder (``config.json``, ``history.json``, ``checkpoint.pt`` with exact resume),
``--device``, ``--resume`` / ``--force`` and the progress bar; the weights are then written by
:func:`problems.ct.weights.save_weights`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor
from torch.utils.data import TensorDataset

from fpntools.errors import UserInputError
from fpntools.metrics import psnr
from fpntools.solve_config import SolveConfig
from fpntools.training import Trainer, TrainerConfig, TrainResult, resolve_device
from fpntools.training.trainer import print_to_stderr
from problems.ct.ffpn import MODEL_KINDS, FFPN, FFPNConfig, build_model, default_solve
from problems.ct.geometry import CTGeometry
from problems.ct.phantoms import CTData, CTDataConfig, make_dataset

__all__ = ["TrainConfig", "train", "train_summary", "evaluate", "reference_images", "ct_loss"]


@dataclass
class TrainConfig:
    """Training settings (the trainer's, plus the data set).

    Attributes:
        model: ``"ffpn"`` (fixed point, JFB / implicit gradients) or ``"unrolled"``.
        epochs, batch_size, lr: Adam with learning rate ``lr``, multiplied by ``lr_decay`` after each epoch.
        grad_clip: clip the gradient norm (``0`` disables).
        n_train, n_val: sizes of the simulated splits (random ellipses, :class:`CTDataConfig`).
        seed: data, initialisation and sample-order seed.
        max_minutes: stop (with a checkpoint) once this much wall time has passed (``0``: no limit).
        device: ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``.
        run_dir: the run folder (``None``: no checkpoints, no resume).
        resume, force: continue the run in ``run_dir`` / start it over.
        progress: show the progress bar.
    """

    model: str = "ffpn"
    epochs: int = 10
    batch_size: int = 8
    lr: float = 1e-3
    lr_decay: float = 0.85
    grad_clip: float = 1.0
    n_train: int = 256
    n_val: int = 16
    seed: int = 0
    max_minutes: float = 0.0
    device: str = "auto"
    run_dir: str | None = None
    resume: bool = False
    force: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if self.model not in MODEL_KINDS:
            raise UserInputError(f"model must be 'ffpn' or 'unrolled', got {self.model!r}")
        for name in ("n_train", "n_val"):
            if getattr(self, name) < 1:
                raise UserInputError(f"{name} must be >= 1, got {getattr(self, name)}")
        self.trainer_config()  # the trainer checks its own fields (one-line errors)

    def trainer_config(self) -> TrainerConfig:
        """The :class:`~fpntools.training.TrainerConfig` of this recipe."""
        return TrainerConfig(
            epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, optimizer="adam", schedule="exponential",
            lr_decay=self.lr_decay, grad_clip=self.grad_clip or None, seed=self.seed, device=self.device,
            run_dir=self.run_dir, resume=self.resume, force=self.force, max_minutes=self.max_minutes,
            select_metric="val_psnr", select_mode="max", progress=self.progress,
        )


def ct_loss(model: FFPN, batch: tuple[Tensor, ...]) -> tuple[Tensor, dict[str, float]]:
    """Mean squared error of the reconstructions of a batch ``(images, sinograms[, references])``, with the
    batch PSNR ``-10 log10(mse)`` and the mean solver steps as metrics."""
    x, y = batch[0], batch[1]
    ref = batch[2] if len(batch) > 2 else None
    u, info = model(y, reference=ref)
    loss = torch.mean((u - x) ** 2)
    mse = float(loss.detach())
    return loss, {"psnr": -10 * math.log10(max(mse, 1e-12)), "steps": float(info.steps.double().mean())}


@torch.no_grad()
def evaluate(model: FFPN, images: Tensor, sinograms: Tensor, batch_size: int = 16,
             references: Tensor | None = None) -> dict[str, float]:
    """Mean PSNR (dB), mean solver steps and seconds per image of ``model`` in eval mode (``references``:
    precomputed reference reconstructions, see :func:`reference_images`; their time is then not counted).
    Data are moved to the model's device batch by batch."""
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    ps, steps = [], []
    t0 = time.perf_counter()
    for i in range(0, images.shape[0], batch_size):
        ref = None if references is None else references[i : i + batch_size].to(dev)
        u, info = model(sinograms[i : i + batch_size].to(dev), reference=ref)
        ps.append(psnr(u, images[i : i + batch_size].to(dev)).cpu())
        steps.append(info.steps.double().cpu())
    dt = time.perf_counter() - t0
    model.train(was_training)
    return {"psnr": float(torch.cat(ps).mean()), "steps": float(torch.cat(steps).mean()),
            "seconds_per_image": dt / max(1, images.shape[0])}


@torch.no_grad()
def reference_images(model: FFPN, sinograms: Tensor, batch_size: int = 64) -> Tensor | None:
    """The model's reference reconstructions (FBP or a short TV solve; parameter-free) of all ``sinograms``
    (on the model's device, returned on the CPU), computed once so that training epochs do not repeat them;
    ``None`` when the model has none or does not use it."""
    if not model.T.uses_reference:
        return None
    dev = next(model.parameters()).device
    parts = []
    for i in range(0, sinograms.shape[0], batch_size):
        ref = model.T.reference_image(sinograms[i : i + batch_size].to(dev))
        if ref is None:
            return None
        parts.append(ref.cpu())
    return torch.cat(parts)


def train(
    config: TrainConfig | None = None,
    model_config: FFPNConfig | None = None,
    geometry: CTGeometry | None = None,
    data: CTData | None = None,
    solve: SolveConfig | None = None,
    cache_dir: str | os.PathLike | None = None,
    log: Callable[[str], None] | None = print_to_stderr,
) -> tuple[FFPN, TrainResult]:
    """Train an F-FPN (or the unrolled baseline) with :class:`fpntools.training.Trainer`; returns ``(model with
    the weights of the best validation epoch, the trainer's result)``.

    ``solve``: the :class:`fpntools.SolveConfig` (default :func:`~problems.ct.ffpn.default_solve` of the kind).
    Epoch records hold ``epoch``, ``train_loss``, ``train_psnr``, ``train_steps``, ``lr``, ``seconds``,
    ``steps``, ``val_psnr``, ``val_steps``.
    """
    from problems.ct.projector import ct_operator

    cfg = config or TrainConfig()
    geometry = geometry or CTGeometry()
    mcfg = model_config or FFPNConfig()
    solve = solve if solve is not None else default_solve(cfg.model)
    tcfg = cfg.trainer_config()
    device = resolve_device(cfg.device)
    say = log or (lambda _m: None)
    if data is None:
        data = make_dataset(
            CTDataConfig(geometry=geometry, n_train=cfg.n_train, n_val=cfg.n_val, n_test=1, seed=cfg.seed),
            cache_dir=cache_dir,
        )
    op = ct_operator(geometry, cache_dir=cache_dir, device=device)
    torch.manual_seed(cfg.seed)  # the initial weights
    try:
        model = build_model(cfg.model, op, mcfg, geometry, solve).to(device)
    except ValueError as exc:
        raise UserInputError(str(exc)) from None
    t_ref = time.perf_counter()
    train_refs = reference_images(model, data.train.sinograms)
    val_refs = reference_images(model, data.val.sinograms)
    say(f"reference reconstructions ({mcfg.reference}) of {len(data.train) + len(data.val)} sinograms: "
        f"{time.perf_counter() - t_ref:.1f} s")
    tensors = [data.train.images, data.train.sinograms] + ([train_refs] if train_refs is not None else [])
    run_config = {
        "model": cfg.model,
        "model_config": mcfg.to_dict(),
        "solve_config": solve.to_dict(),
        "geometry": geometry.to_dict(),
        "data": {"n_train": cfg.n_train, "n_val": cfg.n_val, "seed": cfg.seed},
    }

    def validate(m: FFPN) -> dict[str, float]:
        v = evaluate(m, data.val.images, data.val.sinograms, cfg.batch_size, val_refs)
        return {"val_psnr": v["psnr"], "val_steps": v["steps"]}

    trainer = Trainer(model, ct_loss, TensorDataset(*tensors), tcfg, evaluate=validate, run_config=run_config,
                      log=log)
    result = trainer.fit()
    return model, result


def train_summary(config: TrainConfig, result: TrainResult) -> dict[str, Any]:
    """What the weights' metadata records about the training run."""
    return {"history": result.history, "train_config": dataclasses.asdict(config), "best_epoch": result.best_epoch,
            "completed": result.completed}
