"""Weights of the CT networks: ``<name>.safetensors`` (the state dict) plus ``<name>.json`` (what the tensors
are: the model kind, the architecture :class:`~problems.ct.ffpn.FFPNConfig`, the :class:`fpntools.SolveConfig`,
the geometries and noise range of training and the training summary with its history).

``{"kind": "ffpn" | "unrolled", "model_config": {...}, "solve_config": {...}, "geometries": [...],
"noise_range": [lo, hi], "history": [...], "train_config": {...}}``. The weights serve any geometry (the learned
parts act in image space); the recorded training geometries say where they were validated.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from fpntools.atomic_io import atomic_write_bytes
from fpntools.errors import UserInputError
from fpntools.solve_config import SolveConfig
from fpntools.training.checkpoint import CheckpointError
from problems.ct.ffpn import FFPN, MODEL_KINDS, FFPNConfig, build_model, solve_kind

__all__ = ["WEIGHTS_DIR", "SHIPPED_NAMES", "save_weights", "load_model", "read_metadata", "configs_from_metadata",
           "shipped_weights"]

WEIGHTS_DIR = Path(__file__).resolve().parents[2] / "data" / "ct"
#: file stems of the shipped weights per model kind.
SHIPPED_NAMES = {"ffpn": "ffpn", "unrolled": "unrolled"}


def save_weights(model: FFPN, path: str | os.PathLike, extra: dict[str, Any] | None = None) -> None:
    """Write ``path`` (``.safetensors``) and the metadata sidecar ``path`` with suffix ``.json``, atomically."""
    from safetensors.torch import save as st_save

    path = Path(path)
    if path.suffix != ".safetensors":
        raise UserInputError(f"weights file must end in .safetensors, got {path}")
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(path, st_save(tensors))
    meta = {"kind": model.kind, "model_config": model.config.to_dict(), "solve_config": model.solve.to_dict(),
            **(extra or {})}
    atomic_write_bytes(path.with_suffix(".json"), json.dumps(meta, indent=2, default=float).encode())


def configs_from_metadata(meta: dict[str, Any]) -> tuple[str, FFPNConfig, SolveConfig]:
    """``(kind, architecture, solve)`` of a weights' metadata.

    Raises ``ValueError`` / ``KeyError`` / ``TypeError`` on a malformed file and ``ValueError`` when the
    declared kind and the solve disagree.
    """
    kind = meta["kind"]
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {kind!r} (expected one of {', '.join(MODEL_KINDS)})")
    solve = SolveConfig.from_dict(dict(meta["solve_config"]))
    config = FFPNConfig.from_dict(dict(meta["model_config"]))
    if solve_kind(solve) != kind:
        raise ValueError(f"the file declares a {kind} model but its solve is of the {solve_kind(solve)} kind")
    return kind, config, solve


def read_metadata(path: str | os.PathLike) -> tuple[dict[str, Any], str, FFPNConfig, SolveConfig]:
    """The metadata sidecar of ``path`` and what it describes; :class:`CheckpointError` (one line) when a file
    is missing or malformed."""
    path = Path(path)
    meta_path = path.with_suffix(".json")
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    if not meta_path.is_file():
        raise CheckpointError(f"weights metadata not found: {meta_path} (written next to the .safetensors file)")
    try:
        meta = json.loads(meta_path.read_text())
        kind, config, solve = configs_from_metadata(meta)
    except Exception as exc:  # noqa: BLE001 - any malformed content is the same one-line error
        reason = f"missing key {exc}" if isinstance(exc, KeyError) else str(exc).splitlines()[0]
        raise CheckpointError(f"weights metadata {meta_path} is not valid: {reason}") from None
    return meta, kind, config, solve


def load_model(path: str | os.PathLike, kind: str | None = None) -> tuple[FFPN, dict[str, Any]]:
    """Load weights written by :func:`save_weights`: ``(model in eval mode, metadata)``.

    ``kind``: the kind the caller needs (``"ffpn"`` or ``"unrolled"``); weights of the other kind are a
    :class:`~fpntools.errors.UserInputError` naming the right ``--method``. Malformed or mismatching files are
    a :class:`~fpntools.training.checkpoint.CheckpointError`.
    """
    from safetensors.torch import load as st_load

    path = Path(path)
    meta, file_kind, config, solve = read_metadata(path)
    if kind is not None and kind != file_kind:
        what = f"an unrolled network ({solve.max_iter} fixed steps)" if file_kind == "unrolled" else "an F-FPN"
        raise UserInputError(f"weights {path} hold {what}, not a {kind} model; use --method {file_kind}")
    try:
        tensors = st_load(path.read_bytes())
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"weights {path} are corrupt: {str(exc).splitlines()[0]}") from None
    model = build_model(file_kind, config, solve)
    try:
        model.load_state_dict(tensors)
    except RuntimeError as exc:
        first = next((line.strip() for line in str(exc).splitlines()[1:] if line.strip()), str(exc))
        raise CheckpointError(f"weights {path} do not fit the {file_kind} model their metadata describes: {first}"
                              ) from None
    return model.eval(), meta


def shipped_weights(kind: str = "ffpn") -> Path:
    """Path of the weights shipped with the package (one set per model kind, for any geometry)."""
    if kind not in MODEL_KINDS:
        raise UserInputError(f"no shipped weights for {kind!r}; use one of {', '.join(MODEL_KINDS)}")
    p = WEIGHTS_DIR / f"{SHIPPED_NAMES[kind]}.safetensors"
    if not p.is_file():
        raise CheckpointError(f"no shipped weights for {kind!r} ({p} missing); train with `fpntools ct train`")
    return p
