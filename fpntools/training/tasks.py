"""Loss functions and evaluators of the standard supervised tasks, for :class:`~fpntools.training.Trainer`.

Tasks (the model returns a :class:`~fpntools.models.ZooOutput` or a plain tensor of predictions):

* ``"classification"``: cross-entropy of logits ``(B, C)`` (or ``(B, C, H, W)`` per pixel for
  segmentation), accuracy (per image the fraction of correct pixels for segmentation);
* ``"lm"``: token cross-entropy of ``(B, T, V)`` scores, token accuracy, perplexity ``exp(mean loss)``;
* ``"regression"``: mean squared error.

The training loss adds the model output's ``aux_loss`` (the Jacobian penalty) to the task loss.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from fpntools.training.trainer import _fetch, move_to

__all__ = ["TASKS", "task_loss", "task_metrics", "dataset_evaluator"]

TASKS = ("classification", "lm", "regression")


def _check_task(task: str) -> None:
    if task not in TASKS:
        from fpntools.errors import UserInputError

        raise UserInputError(f"task must be one of {', '.join(TASKS)}, got {task!r}")


def task_metrics(task: str, pred: Tensor, y: Tensor) -> tuple[Tensor, Tensor | None]:
    """Mean task loss and mean accuracy (``None`` for regression) of predictions ``pred`` against ``y``."""
    if task == "regression":
        return F.mse_loss(pred, y.to(pred.dtype)), None
    if task == "lm":
        flat, yy = pred.reshape(-1, pred.shape[-1]), y.reshape(-1)
        return F.cross_entropy(flat, yy), (flat.argmax(-1) == yy).double().mean()
    hits = (pred.argmax(1) == y).double()
    if hits.dim() > 1:  # segmentation: fraction of correct pixels per image
        hits = hits.flatten(1).mean(dim=1)
    return F.cross_entropy(pred, y), hits.mean()


def task_loss(task: str) -> Callable[[nn.Module, Any], tuple[Tensor, dict[str, float]]]:
    """``loss_fn(model, (x, y))`` for the trainer: task loss + ``aux_loss``; metrics ``acc`` (not for
    regression), ``forward_steps`` (mean forward solver steps) and ``jacobian_loss`` (when the model has one)."""
    _check_task(task)

    def loss_fn(model: nn.Module, batch: Any) -> tuple[Tensor, dict[str, float]]:
        x, y = batch
        out = model(x)
        loss, acc = task_metrics(task, getattr(out, "logits", out), y)
        metrics: dict[str, float] = {}
        if acc is not None:
            metrics["acc"] = float(acc)
        metrics["forward_steps"] = float(getattr(out, "forward_steps", 0.0))
        aux = getattr(out, "aux_loss", None)
        if aux is not None:
            metrics["jacobian_loss"] = float(aux.detach())
            loss = loss + aux
        return loss, metrics

    return loss_fn


def dataset_evaluator(dataset: Dataset, task: str, batch_size: int = 256,
                      prefix: str = "val") -> Callable[[nn.Module], dict[str, float]]:
    """``evaluate(model)`` on ``dataset`` of ``(x, y)`` pairs in batches of ``batch_size`` (no gradients).

    Returns ``{prefix}_loss`` (mean task loss over samples), ``{prefix}_acc`` (classification / lm),
    ``{prefix}_ppl`` (lm) and ``{prefix}_forward_steps``. Inside a ``torch.distributed`` process group every
    process evaluates a contiguous shard and the sums are all-reduced, so all processes get the same numbers.
    """
    _check_task(task)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")

    @torch.no_grad()
    def evaluate(model: nn.Module) -> dict[str, float]:
        from fpntools.training.distributed import DistContext, all_reduce_sums, shard_bounds

        param = next(iter(model.parameters()), None)
        device = param.device if param is not None else torch.device("cpu")
        ctx = DistContext(device=device)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            ctx = DistContext(rank=torch.distributed.get_rank(), world_size=torch.distributed.get_world_size(),
                              device=device)
        n = len(dataset)  # type: ignore[arg-type]
        lo, hi = shard_bounds(n, ctx)
        s = [0.0, 0.0, 0.0]
        for start in range(lo, hi, batch_size):
            idx = torch.arange(start, min(start + batch_size, hi))
            x, y = move_to(_fetch(dataset, idx), device)
            out = model(x)
            loss, acc = task_metrics(task, getattr(out, "logits", out), y)
            s[0] += float(loss) * len(idx)
            s[1] += float(acc) * len(idx) if acc is not None else 0.0
            s[2] += float(getattr(out, "forward_steps", 0.0)) * len(idx)
        s = all_reduce_sums(s, ctx)
        count = max(n, 1)
        m = {f"{prefix}_loss": s[0] / count}
        if task != "regression":
            m[f"{prefix}_acc"] = s[1] / count
        if task == "lm":
            m[f"{prefix}_ppl"] = math.exp(min(m[f"{prefix}_loss"], 50.0))
        m[f"{prefix}_forward_steps"] = s[2] / count
        return m

    return evaluate
