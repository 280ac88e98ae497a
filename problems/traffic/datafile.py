"""The user's own traffic data: the ``DATA.npz`` format of ``fpntools traffic train --data`` and its checks.

``DATA.npz`` (``numpy.savez``) holds

* ``context`` ``(n, p)`` floats: one context vector per observation (any meaning, any ``p >= 1``);
* ``flow`` ``(n, L)`` floats: the equilibrium link flows observed under that context, in the order of the
  links in ``NET.tntp`` (``L`` = its number of links), nonnegative;
* optionally ``od`` ``(n, Z, Z)``: the OD tables of the observations (zones of ``TRIPS.tntp``), nonnegative,
  or ``demand_scale`` ``(n,)``: total demand relative to ``TRIPS.tntp``'s, positive.  When present they
  supervise the learned demand as well (an extra loss term);
* other arrays (e.g. ``gap`` written by ``fpntools traffic make-data``) are kept but not used.

:func:`load_data_file` reads and checks a file against a network (one-line
:class:`fpntools.errors.UserInputError` naming the key, the shape or the first bad entry);
:func:`save_data_file` writes one atomically; :func:`make_data` exports the project's certified contextual
generator (:func:`problems.traffic.context.generate_dataset`) in this format, so every test and benchmark can
go through the same path as a user's file.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fpntools.atomic_io import atomic_write
from fpntools.errors import UserInputError

__all__ = ["TrafficData", "load_data_file", "save_data_file", "make_data", "check_contexts"]

REQUIRED = ("context", "flow")


@dataclass
class TrafficData:
    """Observations: ``contexts`` ``(n, p)``, ``flows`` ``(n, L)``, optional ``od`` ``(n, Z, Z)`` or
    ``demand_scale`` ``(n,)``, and any ``extra`` arrays of the file."""

    contexts: np.ndarray
    flows: np.ndarray
    od: np.ndarray | None = None
    demand_scale: np.ndarray | None = None
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.contexts.shape[0])

    def subset(self, idx) -> "TrafficData":
        """Rows ``idx`` of every per-observation array."""
        return TrafficData(self.contexts[idx], self.flows[idx], None if self.od is None else self.od[idx],
                           None if self.demand_scale is None else self.demand_scale[idx],
                           {k: v[idx] for k, v in self.extra.items() if v.ndim >= 1 and len(v) == len(self)})


def _finite(name: str, a: np.ndarray, where: str) -> None:
    bad = np.argwhere(~np.isfinite(a))
    if bad.size:
        raise UserInputError(f"{where}: '{name}' has a NaN or infinite entry at index {tuple(int(i) for i in bad[0])}")


def check_contexts(ctx, dim: int | None, where: str) -> np.ndarray:
    """Contexts as a float64 ``(n, p)`` array (a 1-D array is one context); ``p`` must equal ``dim`` when
    given; finite.  One-line :class:`UserInputError` otherwise."""
    try:
        a = np.asarray(ctx, dtype=np.float64)
    except (TypeError, ValueError):
        raise UserInputError(f"{where}: contexts must be numbers") from None
    if a.ndim == 1:
        a = a[None]
    if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] == 0:
        raise UserInputError(f"{where}: contexts must have shape (n, p) with n, p >= 1, got {a.shape}")
    if dim is not None and a.shape[1] != dim:
        raise UserInputError(f"{where}: contexts have {a.shape[1]} columns, the model expects {dim}")
    _finite("context", a, where)
    return a


def load_data_file(path: str | os.PathLike, num_links: int, num_zones: int | None = None) -> TrafficData:
    """Read and check ``DATA.npz`` (module docstring) for a network of ``num_links`` links and ``num_zones``
    zones.  Raises :class:`UserInputError` with one line naming what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"data file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise UserInputError(f"cannot read {path} as .npz: {e}") from None
    for k in REQUIRED:
        if k not in arrays:
            raise UserInputError(f"{path}: missing array '{k}' (needs 'context' (n, p) and 'flow' (n, L); has "
                                 f"{sorted(arrays) or 'nothing'})")
    ctx = check_contexts(arrays.pop("context"), None, str(path)) if arrays["context"].ndim == 2 else None
    if ctx is None:
        raise UserInputError(f"{path}: 'context' must have shape (n, p), got {arrays['context'].shape}")
    try:
        flow = np.asarray(arrays.pop("flow"), dtype=np.float64)
    except (TypeError, ValueError):
        raise UserInputError(f"{path}: 'flow' must be numbers") from None
    n = ctx.shape[0]
    if flow.ndim != 2:
        raise UserInputError(f"{path}: 'flow' must have shape (n, L), got {flow.shape}")
    if flow.shape[0] != n:
        raise UserInputError(f"{path}: 'context' has {n} rows but 'flow' has {flow.shape[0]}")
    if flow.shape[1] != num_links:
        raise UserInputError(f"{path}: 'flow' has {flow.shape[1]} columns but the network has {num_links} links "
                             "(one column per link, in NET.tntp's order)")
    _finite("flow", flow, str(path))
    if (flow < 0).any():
        i, j = (int(v) for v in np.argwhere(flow < 0)[0])
        raise UserInputError(f"{path}: 'flow' has a negative entry ({flow[i, j]:g}) at row {i}, link {j + 1}")
    if n < 2:
        raise UserInputError(f"{path}: needs at least 2 observations, got {n}")
    od = scale = None
    if "od" in arrays:
        od = np.asarray(arrays.pop("od"), dtype=np.float64)
        zz = num_zones if num_zones is not None else od.shape[-1]
        if od.shape != (n, zz, zz):
            raise UserInputError(f"{path}: 'od' must have shape ({n}, {zz}, {zz}), got {od.shape}")
        _finite("od", od, str(path))
        if (od < 0).any():
            raise UserInputError(f"{path}: 'od' has negative entries")
    if "demand_scale" in arrays:
        scale = np.asarray(arrays.pop("demand_scale"), dtype=np.float64)
        if scale.shape != (n,):
            raise UserInputError(f"{path}: 'demand_scale' must have shape ({n},), got {scale.shape}")
        _finite("demand_scale", scale, str(path))
        if (scale <= 0).any():
            raise UserInputError(f"{path}: 'demand_scale' must be positive")
    return TrafficData(ctx, flow, od, scale, arrays)


