"""Training, evaluation, saving and loading of the traffic N-FPN (:mod:`problems.traffic.nfpn`) and baselines.

Data: :func:`problems.traffic.context.generate_dataset` with ``n_train + n_test`` contexts (seed ``data_seed``),
every sample a certified equilibrium (relative gap ``<= gap``); the first ``n_train`` are the training set.

Loss: mean relative squared error of the link flows ``||X_theta(d) - X(d)||^2 / ||X(d)||^2``; gradients through
the Davis-Yin fixed point by ``fpntools.fixed_point(..., backward=...)``: ``"implicit"`` (default; adjoint
fixed point by Anderson) or ``"jfb"`` (Jacobian-free backprop; measured to ascend on the demand parameters, see
``docs/traffic.md``); Adam with cosine decay.  During training the
warm start of the forward solve (the path solver on the learned cost) runs to ``train_warm_gaps[epoch]``
(coarse first, finer later; each sample's path sets are kept between epochs to warm-start it); evaluation
uses ``NFPNConfig.warm_gap``.

Checkpoints (``fpntools.training.checkpoint``, atomic): ``<out>/checkpoint.pt`` after every epoch with the
parameters, the optimizer state, the epoch, the history and the RNG state; ``resume=True`` continues from it.
The final model is ``<out>/model.safetensors`` + ``<out>/model.json`` (:func:`save_model` / :func:`load_model`).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from fpntools.errors import UserInputError
from fpntools.training.checkpoint import atomic_write_bytes
from problems.traffic.context import TrafficDataset, generate_dataset
from problems.traffic.metrics import relative_l2_error, trafix_score
from problems.traffic.nfpn import NFPNConfig, TrafficNFPN, network_fingerprint
from problems.traffic.tntp import Network, load_known

__all__ = ["TrainConfig", "load_data", "train", "evaluate", "save_model", "load_model", "baselines",
           "DEFAULT_MODEL"]

DEFAULT_MODEL = Path(__file__).resolve().parents[2] / "data" / "traffic" / "siouxfalls_nfpn"


@dataclass
class TrainConfig:
    """Settings of a training run (data, optimisation, checkpoints).

    ``backward``: ``"jfb"`` (one application of the DY map) or ``"implicit"`` (adjoint fixed point solved by
    Anderson, at most ``adjoint_iters`` iterations, :class:`fpntools.Implicit`).  The learning rate follows a
    cosine decay from ``lr`` to ``lr / 10`` over all steps.
    """

    network: str = "SiouxFalls"
    n_train: int = 200
    n_test: int = 50
    data_seed: int = 0
    gap: float = 1e-8
    epochs: int = 6
    batch_size: int = 10
    lr: float = 0.05
    train_warm_gaps: tuple[float, ...] = (1e-4, 1e-5, 1e-6)
    seed: int = 0
    backward: str = "implicit"
    adjoint_iters: int = 100
    cache: str | None = "cache/traffic"
    model: NFPNConfig = field(default_factory=NFPNConfig)


def load_data(cfg: TrainConfig, progress: bool = False) -> tuple[Network, np.ndarray, TrafficDataset, TrafficDataset]:
    """``(network, base_demand, train, test)``; raises ``FileNotFoundError`` when the TNTP files are absent."""
    net, dem = load_known(cfg.network)
    ds = generate_dataset(net, dem, cfg.n_train + cfg.n_test, seed=cfg.data_seed, gap=cfg.gap, cache=cfg.cache,
                          progress=progress)
    return net, dem, _subset(ds, slice(0, cfg.n_train)), _subset(ds, slice(cfg.n_train, None))


def _subset(ds: TrafficDataset, sel: slice) -> TrafficDataset:
    return TrafficDataset(
        contexts=ds.contexts[sel], flows=ds.flows[sel], costs=ds.costs[sel], capacities=ds.capacities[sel],
        gaps=ds.gaps[sel], iterations=ds.iterations[sel], times=ds.times[sel], demand_totals=ds.demand_totals[sel],
        target_gap=ds.target_gap, meta=dict(ds.meta))


def flow_loss(pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``||pred - true||^2 / ||true||^2``."""
    return (((pred - true) ** 2).sum(dim=1) / (true**2).sum(dim=1)).mean()


