"""``fpntools traffic ...``: user equilibria of TNTP networks and contextual datasets.

Commands:

* ``equilibrium --net NET.tntp --trips TRIPS.tntp --gap 1e-4 --out FLOWS.csv`` writes ``from,to,flow,cost``
  (1-based nodes, one row per link in file order).
* ``dataset --net NET.tntp --trips TRIPS.tntp --n 100 --gap 1e-6 --out DATA.npz`` writes certified
  contextual equilibria (see :mod:`problems.traffic.context`).

* ``train --network SiouxFalls --n-train 200 --n-test 50 --epochs 5 --out runs/traffic/SiouxFalls [--resume]``
  trains the N-FPN (:mod:`problems.traffic.nfpn`) with JFB; atomic per-epoch checkpoints, resumable.
* ``predict [--model PREFIX] (--context "w,s,e[,zone]" | --context "d0,...,d_{3+Z-1}" | --context-file F)
  --out FLOWS.csv`` predicts equilibrium link flows with a trained N-FPN (default: the shipped Sioux Falls
  model in ``data/traffic/``).
* ``bench --networks SiouxFalls`` prints the N-FPN vs baselines table and writes a figure.

Bad input files give a one-line error (file, line, field) and exit code 2; a solve that misses the gap
gives exit code 3.  Output files are written atomically: nothing is left behind on failure.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import typer

from fpntools.training.checkpoint import atomic_write_bytes
from problems.traffic.tntp import TNTPError, load_network

app = typer.Typer(help="Traffic equilibria (TNTP networks) and contextual datasets.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)


def _fail(message: str, code: int) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _atomic_write_csv(path: Path, header: list[str], rows) -> None:
    text = io.StringIO(newline="")
    w = csv.writer(text)
    w.writerow(header)
    w.writerows(rows)
    atomic_write_bytes(path, text.getvalue().encode())


@app.callback()
def _main() -> None:
    """Traffic equilibria (TNTP networks) and contextual datasets."""


@app.command()
def equilibrium(
    net: Path = typer.Option(..., "--net", help="network file (*_net.tntp)"),
    trips: Path = typer.Option(..., "--trips", help="demand file (*_trips.tntp)"),
    out: Path = typer.Option(..., "--out", help="output CSV: from,to,flow,cost"),
    gap: float = typer.Option(1e-4, "--gap", help="target relative gap (TSTT - SPTT) / TSTT"),
    method: str = typer.Option("path", "--method", help="path | cfw | fw"),
    max_iter: int = typer.Option(1000, "--max-iter", help="maximum sweeps / iterations"),
    toll_factor: float = typer.Option(0.0, "--toll-factor", help="generalised cost weight of tolls"),
    distance_factor: float = typer.Option(0.0, "--distance-factor", help="generalised cost weight of length"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar / summary"),
) -> None:
    """Solve the user equilibrium and write link flows and costs."""
    from problems.traffic.equilibrium import solve_equilibrium

    if not gap > 0:
        _fail(f"--gap must be positive, got {gap}", 2)
    if method not in ("path", "cfw", "fw"):
        _fail(f"--method must be path, cfw or fw, got {method!r}", 2)
    try:
        network, demand = load_network(net, trips, toll_factor=toll_factor, distance_factor=distance_factor)
    except TNTPError as e:
        _fail(str(e), 2)
    try:
        res = solve_equilibrium(network, demand, gap=gap, method=method, max_iter=max_iter, progress=not quiet)
    except ValueError as e:
        _fail(str(e), 2)
    if not res.converged:
        _fail(f"relative gap {res.gap:.3e} above target {gap:.1e} after {res.iterations} iterations; "
              "no output written (raise --max-iter)", 3)
    rows = ((int(i) + 1, int(j) + 1, repr(float(f)), repr(float(c)))
            for i, j, f, c in zip(network.init, network.term, res.flows, res.costs))
    try:
        _atomic_write_csv(out, ["from", "to", "flow", "cost"], rows)
    except OSError as e:
        _fail(f"cannot write {out}: {e.strerror or e}", 2)
    if not quiet:
        typer.echo(f"{network.name}: relative gap {res.gap:.3e} after {res.iterations} iterations in "
                   f"{res.time:.2f} s; Beckmann objective {res.objective:.6f}; wrote {out}")


@app.command()
def dataset(
    net: Path = typer.Option(..., "--net", help="network file (*_net.tntp)"),
    trips: Path = typer.Option(..., "--trips", help="demand file (*_trips.tntp)"),
    out: Path = typer.Option(..., "--out", help="output .npz"),
    n: int = typer.Option(100, "--n", help="number of samples"),
    seed: int = typer.Option(0, "--seed", help="context sampling seed"),
    gap: float = typer.Option(1e-6, "--gap", help="certified relative gap of every sample"),
    origin_flows: bool = typer.Option(False, "--origin-flows", help="also store per-origin link flows"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Generate contextual equilibria (certified to --gap) and save them as .npz."""
    from problems.traffic.context import generate_dataset

    if n < 1:
        _fail(f"--n must be >= 1, got {n}", 2)
    try:
        network, demand = load_network(net, trips)
    except TNTPError as e:
        _fail(str(e), 2)
    try:
        ds = generate_dataset(network, demand, n, seed=seed, gap=gap, origin_flows=origin_flows,
                              progress=not quiet)
    except (ValueError, RuntimeError) as e:
        _fail(str(e), 3)
    try:
        ds.save(out)
    except OSError as e:
        _fail(f"cannot write {out}: {e.strerror or e}", 2)
    if not quiet:
        typer.echo(f"{len(ds)} samples, max relative gap {ds.gaps.max():.2e}, wrote {out}")


