"""Training, evaluation, saving and loading of the traffic N-FPN (:mod:`problems.traffic.nfpn`) and baselines.

Data: :func:`problems.traffic.context.generate_dataset` with ``n_train + n_test`` contexts (seed ``data_seed``),
every sample a certified equilibrium (relative gap ``<= gap``); the first ``n_train`` are the training set.

Loss: mean relative squared error of the link flows ``||X_theta(d) - X(d)||^2 / ||X(d)||^2``; gradients through
the Davis-Yin fixed point as the model's :class:`fpntools.SolveConfig` says: ``backward="implicit"`` (default;
adjoint fixed point by Anderson, tolerance ``1e-6``, at most ``adjoint_iters`` iterations) or ``"jfb"``
(Jacobian-free backprop; measured to ascend on the demand parameters, see ``docs/traffic.md``).

Optimisation runs through the one training loop, :class:`fpntools.training.Trainer`: Adam, learning rate
cosine-annealed per step from ``lr`` to ``lr / 10`` over all steps, batches of ``batch_size`` in a seeded
order, a progress bar, the run folder ``<out>/`` with ``config.json``, ``history.json`` (per epoch:
``train_loss``, ``train_rel_err = sqrt(train_loss)``, ``cpu_s``, ...) and ``checkpoint.pt`` (atomic, after every
epoch and on interruption; ``resume=True`` continues it, an existing checkpoint without ``resume`` / ``force``
is refused).  During training the warm start of the forward solve (the path solver on the learned cost)
runs to ``train_warm_gaps[epoch]`` (coarse first, finer later; each sample's path sets are kept between
epochs to warm-start it, in memory: a resumed run re-solves them, so it matches an uninterrupted one up to
the solver tolerance); evaluation uses ``NFPNConfig.warm_gap``.  The final model is
``<out>/model.safetensors`` + ``<out>/model.json`` (:func:`save_model` / :func:`load_model`), with the test
metrics of :func:`evaluate`.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from fpntools.atomic_io import atomic_write_bytes
from fpntools.errors import UserInputError
from problems.traffic.context import TrafficDataset, generate_dataset
from problems.traffic.metrics import relative_l2_error, trafix_score
from problems.traffic.nfpn import NFPNConfig, TrafficNFPN, network_fingerprint
from problems.traffic.tntp import Network, load_known

__all__ = ["TrainConfig", "load_data", "train", "train_command", "evaluate", "save_model", "load_model", "baselines",
           "DEFAULT_MODEL"]

DEFAULT_MODEL = Path(__file__).resolve().parents[2] / "data" / "traffic" / "siouxfalls_nfpn"


@dataclass
class TrainConfig:
    """Settings of a training run (data, model, optimisation recipe).

    ``backward``: ``"jfb"`` (one application of the DY map) or ``"implicit"`` (adjoint fixed point solved by
    Anderson to ``1e-6``, at most ``adjoint_iters`` iterations); it sets ``model.solve``.  The learning rate
    follows a cosine decay from ``lr`` to ``lr / 10`` over all steps.
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

    def __post_init__(self) -> None:
        for name in ("n_train", "n_test", "epochs", "batch_size", "adjoint_iters"):
            if getattr(self, name) < 1:
                raise UserInputError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("gap", "lr"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise UserInputError(f"{name} must be a finite number > 0, got {v}")
        if self.backward not in ("implicit", "jfb"):
            raise UserInputError(f"backward must be 'implicit' or 'jfb', got {self.backward!r}")
        if not self.train_warm_gaps or not all(math.isfinite(g) and g > 0 for g in self.train_warm_gaps):
            raise UserInputError(f"train_warm_gaps must be positive numbers, got {self.train_warm_gaps}")

    def solve(self):
        """The model's :class:`fpntools.SolveConfig` during training (``backward``, ``adjoint_iters``)."""
        return self.model.solve.with_(backward=self.backward, backward_tol=1e-6,
                                      backward_max_iter=self.adjoint_iters)

    def run_config(self) -> dict[str, Any]:
        """What defines the run besides the trainer's settings (checked on resume): data and model."""
        d = _jsonable(asdict(self))
        for k in ("epochs", "batch_size", "lr", "seed", "cache"):  # the trainer's own fields, or no effect
            d.pop(k)
        d["model"] = _jsonable(self.model.to_dict())
        return {"traffic": d}


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


class FlowLoss:
    """``loss_fn`` of the trainer: :func:`flow_loss` of the model's prediction on a batch ``(keys, contexts,
    flows)``, with the warm start's gap of the current epoch (``warm_gaps[epoch]``, the last one after) and
    each sample's path sets kept between epochs (``cache``, keyed by the sample index)."""

    def __init__(self, warm_gaps: tuple[float, ...]) -> None:
        self.warm_gaps = tuple(warm_gaps)
        self.cache: dict[int, Any] = {}
        self.epoch: Callable[[], int] = lambda: 0  # set to the trainer's epoch counter
        self.step_start = time.process_time()  # CPU clock at the start of the current step

    def __call__(self, model: TrafficNFPN, batch) -> torch.Tensor:
        self.step_start = time.process_time()
        keys, contexts, flows = batch
        base = model.config.warm_gap
        model.config.warm_gap = self.warm_gaps[min(self.epoch(), len(self.warm_gaps) - 1)]
        try:
            pred, _ = model(contexts, warm_cache=self.cache, keys=[int(k) for k in keys])
        finally:
            model.config.warm_gap = base
        return flow_loss(pred, flows)


class _EpochStats:
    """Trainer hook: per epoch ``train_rel_err = sqrt(train_loss)`` and ``cpu_s``, the process CPU seconds of
    its optimizer steps (forward with warm start, backward, update; from the loss call to the step's end)."""

    def __init__(self, loss: FlowLoss) -> None:
        self.loss = loss
        self.cpu = 0.0

    def on_step(self, trainer, metrics: dict) -> None:
        self.cpu += time.process_time() - self.loss.step_start

    def on_epoch_end(self, trainer, record: dict) -> None:
        record["train_rel_err"] = math.sqrt(max(float(record.get("train_loss", float("nan"))), 0.0))
        record["cpu_s"] = self.cpu
        self.cpu = 0.0

    def state_dict(self) -> dict:
        return {"cpu": self.cpu}

    def load_state_dict(self, state: dict) -> None:
        self.cpu = float(state["cpu"])


def train(cfg: TrainConfig, out: str | os.PathLike, resume: bool = False, progress: bool = True,
          max_steps: int | None = None, *, force: bool = False, device: str = "cpu",
          data: tuple[Network, np.ndarray, TrafficDataset, TrafficDataset] | None = None) -> tuple[TrafficNFPN, dict]:
    """Train an N-FPN with :class:`fpntools.training.Trainer` in the run folder ``out``; returns the model and a
    summary (history, test metrics, CPU seconds of training).  The model and its test metrics are written to
    ``out/model.*`` when the run completes (not when it stops at ``max_steps``: ``resume`` continues it).
    ``data``: ``(network, base_demand, train, test)`` instead of :func:`load_data` (other networks, tests).

    Raises :class:`fpntools.errors.UserInputError` for an existing checkpoint without ``resume`` / ``force``, a
    resumed run with other settings, or a device that is not available."""
    from torch.utils.data import TensorDataset

    from fpntools.training.trainer import Trainer, TrainerConfig, print_to_stderr

    out = Path(out)
    tcfg = TrainerConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, optimizer="adam",
                         schedule="cosine", lr_min_ratio=0.1, seed=cfg.seed, device=device, run_dir=str(out),
                         resume=resume, force=force, max_steps=max_steps, progress=progress)
    tcfg.check_run_folder()  # before the (possibly long) data generation; the device was checked by TrainerConfig
    net, dem, tr, te = data if data is not None else load_data(cfg, progress=progress)
    model = TrafficNFPN.build(net, dem, tr.flows, replace(cfg.model))  # a copy: the model changes its config
    model.set_solve(cfg.solve())
    data = TensorDataset(torch.arange(len(tr)), torch.as_tensor(tr.contexts), torch.as_tensor(tr.flows))
    loss = FlowLoss(cfg.train_warm_gaps)
    trainer = Trainer(model, loss, data, tcfg, hooks=[_EpochStats(loss)], run_config=cfg.run_config(),
                      log=print_to_stderr if progress else None)
    loss.epoch = lambda: trainer.epoch
    result = trainer.fit()
    model.set_solve(cfg.model.solve)  # inference settings in the saved model
    history = [dict(h) for h in result.history]
    train_cpu = float(sum(h.get("cpu_s", 0.0) for h in history))
    summary: dict[str, Any] = dict(config=_jsonable(asdict(cfg)), history=history, train_cpu_s=train_cpu,
                                   n_train=len(tr), n_test=len(te), completed=result.completed)
    if result.completed:
        model_cpu = model.to("cpu")
        summary["test"] = evaluate(model_cpu, te)
        save_model(model_cpu, out / "model", extra=summary)
    return model, summary


