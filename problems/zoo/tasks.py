"""Small experiments for the model zoo (each returns rows; ``fpntools bench zoo`` prints them).

Every run is seeded; times are wall-clock on whatever machine runs them (``torch.get_num_threads()``
threads) and include the solver's Python overhead, which dominates for models this small.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor, nn
from torch.utils.data import Subset, TensorDataset

from fpntools.data import TokenWindows, load_digits, load_python_docs_corpus
from fpntools.models import (
    ConvFPNClassifier,
    DEQLanguageModel,
    DEQMLP,
    FPNClassifier,
    JacobianRegConfig,
    MDEQClassifier,
    SIMClassifier,
    SolveConfig,
    count_parameters,
)
from fpntools.training import Trainer, TrainerConfig, dataset_evaluator, task_loss

__all__ = [
    "Row",
    "jfb_vs_implicit",
    "jacobian_regularization",
    "synthetic_1d",
    "equal_parameter_comparison",
    "char_lm",
    "jacobian_norm",
    "width_for_budget",
    "time_forward_backward",
    "tune_split",
    "COMPARE_HPARAMS",
]


@dataclass
class Row:
    """One line of a result table: a name and ordered metric columns."""

    name: str
    values: dict[str, float | int | str] = field(default_factory=dict)


def _train(model: nn.Module, train, test, epochs: int, batch: int = 64, lr: float = 1e-3, seed: int = 0,
           task: str = "classification", max_steps: int | None = None,
           schedule: str = "constant") -> tuple[dict, Trainer]:
    """Train with the zoo recipe (Adam, ``schedule`` per step, seeded order) and evaluate on ``test`` after
    every epoch. Returns the last epoch record plus ``epoch_s`` / ``step_ms`` (means over the epochs) and the
    trainer; a run stopped by ``max_steps`` inside an epoch is evaluated where it stopped."""
    cfg = TrainerConfig(epochs=epochs, batch_size=batch, lr=lr, seed=seed, progress=False, max_steps=max_steps,
                        schedule=schedule, device="cpu")
    trainer = Trainer(model, task_loss(task), train, cfg, evaluate=dataset_evaluator(test, task, 512, prefix="test"),
                      log=None)
    res = trainer.fit()
    final = dict(res.final) if res.final else {}
    times = [h["seconds"] for h in res.history] or [float("nan")]
    steps = [1e3 * h["seconds"] / max(h["steps"], 1) for h in res.history] or [float("nan")]
    final["epoch_s"] = sum(times) / len(times)
    final["step_ms"] = sum(steps) / len(steps)
    if not res.completed:  # stopped by max_steps inside an epoch
        final.update(trainer.evaluate_now())
        running = trainer.running_record()
        if not res.history:
            final["step_ms"] = 1e3 * running["seconds"] / running["steps"] if running["steps"] else float("nan")
        if "train_forward_steps" in running:  # the unfinished epoch's mean forward solver steps
            final["train_forward_steps"] = running["train_forward_steps"]
    return final, trainer


# --------------------------------------------------------------------------------------------- JFB
def time_forward_backward(model: nn.Module, x: Tensor, y: Tensor, batch: int = 64, n_steps: int = 40,
                          seed: int = 0) -> tuple[float, float]:
    """Median wall-clock ms of the forward pass (model + loss) and of ``loss.backward()`` of one training step,
    over ``n_steps`` random training batches (no optimizer update, so the model is not changed)."""
    import statistics
    import time

    g = torch.Generator().manual_seed(seed)
    was = model.training
    model.train()
    fwd, bwd = [], []
    for i in range(n_steps + 3):  # 3 warm-up steps
        idx = torch.randperm(len(x), generator=g)[:batch]
        model.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        out = model(x[idx])
        loss = nn.functional.cross_entropy(out.logits, y[idx])
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        if i >= 3:
            fwd.append(1e3 * (t1 - t0))
            bwd.append(1e3 * (t2 - t1))
    model.zero_grad(set_to_none=True)
    model.train(was)
    return statistics.median(fwd), statistics.median(bwd)


_FPN_ARCHS: dict[str, tuple[str, int, Callable[[int, SolveConfig], nn.Module]]] = {
    "mlp": ("FPN", 64, lambda width, cfg: FPNClassifier(64, 10, width=width, cfg=cfg)),
    "conv": ("conv FPN", 32, lambda width, cfg: ConvFPNClassifier(1, (8, 8), 10, channels=width, cfg=cfg)),
}
"""Digits FPN of :func:`jfb_vs_implicit` per ``arch``: row label, default width, ``make(width, cfg)``."""


def jfb_vs_implicit(epochs: int = 10, width: int | None = None, seed: int = 0, tols=(1e-4, 1e-3),
                    arch: str = "mlp") -> list[Row]:
    """FPN classifier on digits trained with JFB and with implicit differentiation (same init, data order and
    forward solver) at each forward tolerance in ``tols``. ``arch="mlp"``: :class:`FPNClassifier` on the 64
    flattened pixels (``width`` latent units, default 64); ``arch="conv"``: :class:`ConvFPNClassifier` on the
    8x8 images (``width`` channels, default 32), the convolutional kind the JFB paper trains, where a layer
    evaluation costs more than the solver's per-iteration bookkeeping.

    Two implicit backwards are compared with JFB, both with the adjoint solved to the same tolerance in at
    most 50 iterations: ``"implicit"`` (the adjoint fixed point ``u = J^T u + v`` by Anderson, one
    vector-Jacobian product per iteration) and ``"implicit_cg"`` (the JFB paper's Jacobian-based baseline:
    ``(I - J)^T u = v`` by conjugate gradient on the normal equations, one vector-Jacobian and one
    Jacobian-vector product per iteration). Besides the per-step time of training, the forward pass and the
    backward pass of a training step are timed separately after training (median over 40 batches), and the
    ratios implicit / JFB of the whole step and of the backward pass alone are given on each implicit row.
    "adjoint steps" are the adjoint iterations per sample, "adjoint products" the Jacobian products (VJPs,
    plus JVPs for CG) of the batch, both of one training step after training."""
    if arch not in _FPN_ARCHS:
        raise ValueError(f"arch must be one of {sorted(_FPN_ARCHS)}, got {arch!r}")
    label, default_width, make = _FPN_ARCHS[arch]
    width = width if width is not None else default_width
    split = load_digits(flat=arch == "mlp")
    rows = []
    for tol in tols:
        ref: dict = {}
        for mode in ("jfb", "implicit", "implicit_cg"):
            torch.manual_seed(seed)
            cfg = SolveConfig(backward=mode, tol=tol, max_iter=50, backward_tol=tol, backward_max_iter=50)
            model = make(width, cfg)
            final, _ = _train(model, split.train, split.test, epochs, seed=seed)
            fwd_ms, bwd_ms = time_forward_backward(model, split.x_train, split.y_train, seed=seed)
            # adjoint iterations of one training step after training (0 for JFB: one layer backward)
            model.train()
            out = model(split.x_train[:64])
            out.logits.logsumexp(1).sum().backward()
            info = out.infos[0]
            adjoint_steps = float(info.backward.steps.float().mean()) if info.backward is not None else 0.0
            adjoint_products = info.backward.nfe if info.backward is not None else 0
            vals = {"tol": f"{tol:g}", "params": count_parameters(model), "test acc %": 100 * final["test_acc"],
                    "train loss": final["train_loss"], "s / epoch": final["epoch_s"], "ms / step": final["step_ms"],
                    "fwd ms": fwd_ms, "bwd ms": bwd_ms, "fwd steps": final["train_forward_steps"],
                    "adjoint steps": adjoint_steps, "adjoint products": adjoint_products}
            if mode == "jfb":
                ref = vals
            else:
                vals["step ratio"] = (fwd_ms + bwd_ms) / (ref["fwd ms"] + ref["bwd ms"])
                vals["train step ratio"] = final["step_ms"] / ref["ms / step"]
                vals["bwd ratio"] = bwd_ms / ref["bwd ms"]
            rows.append(Row(f"{label} {mode}", vals))
    return rows


# ------------------------------------------------------------------------------- Jacobian regularisation
def jacobian_norm(model: DEQMLP, x: Tensor, n_samples: int = 8) -> float:
    """Mean over samples of the Hutchinson estimate of ``||J_f(z*)||_F`` at the model's equilibrium."""
    from fpntools.regularization import jacobian_frobenius

    was = model.training
    model.eval()
    with torch.no_grad():
        u = model.inject(x)
        z, _ = model.deq(u)
    z = z.detach().requires_grad_()
    with torch.enable_grad():
        fz = model.block(z, u)
        est = jacobian_frobenius(fz, z, n_samples=n_samples, normalize=False, create_graph=False, reduction="none",
                                 generator=torch.Generator().manual_seed(0))
    model.train(was)
    return float(est.clamp_min(0).sqrt().mean())


