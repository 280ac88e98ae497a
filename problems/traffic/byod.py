"""Training, saving, loading and prediction of the path N-FPN (:mod:`problems.traffic.pathnfpn`) on the user's
own data (``fpntools traffic train --net --trips --data``, ``fpntools traffic predict --model DIR``).

Training runs through :class:`fpntools.training.Trainer`: loss ``mean ||X_pred - X||^2 / ||X||^2`` on link
flows (plus, when the data file has them, the relative error of the learned OD tables ``od`` or of the total
demand ``demand_scale``), Adam with a cosine decay to ``lr / 10``, batches in a seeded order; each sample's
path flows of the previous epoch warm-start its forward solve (kept in memory: a resumed run re-solves them
from the even split, so it matches an uninterrupted one up to the solver tolerance).

Model folder ``DIR``: ``model.safetensors`` (parameters, context standardisation, the path set),
``model.json`` (``kind: "path-nfpn"``, the config, the network fingerprint, test metrics), and copies of the
network and demand (``net.tntp``, ``trips.tntp``) so that ``predict --model DIR`` needs nothing else;
the trainer's run files (``config.json``, ``history.json``, ``checkpoint.pt``) sit beside them.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fpntools.atomic_io import atomic_write_bytes
from fpntools.errors import UserInputError
from problems.traffic.datafile import TrafficData
from problems.traffic.metrics import relative_l2_error, trafix_score
from problems.traffic.nfpn import network_fingerprint
from problems.traffic.pathnfpn import PathNFPN, PathNFPNConfig
from problems.traffic.paths import PathSet, collect_paths
from problems.traffic.tntp import Network

__all__ = ["PathTrainConfig", "build_model", "fit", "evaluate_flows", "predict_flows", "save_path_model",
           "load_path_model", "is_path_model", "MODEL_KIND"]

MODEL_KIND = "path-nfpn"


@dataclass
class PathTrainConfig:
    """Recipe of a path N-FPN training run.

    ``test_fraction`` of the observations (the last ones) are held out and scored when training ends;
    ``demand_weight`` weighs the demand term of the loss (used only when the data have ``od`` or
    ``demand_scale``)."""

    epochs: int = 60
    batch_size: int = 10
    lr: float = 3e-3
    seed: int = 0
    test_fraction: float = 0.2
    demand_weight: float = 1.0
    model: PathNFPNConfig = field(default_factory=PathNFPNConfig)

    def __post_init__(self) -> None:
        if isinstance(self.model, dict):
            self.model = PathNFPNConfig.from_dict(self.model)
        for name in ("epochs", "batch_size"):
            if not getattr(self, name) >= 1:
                raise UserInputError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise UserInputError(f"--lr must be a positive number, got {self.lr}")
        if not (0.0 <= self.test_fraction < 1.0):
            raise UserInputError(f"--test-fraction must lie in [0, 1), got {self.test_fraction}")
        if not (math.isfinite(self.demand_weight) and self.demand_weight >= 0):
            raise UserInputError(f"demand_weight must be >= 0, got {self.demand_weight}")

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k != "model"}
        d["model"] = self.model.to_dict()
        return d


def split(data: TrafficData, test_fraction: float) -> tuple[TrafficData, TrafficData | None]:
    """The first ``n - round(n * test_fraction)`` observations for training, the rest held out."""
    n = len(data)
    n_test = int(round(n * test_fraction))
    if n_test and n - n_test < 2:
        raise UserInputError(f"{n} observations leave fewer than 2 for training with test fraction {test_fraction}")
    if not n_test:
        return data, None
    return data.subset(slice(0, n - n_test)), data.subset(slice(n - n_test, n))


def build_model(network: Network, base_demand, train: TrafficData, config: PathNFPNConfig,
                paths: PathSet | None = None) -> PathNFPN:
    """A model at its neutral start: path set from :func:`problems.traffic.paths.collect_paths` (network,
    nominal demand, training flows) unless given, context standardisation from the training contexts."""
    dem = base_demand.toarray() if hasattr(base_demand, "toarray") else np.asarray(base_demand, dtype=np.float64)
    if paths is None:
        paths = collect_paths(network, dem, train.flows)
    model = PathNFPN(network, dem, paths, train.contexts.mean(axis=0), train.contexts.std(axis=0), replace(config))
    model.fit_feature_scaling(train.contexts)
    return model


class _Loss:
    """Trainer loss: relative squared link-flow error (+ demand term); warm starts kept per sample."""

    def __init__(self, demand_weight: float) -> None:
        self.cache: dict[int, torch.Tensor] = {}
        self.demand_weight = demand_weight

    def __call__(self, model: PathNFPN, batch) -> tuple[torch.Tensor, dict[str, float]]:
        keys, ctx, flows, od_q, scale = batch
        k = [int(i) for i in keys]
        h0 = None
        if all(i in self.cache for i in k):
            h0 = torch.stack([self.cache[i] for i in k]).to(ctx.device)
        pred, info, h = model(ctx, h0=h0, return_paths=True)
        for i, row in zip(k, h.detach()):
            self.cache[i] = row.cpu()
        loss = (((pred - flows) ** 2).sum(1) / (flows**2).sum(1).clamp(min=1e-300)).mean()
        metrics = {"flow_loss": float(loss.detach()), "solver_gap": float(info.gap.max())}
        if self.demand_weight > 0 and (od_q.shape[1] > 0 or scale.shape[1] > 0):
            q = model.demand(ctx) * model.flow_unit
            if od_q.shape[1] > 0:
                dl = (((q - od_q) ** 2).sum(1) / (od_q**2).sum(1).clamp(min=1e-300)).mean()
            else:
                ratio = q.sum(1) / (model.q0.sum() * model.flow_unit)
                dl = ((ratio - scale[:, 0]) ** 2).mean()
            metrics["demand_loss"] = float(dl.detach())
            loss = loss + self.demand_weight * dl
        return loss, metrics


def _tensors(model: PathNFPN, data: TrafficData):
    n = len(data)
    if data.od is not None:
        od_q = torch.as_tensor(data.od[:, model.pathset.od_origin, model.pathset.od_dest])
    else:
        od_q = torch.zeros(n, 0, dtype=torch.float64)
    scale = (torch.as_tensor(data.demand_scale)[:, None] if data.demand_scale is not None and data.od is None
             else torch.zeros(n, 0, dtype=torch.float64))
    return (torch.arange(n), torch.as_tensor(data.contexts), torch.as_tensor(data.flows), od_q, scale)


def fit(model: PathNFPN, train: TrafficData, cfg: PathTrainConfig, out: str | os.PathLike | None, *,
        resume: bool = False, force: bool = False, device: str = "cpu", progress: bool = True,
        max_steps: int | None = None, run_config: dict | None = None):
    """Train ``model`` on ``train`` with :class:`fpntools.training.Trainer` (run folder ``out``); returns the
    trainer's :class:`~fpntools.training.TrainResult`."""
    from torch.utils.data import TensorDataset

    from fpntools.training.trainer import Trainer, TrainerConfig, print_to_stderr

    tcfg = TrainerConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, optimizer="adam",
                         schedule="cosine", lr_min_ratio=0.1, seed=cfg.seed, device=device,
                         run_dir=None if out is None else str(out), resume=resume, force=force, max_steps=max_steps,
                         progress=progress)
    loss = _Loss(cfg.demand_weight)
    trainer = Trainer(model, loss, TensorDataset(*_tensors(model, train)), tcfg,
                      run_config=run_config if run_config is not None else {"traffic_byod": cfg.to_dict()},
                      log=print_to_stderr if progress else None)
    result = trainer.fit()
    if loss.cache:
        model.set_start_shares(torch.stack([loss.cache[k] for k in sorted(loss.cache)]).to(model.q0.device))
    return result


