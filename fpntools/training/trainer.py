"""The one training loop of fpntools: :class:`Trainer`, configured by :class:`TrainerConfig`.

Every training command (``ct train``, ``traffic train``, ``games train``, the imaging decoder, ``zoo
train``) runs through this loop. It takes a model, a loss function ``loss_fn(model, batch) -> loss`` (or
``(loss, metrics)``), the training data (a map-style :class:`~torch.utils.data.Dataset` or a
:class:`BatchSource` that generates batches) and optional evaluation and hooks, and gives every command
the same things: a progress bar with the running loss, a seeded sample order, atomic checkpoints with
exact resume, a time budget, best-epoch selection, a run folder (``config.json``, ``history.json``,
``checkpoint.pt``), ``cpu`` / ``cuda`` devices, and multi-process data parallelism under ``torchrun``.

One optimizer step on a global batch ``B`` of ``n`` samples split over ``R`` processes into contiguous
shards ``B_r`` of ``n_r`` samples: process ``r`` evaluates the mean shard loss ``L_r`` and back-propagates
``(n_r / n) L_r``; the gradients are summed over processes, so every process holds

.. math::
    g = \\sum_r \\frac{n_r}{n} \\nabla L_r = \\nabla \\frac{1}{n} \\sum_{i \\in B} \\ell_i ,

the gradient of single-process training on the whole batch. Then gradient clipping (``||g|| <=
grad_clip``), the optimizer step and the per-step learning-rate schedule step.

Determinism and resume. The sample order of epoch ``e`` is a permutation drawn from a generator seeded
with ``(seed, e)``; a :class:`BatchSource` gets a generator seeded with ``(seed, e, b)`` for batch ``b``.
Neither depends on what ran before, so a checkpoint (model, optimizer, schedule, position ``(epoch,
batch)``, running epoch sums, history, best state, torch RNG states, hook states) resumes the run
exactly: an interrupted-then-resumed run ends with the parameters of an uninterrupted one.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol, Sequence, runtime_checkable

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, TensorDataset, default_collate

from fpntools.errors import UserInputError
from fpntools.training.checkpoint import CheckpointError, atomic_write_bytes, load_checkpoint, save_checkpoint
from fpntools.training.distributed import (
    DistContext,
    all_reduce_gradients,
    all_reduce_sums,
    barrier,
    broadcast_parameters,
    init_distributed,
    shard_bounds,
    shutdown_distributed,
)

__all__ = [
    "BatchSource",
    "LossFn",
    "Trainer",
    "TrainerConfig",
    "TrainResult",
    "resolve_device",
    "move_to",
    "print_to_stderr",
]

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine", "exponential")
CHECKPOINT_NAME, CONFIG_NAME, HISTORY_NAME = "checkpoint.pt", "config.json", "history.json"
_FORMAT = 1

# trainer fields that shape the trajectory: a resumed run must have the values it was started with
_RESUME_KEYS = ("batch_size", "seed", "shuffle", "optimizer", "lr", "weight_decay", "momentum", "schedule",
                "lr_min_ratio", "lr_decay", "grad_clip", "select_metric", "select_mode")


def print_to_stderr(message: str) -> None:
    """Default ``log`` of the trainer: one line on stderr."""
    print(message, file=sys.stderr, flush=True)


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; ``"cpu"``; ``"cuda"`` / ``"cuda:N"`` (checked to exist).

    Raises :class:`~fpntools.errors.UserInputError` (one line) for an unknown name or a missing CUDA device.
    """
    name = str(name).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise UserInputError(f"--device {name} requested but CUDA is not available")
        if ":" in name:
            idx = name.split(":", 1)[1]
            if not idx.isdigit():
                raise UserInputError(f"--device {name}: the CUDA index must be a number (cuda:0, cuda:1, ...)")
            if int(idx) >= torch.cuda.device_count():
                raise UserInputError(f"--device {name} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
        return torch.device(name)
    raise UserInputError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}")