def _eval_steps(model: nn.Module, x: Tensor, tol: float) -> tuple[float, float]:
    """Mean forward solver steps to reach relative residual ``tol`` (budget 100) and the fraction converged."""
    fp = model.deq
    old = (fp.eval_tol, fp.eval_max_iter)
    fp.eval_tol, fp.eval_max_iter = tol, 100
    model.eval()
    with torch.no_grad():
        info = model(x).infos[0]
    fp.eval_tol, fp.eval_max_iter = old
    return float(info.steps.float().mean()), float(info.converged.float().mean())


def _jr_rows(make: Callable[[JacobianRegConfig], DEQMLP], train, test, x_probe: Tensor, epochs: int, weights,
             task: str, lr: float, tol: float, batch: int, seed: int) -> list[Row]:
    rows = []
    for w in weights:
        torch.manual_seed(seed)
        model = make(JacobianRegConfig(weight=w, prob=1.0 if w else 1.0))
        jf0 = jacobian_norm(model, x_probe)
        s0, _ = _eval_steps(model, x_probe, tol)
        final, _ = _train(model, train, test, epochs, batch=batch, lr=lr, seed=seed, task=task)
        s1, c1 = _eval_steps(model, x_probe, tol)
        vals: dict = {"‖J‖_F init": jf0, "‖J‖_F trained": jacobian_norm(model, x_probe),
                      f"steps to {tol:g} init": s0, f"steps to {tol:g} trained": s1, "converged %": 100 * c1}
        if task == "classification":
            vals["test acc %"] = 100 * final["test_acc"]
        else:
            vals["test mse"] = final["test_loss"]
        vals["s / epoch"] = final["epoch_s"]
        rows.append(Row(f"jac reg weight {w:g}", vals))
    return rows


