"""Training: the one training loop (:class:`Trainer`), checkpoints, distributed data parallelism, task losses.

* :mod:`fpntools.training.trainer`: :class:`Trainer`, :class:`TrainerConfig`, :class:`TrainResult`,
  :class:`BatchSource`, :func:`resolve_device`;
* :mod:`fpntools.training.tasks`: :func:`task_loss` and :func:`dataset_evaluator` for classification,
  language modelling and regression;
* :mod:`fpntools.training.checkpoint`: atomic writes and ``weights_only`` checkpoint loading;
* :mod:`fpntools.training.distributed`: ``torchrun`` process groups, exact gradient all-reduce.

Names are imported on first use, so ``import fpntools.training.checkpoint`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOME = {
    "CheckpointError": "checkpoint", "atomic_write": "checkpoint", "atomic_write_bytes": "checkpoint",
    "load_checkpoint": "checkpoint", "save_checkpoint": "checkpoint",
    "TASKS": "tasks", "dataset_evaluator": "tasks", "task_loss": "tasks", "task_metrics": "tasks",
    "BatchSource": "trainer", "LossFn": "trainer", "Trainer": "trainer", "TrainerConfig": "trainer",
    "TrainResult": "trainer", "move_to": "trainer", "resolve_device": "trainer",
    "DistContext": "distributed",
}

__all__ = sorted(_HOME)


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module 'fpntools.training' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"fpntools.training.{_HOME[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
