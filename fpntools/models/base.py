"""Pieces shared by the model zoo: the output record, the solve configuration and input checks.

Every zoo model returns a :class:`ZooOutput`: the prediction (``logits``), the
:class:`~fpntools.info.FixedPointInfo` of each equilibrium solve it ran, and an auxiliary loss (the Jacobian
penalty of Bai, Koltun & Kolter 2021 when it is switched on) that the training loop adds to the task loss.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from fpntools.errors import UserInputError
from fpntools.fixed_point import FixedPoint
from fpntools.info import FixedPointInfo

__all__ = [
    "ZooOutput",
    "SolveConfig",
    "JacobianRegConfig",
    "make_fixed_point",
    "count_parameters",
    "check_tensor",
    "fixed_point_modules",
    "collect",
]


@dataclass
class ZooOutput:
    """What a zoo model returns.

    Attributes:
        logits: the prediction (class scores ``(B, C)``, token scores ``(B, T, V)``, pixel scores
            ``(B, C, H, W)`` or a regression output).
        infos: one :class:`FixedPointInfo` per equilibrium solve (empty for explicit models).
        aux_loss: scalar added to the task loss by the trainer (Jacobian penalty), or ``None``.
    """

    logits: Tensor
    infos: list[FixedPointInfo] = field(default_factory=list)
    aux_loss: Tensor | None = None

    @property
    def forward_steps(self) -> float:
        """Mean number of forward solver steps per sample over all solves (0 for explicit models)."""
        if not self.infos:
            return 0.0
        return float(sum(i.steps.float().mean() for i in self.infos) / len(self.infos))


@dataclass
class JacobianRegConfig:
    """Jacobian regularisation (Bai, Koltun & Kolter 2021) as a training option.

    The penalty is ``weight * ||J_f(z*)||_F^2 / d`` estimated by Hutchinson's estimator with ``n_samples``
    Gaussian probes, ``||J||_F^2 = E_eps ||eps^T J||^2``, applied at a training step with probability
    ``prob`` (the paper's "apply with frequency" schedule). ``weight`` may ramp in linearly over
    ``warmup_steps`` steps. ``weight = 0`` switches it off. Built by :func:`make_fixed_point` with
    :class:`fpntools.regularization.JacobianPenalty`.
    """

    weight: float = 0.0
    prob: float = 1.0
    n_samples: int = 1
    warmup_steps: int = 0

    def __post_init__(self) -> None:
        if self.weight < 0:
            raise ValueError(f"Jacobian penalty weight must be >= 0, got {self.weight}")
        if not 0.0 < self.prob <= 1.0:
            raise ValueError(f"Jacobian penalty probability must lie in (0, 1], got {self.prob}")
        if self.n_samples < 1:
            raise ValueError(f"Jacobian penalty n_samples must be >= 1, got {self.n_samples}")


@dataclass
class SolveConfig:
    """How an equilibrium layer is solved and differentiated (arguments of :class:`~fpntools.FixedPoint`).

    ``backward`` is ``"implicit"`` (implicit function theorem, adjoint solved by Anderson to ``backward_tol``
    in at most ``backward_max_iter`` iterations), ``"implicit_cg"`` (the same gradient, adjoint solved by
    conjugate gradient on the normal equations with the same tolerance and budget), ``"jfb"``
    (Jacobian-free backpropagation), ``"phantom"`` or ``"unroll"``. ``eval_tol`` / ``eval_max_iter`` apply in
    eval mode. ``jacobian`` configures the optional Jacobian penalty.
    """

    solver: str = "anderson"
    backward: str = "implicit"
    tol: float = 1e-3
    max_iter: int = 30
    backward_tol: float = 1e-4
    backward_max_iter: int = 30
    eval_tol: float | None = None
    eval_max_iter: int | None = None
    anderson_m: int = 5
    jacobian: JacobianRegConfig = field(default_factory=JacobianRegConfig)

    def with_(self, **changes: Any) -> "SolveConfig":
        """A copy with some fields changed (``cfg.with_(backward="jfb")``)."""
        return replace(self, **changes)


def _make_penalty(cfg: JacobianRegConfig) -> Any:
    if cfg.weight == 0.0:
        return None
    try:
        from fpntools.regularization import JacobianPenalty
    except ImportError as exc:  # the regularization module is a separate part of the toolbox
        raise RuntimeError("Jacobian regularisation needs fpntools.regularization.JacobianPenalty") from exc
    kwargs: dict[str, Any] = {"weight": cfg.weight, "p": cfg.prob, "n_samples": cfg.n_samples}
    if cfg.warmup_steps > 0:
        kwargs.update(schedule="linear", warmup_steps=cfg.warmup_steps)
    return JacobianPenalty(**kwargs)


def make_fixed_point(layer: nn.Module, cfg: SolveConfig) -> FixedPoint:
    """A :class:`~fpntools.FixedPoint` module around ``layer`` configured by ``cfg``."""
    from fpntools.backward import Implicit, ImplicitCG, make_backward
    from fpntools.solvers import Anderson, make_solver

    solver = Anderson(m=cfg.anderson_m) if cfg.solver == "anderson" else make_solver(cfg.solver)
    if cfg.backward == "implicit":
        backward: Any = Implicit(
            solver=Anderson(m=cfg.anderson_m), tol=cfg.backward_tol, max_iter=cfg.backward_max_iter
        )
    elif cfg.backward == "implicit_cg":
        backward = ImplicitCG(tol=cfg.backward_tol, max_iter=cfg.backward_max_iter)
    else:
        backward = make_backward(cfg.backward)
    return FixedPoint(
        layer,
        solver=solver,
        backward=backward,
        tol=cfg.tol,
        max_iter=cfg.max_iter,
        eval_tol=cfg.eval_tol,
        eval_max_iter=cfg.eval_max_iter,
        jacobian_penalty=_make_penalty(cfg.jacobian),
    )


def collect(infos: Sequence[FixedPointInfo]) -> Tensor | None:
    """Sum of the Jacobian losses recorded in ``infos`` (``None`` when there are none)."""
    losses = [i.jacobian_loss for i in infos if i.jacobian_loss is not None]
    if not losses:
        return None
    return torch.stack([torch.as_tensor(l).reshape(()) for l in losses]).sum()


def fixed_point_modules(model: nn.Module) -> list[FixedPoint]:
    """All :class:`~fpntools.FixedPoint` submodules of ``model`` in definition order."""
    return [m for m in model.modules() if isinstance(m, FixedPoint)]


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def check_tensor(
    x: Any,
    name: str,
    *,
    ndim: int | Sequence[int],
    floating: bool | None = True,
    shape: dict[int, int] | None = None,
    hint: str = "",
) -> Tensor:
    """Validate a model input and raise :class:`~fpntools.errors.UserInputError` naming the problem.

    ``ndim``: allowed numbers of dimensions; ``floating``: require a float (True) / integer (False) dtype;
    ``shape``: required sizes of some dimensions (negative indices allowed).
    """
    hint = f" ({hint})" if hint else ""
    if not isinstance(x, Tensor):
        raise UserInputError(f"{name} must be a torch.Tensor, got {type(x).__name__}{hint}")
    dims = (ndim,) if isinstance(ndim, int) else tuple(ndim)
    if x.dim() not in dims:
        want = " or ".join(str(d) for d in dims)
        raise UserInputError(f"{name} must have {want} dimensions, got shape {tuple(x.shape)}{hint}")
    if floating is True and not x.is_floating_point():
        raise UserInputError(f"{name} must be floating point, got dtype {x.dtype}{hint}")
    if floating is False and (x.is_floating_point() or x.is_complex() or x.dtype == torch.bool):
        raise UserInputError(f"{name} must hold integer ids, got dtype {x.dtype}{hint}")
    for dim, size in (shape or {}).items():
        if x.shape[dim] != size:
            raise UserInputError(
                f"{name} has size {x.shape[dim]} in dimension {dim}, expected {size}; shape {tuple(x.shape)}{hint}"
            )
    if x.shape[0] == 0:
        raise UserInputError(f"{name} has an empty batch{hint}")
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise UserInputError(f"{name} contains NaN or infinite values{hint}")
    return x
