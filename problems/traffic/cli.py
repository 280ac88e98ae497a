"""``fpntools traffic ...``: user equilibria of TNTP networks, contextual datasets and the N-FPN.

Commands:

* ``equilibrium --net NET.tntp --trips TRIPS.tntp --gap 1e-4 --out FLOWS.csv`` writes ``from,to,flow,cost``
  (1-based nodes, one row per link in file order).  Generalised-cost weights: ``--toll-factor`` /
  ``--distance-factor``, by default the published ones of a network recognised by its content
  (Chicago-Sketch: 0.02 / 0.04), else 0 (with a warning when the links carry tolls or lengths).
* ``dataset --net NET.tntp --trips TRIPS.tntp --n 100 --gap 1e-6 --out DATA.npz`` writes certified
  contextual equilibria (see :mod:`problems.traffic.context`).
* ``train --network SiouxFalls --n-train 200 --n-test 50 --epochs 6 --out runs/traffic/SiouxFalls
  [--resume | --force] [--device cpu]`` trains the N-FPN (:mod:`problems.traffic.nfpn`) with
  :class:`fpntools.training.Trainer`; run folder with ``config.json``, ``history.json``, ``checkpoint.pt``.
* ``predict [--model PREFIX] (--context "w,s,e[,zone]" | --context "d0,...,d_{3+Z-1}" | --context-file F)
  [--out FLOWS.csv]`` predicts equilibrium link flows with a trained N-FPN (default: the shipped Sioux Falls
  model in ``data/traffic/``).
* ``bench --networks SiouxFalls`` prints the N-FPN vs baselines table and writes a figure.

Bad input gives a one-line error and exit code 2 before anything is computed; a result that must not be
used (gap not reached, non-finite solve) gives exit code 3 and no file (:mod:`fpntools.cli_support`).
Output files are written atomically.  This module imports only typer at load time: ``equilibrium`` and
``dataset`` never import torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(help="Traffic equilibria (TNTP networks), contextual datasets and the traffic N-FPN.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

_TOLL = typer.Option(None, "--toll-factor", help="generalised-cost weight of tolls (default: the published one "
                     "of a recognised network, else 0)")
_DIST = typer.Option(None, "--distance-factor", help="generalised-cost weight of link length (default: the "
                     "published one of a recognised network, else 0)")


@app.callback()
def _main() -> None:
    """Traffic equilibria (TNTP networks), contextual datasets and the traffic N-FPN."""


@app.command()
def equilibrium(
    net: Path = typer.Option(..., "--net", help="network file (*_net.tntp)"),
    trips: Path = typer.Option(..., "--trips", help="demand file (*_trips.tntp)"),
    out: Path = typer.Option(..., "--out", help="output CSV: from,to,flow,cost"),
    gap: float = typer.Option(1e-4, "--gap", help="target relative gap (TSTT - SPTT) / TSTT, in (0, 1)"),
    method: str = typer.Option("path", "--method", help="path | cfw | fw"),
    max_iter: int = typer.Option(1000, "--max-iter", help="maximum sweeps / iterations"),
    toll_factor: Optional[float] = _TOLL,
    distance_factor: Optional[float] = _DIST,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar / summary"),
) -> None:
    """Solve the user equilibrium and write link flows and costs."""
    from problems.traffic.commands import equilibrium_to_csv

    equilibrium_to_csv(net, trips, out, gap=gap, method=method, max_iter=max_iter, toll_factor=toll_factor,
                       distance_factor=distance_factor, quiet=quiet)


@app.command()
def dataset(
    net: Path = typer.Option(..., "--net", help="network file (*_net.tntp)"),
    trips: Path = typer.Option(..., "--trips", help="demand file (*_trips.tntp)"),
    out: Path = typer.Option(..., "--out", help="output .npz"),
    n: int = typer.Option(100, "--n", help="number of samples"),
    seed: int = typer.Option(0, "--seed", help="context sampling seed"),
    gap: float = typer.Option(1e-6, "--gap", help="certified relative gap of every sample, in (0, 1)"),
    origin_flows: bool = typer.Option(False, "--origin-flows", help="also store per-origin link flows"),
    toll_factor: Optional[float] = _TOLL,
    distance_factor: Optional[float] = _DIST,
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Generate contextual equilibria (certified to --gap) and save them as .npz."""
    from problems.traffic.commands import dataset_to_npz

    dataset_to_npz(net, trips, out, n=n, seed=seed, gap=gap, origin_flows=origin_flows, toll_factor=toll_factor,
                   distance_factor=distance_factor, quiet=quiet)


