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


# ------------------------------------------------------------------------------------ the user's own data


def make_data_command(net: str | os.PathLike, trips: str | os.PathLike, out: str | os.PathLike, *, n: int = 100,
                      seed: int = 0, gap: float = 1e-8, od: bool = False, toll_factor: float | None = None,
                      distance_factor: float | None = None, quiet: bool = False):
    """``fpntools traffic make-data``: ``n`` certified contextual equilibria of the project's generator in the
    ``DATA.npz`` format of ``train --data`` (:func:`problems.traffic.datafile.make_data`).  Returns the data."""
    from problems.traffic.costs import CostRangeError
    from problems.traffic.datafile import make_data, save_data_file

    if n < 2:
        raise UserInputError(f"--n must be >= 2, got {n}")
    check_gap(gap)
    out = check_output_path(out, suffixes=(".npz",), what="--out")
    network, demand = load_weighted_network(net, trips, toll_factor, distance_factor, quiet)
    try:
        data = make_data(network, demand, n, seed=seed, gap=gap, od=od, progress=not quiet)
    except CostRangeError as e:
        raise UserInputError(f"{net}: {e}") from None
    except RuntimeError as e:  # a sample missed the gap
        raise NotUsableError(f"{e}; output not usable, nothing written") from None
    except ValueError as e:
        raise UserInputError(str(e)) from None
    save_data_file(out, data)
    if not quiet:
        print(f"{n} samples (context {data.contexts.shape[1]} columns, flow {data.flows.shape[1]} links), every one "
              f"certified to relative gap <= {gap:.1e} (max {data.extra['gap'].max():.2e}): output usable: wrote "
              f"{out}", file=sys.stderr, flush=True)
    return data


def train_data_command(*, net: str | os.PathLike, trips: str | os.PathLike, data: str | os.PathLike,
                       out: str | os.PathLike, family: str = "neural", epochs: int = 40, batch_size: int = 10,
                       lr: float = 3e-3, seed: int = 0, test_fraction: float = 0.2, sweeps: int = 200,
                       toll_factor: float | None = None, distance_factor: float | None = None, device: str = "cpu",
                       resume: bool = False, force: bool = False, quiet: bool = False) -> dict:
    """``fpntools traffic train --net --trips --data --out DIR``: a path N-FPN (:mod:`problems.traffic.pathnfpn`)
    trained on the user's observations (:mod:`problems.traffic.datafile`), saved to ``DIR`` with its test
    metrics on the held-out ``test_fraction``.  Bad files or options: ``UserInputError`` before training."""
    import json

    import torch

    from fpntools.cli_support import check_output_dir
    from fpntools.training.trainer import TrainerConfig
    from problems.traffic.byod import (PathTrainConfig, build_model, evaluate_flows, fit, save_path_model,
                                       split)
    from problems.traffic.datafile import load_data_file
    from problems.traffic.pathnfpn import PathNFPNConfig

    cfg = PathTrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, test_fraction=test_fraction,
                          model=PathNFPNConfig(family=family, sweeps=sweeps))
    out = check_output_dir(out, what="model folder --out")
    TrainerConfig(epochs=epochs, batch_size=batch_size, lr=lr, device=device, run_dir=str(out), resume=resume,
                  force=force).check_run_folder()
    network, demand = load_weighted_network(net, trips, toll_factor, distance_factor, quiet)
    obs = load_data_file(data, network.num_links, network.num_zones)
    train, test = split(obs, test_fraction)
    torch.set_num_threads(1)
    _say(f"{len(train)} training / {len(test) if test else 0} test observations; collecting candidate paths", quiet)
    model = build_model(network, demand, train, cfg.model)
    _say(f"{model.paths.num_paths} candidate paths for {model.paths.num_pairs} OD pairs; training ({family})", quiet)
    result = fit(model, train, cfg, out, resume=resume, force=force, device=device, progress=not quiet)
    if not result.completed:
        raise NotUsableError(f"training stopped before its last epoch; no model written (--resume continues from "
                             f"{out / 'checkpoint.pt'})")
    model = model.to("cpu")
    summary: dict = {"config": cfg.to_dict(), "n_train": len(train), "n_test": len(test) if test else 0,
                     "train": evaluate_flows(model, train)}
    if test is not None:
        summary["test"] = evaluate_flows(model, test)
    score = summary.get("test", summary["train"])
    if not all(math.isfinite(v) for v in score.values()):
        raise NotUsableError(f"the trained model's metrics are not finite ({score}); no model written")
    dem = demand.toarray() if hasattr(demand, "toarray") else np.asarray(demand, dtype=np.float64)
    save_path_model(model, out, dem, extra=summary)
    print(json.dumps({k: summary[k] for k in ("n_train", "n_test", "train", "test") if k in summary}), flush=True)
    which = "test" if "test" in summary else "train"
    print(f"{which} relative L2 error {score['rel_l2']:.3e}, solver gap <= {score['solver_gap']:.1e}: model usable: "
          f"wrote {out}/model.safetensors, model.json, net.tntp, trips.tntp", file=sys.stderr, flush=True)
    return summary


