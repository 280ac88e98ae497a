"""Training of the CT F-FPN and of the unrolled baseline: mini-batch Adam on the MSE to the ground truth,
validation PSNR after every epoch, atomic checkpoints (resume after an interruption), weight export.

``python -m problems.ct.train --help`` or ``fpntools ct train --help``.

Checkpoint (``fpntools.training.checkpoint``, written atomically after every epoch and at the time limit):
``{"model", "optimizer", "scheduler", "epoch", "history", "best_state", "best_psnr", "train_config",
"model_config", "geometry", "rng"}``. A run started with the same checkpoint path resumes after the last
completed epoch (the model, optimiser, scheduler and the shuffling generator are restored).

Weights (:func:`save_weights` / :func:`load_model`): ``<name>.safetensors`` holding the state dict of the best
validation epoch plus ``<name>.json`` with the model kind, :class:`~problems.ct.ffpn.FFPNConfig`, geometry
and the training summary.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from fpntools.errors import UserInputError
from fpntools.training.checkpoint import atomic_write_bytes, load_checkpoint, save_checkpoint
from problems.ct.ffpn import FFPNConfig, build_model
from problems.ct.geometry import CTGeometry
from fpntools.metrics import psnr
from problems.ct.phantoms import CTData, CTDataConfig, make_dataset
from problems.ct.projector import ct_operator

__all__ = ["TrainConfig", "train", "evaluate", "save_weights", "load_model", "WEIGHTS_DIR", "shipped_weights"]

WEIGHTS_DIR = Path(__file__).resolve().parents[2] / "data" / "ct"


@dataclass
class TrainConfig:
    """Training settings.

    Attributes:
        model: ``"ffpn"`` (fixed point, JFB / implicit gradients) or ``"unrolled"``.
        epochs, batch_size, lr: Adam with learning rate ``lr``, multiplied by ``lr_decay`` after each epoch.
        grad_clip: clip the gradient norm (``0`` disables).
        n_train, n_val: sizes of the simulated splits (random ellipses, :class:`CTDataConfig`).
        seed: data and initialisation seed.
        max_minutes: stop (after saving) once this much wall time has passed (``0``: no limit).
        checkpoint: checkpoint path (``None``: no checkpoints, no resume).
        val_every: batches between mid-epoch progress-bar PSNR updates (``0``: only at the epoch end).
    """

    model: Literal["ffpn", "unrolled"] = "ffpn"
    epochs: int = 10
    batch_size: int = 8
    lr: float = 1e-3
    lr_decay: float = 0.85
    grad_clip: float = 1.0
    n_train: int = 256
    n_val: int = 16
    seed: int = 0
    max_minutes: float = 0.0
    checkpoint: str | None = None

    def __post_init__(self) -> None:
        if self.model not in ("ffpn", "unrolled"):
            raise UserInputError(f"model must be 'ffpn' or 'unrolled', got {self.model!r}")
        for name in ("epochs", "batch_size", "n_train", "n_val"):
            if getattr(self, name) < 1:
                raise UserInputError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise UserInputError(f"lr must be positive, got {self.lr}")


@torch.no_grad()
def evaluate(model: nn.Module, images: Tensor, sinograms: Tensor, batch_size: int = 16,
             references: Tensor | None = None) -> dict[str, float]:
    """Mean PSNR (dB), mean fixed-point steps and seconds per image of ``model`` in eval mode (``references``:
    precomputed reference reconstructions, see :func:`reference_images`; their time is then not counted)."""
    was_training = model.training
    model.eval()
    ps, steps = [], []
    t0 = time.perf_counter()
    for i in range(0, images.shape[0], batch_size):
        ref = None if references is None else references[i : i + batch_size]
        u, info = model(sinograms[i : i + batch_size], reference=ref)
        ps.append(psnr(u, images[i : i + batch_size]))
        if info is not None:
            steps.append(info.steps.double())
    dt = time.perf_counter() - t0
    model.train(was_training)
    out = {"psnr": float(torch.cat(ps).mean()), "seconds_per_image": dt / max(1, images.shape[0])}
    if steps:
        out["steps"] = float(torch.cat(steps).mean())
    return out


@torch.no_grad()
def reference_images(model: nn.Module, sinograms: Tensor, batch_size: int = 64) -> Tensor | None:
    """The model's reference reconstructions (FBP or a short TV solve; parameter-free) of all ``sinograms``,
    computed once so that training epochs do not repeat them; ``None`` when the model has none."""
    parts = []
    for i in range(0, sinograms.shape[0], batch_size):
        ref = model.T.reference_image(sinograms[i : i + batch_size])
        if ref is None:
            return None
        parts.append(ref)
    return torch.cat(parts)


def _rng_state(gen: torch.Generator) -> Tensor:
    return gen.get_state()


def train(
    config: TrainConfig | None = None,
    model_config: FFPNConfig | None = None,
    geometry: CTGeometry | None = None,
    data: CTData | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    log: Any = print,
) -> tuple[nn.Module, list[dict[str, float]]]:
    """Train an F-FPN (or the unrolled baseline); returns ``(model with the best validation weights, history)``.

    ``history`` has one entry per epoch: ``epoch``, ``train_loss``, ``val_psnr``, ``val_steps`` (F-FPN),
    ``lr``, ``seconds``.
    """
    from tqdm.auto import tqdm

    cfg = config or TrainConfig()
    geometry = geometry or CTGeometry()
    mcfg = model_config or FFPNConfig()
    torch.manual_seed(cfg.seed)
    if data is None:
        data = make_dataset(
            CTDataConfig(geometry=geometry, n_train=cfg.n_train, n_val=cfg.n_val, n_test=1, seed=cfg.seed),
            cache_dir=cache_dir,
        )
    op = ct_operator(geometry, cache_dir=cache_dir)
    model = build_model(cfg.model, op, mcfg, geometry)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=cfg.lr_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    history: list[dict[str, float]] = []
    start_epoch = 0
    best_psnr = -math.inf
    best_state: dict[str, Tensor] | None = None
    ckpt = Path(cfg.checkpoint) if cfg.checkpoint else None
    if ckpt is not None and ckpt.is_file():
        state = load_checkpoint(ckpt)
        if state.get("model_config") != mcfg.to_dict() or state.get("geometry") != geometry.to_dict():
            raise UserInputError(
                f"checkpoint {ckpt} was written for another model configuration or geometry; "
                "use another --checkpoint path or the same settings"
            )
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        gen.set_state(state["rng"])
        history = list(state["history"])
        start_epoch = int(state["epoch"]) + 1
        best_psnr = float(state["best_psnr"])
        best_state = state["best_state"]
        log(f"resumed from {ckpt} after epoch {start_epoch} (best val PSNR {best_psnr:.2f} dB)")

    def save(epoch: int) -> None:
        if ckpt is None:
            return
        save_checkpoint(
            ckpt,
            {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "epoch": epoch,
                "history": history,
                "best_state": best_state,
                "best_psnr": best_psnr,
                "train_config": dataclasses.asdict(cfg),
                "model_config": mcfg.to_dict(),
                "geometry": geometry.to_dict(),
                "rng": _rng_state(gen),
            },
        )

    t_ref = time.perf_counter()
    train_refs = reference_images(model, data.train.sinograms)
    val_refs = reference_images(model, data.val.sinograms)
    log(f"reference reconstructions ({mcfg.reference}) of {len(data.train) + len(data.val)} sinograms: "
        f"{time.perf_counter() - t_ref:.1f} s")
    t_start = time.perf_counter()
    stop = False
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        t0 = time.perf_counter()
        losses = []
        batches = data.train.index_batches(cfg.batch_size, shuffle=True, generator=gen)
        bar = tqdm(batches, total=len(batches),
                   desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress, leave=False)
        for idx in bar:
            x, y = data.train.images[idx], data.train.sinograms[idx]
            u, info = model(y, reference=None if train_refs is None else train_refs[idx])
            loss = torch.mean((u - x) ** 2)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            losses.append(float(loss.detach()))
            post = {"loss": f"{losses[-1]:.2e}", "psnr": f"{-10 * math.log10(max(losses[-1], 1e-12)):.2f}"}
            if info is not None:
                post["steps"] = f"{float(info.steps.double().mean()):.1f}"
            bar.set_postfix(post)
            if cfg.max_minutes and time.perf_counter() - t_start > 60 * cfg.max_minutes:
                stop = True
                break
        val = evaluate(model, data.val.images, data.val.sinograms, cfg.batch_size, val_refs)
        entry = {
            "epoch": epoch + 1,
            "train_loss": sum(losses) / max(1, len(losses)),
            "val_psnr": val["psnr"],
            "lr": opt.param_groups[0]["lr"],
            "seconds": time.perf_counter() - t0,
            "complete": not stop,
        }
        if "steps" in val:
            entry["val_steps"] = val["steps"]
        history.append(entry)
        if val["psnr"] > best_psnr:
            best_psnr = val["psnr"]
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        sched.step()
        log(
            f"epoch {epoch + 1}/{cfg.epochs}: train loss {entry['train_loss']:.3e}, val PSNR {val['psnr']:.2f} dB"
            + (f", {val['steps']:.1f} steps" if "steps" in val else "")
            + f", {entry['seconds']:.0f} s"
        )
        save(epoch if not stop else epoch - 1)  # an interrupted epoch is redone on resume
        if stop:
            log(f"time limit of {cfg.max_minutes} min reached; checkpoint saved")
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    return model, history


# ============================================================================================ weights
def save_weights(model: nn.Module, path: str | os.PathLike, kind: str, geometry: CTGeometry,
                 extra: dict[str, Any] | None = None) -> None:
    """Write ``path`` (``.safetensors``) and the metadata sidecar ``path`` with suffix ``.json``, atomically."""
    from safetensors.torch import save as st_save

    path = Path(path)
    if path.suffix != ".safetensors":
        raise UserInputError(f"weights file must end in .safetensors, got {path}")
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(path, st_save(tensors))
    meta = {"kind": kind, "model_config": model.config.to_dict(), "geometry": geometry.to_dict(), **(extra or {})}
    atomic_write_bytes(path.with_suffix(".json"), json.dumps(meta, indent=2, default=float).encode())


def load_model(path: str | os.PathLike, op: Any = None, cache_dir: str | os.PathLike | None = None
               ) -> tuple[nn.Module, CTGeometry, dict[str, Any]]:
    """Load weights written by :func:`save_weights`: ``(model in eval mode, geometry, metadata)``."""
    from safetensors.torch import load as st_load

    from fpntools.training.checkpoint import CheckpointError

    path = Path(path)
    meta_path = path.with_suffix(".json")
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    if not meta_path.is_file():
        raise CheckpointError(f"weights metadata not found: {meta_path} (written next to the .safetensors file)")
    try:
        meta = json.loads(meta_path.read_text())
        geometry = CTGeometry.from_dict(meta["geometry"])
        # weights older than the U-Net prior and the TV reference have neither
        model_config = {"prior": "none", "reference": "fbp", **meta["model_config"]}
        mcfg = FFPNConfig.from_dict(model_config)
        kind = meta["kind"]
        tensors = st_load(path.read_bytes())
    except Exception as exc:
        raise CheckpointError(f"weights {path} (or {meta_path.name}) are corrupt: {exc}") from exc
    op = op if op is not None else ct_operator(geometry, cache_dir=cache_dir)
    model = build_model(kind, op, mcfg, geometry)
    try:
        model.load_state_dict(tensors)
    except RuntimeError as exc:
        raise CheckpointError(f"weights {path} do not fit a {kind} model with {mcfg}: {exc}") from exc
    return model.eval(), geometry, meta


def shipped_weights(kind: Literal["ffpn", "unrolled"] = "ffpn") -> Path:
    """Path of the weights shipped with the package for the default geometry."""
    p = WEIGHTS_DIR / f"{kind}_ellipses.safetensors"
    if not p.is_file():
        from fpntools.training.checkpoint import CheckpointError

        raise CheckpointError(f"no shipped weights for {kind!r} ({p} missing); train with `fpntools ct train`")
    return p


def main(argv: list[str] | None = None) -> None:
    """``python -m problems.ct.train``: the same as ``fpntools ct train``."""
    from problems.ct.cli import app

    app(["train", *(argv or [])], standalone_mode=True)


if __name__ == "__main__":  # pragma: no cover
    import sys

    main(sys.argv[1:])
