"""What the ``fpntools traffic`` commands do, as library functions; :mod:`problems.traffic.cli` only parses.

Conventions (:mod:`fpntools.cli_support`): bad input raises :class:`fpntools.errors.UserInputError` (exit 2)
before anything is computed or written; a result that must not be used raises
:class:`fpntools.cli_support.NotUsableError` (exit 3) and writes nothing; every command ends with one line
saying whether its output is usable.

This module and the equilibrium path (:mod:`~problems.traffic.tntp`, :mod:`~problems.traffic.costs`,
:mod:`~problems.traffic.equilibrium`) import neither torch nor the torch parts of fpntools, so
``fpntools traffic equilibrium`` starts in the time of numpy + scipy; the N-FPN commands import torch when
they run.
"""

from __future__ import annotations

import csv
import io
import math
import os
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from fpntools.atomic_io import atomic_write_bytes
from fpntools.cli_support import NotUsableError, check_output_path, warn
from fpntools.errors import UserInputError

__all__ = ["check_gap", "load_weighted_network", "link_csv", "write_link_csv", "equilibrium_to_csv", "dataset_to_npz",
           "predict_to_csv", "METHODS"]

METHODS = ("path", "cfw", "fw")
FACTOR_LABELS = ("--toll-factor", "--distance-factor")


def _say(message: str, quiet: bool) -> None:
    if not quiet:
        print(message, file=sys.stderr, flush=True)


def check_gap(gap: float, label: str = "--gap") -> float:
    """A relative gap target must be a number in ``(0, 1)`` (``(TSTT - SPTT) / TSTT`` lies in ``[0, 1]``)."""
    if not (math.isfinite(gap) and 0.0 < gap < 1.0):
        raise UserInputError(f"{label} must be a number in (0, 1), got {gap}")
    return gap


def load_weighted_network(net: str | os.PathLike, trips: str | os.PathLike, toll_factor: float | None,
                          distance_factor: float | None, quiet: bool = False):
    """``(network, demand)`` read from TNTP files, with generalised-cost weights from
    :func:`problems.traffic.tntp.resolve_cost_weights` (given, else published for a network recognised by
    its content, else 0 with a warning when the links carry tolls / lengths) and warnings for unusual link
    data (:func:`problems.traffic.tntp.unusual_links`).  Notes go to stderr unless ``quiet``; warnings
    always."""
    from problems.traffic.tntp import TNTPError, load_network, resolve_cost_weights, unusual_links

    try:
        network, demand = load_network(net, trips)
    except TNTPError as e:
        raise UserInputError(str(e)) from None
    w = resolve_cost_weights(network, toll_factor, distance_factor, labels=FACTOR_LABELS)
    for note in w.notes:
        _say(note, quiet)
    for message in (*w.warnings, *unusual_links(network)):
        warn(message)
    network.toll_factor, network.distance_factor = w.toll_factor, w.distance_factor
    return network, demand


def link_csv(network, columns: dict[str, Sequence[float]]) -> str:
    """CSV text ``from,to,<columns...>``: 1-based nodes, one row per link in file order, values written with
    ``repr`` (round-trip exact)."""
    text = io.StringIO(newline="")
    w = csv.writer(text, lineterminator="\n")
    w.writerow(["from", "to", *columns])
    values = [np.asarray(v, dtype=np.float64) for v in columns.values()]
    for a, (i, j) in enumerate(zip(network.init.tolist(), network.term.tolist())):
        w.writerow([i + 1, j + 1, *(repr(float(v[a])) for v in values)])
    return text.getvalue()


def write_link_csv(path: str | os.PathLike, network, columns: dict[str, Sequence[float]]) -> Path:
    """Write :func:`link_csv` to ``path`` atomically."""
    try:
        atomic_write_bytes(path, link_csv(network, columns).encode())
    except OSError as e:
        raise UserInputError(f"cannot write {path}: {e.strerror or e}") from None
    return Path(path)


def equilibrium_to_csv(net: str | os.PathLike, trips: str | os.PathLike, out: str | os.PathLike, *,
                       gap: float = 1e-4, method: str = "path", max_iter: int = 1000,
                       toll_factor: float | None = None, distance_factor: float | None = None,
                       quiet: bool = False):
    """``fpntools traffic equilibrium``: solve the user equilibrium to relative gap ``gap`` and write
    ``from,to,flow,cost``.  Returns the :class:`~problems.traffic.equilibrium.EquilibriumResult`.

    Raises ``UserInputError`` for bad options or files, a link whose cost is negative or overflows
    (:meth:`problems.traffic.costs.BPRCost.check_range`) or an unreachable zone with demand; ``NotUsableError``
    (nothing written) when the gap is not reached or the solve became non-finite."""
    from problems.traffic.costs import CostRangeError
    from problems.traffic.equilibrium import solve_equilibrium

    check_gap(gap)
    if method not in METHODS:
        raise UserInputError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    if max_iter < 0:
        raise UserInputError(f"--max-iter must be >= 0, got {max_iter}")
    out = check_output_path(out, what="--out")
    network, demand = load_weighted_network(net, trips, toll_factor, distance_factor, quiet)
    try:
        res = solve_equilibrium(network, demand, gap=gap, method=method, max_iter=max_iter, progress=not quiet)
    except CostRangeError as e:
        raise UserInputError(f"{net}: {e}") from None
    except ValueError as e:  # unreachable zone with demand, bad demand matrix
        raise UserInputError(str(e)) from None
    what = "sweeps" if method == "path" else "iterations"
    if res.status == "nonfinite":
        raise NotUsableError(f"the solve became non-finite (relative gap {res.gap}) after {res.iterations} {what}; "
                             "output not usable, nothing written")
    if not res.usable:
        warn(f"relative gap {res.gap:.3e} is above the target {gap:.1e} after {res.iterations} {what}")
        raise NotUsableError(f"no equilibrium to relative gap {gap:.1e}: output not usable, nothing written "
                             "(raise --max-iter or loosen --gap)")
    write_link_csv(out, network, {"flow": res.flows, "cost": res.costs})
    if not quiet:
        print(f"{network.name}: relative gap {res.gap:.3e} <= {gap:.1e} after {res.iterations} {what} in "
              f"{res.time:.2f} s; Beckmann objective {res.objective:.6f}; output usable: wrote {out}", flush=True)
    return res


