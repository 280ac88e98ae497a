"""How an equilibrium layer is solved and differentiated: :class:`SolveConfig`, the one solver configuration
every implicit model of fpntools and its applications holds, and :func:`make_fixed_point`, which turns a layer
plus a :class:`SolveConfig` into a :class:`~fpntools.FixedPoint` module.

A model never re-declares solver, backward mode, tolerances, Anderson memory or the train/eval tolerance
switch: it stores a ``SolveConfig`` (serialised with :meth:`SolveConfig.to_dict` into its weights' metadata)
and builds its equilibrium module with :func:`make_fixed_point`. An unrolled network is the same model with
``SolveConfig(solver="picard", backward="unroll", tol=0, max_iter=K)``: exactly ``K`` differentiable steps
(:meth:`SolveConfig.unrolled`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, replace
from typing import Any

from torch import nn

from fpntools.config_dict import checked_fields
from fpntools.errors import UserInputError
from fpntools.fixed_point import FixedPoint

__all__ = ["SolveConfig", "JacobianRegConfig", "make_fixed_point", "SOLVERS", "BACKWARDS"]

SOLVERS = ("picard", "km", "anderson", "broyden")
BACKWARDS = ("implicit", "implicit_cg", "jfb", "phantom", "unroll")


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
    eval mode. ``stop_mode`` is the residual the tolerance applies to (``"rel"``: ``||f(z)-z|| / ||f(z)||``,
    ``"abs"``: ``||f(z)-z||``); ``divergence_factor`` stops a sample whose residual grows past that multiple of its
    first one (``None``: never, e.g. for a warm start whose first residual is already tiny). ``jacobian`` configures the optional Jacobian penalty.
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
    stop_mode: str = "rel"
    divergence_factor: float | None = 1e3
    jacobian: JacobianRegConfig = field(default_factory=JacobianRegConfig)

    def __post_init__(self) -> None:
        if isinstance(self.jacobian, dict):
            self.jacobian = JacobianRegConfig(**self.jacobian)
        if self.solver not in SOLVERS:
            raise UserInputError(f"solver must be one of {', '.join(SOLVERS)}, got {self.solver!r}")
        if self.backward not in BACKWARDS:
            raise UserInputError(f"backward must be one of {', '.join(BACKWARDS)}, got {self.backward!r}")
        if self.divergence_factor is not None and not self.divergence_factor > 1:
            raise UserInputError(f"divergence_factor must be > 1 or None, got {self.divergence_factor}")
        if self.stop_mode not in ("rel", "abs"):
            raise UserInputError(f"stop_mode must be 'rel' or 'abs', got {self.stop_mode!r}")
        for name in ("max_iter", "backward_max_iter", "anderson_m"):
            if getattr(self, name) < 1:
                raise UserInputError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.eval_max_iter is not None and self.eval_max_iter < 1:
            raise UserInputError(f"eval_max_iter must be at least 1, got {self.eval_max_iter}")
        for name in ("tol", "backward_tol", "eval_tol"):
            v = getattr(self, name)
            if v is not None and not v >= 0:
                raise UserInputError(f"{name} must be a number >= 0, got {v}")

    def with_(self, **changes: Any) -> "SolveConfig":
        """A copy with some fields changed (``cfg.with_(backward="jfb")``)."""
        return replace(self, **changes)

    @classmethod
    def unrolled(cls, steps: int, solver: str = "picard") -> "SolveConfig":
        """``steps`` differentiable iterations of the layer, in training and in eval (an unrolled network)."""
        return cls(solver=solver, backward="unroll", tol=0.0, max_iter=steps, eval_tol=0.0, eval_max_iter=steps)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (for weights metadata); :meth:`from_dict` inverts it."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SolveConfig":
        """Inverse of :meth:`to_dict`; unknown keys are a :class:`~fpntools.errors.UserInputError`."""
        return cls(**checked_fields(cls, d, "solve configuration"))


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
        stop_mode=cfg.stop_mode,
        divergence_factor=cfg.divergence_factor,
    )
