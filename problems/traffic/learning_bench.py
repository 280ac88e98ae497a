"""``fpntools traffic bench``: N-FPN versus baselines on certified contextual equilibria.

Per network: data sizes, the equilibrium solver's cost and certified gap over the dataset, the N-FPN's test
relative L2 error, TRAFIX, Wardrop gap of its predictions under the true costs and demand, its CPU time per
prediction, and the baselines (constant = mean training flow; MLP context -> link flows).  A figure of the
network coloured by true and predicted flow (and their relative difference) is written as PNG.

The N-FPN is read from ``<models>/<network>/model.{json,safetensors}`` (written by ``fpntools traffic train``),
or the shipped model for Sioux Falls when its data settings match; otherwise it is trained with ``epochs``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from fpntools.errors import UserInputError
from problems.traffic.tntp import Network, tntp_files

__all__ = ["BenchRow", "bench_network", "bench_command", "format_table", "plot_flows"]


@dataclass
class BenchRow:
    """One network's numbers (see the module docstring)."""

    network: str
    links: int
    n_train: int
    n_test: int
    solver_s_per_sample: float
    solver_sweeps: float
    max_gap: float
    nfpn_rel_l2: float
    nfpn_trafix: float
    nfpn_wardrop_gap: float
    nfpn_conservation: float
    nfpn_cpu_s: float
    nfpn_train_cpu_s: float
    const_rel_l2: float
    const_trafix: float
    mlp_rel_l2: float
    mlp_trafix: float


def _model_for(name: str, models: Path, cfg, epochs: int | None, progress: bool):
    from problems.traffic.train import DEFAULT_MODEL, load_model, train

    candidates = [models / name / "model"]
    if name == "SiouxFalls":
        candidates.append(DEFAULT_MODEL)
    for c in candidates:
        if c.with_suffix(".json").is_file():
            try:
                m = load_model(c)
            except UserInputError:
                continue
            data = m.meta.get("extra", {}).get("config", {})
            if all(str(data.get(k)) == str(getattr(cfg, k)) for k in ("n_train", "n_test", "data_seed", "gap")):
                return m, float(m.meta["extra"].get("train_cpu_s", float("nan")))
    if epochs is not None:
        cfg.epochs = epochs
    model, summary = train(cfg, models / name, progress=progress)
    return model, summary["train_cpu_s"]


def bench_network(name: str, n_train: int, n_test: int, gap: float = 1e-8, models: str | Path = "runs/traffic",
                  epochs: int | None = None, figure: str | Path | None = None, progress: bool = False) -> BenchRow:
    """Benchmark one network (see the module docstring)."""
    from problems.traffic.train import TrainConfig, baselines, evaluate, load_data

    import sys

    def say(msg: str) -> None:
        if progress:
            print(f"{name}: {msg}", file=sys.stderr, flush=True)

    cfg = TrainConfig(network=name, n_train=n_train, n_test=n_test, gap=gap)
    say(f"certified data ({n_train} + {n_test} contexts, gap {gap:.0e}; cached under {cfg.cache})")
    net, _, tr, te = load_data(cfg, progress=progress)
    model, train_cpu = _model_for(name, Path(models), cfg, epochs, progress)
    say(f"N-FPN predictions on the {len(te)} test contexts")
    met = evaluate(model, te, progress=progress)
    if not met["fp_residual"] <= 1e-6:
        from fpntools.cli_support import warn

        warn(f"{name}: N-FPN fixed-point residual {met['fp_residual']:.1e} > 1e-6 on the test set; its row is not "
             "reliable")
    say("MLP baseline fit")
    base = baselines(tr, te)
    allt = np.concatenate([tr.times, te.times])
    alli = np.concatenate([tr.iterations, te.iterations])
    if figure is not None:
        import torch

        with torch.no_grad():
            pred, _ = model(torch.as_tensor(te.contexts[:1]))
        plot_flows(net, te.flows[0], pred[0].numpy(), figure)
    return BenchRow(
        network=name, links=net.num_links, n_train=len(tr), n_test=len(te),
        solver_s_per_sample=float(allt.mean()), solver_sweeps=float(alli.mean()),
        max_gap=float(max(tr.gaps.max(), te.gaps.max())),
        nfpn_rel_l2=met["rel_l2"], nfpn_trafix=met["trafix"], nfpn_wardrop_gap=met["wardrop_gap"],
        nfpn_conservation=met["conservation"],
        nfpn_cpu_s=met["cpu_s_per_sample"], nfpn_train_cpu_s=train_cpu,
        const_rel_l2=base["constant"]["rel_l2"], const_trafix=base["constant"]["trafix"],
        mlp_rel_l2=base["mlp"]["rel_l2"], mlp_trafix=base["mlp"]["trafix"],
    )