def jacobian_regularization(epochs: int = 10, width: int = 64, weights=(0.0, 4.0), tol: float = 1e-4,
                            seed: int = 0) -> list[Row]:
    """DEQ (MLP) on digits with and without the Jacobian penalty: solver steps, ||J||_F, accuracy."""
    split = load_digits()

    def make(jr: JacobianRegConfig) -> DEQMLP:
        cfg = SolveConfig(tol=1e-3, max_iter=30, jacobian=jr)
        return DEQMLP(64, 10, width=width, cfg=cfg)

    return _jr_rows(make, split.train, split.test, split.x_test, epochs, weights, "classification", 1e-3, tol, 64, seed)


def synthetic_1d(epochs: int = 30, width: int = 32, weights=(0.0, 0.1, 1.0), tol: float = 1e-4, n: int = 1024,
                 seed: int = 0) -> list[Row]:
    """1-D synthetic regression in the spirit of the 1-D illustration of Bai et al. (2021): ``x ~ U[-2, 2]``,
    ``y = sin(3x) + 0.5 x`` plus noise (std 0.05), fitted by a DEQ with a ``width``-dimensional state."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, generator=g) * 4 - 2
    y = torch.sin(3 * x) + 0.5 * x + 0.05 * torch.randn(n, 1, generator=g)
    xt = torch.linspace(-2, 2, 256)[:, None]
    yt = torch.sin(3 * xt) + 0.5 * xt

    def make(jr: JacobianRegConfig) -> DEQMLP:
        cfg = SolveConfig(tol=1e-3, max_iter=30, jacobian=jr)
        return DEQMLP(1, 1, width=width, cfg=cfg)

    return _jr_rows(make, TensorDataset(x, y), TensorDataset(xt, yt), xt, epochs, weights, "regression", 3e-3, tol,
                    64, seed)


# ------------------------------------------------------------------------- SIM vs DEQ vs MDEQ
def width_for_budget(make: Callable[[int], nn.Module], budget: int, candidates) -> int:
    """The candidate width whose model's parameter count is closest to ``budget``."""
    return min(candidates, key=lambda w: abs(count_parameters(make(w)) - budget))