def predict_path_command(model_dir: str | os.PathLike, context: str | None, context_file: str | os.PathLike | None,
                         out: str | os.PathLike | None, *, net: str | os.PathLike | None = None,
                         trips: str | os.PathLike | None = None, batch: int = 50) -> np.ndarray:
    """``fpntools traffic predict --model DIR`` for a path N-FPN: flows ``(m, L)`` to ``OUT.npy``, or the long
    CSV ``sample,from,to,flow,cost`` (learned link cost at the predicted flow) to ``OUT.csv`` / stdout.
    Contexts from ``--context`` (comma-separated) or ``--context-file`` (``.npy``, ``.csv``, ``.json``,
    whitespace text, or a ``DATA.npz``'s ``context``), ``(m, p)`` with the model's ``p``."""
    import torch

    from problems.traffic.byod import load_path_model, predict_flows
    from problems.traffic.datafile import check_contexts

    if out is not None:
        out = check_output_path(out, suffixes=(".npy", ".csv"), what="--out")
    if (context is None) == (context_file is None):
        raise UserInputError("give exactly one of --context and --context-file")
    torch.set_num_threads(1)
    m = load_path_model(model_dir, net, trips)
    if context is not None:
        try:
            raw = [float(v) for v in context.replace(" ", "").split(",") if v != ""]
        except ValueError:
            raise UserInputError(f"--context must be comma-separated numbers, got {context!r}") from None
        ctx = check_contexts(raw, m.context_dim, "--context")
    else:
        from problems.traffic.context import read_context_file

        path = Path(context_file)
        raw = read_context_file(path)
        ctx = check_contexts(raw, m.context_dim, str(path))
    flows, diag = predict_flows(m, ctx, batch)
    if not np.isfinite(flows).all():
        raise NotUsableError("the prediction became non-finite: output not usable, nothing written")
    gap = diag["solver_gap"]
    if not gap <= 1e-3:
        raise NotUsableError(f"the forward solve stopped at restricted relative gap {gap:.1e} > 1e-3: output not "
                             "usable, nothing written")
    if gap > m.config.solver_tol:
        warn(f"forward solve stopped at its sweep budget: restricted relative gap {gap:.1e} > {m.config.solver_tol:.0e}"
             " (still <= 1e-3)")
    if out is not None and out.suffix == ".npy":
        atomic_write_bytes(out, _npy_bytes(flows))
        where = f"wrote {out}"
    else:
        costs = m.link_costs_at(torch.as_tensor(ctx), torch.as_tensor(flows)).numpy()
        text = io.StringIO(newline="")
        w = csv.writer(text, lineterminator="\n")
        w.writerow(["sample", "from", "to", "flow", "cost"])
        frm, to = (m.network.init + 1).tolist(), (m.network.term + 1).tolist()
        for s in range(flows.shape[0]):
            for a in range(flows.shape[1]):
                w.writerow([s, frm[a], to[a], repr(float(flows[s, a])), repr(float(costs[s, a]))])
        if out is None:
            sys.stdout.write(text.getvalue())
            sys.stdout.flush()
            where = "printed above"
        else:
            atomic_write_bytes(out, text.getvalue().encode())
            where = f"wrote {out}"
    print(f"{flows.shape[0]} context(s), {diag['cpu_s_per_sample']:.3f} CPU s each: forward-solver gap <= {gap:.1e}: "
          f"output usable; {where}", file=sys.stderr, flush=True)
    return flows


def _npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()