def _bench_options(networks: str, n_train: int, n_test: int, epochs: int) -> list[str]:
    """The network names of ``--networks``; ``UserInputError`` for an empty list or sizes below 1."""
    names = [n.strip() for n in networks.split(",") if n.strip()]
    if not names:
        raise UserInputError("--networks is empty")
    for label, v in (("--n-train", n_train), ("--n-test", n_test), ("--epochs", epochs)):
        if v < 1:
            raise UserInputError(f"{label} must be >= 1, got {v}")
    return names


def bench_command(networks: str, *, n_train: int = 200, n_test: int = 50, gap: float = 1e-8,
                  models: str | Path = "runs/traffic", epochs: int = 5, figure_dir: str | Path = "out/traffic",
                  progress: bool = True) -> list[BenchRow]:
    """``fpntools traffic bench``: :func:`bench_network` for each of the comma-separated ``networks`` (missing
    data: skipped with a warning), then the markdown table on stdout.  Progress on stderr."""
    import sys

    import torch

    from fpntools.cli_support import check_output_dir, warn
    from problems.traffic.commands import check_gap

    names = _bench_options(networks, n_train, n_test, epochs)
    check_gap(gap)
    figure_dir = check_output_dir(figure_dir, what="--figures folder")
    torch.set_num_threads(1)
    rows = []
    for name in names:
        try:
            rows.append(bench_network(name, n_train, n_test, gap=gap, models=models, epochs=epochs,
                                      figure=figure_dir / f"{name}_flows.png", progress=progress))
        except (FileNotFoundError, KeyError) as e:
            warn(f"skipping {name}: {e.args[0] if e.args else e}")
    print(format_table(rows), flush=True)
    if progress:
        print(f"figures in {figure_dir}", file=sys.stderr, flush=True)
    return rows


def format_table(rows: list[BenchRow]) -> str:
    """A markdown table of the rows."""
    head = ("| network | links | train / test | solver wall s/sample (sweeps) | max gap | N-FPN rel. L2 | N-FPN TRAFIX "
            "| N-FPN Wardrop gap | N-FPN conservation | N-FPN CPU s/pred | train CPU s | const rel. L2 (TRAFIX) "
            "| MLP rel. L2 (TRAFIX) |")
    sep = "|" + "---|" * 13
    lines = [head, sep]
    for r in rows:
        lines.append(
            f"| {r.network} | {r.links} | {r.n_train} / {r.n_test}"
            f" | {r.solver_s_per_sample:.2f} ({r.solver_sweeps:.1f})"
            f" | {r.max_gap:.1e} | {r.nfpn_rel_l2:.2e} | {r.nfpn_trafix:.3f} | {r.nfpn_wardrop_gap:.2e}"
            f" | {r.nfpn_conservation:.2e}"
            f" | {r.nfpn_cpu_s:.2f} | {r.nfpn_train_cpu_s:.0f} | {r.const_rel_l2:.2e} ({r.const_trafix:.3f})"
            f" | {r.mlp_rel_l2:.2e} ({r.mlp_trafix:.3f}) |")
    return "\n".join(lines)


def _coordinates(network: Network) -> np.ndarray:
    """Node coordinates from ``*_node.tntp`` when present, else a Kamada-Kawai layout."""
    try:
        folder = tntp_files(network.name)["net"].parent
        nodes = sorted(folder.glob("*_node.tntp"))
    except (KeyError, FileNotFoundError):
        nodes = []
    if nodes:
        xy = np.zeros((network.num_nodes, 2))
        for line in nodes[0].read_text().splitlines()[1:]:
            parts = line.replace(";", " ").split()
            if len(parts) >= 3:
                k = int(parts[0]) - 1
                if 0 <= k < network.num_nodes:
                    xy[k] = float(parts[1]), float(parts[2])
        return xy
    import networkx as nx

    g = nx.DiGraph()
    g.add_nodes_from(range(network.num_nodes))
    g.add_edges_from(zip(network.init.tolist(), network.term.tolist()))
    pos = nx.kamada_kawai_layout(g.to_undirected())
    return np.array([pos[k] for k in range(network.num_nodes)])