def _parse_contexts(context: str | None, context_file: Path | None, num_zones: int):
    """Contexts ``(n, 3 + Z)`` from ``--context`` (full vector, or ``w,s,e[,zone]`` with a 1-based event zone)
    or a file (``.npy``, ``.json`` list of vectors, or CSV / whitespace text, one context per line)."""
    import json

    import numpy as np

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
                if not (z == int(z) and 1 <= z <= num_zones):
                    raise UserInputError(f"event zone must be an integer in 1..{num_zones}, got {vals[3]}")
                full[3 + int(z) - 1] = 1.0
            arr = full[None]
        elif len(vals) == dim:
            arr = np.asarray(vals)[None]
        else:
            raise UserInputError(f"--context needs 3 or 4 values (w,s,e[,zone]) or {dim} values (full vector), "
                                 f"got {len(vals)}")
    else:
        if not context_file.is_file():
            raise UserInputError(f"context file not found: {context_file}")
        try:
            if context_file.suffix == ".npy":
                arr = np.load(context_file, allow_pickle=False)
            elif context_file.suffix == ".json":
                arr = np.asarray(json.loads(context_file.read_text()), dtype=np.float64)
            else:
                arr = np.loadtxt(context_file, delimiter="," if context_file.suffix == ".csv" else None, ndmin=2)
        except (ValueError, OSError) as e:
            raise UserInputError(f"cannot read contexts from {context_file}: {e}") from None
        arr = np.asarray(arr, dtype=np.float64)
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


