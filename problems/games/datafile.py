"""The user's own game data: ``.npz`` files of contexts and equilibrium mixed strategies.

File format (``numpy.savez`` / ``savez_compressed``, read with ``allow_pickle=False``)::

    context  (N, p)       float   the context d of each sample
    x        (N, n1)      float   player 1's equilibrium mixed strategy (entries >= 0, summing to 1)
    y        (N, n2)      float   player 2's equilibrium mixed strategy
    A        (N, n1, n2)  float   optional: player 1's payoffs (player 1 maximises x^T A y)
    B        (N, n1, n2)  float   optional: player 2's payoffs; A without B means a zero-sum game, B = -A
    gap      (N,)         float   optional, ignored on reading: the Nash gap of (x, y) (written by make-data)

Strategies may miss the simplex by at most ``simplex_tol`` (default ``1e-6``: entries ``>= -tol`` and sums
within ``tol`` of 1); they are then clipped at zero and renormalised. Anything else is refused with one line
naming the key and the problem (:class:`~fpntools.errors.UserInputError`): a missing key, a wrong number of
dimensions, sizes that disagree between keys, NaN or inf (with the first offending index), a strategy off the
simplex, an unreadable or pickled file. With payoffs the Nash gap of every target is computed (float64) and
reported: it scores the predictions under the true games (``evaluate``, ``bench``).

:class:`FileDataConfig` is the data description of a model trained from such a file (stored with its weights):
the file's path and SHA-256, its sizes, and the deterministic split into training and held-out samples.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fpntools.atomic_io import atomic_write
from fpntools.errors import UserInputError
from problems.games.data import MAX_GAMES, GameDataset
from problems.games.equilibria import nash_gap
from problems.games.families import MAX_CONTEXT_DIM

__all__ = [
    "REQUIRED_KEYS",
    "OPTIONAL_KEYS",
    "DEFAULT_SIMPLEX_TOL",
    "MAX_DATA_ACTIONS",
    "FileDataConfig",
    "load_game_data",
    "save_game_data",
    "load_contexts",
    "file_sha256",
]

REQUIRED_KEYS = ("context", "x", "y")
OPTIONAL_KEYS = ("A", "B", "gap")
#: How far a stored strategy may miss the simplex (negative entries, sum minus one) before it is refused.
DEFAULT_SIMPLEX_TOL = 1e-6
#: Most actions per player in a data file (the learned game's ``(n1 + n2)^2`` operator is dense).
MAX_DATA_ACTIONS = 1024


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes (identifies the training data of a model)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _open_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise UserInputError(f"data file not found: {path}" if not path.exists() else f"data file {path} is not a file")
    with open(path, "rb") as fh:
        magic = fh.read(6)
    if magic == b"\x93NUMPY":
        raise UserInputError(f"{path}: expected an .npz archive with keys context, x, y, got a single array (.npy)")
    if not magic.startswith(b"PK"):
        raise UserInputError(f"{path}: not a readable .npz archive (not a zip file)")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except ValueError as exc:  # object arrays need pickle: refused
        raise UserInputError(f"{path}: cannot read without pickle ({str(exc).splitlines()[0]}); store plain float arrays") from None
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise UserInputError(f"{path}: not a readable .npz archive ({str(exc).splitlines()[0]})") from None


def _float_array(arrays: dict[str, np.ndarray], key: str, ndim: int, path: Path, shape_text: str) -> np.ndarray:
    a = arrays[key]
    if a.dtype.kind not in "fiub":
        raise UserInputError(f"{path}: '{key}' must hold numbers, got dtype {a.dtype}")
    if a.ndim != ndim:
        raise UserInputError(f"{path}: '{key}' must have shape {shape_text}, got {tuple(a.shape)}")
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
        bad = tuple(int(i) for i in np.argwhere(~np.isfinite(a))[0])
        raise UserInputError(f"{path}: '{key}' holds a non-finite value (NaN or inf) at index {bad}")
    return a


def _check_simplex(s: np.ndarray, key: str, tol: float, where: str) -> np.ndarray:
    """Refuse rows of ``s`` farther than ``tol`` from the simplex; clip and renormalise the others."""
    low = s.min(axis=1)
    off = np.abs(s.sum(axis=1) - 1.0)
    bad = np.nonzero((low < -tol) | (off > tol))[0]
    if len(bad):
        i = int(bad[0])
        raise UserInputError(
            f"{where}: '{key}' row {i} is not a mixed strategy (smallest entry {low[i]:.3g}, entries sum to "
            f"{s[i].sum():.9g}; tolerance {tol:g}); {len(bad)} of {len(s)} rows are off the simplex"
        )
    s = np.clip(s, 0.0, None)
    return s / s.sum(axis=1, keepdims=True)


def load_game_data(path: str | os.PathLike, simplex_tol: float = DEFAULT_SIMPLEX_TOL) -> GameDataset:
    """Read and check a data file (module docstring); returns a :class:`GameDataset` (``A``, ``B``, ``gap``
    ``None`` without payoffs). Raises :class:`~fpntools.errors.UserInputError` in one line on any problem."""
    path = Path(path)
    if not 0.0 <= simplex_tol < 1.0:
        raise UserInputError(f"simplex tolerance must lie in [0, 1), got {simplex_tol}")
    arrays = _open_npz(path)
    missing = [k for k in REQUIRED_KEYS if k not in arrays]
    if missing:
        raise UserInputError(
            f"{path}: missing key{'s' if len(missing) > 1 else ''} {', '.join(missing)} (need context (n, p), x (n, n1), "
            f"y (n, n2); optional A, B (n, n1, n2)); found {', '.join(sorted(arrays)) or 'no arrays'}"
        )
    unknown = sorted(set(arrays) - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS))
    if unknown:
        raise UserInputError(f"{path}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} "
                             f"(allowed: {', '.join(REQUIRED_KEYS + OPTIONAL_KEYS)})")
    d = _float_array(arrays, "context", 2, path, "(n, p)")
    x = _float_array(arrays, "x", 2, path, "(n, n1)")
    y = _float_array(arrays, "y", 2, path, "(n, n2)")
    n = d.shape[0]
    if n < 1:
        raise UserInputError(f"{path}: no samples ('context' has 0 rows)")
    if n > MAX_GAMES:
        raise UserInputError(f"{path}: {n:,} samples, above the limit {MAX_GAMES:,}")
    if not 1 <= d.shape[1] <= MAX_CONTEXT_DIM:
        raise UserInputError(f"{path}: context dimension must be between 1 and {MAX_CONTEXT_DIM}, got {d.shape[1]}")
    for key, s in (("x", x), ("y", y)):
        if s.shape[0] != n:
            raise UserInputError(f"{path}: '{key}' has {s.shape[0]} rows but 'context' has {n}")
        if not 1 <= s.shape[1] <= MAX_DATA_ACTIONS:
            raise UserInputError(f"{path}: '{key}' must have between 1 and {MAX_DATA_ACTIONS} actions, got {s.shape[1]}")
    x = _check_simplex(x, "x", simplex_tol, str(path))
    y = _check_simplex(y, "y", simplex_tol, str(path))
    A = B = gap = None
    if "B" in arrays and "A" not in arrays:
        raise UserInputError(f"{path}: 'B' given without 'A' (give A and B, or A alone for a zero-sum game)")
    if "A" in arrays:
        shape = (n, x.shape[1], y.shape[1])
        A = _float_array(arrays, "A", 3, path, f"{shape}")
        B = _float_array(arrays, "B", 3, path, f"{shape}") if "B" in arrays else -A
        for key, P in (("A", A), ("B", B)):
            if P.shape != shape:
                raise UserInputError(f"{path}: '{key}' must have shape (n, n1, n2) = {shape}, got {tuple(P.shape)}")
        gap = nash_gap(A, B, x, y)
    info = {
        "family": f"data file {path.name}: {x.shape[1]}x{y.shape[1]} games, context dimension {d.shape[1]}",
        "method": "given" + (" (payoffs given: Nash gaps scored)" if A is not None else " (no payoffs: no Nash gap)"),
        "zero_sum": "A" in arrays and "B" not in arrays,
    }
    return GameDataset(d, A, B, x, y, gap, 1.0, info)


def save_game_data(path: str | os.PathLike, data: GameDataset) -> Path:
    """Write ``data`` in the file format above (atomically, compressed): context, x, y and, when known, A, B
    and the Nash gap of each target."""
    arrays: dict[str, Any] = {"context": data.d, "x": data.x, "y": data.y}
    if data.A is not None:
        arrays.update(A=data.A, B=data.B, gap=data.gap)
    path = Path(path)
    atomic_write(path, lambda fh: np.savez_compressed(fh, **arrays))
    return path


def load_contexts(path: str | os.PathLike, context_dim: int) -> np.ndarray:
    """Contexts ``(m, p)`` for prediction from ``.npy`` (one array), ``.npz`` (its ``context``) or ``.csv`` /
    ``.txt`` (one context per row); a single context ``(p,)`` is a batch of one. One-line errors for a missing
    or unreadable file, a wrong context dimension and NaN / inf."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"context file not found: {path}" if not path.exists() else f"context file {path} is not a file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npz":
            arr = _open_npz(path).get("context")
            if arr is None:
                raise UserInputError(f"{path}: an .npz context file needs a 'context' array")
        elif suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
        elif suffix in (".csv", ".txt"):
            arr = np.loadtxt(path, delimiter="," if suffix == ".csv" else None, ndmin=2, dtype=np.float64)
        else:
            raise UserInputError(f"context file {path} must end in .npy, .npz, .csv or .txt")
    except UserInputError:
        raise
    except (ValueError, OSError, EOFError) as exc:
        raise UserInputError(f"cannot read contexts from {path}: {str(exc).splitlines()[0]}") from None
    if arr.dtype.kind not in "fiub":
        raise UserInputError(f"{path}: contexts must be numbers, got dtype {arr.dtype}")
    arr = np.asarray(arr, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] != context_dim:
        raise UserInputError(
            f"{path}: contexts must have shape (m, {context_dim}) (the model's context dimension is {context_dim}), "
            f"got {tuple(arr.shape)}"
        )
    if not np.isfinite(arr).all():
        bad = tuple(int(i) for i in np.argwhere(~np.isfinite(arr))[0])
        raise UserInputError(f"{path}: contexts hold a non-finite value (NaN or inf) at index {bad}")
    return arr


