"""Seeded contextual traffic data: context vector -> (capacities, demand) -> certified user equilibrium.

Context vector ``d`` (length ``3 + Z`` for a network with ``Z`` zones), every entry in ``[0, 1]``:

====================  ==========================================================================================
``d[0] = w``          weather severity.  Link capacities ``c_a(d) = c_a (1 - w_max * w * sigma_a)`` with a fixed
                      seeded per-link sensitivity ``sigma_a ~ U(0.5, 1)`` (``w_max = 0.35``).
``d[1] = s``          time of day (0 = off-peak, 1 = peak).  Origin ``o``'s trips are scaled by
                      ``0.6 + 0.8 s^{gamma_o}`` with a seeded per-origin profile ``gamma_o ~ logU(1/2, 2)``.
``d[2] = e``          event intensity; the event zone's attraction grows: trips *to* the event zone ``z`` are
                      multiplied by ``1 + e_max * e`` (``e_max = 2``).
``d[3:3+Z]``          one-hot event zone ``z`` (all zeros: no event).
====================  ==========================================================================================

So ``D(d)[o, q] = D[o, q] (0.6 + 0.8 s^{gamma_o}) (1 + e_max e [q = z])``.  Sampling: ``w, s ~ U(0, 1)``; with
probability ``event_prob`` an event with ``e ~ U(0, 1)`` at a uniform zone, otherwise ``e = 0`` and no zone.

For every context the user equilibrium is computed by :func:`solve_equilibrium` to a stated relative gap
and that certified gap is stored with the sample (samples that miss the gap raise an error).  Unlike the
original N-FPN data (whose "equilibria" had relative gaps around 0.8), every sample here is an equilibrium.

Datasets are saved as ``.npz`` (:meth:`TrafficDataset.save` / :meth:`TrafficDataset.load`); with a ``cache``
folder, :func:`generate_dataset` reuses a file keyed by a hash of the network, demand and all settings.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from fpntools.atomic_io import atomic_write
from problems.traffic.equilibrium import solve_equilibrium
from problems.traffic.tntp import Network

__all__ = ["ContextMap", "TrafficDataset", "generate_dataset", "parse_contexts", "read_context_file"]

MAP_VERSION = 1


@dataclass
class ContextMap:
    """The documented seeded map from a context vector to capacities and demand (see module docstring)."""

    network: Network
    base_demand: np.ndarray
    seed: int = 0
    w_max: float = 0.35
    e_max: float = 2.0
    event_prob: float = 0.5
    sigma: np.ndarray = field(init=False)
    gamma: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        dem = self.base_demand.toarray() if sp.issparse(self.base_demand) else np.asarray(self.base_demand)
        self.base_demand = np.asarray(dem, dtype=np.float64)
        z = self.network.num_zones
        if self.base_demand.shape != (z, z):
            raise ValueError(f"base demand must be ({z}, {z}), got {self.base_demand.shape}")
        rng = np.random.default_rng([self.seed, 0x7AFF1C])
        self.sigma = rng.uniform(0.5, 1.0, size=self.network.num_links)
        self.gamma = np.exp(rng.uniform(np.log(0.5), np.log(2.0), size=z))

    @property
    def dim(self) -> int:
        """Length of a context vector: ``3 + num_zones``."""
        return 3 + self.network.num_zones

    def capacity(self, d: np.ndarray) -> np.ndarray:
        """``c_a (1 - w_max * w * sigma_a)``."""
        return self.network.capacity * (1.0 - self.w_max * float(d[0]) * self.sigma)

    def demand(self, d: np.ndarray) -> np.ndarray:
        """``D[o, q] (0.6 + 0.8 s^{gamma_o}) (1 + e_max e [q = z])``."""
        d = np.asarray(d, dtype=np.float64)
        out = self.base_demand * (0.6 + 0.8 * float(d[1]) ** self.gamma)[:, None]
        onehot = d[3:]
        if onehot.any():
            out = out * (1.0 + self.e_max * float(d[2]) * onehot)[None, :]
        return out

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` context vectors ``(n, dim)`` drawn as documented."""
        z = self.network.num_zones
        out = np.zeros((n, self.dim))
        out[:, 0] = rng.uniform(0, 1, n)
        out[:, 1] = rng.uniform(0, 1, n)
        event = rng.uniform(0, 1, n) < self.event_prob
        out[:, 2] = np.where(event, rng.uniform(0, 1, n), 0.0)
        zone = rng.integers(0, z, n)
        out[np.flatnonzero(event), 3 + zone[event]] = 1.0
        return out