def train(cfg: TrainConfig, out: str | os.PathLike, resume: bool = False, progress: bool = True,
          max_batches: int | None = None) -> tuple[TrafficNFPN, dict]:
    """Train an N-FPN; returns the model and a summary (history, test metrics, timings)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    from fpntools.training.checkpoint import load_checkpoint, save_checkpoint

    net, dem, tr, te = load_data(cfg, progress=progress)
    torch.manual_seed(cfg.seed)
    model = TrafficNFPN.build(net, dem, tr.flows, cfg.model)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    steps_per_epoch = math.ceil(cfg.n_train / cfg.batch_size)
    total_steps = max(1, cfg.epochs * steps_per_epoch)
    if cfg.backward == "jfb":
        backward = "jfb"
    elif cfg.backward == "implicit":
        from fpntools import Implicit

        backward = Implicit(tol=1e-6, max_iter=cfg.adjoint_iters)
    else:
        raise ValueError(f"backward must be 'jfb' or 'implicit', got {cfg.backward!r}")
    ckpt = out / "checkpoint.pt"
    start, history, train_time = 0, [], 0.0
    rng = np.random.default_rng(cfg.seed)
    if resume and ckpt.is_file():
        state = load_checkpoint(ckpt)
        model.load_parameters({k: v for k, v in state["params"].items()})
        opt.load_state_dict(state["optimizer"])
        start, history, train_time = int(state["epoch"]), list(state["history"]), float(state["train_time"])
        rng = np.random.default_rng(cfg.seed + 1000 * start)
    X = torch.as_tensor(tr.flows)
    C = torch.as_tensor(tr.contexts)
    warm_gap = model.config.warm_gap
    warm_cache: dict = {}
    for epoch in range(start, cfg.epochs):
        t_ep = time.process_time()
        perm = rng.permutation(len(tr))
        batches = [perm[i: i + cfg.batch_size] for i in range(0, len(perm), cfg.batch_size)]
        if max_batches is not None:
            batches = batches[:max_batches]
        it = batches
        if progress:
            from tqdm.auto import tqdm

            it = tqdm(batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False)
        losses = []
        model.config.warm_gap = cfg.train_warm_gaps[min(epoch, len(cfg.train_warm_gaps) - 1)]
        for step, idx in enumerate(it):
            k = epoch * steps_per_epoch + step
            for group in opt.param_groups:
                group["lr"] = cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * k / total_steps)))
            opt.zero_grad()
            pred, _ = model(C[idx], backward=backward, warm_cache=warm_cache, keys=[int(i) for i in idx])
            loss = flow_loss(pred, X[idx])
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            if progress:
                it.set_postfix_str(f"rel.err={math.sqrt(np.mean(losses[-5:])):.2e}")
        model.config.warm_gap = warm_gap
        train_time += time.process_time() - t_ep
        history.append(dict(epoch=epoch + 1, train_rel_err=float(math.sqrt(np.mean(losses)))))
        save_checkpoint(ckpt, dict(params=model.parameter_tensors(), optimizer=opt.state_dict(), epoch=epoch + 1,
                                   history=history, train_time=train_time))
        if progress:
            print(f"epoch {epoch + 1}: train rel. error {history[-1]['train_rel_err']:.3e}", flush=True)
    metrics = evaluate(model, te)
    summary = dict(config=_jsonable(asdict(cfg)), history=history, train_cpu_s=train_time, test=metrics,
                   n_train=len(tr), n_test=len(te))
    save_model(model, out / "model", extra=summary)
    return model, summary


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=str))


def evaluate(model: TrafficNFPN, data: TrafficDataset, batch: int = 25) -> dict:
    """Test metrics: relative L2 error, TRAFIX, Wardrop gap of the predictions under the true costs,
    conservation error, fixed-point residual, CPU seconds per sample."""
    from problems.traffic.context import ContextMap
    from problems.traffic.metrics import conservation_error, wardrop_gap

    t = time.process_time()
    preds, res = [], []
    with torch.no_grad():
        for i in range(0, len(data), batch):
            p, info = model(torch.as_tensor(data.contexts[i: i + batch]))
            preds.append(p.numpy())
            res.append(info.rel_residual.numpy())
    cpu = (time.process_time() - t) / len(data)
    pred = np.concatenate(preds)
    cmap = ContextMap(model.network, model.base_demand_full())
    wg = [wardrop_gap(model.network, cmap.demand(c), p, capacity=cap)
          for c, p, cap in zip(data.contexts, pred, data.capacities)]
    ce = [conservation_error(model.network, cmap.demand(c), p) for c, p in zip(data.contexts, pred)]
    return dict(rel_l2=float(np.mean(relative_l2_error(pred, data.flows))),
                trafix=float(np.mean(trafix_score(pred, data.flows))),
                wardrop_gap=float(np.mean(wg)), conservation=float(np.mean(ce)),
                fp_residual=float(np.max(np.concatenate(res))), cpu_s_per_sample=cpu)


def baselines(train_ds: TrafficDataset, test_ds: TrafficDataset, seed: int = 0) -> dict:
    """Constant predictor (mean training flow) and an MLP regressor (context -> link flows, scikit-learn,
    two hidden layers of 128, standardised targets): test relative L2 and TRAFIX."""
    from sklearn.neural_network import MLPRegressor

    out = {}
    const = np.broadcast_to(train_ds.flows.mean(axis=0), test_ds.flows.shape)
    out["constant"] = dict(rel_l2=float(np.mean(relative_l2_error(const, test_ds.flows))),
                           trafix=float(np.mean(trafix_score(const, test_ds.flows))))
    mu, sd = train_ds.flows.mean(axis=0), train_ds.flows.std(axis=0) + 1e-9
    t = time.process_time()
    mlp = MLPRegressor(hidden_layer_sizes=(128, 128), max_iter=3000, tol=1e-7, random_state=seed,
                       learning_rate_init=1e-3, alpha=1e-6)
    mlp.fit(train_ds.contexts, (train_ds.flows - mu) / sd)
    pred = mlp.predict(test_ds.contexts) * sd + mu
    out["mlp"] = dict(rel_l2=float(np.mean(relative_l2_error(pred, test_ds.flows))),
                      trafix=float(np.mean(trafix_score(pred, test_ds.flows))), train_cpu_s=time.process_time() - t)
    return out


# ----------------------------------------------------------------------------------------------- files


def save_model(model: TrafficNFPN, prefix: str | os.PathLike, extra: dict | None = None) -> tuple[Path, Path]:
    """Write ``prefix.safetensors`` (parameters, ``flow_ref``, ``flow_mean``) and ``prefix.json`` (config,
    network name and fingerprint, ``extra``), each atomically."""
    from safetensors.torch import save

    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    st, js = prefix.with_suffix(".safetensors"), prefix.with_suffix(".json")
    tensors = dict(model.parameter_tensors(), flow_ref=model.flow_ref * model.flow_unit,
                   flow_mean=model.flow_mean * model.flow_unit)
    meta = dict(model.config_dict(), extra=extra or {})
    atomic_write_bytes(st, save({k: v.contiguous() for k, v in tensors.items()}))
    atomic_write_bytes(js, json.dumps(_jsonable(meta), indent=1).encode())
    return st, js


def load_model(prefix: str | os.PathLike = DEFAULT_MODEL, network: Network | None = None,
               base_demand: np.ndarray | None = None) -> TrafficNFPN:
    """Load a model written by :func:`save_model`.  The network (and its base demand) are read from the TNTP
    data folder unless given.  Raises :class:`fpntools.errors.UserInputError` with a one-line reason for a
    missing / corrupt file, a missing network or a network that does not match the weights."""
    from safetensors.torch import load

    prefix = Path(prefix)
    if prefix.suffix in (".json", ".safetensors"):
        prefix = prefix.with_suffix("")
    st, js = prefix.with_suffix(".safetensors"), prefix.with_suffix(".json")
    for p in (st, js):
        if not p.is_file():
            raise UserInputError(f"model file not found: {p}")
    try:
        meta = json.loads(js.read_text())
        cfg = NFPNConfig(**{k: meta[k] for k in NFPNConfig.__dataclass_fields__})
        fingerprint = meta["fingerprint"]
    except (ValueError, KeyError, TypeError) as e:
        raise UserInputError(f"model config {js} is corrupt: {e}") from None
    try:
        tensors = load(st.read_bytes())
    except Exception as e:  # safetensors raises several types for corrupt data
        raise UserInputError(f"model weights {st} are corrupt: {e}") from None
    if network is None:
        try:
            network, base_demand = load_known(cfg.network)
        except (FileNotFoundError, KeyError) as e:
            raise UserInputError(f"the model needs the {cfg.network} network files: {e}") from None
    if network_fingerprint(network, base_demand) != fingerprint:
        raise UserInputError(f"network {network.name} does not match the model {js} (fingerprint)")
    try:
        model = TrafficNFPN(network, base_demand, tensors.pop("flow_ref").numpy(), cfg,
                            flow_mean=tensors.pop("flow_mean").numpy())
        model.load_parameters(tensors)
    except (KeyError, ValueError, RuntimeError) as e:
        raise UserInputError(f"model weights {st} do not fit: {e}") from None
    model.meta = meta
    return model
