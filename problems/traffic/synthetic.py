"""Small random networks for tests and examples.

:func:`random_network` builds a strongly connected network: a bidirectional ring through all nodes plus
random bidirectional chords, with BPR parameters ``b = 0.15``, ``p = 4``, free-flow times in ``[1, 5]``
and capacities in ``[cap_lo, cap_hi]``.  :func:`random_demand` draws a sparse positive OD matrix.
"""

from __future__ import annotations

import numpy as np

from problems.traffic.tntp import Network

__all__ = ["random_network", "random_demand"]


def random_network(num_nodes: int = 8, num_zones: int = 4, *, extra_links: int = 6, first_thru_node: int = 1,
                   seed: int = 0, cap_lo: float = 200.0, cap_hi: float = 800.0, power: float = 4.0) -> Network:
    """A random strongly connected network (ring + chords, both directions, no parallel links)."""
    rng = np.random.default_rng(seed)
    pairs = {(i, (i + 1) % num_nodes) for i in range(num_nodes)}
    tries = 0
    while len(pairs) < num_nodes + extra_links and tries < 100 * (extra_links + 1):
        i, j = rng.choice(num_nodes, 2, replace=False)
        pairs.add((min(i, j), max(i, j)))
        tries += 1
    arcs = sorted({(i, j) for i, j in pairs} | {(j, i) for i, j in pairs})
    init = np.array([a for a, _ in arcs], dtype=np.int64)
    term = np.array([b for _, b in arcs], dtype=np.int64)
    m = init.size
    t0 = rng.uniform(1.0, 5.0, m)
    return Network(
        init=init, term=term, capacity=rng.uniform(cap_lo, cap_hi, m), length=t0.copy(), free_flow_time=t0,
        b=np.full(m, 0.15), power=np.full(m, power), speed=np.zeros(m), toll=np.zeros(m),
        link_type=np.ones(m, dtype=np.int64), num_nodes=num_nodes, num_zones=num_zones,
        first_thru_node=first_thru_node, name=f"random{num_nodes}_{seed}",
    )


def random_demand(num_zones: int, *, density: float = 0.7, scale: float = 300.0, seed: int = 0) -> np.ndarray:
    """A random OD matrix with zero diagonal; each off-diagonal entry positive with probability ``density``."""
    rng = np.random.default_rng(seed + 1)
    dem = rng.uniform(0.2, 1.0, (num_zones, num_zones)) * scale * (rng.uniform(size=(num_zones,) * 2) < density)
    np.fill_diagonal(dem, 0.0)
    if not dem.any():
        dem[0, 1 % num_zones] = scale
    return dem
