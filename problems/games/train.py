"""Training and evaluation of equilibrium predictors (N-FPN and the regression baselines), and their runs.

Loss: mean squared error between predicted and certified equilibria, ``mean_b ||z(d_b) - z*_b||^2``, minimised
by :class:`fpntools.training.Trainer` with the games recipe (:func:`recipe`: Adam, learning rate ``1e-2``
cosine-decayed per step to ``lr / 20``, batch 64, 100 epochs). The N-FPN is trained with JFB (its
``SolveConfig``). Metrics on a data set (:func:`evaluate`):

* ``err``: mean ``||z(d) - z*(d)||_2`` over samples (``z = (x, y)`` stacked, so at most ``2 sqrt(2)``);
* ``rel_err``: ``sum ||z - z*|| / sum ||z*||``;
* ``gap``: mean Nash gap of the predictions under the *true* games (``0`` only at true equilibria);
* ``fp_iters`` / ``fp_converged`` / ``fp_failed`` (N-FPN): mean forward iterations, fraction of converged
  solves, fraction of solves that went non-finite or diverged.

A *run* (:func:`train_run`, ``fpntools games train``) is a folder with the trainer's ``config.json``,
``history.json`` and ``checkpoint.pt`` plus ``weights.pt``: ``{"format", "state_dict", "data", "model",
"test_metrics", "epochs_done"}`` with the data description (a family's :class:`GameDataConfig` or the
user's data file, :class:`~problems.games.datafile.FileDataConfig`) and the model's
(:class:`ModelSpec`: name, sizes, its ``NFPNConfig`` with the ``SolveConfig``). :func:`load_trained`
rebuilds the model from a run folder, its ``weights.pt`` or its ``checkpoint.pt`` and refuses, in one line,
files whose configuration does not match the weights.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from fpntools.cli_support import NotUsableError, warn
from fpntools.errors import UserInputError
from fpntools.info import Status
from fpntools.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from fpntools.training.trainer import Trainer, TrainerConfig, TrainResult, print_to_stderr
from problems.games.baselines import ConstantPredictor, MLPRegressor
from problems.games.data import GameDataConfig, GameDataset, make_dataset
from problems.games.datafile import FileDataConfig, load_game_data
from problems.games.model import ContextScaler, NashFPN, NFPNConfig

#: What a model is trained on: a built-in family's generated data or the user's data file.
DataConfig = GameDataConfig | FileDataConfig

__all__ = [
    "MODELS",
    "ModelSpec",
    "recipe",
    "squared_error",
    "train_model",
    "train_run",
    "RunOutcome",
    "load_trained",
    "evaluate_run",
    "evaluate",
    "predict",
    "predict_contexts",
    "evaluate_file",
    "DataConfig",
    "data_description",
    "solver_report",
    "seed_everything",
    "WEIGHTS_NAME",
]

MODELS = ("nfpn", "mlp", "constant")
WEIGHTS_NAME = "weights.pt"
_WEIGHTS_FORMAT = "fpntools-games-weights-1"


def recipe(**changes: Any) -> TrainerConfig:
    """The games training recipe as a :class:`~fpntools.training.TrainerConfig`: Adam, learning rate ``1e-2``
    with a per-step cosine decay to ``lr / 20`` (``lr_min_ratio = 0.05``), batch 64, 100 epochs, seed 0;
    ``changes`` override fields (``recipe(epochs=30, lr=3e-3, run_dir="runs/rps")``)."""
    base = dict(epochs=100, batch_size=64, lr=1e-2, optimizer="adam", schedule="cosine", lr_min_ratio=0.05, seed=0)
    return TrainerConfig(**{**base, **changes})


@dataclass
class ModelSpec:
    """Everything that defines a games predictor's architecture (stored with its weights).

    Attributes:
        name: ``"nfpn"``, ``"mlp"`` or ``"constant"``.
        n, m: actions of the two players; context_dim: ``p``.
        nfpn: the N-FPN configuration; its ``hidden`` / ``layers`` also size the MLP regressor.
    """

    name: str
    n: int
    m: int
    context_dim: int
    nfpn: NFPNConfig

    def __post_init__(self) -> None:
        if isinstance(self.nfpn, dict):
            self.nfpn = NFPNConfig.from_dict(self.nfpn)
        if self.name not in MODELS:
            raise UserInputError(f"unknown model {self.name!r}; choose one of {', '.join(MODELS)}")
        for key in ("n", "m", "context_dim"):
            v = getattr(self, key)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise UserInputError(f"model {key} must be a positive integer, got {v!r}")

    def build(self) -> nn.Module:
        """The (freshly initialised) model; sizes are checked before anything is allocated."""
        if self.name == "nfpn":
            return NashFPN(self.n, self.m, self.context_dim, self.nfpn)
        if self.name == "mlp":
            return MLPRegressor(self.n, self.m, self.context_dim, hidden=self.nfpn.hidden, layers=self.nfpn.layers)
        return ConstantPredictor(self.n, self.m, self.context_dim)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "nfpn": self.nfpn.to_dict()}

    @classmethod
    def from_dict(cls, d: Any) -> "ModelSpec":
        if not isinstance(d, dict) or set(d) != {"name", "n", "m", "context_dim", "nfpn"}:
            keys = sorted(d) if isinstance(d, dict) else type(d).__name__
            raise UserInputError(f"model description must have keys name, n, m, context_dim, nfpn; got {keys}")
        return cls(**d)


def squared_error(model: nn.Module, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, dict[str, float]]:
    """Loss of the trainer: ``mean_b ||z(d_b) - z*_b||^2`` and, for the N-FPN, the mean forward iterations."""
    d, z_star = batch
    z, info = model(d)
    loss = ((z - z_star) ** 2).sum(dim=1).mean()
    return loss, ({"fp_iters": float(info.steps.float().mean())} if info is not None else {})


def _device_of(model: nn.Module) -> torch.device:
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


def predict(model: nn.Module, d: Tensor, batch_size: int = 512) -> tuple[Tensor, dict[str, float]]:
    """Predictions of ``model`` (``forward(d) -> (z, info | None)``) without gradients, on the model's device,
    and the solver statistics ``fp_iters``, ``fp_converged``, ``fp_failed`` (non-finite or diverged solves)."""
    model.eval()
    device = _device_of(model)
    outs, iters, conv, failed = [], [], [], []
    with torch.no_grad():
        for i in range(0, d.shape[0], batch_size):
            z, info = model(d[i : i + batch_size].to(device))
            outs.append(z.cpu())
            if info is not None:
                iters.append(info.steps.float().cpu())
                conv.append(info.converged.float().cpu())
                failed.append((info.sample_status >= int(Status.DIVERGED)).float().cpu())
    stats = {}
    if iters:
        stats = {
            "fp_iters": float(torch.cat(iters).mean()),
            "fp_converged": float(torch.cat(conv).mean()),
            "fp_failed": float(torch.cat(failed).mean()),
        }
    return torch.cat(outs), stats


def evaluate(model: nn.Module, data: GameDataset) -> dict[str, float]:
    """Error to the certified equilibria and Nash gap under the true games (module docstring)."""
    d, z_star = data.tensors()
    t0 = time.perf_counter()
    z, stats = predict(model, d)
    elapsed = time.perf_counter() - t0
    diff = (z.double() - z_star.double()).norm(dim=1)
    gap = {"gap": float(data.nash_gap(z).mean())} if data.has_payoffs else {}
    return {
        "err": float(diff.mean()),
        "rel_err": float(diff.sum() / z_star.double().norm(dim=1).sum()),
        **gap,
        "ms_per_sample": 1e3 * elapsed / max(len(data), 1),
        **stats,
    }


def solver_report(metrics: dict[str, float], what: str = "N-FPN") -> None:
    """Judge the metrics of :func:`evaluate`: non-finite metrics or failed solves raise
    :class:`~fpntools.cli_support.NotUsableError` (exit 3); solves that stopped at their iteration budget with
    finite output give a warning (the metrics measure the predictions as they are)."""
    bad = [k for k in ("err", "gap") if k in metrics and not math.isfinite(metrics[k])]
    failed = metrics.get("fp_failed", 0.0)
    if bad or failed > 0:
        reason = f"{failed:.1%} of the fixed-point solves went non-finite or diverged" if failed > 0 else ""
        if bad:
            reason = (reason + "; " if reason else "") + f"{' and '.join(bad)} not finite"
        warn(f"{what}: {reason}")
        raise NotUsableError(f"{what}: the predictions are not usable ({reason})")
    conv = metrics.get("fp_converged", 1.0)
    if conv < 1.0:
        warn(
            f"{what}: {1 - conv:.1%} of the fixed-point solves stopped at the iteration budget before the tolerance "
            "(the metrics measure those predictions as they are; raise --max-iter for exact equilibria)"
        )


def train_model(
    model: nn.Module,
    train: GameDataset,
    config: TrainerConfig,
    val: GameDataset | None = None,
    run_config: dict[str, Any] | None = None,
    log: Callable[[str], None] | None = print_to_stderr,
) -> TrainResult:
    """Minimise :func:`squared_error` of ``model`` on ``train`` with :class:`fpntools.training.Trainer`.

    With ``val``, every epoch record holds the :func:`evaluate` metrics on it prefixed ``val_``. A checkpoint
    that does not fit the model (``config.resume``) is a :class:`~fpntools.errors.UserInputError`.
    """
    fit_contexts = getattr(model, "fit_contexts", None)
    if fit_contexts is not None:  # standardise contexts with the training contexts (restored as-is on resume)
        fit_contexts(train.tensors()[0])
    evaluate_fn = None
    if val is not None:
        evaluate_fn = lambda m: {f"val_{k}": v for k, v in evaluate(m, val).items()}  # noqa: E731
    trainer = Trainer(
        model, squared_error, TensorDataset(*train.tensors()), config, evaluate=evaluate_fn, run_config=run_config, log=log
    )
    try:
        return trainer.fit()
    except CheckpointError as exc:
        raise UserInputError(str(exc)) from None


def seed_everything(seed: int) -> None:
    """Seed torch and numpy (model initialisation)."""
    torch.manual_seed(seed)
    np.random.seed(seed)


@dataclass
class RunOutcome:
    """What :func:`train_run` returns: the trained model, the trainer's result, the held-out metrics
    (``{}`` without a test split) and the path of ``weights.pt`` (``None`` without a run folder)."""

    model: nn.Module
    result: TrainResult
    test_metrics: dict[str, float]
    weights: Path | None


def data_description(data_config: DataConfig) -> dict[str, Any]:
    """The stored (JSON) description of what a model was trained on."""
    return asdict(data_config)


def _data_config(desc: Any, path: Path) -> DataConfig:
    """Inverse of :func:`data_description`: a family's :class:`GameDataConfig` or a :class:`FileDataConfig`."""
    if not isinstance(desc, dict):
        raise UserInputError(f"{path}: invalid data description (not a mapping)")
    try:
        return FileDataConfig(**desc) if desc.get("source") == "file" else GameDataConfig(**desc)
    except TypeError as exc:
        raise UserInputError(f"{path}: invalid data description ({exc})") from None


