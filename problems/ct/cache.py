"""Where the CT application caches projection matrices and simulated data sets.

A module of its own so that :mod:`problems.ct.projector` and :mod:`problems.ct.phantoms` share it without
importing each other.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["default_cache_dir"]


def default_cache_dir() -> Path:
    """``$FPNTOOLS_CACHE/ct`` or ``~/.cache/fpntools/ct``."""
    root = os.environ.get("FPNTOOLS_CACHE")
    base = Path(root) if root else Path.home() / ".cache" / "fpntools"
    return base / "ct"
