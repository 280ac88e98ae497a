"""Static user-equilibrium (Wardrop) traffic assignment.

Given link costs ``t(x)`` (BPR, :mod:`problems.traffic.costs`) and an OD demand matrix ``D[o, d]``, the
user equilibrium is the link flow ``x`` solving Beckmann's convex program

    min_x  B(x) = sum_a int_0^{x_a} t_a(s) ds
    s.t.   x = sum_p f_p delta_p,  sum_{p in P(o,d)} f_p = D[o, d],  f >= 0,

whose optimality conditions are Wardrop's: every used path of an OD pair has the minimal cost of the pair.
Progress is measured by the **relative gap**

    gap(x) = (TSTT - SPTT) / TSTT,   TSTT = t(x) . x,   SPTT = sum_{o,d} D[o, d] * dist_{t(x)}(o, d),

which is zero exactly at equilibrium (``TSTT - SPTT`` bounds ``B(x) - B(x*)`` from above).

Methods:

* ``"path"`` (default): path-based gradient projection.  Each sweep computes shortest-path trees from all
  origins at once (``scipy.sparse.csgraph.dijkstra``), adds the new shortest paths to the path sets, then,
  origin by origin (Gauss-Seidel over origins), shifts flow from each used path ``k`` of an OD pair to the
  pair's cheapest path ``b`` by the projected Newton step ``min(f_k, (C_k - C_b) / s_k)``, with
  ``s_k = sum_{a in k xor b} t'_a(x_a)``, followed by an exact line search on ``B`` along the origin's link
  direction (which keeps the step a descent step even though all pairs of the origin move at once).
* ``"fw"``: Frank-Wolfe with exact line search; ``"cfw"``: conjugate Frank-Wolfe (Mitradjieva & Lindberg
  2013).  Both use all-or-nothing loadings and are kept as simple baselines.

Through-node restriction: zones with file number below ``first_thru_node`` may only start or end a path.
This is enforced by moving the out-links of such a zone to a private source copy of the zone, from which
only that zone's own trees are grown; the zone itself keeps its in-links and has no out-links.

Per-origin flows: every method can return ``origin_flows[r, a]``, the flow on link ``a`` of trips from origin
``origins[r]``; their sum over ``r`` equals the link flows ``x``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import dijkstra

from problems.traffic.costs import BPRCost
from problems.traffic.tntp import Network

__all__ = ["EquilibriumResult", "ShortestPaths", "solve_equilibrium", "relative_gap", "all_or_nothing"]


@dataclass
class EquilibriumResult:
    """Result of :func:`solve_equilibrium`.

    Attributes:
        flows: link flows ``x`` (the point at which ``gap`` was certified).
        costs: link costs ``t(x)``.
        gap: relative gap ``(TSTT - SPTT) / TSTT`` at ``flows``.
        iterations: number of sweeps / iterations performed.
        time: wall-clock seconds.
        objective: Beckmann objective ``B(x)``.
        converged: whether ``gap <= target``.
        method: the method used.
        gap_history: relative gap at the start of every iteration (and at the end).
        tstt, sptt: total system travel time ``t(x).x`` and shortest-path travel time.
        origins: zone indices (0-based) of the origins with positive demand.
        origin_flows: ``(len(origins), num_links)`` per-origin link flows, or ``None``.
        num_paths: number of paths with positive flow (path method only).
        cpu_time: process CPU seconds (less sensitive than ``time`` to other load on the machine).
        status: ``"converged"`` (gap reached), ``"max_iter"``, ``"time_limit"`` or ``"nonfinite"`` (a cost,
            flow or gap became NaN / infinite: the result must not be used).
    """

    flows: np.ndarray
    costs: np.ndarray
    gap: float
    iterations: int
    time: float
    objective: float
    converged: bool
    method: str
    gap_history: np.ndarray
    tstt: float
    sptt: float
    origins: np.ndarray
    origin_flows: np.ndarray | None = None
    num_paths: int | None = None
    cpu_time: float | None = None
    extra: dict = field(default_factory=dict)
    status: str = "converged"

    @property
    def usable(self) -> bool:
        """Whether the flows are a certified equilibrium to the requested gap (finite, gap reached)."""
        return self.status == "converged"


class ShortestPaths:
    """Shortest paths from all origins of a network at once, respecting ``first_thru_node``.

    Node set of the search graph: the ``N`` network nodes plus one private source copy per origin zone that
    may not be passed through; links leaving such a zone are re-attached to its copy.  Parallel links are
    allowed: for each (tail, head) pair the currently cheapest link is used.
    """

    def __init__(self, network: Network, origins: np.ndarray) -> None:
        n = network.num_nodes
        through = network.through_allowed
        self.origins = np.asarray(origins, dtype=np.int64)
        blocked = np.flatnonzero(~through)
        copy_of = np.full(n, -1, dtype=np.int64)
        copy_of[blocked] = n + np.arange(blocked.size)
        self.num_search_nodes = n + blocked.size
        tail = np.where(copy_of[network.init] >= 0, copy_of[network.init], network.init)
        head = network.term.copy()
        self.sources = np.where(copy_of[self.origins] >= 0, copy_of[self.origins], self.origins)
        ns = self.num_search_nodes
        key = tail * ns + head
        order = np.argsort(key, kind="stable")
        skey = key[order]
        starts = np.flatnonzero(np.r_[True, skey[1:] != skey[:-1]])
        self._order = order
        self._starts = starts
        self.keys = skey[starts]
        self.has_parallel = starts.size != key.size
        utail = self.keys // ns
        uhead = self.keys % ns
        counts = np.bincount(utail, minlength=ns)
        self._indptr = np.r_[0, np.cumsum(counts)].astype(np.int64)
        self._indices = uhead.astype(np.int64)  # keys sorted by tail then head: CSR order
        self.rep = order[starts]  # representative link per (tail, head) key
        self.num_links = network.num_links

    def _graph(self, cost: np.ndarray) -> sp.csr_matrix:
        c = cost[self._order]
        if self.has_parallel:
            group = np.repeat(np.arange(self._starts.size), np.diff(np.r_[self._starts, c.size]))
            best = np.lexsort((c, group))  # within a group, cheapest first
            first = np.r_[True, group[best][1:] != group[best][:-1]]
            self.rep = self._order[best[first]]
            data = c[best[first]]
        else:
            data = c[self._starts]
        # explicit zeros are kept as zero-cost edges by csgraph
        return sp.csr_matrix((data, self._indices, self._indptr), shape=(self.num_search_nodes,) * 2)

    def trees(self, cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(dist, pred)`` of shape ``(num_origins, num_search_nodes)`` for link costs ``cost``."""
        g = self._graph(np.asarray(cost, dtype=np.float64))
        dist, pred = dijkstra(g, directed=True, indices=self.sources, return_predecessors=True)
        return dist, pred

    def paths(self, pred: np.ndarray, rows: np.ndarray, dests: np.ndarray, link_hash: np.ndarray | None = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Trace the tree paths of OD pairs ``(origins[rows], dests)``, all pairs at once.

        Returns ``(pair, link, hash)``: the flat list of (pair index, link) incidences and, per pair, the sum
        (mod 2^64) of ``link_hash`` over the path's links (a path fingerprint).
        """
        m = rows.size
        cur = np.asarray(dests, dtype=np.int64).copy()
        src = self.sources[rows]
        h = np.zeros(m, dtype=np.uint64)
        pairs: list[np.ndarray] = []
        links: list[np.ndarray] = []
        idx = np.flatnonzero(cur != src)
        ns = self.num_search_nodes
        while idx.size:
            p = pred[rows[idx], cur[idx]].astype(np.int64)
            if (p < 0).any():
                bad = idx[p < 0][0]
                raise ValueError(
                    f"zone {dests[bad] + 1} is unreachable from zone {self.origins[rows[bad]] + 1} "
                    "but has positive demand")
            pos = np.searchsorted(self.keys, p * ns + cur[idx])
            link = self.rep[pos]
            if link_hash is not None:
                h[idx] += link_hash[link]
            pairs.append(idx)
            links.append(link)
            cur[idx] = p
            idx = idx[p != src[idx]]
        if pairs:
            return np.concatenate(pairs), np.concatenate(links), h
        return np.zeros(0, np.int64), np.zeros(0, np.int64), h


def _od_pairs(network: Network, demand) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(origins, od_row, od_dest, od_demand)``: origins with demand and the positive OD pairs, sorted."""
    dem = demand.toarray() if sp.issparse(demand) else np.asarray(demand, dtype=np.float64)
    z = network.num_zones
    if dem.shape != (z, z):
        raise ValueError(f"demand must be a ({z}, {z}) matrix, got shape {dem.shape}")
    if not np.all(np.isfinite(dem)) or (dem < 0).any():
        raise ValueError("demand must be finite and non-negative")
    dem = dem.copy()
    np.fill_diagonal(dem, 0.0)  # intrazonal trips use no link
    o, d = np.nonzero(dem > 0)
    origins = np.unique(o)
    row = np.searchsorted(origins, o)
    return origins, row, d.astype(np.int64), dem[o, d]


def relative_gap(network: Network, demand, flows: np.ndarray, cost: BPRCost | None = None) -> float:
    """Relative gap ``(TSTT - SPTT) / TSTT`` of link flows ``flows`` under the network's BPR costs."""
    cost = BPRCost.from_network(network) if cost is None else cost
    origins, row, dest, dem = _od_pairs(network, demand)
    t = cost(flows)
    dist, _ = ShortestPaths(network, origins).trees(t)
    tstt = float(t @ flows)
    sptt = float(dem @ dist[row, dest])
    return (tstt - sptt) / tstt if tstt > 0 else 0.0


def all_or_nothing(network: Network, demand, cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All-or-nothing loading at fixed link costs: ``(link_flows, origin_flows)``."""
    origins, row, dest, dem = _od_pairs(network, demand)
    spaths = ShortestPaths(network, origins)
    _, pred = spaths.trees(cost)
    pair, link, _ = spaths.paths(pred, row, dest)
    L = network.num_links
    per = np.bincount(row[pair] * L + link, weights=dem[pair], minlength=origins.size * L).reshape(-1, L)
    return per.sum(axis=0), per


def _line_search(cost: BPRCost, x: np.ndarray, d: np.ndarray, tol: float = 1e-11, max_iter: int = 50,
                 subset: bool = True) -> float:
    """Exact line search ``argmin_{a in [0, 1]} B(x + a d)``: safeguarded Newton (bisection fallback) on the
    increasing function ``g(a) = t(x + a d) . d``."""
    if subset:
        nz = np.flatnonzero(d)
        if nz.size == 0:
            return 0.0
        c, xs, ds = cost.subset(nz), x[nz], d[nz]
    else:
        c, xs, ds = cost, x, d
    g0, h0 = c.directional(xs, ds, 0.0)
    if g0 >= 0:
        return 0.0
    g1, h1 = c.directional(xs, ds, 1.0)
    if g1 <= 0:
        return 1.0
    lo, hi = 0.0, 1.0
    # Newton from the end point with the better model
    a = -g0 / h0 if h0 > 0 else g0 / (g0 - g1)
    if not 0.0 < a < 1.0:
        a = g0 / (g0 - g1)
    scale = -g0
    for _ in range(max_iter):
        g, h = c.directional(xs, ds, a)
        if abs(g) <= tol * scale:
            break
        if g > 0:
            hi = a
        else:
            lo = a
        if hi - lo <= 1e-14:
            break
        a_new = a - g / h if h > 0 else 0.5 * (lo + hi)
        a = a_new if lo < a_new < hi else 0.5 * (lo + hi)
    return a


def _progress(enabled: bool, desc: str):
    """A tqdm bar counting iterations; the current relative gap is shown as its postfix."""
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(desc=desc, unit="it", leave=False)


def solve_equilibrium(
    network: Network,
    demand,
    *,
    gap: float = 1e-6,
    max_iter: int = 1000,
    method: str = "path",
    time_limit: float | None = None,
    capacity: np.ndarray | None = None,
    return_origin_flows: bool = False,
    progress: bool = True,
    inner_sweeps: int = 20,
    seed: int = 0,
    warm_start: EquilibriumResult | None = None,
) -> EquilibriumResult:
    """Solve the user equilibrium of ``network`` under ``demand`` to relative gap ``gap``.

    Args:
        network: the network (BPR parameters, through-node restriction, generalised-cost weights).
        demand: ``(Z, Z)`` OD matrix (dense or scipy sparse), 0-based zones.
        gap: target relative gap ``(TSTT - SPTT) / TSTT``.
        max_iter: maximum number of sweeps (path) or iterations (fw / cfw).
        method: ``"path"`` (default), ``"cfw"`` or ``"fw"``.
        time_limit: stop after this many seconds (result has ``converged=False`` if the gap is not reached).
        capacity: optional capacities replacing ``network.capacity`` (contexts).
        return_origin_flows: also return per-origin link flows ``origin_flows[r, a]``.
        progress: show a tqdm bar with the current gap.
        inner_sweeps: path method: at most this many origin-by-origin equilibration passes over the fixed
            path sets per shortest-path computation (fewer once the restricted gap is below 5% of the gap).
        seed: seed of the path fingerprints (path method; keep it fixed across warm starts).
        warm_start: a previous path-method result on the same network and OD pattern (e.g. another context):
            its path sets and path shares start the solve.  Ignored when the OD pairs differ.

    Returns:
        :class:`EquilibriumResult`; ``gap`` is certified at the returned ``flows`` by a fresh shortest-path
        computation; ``status`` says whether it was reached (``"nonfinite"`` if anything became NaN / inf).

    Raises:
        :class:`problems.traffic.costs.CostRangeError` (a ``ValueError``) naming the first link whose cost is
        negative or overflows for flows up to the total demand (checked before solving: Dijkstra needs
        non-negative costs, and an overflow would turn the solve into NaN); ``ValueError`` for a bad demand
        matrix, an unknown method or a zone that cannot be reached.
    """
    cost = BPRCost.from_network(network, capacity)
    total = _od_pairs(network, demand)[3].sum()
    cost.check_range(float(total), network.link_label)
    if method == "path":
        return _solve_path(network, demand, cost, gap, max_iter, time_limit, return_origin_flows, progress,
                           inner_sweeps, seed, warm_start)
    if method in ("fw", "cfw"):
        return _solve_fw(network, demand, cost, gap, max_iter, time_limit, return_origin_flows, progress,
                         conjugate=(method == "cfw"))
    raise ValueError(f"unknown method {method!r}; use 'path', 'cfw' or 'fw'")


def _status(g: float, x: np.ndarray, target: float, it: int, max_iter: int, time_limit: float | None,
            t_start: float) -> str | None:
    """Why the iteration stops now (``None``: go on)."""
    if not (np.isfinite(g) and np.isfinite(x).all()):
        return "nonfinite"
    if g <= target:
        return "converged"
    if it >= max_iter:
        return "max_iter"
    if time_limit is not None and time.perf_counter() - t_start > time_limit:
        return "time_limit"
    return None


def _gap(t: np.ndarray, x: np.ndarray, dist: np.ndarray, row, dest, dem) -> tuple[float, float, float]:
    tstt = float(t @ x)
    sptt = float(dem @ dist[row, dest])
    return ((tstt - sptt) / tstt if tstt > 0 else 0.0), tstt, sptt


def _solve_fw(network, demand, cost: BPRCost, target, max_iter, time_limit, want_origin, progress,
              conjugate: bool) -> EquilibriumResult:
    t_start = time.perf_counter()
    c_start = time.process_time()
    origins, row, dest, dem = _od_pairs(network, demand)
    L = network.num_links
    spaths = ShortestPaths(network, origins)

    def aon(t):
        dist, pred = spaths.trees(t)
        pair, link, _ = spaths.paths(pred, row, dest)
        if want_origin:
            per = np.bincount(row[pair] * L + link, weights=dem[pair], minlength=origins.size * L)
            per = per.reshape(-1, L)
            return dist, per.sum(axis=0), per
        return dist, np.bincount(link, weights=dem[pair], minlength=L), None

    _, x, xo = aon(cost(np.zeros(L)))
    s_prev = so_prev = None
    history: list[float] = []
    bar = _progress(progress, "UE (cfw)" if conjugate else "UE (fw)")
    it = 0
    g = np.inf
    while True:
        t = cost(x)
        dist, y, yo = aon(t)
        g, tstt, sptt = _gap(t, x, dist, row, dest, dem)
        history.append(g)
        if bar is not None:
            bar.set_postfix_str(f"gap={g:.2e}")
        status = _status(g, x, target, it, max_iter, time_limit, t_start)
        if status is not None:
            break
        s, so = y, yo
        if conjugate and s_prev is not None:
            h = cost.derivative(x)
            dp = s_prev - x
            num = float(dp @ (h * (y - x)))
            den = float(dp @ (h * (y - s_prev)))
            alpha = num / den if den != 0 else 0.0
            alpha = min(max(alpha, 0.0), 0.99)
            s = alpha * s_prev + (1 - alpha) * y
            if want_origin:
                so = alpha * so_prev + (1 - alpha) * yo
        step = _line_search(cost, x, s - x)
        x = x + step * (s - x)
        if want_origin:
            xo = xo + step * (so - xo)
        s_prev, so_prev = s, so
        it += 1
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    t = cost(x)
    return EquilibriumResult(
        flows=x, costs=t, gap=g, iterations=it, time=time.perf_counter() - t_start, objective=cost.beckmann(x),
        converged=status == "converged", method="cfw" if conjugate else "fw", gap_history=np.asarray(history),
        tstt=tstt, sptt=sptt, origins=origins, origin_flows=xo,
        cpu_time=time.process_time() - c_start, status=status)


class _PathStore:
    """Path sets of all OD pairs as flat arrays (paths sorted by OD pair, OD pairs sorted by origin).

    Path ``i`` belongs to pair ``od[i]``, carries flow ``flow[i]`` and uses the links
    ``links[ptr[i]:ptr[i + 1]]``; ``key[i]`` is its fingerprint (sum of random link hashes, mixed with the pair).
    """

    def __init__(self, num_links: int) -> None:
        self.L = num_links
        self.od = np.zeros(0, np.int64)
        self.flow = np.zeros(0)
        self.key = np.zeros(0, np.uint64)
        self.ptr = np.zeros(1, np.int64)
        self.links = np.zeros(0, np.int64)

    @property
    def size(self) -> int:
        return int(self.od.size)

    def entry_path(self) -> np.ndarray:
        return np.repeat(np.arange(self.size), np.diff(self.ptr))

    def _take(self, sel: np.ndarray) -> None:
        """Keep paths ``sel`` (in this order)."""
        lengths = np.diff(self.ptr)[sel]
        new_ptr = np.r_[0, np.cumsum(lengths)].astype(np.int64)
        entries = np.repeat(self.ptr[sel] - new_ptr[:-1], lengths) + np.arange(new_ptr[-1])
        self.links = self.links[entries]
        self.ptr = new_ptr
        self.od, self.flow, self.key = self.od[sel], self.flow[sel], self.key[sel]

    def prune(self) -> None:
        """Drop paths without flow."""
        keep = np.flatnonzero(self.flow > 0)
        if keep.size != self.size:
            self._take(keep)

    def add(self, pair: np.ndarray, link: np.ndarray, key: np.ndarray) -> None:
        """Add, for every OD pair, the path given by the incidences ``(pair, link)`` unless already present."""
        n_od = key.size
        if self.size:
            order = np.argsort(self.key)
            pos = np.minimum(np.searchsorted(self.key[order], key), order.size - 1)
            new = self.key[order][pos] != key
        else:
            new = np.ones(n_od, bool)
        if not new.any():
            return
        keep = new[pair]
        pair, link = pair[keep], link[keep]
        o = np.argsort(pair, kind="stable")
        pair, link = pair[o], link[o]
        new_ids = np.flatnonzero(new)
        lengths = np.bincount(pair, minlength=n_od)[new_ids]
        self.links = np.r_[self.links, link]
        self.ptr = np.r_[self.ptr, self.ptr[-1] + np.cumsum(lengths)]
        self.od = np.r_[self.od, new_ids]
        self.flow = np.r_[self.flow, np.zeros(new_ids.size)]
        self.key = np.r_[self.key, key[new_ids]]
        self._take(np.argsort(self.od, kind="stable"))

    def path_costs(self, t: np.ndarray) -> np.ndarray:
        return np.bincount(self.entry_path(), weights=t[self.links], minlength=self.size)

    def link_flows(self) -> np.ndarray:
        return np.bincount(self.links, weights=np.repeat(self.flow, np.diff(self.ptr)), minlength=self.L)


def _solve_path(network, demand, cost: BPRCost, target, max_iter, time_limit, want_origin, progress,
                inner_sweeps: int, seed: int, warm_start: EquilibriumResult | None) -> EquilibriumResult:
    t_start = time.perf_counter()
    c_start = time.process_time()
    origins, row, dest, dem = _od_pairs(network, demand)
    L = network.num_links
    n_od = row.size
    spaths = ShortestPaths(network, origins)
    rng = np.random.default_rng(seed)
    link_hash = rng.integers(0, 2**63, size=L, dtype=np.int64).astype(np.uint64) * np.uint64(2) + np.uint64(1)
    od_mix = rng.integers(0, 2**63, dtype=np.int64).astype(np.uint64) | np.uint64(1)
    od_ids = np.arange(n_od, dtype=np.uint64)
    od_start = np.searchsorted(row, np.arange(origins.size + 1))  # pairs are sorted by origin
    store = _PathStore(L)

    def add_shortest(pred) -> None:
        pair, link, h = spaths.paths(pred, row, dest, link_hash)
        store.add(pair, link, h ^ (od_ids * od_mix))

    warm = warm_start.extra.get("paths") if warm_start is not None else None
    if (warm is not None and warm["seed"] == seed and np.array_equal(warm["row_origin"], origins[row]) and
            np.array_equal(warm["dest"], dest)):
        # same OD pairs: reuse the path sets and path shares of the previous solution
        old: _PathStore = warm["store"]
        store.od, store.key, store.ptr, store.links = old.od.copy(), old.key.copy(), old.ptr.copy(), old.links.copy()
        store.flow = old.flow * (dem / warm["demand"])[store.od]
    else:
        # initial all-or-nothing loading at free-flow costs
        _, pred = spaths.trees(cost(np.zeros(L)))
        add_shortest(pred)
        store.flow = dem[store.od].copy()

    history: list[float] = []
    bar = _progress(progress, "UE (path)")
    it = 0
    inner_total = 0
    while True:
        x = store.link_flows()
        t = cost(x)
        dist, pred = spaths.trees(t)
        g, tstt, sptt = _gap(t, x, dist, row, dest, dem)
        history.append(g)
        if bar is not None:
            bar.set_postfix_str(f"gap={g:.2e} paths={store.size}")
        status = _status(g, x, target, it, max_iter, time_limit, t_start)
        if status is not None:
            break
        store.prune()
        add_shortest(pred)
        p_start = np.searchsorted(store.od, od_start)
        ep = store.entry_path()
        # equilibrate the restricted problem (fixed path sets) origin by origin until its own gap is small
        goal = max(0.25 * target, 0.1 * g) * tstt
        for _ in range(max(1, inner_sweeps)):
            t = cost(x)
            C = np.bincount(ep, weights=t[store.links], minlength=store.size)
            starts = np.flatnonzero(np.r_[True, store.od[1:] != store.od[:-1]])
            cmin = np.minimum.reduceat(C, starts)
            excess = store.flow * (C - np.repeat(cmin, np.diff(np.r_[starts, store.size])))
            per_origin = np.bincount(row[store.od], weights=excess, minlength=origins.size)
            total = float(per_origin.sum())
            if total <= goal:
                break
            tp = cost.derivative(x)
            for r in np.flatnonzero(per_origin > 0.01 * total / origins.size):
                _equilibrate_block(cost, x, t, tp, store, ep, p_start[r], p_start[r + 1])
            inner_total += 1
        it += 1
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    origin_flows = None
    if want_origin:
        w = np.repeat(store.flow, np.diff(store.ptr))
        origin_flows = np.bincount(row[store.od[store.entry_path()]] * L + store.links,
                                   weights=w, minlength=origins.size * L).reshape(origins.size, L)
    return EquilibriumResult(
        flows=x, costs=t, gap=g, iterations=it, time=time.perf_counter() - t_start, objective=cost.beckmann(x),
        converged=status == "converged", method="path", gap_history=np.asarray(history), tstt=tstt, sptt=sptt,
        origins=origins, origin_flows=origin_flows, num_paths=int((store.flow > 0).sum()),
        cpu_time=time.process_time() - c_start,
        extra={"inner_sweeps": inner_total,
               "paths": {"store": store, "row_origin": origins[row], "dest": dest, "demand": dem,
                         "seed": seed}},
        status=status)


def _equilibrate_block(cost: BPRCost, x: np.ndarray, t: np.ndarray, tp: np.ndarray, store: _PathStore,
                       ep: np.ndarray, a: int, b: int) -> None:
    """One projected-Newton flow shift for the paths ``a:b`` (all pairs of one origin) followed by an exact
    line search.  Updates ``store.flow``, the link flows ``x`` and the costs ``t``, ``tp`` in place."""
    n = b - a
    od = store.od[a:b]
    brk = np.empty(n, bool)
    brk[0] = False
    np.not_equal(od[1:], od[:-1], out=brk[1:])
    if not brk.any() and n <= 1:
        return
    e0, e1 = store.ptr[a], store.ptr[b]
    links = store.links[e0:e1]
    lp = ep[e0:e1] - a  # local path of each entry
    C = np.bincount(lp, weights=t[links], minlength=n)
    grp = np.cumsum(brk)
    brk[0] = True
    starts = np.flatnonzero(brk)
    brk[0] = False
    cmin = np.minimum.reduceat(C, starts)
    cand = np.flatnonzero(C <= cmin[grp])
    gc = grp[cand]
    first = np.empty(cand.size, bool)
    first[0] = True
    np.not_equal(gc[1:], gc[:-1], out=first[1:])
    basic = cand[first]  # cheapest path of each pair
    f = store.flow[a:b]
    excess = C - cmin[grp]
    move = (f > 0) & (excess > 0)
    move[basic] = False
    if not move.any():
        return
    mv = np.flatnonzero(move)
    bk = basic[grp[mv]]
    D = np.bincount(lp, weights=tp[links], minlength=n)
    # t' summed over the links that path k shares with its pair's basic path
    is_basic = np.zeros(n, bool)
    is_basic[basic] = True
    eb = is_basic[lp]
    em = move[lp]
    L = x.size
    kb = grp[lp[eb]] * L + links[eb]
    km = grp[lp[em]] * L + links[em]
    shared = np.isin(km, kb, kind="table" if (grp[-1] + 1) * L <= 2_000_000 else None)
    common = np.bincount(lp[em][shared], weights=tp[links[em][shared]], minlength=n)[mv]
    s = D[mv] + D[bk] - 2.0 * common
    with np.errstate(divide="ignore", invalid="ignore"):
        step = np.where(s > 0, excess[mv] / np.where(s > 0, s, 1.0), np.inf)
    delta = np.zeros(n)
    delta[mv] = -np.minimum(f[mv], step)
    np.add.at(delta, bk, -delta[mv])
    d = np.bincount(links, weights=delta[lp], minlength=L)
    nz = np.flatnonzero(d)
    if nz.size == 0:
        return
    sub = cost.subset(nz)
    alpha = _line_search(sub, x[nz], d[nz], subset=False)
    if alpha <= 0:
        return
    f += alpha * delta
    np.maximum(f, 0.0, out=f)
    x[nz] = np.maximum(x[nz] + alpha * d[nz], 0.0)
    t[nz] = sub(x[nz])
    tp[nz] = sub.derivative(x[nz])