@dataclass
class TrafficDataset:
    """Contexts and their certified equilibria.

    Attributes:
        contexts: ``(n, 3 + Z)`` context vectors.
        flows: ``(n, L)`` equilibrium link flows.
        costs: ``(n, L)`` link costs at equilibrium.
        capacities: ``(n, L)`` capacities of each sample.
        gaps: ``(n,)`` certified relative gaps; ``target_gap`` the requested one.
        iterations, times: solver sweeps and seconds per sample.
        origins: origin zones (0-based) of ``origin_flows``.
        origin_flows: ``(n, R, L)`` per-origin link flows (``float32``) or ``None``.
        demand_totals: ``(n,)`` total demand of each sample.
        meta: settings (seed, map parameters, network name).
    """

    contexts: np.ndarray
    flows: np.ndarray
    costs: np.ndarray
    capacities: np.ndarray
    gaps: np.ndarray
    iterations: np.ndarray
    times: np.ndarray
    demand_totals: np.ndarray
    target_gap: float
    origins: np.ndarray | None = None
    origin_flows: np.ndarray | None = None
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.contexts.shape[0])

    def save(self, path: str | os.PathLike) -> Path:
        """Write a ``.npz`` atomically (temporary file + ``os.replace``)."""
        path = Path(path)
        arrays = dict(
            contexts=self.contexts, flows=self.flows, costs=self.costs, capacities=self.capacities,
            gaps=self.gaps, iterations=self.iterations, times=self.times, demand_totals=self.demand_totals,
            target_gap=np.float64(self.target_gap),
            meta_keys=np.array(list(self.meta.keys()), dtype=str),
            meta_values=np.array([str(v) for v in self.meta.values()], dtype=str),
        )
        if self.origin_flows is not None:
            arrays["origin_flows"] = self.origin_flows
            arrays["origins"] = self.origins
        atomic_write(path, lambda fh: np.savez_compressed(fh, **arrays))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TrafficDataset":
        """Read a dataset written by :meth:`save`."""
        with np.load(Path(path), allow_pickle=False) as z:
            meta = dict(zip(z["meta_keys"].tolist(), z["meta_values"].tolist()))
            return cls(
                contexts=z["contexts"], flows=z["flows"], costs=z["costs"], capacities=z["capacities"],
                gaps=z["gaps"], iterations=z["iterations"], times=z["times"], demand_totals=z["demand_totals"],
                target_gap=float(z["target_gap"]),
                origins=z["origins"] if "origins" in z else None,
                origin_flows=z["origin_flows"] if "origin_flows" in z else None,
                meta=meta,
            )


def _cache_key(network: Network, demand: np.ndarray, settings: dict) -> str:
    h = hashlib.sha256()
    for a in (network.init, network.term, network.capacity, network.free_flow_time, network.b, network.power,
              network.fixed_cost, demand):
        h.update(np.ascontiguousarray(a, dtype=np.float64).tobytes())
    h.update(repr((network.num_nodes, network.num_zones, network.first_thru_node)).encode())
    h.update(repr(sorted(settings.items())).encode())
    return h.hexdigest()[:16]


def generate_dataset(
    network: Network,
    demand,
    n: int,
    *,
    seed: int = 0,
    gap: float = 1e-6,
    map_seed: int = 0,
    origin_flows: bool = False,
    cache: str | os.PathLike | None = None,
    progress: bool = True,
    max_iter: int = 500,
    warm_start: bool = True,
) -> TrafficDataset:
    """Generate ``n`` contexts (seed ``seed``) and their equilibria, each certified to relative gap ``gap``.

    ``map_seed`` fixes the random parts of the context map (link sensitivities, origin profiles).  With
    ``cache`` (a folder), the dataset is loaded from / saved to ``cache/traffic_<name>_<hash>.npz``.
    Each solve is warm-started from the previous sample's path sets (``warm_start``); the certified gap does
    not depend on it.  Raises ``RuntimeError`` if a sample does not reach ``gap`` within ``max_iter`` sweeps.
    """
    dem = demand.toarray() if sp.issparse(demand) else np.asarray(demand, dtype=np.float64)
    cmap = ContextMap(network, dem, seed=map_seed)
    settings = dict(n=n, seed=seed, gap=gap, map_seed=map_seed, origin_flows=origin_flows, version=MAP_VERSION,
                    w_max=cmap.w_max, e_max=cmap.e_max, event_prob=cmap.event_prob)
    cache_path = None
    if cache is not None:
        cache_path = Path(cache) / f"traffic_{network.name}_{_cache_key(network, dem, settings)}.npz"
        if cache_path.is_file():
            return TrafficDataset.load(cache_path)
    rng = np.random.default_rng(seed)
    contexts = cmap.sample(n, rng)
    L = network.num_links
    flows, costs, caps = np.zeros((n, L)), np.zeros((n, L)), np.zeros((n, L))
    gaps, iters, times, totals = np.zeros(n), np.zeros(n, np.int64), np.zeros(n), np.zeros(n)
    per_origin = None
    origins = None
    prev = None
    it = range(n)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc=f"equilibria ({network.name})")
    for i in it:
        cap = cmap.capacity(contexts[i])
        dmat = cmap.demand(contexts[i])
        res = solve_equilibrium(network, dmat, gap=gap, capacity=cap, return_origin_flows=origin_flows,
                                progress=False, max_iter=max_iter, warm_start=prev if warm_start else None)
        prev = res
        if not res.converged:
            raise RuntimeError(f"sample {i}: relative gap {res.gap:.3e} above target {gap:.1e}")
        flows[i], costs[i], caps[i] = res.flows, res.costs, cap
        gaps[i], iters[i], times[i], totals[i] = res.gap, res.iterations, res.time, dmat.sum()
        if origin_flows:
            if per_origin is None:
                origins = np.arange(network.num_zones)
                per_origin = np.zeros((n, origins.size, L), dtype=np.float32)
            per_origin[i, res.origins] = res.origin_flows
        if progress:
            it.set_postfix_str(f"gap={res.gap:.1e}")
    ds = TrafficDataset(
        contexts=contexts, flows=flows, costs=costs, capacities=caps, gaps=gaps, iterations=iters, times=times,
        demand_totals=totals, target_gap=gap, origins=origins, origin_flows=per_origin,
        meta={"network": network.name, **{k: v for k, v in settings.items()}},
    )
    if cache_path is not None:
        ds.save(cache_path)
    return ds