@app.command()
def train(
    network: str = typer.Option("SiouxFalls", "--network", help="a known TNTP network"),
    out: Path = typer.Option(Path("runs/traffic/SiouxFalls"), "--out", help="output folder"),
    n_train: int = typer.Option(200, "--n-train"),
    n_test: int = typer.Option(50, "--n-test"),
    gap: float = typer.Option(1e-8, "--gap", help="certified relative gap of the data"),
    epochs: int = typer.Option(6, "--epochs"),
    batch_size: int = typer.Option(10, "--batch-size"),
    lr: float = typer.Option(0.05, "--lr"),
    seed: int = typer.Option(0, "--seed"),
    backward: str = typer.Option("implicit", "--backward", help="implicit | jfb"),
    adjoint_iters: int = typer.Option(100, "--adjoint-iters", help="implicit: adjoint Anderson iterations"),
    data_seed: int = typer.Option(0, "--data-seed"),
    cache: Path = typer.Option(Path("cache/traffic"), "--cache", help="dataset cache folder"),
    resume: bool = typer.Option(False, "--resume", help="continue from <out>/checkpoint.pt"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Train the traffic N-FPN (Davis-Yin; implicit or JFB gradients) on certified contextual equilibria."""
    import json

    from fpntools.errors import UserInputError
    from problems.traffic.train import TrainConfig
    from problems.traffic.train import train as run_train

    for name, v in (("--n-train", n_train), ("--n-test", n_test), ("--epochs", epochs), ("--batch-size", batch_size)):
        if v < 1:
            _fail(f"{name} must be >= 1, got {v}", 2)
    if backward not in ("implicit", "jfb"):
        _fail(f"--backward must be implicit or jfb, got {backward!r}", 2)
    if not (gap > 0 and lr > 0):
        _fail("--gap and --lr must be positive", 2)
    cfg = TrainConfig(network=network, n_train=n_train, n_test=n_test, gap=gap, epochs=epochs,
                      batch_size=batch_size, lr=lr, seed=seed, data_seed=data_seed, cache=str(cache),
                      backward=backward, adjoint_iters=adjoint_iters)
    try:
        _, summary = run_train(cfg, out, resume=resume, progress=not quiet)
    except (FileNotFoundError, KeyError) as e:
        _fail(f"network {network}: {e}", 2)
    except UserInputError as e:
        _fail(str(e), 2)
    typer.echo(json.dumps(dict(test=summary["test"], train_cpu_s=round(summary["train_cpu_s"], 1),
                               model=str(out / "model.safetensors"))))


@app.command()
def predict(
    context: str = typer.Option(None, "--context", help="'w,s,e[,zone]' (zone 1-based) or the full vector"),
    context_file: Path = typer.Option(None, "--context-file", help=".npy / .json / .csv: one context per row"),
    model: Path = typer.Option(None, "--model", help="model prefix (default: shipped Sioux Falls N-FPN)"),
    out: Path = typer.Option(None, "--out", help="CSV from,to,flow[_k] (default: print to stdout)"),
) -> None:
    """Predict equilibrium link flows for one or more contexts with a trained N-FPN."""
    import torch

    from fpntools.errors import UserInputError
    from problems.traffic.train import DEFAULT_MODEL, load_model

    torch.set_num_threads(1)
    try:
        m = load_model(model if model is not None else DEFAULT_MODEL)
        ctx = _parse_contexts(context, context_file, m.num_zones)
    except UserInputError as e:
        _fail(str(e), 2)
    with torch.no_grad():
        flows, info = m(torch.as_tensor(ctx))
    flows = flows.numpy()
    if not bool(info.converged.all()) and float(info.rel_residual.max()) > 1e-6:
        _fail(f"fixed-point solve did not converge (residual {float(info.rel_residual.max()):.1e}); no output", 3)
    net = m.network
    header = ["from", "to"] + (["flow"] if flows.shape[0] == 1 else [f"flow_{k}" for k in range(flows.shape[0])])
    rows = [[int(i) + 1, int(j) + 1] + [repr(float(v)) for v in flows[:, a]]
            for a, (i, j) in enumerate(zip(net.init, net.term))]
    if out is None:
        typer.echo(",".join(header))
        for r in rows:
            typer.echo(",".join(str(v) for v in r))
        return
    try:
        _atomic_write_csv(out, header, rows)
    except OSError as e:
        _fail(f"cannot write {out}: {e.strerror or e}", 2)


@app.command()
def bench(
    networks: str = typer.Option("SiouxFalls", "--networks", help="comma-separated known networks"),
    n_train: int = typer.Option(200, "--n-train"),
    n_test: int = typer.Option(50, "--n-test"),
    gap: float = typer.Option(1e-8, "--gap"),
    models: Path = typer.Option(Path("runs/traffic"), "--models", help="folder of trained models (<network>/)"),
    epochs: int = typer.Option(5, "--epochs", help="epochs when a model must be trained"),
    figure_dir: Path = typer.Option(Path("out/traffic"), "--figures", help="folder for the PNG figures"),
) -> None:
    """N-FPN vs constant and MLP baselines on certified equilibria: prints a markdown table."""
    import torch

    from problems.traffic.learning_bench import bench_network, format_table

    torch.set_num_threads(1)
    rows = []
    for name in [n.strip() for n in networks.split(",") if n.strip()]:
        try:
            rows.append(bench_network(name, n_train, n_test, gap=gap, models=models, epochs=epochs,
                                      figure=figure_dir / f"{name}_flows.png"))
        except (FileNotFoundError, KeyError) as e:
            typer.echo(f"skipping {name}: {e}", err=True)
    typer.echo(format_table(rows))


if __name__ == "__main__":  # pragma: no cover
    app()