@torch.no_grad()
def predict_flows(model: PathNFPN, contexts: np.ndarray, batch: int = 50) -> tuple[np.ndarray, dict]:
    """Link flows ``(m, L)`` for contexts ``(m, p)``, ``batch`` at a time; with the worst fixed-point residual
    and forward-solver gap, and CPU / wall seconds per sample."""
    c0, w0 = time.process_time(), time.perf_counter()
    out, res, gaps = [], [], []
    model.eval()
    for i in range(0, len(contexts), batch):
        X, info = model(torch.as_tensor(contexts[i: i + batch], dtype=torch.float64))
        out.append(X.cpu().numpy())
        res.append(info.rel_residual.cpu().numpy())
        gaps.append(info.gap.cpu().numpy())
    n = max(len(contexts), 1)
    flows = np.concatenate(out)
    return flows, {"fp_residual": float(np.max(np.concatenate(res))),
                   "solver_gap": float(np.max(np.concatenate(gaps))),
                   "cpu_s_per_sample": (time.process_time() - c0) / n,
                   "wall_s_per_sample": (time.perf_counter() - w0) / n}


def evaluate_flows(model: PathNFPN, data: TrafficData, batch: int = 50) -> dict[str, float]:
    """Relative L2 error and TRAFIX on ``data`` plus the solve diagnostics of :func:`predict_flows`."""
    pred, diag = predict_flows(model, data.contexts, batch)
    return dict(rel_l2=float(np.mean(relative_l2_error(pred, data.flows))),
                trafix=float(np.mean(trafix_score(pred, data.flows))), **diag)


