"""Operator-splitting schemes written as fixed-point maps ``T(state) -> state`` (``nn.Module``).

Each scheme minimises a sum of convex functions given through their proximal maps (any callable
``prox(v, tau) = argmin_x g(x) + ||x - v||^2 / (2 tau)``, e.g. :mod:`fpntools.operators.prox` or a
projection) and gradients. Its fixed points encode the minimisers, and :meth:`solution` reads the primal
solution off a fixed point. The maps are plain differentiable torch code, so they can be handed to any
fixed-point solver (``fpntools.fixed_point(T, z0, ...)``) or iterated with :func:`iterate`.

States are tensors batched along dim 0, except :class:`PDHG`, whose state is the tuple ``(x, y)``.

Steps and relaxations must satisfy the usual conditions (stated per class) for the iteration to converge;
they are not checked.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Union

import torch
from torch import Tensor, nn

from fpntools.operators.linear import LinearOperator

__all__ = ["ForwardBackward", "DouglasRachford", "DavisYin", "PDHG", "iterate", "State"]

State = Union[Tensor, tuple[Tensor, ...], list[Tensor]]
ProxFn = Callable[..., Tensor]
GradFn = Callable[[Tensor], Tensor]


def _check_callable(f: Any, name: str, cls: str) -> None:
    if not callable(f):
        raise TypeError(f"{cls}: {name} must be callable, got {type(f).__name__}")


def _check_positive(v: float, name: str, cls: str) -> float:
    v = float(v)
    if not v > 0:
        raise ValueError(f"{cls}: {name} must be > 0, got {v}")
    return v


class ForwardBackward(nn.Module):
    """Forward-backward (proximal gradient) for ``min_x f(x) + g(x)``, ``f`` convex with ``L``-Lipschitz gradient.

    ``T(x) = x + lambda (prox_{gamma g}(x - gamma grad f(x)) - x)``

    Fixed points are exactly the minimisers; ``solution(x) = x``. Converges for ``0 < gamma < 2/L`` and
    ``0 < lambda < 2 - gamma L / 2`` (the map ``prox o (I - gamma grad f)`` is ``2/(4 - gamma L)``-averaged).

    Args:
        grad_f: ``x -> grad f(x)`` (batched).
        prox_g: ``(v, tau) -> prox_{tau g}(v)``.
        step: ``gamma``.
        relax: ``lambda`` (1: plain proximal gradient).
    """

    def __init__(self, grad_f: GradFn, prox_g: ProxFn, step: float, relax: float = 1.0) -> None:
        super().__init__()
        _check_callable(grad_f, "grad_f", "ForwardBackward")
        _check_callable(prox_g, "prox_g", "ForwardBackward")
        self.grad_f = grad_f
        self.prox_g = prox_g
        self.step = _check_positive(step, "step", "ForwardBackward")
        self.relax = _check_positive(relax, "relax", "ForwardBackward")

    def forward(self, x: Tensor) -> Tensor:
        x_new = self.prox_g(x - self.step * self.grad_f(x), self.step)
        return x_new if self.relax == 1.0 else x + self.relax * (x_new - x)

    def solution(self, x: Tensor) -> Tensor:
        """The minimiser at a fixed point: ``x`` itself."""
        return x

    def initial_state(self, x0: Tensor) -> Tensor:
        return x0


class DouglasRachford(nn.Module):
    """Douglas-Rachford splitting for ``min_x f(x) + g(x)`` (both convex, proper, lsc).

    ``x = prox_{gamma f}(z)``, ``y = prox_{gamma g}(2 x - z)``, ``T(z) = z + lambda (y - x)``.

    At a fixed point ``z*``, ``x* = prox_{gamma f}(z*)`` minimises ``f + g`` (``solution(z)``). Converges for
    any ``gamma > 0`` and ``0 < lambda < 2`` (``T`` is ``lambda/2``-averaged).
    """

    def __init__(self, prox_f: ProxFn, prox_g: ProxFn, gamma: float = 1.0, relax: float = 1.0) -> None:
        super().__init__()
        _check_callable(prox_f, "prox_f", "DouglasRachford")
        _check_callable(prox_g, "prox_g", "DouglasRachford")
        self.prox_f = prox_f
        self.prox_g = prox_g
        self.gamma = _check_positive(gamma, "gamma", "DouglasRachford")
        self.relax = _check_positive(relax, "relax", "DouglasRachford")

    def forward(self, z: Tensor) -> Tensor:
        x = self.prox_f(z, self.gamma)
        y = self.prox_g(2.0 * x - z, self.gamma)
        return z + self.relax * (y - x)

    def solution(self, z: Tensor) -> Tensor:
        """``prox_{gamma f}(z)``."""
        return self.prox_f(z, self.gamma)

    def initial_state(self, x0: Tensor) -> Tensor:
        return x0


class DavisYin(nn.Module):
    """Davis-Yin three-operator splitting for ``min_x f(x) + g(x) + h(x)``, ``h`` with ``L``-Lipschitz gradient.

    ``x_g = prox_{gamma g}(z)``,
    ``x_f = prox_{gamma f}(2 x_g - z - gamma grad h(x_g))``,
    ``T(z) = z + lambda (x_f - x_g)``.

    At a fixed point, ``x_g = x_f = prox_{gamma g}(z*)`` is a minimiser (``solution(z)``). Converges for
    ``0 < gamma < 2/L`` and ``0 < lambda < 2 - gamma L / 2`` (Davis and Yin 2017). ``h = 0`` gives
    Douglas-Rachford (with the roles ``f``/``g`` swapped), ``g = 0`` forward-backward.
    """

    def __init__(
        self, prox_f: ProxFn, prox_g: ProxFn, grad_h: GradFn, step: float, relax: float = 1.0
    ) -> None:
        super().__init__()
        for f, name in ((prox_f, "prox_f"), (prox_g, "prox_g"), (grad_h, "grad_h")):
            _check_callable(f, name, "DavisYin")
        self.prox_f = prox_f
        self.prox_g = prox_g
        self.grad_h = grad_h
        self.step = _check_positive(step, "step", "DavisYin")
        self.relax = _check_positive(relax, "relax", "DavisYin")

    def forward(self, z: Tensor) -> Tensor:
        xg = self.prox_g(z, self.step)
        xf = self.prox_f(2.0 * xg - z - self.step * self.grad_h(xg), self.step)
        return z + self.relax * (xf - xg)

    def solution(self, z: Tensor) -> Tensor:
        """``prox_{gamma g}(z)``."""
        return self.prox_g(z, self.step)

    def initial_state(self, x0: Tensor) -> Tensor:
        return x0


class PDHG(nn.Module):
    """Primal-dual hybrid gradient (Chambolle-Pock) for ``min_x f(K x) + g(x)``, i.e. the saddle problem
    ``min_x max_y <K x, y> - f*(y) + g(x)``. State ``(x, y)``:

    ``x+ = prox_{tau g}(x - tau K^T y)``,
    ``y+ = prox_{sigma f*}(y + sigma K (x+ + theta (x+ - x)))``.

    Converges for ``theta = 1`` and ``tau sigma ||K||^2 < 1`` (``K.norm()`` estimates ``||K||``). At a fixed
    point ``x*`` minimises the primal problem and ``y*`` the dual; ``solution((x, y)) = x``. The prox of
    ``f*`` can be built from a prox of ``f`` with :func:`fpntools.operators.conjugate_prox`.

    Args:
        K: the :class:`LinearOperator`.
        prox_f_conj: ``(v, sigma) -> prox_{sigma f*}(v)`` on ``(B, *K.out_shape)``.
        prox_g: ``(v, tau) -> prox_{tau g}(v)`` on ``(B, *K.in_shape)``.
        tau, sigma: primal and dual steps. theta: extrapolation.
    """

    def __init__(
        self,
        K: LinearOperator,
        prox_f_conj: ProxFn,
        prox_g: ProxFn,
        tau: float,
        sigma: float,
        theta: float = 1.0,
    ) -> None:
        super().__init__()
        if not isinstance(K, LinearOperator):
            raise TypeError(f"PDHG: K must be a LinearOperator, got {type(K).__name__}")
        _check_callable(prox_f_conj, "prox_f_conj", "PDHG")
        _check_callable(prox_g, "prox_g", "PDHG")
        self.K = K
        self.prox_f_conj = prox_f_conj
        self.prox_g = prox_g
        self.tau = _check_positive(tau, "tau", "PDHG")
        self.sigma = _check_positive(sigma, "sigma", "PDHG")
        self.theta = float(theta)

    def forward(self, state: tuple[Tensor, Tensor] | list[Tensor]) -> tuple[Tensor, Tensor]:
        if not isinstance(state, (tuple, list)) or len(state) != 2:
            raise TypeError("PDHG: the state must be a pair (x, y)")
        x, y = state
        x_new = self.prox_g(x - self.tau * self.K.A_adjoint(y), self.tau)
        x_bar = x_new + self.theta * (x_new - x) if self.theta != 0 else x_new
        y_new = self.prox_f_conj(y + self.sigma * self.K.A(x_bar), self.sigma)
        return x_new, y_new

    def solution(self, state: tuple[Tensor, Tensor] | list[Tensor]) -> Tensor:
        """The primal part ``x`` of the state."""
        return state[0]

    def initial_state(self, x0: Tensor, y0: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(x0, y0)`` with ``y0 = 0`` of shape ``(B, *K.out_shape)`` by default."""
        if y0 is None:
            y0 = x0.new_zeros((x0.shape[0], *self.K.out_shape))
        return x0, y0


def _flat(state: State) -> Tensor:
    if isinstance(state, Tensor):
        return state.reshape(state.shape[0], -1)
    return torch.cat([s.reshape(s.shape[0], -1) for s in state], dim=1)


@torch.no_grad()
def iterate(T: Callable[[Any], Any], z0: State, n: int, tol: float | None = None) -> State:
    """Plain (Picard) iteration ``z_{k+1} = T(z_k)`` for at most ``n`` steps, without autograd.

    Stops early when ``tol`` is given and ``max_b ||z_{k+1} - z_k|| / max(||z_{k+1}||, 1e-12) <= tol``
    (norms per sample over all state tensors). Works for tensor and tuple/list states.
    """
    z = z0
    for _ in range(int(n)):
        z_new = T(z)
        if tol is not None:
            a, b = _flat(z_new), _flat(z)
            rel = (a - b).norm(dim=1) / a.norm(dim=1).clamp_min(1e-12)
            z = z_new
            if bool((rel <= tol).all()):
                break
        else:
            z = z_new
    return z
