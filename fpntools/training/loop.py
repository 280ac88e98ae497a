"""One training loop for the model zoo: :class:`Trainer` configured by :class:`TrainConfig`.

Per step: forward (a :class:`~fpntools.models.ZooOutput` or a plain tensor), task loss plus the model's
auxiliary loss (Jacobian penalty), backward, gradient all-reduce when distributed, optional clipping,
optimizer and learning-rate schedule step.

Determinism and resume. The sample order of epoch ``e`` is a permutation drawn from a generator seeded with
``(seed, e)``, so it does not depend on what ran before. A checkpoint (written atomically by
:func:`~fpntools.training.checkpoint.save_checkpoint`) holds the model, optimizer and schedule states, the
position ``(epoch, next batch)``, the running epoch sums, the history, the torch RNG state and the step
counters of the Jacobian-penalty schedules. A resumed run therefore continues exactly where the
interrupted one stopped: the final parameters equal those of an uninterrupted run. Checkpoints are
written every ``checkpoint_every`` steps, at the end of every epoch, when ``max_steps`` is reached and
when the run is interrupted (``KeyboardInterrupt``).

Tasks: ``"classification"`` (cross-entropy, accuracy; logits ``(B, C)`` or ``(B, C, H, W)`` for segmentation),
``"lm"`` (token cross-entropy over ``(B, T, V)``, perplexity ``exp(mean loss)``), ``"regression"`` (MSE).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset, TensorDataset, default_collate

from fpntools.training.checkpoint import load_checkpoint, save_checkpoint
from fpntools.training.distributed import (
    DistContext,
    all_reduce_gradients,
    all_reduce_sums,
    barrier,
    broadcast_parameters,
    shard_bounds,
)

__all__ = ["TrainConfig", "Trainer", "TrainResult", "TASKS"]

TASKS = ("classification", "lm", "regression")


@dataclass
class TrainConfig:
    """Training hyper-parameters. ``batch_size`` is the global batch (split over processes)."""

    epochs: int = 1
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    optimizer: str = "adam"  # adam | adamw | sgd
    momentum: float = 0.9
    lr_schedule: str = "constant"  # constant | cosine (over all steps)
    grad_clip: float | None = None
    seed: int = 0
    shuffle: bool = True
    task: str = "classification"
    eval_batch_size: int = 256
    checkpoint_path: str | None = None
    checkpoint_every: int = 0
    resume: bool = True
    max_steps: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.optimizer not in ("adam", "adamw", "sgd"):
            raise ValueError(f"optimizer must be adam, adamw or sgd, got {self.optimizer!r}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be constant or cosine, got {self.lr_schedule!r}")
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")


@dataclass
class TrainResult:
    """Per-epoch metrics (``history``), the final evaluation and whether the run completed."""

    history: list[dict[str, float]] = field(default_factory=list)
    final: dict[str, float] = field(default_factory=dict)
    completed: bool = True
    steps: int = 0


def _batch_size(x: Any) -> int:
    if isinstance(x, Tensor):
        return x.shape[0]
    if isinstance(x, (tuple, list)):
        return _batch_size(x[0])
    raise TypeError(f"cannot find the batch size of a {type(x).__name__}")


def _to(x: Any, device: torch.device) -> Any:
    if isinstance(x, Tensor):
        return x.to(device)
    if isinstance(x, (tuple, list)):
        return type(x)(_to(v, device) for v in x)
    return x


def fetch(dataset: Dataset, idx: Tensor) -> tuple[Any, Tensor]:
    """``(inputs, targets)`` of the samples ``idx`` (vectorised for tensor-backed datasets)."""
    from fpntools.data.text import TokenWindows

    if isinstance(dataset, (TensorDataset, TokenWindows)):  # both support batched (tensor) indexing
        items = dataset[idx]
    else:
        items = default_collate([dataset[int(i)] for i in idx])
    if len(items) != 2:
        raise ValueError(f"dataset items must be (input, target) pairs, got {len(items)} elements")
    return items[0], items[1]


class Trainer:
    """Train a zoo model (or any ``nn.Module`` returning logits) on a map-style dataset of ``(x, y)`` pairs.

    Args:
        model: the model; its output is a :class:`~fpntools.models.ZooOutput` or a tensor of logits.
        config: :class:`TrainConfig`.
        train_data: dataset of ``(input, target)`` pairs (``TensorDataset`` is fetched vectorised).
        eval_data: optional dataset evaluated after every epoch.
        dist_ctx: :class:`~fpntools.training.distributed.DistContext` for multi-process training.
        on_step: optional ``callback(trainer, step, metrics)`` after every optimizer step.
    """

    def __init__(self, model: nn.Module, config: TrainConfig, train_data: Dataset, eval_data: Dataset | None = None,
                 dist_ctx: DistContext | None = None, on_step: Callable[["Trainer", int, dict], None] | None = None):
        if len(train_data) == 0:
            raise ValueError("train_data is empty")
        self.cfg, self.ctx = config, dist_ctx or DistContext()
        self.model = model.to(self.ctx.device)
        self.train_data, self.eval_data, self.on_step = train_data, eval_data, on_step
        torch.manual_seed(config.seed)
        broadcast_parameters(self.model, self.ctx)
        self.optimizer = self._make_optimizer()
        self.steps_per_epoch = math.ceil(len(train_data) / config.batch_size)
        total = self.steps_per_epoch * config.epochs
        if config.lr_schedule == "cosine":
            self.scheduler: Any = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=total)
        else:
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda _: 1.0)
        self.epoch, self.batch_index, self.step = 0, 0, 0
        self.history: list[dict[str, float]] = []
        self._sums = self._zero_sums()
        self._epoch_time = 0.0

    # ------------------------------------------------------------------ setup
    def _make_optimizer(self) -> torch.optim.Optimizer:
        params = [p for p in self.model.parameters() if p.requires_grad]
        c = self.cfg
        if c.optimizer == "sgd":
            return torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)
        cls = torch.optim.Adam if c.optimizer == "adam" else torch.optim.AdamW
        return cls(params, lr=c.lr, weight_decay=c.weight_decay)

    @staticmethod
    def _zero_sums() -> dict[str, float]:
        return {"loss": 0.0, "correct": 0.0, "count": 0.0, "aux": 0.0, "fsteps": 0.0, "batches": 0.0}

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch,
            "batch_index": self.batch_index,
            "step": self.step,
            "sums": dict(self._sums),
            "epoch_time": self._epoch_time,
            "history": [dict(h) for h in self.history],
            "rng": torch.get_rng_state(),
            "config": {k: v for k, v in asdict(self.cfg).items() if k in ("batch_size", "seed", "task", "epochs")},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("config", {})
        for key in ("batch_size", "seed", "task"):
            if key in saved and saved[key] != getattr(self.cfg, key):
                raise ValueError(
                    f"checkpoint was written with {key}={saved[key]!r} but this run has {key}={getattr(self.cfg, key)!r}; "
                    "resuming would not reproduce the run"
                )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.batch_index, self.step = int(state["epoch"]), int(state["batch_index"]), int(state["step"])
        self._sums = {k: float(v) for k, v in state["sums"].items()}
        self._epoch_time = float(state.get("epoch_time", 0.0))
        self.history = [dict(h) for h in state["history"]]
        torch.set_rng_state(state["rng"])

    def save(self) -> None:
        if self.cfg.checkpoint_path and self.ctx.is_main:
            save_checkpoint(self.cfg.checkpoint_path, self.state_dict())
        barrier(self.ctx)

    def maybe_resume(self) -> bool:
        """Load the checkpoint when ``resume`` is on and it exists. Returns whether it resumed."""
        path = self.cfg.checkpoint_path
        if not (path and self.cfg.resume and Path(path).is_file()):
            return False
        self.load_state_dict(load_checkpoint(path, map_location=self.ctx.device))
        return True

    # ------------------------------------------------------------------ loss and metrics
    def _loss(self, logits: Tensor, y: Tensor) -> tuple[Tensor, float]:
        """Mean task loss and the number of correct predictions (classification / lm)."""
        task = self.cfg.task
        if task == "regression":
            return F.mse_loss(logits, y.to(logits.dtype)), 0.0
        if task == "lm":
            flat = logits.reshape(-1, logits.shape[-1])
            yy = y.reshape(-1)
            return F.cross_entropy(flat, yy), float((flat.argmax(-1) == yy).sum()) / max(1, yy.numel() // y.shape[0])
        hits = (logits.argmax(1) == y).float()
        if hits.dim() > 1:  # segmentation: fraction of correct pixels per image
            hits = hits.flatten(1).mean(dim=1)
        return F.cross_entropy(logits, y), float(hits.sum())

    def _order(self, epoch: int) -> Tensor:
        n = len(self.train_data)
        if not self.cfg.shuffle:
            return torch.arange(n)
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + epoch)
        return torch.randperm(n, generator=g)

    def train_step(self, idx: Tensor) -> dict[str, float]:
        """One optimizer step on the global batch ``idx`` (this rank computes its shard)."""
        self.model.train()
        n = len(idx)
        lo, hi = shard_bounds(n, self.ctx)
        self.optimizer.zero_grad(set_to_none=True)
        loss_v = correct = aux_v = fsteps = 0.0
        if hi > lo:
            x, y = fetch(self.train_data, idx[lo:hi])
            x, y = _to(x, self.ctx.device), _to(y, self.ctx.device)
            out = self.model(x)
            logits = getattr(out, "logits", out)
            loss, correct = self._loss(logits, y)
            total = loss
            aux = getattr(out, "aux_loss", None)
            if aux is not None:
                total = total + aux
                aux_v = float(aux.detach()) * (hi - lo)
            (total * ((hi - lo) / n)).backward()  # exact gradient of the global-batch mean (see distributed)
            loss_v = float(loss.detach()) * (hi - lo)
            fsteps = float(getattr(out, "forward_steps", 0.0)) * (hi - lo)
        all_reduce_gradients(self.model.parameters(), self.ctx)
        if self.cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self._updating = True  # from here until the step is counted the state is half-updated
        self.optimizer.step()
        self.scheduler.step()
        loss_v, correct, aux_v, fsteps = all_reduce_sums([loss_v, correct, aux_v, fsteps], self.ctx)
        return {"loss": loss_v, "correct": correct, "count": float(n), "aux": aux_v, "fsteps": fsteps, "batches": 1.0}

    @torch.no_grad()
    def evaluate(self, dataset: Dataset | None = None) -> dict[str, float]:
        """Loss, accuracy (or perplexity / MSE) and mean forward solver steps on ``dataset``."""
        dataset = dataset if dataset is not None else self.eval_data
        if dataset is None:
            return {}
        self.model.eval()
        n = len(dataset)
        lo, hi = shard_bounds(n, self.ctx)
        s = [0.0, 0.0, 0.0]
        bs = self.cfg.eval_batch_size
        for start in range(lo, hi, bs):
            idx = torch.arange(start, min(start + bs, hi))
            x, y = fetch(dataset, idx)
            x, y = _to(x, self.ctx.device), _to(y, self.ctx.device)
            out = self.model(x)
            loss, correct = self._loss(getattr(out, "logits", out), y)
            s[0] += float(loss) * len(idx)
            s[1] += correct
            s[2] += float(getattr(out, "forward_steps", 0.0)) * len(idx)
        loss_sum, correct, fsteps = all_reduce_sums(s, self.ctx)
        return self._metrics("eval", loss_sum, correct, float(n), fsteps)

    def _metrics(self, prefix: str, loss_sum: float, correct: float, count: float, fsteps: float) -> dict[str, float]:
        loss = loss_sum / max(count, 1.0)
        m = {f"{prefix}_loss": loss, f"{prefix}_forward_steps": fsteps / max(count, 1.0)}
        if self.cfg.task == "classification" or self.cfg.task == "lm":
            m[f"{prefix}_acc"] = correct / max(count, 1.0)
        if self.cfg.task == "lm":
            m[f"{prefix}_ppl"] = math.exp(min(loss, 50.0))
        return m

    @property
    def time_per_step_ms(self) -> float:
        """Mean wall time of the optimizer steps of the current (possibly unfinished) epoch."""
        n = self._sums["batches"]
        return 1e3 * self._epoch_time / n if n else float("nan")

    # ------------------------------------------------------------------ the loop
    def fit(self) -> TrainResult:
        """Train (resuming when a checkpoint exists) and return the per-epoch history."""
        from tqdm.auto import tqdm

        self.maybe_resume()
        c = self.cfg
        result = TrainResult(history=self.history)
        try:
            while self.epoch < c.epochs:
                order = self._order(self.epoch)
                bar = tqdm(total=self.steps_per_epoch, initial=self.batch_index, desc=f"epoch {self.epoch + 1}/{c.epochs}",
                           disable=not (c.progress and self.ctx.is_main), leave=False)
                while self.batch_index < self.steps_per_epoch:
                    if c.max_steps is not None and self.step >= c.max_steps:
                        bar.close()
                        self.save()
                        result.completed, result.steps = False, self.step
                        return result
                    idx = order[self.batch_index * c.batch_size : (self.batch_index + 1) * c.batch_size]
                    t0 = time.perf_counter()
                    m = self.train_step(idx)
                    self._epoch_time += time.perf_counter() - t0
                    for k, v in m.items():
                        self._sums[k] += v
                    self.batch_index += 1
                    self.step += 1
                    self._updating = False
                    bar.update(1)
                    bar.set_postfix(loss=f"{self._sums['loss'] / max(self._sums['count'], 1):.4f}")
                    if self.on_step is not None:
                        self.on_step(self, self.step, m)
                    if c.checkpoint_every and self.step % c.checkpoint_every == 0:
                        self.save()
                bar.close()
                self._end_epoch()
                self.save()
        except KeyboardInterrupt:
            if not self._updating:  # never save a half-applied step; the previous checkpoint stays valid
                self.save()
            raise
        result.history, result.steps = self.history, self.step
        result.final = self.history[-1] if self.history else {}
        return result

    def _end_epoch(self) -> None:
        s = self._sums
        rec = {"epoch": float(self.epoch + 1), "time_s": self._epoch_time,
               "time_per_step_ms": 1e3 * self._epoch_time / max(s["batches"], 1.0),
               "jacobian_loss": s["aux"] / max(s["count"], 1.0)}
        rec.update(self._metrics("train", s["loss"], s["correct"], s["count"], s["fsteps"]))
        rec.update(self.evaluate())
        self.history.append(rec)
        self.epoch += 1
        self.batch_index = 0
        self._sums = self._zero_sums()
        self._epoch_time = 0.0