def dataset_to_npz(net: str | os.PathLike, trips: str | os.PathLike, out: str | os.PathLike, *, n: int = 100,
                   seed: int = 0, gap: float = 1e-6, origin_flows: bool = False, toll_factor: float | None = None,
                   distance_factor: float | None = None, quiet: bool = False):
    """``fpntools traffic dataset``: ``n`` contextual equilibria, each certified to ``gap``, saved as ``.npz``
    (:func:`problems.traffic.context.generate_dataset`).  Returns the dataset."""
    from problems.traffic.context import generate_dataset
    from problems.traffic.costs import CostRangeError

    if n < 1:
        raise UserInputError(f"--n must be >= 1, got {n}")
    check_gap(gap)
    out = check_output_path(out, what="--out")
    network, demand = load_weighted_network(net, trips, toll_factor, distance_factor, quiet)
    try:
        ds = generate_dataset(network, demand, n, seed=seed, gap=gap, origin_flows=origin_flows,
                              progress=not quiet)
    except CostRangeError as e:
        raise UserInputError(f"{net}: {e}") from None
    except RuntimeError as e:  # a sample missed the gap
        raise NotUsableError(f"{e}; output not usable, nothing written") from None
    except ValueError as e:
        raise UserInputError(str(e)) from None
    if not (np.isfinite(ds.flows).all() and np.isfinite(ds.gaps).all()):
        raise NotUsableError("a sample became non-finite; output not usable, nothing written")
    try:
        ds.save(out)
    except OSError as e:
        raise UserInputError(f"cannot write {out}: {e.strerror or e}") from None
    if not quiet:
        print(f"{len(ds)} samples, every one certified to relative gap <= {gap:.1e} (max {ds.gaps.max():.2e}): "
              f"output usable: wrote {out}", flush=True)
    return ds


def predict_to_csv(model: str | os.PathLike | None, context: str | None, context_file: str | os.PathLike | None,
                   out: str | os.PathLike | None, max_residual: float = 1e-6, batch: int = 25) -> np.ndarray:
    """``fpntools traffic predict``: link flows of a trained N-FPN for one or more contexts, as CSV
    ``from,to,flow[_k]`` (to ``out``, or stdout), solved ``batch`` contexts at a time (a progress bar on stderr
    for more than one batch).  The fixed point must be finite with relative residual ``<= max_residual`` (above
    the model's ``tol``: a warning; above ``max_residual``: ``NotUsableError``).  Returns the flows ``(n, L)``."""
    import torch

    from problems.traffic.context import parse_contexts
    from problems.traffic.train import DEFAULT_MODEL, load_model

    if out is not None:
        out = check_output_path(out, what="--out")
    torch.set_num_threads(1)
    m = load_model(model if model is not None else DEFAULT_MODEL)
    ctx = parse_contexts(context, context_file, m.num_zones)
    from tqdm.auto import tqdm

    chunks = range(0, len(ctx), batch)
    flows_l, res_l = [], []
    with torch.no_grad():
        for i in tqdm(chunks, desc="N-FPN predictions", unit="batch", disable=len(chunks) < 2, leave=False):
            flows_t, info = m(torch.as_tensor(ctx[i: i + batch]))
            flows_l.append(flows_t.cpu().numpy())
            res_l.append(info.rel_residual.cpu().numpy())
    flows, res = np.concatenate(flows_l), np.concatenate(res_l)
    worst = float(np.max(res)) if np.isfinite(res).all() else float("nan")
    if not (np.isfinite(flows).all() and math.isfinite(worst)):
        raise NotUsableError("the fixed-point solve became non-finite: output not usable, nothing written")
    if worst > max_residual:
        raise NotUsableError(f"the fixed-point solve stopped at relative residual {worst:.1e} > {max_residual:.0e}: "
                             "output not usable, nothing written")
    tol = m.config.solve.eval_tol if m.config.solve.eval_tol is not None else m.config.solve.tol
    if worst > tol:
        warn(f"fixed-point residual {worst:.1e} is above the model's tolerance {tol:.0e} (still <= {max_residual:.0e})")
    names = ["flow"] if flows.shape[0] == 1 else [f"flow_{k}" for k in range(flows.shape[0])]
    columns = dict(zip(names, flows))
    if out is None:
        sys.stdout.write(link_csv(m.network, columns))
        sys.stdout.flush()
        where = "printed above"
    else:
        write_link_csv(out, m.network, columns)
        where = f"wrote {out}"
    print(f"{flows.shape[0]} context(s): fixed-point relative residual <= {worst:.1e}: output usable; {where}",
          file=sys.stderr, flush=True)
    return flows
