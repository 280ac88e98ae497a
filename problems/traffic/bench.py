"""Benchmark the user-equilibrium solver against the best-known TNTP solutions, and the command's start-up.

    python -m problems.traffic.bench SiouxFalls --gap 1e-6
    python -m problems.traffic.bench Chicago-Sketch --gap 1e-6
    python -m problems.traffic.bench --startup

The first form prints wall / CPU time, iterations, the relative gap reached, and, when a ``*_flow.tntp``
reference exists, the relative error of the Beckmann objective and the relative L2 error of the link flows.
``--startup`` prints a markdown table of the wall time (median of ``--repeats`` fresh processes) of
``fpntools traffic equilibrium --help``, of a small real solve (Sioux Falls to gap 1e-4) and of importing
scipy's graph routines and torch, for comparison.  Data are read from ``$FPNTOOLS_TNTP_DIR`` or
``<repo>/../shared/data/transportation-networks``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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


def startup_table(repeats: int = 5) -> str:
    """Markdown table: median wall seconds over ``repeats`` fresh processes of each start-up command."""
    cli = [shutil.which("fpntools")] if shutil.which("fpntools") else [sys.executable, "-m", "fpntools"]
    files = tntp_files("SiouxFalls")
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "flows.csv")
        cases = [
            ('python -c "import scipy.sparse.csgraph"', [sys.executable, "-c", "import scipy.sparse.csgraph"]),
            ("fpntools traffic equilibrium --help", [*cli, "traffic", "equilibrium", "--help"]),
            ("fpntools traffic equilibrium (Sioux Falls, gap 1e-4, -q)",
             [*cli, "traffic", "equilibrium", "--net", str(files["net"]), "--trips", str(files["trips"]), "--out",
              out, "-q"]),
            ('python -c "import torch"', [sys.executable, "-c", "import torch"]),
        ]
        rows = ["| command | median wall s | min | max |", "|---|---|---|---|"]
        for label, cmd in cases:
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                times.append(time.perf_counter() - t)
            rows.append(f"| `{label}` | {statistics.median(times):.2f} | {min(times):.2f} | {max(times):.2f} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("networks", nargs="*", default=["SiouxFalls"], help=f"any of {sorted(KNOWN_NETWORKS)}")
    p.add_argument("--gap", type=float, default=1e-6)
    p.add_argument("--method", default="path", choices=["path", "cfw", "fw"])
    p.add_argument("--origin-flows", action="store_true")
    p.add_argument("--startup", action="store_true", help="time the command's start-up instead")
    p.add_argument("--repeats", type=int, default=5, help="--startup: processes per command (median)")
    a = p.parse_args(argv)
    if a.startup:
        print(startup_table(a.repeats), flush=True)
        return
    for name in a.networks:
        r = run(name, a.gap, a.method, a.origin_flows)
        print("  ".join(f"{k}={v:.3e}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()), flush=True)


if __name__ == "__main__":
    main()