def train_command(*, network: str, out: str | os.PathLike, n_train: int, n_test: int, gap: float, epochs: int,
                  batch_size: int, lr: float, seed: int, backward: str, adjoint_iters: int, data_seed: int,
                  cache: str | os.PathLike, device: str, resume: bool, force: bool, quiet: bool) -> dict:
    """``fpntools traffic train``: validate the options, train (:func:`train`), print the test metrics as JSON
    and a line saying whether the model is usable.  Bad options, an unknown network, missing TNTP files or an
    existing checkpoint without ``--resume`` / ``--force``: :class:`fpntools.errors.UserInputError` before any
    computation.  Non-finite test predictions: :class:`fpntools.cli_support.NotUsableError`."""
    import sys

    from fpntools.cli_support import NotUsableError, check_output_dir

    cfg = TrainConfig(network=network, n_train=n_train, n_test=n_test, gap=gap, epochs=epochs,
                      batch_size=batch_size, lr=lr, seed=seed, data_seed=data_seed, cache=str(cache),
                      backward=backward, adjoint_iters=adjoint_iters)
    out = check_output_dir(out, what="run folder --out")
    torch.set_num_threads(1)
    try:
        _, summary = train(cfg, out, resume=resume, force=force, device=device, progress=not quiet)
    except (FileNotFoundError, KeyError) as e:
        raise UserInputError(f"network {network}: {e.args[0] if e.args else e}") from None
    test = summary.get("test")
    if test is None:
        raise NotUsableError(f"training stopped before its last epoch; no model written (--resume continues "
                             f"from {out / 'checkpoint.pt'})")
    if not all(math.isfinite(v) for v in test.values()):
        raise NotUsableError(f"the trained model's test metrics are not finite ({test}); do not use {out}/model.*")
    print(json.dumps(dict(test=test, train_cpu_s=round(summary["train_cpu_s"], 1),
                          model=str(out / "model.safetensors"))), flush=True)
    print(f"test relative L2 error {test['rel_l2']:.3e}, fixed-point residual <= {test['fp_residual']:.1e}: "
          f"model usable: wrote {out / 'model.safetensors'} and {out / 'model.json'}", file=sys.stderr, flush=True)
    return summary


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=str))