def plot_flows(network: Network, true: np.ndarray, pred: np.ndarray, path: str | Path) -> Path:
    """Three panels: true flow, predicted flow (same colour scale) and relative difference per link."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection

    xy = _coordinates(network)
    seg = np.stack([xy[network.init], xy[network.term]], axis=1)
    # offset the two directions of a two-way link slightly
    d = seg[:, 1] - seg[:, 0]
    n = np.stack([-d[:, 1], d[:, 0]], axis=1) / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)
    seg = seg + 0.006 * np.ptp(xy, axis=0).max() * n[:, None, :]
    rel = (pred - true) / np.maximum(np.abs(true), 1e-9)
    fig, axes = plt.subplots(1, 3, figsize=(15, 5))
    vmax = float(max(true.max(), pred.max()))
    for ax, val, title, cmap, lim in ((axes[0], true, "true equilibrium flow", "viridis", (0, vmax)),
                                      (axes[1], pred, "N-FPN predicted flow", "viridis", (0, vmax)),
                                      (axes[2], rel, "relative difference", "coolwarm",
                                       (-np.abs(rel).max(), np.abs(rel).max()))):
        lc = LineCollection(seg, array=val, cmap=cmap, linewidths=2.5)
        lc.set_clim(*lim)
        ax.add_collection(lc)
        ax.scatter(xy[:, 0], xy[:, 1], s=8, c="k", zorder=3)
        ax.autoscale()
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(title)
        fig.colorbar(lc, ax=ax, shrink=0.7)
    fig.suptitle(f"{network.name}: one test context")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def rows_json(rows: list[BenchRow]) -> str:
    """The rows as JSON (for records)."""
    return json.dumps([asdict(r) for r in rows], indent=1)


# ------------------------------------------------------------------ path N-FPN (neural / grey) vs MLP / constant

PREDICTORS = ("nfpn", "grey", "mlp", "constant")


def bench_path_network(name: str, n_train: int, n_test: int, *, gap: float = 1e-8, epochs: int = 20,
                       lr: float = 3e-3, seed: int = 0, cache: str | Path | None = "cache/traffic",
                       families: tuple[str, ...] = ("neural", "grey"), solver_samples: int = 5,
                       progress: bool = False) -> dict:
    """One network of ``fpntools traffic bench``: certified generator data (:func:`problems.traffic.datafile.
    make_data`, first ``n_train`` for training), the path N-FPN of each family trained through the same code
    as ``train --data`` (:func:`problems.traffic.byod.fit`), the MLP and the constant predictor; per predictor the
    test relative L2 error, TRAFIX and Wardrop gap (true costs and demand) and the conservation error against
    the true demand; training CPU seconds; prediction CPU seconds per sample (the whole test set as one batch)
    against the CPU seconds of one certified solve (gap ``gap``, cold start, mean over ``solver_samples``)."""
    import sys
    import time

    import torch

    from problems.traffic.byod import PathTrainConfig, build_model, fit, predict_flows
    from problems.traffic.context import ContextMap
    from problems.traffic.datafile import make_data
    from problems.traffic.equilibrium import solve_equilibrium
    from problems.traffic.metrics import conservation_error, relative_l2_error, trafix_score, wardrop_gap
    from problems.traffic.pathnfpn import PathNFPNConfig
    from problems.traffic.tntp import load_known
    from problems.traffic.train import baselines

    def say(msg: str) -> None:
        if progress:
            print(f"{name}: {msg}", file=sys.stderr, flush=True)

    torch.set_num_threads(1)
    net, dem = load_known(name)
    say(f"certified data ({n_train} + {n_test} contexts, gap {gap:.0e}; cached under {cache})")
    data = make_data(net, dem, n_train + n_test, seed=0, gap=gap, cache=cache, progress=progress)
    tr, te = data.subset(slice(0, n_train)), data.subset(slice(n_train, None))
    cmap = ContextMap(net, np.asarray(dem.toarray() if hasattr(dem, "toarray") else dem, dtype=np.float64))
    demands = [cmap.demand(c) for c in te.contexts]
    caps = [cmap.capacity(c) for c in te.contexts]

    def scores(pred: np.ndarray) -> dict:
        return dict(rel_l2=float(np.mean(relative_l2_error(pred, te.flows))),
                    trafix=float(np.mean(trafix_score(pred, te.flows))),
                    wardrop_gap=float(np.mean([wardrop_gap(net, d, np.maximum(p, 0.0), capacity=c)
                                               for d, p, c in zip(demands, pred, caps)])),
                    conservation=float(np.mean([conservation_error(net, d, p) for d, p in zip(demands, pred)])))

    row: dict = dict(network=name, links=net.num_links, n_train=len(tr), n_test=len(te), gap=gap,
                     max_gap=float(data.extra["gap"].max()))
    say(f"{solver_samples} cold certified solves for the solver's time")
    cpu = []
    for c in te.contexts[:solver_samples]:
        t = time.process_time()
        solve_equilibrium(net, cmap.demand(c), gap=gap, capacity=cmap.capacity(c), progress=False, max_iter=2000)
        cpu.append(time.process_time() - t)
    row["solver_cpu_s"] = float(np.mean(cpu))
    for fam in families:
        say(f"path N-FPN ({fam}): paths and training, {epochs} epochs")
        t = time.process_time()
        torch.manual_seed(seed)
        model = build_model(net, dem, tr, PathNFPNConfig(family=fam))
        fit(model, tr, PathTrainConfig(epochs=epochs, lr=lr if fam == "neural" else 10 * lr, seed=seed,
                                       model=model.config), None, progress=progress)
        train_cpu = time.process_time() - t
        pred, diag = predict_flows(model, te.contexts, batch=len(te))
        key = "nfpn" if fam == "neural" else "grey"
        row[key] = dict(scores(pred), train_cpu_s=train_cpu, pred_cpu_s=diag["cpu_s_per_sample"],
                        solver_gap=diag["solver_gap"], paths=model.paths.num_paths, pairs=model.paths.num_pairs,
                        parameters=sum(p.numel() for p in model.parameters()))
        say(f"{key}: {row[key]}")
    say("MLP and constant baselines")
    base = baselines(tr, te, seed=seed, return_predictions=True)
    for key in ("mlp", "constant"):
        row[key] = dict(scores(base[key]["pred"]), train_cpu_s=float(base[key].get("train_cpu_s", 0.0)))
    return row


def format_path_table(rows: list[dict]) -> str:
    """Two markdown tables: accuracy per predictor, then times."""
    out = ["| network | predictor | rel. L2 | TRAFIX | Wardrop gap | conservation |", "|---|---|---|---|---|---|"]
    for r in rows:
        for key, label in (("nfpn", "N-FPN (neural)"), ("grey", "N-FPN (grey-box)"), ("mlp", "MLP"),
                           ("constant", "constant")):
            if key in r:
                m = r[key]
                out.append(f"| {r['network']} | {label} | {m['rel_l2']:.2e} | {m['trafix']:.3f} | "
                           f"{m['wardrop_gap']:.2e} | {m['conservation']:.1e} |")
    out += ["", "| network | links | OD pairs / paths | train / test | max data gap | solver CPU s / solve | "
                "N-FPN CPU s / pred (batch) | speed-up | train CPU s: N-FPN / grey / MLP |",
            "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        n = r.get("nfpn") or r.get("grey")
        speed = r["solver_cpu_s"] / n["pred_cpu_s"] if n and n["pred_cpu_s"] > 0 else float("nan")
        tr = " / ".join(f"{r[k]['train_cpu_s']:.0f}" if k in r else "-" for k in ("nfpn", "grey", "mlp"))
        out.append(f"| {r['network']} | {r['links']} | {n['pairs'] if n else '-'} / {n['paths'] if n else '-'} | "
                   f"{r['n_train']} / {r['n_test']} | {r['max_gap']:.1e} | {r['solver_cpu_s']:.3f} | "
                   f"{n['pred_cpu_s'] if n else float('nan'):.4f} ({r['n_test']}) | {speed:.1f}x | {tr} |")
    return "\n".join(out)


def bench_path_command(networks: str, *, n_train: int = 200, n_test: int = 50, gap: float = 1e-8,
                       epochs: int = 20, families: str = "neural,grey", records: str | Path | None = None,
                       progress: bool = True) -> list[dict]:
    """``fpntools traffic bench``: :func:`bench_path_network` per network (missing data: skipped with a
    warning), the tables on stdout, the rows as JSON to ``records`` when given."""
    from fpntools.atomic_io import atomic_write_bytes
    from fpntools.cli_support import check_output_path, warn
    from problems.traffic.commands import check_gap

    names = _bench_options(networks, n_train, n_test, epochs)
    fams = tuple(f.strip() for f in families.split(",") if f.strip())
    if not fams or any(f not in ("neural", "grey") for f in fams):
        raise UserInputError(f"--families must be a comma-separated subset of neural,grey, got {families!r}")
    check_gap(gap)
    if records is not None:
        records = check_output_path(records, suffixes=(".json",), what="--records")
    rows = []
    for name in names:
        try:
            rows.append(bench_path_network(name, n_train, n_test, gap=gap, epochs=epochs, families=fams,
                                           progress=progress))
        except (FileNotFoundError, KeyError) as e:
            warn(f"skipping {name}: {e.args[0] if e.args else e}")
        if records is not None:
            atomic_write_bytes(records, json.dumps(rows, indent=1).encode())
    print(format_path_table(rows), flush=True)
    return rows
