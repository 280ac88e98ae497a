"""Fixed path sets and a batched path-flow equilibrium solver in torch (the forward pass of the path N-FPN).

Path set
--------
For every OD pair ``k = (o, q)`` with positive nominal demand a small set of candidate paths ``P_k``; a path is
a list of links.  The flows of a batch are path flows ``h`` ``(B, P)``; link flows are ``X = h Delta^T`` with
the link-path incidence ``Delta`` ``(L, P)``.  The feasible set is the product of scaled simplices
``H(q) = {h >= 0, sum_{p in P_k} h_p = q_k}``: every ``h`` in it routes the OD demand ``q`` exactly, so the
link flows conserve flow at every node (node balance = the OD table's) and are nonnegative, whatever the
iterate.

:func:`collect_paths` builds the set from what a user has: the network, its nominal demand and observed
equilibrium link flows.  It takes the union of the paths used at certified equilibria of the nominal network
under scaled demands, and the shortest paths under the nominal BPR costs at observed flows (at an equilibrium
every used path is a shortest path of the true cost, and the nominal cost at the observed flow is the best
guess of it).

Solver
------
Given separable increasing link costs ``t(X)`` (with derivative ``t'``), :func:`equilibrate` solves the VI
``find h in H(q): <Delta^T t(Delta h), h' - h> >= 0 for all h' in H(q)`` (the Wardrop equilibrium on the path
set; the Beckmann program ``min_h sum_a int_0^{X_a} t_a``) for a whole batch at once, by block projected Newton
steps: origin block by origin block, every used path ``k`` of a pair sends ``min(h_k, (C_k - C_b) / s_k)`` to
the pair's cheapest path ``b`` (``s_k = sum_a t'_a [a in k xor b]``), followed by an exact line search of the
Beckmann objective along the block's link direction.  It stops when the relative gap of the restricted
problem, ``sum_k sum_p h_p (C_p - min_k C) / sum_p h_p C_p``, is below ``tol`` for every sample.  No Dijkstra
and no path generation: the path set is part of the model.
"""

from __future__ import annotations

from dataclasses import dataclass
import warnings
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from problems.traffic.tntp import Network

__all__ = ["PathSet", "collect_paths", "TorchPaths", "equilibrate"]


@dataclass
class PathSet:
    """Candidate paths: OD pair ``k`` is ``(od_origin[k], od_dest[k])`` (0-based zones, sorted by origin, then
    destination); path ``i`` serves pair ``path_od[i]`` (paths sorted by pair) and uses the links
    ``links[ptr[i]:ptr[i + 1]]``."""

    od_origin: np.ndarray
    od_dest: np.ndarray
    path_od: np.ndarray
    ptr: np.ndarray
    links: np.ndarray

    @property
    def num_pairs(self) -> int:
        return int(self.od_origin.size)

    @property
    def num_paths(self) -> int:
        return int(self.path_od.size)

    def arrays(self) -> dict[str, np.ndarray]:
        """The five arrays (int64) by name, for saving; :meth:`from_arrays` inverts it."""
        return {f"paths_{k}": np.ascontiguousarray(getattr(self, k), dtype=np.int64)
                for k in ("od_origin", "od_dest", "path_od", "ptr", "links")}

    @classmethod
    def from_arrays(cls, arrays: dict) -> "PathSet":
        """Inverse of :meth:`arrays` (checks the layout; ``ValueError`` when inconsistent)."""
        get = {k: np.asarray(arrays[f"paths_{k}"], dtype=np.int64)
               for k in ("od_origin", "od_dest", "path_od", "ptr", "links")}
        ps = cls(**get)
        ps.check()
        return ps

    def check(self, num_links: int | None = None, num_zones: int | None = None) -> None:
        """``ValueError`` when the arrays are not a valid path set (sizes, order, index ranges)."""
        K, P = self.num_pairs, self.num_paths
        if self.od_dest.size != K or self.ptr.size != P + 1 or self.ptr[0] != 0 or self.ptr[-1] != self.links.size:
            raise ValueError("path set arrays have inconsistent sizes")
        if P == 0 or np.any(np.diff(self.ptr) < 1) or np.any(np.diff(self.path_od) < 0):
            raise ValueError("path set: empty paths or paths not sorted by OD pair")
        if self.path_od.min() < 0 or self.path_od.max() >= K or np.unique(self.path_od).size != K:
            raise ValueError("path set: every OD pair needs at least one path")
        if num_links is not None and (self.links.min() < 0 or self.links.max() >= num_links):
            raise ValueError(f"path set: link index outside 0..{num_links - 1}")
        if num_zones is not None and (max(self.od_origin.max(), self.od_dest.max()) >= num_zones):
            raise ValueError(f"path set: zone index outside 0..{num_zones - 1}")

    def link_flows(self, h: np.ndarray) -> np.ndarray:
        """Link flows ``(..., L)`` of path flows ``h`` ``(..., P)`` (numpy)."""
        h = np.asarray(h, dtype=np.float64)
        ep = np.repeat(np.arange(self.num_paths), np.diff(self.ptr))
        L = int(self.links.max()) + 1
        flat = h.reshape(-1, self.num_paths)
        out = np.zeros((flat.shape[0], L))
        for i in range(flat.shape[0]):
            out[i] = np.bincount(self.links, weights=flat[i, ep], minlength=L)
        return out.reshape(*h.shape[:-1], L)


