r"""Augmented DEQs: joint inference and input optimisation in one fixed point.

Problem. For a DEQ ``z*(x) = f(z*(x), x)`` and a per-sample objective ``loss(z, x)`` (the decoder head and any
regulariser on ``x`` live inside ``loss``), find

.. math::  \min_{x \in C} \; L(x) = \ell(z^*(x), x).

With the adjoint ``mu = (I - J_z f)^{-T} \partial_z \ell`` the input gradient is
``grad L(x) = \partial_x \ell + J_x f^T mu``. The naive method (:func:`naive_solve`) runs an outer optimiser on
``x`` and pays a full forward DEQ solve plus an adjoint solve per outer step.

Joint fixed point (Gurumurthy, Bai, Manchester, Kolter, NeurIPS 2021). Stack ``s = (z, x, mu)`` and iterate
the augmented map ``G``

.. math::
    z^+   &= f(z, x) \\
    \mu^+ &= J_z f(z, x)^T \mu + \partial_z \ell(z, x) \\
    x^+   &= P_C\big(x - \alpha\,(\partial_x \ell(z, x) + J_x f(z, x)^T \mu)\big).

A fixed point of ``G`` is an equilibrium (``z = f(z, x)``), the exact adjoint at it, and a stationary point
of the projected gradient step (``x = P_C(x - alpha grad L(x))``, the first-order optimality condition of
the constrained problem). One application of ``G`` costs one evaluation of ``f`` and one vector-Jacobian
product (``mu^T f`` and ``loss`` are differentiated together in one backward pass). :func:`augmented_solve`
solves ``s = G(s)`` with the engine (:func:`fpntools.fixed_point` with a tuple state, any solver object,
Anderson by default), so ``x``, ``z`` and ``mu`` are driven to their fixed point together instead of nested.

The adjoint is stored scaled, ``mu~ = mu / adjoint_scale``, so that the three blocks have comparable size in
the solver's least-squares mixing and stopping rule.

Gradients. The returned ``x*``, ``z*`` are differentiable with respect to everything ``f`` and ``loss``
capture (parameters, targets) by the engine's backward modes applied to ``G``: ``"implicit"`` (exact,
solves the adjoint of the joint fixed point; needs second derivatives of ``f``, which ``G`` builds with
``create_graph``) or ``"jfb"`` (one differentiated application of ``G``).

Counting. :class:`Counter` wraps ``f`` to count its evaluations and the vector-Jacobian products that pass
through it, wraps ``loss`` to count objective evaluations (a joint iteration evaluates the objective and its
gradient every time; the naive method once per outer step, so when the objective is costly -- a decoder head at
full resolution -- wall time is the fair comparison and evaluation counts of ``f`` alone flatter the joint
solve), and records time-stamped snapshots of ``x`` so the two methods can be compared by wall time and
by the number of function evaluations needed to reach the same objective value.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from fpntools.backward import BackwardMode
from fpntools.fixed_point import fixed_point
from fpntools.info import FixedPointInfo
from fpntools.solvers import FixedPointSolver, make_solver

__all__ = [
    "DEQMap",
    "Objective",
    "Projection",
    "Counter",
    "Snapshot",
    "AugmentedConfig",
    "AugmentedMap",
    "AugmentedResult",
    "NaiveConfig",
    "NaiveResult",
    "augmented_solve",
    "naive_solve",
    "input_gradient",
    "solve_equilibrium",
    "true_objective",
]

DEQMap = Callable[[Tensor, Tensor], Tensor]
"""``f(z, x) -> z'``: the DEQ layer, batched along dim 0."""
Objective = Callable[[Tensor, Tensor], Tensor]
"""``loss(z, x) -> (B,)``: per-sample objective (samples must not interact)."""
Projection = Callable[[Tensor], Tensor]
"""``P(x) -> x``: projection onto the constraint set, batched along dim 0."""


# ----------------------------------------------------------------------------------------------------------
# counting


@dataclass
class Snapshot:
    """A recorded input iterate: wall time since :meth:`Counter.start`, counts so far, and ``x`` (detached)."""

    time: float
    nfe: int
    nvjp: int
    x: Tensor
    nloss: int = 0