def evaluate(model: TrafficNFPN, data: TrafficDataset, batch: int = 25, progress: bool = False) -> dict:
    """Test metrics: relative L2 error, TRAFIX, Wardrop gap of the predictions under the true costs,
    conservation error, fixed-point residual, CPU seconds per sample."""
    from tqdm.auto import tqdm

    from problems.traffic.context import ContextMap
    from problems.traffic.metrics import conservation_error, wardrop_gap

    t = time.process_time()
    preds, res = [], []
    with torch.no_grad():
        for i in tqdm(range(0, len(data), batch), desc="N-FPN predictions", unit="batch", disable=not progress,
                      leave=False):
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


def baselines(train_ds: TrafficDataset, test_ds: TrafficDataset, seed: int = 0,
              return_predictions: bool = False) -> dict:
    """Constant predictor (mean training flow) and an MLP regressor (context -> link flows, scikit-learn,
    two hidden layers of 128, standardised targets): test relative L2 and TRAFIX (and, with
    ``return_predictions``, the test predictions under ``"pred"``).  Any objects with ``contexts`` and
    ``flows`` arrays will do (e.g. :class:`problems.traffic.datafile.TrafficData`)."""
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
    if return_predictions:
        out["constant"]["pred"] = np.array(const)
        out["mlp"]["pred"] = pred
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
        fingerprint = meta["fingerprint"]
        cfg = NFPNConfig.from_dict({k: v for k, v in meta.items() if k not in ("fingerprint", "extra")})
    except UserInputError as e:
        raise UserInputError(f"model config {js} does not fit the traffic N-FPN: {e}") from None
    except (ValueError, KeyError, TypeError, AttributeError) as e:
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