def _store_paths(res, used_only: bool = True) -> dict[tuple[int, int], set[tuple[int, ...]]]:
    """Paths of a path-method :class:`~problems.traffic.equilibrium.EquilibriumResult`, by OD pair."""
    info = res.extra["paths"]
    st, ro, de = info["store"], info["row_origin"], info["dest"]
    out: dict[tuple[int, int], set[tuple[int, ...]]] = {}
    for p in range(st.size):
        if used_only and not st.flow[p] > 0:
            continue
        out.setdefault((int(ro[st.od[p]]), int(de[st.od[p]])), set()).add(
            tuple(st.links[st.ptr[p]: st.ptr[p + 1]].tolist()))
    return out


def collect_paths(network: Network, base_demand, flows: np.ndarray | None = None, *,
                  demand_scales: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0), max_flow_samples: int = 40,
                  gap: float = 1e-6, perturb_draws: int = 3, perturb: float = 0.6, seed: int = 0) -> PathSet:
    """A path set for ``network`` and the OD pairs of ``base_demand`` (see the module docstring): the used
    paths of certified equilibria (relative gap ``gap``) under ``base_demand * s`` for ``s`` in
    ``demand_scales`` (the capacities of each: nominal), plus the shortest paths under the nominal BPR costs at
    up to ``max_flow_samples`` of the observed link flows ``flows`` ``(n, L)``."""
    import scipy.sparse as sp

    from problems.traffic.costs import BPRCost
    from problems.traffic.equilibrium import ShortestPaths, _od_pairs, solve_equilibrium

    dem = base_demand.toarray() if sp.issparse(base_demand) else np.asarray(base_demand, dtype=np.float64)
    origins, row, dest, _ = _od_pairs(network, dem)
    paths: dict[tuple[int, int], set[tuple[int, ...]]] = {}

    def merge(more: dict) -> None:
        for k, v in more.items():
            paths.setdefault(k, set()).update(v)

    prev = None
    for s in demand_scales:
        res = solve_equilibrium(network, dem * s, gap=gap, progress=False, warm_start=prev, max_iter=2000)
        prev = res
        merge(_store_paths(res))
    if flows is not None and len(flows):
        cost = BPRCost.from_network(network)
        spaths = ShortestPaths(network, origins)
        pick = np.unique(np.linspace(0, len(flows) - 1, min(max_flow_samples, len(flows))).round().astype(int))
        rng = np.random.default_rng(seed)
        for i in pick:
            for draw in range(1 + perturb_draws):
                x = np.asarray(flows[i], dtype=np.float64)
                if draw == 0:
                    t = cost(x)
                else:  # capacity uncertainty: the congestion term of each link scaled by exp(perturb * N(0, 1))
                    t0 = network.free_flow_time + network.fixed_cost
                    t = t0 + (cost(x) - t0) * np.exp(perturb * rng.standard_normal(x.size))
                _, pred = spaths.trees(t)
                pair, link, _ = spaths.paths(pred, row, dest)
                order = np.argsort(pair, kind="stable")
                pair, link = pair[order], link[order]
                cuts = np.flatnonzero(np.r_[True, pair[1:] != pair[:-1], True])
                for a, b in zip(cuts[:-1], cuts[1:]):
                    k = int(pair[a])
                    # tree paths come destination -> origin; store links in travel order like the solver's
                    paths.setdefault((int(origins[row[k]]), int(dest[k])), set()).add(tuple(link[a:b][::-1].tolist()))
    # canonical order: a path is a set of links (the solver's order may differ); dedupe by sorted links
    pairs = sorted((int(origins[r]), int(d)) for r, d in zip(row, dest))
    od_o, od_d, path_od, ptr, links = [], [], [], [0], []
    for k, pair in enumerate(pairs):
        uniq = sorted({tuple(sorted(p)) for p in paths[pair]})
        od_o.append(pair[0])
        od_d.append(pair[1])
        for p in uniq:
            path_od.append(k)
            links.extend(p)
            ptr.append(len(links))
    ps = PathSet(np.asarray(od_o, np.int64), np.asarray(od_d, np.int64), np.asarray(path_od, np.int64),
                 np.asarray(ptr, np.int64), np.asarray(links, np.int64))
    ps.check(network.num_links, network.num_zones)
    return ps


