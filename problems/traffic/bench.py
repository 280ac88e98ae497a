"""Benchmark the user-equilibrium solver against the best-known TNTP solutions.

    python -m problems.traffic.bench SiouxFalls --gap 1e-6
    python -m problems.traffic.bench Chicago-Sketch --gap 1e-6

prints wall / CPU time, iterations, the relative gap reached, and, when a ``*_flow.tntp`` reference exists,
the relative error of the Beckmann objective and the relative L2 error of the link flows.  Data are read from
``$FPNTOOLS_TNTP_DIR`` or ``<repo>/../shared/data/transportation-networks``.
"""

from __future__ import annotations

import argparse

import numpy as np

from problems.traffic.costs import BPRCost
from problems.traffic.equilibrium import solve_equilibrium
from problems.traffic.tntp import KNOWN_NETWORKS, load_known, read_flow, tntp_files


def run(name: str, gap: float, method: str = "path", origin_flows: bool = False) -> dict:
    """Solve one known network and compare with its reference solution (if any)."""
    files = tntp_files(name)
    net, dem = load_known(name)
    res = solve_equilibrium(net, dem, gap=gap, method=method, progress=False, return_origin_flows=origin_flows,
                            max_iter=100_000)
    out = dict(network=name, method=method, links=net.num_links, od_pairs=int((dem > 0).sum()),
               time_s=res.time, cpu_s=res.cpu_time, iterations=res.iterations, gap=res.gap,
               objective=res.objective, paths=res.num_paths)
    if files["flow"] is not None:
        ref, _ = read_flow(files["flow"], net.num_nodes).align(net)
        ref_obj = BPRCost.from_network(net).beckmann(ref)
        out["objective_rel_err"] = abs(res.objective - ref_obj) / ref_obj
        out["flow_rel_l2"] = float(np.linalg.norm(res.flows - ref) / np.linalg.norm(ref))
    if origin_flows:
        out["origin_flow_consistency"] = float(np.abs(res.origin_flows.sum(0) - res.flows).max())
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("networks", nargs="*", default=["SiouxFalls"], help=f"any of {sorted(KNOWN_NETWORKS)}")
    p.add_argument("--gap", type=float, default=1e-6)
    p.add_argument("--method", default="path", choices=["path", "cfw", "fw"])
    p.add_argument("--origin-flows", action="store_true")
    a = p.parse_args(argv)
    for name in a.networks:
        r = run(name, a.gap, a.method, a.origin_flows)
        print("  ".join(f"{k}={v:.3e}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()), flush=True)


if __name__ == "__main__":
    main()