def train_run(
    data_config: DataConfig,
    model_name: str,
    nfpn: NFPNConfig,
    config: TrainerConfig,
    log: Callable[[str], None] | None = print_to_stderr,
) -> RunOutcome:
    """Build the certified data of a family (or read the user's data file and split it), train one predictor
    (``"nfpn"`` or ``"mlp"``) and evaluate it on the test (validation) split.

    The model is initialised from ``config.seed``. With ``config.run_dir`` the trainer keeps its run folder
    (and refuses one that holds a checkpoint unless ``resume`` / ``force``) and ``weights.pt`` is written at
    the end. The run configuration (data and model description) is checked on resume.
    """
    if model_name not in ("nfpn", "mlp"):
        raise UserInputError(f"--model must be nfpn or mlp, got {model_name!r}")
    spec = ModelSpec(model_name, *data_config.sizes(), nfpn)
    seed_everything(config.seed)
    model = spec.build()  # sizes checked before the (slower) data generation
    if log is not None:
        if isinstance(data_config, FileDataConfig):
            log(f"data {data_config.path}: {data_config.n_samples} samples, {data_config.n_val} held out for validation")
        else:
            log(f"building {data_config.n_train} + {data_config.n_test} certified {data_config.family} games ...")
    train, test = data_config.splits()
    description = {"data": data_description(data_config), "model": spec.to_dict()}
    run_config = _dotted(description, "games")  # flat keys: a resume mismatch names the exact field
    result = train_model(model, train, config, val=test if len(test) else None, run_config=run_config, log=log)
    metrics = evaluate(model, test) if len(test) else {}
    weights = None
    if config.run_dir is not None:
        weights = Path(config.run_dir) / WEIGHTS_NAME
        save_checkpoint(
            weights,
            {
                "format": _WEIGHTS_FORMAT,
                "state_dict": model.state_dict(),
                **description,
                "test_metrics": metrics,
                "epochs_done": len(result.history),
            },
        )
    return RunOutcome(model, result, metrics, weights)


