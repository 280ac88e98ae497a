"""Atomic, resumable checkpoints.

A checkpoint is written to a temporary file in the destination directory and moved into place with
``os.replace``, which is atomic on POSIX and Windows: an interrupted write never leaves a truncated
checkpoint behind, so a resumed run always finds either the previous or the new state.
Checkpoints are read with ``torch.load(..., weights_only=True)``: no pickled code is executed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from fpntools.atomic_io import atomic_write, atomic_write_bytes  # re-exported (torch-free home)

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "atomic_write", "atomic_write_bytes"]


class CheckpointError(RuntimeError):
    """A checkpoint or weights file is missing, unreadable or does not hold what was expected."""


def save_checkpoint(path: str | os.PathLike, obj: dict[str, Any]) -> None:
    """Save a dict of tensors / state dicts / plain Python values atomically to ``path``."""
    atomic_write(path, lambda fh: torch.save(obj, fh))


def _reason(exc: BaseException) -> str:
    """One line from torch's (multi-line) load error: the unpickler's own reason when it gives one."""
    text = str(exc)
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1].split("Check the documentation", 1)[0]
    text = " ".join(text.split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (``weights_only=True``).

    Raises :class:`CheckpointError` naming the file when it is missing or corrupt.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several unrelated types for corrupt files
        raise CheckpointError(f"checkpoint file {path} is corrupt or not a torch checkpoint ({_reason(exc)})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint file {path} holds a {type(obj).__name__}, expected a dict")
    return obj
