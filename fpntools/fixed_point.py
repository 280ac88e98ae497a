"""The functional entry point :func:`fixed_point` and the :class:`FixedPoint` module."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn

from fpntools.backward import BackwardMode, make_backward
from fpntools.info import FixedPointError, FixedPointInfo, Status
from fpntools.solvers import FixedPointSolver, make_solver
from fpntools.state import State, StateSpec

__all__ = ["fixed_point", "FixedPoint"]


def fixed_point(
    f: Callable[[State], State],
    z0: State,
    solver: str | FixedPointSolver = "anderson",
    backward: str | BackwardMode = "implicit",
    tol: float = 1e-4,
    max_iter: int = 50,
    *,
    stop_mode: str = "rel",
    trace: bool = False,
    raise_on_failure: bool = False,
    divergence_factor: float | None = 1e3,
    **options: Any,
) -> tuple[State, FixedPointInfo]:
    """Solve ``z* = f(z*)`` from ``z0`` and make ``z*`` differentiable by the chosen backward mode.

    Args:
        f: maps a state (a tensor, or a tuple/list of tensors, batched along dim 0) to a state of the same
            structure, shapes and dtype. Parameters and tensors captured by ``f`` receive gradients.
        z0: initial state; floating point and finite.
        solver: ``"picard" | "km" | "anderson" | "broyden"`` or a solver object.
        backward: ``"implicit" | "implicit_cg" | "jfb" | "phantom" | "unroll"`` or a backward-mode object.
        tol, max_iter, stop_mode: a sample stops when its ``stop_mode`` residual (``"rel"``:
            ``||f(z)-z|| / ||f(z)||``, ``"abs"``: ``||f(z)-z||``) is at most ``tol``; at most ``max_iter``
            evaluations of ``f``.
        trace: keep the per-iteration residuals in ``info.trace``.
        raise_on_failure: raise :class:`FixedPointError` instead of returning a non-converged result.
        divergence_factor: a sample whose absolute residual exceeds this multiple of its first residual is
            stopped with status ``DIVERGED`` (``None`` disables the test).
        **options: solver options when ``solver`` is a name (``m=6`` for Anderson, ``alpha=0.5`` for KM).

    Returns:
        ``(z, info)``: ``z`` has ``z0``'s structure and the value of the best iterate (the fixed point when
        converged); ``info`` is a :class:`FixedPointInfo`.
    """
    spec = StateSpec.of(z0)
    solver_obj = make_solver(solver, **options)
    backward_obj = make_backward(backward)

    def g(flat: Tensor) -> Tensor:
        out = f(spec.unflatten(flat))
        spec.check(out, "f(z)")
        return spec.flatten(out)

    flat0 = spec.flatten(z0)
    unrolled = backward_obj.needs_forward_graph and torch.is_grad_enabled()
    kwargs = dict(tol=tol, max_iter=max_iter, stop_mode=stop_mode, trace=trace, divergence_factor=divergence_factor)
    if unrolled:
        result = solver_obj.solve(g, flat0, **kwargs)
    else:
        with torch.no_grad():
            result = solver_obj.solve(g, flat0.detach(), **kwargs)
    info = FixedPointInfo(
        steps=result.steps,
        abs_residual=result.abs_residual,
        rel_residual=result.rel_residual,
        converged=result.converged,
        sample_status=result.sample_status,
        status=Status(result.worst_status if result.worst_status >= 0 else int(result.sample_status.max())),
        nfe=result.nfe,
        solver=solver_obj.name,
        tol=tol,
        stop_mode=stop_mode,
        trace=result.trace,
    )
    if raise_on_failure and info.status != Status.CONVERGED:
        raise FixedPointError(info)
    z = result.z
    if torch.is_grad_enabled() and not unrolled:
        z = backward_obj.attach(g, z, info)
    return spec.unflatten(z), info


class FixedPoint(nn.Module):
    """Turn a layer ``z = layer(z, *inputs)`` into an equilibrium (implicit-depth) module.

    ``FixedPoint(layer, solver="anderson", backward="implicit", tol=1e-4, max_iter=50, **options)``;
    ``forward(*inputs, z0=None)`` returns ``(z*, info)``. Without ``z0``, ``layer.initial_state(*inputs)``
    gives the initial state. ``eval_tol`` / ``eval_max_iter`` (default: the training values) apply in eval
    mode. ``jacobian_penalty`` (a :class:`fpntools.regularization.JacobianPenalty`) adds the Hutchinson
    estimate of ``||J_f(z*)||_F^2`` as ``info.jacobian_loss`` during training.
    """

    def __init__(
        self,
        layer: nn.Module,
        solver: str | FixedPointSolver = "anderson",
        backward: str | BackwardMode = "implicit",
        tol: float = 1e-4,
        max_iter: int = 50,
        *,
        eval_tol: float | None = None,
        eval_max_iter: int | None = None,
        jacobian_penalty: Any = None,
        **options: Any,
    ) -> None:
        super().__init__()
        self.layer = layer
        self.solver = make_solver(solver, **{k: v for k, v in options.items() if k not in _LOOP_OPTIONS})
        self.backward_mode = make_backward(backward)
        self.loop_options = {k: v for k, v in options.items() if k in _LOOP_OPTIONS}
        self.tol, self.max_iter = tol, max_iter
        self.eval_tol = tol if eval_tol is None else eval_tol
        self.eval_max_iter = max_iter if eval_max_iter is None else eval_max_iter
        self.jacobian_penalty = jacobian_penalty
        # training steps seen by the penalty schedule; a buffer so checkpoints resume the schedule exactly
        self.register_buffer("penalty_step", torch.zeros((), dtype=torch.long))

    def forward(self, *inputs: Any, z0: State | None = None) -> tuple[State, FixedPointInfo]:
        if z0 is None:
            init = getattr(self.layer, "initial_state", None)
            if init is None:
                raise ValueError(
                    f"{type(self.layer).__name__} has no initial_state(*inputs); pass z0= to FixedPoint.forward"
                )
            z0 = init(*inputs)
        tol, max_iter = (self.tol, self.max_iter) if self.training else (self.eval_tol, self.eval_max_iter)
        z, info = fixed_point(
            lambda z: self.layer(z, *inputs), z0, self.solver, self.backward_mode, tol, max_iter, **self.loop_options
        )
        if self.jacobian_penalty is not None and self.training and torch.is_grad_enabled():
            info.jacobian_loss = self._jacobian_loss(z, inputs)
        return z, info

    def _jacobian_loss(self, z: State, inputs: tuple) -> Tensor:
        spec = StateSpec.of(z, "z*")
        z_in = spec.unflatten(spec.flatten(z).detach().requires_grad_())
        fz = self.layer(z_in, *inputs)
        loss = self.jacobian_penalty(fz, z_in, int(self.penalty_step))
        self.penalty_step += 1
        return loss

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):  # type: ignore[override]
        # weights saved without the schedule counter (e.g. shipped inference weights) load with the counter at 0
        state_dict.setdefault(prefix + "penalty_step", torch.zeros((), dtype=torch.long))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)


_LOOP_OPTIONS = frozenset({"stop_mode", "trace", "raise_on_failure", "divergence_factor"})