@dataclass
class TrainerConfig:
    """Hyper-parameters and run control of :class:`Trainer` (every field is checked on construction).

    ``batch_size`` is the global batch (split over processes under torchrun). Schedules (per optimizer step
    ``s`` of ``S = epochs * steps_per_epoch``): ``constant``; ``cosine``: ``lr_min + (lr - lr_min) (1 +
    cos(pi s / S)) / 2`` with ``lr_min = lr * lr_min_ratio``; ``exponential``: ``lr * lr_decay ** e`` in
    epoch ``e``. ``run_dir``: folder of ``config.json``, ``history.json`` and ``checkpoint.pt`` (``None``:
    no files, no resume). ``max_minutes`` / ``max_steps``: budgets; the run stops after the current step,
    checkpoints and reports ``completed=False``. ``select_metric``: keep (and finally load) the weights of the
    best epoch by this key of the epoch record.
    """

    epochs: int = 1
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    optimizer: str = "adam"
    momentum: float = 0.9
    schedule: str = "constant"
    lr_min_ratio: float = 0.0
    lr_decay: float = 1.0
    grad_clip: float | None = None
    shuffle: bool = True
    seed: int = 0
    device: str = "auto"
    run_dir: str | None = None
    resume: bool = False
    force: bool = False
    checkpoint_every: int = 0
    max_minutes: float = 0.0
    max_steps: int | None = None
    select_metric: str | None = None
    select_mode: str = "max"
    progress: bool = True

    def __post_init__(self) -> None:
        def bad(name: str, want: str) -> UserInputError:
            return UserInputError(f"{name} must be {want}, got {getattr(self, name)!r}")

        def finite(name: str) -> bool:
            v = getattr(self, name)
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        for name in ("epochs", "batch_size", "seed", "checkpoint_every"):
            if not isinstance(getattr(self, name), int) or isinstance(getattr(self, name), bool):
                raise bad(name, "an integer")
        if self.epochs < 1:
            raise bad("epochs", "at least 1")
        if self.batch_size < 1:
            raise bad("batch_size", "at least 1")
        if self.seed < 0:
            raise bad("seed", "nonnegative")
        if self.checkpoint_every < 0:
            raise bad("checkpoint_every", "nonnegative (0: only at epoch ends)")
        if not finite("lr") or self.lr <= 0:
            raise bad("lr", "a positive finite number")
        if not finite("weight_decay") or self.weight_decay < 0:
            raise bad("weight_decay", "a nonnegative finite number")
        if not finite("momentum") or not 0 <= self.momentum < 1:
            raise bad("momentum", "in [0, 1)")
        if self.optimizer not in OPTIMIZERS:
            raise bad("optimizer", f"one of {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise bad("schedule", f"one of {', '.join(SCHEDULES)}")
        if not finite("lr_min_ratio") or not 0 <= self.lr_min_ratio <= 1:
            raise bad("lr_min_ratio", "in [0, 1]")
        if not finite("lr_decay") or not 0 < self.lr_decay <= 1:
            raise bad("lr_decay", "in (0, 1]")
        if self.grad_clip is not None and (not finite("grad_clip") or self.grad_clip < 0):
            raise bad("grad_clip", "a nonnegative finite number or None")
        if not finite("max_minutes") or self.max_minutes < 0:
            raise bad("max_minutes", "a nonnegative finite number (0: no limit)")
        if self.max_steps is not None and (not isinstance(self.max_steps, int) or self.max_steps < 0):
            raise bad("max_steps", "a nonnegative integer or None")
        if self.select_mode not in ("max", "min"):
            raise bad("select_mode", "max or min")
        if self.select_metric is not None and not (isinstance(self.select_metric, str) and self.select_metric):
            raise bad("select_metric", "a record key such as 'val_loss', or None")
        if self.resume and self.force:
            raise UserInputError("--resume and --force contradict each other; pass one of them")
        if (self.resume or self.force) and self.run_dir is None:
            raise UserInputError("--resume / --force need a run folder (run_dir)")
        if self.device not in ("auto", "cpu"):
            resolve_device(self.device)  # unknown names and missing CUDA fail here, before any work

    def check_run_folder(self) -> None:
        """Refuse a run folder that already holds a checkpoint unless ``resume`` or ``force`` is set (a
        :class:`~fpntools.errors.UserInputError` naming its epoch). The :class:`Trainer` calls it; a command
        with expensive preparation (data generation) calls it first, so the refusal costs nothing."""
        if self.run_dir is None or self.resume or self.force:
            return
        ck = Path(self.run_dir) / CHECKPOINT_NAME
        if ck.is_file():
            try:
                s = load_checkpoint(ck)
                where = f"epoch {int(s.get('epoch', 0))} of {int(s.get('epochs', 0))}"
            except CheckpointError:
                where = "unreadable"
            raise UserInputError(f"run folder {self.run_dir} already holds a checkpoint ({where}); pass --resume "
                                 "to continue it or --force to start over")


@runtime_checkable
class BatchSource(Protocol):
    """Generated or augmented training data: ``len`` samples per epoch, ``batch(idx, generator)`` builds one.

    ``idx`` are the sample indices of this process's shard of the global batch; ``generator`` is a CPU
    ``torch.Generator`` seeded from ``(seed, epoch, batch index)`` (and the rank under torchrun): draw all
    randomness from it and the run is reproducible and resumes exactly.
    """

    def __len__(self) -> int: ...

    def batch(self, idx: Tensor, generator: torch.Generator) -> Any: ...


LossFn = Callable[[nn.Module, Any], "Tensor | tuple[Tensor, dict[str, float]]"]


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` returns.

    ``history``: one record per finished epoch; ``final``: the last record (``{}`` when none); ``best_epoch``
    / ``best_value``: the selected epoch (1-based) and its ``select_metric`` value; ``completed``: all epochs
    ran; ``stop_reason``: ``"done"``, ``"time"``, ``"max_steps"`` or ``"hook"``; ``steps``: optimizer steps.
    """

    history: list[dict[str, Any]] = field(default_factory=list)
    final: dict[str, Any] = field(default_factory=dict)
    best_epoch: int | None = None
    best_value: float | None = None
    completed: bool = True
    stop_reason: str = "done"
    steps: int = 0


def move_to(x: Any, device: torch.device) -> Any:
    """``x`` with every tensor moved to ``device`` (tuples, lists, dicts recursively; objects with ``.to``)."""
    if isinstance(x, Tensor):
        return x.to(device)
    if isinstance(x, tuple) and hasattr(x, "_fields"):  # named tuple
        return type(x)(*(move_to(v, device) for v in x))
    if isinstance(x, (tuple, list)):
        return type(x)(move_to(v, device) for v in x)
    if isinstance(x, dict):
        return type(x)((k, move_to(v, device)) for k, v in x.items())
    to = getattr(x, "to", None)
    if callable(to) and not isinstance(x, (str, bytes, type)):
        return to(device)
    return x


def _fetch(dataset: Dataset, idx: Tensor) -> Any:
    """The batch of samples ``idx`` (vectorised for tensor-backed datasets, else ``default_collate``)."""
    from fpntools.data.text import TokenWindows

    if isinstance(dataset, (TensorDataset, TokenWindows)):  # both support batched (tensor) indexing
        return dataset[idx]
    return default_collate([dataset[int(i)] for i in idx])


def _is_source(data: Any) -> bool:
    return callable(getattr(data, "batch", None)) and not isinstance(data, (TensorDataset,))


def _mix(*parts: int) -> int:
    """A 63-bit seed from integers (order matters); distinct tuples give distinct streams in practice."""
    h = 0
    for p in parts:
        h = (h * 1_000_003 + int(p) + 0x9E3779B9) % (2**63 - 1)
    return h


class Trainer:
    """Train ``model`` by minimising ``loss_fn(model, batch)`` over ``train_data`` (see the module docstring).

    Args:
        model: any ``nn.Module``; moved to the trainer's device.
        loss_fn: ``(model, batch) -> loss`` or ``(loss, {name: float})``: the mean loss over the (shard)
            batch and optional batch-mean metrics, recorded as ``train_<name>``.
        train_data: a map-style ``Dataset`` (the batch is what it yields, collated) or a :class:`BatchSource`.
        config: :class:`TrainerConfig`.
        evaluate: ``evaluate(model) -> {key: float}`` after every epoch (model in eval mode; keys by
            convention ``val_*``); its keys join the epoch record.
        hooks: objects with any of ``on_step(trainer, metrics)``, ``on_epoch_end(trainer, record)`` (may add
            keys or set ``trainer.stop = True``), ``state_dict()`` / ``load_state_dict(state)`` (checkpointed).
        run_config: what else defines the run (model, data, ...); written to ``config.json`` and checked on
            resume.
        dist_ctx: a :class:`~fpntools.training.distributed.DistContext`; default: joins the torchrun
            process group when ``WORLD_SIZE > 1``, else single process on ``config.device``.
        log: one line per epoch and status messages (main process only); ``None`` for silence.
        params: the parameters to optimise (default: all with ``requires_grad``).
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn, train_data: Dataset | BatchSource, config: TrainerConfig,
                 *, evaluate: Callable[[nn.Module], dict[str, float]] | None = None, hooks: Sequence[Any] = (),
                 run_config: dict[str, Any] | None = None, dist_ctx: DistContext | None = None,
                 log: Callable[[str], None] | None = print_to_stderr,
                 params: Iterable[nn.Parameter] | None = None) -> None:
        if not isinstance(config, TrainerConfig):
            raise TypeError(f"config must be a TrainerConfig, got {type(config).__name__}")
        n = len(train_data)  # type: ignore[arg-type]
        if n == 0:
            raise UserInputError("the training data is empty")
        if dist_ctx is None:
            if int(os.environ.get("WORLD_SIZE", "1")) > 1:
                dev = resolve_device(config.device)
                dist_ctx = init_distributed(device=None if dev.type == "cuda" else "cpu")
                atexit.register(shutdown_distributed)
            else:
                dist_ctx = DistContext(device=resolve_device(config.device))
        self.ctx = dist_ctx
        if config.batch_size < self.ctx.world_size:
            raise UserInputError(f"batch_size {config.batch_size} is smaller than the {self.ctx.world_size} processes")
        self.config = config
        self.device = self.ctx.device
        self.loss_fn, self.train_data, self.evaluate_fn = loss_fn, train_data, evaluate
        self.hooks = list(hooks)
        # as JSON sees it (Paths become strings, tuples lists): what config.json holds, what the checkpoint
        # stores (loadable with weights_only=True) and what a resumed run is compared with
        self.run_config = json.loads(json.dumps(dict(run_config or {}), default=str))
        self.log = log if self.ctx.is_main else None
        self.run_dir = Path(config.run_dir) if config.run_dir is not None else None
        self.is_source = _is_source(train_data)
        torch.manual_seed(config.seed)  # the global RNG (dropout, penalty draws, ...) of a seeded run
        self.model = model.to(self.device)
        broadcast_parameters(self.model, self.ctx)
        self.params = list(params) if params is not None else [p for p in self.model.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("no parameters to optimise (none requires grad)")
        self.optimizer = self._make_optimizer()
        self.steps_per_epoch = math.ceil(n / config.batch_size)
        self.scheduler = self._make_scheduler()
        self.epoch, self.batch_index, self.step = 0, 0, 0
        self.history: list[dict[str, Any]] = []
        self.stop = False
        self.best_epoch: int | None = None
        self.best_value: float | None = None
        self._best_state: dict[str, Tensor] | None = None
        self._sums: dict[str, float] = {}
        self._metric_keys: list[str] = []
        self._seconds = 0.0
        self._last_lr = config.lr
        self._updating = False
        self._begun = False

    # ------------------------------------------------------------------ setup
    def _make_optimizer(self) -> torch.optim.Optimizer:
        c = self.config
        if c.optimizer == "sgd":
            return torch.optim.SGD(self.params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)
        cls = torch.optim.Adam if c.optimizer == "adam" else torch.optim.AdamW
        return cls(self.params, lr=c.lr, weight_decay=c.weight_decay)

    def _make_scheduler(self) -> Any:
        c, spe = self.config, self.steps_per_epoch
        if c.schedule == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=spe * c.epochs,
                                                              eta_min=c.lr * c.lr_min_ratio)
        if c.schedule == "exponential":
            decay = c.lr_decay
            return torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: decay ** (s // spe))
        return torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda _: 1.0)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs (loadable with ``torch.load(weights_only=True)``)."""
        state: dict[str, Any] = {
            "format": _FORMAT,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch,
            "epochs": self.config.epochs,
            "batch_index": self.batch_index,
            "step": self.step,
            "sums": dict(self._sums),
            "metric_keys": list(self._metric_keys),
            "seconds": self._seconds,
            "last_lr": self._last_lr,
            "history": [dict(h) for h in self.history],
            "best": {"epoch": self.best_epoch, "value": self.best_value, "state": self._best_state},
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "hooks": [h.state_dict() if callable(getattr(h, "state_dict", None)) else None for h in self.hooks],
            "trainer": {k: getattr(self.config, k) for k in _RESUME_KEYS},
            "run_config": self.run_config,
        }
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (after checking that it belongs to the same run)."""
        self._check_same_run(state)
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as exc:  # torch lists every mismatch on its own line; keep the first
            lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
            detail = lines[1] if len(lines) > 1 else lines[0]
            raise UserInputError(f"the checkpoint's weights do not fit the model: {detail}; pass --force to start "
                                 "over") from None
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.batch_index, self.step = int(state["epoch"]), int(state["batch_index"]), int(state["step"])
        self._sums = {k: float(v) for k, v in state["sums"].items()}
        self._metric_keys = list(state.get("metric_keys", []))
        self._seconds = float(state.get("seconds", 0.0))
        self._last_lr = float(state.get("last_lr", self.config.lr))
        self.history = [dict(h) for h in state["history"]]
        best = state.get("best") or {}
        self.best_epoch, self.best_value, self._best_state = best.get("epoch"), best.get("value"), best.get("state")
        torch.set_rng_state(state["rng"].cpu())
        if state.get("cuda_rng") and torch.cuda.is_available() and len(state["cuda_rng"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])
        hook_states = state.get("hooks", [])
        for h, s in zip(self.hooks, hook_states):
            if s is not None and callable(getattr(h, "load_state_dict", None)):
                h.load_state_dict(s)

    def _check_same_run(self, state: dict[str, Any]) -> None:
        saved_t = state.get("trainer", {})
        for key in _RESUME_KEYS:
            if key in saved_t and saved_t[key] != getattr(self.config, key):
                raise UserInputError(
                    f"cannot resume: the checkpoint was written with {key}={saved_t[key]!r} but this run has "
                    f"{key}={getattr(self.config, key)!r}; use the same value or --force to start over")
        if saved_t.get("schedule") == "cosine" and state.get("epochs", self.config.epochs) != self.config.epochs:
            raise UserInputError(
                f"cannot resume: the checkpoint was written with epochs={state['epochs']} and a cosine schedule over "
                f"all epochs, but this run has epochs={self.config.epochs}; use the same value or --force")
        saved_r = state.get("run_config", {})
        for key in sorted(set(saved_r) | set(self.run_config)):
            if saved_r.get(key, "<missing>") != self.run_config.get(key, "<missing>"):
                raise UserInputError(
                    f"cannot resume: the checkpoint was written with {key}={saved_r.get(key, '<missing>')!r} but this "
                    f"run has {key}={self.run_config.get(key, '<missing>')!r}; use the same value or --force")

    # ------------------------------------------------------------------ run folder
    @property
    def checkpoint_path(self) -> Path | None:
        return self.run_dir / CHECKPOINT_NAME if self.run_dir is not None else None

    def _prepare_run(self) -> None:
        """Refuse, resume or start over in the run folder; write ``config.json`` for a new run."""
        if self.run_dir is None or self._begun:
            self._begun = True
            return
        from fpntools.cli_support import check_output_dir

        check_output_dir(self.run_dir, what="run folder")
        ck = self.checkpoint_path
        assert ck is not None
        c = self.config
        c.check_run_folder()
        if ck.is_file() and c.resume:
            try:
                state = load_checkpoint(ck, map_location=self.device)
            except CheckpointError as exc:
                raise UserInputError(f"{exc}; pass --force to start over") from None
            self.load_state_dict(state)
            self._say(f"resuming {ck} at epoch {self.epoch + 1}, batch {self.batch_index} (step {self.step})")
        else:
            if c.resume:
                self._say(f"no checkpoint in {self.run_dir}; starting a new run")
            if self.ctx.is_main:
                if ck.is_file():  # --force: the old checkpoint must not outlive the new config
                    ck.unlink()
                self._write_json(CONFIG_NAME, {"trainer": asdict(c), **self.run_config})
                self._write_json(HISTORY_NAME, [])
            barrier(self.ctx)
        self._begun = True

    def _write_json(self, name: str, obj: Any) -> None:
        assert self.run_dir is not None
        atomic_write_bytes(self.run_dir / name, (json.dumps(obj, indent=1, default=str) + "\n").encode())

    def save(self) -> None:
        """Write ``checkpoint.pt`` and ``history.json`` atomically (main process; others wait)."""
        if self.run_dir is not None and self.ctx.is_main:
            save_checkpoint(self.run_dir / CHECKPOINT_NAME, self.state_dict())
            self._write_json(HISTORY_NAME, self.history)
        barrier(self.ctx)

    def _say(self, msg: str) -> None:
        if self.log is not None:
            self.log(msg)

    # ------------------------------------------------------------------ one step
    def _order(self, epoch: int) -> Tensor:
        n = len(self.train_data)  # type: ignore[arg-type]
        if not self.config.shuffle:
            return torch.arange(n)
        g = torch.Generator().manual_seed(self.config.seed * 1_000_003 + epoch)
        return torch.randperm(n, generator=g)

    def _batch(self, shard: Tensor) -> Any:
        if self.is_source:
            # under torchrun each rank draws its own stream (identical noise on every shard would correlate them)
            parts = (self.config.seed, self.epoch, self.batch_index) + ((self.ctx.rank,) if self.ctx.enabled else ())
            g = torch.Generator().manual_seed(_mix(*parts))
            return self.train_data.batch(shard, g)  # type: ignore[union-attr]
        return _fetch(self.train_data, shard)  # type: ignore[arg-type]

    def _train_step(self, idx: Tensor) -> dict[str, float]:
        """One optimizer step on the global batch ``idx``; returns the global batch means (``loss``, metrics)."""
        self.model.train()
        n = len(idx)
        lo, hi = shard_bounds(n, self.ctx)
        self.optimizer.zero_grad(set_to_none=True)
        k = hi - lo
        values = {key: 0.0 for key in ["loss", *self._metric_keys]}
        if k > 0:
            batch = move_to(self._batch(idx[lo:hi]), self.device)
            out = self.loss_fn(self.model, batch)
            loss, metrics = out if isinstance(out, tuple) else (out, {})
            if not isinstance(loss, Tensor) or loss.dim() != 0:
                raise TypeError("loss_fn must return a scalar tensor (or (scalar, metrics))")
            (loss * (k / n)).backward()
            if not self._metric_keys and metrics:
                self._metric_keys = list(metrics)
            values = {"loss": float(loss.detach()) * k}
            for key in self._metric_keys:
                values[key] = float(metrics.get(key, 0.0)) * k
        all_reduce_gradients(self.params, self.ctx)
        if self.config.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.config.grad_clip)
        self._updating = True  # until the step is counted the state is half-updated: no checkpoint on interrupt
        self._last_lr = float(self.optimizer.param_groups[0]["lr"])
        self.optimizer.step()
        self.scheduler.step()
        keys = list(values)
        sums = all_reduce_sums([values[key] for key in keys] + [self._time_up()], self.ctx)
        self._time_flag = sums[-1] > 0
        if not math.isfinite(sums[0]):
            from fpntools.cli_support import NotUsableError

            raise NotUsableError(f"training loss is not finite at epoch {self.epoch + 1}, step {self.step + 1}; "
                                 "lower the learning rate (the last checkpoint holds the state before)")
        return {key: s / n for key, s in zip(keys, sums)} | {"_n": float(n)}

    def _time_up(self) -> float:
        m = self.config.max_minutes
        return float(m > 0 and time.monotonic() - self._t0 >= 60.0 * m)

    # ------------------------------------------------------------------ evaluation and records
    def evaluate_now(self) -> dict[str, float]:
        """``evaluate(model)`` with the model in eval mode (its mode restored afterwards); ``{}`` without one."""
        if self.evaluate_fn is None:
            return {}
        was = self.model.training
        self.model.eval()
        try:
            return dict(self.evaluate_fn(self.model))
        finally:
            self.model.train(was)

    def running_record(self) -> dict[str, float]:
        """Means of the unfinished epoch so far: ``train_loss``, ``train_<metric>``, ``seconds``, ``steps``."""
        count = self._sums.get("_n", 0.0)
        rec = {f"train_{k}": v / count for k, v in self._sums.items() if k not in ("_n", "_steps") and count}
        rec["seconds"] = self._seconds
        rec["steps"] = int(self._sums.get("_steps", 0))
        return rec

    def _end_epoch(self) -> dict[str, Any]:
        rec: dict[str, Any] = {"epoch": self.epoch + 1}
        count = self._sums.get("_n", 0.0)
        for k, v in self._sums.items():
            if k not in ("_n", "_steps"):
                rec[f"train_{k}"] = v / max(count, 1.0)
        rec["lr"] = self._last_lr  # the learning rate of the epoch's last step
        rec["seconds"] = self._seconds
        rec["steps"] = int(self._sums.get("_steps", 0))
        rec.update(self.evaluate_now())
        for h in self.hooks:
            if callable(getattr(h, "on_epoch_end", None)):
                h.on_epoch_end(self, rec)
        self._select(rec)
        self.history.append(rec)
        self.epoch += 1
        self.batch_index = 0
        self._sums, self._seconds = {}, 0.0
        return rec

    def _select(self, rec: dict[str, Any]) -> None:
        key = self.config.select_metric
        if key is None:
            return
        if key not in rec:
            raise UserInputError(f"select_metric {key!r} is not in the epoch record (keys: {', '.join(rec)})")
        v = float(rec[key])
        if not math.isfinite(v):
            return
        better = self.best_value is None or (v > self.best_value if self.config.select_mode == "max" else v < self.best_value)
        if better:
            self.best_epoch, self.best_value = int(rec["epoch"]), v
            self._best_state = {k: t.detach().clone() for k, t in self.model.state_dict().items()}

    def _log_record(self, rec: dict[str, Any]) -> None:
        parts = [f"epoch {rec['epoch']}/{self.config.epochs}"]
        for k, v in rec.items():
            if k in ("epoch",):
                continue
            parts.append(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}")
        self._say("  ".join(parts))

    # ------------------------------------------------------------------ the loop
    def fit(self) -> TrainResult:
        """Train to the end (or a budget / hook stop) and return the history; see the class docstring.

        With ``select_metric`` the best epoch's weights are loaded into the model at the end (the checkpoint
        keeps the last weights too, so ``--resume`` continues from the last step).
        """
        from tqdm.auto import tqdm

        self._prepare_run()
        c = self.config
        self._t0 = time.monotonic()
        self._time_flag = False
        self.stop = False
        reason = "done"
        bar = None
        try:
            while self.epoch < c.epochs and reason == "done":
                if c.max_minutes > 0:  # the evaluation may have used up the budget; every rank decides alike
                    self._time_flag = all_reduce_sums([self._time_up()], self.ctx)[0] > 0
                order = self._order(self.epoch)
                bar = tqdm(total=self.steps_per_epoch, initial=self.batch_index, desc=f"epoch {self.epoch + 1}/{c.epochs}",
                           disable=not (c.progress and self.ctx.is_main), leave=False, file=sys.stderr)
                while self.batch_index < self.steps_per_epoch:
                    if c.max_steps is not None and self.step >= c.max_steps:
                        reason = "max_steps"
                        break
                    if self._time_flag:
                        reason = "time"
                        break
                    idx = order[self.batch_index * c.batch_size: (self.batch_index + 1) * c.batch_size]
                    t0 = time.perf_counter()
                    m = self._train_step(idx)
                    self._seconds += time.perf_counter() - t0
                    nb = m.pop("_n")
                    for k, v in m.items():
                        self._sums[k] = self._sums.get(k, 0.0) + v * nb
                    self._sums["_n"] = self._sums.get("_n", 0.0) + nb
                    self._sums["_steps"] = self._sums.get("_steps", 0.0) + 1
                    self.batch_index += 1
                    self.step += 1
                    self._updating = False
                    bar.update(1)
                    count = self._sums["_n"]
                    bar.set_postfix({k: f"{self._sums[k] / count:.4g}" for k in ["loss", *self._metric_keys][:4]},
                                    refresh=False)
                    for h in self.hooks:
                        if callable(getattr(h, "on_step", None)):
                            h.on_step(self, m)
                    if c.checkpoint_every and self.step % c.checkpoint_every == 0:
                        self.save()
                    if self.stop:
                        reason = "hook"
                        break
                bar.close()
                bar = None
                if reason != "done":
                    break
                rec = self._end_epoch()
                self.save()
                self._log_record(rec)
                if self.stop:
                    reason = "hook"
            if reason != "done":
                self.save()
                what = {"max_steps": f"max_steps={c.max_steps}", "time": f"the time budget of {c.max_minutes:g} min",
                        "hook": "a hook"}[reason]
                where = f"; checkpoint in {self.run_dir} (--resume continues)" if self.run_dir is not None else ""
                self._say(f"stopped by {what} at epoch {self.epoch + 1}, step {self.step}{where}")
        except KeyboardInterrupt:
            if bar is not None:
                bar.close()
            if not self._updating:  # never save a half-applied step; the previous checkpoint stays valid
                self.save()
                if self.run_dir is not None:
                    self._say(f"interrupted; checkpoint at step {self.step} in {self.run_dir} (--resume continues)")
            raise
        if self._best_state is not None:
            self.model.load_state_dict(self._best_state)
            self._say(f"loaded the weights of the best epoch {self.best_epoch} "
                      f"({c.select_metric}={self.best_value:.6g})")
        completed = self.epoch >= c.epochs
        return TrainResult(history=self.history, final=self.history[-1] if self.history else {},
                           best_epoch=self.best_epoch, best_value=self.best_value, completed=completed,
                           stop_reason=reason, steps=self.step)