def read_context_file(path: str | os.PathLike) -> np.ndarray:
    """The array of a context file: ``.npy``, ``.npz`` (its ``context``, e.g. a ``DATA.npz``), ``.json`` (a list
    of vectors), ``.csv`` or whitespace text (one context per line).  Raises
    :class:`fpntools.errors.UserInputError` for a missing or unreadable file (shape not checked)."""
    import json
    import zipfile

    from fpntools.errors import UserInputError

    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"context file not found: {path}")
    try:
        if path.suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
        elif path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                if "context" not in z.files:
                    raise UserInputError(f"{path}: no array 'context'")
                arr = z["context"]
        elif path.suffix == ".json":
            arr = json.loads(path.read_text())
        else:
            arr = np.loadtxt(path, delimiter="," if path.suffix == ".csv" else None, ndmin=2)
        return np.asarray(arr, dtype=np.float64)
    except (ValueError, TypeError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise UserInputError(f"cannot read contexts from {path}: {e}") from None


def parse_contexts(context: str | None, context_file: str | os.PathLike | None, num_zones: int) -> np.ndarray:
    """Contexts ``(n, 3 + Z)`` from a string (the full vector, or ``w,s,e[,zone]`` with a 1-based event zone)
    or a file (``.npy``, ``.json`` list of vectors, or CSV / whitespace text, one context per line).

    Exactly one of ``context`` / ``context_file``.  Raises :class:`fpntools.errors.UserInputError` naming the
    problem: wrong length or shape, unreadable file, NaN / inf, entries outside ``[0, 1]``, two event zones.
    """

    from fpntools.errors import UserInputError

    dim = 3 + num_zones
    if (context is None) == (context_file is None):
        raise UserInputError("give exactly one of --context and --context-file")
    if context is not None:
        try:
            vals = [float(v) for v in context.replace(" ", "").split(",") if v != ""]
        except ValueError:
            raise UserInputError(f"--context must be comma-separated numbers, got {context!r}") from None
        if len(vals) in (3, 4):
            full = np.zeros(dim)
            full[:3] = vals[:3]
            if len(vals) == 4:
                z = vals[3]
                if not (np.isfinite(z) and z == int(z) and 1 <= z <= num_zones):
                    raise UserInputError(f"event zone must be an integer in 1..{num_zones}, got {vals[3]}")
                full[3 + int(z) - 1] = 1.0
            arr = full[None]
        elif len(vals) == dim:
            arr = np.asarray(vals)[None]
        else:
            raise UserInputError(f"--context needs 3 or 4 values (w,s,e[,zone]) or {dim} values (full vector), "
                                 f"got {len(vals)}")
    else:
        context_file = Path(context_file)
        arr = read_context_file(context_file)
        if arr.ndim == 1:
            arr = arr[None]
        if arr.ndim != 2 or arr.shape[1] != dim or arr.shape[0] == 0:
            raise UserInputError(f"{context_file}: contexts must have shape (n, {dim}), got {arr.shape}")
    if not np.isfinite(arr).all():
        raise UserInputError("context has NaN or infinite entries")
    if (arr < 0).any() or (arr > 1).any():
        raise UserInputError("context entries must lie in [0, 1] (w, s, e and the one-hot event zone)")
    if (arr[:, 3:].sum(axis=1) > 1 + 1e-12).any():
        raise UserInputError("at most one event zone per context (one-hot part sums to more than 1)")
    return arr