@dataclass
class Counter:
    """Counts evaluations of ``f`` (``nfe``), vector-Jacobian products through ``f`` (``nvjp``) and evaluations
    of the objective (``nloss``).

    ``counter.wrap(f)`` returns ``f`` with counting: each call adds one to ``nfe``; when the output takes part
    in autograd, a hook on it adds one to ``nvjp`` every time a gradient flows back through it (one adjoint
    iteration, one augmented step, one final backward). ``snapshot(x)`` records ``x`` with the time and
    counts, every ``record_every``-th call (0: never), so objective-versus-cost curves can be drawn afterwards
    without paying for objective evaluations inside the timed run. ``counter.wrap_loss(loss)`` counts the
    calls of ``loss``.
    """

    record_every: int = 0
    nfe: int = 0
    nvjp: int = 0
    nloss: int = 0
    snapshots: list[Snapshot] = field(default_factory=list)
    _t0: float = field(default_factory=time.perf_counter, repr=False)
    _calls: int = field(default=0, repr=False)

    def start(self) -> None:
        """Reset the counts, the snapshots and the clock."""
        self.nfe = self.nvjp = self.nloss = self._calls = 0
        self.snapshots = []
        self._t0 = time.perf_counter()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self._t0

    def _hook(self, grad: Tensor) -> None:
        self.nvjp += 1

    def wrap(self, f: DEQMap) -> DEQMap:
        def counted(z: Tensor, x: Tensor) -> Tensor:
            self.nfe += 1
            out = f(z, x)
            first = out if isinstance(out, Tensor) else next((t for t in out if t.requires_grad), out[0])
            if first.requires_grad:
                first.register_hook(self._hook)
            return out

        return counted

    def wrap_loss(self, loss: Objective) -> Objective:
        def counted(z: Tensor, x: Tensor) -> Tensor:
            self.nloss += 1
            return loss(z, x)

        return counted

    def snapshot(self, x: Tensor, force: bool = False) -> None:
        self._calls += 1
        if force or (self.record_every > 0 and (self._calls - 1) % self.record_every == 0):
            self.snapshots.append(Snapshot(self.elapsed, self.nfe, self.nvjp, x.detach().clone(), self.nloss))


# ----------------------------------------------------------------------------------------------------------
# the augmented map


@dataclass
class _Eval:
    fz: Tensor
    mu_next: Tensor  # unscaled
    grad_x: Tensor
    x_next: Tensor
    loss: Tensor