# Hyper-parameters of the comparison, chosen per model on a validation split carved out of the digits
# training set (``tune_split``, 20% held out; the test set was not used), 20 epochs each: learning rate from
# {1e-3, 3e-3} (SIM, DEQ; MDEQ only at 3e-3 for time), the two-tier SIM bandwidth from {1, 4}, the MDEQ init
# scale from {0.25, 0.5}. All models: Adam, cosine schedule, batch 64. Validation accuracies in docs/zoo.md.
COMPARE_HPARAMS: dict[str, dict] = {
    "SIM single-tier": {"lr": 3e-3},
    "SIM two-tier": {"lr": 3e-3, "bandwidth": 1.0},
    "DEQ (MLP, implicit)": {"lr": 3e-3},
    "MDEQ (2 scales, implicit)": {"lr": 3e-3, "init_scale": 0.25},
}


def tune_split(dataset, fraction: float = 0.2, seed: int = 123):
    """``(train, valid)`` subsets of ``dataset`` (a seeded random ``fraction`` held out for model selection)."""
    n = len(dataset)
    nv = int(n * fraction)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return Subset(dataset, perm[nv:]), Subset(dataset, perm[:nv])


def equal_parameter_comparison(epochs: int = 20, budget: int = 20_000, seed: int = 0, include_mdeq: bool = True,
                               max_iter: int = 15, hparams: dict[str, dict] | None = None) -> list[Row]:
    """SIM (single / two tier), DEQ (MLP) and MDEQ on digits with about ``budget`` parameters each, each with
    its tuned learning rate (``COMPARE_HPARAMS``), cosine schedule, same epochs and data order. The DEQ
    solves are capped at ``max_iter`` forward / adjoint Anderson iterations (tolerance 1e-3)."""
    hp = {k: dict(v) for k, v in COMPARE_HPARAMS.items()}
    for k, v in (hparams or {}).items():
        hp.setdefault(k, {}).update(v)
    flat, img = load_digits(flat=True), load_digits(flat=False)
    solve = SolveConfig(tol=1e-3, max_iter=max_iter, backward_max_iter=max_iter)
    bw = hp["SIM two-tier"].get("bandwidth", 4.0)
    scale = hp["MDEQ (2 scales, implicit)"].get("init_scale", 0.5)
    makers: dict[str, tuple[Callable[[int], nn.Module], range, bool]] = {
        "SIM single-tier": (lambda w: SIMClassifier(64, 10, "single", width=w, tier_dim=w), range(16, 160, 2), True),
        "SIM two-tier": (lambda w: SIMClassifier(64, 10, "two", width=w, tier_dim=32, rff_dim=2 * w, bandwidth=bw),
                         range(16, 160, 2), True),
        "DEQ (MLP, implicit)": (lambda w: DEQMLP(64, 10, width=w, cfg=solve), range(16, 200, 4), True),
    }
    if include_mdeq:
        makers["MDEQ (2 scales, implicit)"] = (
            lambda c: MDEQClassifier(1, 10, channels=(c, 2 * c), groups=4, cfg=solve, init_scale=scale),
            range(4, 40, 4), False)
    rows = []
    for name, (make, cands, is_flat) in makers.items():
        w = width_for_budget(make, budget, cands)
        torch.manual_seed(seed)
        model = make(w)
        data = flat if is_flat else img
        lr = hp.get(name, {}).get("lr", 1e-3)
        final, _ = _train(model, data.train, data.test, epochs, lr=lr, seed=seed, schedule="cosine")
        vals = {"width": w, "params": count_parameters(model), "lr": f"{lr:g}", "test acc %": 100 * final["test_acc"],
                "s / epoch": final["epoch_s"], "fwd steps": final.get("test_forward_steps", 0.0)}
        if getattr(model, "deq", None) is not None:
            x = data.x_test
            model.eval()
            with torch.no_grad():
                info = model(x).infos[0]
            vals["converged %"] = 100 * float(info.converged.float().mean())
        rows.append(Row(name, vals))
    return rows