def save_data_file(path: str | os.PathLike, data: TrafficData) -> Path:
    """Write ``data`` as ``DATA.npz`` atomically (``context``, ``flow``, the optional arrays, ``extra``)."""
    arrays = dict(data.extra, context=data.contexts, flow=data.flows)
    if data.od is not None:
        arrays["od"] = data.od
    if data.demand_scale is not None:
        arrays["demand_scale"] = data.demand_scale
    path = Path(path)
    atomic_write(path, lambda fh: np.savez_compressed(fh, **arrays))
    return path


def make_data(network, base_demand, n: int, *, seed: int = 0, gap: float = 1e-8, od: bool = False,
              cache: str | os.PathLike | None = None, progress: bool = False) -> TrafficData:
    """``n`` certified contextual equilibria of the project's generator (:mod:`problems.traffic.context`) as
    :class:`TrafficData`: contexts, link flows, ``demand_scale`` (total demand over the nominal total),
    ``gap`` (certified relative gaps) and, with ``od``, the OD tables."""
    import scipy.sparse as sp

    from problems.traffic.context import ContextMap, generate_dataset

    dem = base_demand.toarray() if sp.issparse(base_demand) else np.asarray(base_demand, dtype=np.float64)
    ds = generate_dataset(network, dem, n, seed=seed, gap=gap, cache=cache, progress=progress)
    cmap = ContextMap(network, dem)
    tables = np.stack([cmap.demand(c) for c in ds.contexts])
    for t in tables:
        np.fill_diagonal(t, 0.0)
    base = dem.copy()
    np.fill_diagonal(base, 0.0)
    scale = tables.sum(axis=(1, 2)) / base.sum()
    return TrafficData(ds.contexts.copy(), ds.flows.copy(), tables if od else None, scale,
                       {"gap": ds.gaps.copy(), "capacity": ds.capacities.copy()})