def _dotted(d: dict[str, Any], prefix: str) -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"prefix.a.b": 1}`` (the run configuration the trainer stores and compares)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_dotted(v, f"{prefix}.{k}"))
        else:
            out[f"{prefix}.{k}"] = v
    return out


def _undotted(flat: dict[str, Any], prefix: str) -> dict[str, Any] | None:
    """Inverse of :func:`_dotted` for the keys under ``prefix`` (``None`` when there are none)."""
    out: dict[str, Any] = {}
    for key, v in flat.items():
        parts = key.split(".")
        if parts[0] != prefix or len(parts) < 2:
            continue
        node = out
        for part in parts[1:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = v
    return out or None


def _games_state(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(description, state_dict)`` of a run folder, ``weights.pt`` or trainer ``checkpoint.pt``."""
    if path.is_dir():
        cand = [path / WEIGHTS_NAME, path / "checkpoint.pt"]
        found = next((p for p in cand if p.is_file()), None)
        if found is None:
            raise UserInputError(f"run folder {path} holds neither {WEIGHTS_NAME} nor checkpoint.pt")
        path = found
    try:
        state = load_checkpoint(path)
    except CheckpointError as exc:
        raise UserInputError(str(exc).splitlines()[0]) from None
    if state.get("format") == _WEIGHTS_FORMAT:  # weights.pt: {format, state_dict, data, model, ...}
        desc, weights = state, state.get("state_dict")
    else:  # a trainer checkpoint: the description is its run configuration
        desc, weights = _undotted(state.get("run_config") or {}, "games"), state.get("model")
    if not isinstance(desc, dict) or "data" not in desc or "model" not in desc or not isinstance(weights, dict):
        raise UserInputError(f"{path} is not a games weights file or run checkpoint (no games model description)")
    return desc, weights


def load_trained(
    path: str | Path, solve_changes: dict[str, Any] | None = None, device: str | torch.device = "cpu"
) -> tuple[nn.Module, DataConfig]:
    """Rebuild a model written by ``fpntools games train`` (a run folder, its ``weights.pt`` or ``checkpoint.pt``).

    ``solve_changes`` override fields of the N-FPN's ``SolveConfig`` (e.g. ``{"max_iter": 500}``). Raises a
    one-line :class:`~fpntools.errors.UserInputError` when the file is not a games model, its description is
    invalid (unknown keys, absurd sizes: checked before allocating) or the weights do not match it.
    """
    path = Path(path)
    if not path.exists():
        raise UserInputError(f"no such run folder or weights file: {path}")
    desc, weights = _games_state(path)
    data_cfg = _data_config(desc["data"], path)
    spec = ModelSpec.from_dict(desc["model"])
    n, m, p = data_cfg.sizes()
    if (spec.n, spec.m, spec.context_dim) != (n, m, p):
        raise UserInputError(
            f"{path}: the model is for {spec.n}x{spec.m} games with {spec.context_dim} context entries, but its data "
            f"description gives {n}x{m} games with {p}"
        )
    bad = sorted(k for k, t in weights.items() if isinstance(t, Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all()))
    if bad:
        raise UserInputError(f"{path}: the weights hold non-finite values (NaN or inf) in {', '.join(bad[:3])}")
    if solve_changes:
        spec = replace(spec, nfpn=replace(spec.nfpn, solve=spec.nfpn.solve.with_(**solve_changes)))
    model = spec.build()
    weights = _with_default_scalers(model, weights)
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
        detail = " ".join(lines[1:3]) if len(lines) > 1 else lines[0]
        raise UserInputError(f"{path}: the weights do not match the model description ({detail})") from None
    return model.to(device), data_cfg


def _with_default_scalers(model: nn.Module, weights: dict[str, Any]) -> dict[str, Any]:
    """Weights written before contexts were standardised lack the :class:`ContextScaler` buffers: they get the
    identity scaler (what those models computed), every other missing key stays an error."""
    scalers = {name for name, mod in model.named_modules() if isinstance(mod, ContextScaler)}
    missing = {f"{name}.{buf}": t for name in scalers for buf, t in model.get_submodule(name).named_buffers()}
    if not missing or any(k in weights for k in missing):
        return weights
    return {**weights, **{k: t.clone() for k, t in missing.items()}}


def predict_contexts(model: nn.Module, contexts: np.ndarray, what: str = "model") -> tuple[np.ndarray, dict[str, float]]:
    """Predicted equilibria ``(m, n + m_2)`` (float64, each strategy renormalised to sum to 1) of a trained model
    for contexts ``(m, p)`` and the solver statistics; failed solves raise :class:`~fpntools.cli_support.NotUsableError`, solves that stopped at the
    budget warn (:func:`solver_report`)."""
    from problems.games.model import check_context_tensor

    d = check_context_tensor(torch.as_tensor(contexts, dtype=torch.float32), model.context_dim)
    z, stats = predict(model, d)
    z = z.double().numpy()
    solver_report({**stats, **({} if np.isfinite(z).all() else {"err": float("nan")})}, what=what)
    # the model computes in float32: renormalise each strategy in float64 so that it sums to 1 to round-off
    n = model.n
    for part in (z[:, :n], z[:, n:]):
        np.clip(part, 0.0, None, out=part)
        part /= part.sum(axis=1, keepdims=True)
    return z, stats


def evaluate_file(
    path: str | Path,
    data_file: str | Path,
    solve_changes: dict[str, Any] | None = None,
    device: str | torch.device = "cpu",
    simplex_tol: float | None = None,
) -> tuple[dict[str, float], GameDataset]:
    """Metrics (:func:`evaluate`) of a trained model on the samples of a data file (its sizes must match)."""
    model, cfg = load_trained(path, solve_changes, device)
    tol = simplex_tol if simplex_tol is not None else getattr(cfg, "simplex_tol", None)
    data = load_game_data(data_file, **({} if tol is None else {"simplex_tol": tol}))
    sizes = (data.n, data.m, int(data.d.shape[1]))
    if sizes != (model.n, model.m, model.context_dim):
        raise UserInputError(
            f"{data_file} holds {sizes[0]}x{sizes[1]} games with {sizes[2]} context entries, but the model is for "
            f"{model.n}x{model.m} games with {model.context_dim}"
        )
    return evaluate(model, data), data


def evaluate_run(
    path: str | Path,
    n_test: int | None = None,
    solve_changes: dict[str, Any] | None = None,
    device: str | torch.device = "cpu",
) -> tuple[dict[str, float], GameDataConfig]:
    """Held-out metrics (:func:`evaluate`) of a trained model (:func:`load_trained`) on the test games of its
    own data description (the same seeds, so the same games), optionally ``n_test`` of them."""
    model, cfg = load_trained(path, solve_changes, device)
    if isinstance(cfg, FileDataConfig):  # the validation split of its own (unchanged) data file
        if n_test is not None:
            raise UserInputError("--n-test applies to models of a built-in family; pass --data FILE to score another file")
        if cfg.n_val < 1:
            raise UserInputError("the model was trained without a validation split; pass --data FILE")
        return evaluate(model, cfg.splits()[1]), cfg
    if n_test is not None:
        cfg = replace(cfg, n_test=n_test)
    if cfg.n_test < 1:
        raise UserInputError("no held-out games to evaluate on; pass --n-test N")
    _, test = make_dataset(cfg)
    return evaluate(model, test), cfg