def _csr(rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int]) -> Tensor:
    """A float64 CSR matrix with ones at ``(rows, cols)`` (torch's CSR products are ~3x faster than COO)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta", invariant checks
        idx = torch.as_tensor(np.stack([rows, cols]).reshape(2, -1), dtype=torch.long)
        coo = torch.sparse_coo_tensor(idx, torch.ones(idx.shape[1], dtype=torch.float64), shape).coalesce()
        return coo.to_sparse_csr()


class TorchPaths(torch.nn.Module):
    """A :class:`PathSet` as torch buffers: sparse incidence ``Delta`` ``(L, P)``, a padded per-pair layout
    ``slots`` ``(K, m)`` (``-1`` padding), origin blocks for the solver, and the pair-overlap table used by
    the Newton steps.  Differentiable link flows / path costs (sparse matrix products)."""

    def __init__(self, ps: PathSet, num_links: int) -> None:
        super().__init__()
        K, P = ps.num_pairs, ps.num_paths
        self.num_pairs, self.num_paths, self.num_links = K, P, num_links
        ep = np.repeat(np.arange(P), np.diff(ps.ptr))
        self.register_buffer("delta", _csr(ps.links, ep, (num_links, P)))
        self.register_buffer("delta_t", _csr(ep, ps.links, (P, num_links)))
        self.register_buffer("path_od", torch.as_tensor(ps.path_od))
        counts = np.bincount(ps.path_od, minlength=K)
        m = int(counts.max())
        first = np.r_[0, np.cumsum(counts)[:-1]]
        slot_of_path = np.arange(P) - first[ps.path_od]
        slots = np.full((K, m), -1, dtype=np.int64)
        slots[ps.path_od, slot_of_path] = np.arange(P)
        self.register_buffer("slots", torch.as_tensor(slots))
        self.register_buffer("slot_of_path", torch.as_tensor(slot_of_path))
        self.register_buffer("od_origin", torch.as_tensor(ps.od_origin))
        self.register_buffer("od_dest", torch.as_tensor(ps.od_dest))
        # blocks: OD pairs of one origin (pairs are sorted by origin)
        starts = np.flatnonzero(np.r_[True, ps.od_origin[1:] != ps.od_origin[:-1]])
        self.block_pairs = [(int(a), int(b)) for a, b in zip(starts, np.r_[starts[1:], K])]
        self.block_paths = [(int(first[a]), int(first[b - 1] + counts[b - 1])) for a, b in self.block_pairs]
        # shared links of (path p, other path j of the same pair): sparse (num_pair_rows, L), one row per
        # ordered pair of distinct paths of a pair; pair_row[p, slot(j)] is its row (-1: none)
        rows, cols = [], []
        pair_row = np.full((P, m), -1, dtype=np.int64)
        sets = [set(ps.links[ps.ptr[i]: ps.ptr[i + 1]].tolist()) for i in range(P)]
        n_rows = 0
        for k in range(K):
            mem = slots[k][slots[k] >= 0]
            for p in mem:
                for j in mem:
                    if j != p:
                        pair_row[p, slot_of_path[j]] = n_rows
                        for a in sets[p] & sets[j]:
                            rows.append(n_rows)
                            cols.append(a)
                        n_rows += 1
        self.register_buffer("shared", _csr(np.asarray(rows, np.int64), np.asarray(cols, np.int64),
                                            (max(n_rows, 1), num_links)))
        self.register_buffer("pair_row", torch.as_tensor(np.maximum(pair_row, 0)))
        self.register_buffer("pad_inf", torch.where(torch.as_tensor(slots) >= 0, 0.0, float("inf")).to(torch.float64))
        self.m = m
        self.pathset = ps

    def link_flows(self, h: Tensor) -> Tensor:
        """``X = h Delta^T`` ``(B, L)`` from path flows ``(B, P)`` (differentiable)."""
        return (self.delta @ h.T.contiguous()).T

    def path_costs(self, t: Tensor) -> Tensor:
        """``C = t Delta`` ``(B, P)`` from link costs ``(B, L)`` (differentiable)."""
        return (self.delta_t @ t.T.contiguous()).T

    def pair_min(self, C: Tensor) -> tuple[Tensor, Tensor]:
        """Per pair the smallest path cost and its path index: ``(B, K)`` each."""
        pad = torch.where(self.slots >= 0, self.slots, 0)
        Cs = C[:, pad] + self.pad_inf
        cmin, arg = Cs.min(dim=2)
        return cmin, torch.gather(pad.expand(C.shape[0], -1, -1), 2, arg[:, :, None])[:, :, 0]

    def uniform(self, q: Tensor) -> Tensor:
        """Path flows splitting each pair's demand ``q`` ``(B, K)`` evenly over its paths."""
        counts = torch.bincount(self.path_od, minlength=self.num_pairs).to(q.dtype)
        return (q / counts)[:, self.path_od]

    def restricted_gap(self, h: Tensor, t: Tensor) -> Tensor:
        """Relative gap of path flows ``h`` at link costs ``t``: ``sum h (C - min_k C) / sum h C`` ``(B,)``."""
        C = self.path_costs(t)
        cmin, _ = self.pair_min(C)
        tot = (h * C).sum(dim=1)
        return (h * (C - cmin[:, self.path_od])).sum(dim=1) / tot.clamp(min=1e-300)