@dataclass
class FileDataConfig:
    """Data description of a model trained from a data file (stored with the weights; compared on resume).

    Attributes:
        path: the data file (as given).
        sha256: its SHA-256 (a resumed run or an evaluation on the stored split refuses another file).
        n_samples, n, m, context_dim: its sizes (what ``predict`` needs, without the file).
        val_fraction: fraction of the samples held out for validation (the last ones of a seeded permutation).
        seed: seed of that permutation.
        simplex_tol: tolerance of the simplex check.
        source: always ``"file"`` (tells this description from a family's :class:`GameDataConfig`).
    """

    path: str
    sha256: str
    n_samples: int
    n: int
    m: int
    context_dim: int
    val_fraction: float = 0.1
    seed: int = 0
    simplex_tol: float = DEFAULT_SIMPLEX_TOL
    source: str = "file"

    def __post_init__(self) -> None:
        if self.source != "file":
            raise UserInputError(f"a data-file description has source 'file', got {self.source!r}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise UserInputError(f"--val-fraction must lie in [0, 1), got {self.val_fraction}")
        for key in ("n_samples", "n", "m", "context_dim"):
            v = getattr(self, key)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise UserInputError(f"data description {key} must be a positive integer, got {v!r}")
        if self.n_val >= self.n_samples:
            raise UserInputError(f"--val-fraction {self.val_fraction} leaves no training samples of {self.n_samples}")

    @classmethod
    def from_file(
        cls, path: str | os.PathLike, val_fraction: float = 0.1, seed: int = 0, simplex_tol: float = DEFAULT_SIMPLEX_TOL
    ) -> "FileDataConfig":
        """Check the file (:func:`load_game_data`) and describe it."""
        data = load_game_data(path, simplex_tol)
        return cls(str(path), file_sha256(path), len(data), data.n, data.m, int(data.d.shape[1]), val_fraction, seed,
                   simplex_tol)

    @property
    def n_val(self) -> int:
        return int(round(self.val_fraction * self.n_samples))

    def sizes(self) -> tuple[int, int, int]:
        """``(n, m, context_dim)`` of the games."""
        return self.n, self.m, self.context_dim

    def splits(self) -> tuple[GameDataset, GameDataset]:
        """``(train, val)``: the file read again (refused when its content changed) and split by the seeded
        permutation."""
        if not Path(self.path).is_file():
            raise UserInputError(f"data file not found: {self.path}")
        if file_sha256(self.path) != self.sha256:
            raise UserInputError(f"{self.path} changed since the model was trained on it (SHA-256 differs)")
        data = load_game_data(self.path, self.simplex_tol)
        perm = np.random.default_rng(self.seed).permutation(len(data))
        cut = len(data) - self.n_val
        return data.subset(np.sort(perm[:cut])), data.subset(np.sort(perm[cut:]))