# ----------------------------------------------------------------------------------------------- files


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=str))


def save_path_model(model: PathNFPN, folder: str | os.PathLike, base_demand, extra: dict | None = None) -> Path:
    """Write ``folder/model.safetensors``, ``folder/model.json``, ``folder/net.tntp``, ``folder/trips.tntp``."""
    from safetensors.torch import save

    from problems.traffic.tntp import write_net, write_trips

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items() if not k.startswith("paths.")}
    tensors = {k: v.clone() for k, v in tensors.items()}
    tensors.update({k: torch.as_tensor(v).clone() for k, v in model.pathset.arrays().items()})
    net = model.network
    meta = dict(kind=MODEL_KIND, config=model.config.to_dict(), context_dim=model.context_dim,
                fingerprint=network_fingerprint(net, base_demand), network=net.name,
                toll_factor=net.toll_factor, distance_factor=net.distance_factor, extra=extra or {})
    write_net(net, folder / "net.tntp")
    write_trips(base_demand, folder / "trips.tntp")
    atomic_write_bytes(folder / "model.safetensors", save(tensors))
    atomic_write_bytes(folder / "model.json", json.dumps(_jsonable(meta), indent=1).encode())
    return folder


def is_path_model(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds a path N-FPN (``model.json`` with ``kind: "path-nfpn"``)."""
    js = Path(folder) / "model.json"
    if not js.is_file():
        return False
    try:
        return json.loads(js.read_text()).get("kind") == MODEL_KIND
    except (ValueError, AttributeError):
        return False


def load_path_model(folder: str | os.PathLike, net: str | os.PathLike | None = None,
                    trips: str | os.PathLike | None = None) -> PathNFPN:
    """Load a model folder written by :func:`save_path_model`.  The network comes from the folder's copies, or
    from ``net`` / ``trips`` when given; either way it must match the fingerprint stored at training.  Every
    problem is a one-line :class:`UserInputError`."""
    from safetensors.torch import load

    from problems.traffic.tntp import TNTPError, load_network

    folder = Path(folder)
    js, st = folder / "model.json", folder / "model.safetensors"
    for p in (js, st):
        if not p.is_file():
            raise UserInputError(f"model file not found: {p}")
    try:
        meta = json.loads(js.read_text())
        if meta.get("kind") != MODEL_KIND:
            raise KeyError("kind")
        cfg = PathNFPNConfig.from_dict(meta["config"])
        fingerprint = meta["fingerprint"]
        tf, df = float(meta["toll_factor"]), float(meta["distance_factor"])
    except UserInputError as e:
        raise UserInputError(f"model config {js} does not fit the path N-FPN: {e}") from None
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise UserInputError(f"model config {js} is corrupt or not a path N-FPN: {e}") from None
    if (net is None) != (trips is None):
        raise UserInputError("give both --net and --trips (or neither: the model folder's copies are used)")
    net_path = Path(net) if net is not None else folder / "net.tntp"
    trips_path = Path(trips) if trips is not None else folder / "trips.tntp"
    try:
        network, demand = load_network(net_path, trips_path, toll_factor=tf, distance_factor=df)
    except TNTPError as e:
        raise UserInputError(str(e)) from None
    network.name = str(meta.get("network", network.name))
    dem = demand.toarray() if hasattr(demand, "toarray") else np.asarray(demand, dtype=np.float64)
    if network_fingerprint(network, dem) != fingerprint:
        raise UserInputError(f"network {net_path} / {trips_path} does not match the model {js} (fingerprint: other "
                             "links, link data or demand than at training)")
    try:
        tensors = load(st.read_bytes())
    except Exception as e:  # safetensors raises several types for corrupt data
        raise UserInputError(f"model weights {st} are corrupt: {e}") from None
    try:
        paths = PathSet.from_arrays({k: tensors.pop(k).numpy() for k in list(tensors) if k.startswith("paths_")})
        model = PathNFPN(network, dem, paths, tensors["ctx_mean"].numpy(), tensors["ctx_std"].numpy(), cfg)
        missing, unexpected = model.load_state_dict(tensors, strict=False)
        missing = [k for k in missing if not k.startswith("paths.")]
        if missing or unexpected:
            raise ValueError(f"missing {missing}, unexpected {unexpected}")
        for k, v in tensors.items():
            if v.is_floating_point() and not torch.isfinite(v).all():
                raise ValueError(f"tensor {k!r} has non-finite entries")
    except (KeyError, ValueError, RuntimeError) as e:
        raise UserInputError(f"model weights {st} do not fit: {e}") from None
    model.meta = meta
    model.eval()
    return model