CostFn = Callable[[Tensor], tuple[Tensor, Tensor]]


def _line_search(cost: CostFn, X: Tensor, d: Tensor, iters: int = 12, rtol: float = 1e-8) -> Tensor:
    """Per sample ``argmin_{a in [0, 1]} B(X + a d)`` (Beckmann objective): safeguarded Newton on the increasing
    ``g(a) = t(X + a d) . d``, stopped when ``|g| <= rtol |g(0)|`` for every sample.  ``(B, 1)``."""
    B = X.shape[0]
    lo = torch.zeros(B, 1, dtype=X.dtype, device=X.device)
    hi = torch.ones_like(lo)
    t1, _ = cost(X + d)
    g1 = (t1 * d).sum(dim=1, keepdim=True)
    t0, tp0 = cost(X)
    g0 = (t0 * d).sum(dim=1, keepdim=True)
    h0 = (tp0 * d * d).sum(dim=1, keepdim=True)
    a = torch.where(h0 > 0, -g0 / h0.clamp(min=1e-300), torch.full_like(lo, 0.5)).clamp(0.0, 1.0)
    scale = (-g0).clamp(min=1e-300)
    for _ in range(iters):
        t, tp = cost(X + a * d)
        g = (t * d).sum(dim=1, keepdim=True)
        h = (tp * d * d).sum(dim=1, keepdim=True)
        hi = torch.where(g > 0, a, hi)
        lo = torch.where(g <= 0, a, lo)
        if bool(((g.abs() <= rtol * scale) | (hi - lo <= 1e-15)).all()):
            break
        new = a - g / h.clamp(min=1e-300)
        a = torch.where((new > lo) & (new < hi) & (h > 0), new, 0.5 * (lo + hi))
    a = torch.where(g0 >= 0, torch.zeros_like(a), a)
    return torch.where(g1 <= 0, torch.ones_like(a), a)


