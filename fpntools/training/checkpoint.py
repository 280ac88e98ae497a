"""Atomic, resumable checkpoints.

A checkpoint is written to a temporary file in the destination directory and moved into place with
``os.replace``, which is atomic on POSIX and Windows: an interrupted write never leaves a truncated
checkpoint behind, so a resumed run always finds either the previous or the new state.
Checkpoints are read with ``torch.load(..., weights_only=True)``: no pickled code is executed.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

import torch

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "atomic_write", "atomic_write_bytes"]


class CheckpointError(RuntimeError):
    """A checkpoint or weights file is missing, unreadable or does not hold what was expected."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], Any]) -> None:
    """Call ``write(fh)`` on a temporary file beside ``path``, fsync it and move it onto ``path`` atomically.

    On any error the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the permissions open() would
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (all or nothing)."""
    atomic_write(path, lambda fh: fh.write(data))


def save_checkpoint(path: str | os.PathLike, obj: dict[str, Any]) -> None:
    """Save a dict of tensors / state dicts / plain Python values atomically to ``path``."""
    atomic_write(path, lambda fh: torch.save(obj, fh))


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
        raise CheckpointError(f"checkpoint file {path} is corrupt or not a torch checkpoint: {exc}") from exc
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint file {path} holds a {type(obj).__name__}, expected a dict")
    return obj