@app.command()
def train(
    network: str = typer.Option("SiouxFalls", "--network", help="a known TNTP network (generated data)"),
    out: Path = typer.Option(Path("runs/traffic/SiouxFalls"), "--out", help="run folder (with --data: model folder)"),
    net: Optional[Path] = typer.Option(None, "--net", help="your network file (*_net.tntp), with --trips and --data"),
    trips: Optional[Path] = typer.Option(None, "--trips", help="your demand file (*_trips.tntp)"),
    data: Optional[Path] = typer.Option(None, "--data", help="your observations DATA.npz: context (n, p), flow (n, L)"
                                        " [, od (n, Z, Z) | demand_scale (n,)]"),
    family: Optional[str] = typer.Option(None, "--family", help="neural (general monotone cost and demand; default "
                                         "with --data) | grey (the generator's law; default with --network)"),
    test_fraction: float = typer.Option(0.2, "--test-fraction", help="with --data: share of the observations (the "
                                        "last ones) held out and scored"),
    sweeps: int = typer.Option(200, "--sweeps", help="with --data: forward-solver sweep budget"),
    n_train: int = typer.Option(200, "--n-train"),
    n_test: int = typer.Option(50, "--n-test"),
    gap: float = typer.Option(1e-8, "--gap", help="certified relative gap of the data"),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="default 6 (--network) / 40 (--data)"),
    batch_size: int = typer.Option(10, "--batch-size"),
    lr: Optional[float] = typer.Option(None, "--lr", help="initial learning rate, cosine decay to lr / 10 (default "
                                       "0.05 with --network, 3e-3 with --data (grey: 0.03))"),
    seed: int = typer.Option(0, "--seed"),
    backward: str = typer.Option("implicit", "--backward", help="implicit | jfb (--network)"),
    adjoint_iters: int = typer.Option(100, "--adjoint-iters", help="implicit: adjoint Anderson iterations"),
    data_seed: int = typer.Option(0, "--data-seed"),
    cache: Path = typer.Option(Path("cache/traffic"), "--cache", help="dataset cache folder"),
    toll_factor: Optional[float] = _TOLL,
    distance_factor: Optional[float] = _DIST,
    device: str = typer.Option("auto", "--device", help="auto (cuda when available) | cpu | cuda"),
    resume: bool = typer.Option(False, "--resume", help="continue from <out>/checkpoint.pt"),
    force: bool = typer.Option(False, "--force", help="start over even if <out>/checkpoint.pt exists"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Train a traffic N-FPN: on your own observations (--net --trips --data) or on generated certified
    equilibria of a known network (--network)."""
    if net is not None or trips is not None or data is not None:
        from fpntools.errors import UserInputError
        from problems.traffic.commands import train_data_command

        if net is None or trips is None or data is None:
            raise UserInputError("training on your own data needs all of --net, --trips and --data")
        family = family or "neural"
        train_data_command(net=net, trips=trips, data=data, out=out, family=family,
                           epochs=epochs if epochs is not None else 40, batch_size=batch_size,
                           lr=lr if lr is not None else (0.03 if family == "grey" else 3e-3), seed=seed,
                           test_fraction=test_fraction, sweeps=sweeps,
                           toll_factor=toll_factor, distance_factor=distance_factor, device=device, resume=resume,
                           force=force, quiet=quiet)
        return
    from problems.traffic.train import train_command

    if family not in (None, "grey"):
        from fpntools.errors import UserInputError

        raise UserInputError("--network trains the grey-box N-FPN (--family grey); for --family neural give your "
                             "data with --net --trips --data (fpntools traffic make-data writes generated data)")
    train_command(network=network, out=out, n_train=n_train, n_test=n_test, gap=gap,
                  epochs=epochs if epochs is not None else 6, batch_size=batch_size,
                  lr=lr if lr is not None else 0.05, seed=seed, backward=backward, adjoint_iters=adjoint_iters,
                  data_seed=data_seed, cache=cache, device=device, resume=resume, force=force, quiet=quiet)


@app.command("make-data")
def make_data(
    net: Path = typer.Option(..., "--net", help="network file (*_net.tntp)"),
    trips: Path = typer.Option(..., "--trips", help="demand file (*_trips.tntp)"),
    out: Path = typer.Option(..., "--out", help="output DATA.npz (context, flow, demand_scale, gap[, od])"),
    n: int = typer.Option(100, "--n", help="number of observations"),
    seed: int = typer.Option(0, "--seed", help="context sampling seed"),
    gap: float = typer.Option(1e-8, "--gap", help="certified relative gap of every sample, in (0, 1)"),
    od: bool = typer.Option(False, "--od", help="also store the OD tables"),
    toll_factor: Optional[float] = _TOLL,
    distance_factor: Optional[float] = _DIST,
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Certified generator output in the DATA.npz format of `train --data` (contexts and equilibrium flows)."""
    from problems.traffic.commands import make_data_command

    make_data_command(net, trips, out, n=n, seed=seed, gap=gap, od=od, toll_factor=toll_factor,
                      distance_factor=distance_factor, quiet=quiet)


@app.command()
def predict(
    context: str = typer.Option(None, "--context", help="one context: comma-separated numbers (shipped / --network "
                                "model: 'w,s,e[,zone]' with a 1-based zone, or the full vector)"),
    context_file: Path = typer.Option(None, "--context-file", help=".npy / .json / .csv: one context per row"),
    model: Path = typer.Option(None, "--model", help="model folder (train --out) or prefix (default: shipped Sioux "
                               "Falls N-FPN)"),
    out: Path = typer.Option(None, "--out", help="OUT.npy: (m, L) flows; OUT.csv: sample,from,to,flow,cost (a "
                             "--network / shipped model: from,to,flow[_k]); default: CSV on stdout"),
    net: Optional[Path] = typer.Option(None, "--net", help="check this network (with --trips) against the model"),
    trips: Optional[Path] = typer.Option(None, "--trips", help="the demand file of --net"),
) -> None:
    """Predict equilibrium link flows for one or more contexts with a trained N-FPN."""
    from problems.traffic.byod import is_path_model

    if model is not None and is_path_model(model):
        from problems.traffic.commands import predict_path_command

        predict_path_command(model, context, context_file, out, net=net, trips=trips)
        return
    from problems.traffic.commands import predict_to_csv

    if net is not None or trips is not None:
        from fpntools.errors import UserInputError

        raise UserInputError("--net / --trips apply to models trained with --data (the model folder of train --out)")
    if model is not None and model.is_dir():
        model = model / "model"
    predict_to_csv(model, context, context_file, out)


@app.command()
def bench(
    networks: str = typer.Option("SiouxFalls", "--networks", help="comma-separated known networks"),
    n_train: int = typer.Option(200, "--n-train"),
    n_test: int = typer.Option(50, "--n-test"),
    gap: float = typer.Option(1e-8, "--gap"),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="training epochs (default 20; --legacy: 5, when a "
                                         "model must be trained)"),
    families: str = typer.Option("neural,grey", "--families", help="path N-FPN families to train"),
    records: Optional[Path] = typer.Option(None, "--records", help="also write the rows as JSON"),
    legacy: bool = typer.Option(False, "--legacy", help="the per-origin Davis-Yin N-FPN (shipped Sioux Falls model) "
                                "vs constant / MLP instead"),
    models: Path = typer.Option(Path("runs/traffic"), "--models", help="--legacy: folder of trained models"),
    figure_dir: Path = typer.Option(Path("out/traffic"), "--figures", help="--legacy: folder for the PNG figures"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress"),
) -> None:
    """Path N-FPN (neural, grey-box) vs MLP and constant predictors on certified equilibria: markdown tables."""
    if legacy:
        from problems.traffic.learning_bench import bench_command

        bench_command(networks, n_train=n_train, n_test=n_test, gap=gap, models=models,
                      epochs=epochs if epochs is not None else 5, figure_dir=figure_dir, progress=not quiet)
        return
    from problems.traffic.learning_bench import bench_path_command

    bench_path_command(networks, n_train=n_train, n_test=n_test, gap=gap,
                       epochs=epochs if epochs is not None else 20, families=families, records=records,
                       progress=not quiet)


if __name__ == "__main__":  # pragma: no cover - the console command is ``fpntools traffic``
    import sys

    from fpntools.cli import app as _top

    _top(["traffic", *sys.argv[1:]])