@torch.no_grad()
def equilibrate(paths: TorchPaths, cost: CostFn, q: Tensor, h0: Tensor | None = None, *, tol: float = 1e-9,
                max_sweeps: int = 200, jacobi: bool = False) -> tuple[Tensor, Tensor, int]:
    """Path flows of the Wardrop equilibrium on the path set for every sample (see the module docstring).

    Args:
        paths: the path set.
        cost: ``X -> (t(X), t'(X))``, link costs and their derivatives ``(B, L)`` (separable, increasing).
        q: OD demands ``(B, K)`` (nonnegative).
        h0: feasible start ``(B, P)`` (default: even split).
        tol: target relative gap of the restricted problem.
        max_sweeps: sweeps over the origin blocks.

    Returns:
        ``(h, gap, sweeps)``: path flows, the relative gap per sample ``(B,)``, sweeps done.
    """
    h = paths.uniform(q) if h0 is None else h0.clone()
    X = paths.link_flows(h)
    B = q.shape[0]
    sweeps = 0
    for sweeps in range(1, max_sweeps + 1):
        blocks = [((0, paths.num_pairs), (0, paths.num_paths))] if jacobi else zip(paths.block_pairs,
                                                                                  paths.block_paths)
        for (ka, kb), (pa, pb) in blocks:
            t, tp = cost(X)
            sl = slice(pa, pb)
            C = paths.path_costs(t)[:, sl]
            D = paths.path_costs(tp)[:, sl]
            od = paths.path_od[sl] - ka
            slots = paths.slots[ka:kb]
            pad = torch.where(slots >= 0, slots - pa, 0)
            Cs = C[:, pad] + paths.pad_inf[ka:kb]
            cmin, arg = Cs.min(dim=2)  # (B, Kb)
            best = torch.gather(pad.expand(B, -1, -1), 2, arg[:, :, None])[:, :, 0]  # local path index
            bk = best[:, od]  # (B, Pb) basic path of each path's pair
            excess = C - cmin[:, od]
            hb = h[:, sl]
            move = (hb > 0) & (excess > 0)
            if not bool(move.any()):
                continue
            # s_k = D_k + D_b - 2 * (t' over links shared by k and b)
            rows = paths.pair_row[torch.arange(pa, pb, device=q.device)[None, :], paths.slot_of_path[pa + bk]]
            shared_all = (paths.shared @ tp.T.contiguous()).T  # (B, pair rows)
            common = torch.where(bk == torch.arange(pb - pa, device=q.device), 0.0, shared_all.gather(1, rows))
            s = D + D.gather(1, bk) - 2.0 * common
            step = torch.where(s > 0, excess / s.clamp(min=1e-300), torch.full_like(s, float("inf")))
            delta = torch.where(move, -torch.minimum(hb, step), torch.zeros_like(hb))
            delta = delta.scatter_add(1, bk, -delta)
            full = torch.zeros_like(h)
            full[:, sl] = delta
            d = paths.link_flows(full)
            alpha = _line_search(cost, X, d)
            h[:, sl] = (hb + alpha * delta).clamp(min=0.0)
            X = paths.link_flows(h)
        if sweeps % 5 == 0 or sweeps == max_sweeps:
            t, _ = cost(X)
            if bool((paths.restricted_gap(h, t) <= tol).all()):
                break
    t, _ = cost(X)
    return h, paths.restricted_gap(h, t), sweeps