class AugmentedMap:
    r"""The joint map on the scaled state ``(z, x~, mu~)`` with ``x = r x~``, ``mu = s mu~``:
    ``G(z, x~, mu~) = (f(z, x), P(x - alpha (d_x l + J_x^T mu)) / r, (J_z^T mu + d_z l) / s)``.

    ``r = input_scale``, ``s = adjoint_scale`` only weight the blocks for the solver (same fixed point).
    ``alpha = 0`` freezes ``x``: the map is then the DEQ iteration and the adjoint iteration at that ``x``.
    Under ``torch.no_grad`` (the forward solve) the result is detached; with grad enabled (backward modes) it is
    built with ``create_graph``, so it is differentiable in the state and in whatever ``f`` / ``loss`` capture.
    ``evaluate(z, x, mu)`` works on unscaled blocks and also returns the input gradient and the loss.
    """

    def __init__(
        self,
        f: DEQMap,
        loss: Objective,
        step_size: float,
        projection: Projection | None = None,
        adjoint_scale: float = 1.0,
        counter: Counter | None = None,
        input_scale: float = 1.0,
    ) -> None:
        if not step_size >= 0:
            raise ValueError(f"step_size must be nonnegative (0 freezes x), got {step_size}")
        if not adjoint_scale > 0:
            raise ValueError(f"adjoint_scale must be positive, got {adjoint_scale}")
        self.f = f
        self.loss = loss
        self.step_size = float(step_size)
        self.projection = projection
        if not input_scale > 0:
            raise ValueError(f"input_scale must be positive, got {input_scale}")
        self.adjoint_scale = float(adjoint_scale)
        self.input_scale = float(input_scale)
        self.counter = counter

    def evaluate(self, z: Tensor, x: Tensor, mu: Tensor) -> _Eval:
        """One application on unscaled ``mu``: the equilibrium update, the adjoint update, the input gradient."""
        outer = torch.is_grad_enabled()
        if self.counter is not None:
            self.counter.snapshot(x)
        with torch.enable_grad():
            zz = z if (outer and z.requires_grad) else z.detach().requires_grad_()
            xx = x if (outer and x.requires_grad) else x.detach().requires_grad_()
            mm = mu if outer else mu.detach()
            fz = self.f(zz, xx)
            lval = self.loss(zz, xx)
            if lval.dim() != 1 or lval.shape[0] != z.shape[0]:
                raise ValueError(f"loss(z, x) must return a per-sample tensor of shape ({z.shape[0]},), got {tuple(lval.shape)}")
            scalar = (fz * mm).sum() + lval.sum()
            gz, gx = torch.autograd.grad(scalar, (zz, xx), create_graph=outer, allow_unused=True)
        gz = torch.zeros_like(z) if gz is None else gz
        gx = torch.zeros_like(x) if gx is None else gx
        x_next = x - self.step_size * gx
        if self.projection is not None:
            x_next = self.projection(x_next)
        if not outer:
            fz, lval = fz.detach(), lval.detach()
        return _Eval(fz=fz, mu_next=gz, grad_x=gx, x_next=x_next, loss=lval)

    def __call__(self, state: tuple[Tensor, Tensor, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        z, x_s, mu_s = state
        ev = self.evaluate(z, x_s * self.input_scale, mu_s * self.adjoint_scale)
        return ev.fz, ev.x_next / self.input_scale, ev.mu_next / self.adjoint_scale


# ----------------------------------------------------------------------------------------------------------
# augmented solve


@dataclass
class AugmentedConfig:
    """Options of :func:`augmented_solve`.

    Attributes:
        step_size: ``alpha`` of the projected gradient step on ``x`` (about ``1 / Lipschitz(grad L)``).
        adjoint_scale: ``s`` in ``mu = s * mu~``; input_scale: ``r`` in ``x = r * x~``. They weight the three
            blocks in the solver's least-squares mixing and stopping rule (the fixed point is the same); pick
            them so that ``z``, ``x / r`` and ``mu / s`` have comparable norms.
        solver: solver name or object (``fpntools.Anderson(m=8, beta=1.0)`` ...), applied to the stacked state.
        solver_options: options when ``solver`` is a name (``{"m": 8}``).
        tol, max_iter, stop_mode: stopping rule of the joint solve (``stop_mode`` as in the engine).
        settle_iters, settle_tol: at most ``settle_iters`` iterations with ``x`` frozen (``alpha = 0``) before
            any step on ``x``, stopping early at the relative residual ``settle_tol``: ``z`` and ``mu`` settle
            to the equilibrium and the adjoint of ``x0`` first. Without it the first steps on ``x`` follow the
            gradient of a wrong adjoint (``mu0 = 0`` and ``z0`` far from ``z*(x0)``), and the solver's
            extrapolation can throw ``x`` far from a good start (it matters when ``x0`` is an informed guess,
            e.g. an amortised encoder's output).
        schedule: optional warm-up stages ``((step_size, iterations), ...)`` run before the main stage, each a
            fixed-point solve of ``G`` with that step size warm-started from the previous one (a step-size
            schedule that keeps every stage a proper fixed-point problem).
        backward: backward mode of the final stage (``"implicit"``, ``"jfb"`` or an object).
        divergence_factor: as in the engine (``None`` disables the test).
        jacobian_penalty: optional :class:`fpntools.regularization.JacobianPenalty`-like callable
            ``penalty(fz, z_in, step) -> Tensor``; when set and grad is enabled, the result carries the penalty
            of ``f`` at ``(z*, x*)`` in ``jacobian_loss`` (add it to a training loss).
    """

    step_size: float = 0.1
    adjoint_scale: float = 1.0
    input_scale: float = 1.0
    solver: str | FixedPointSolver = "anderson"
    solver_options: dict[str, Any] = field(default_factory=dict)
    tol: float = 1e-5
    max_iter: int = 200
    stop_mode: str = "rel"
    settle_iters: int = 0
    settle_tol: float = 1e-3
    schedule: tuple[tuple[float, int], ...] = ()
    backward: str | BackwardMode = "implicit"
    divergence_factor: float | None = None
    jacobian_penalty: Any = None


@dataclass
class AugmentedResult:
    """Result of :func:`augmented_solve` (per-sample tensors have shape ``(B,)``).

    Attributes:
        x: optimised input (differentiable by the configured backward mode when grad is enabled).
        z: equilibrium ``z*`` at ``x`` (same).
        mu: adjoint (unscaled, detached).
        objective: ``loss(z, x)`` at the returned iterate.
        deq_residual: ``||f(z, x) - z||``.
        adjoint_residual: ``||J_z^T mu + d_z l - mu||``.
        grad_norm: ``||d_x l + J_x^T mu||`` (the input gradient; zero at an unconstrained optimum).
        optimality_residual: ``||x - P(x - alpha g)|| / alpha``, the projected-gradient mapping (zero at a
            stationary point of the constrained problem; equals ``grad_norm`` without projection).
        info: the engine's info of the last stage; ``infos`` of every stage.
        nfe, nvjp: evaluations of ``f`` and vector-Jacobian products through ``f`` spent by the solve.
        wall_time: seconds.
        jacobian_loss: penalty value when configured.
        nloss: evaluations of ``loss`` (each with its gradient) spent by the solve.
    """

    x: Tensor
    z: Tensor
    mu: Tensor
    objective: Tensor
    deq_residual: Tensor
    adjoint_residual: Tensor
    grad_norm: Tensor
    optimality_residual: Tensor
    info: FixedPointInfo
    infos: list[FixedPointInfo]
    nfe: int
    nvjp: int
    wall_time: float
    jacobian_loss: Tensor | None = None
    nloss: int = 0


def _bnorm(t: Tensor) -> Tensor:
    return torch.linalg.vector_norm(t.detach().reshape(t.shape[0], -1), dim=1)


def augmented_solve(
    f: DEQMap,
    loss: Objective,
    x0: Tensor,
    z0: Tensor,
    projection: Projection | None = None,
    config: AugmentedConfig | None = None,
    *,
    mu0: Tensor | None = None,
    counter: Counter | None = None,
) -> AugmentedResult:
    r"""Solve ``min_{x in C} loss(z*(x), x)`` with ``z*(x) = f(z*(x), x)`` by one joint fixed point.

    Args:
        f: DEQ layer ``f(z, x)``.
        loss: per-sample objective ``loss(z, x) -> (B,)``.
        x0: initial input ``(B, ...)``; projected onto ``C`` first.
        z0: initial equilibrium guess ``(B, ...)``.
        projection: ``P_C`` (``None``: unconstrained).
        config: :class:`AugmentedConfig`.
        mu0: initial adjoint (default zeros).
        counter: optional :class:`Counter`; ``f`` is counted through it (and ``x`` snapshots recorded).

    Returns:
        :class:`AugmentedResult` with the optimised input, equilibrium, adjoint and the three residuals.
    """
    cfg = config or AugmentedConfig()
    counter = counter if counter is not None else Counter()
    f_counted, loss_counted = counter.wrap(f), counter.wrap_loss(loss)
    nfe0, nvjp0, nloss0, t0 = counter.nfe, counter.nvjp, counter.nloss, time.perf_counter()
    x = x0 if projection is None else projection(x0)
    mu_s = torch.zeros_like(z0) if mu0 is None else mu0 / cfg.adjoint_scale
    state: tuple[Tensor, Tensor, Tensor] = (z0.detach(), x.detach() / cfg.input_scale, mu_s.detach())
    infos: list[FixedPointInfo] = []
    if cfg.settle_iters < 0 or not cfg.settle_tol > 0:
        raise ValueError(
            f"settle_iters must be nonnegative and settle_tol positive, got {cfg.settle_iters}, {cfg.settle_tol}"
        )
    if not cfg.step_size > 0 or any(not float(a) > 0 for a, _ in cfg.schedule):
        raise ValueError(f"step sizes must be positive, got {cfg.step_size} and schedule {cfg.schedule}")
    settle = [(0.0, cfg.settle_iters)] if cfg.settle_iters else []
    stages = settle + [(float(a), int(n)) for a, n in cfg.schedule] + [(cfg.step_size, cfg.max_iter)]
    solver = make_solver(cfg.solver, **cfg.solver_options)
    for i, (alpha, iters) in enumerate(stages):
        last = i == len(stages) - 1
        gmap = AugmentedMap(f_counted, loss_counted, alpha, projection, cfg.adjoint_scale, counter, cfg.input_scale)
        tol = cfg.settle_tol if (settle and i == 0) else cfg.tol
        kwargs = dict(tol=tol, max_iter=iters, stop_mode=cfg.stop_mode, divergence_factor=cfg.divergence_factor)
        if last:
            out, info = fixed_point(gmap, state, solver, cfg.backward, **kwargs)
        else:
            with torch.no_grad():
                out, info = fixed_point(gmap, state, solver, "jfb", **kwargs)
        state = tuple(out)  # type: ignore[assignment]
        infos.append(info)
    wall = time.perf_counter() - t0
    nfe, nvjp, nloss = counter.nfe - nfe0, counter.nvjp - nvjp0, counter.nloss - nloss0
    z, x_s, mu_s = state
    x = x_s * cfg.input_scale
    if projection is not None:
        # the solver returns a mixed (extrapolated) iterate; Anderson's affine combination of feasible points
        # may leave C, so return its projection (identical at an exact fixed point)
        x = projection(x)
    # diagnostics at the returned iterate (not counted)
    diag = AugmentedMap(f, loss, cfg.step_size, projection, cfg.adjoint_scale)
    with torch.no_grad():
        ev = diag.evaluate(z.detach(), x.detach(), mu_s.detach() * cfg.adjoint_scale)
    mu = mu_s.detach() * cfg.adjoint_scale
    jac = None
    if cfg.jacobian_penalty is not None and torch.is_grad_enabled():
        z_in = z.detach().requires_grad_()
        jac = cfg.jacobian_penalty(f(z_in, x.detach()), z_in, 0)
    return AugmentedResult(
        x=x,
        z=z,
        mu=mu,
        objective=ev.loss,
        deq_residual=_bnorm(ev.fz - z),
        adjoint_residual=_bnorm(ev.mu_next - mu),
        grad_norm=_bnorm(ev.grad_x),
        optimality_residual=_bnorm(x.detach() - ev.x_next) / cfg.step_size,
        info=infos[-1],
        infos=infos,
        nfe=nfe,
        nvjp=nvjp,
        wall_time=wall,
        jacobian_loss=jac,
        nloss=nloss,
    )


# ----------------------------------------------------------------------------------------------------------
# naive nested baseline


@dataclass
class NaiveConfig:
    """Options of :func:`naive_solve` (outer optimiser over ``x``, a full DEQ solve + implicit backward per step).

    Attributes:
        optimizer: ``"adam"``, ``"gd"`` (projected gradient descent) or ``"normalized"`` (L2-normalised
            per-sample steps ``x - lr g / ||g||``, the usual PGD attack step).
        lr: learning rate (GD: the step size ``alpha``).
        steps: outer steps.
        solver, solver_options: forward solver of each inner DEQ solve.
        inner_tol, inner_max_iter: forward stopping rule; backward_tol, backward_max_iter: adjoint solve.
        warm_start: start each inner solve from the previous equilibrium (and adjoint) instead of ``z0``.
        grad_tol: stop early when ``||grad L||`` of every sample is at most this (0: run all steps).
        betas: Adam's ``(beta1, beta2)``.
    """

    optimizer: str = "adam"
    lr: float = 0.05
    steps: int = 200
    solver: str | FixedPointSolver = "anderson"
    solver_options: dict[str, Any] = field(default_factory=dict)
    inner_tol: float = 1e-4
    inner_max_iter: int = 50
    backward_tol: float = 1e-4
    backward_max_iter: int = 50
    warm_start: bool = True
    grad_tol: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)


@dataclass
class NaiveResult:
    """Result of :func:`naive_solve`: final input and equilibrium (detached), per-step objectives and costs
    (``nloss``: objective evaluations, one per outer step)."""

    x: Tensor
    z: Tensor
    objective: Tensor
    grad_norm: Tensor
    history: list[float]
    steps: int
    nfe: int
    nvjp: int
    wall_time: float
    nloss: int = 0


def input_gradient(
    f: DEQMap,
    loss: Objective,
    x: Tensor,
    z0: Tensor,
    *,
    solver: str | FixedPointSolver = "anderson",
    tol: float = 1e-4,
    max_iter: int = 50,
    backward_tol: float = 1e-4,
    backward_max_iter: int = 50,
    mu0: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(L(x), grad L(x), z*(x), mu)`` per sample by a full DEQ solve and the implicit (adjoint) backward.

    ``mu0`` warm-starts the adjoint solve. Returns detached tensors.
    """
    from fpntools.backward import Implicit

    bwd = Implicit(solver=solver if isinstance(solver, str) else "anderson", tol=backward_tol, max_iter=backward_max_iter)
    if mu0 is not None:
        bwd.warm_start = True
        bwd._last = mu0.detach().reshape(mu0.shape[0], -1)
    xx = x.detach().requires_grad_()
    with torch.enable_grad():
        z, _ = fixed_point(lambda z: f(z, xx), z0.detach(), solver, bwd, tol=tol, max_iter=max_iter, divergence_factor=None)
        lval = loss(z, xx)
        (g,) = torch.autograd.grad(lval.sum(), xx)
    mu = bwd._last if bwd._last is not None else torch.zeros_like(z)
    return lval.detach(), g.detach(), z.detach(), mu.detach().reshape(z.shape)


def naive_solve(
    f: DEQMap,
    loss: Objective,
    x0: Tensor,
    z0: Tensor,
    projection: Projection | None = None,
    config: NaiveConfig | None = None,
    *,
    counter: Counter | None = None,
) -> NaiveResult:
    """The nested baseline: ``x_{k+1} = P(opt_step(x_k, grad L(x_k)))`` with ``grad L`` from a full DEQ solve
    and an implicit backward at every step (costs counted through ``counter``)."""
    cfg = config or NaiveConfig()
    if cfg.optimizer not in ("adam", "gd", "normalized"):
        raise ValueError(f"optimizer must be 'adam', 'gd' or 'normalized', got {cfg.optimizer!r}")
    counter = counter if counter is not None else Counter()
    fc, loss_counted = counter.wrap(f), counter.wrap_loss(loss)
    nfe0, nvjp0, nloss0, t0 = counter.nfe, counter.nvjp, counter.nloss, time.perf_counter()
    solver = make_solver(cfg.solver, **cfg.solver_options)
    x = (x0 if projection is None else projection(x0)).detach().clone()
    z = z0.detach()
    mu: Tensor | None = None
    m = torch.zeros_like(x)
    v = torch.zeros_like(x)
    b1, b2 = cfg.betas
    history: list[float] = []
    lval = g = None
    k = 0
    for k in range(1, cfg.steps + 1):
        counter.snapshot(x, force=counter.record_every > 0)
        lval, g, z_new, mu_new = input_gradient(
            fc, loss_counted, x, z, solver=solver, tol=cfg.inner_tol, max_iter=cfg.inner_max_iter,
            backward_tol=cfg.backward_tol, backward_max_iter=cfg.backward_max_iter,
            mu0=mu if cfg.warm_start else None,
        )
        if cfg.warm_start:
            z, mu = z_new, mu_new
        history.append(float(lval.sum()))
        if cfg.grad_tol > 0 and bool((_bnorm(g) <= cfg.grad_tol).all()):
            break
        if cfg.optimizer == "gd":
            x = x - cfg.lr * g
        elif cfg.optimizer == "normalized":
            gn = _bnorm(g).clamp_min(1e-12).reshape(-1, *([1] * (g.dim() - 1)))
            x = x - cfg.lr * g / gn
        else:
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            mhat = m / (1 - b1**k)
            vhat = v / (1 - b2**k)
            x = x - cfg.lr * mhat / (vhat.sqrt() + 1e-8)
        if projection is not None:
            x = projection(x)
    wall = time.perf_counter() - t0
    counter.snapshot(x, force=counter.record_every > 0)
    assert lval is not None and g is not None
    return NaiveResult(
        x=x, z=z_new, objective=lval, grad_norm=_bnorm(g), history=history, steps=k,
        nfe=counter.nfe - nfe0, nvjp=counter.nvjp - nvjp0, wall_time=wall, nloss=counter.nloss - nloss0,
    )


# ----------------------------------------------------------------------------------------------------------
# evaluation helpers


def solve_equilibrium(
    f: DEQMap, x: Tensor, z0: Tensor, *, tol: float = 1e-6, max_iter: int = 200, solver: str | FixedPointSolver = "anderson"
) -> Tensor:
    """``z*(x)`` (detached) by an accurate forward solve."""
    with torch.no_grad():
        z, _ = fixed_point(lambda z: f(z, x), z0, solver, "jfb", tol=tol, max_iter=max_iter, divergence_factor=None)
    return z


def true_objective(f: DEQMap, loss: Objective, x: Tensor, z0: Tensor, **solve_options: Any) -> Tensor:
    """``L(x) = loss(z*(x), x)`` per sample with an accurate equilibrium (for fair offline comparisons)."""
    z = solve_equilibrium(f, x, z0, **solve_options)
    with torch.no_grad():
        return loss(z, x)


def time_to_reach(
    snapshots: Sequence[Snapshot], values: Sequence[float], target: float
) -> tuple[float, int, int] | None:
    """First ``(time, nfe, nvjp)`` among ``snapshots`` whose objective ``values`` is at most ``target``."""
    for s, v in zip(snapshots, values):
        if math.isfinite(v) and v <= target:
            return s.time, s.nfe, s.nvjp
    return None