# --------------------------------------------------------------------------- character-level LM
def char_lm(steps: int = 200, d_model: int = 64, seq_len: int = 64, batch: int = 16, depth: int = 6,
            eval_windows: int = 64, max_chars: int | None = 200_000, seed: int = 0, jacobian_weight: float = 0.5,
            jacobian_prob: float = 0.5, jacobian_init_scale: float = 0.5, jacobian_warmup: int = 0, only: tuple[str, ...] | None = None) -> list[Row]:
    """DEQ-Transformer vs the same layer unrolled ``depth`` times (same parameters) on the CPython docs
    corpus (``pydoc_data.topics``): validation perplexity after ``steps`` steps, time, training memory, solver
    steps. The "+ Jacobian reg." variant trains the DEQ-Transformer with the Jacobian penalty of Bai, Koltun
    & Kolter (2021) (``jacobian_weight``, applied with probability ``jacobian_prob``, optionally ramped in over
    ``jacobian_warmup`` steps, layer ``init_scale = jacobian_init_scale``). ``only``: names of the variants
    to run (default all)."""
    from problems.zoo.memory import SavedTensorBytes

    corpus = load_python_docs_corpus(max_chars=max_chars)
    train = TokenWindows(corpus.train, seq_len)
    valid = Subset(TokenWindows(corpus.valid, seq_len), range(min(eval_windows, len(corpus.valid) // seq_len - 1)))
    rows = []
    deq_cfg = SolveConfig(tol=1e-3, max_iter=30, backward_tol=1e-3)
    jr = JacobianRegConfig(weight=jacobian_weight, prob=jacobian_prob, warmup_steps=jacobian_warmup)
    variants = {
        "DEQ-Transformer": dict(depth=None, cfg=deq_cfg),
        "DEQ-Transformer + Jacobian reg.": dict(depth=None, cfg=deq_cfg.with_(jacobian=jr),
                                                init_scale=jacobian_init_scale),
        f"explicit, {depth} tied layers": dict(depth=depth),
        "DEQ-TrellisNet": dict(depth=None, layer="trellis", cfg=SolveConfig(tol=1e-3, max_iter=30, backward_tol=1e-3)),
    }
    for name, kw in variants.items():
        if only is not None and name not in only:
            continue
        torch.manual_seed(seed)
        model = DEQLanguageModel(len(corpus.vocab), d_model, kw.pop("layer", "transformer"), max_len=seq_len, **kw)
        epochs = math.ceil(steps / math.ceil(len(train) / batch))
        final, trainer = _train(model, train, _ListDataset(valid), epochs, batch=batch, lr=2e-3, seed=seed, task="lm",
                                max_steps=steps)
        train_steps = final.get("train_forward_steps", 0.0)
        x, _ = train[torch.arange(batch)]
        model.train()
        with SavedTensorBytes(model) as saved:
            out = model(x)
            loss = out.logits.float().mean()
        loss.backward()
        rows.append(Row(name, {"params": count_parameters(model), "valid ppl": final["test_ppl"],
                               "valid bpc": final["test_loss"] / math.log(2), "ms / step": final["step_ms"],
                               "train act. MB": saved.bytes / 2**20,
                               "train fwd steps": train_steps, "valid fwd steps": final.get("test_forward_steps", 0.0),
                               "valid converged %": _lm_converged(model, valid)}))
    return rows


def _lm_converged(model: nn.Module, valid) -> float:
    """Percentage of validation windows whose equilibrium solve reached the tolerance (100 for explicit models)."""
    if getattr(model, "deq", None) is None:
        return 100.0
    x = torch.stack([valid[i][0] for i in range(len(valid))])
    model.eval()
    with torch.no_grad():
        info = model(x).infos[0]
    model.train()
    return 100 * float(info.converged.float().mean())


class _ListDataset(torch.utils.data.Dataset):
    """Materialise a small ``Subset`` of windows as tensors (the trainer fetches it vectorised)."""

    def __new__(cls, subset):
        xs, ys = zip(*(subset[i] for i in range(len(subset))))
        return TensorDataset(torch.stack(xs), torch.stack(ys))
