"""BPR link costs, their derivatives and the Beckmann potential: one definition for numpy and torch.

For a link ``a`` with free-flow time ``t0``, BPR coefficient ``b``, capacity ``c``, power ``p`` and a
flow-independent generalised cost ``k`` (tolls, distance), with the capacity ratio ``r = max(x, 0) / c``:

    t_a(x)   = t0 (1 + b r^p) + k
    t'_a(x)  = t0 b p r^(p-1) / c
    T_a(x)   = int_0^x t_a(s) ds = t0 x + t0 b c r^(p+1) / (p + 1) + k x

The Beckmann objective ``B(x) = sum_a T_a(x_a)`` is convex; its minimisers over the feasible link flows are
the user (Wardrop) equilibria.  Negative flows (rounding) are clipped to 0; on links with ``b = 0`` the cost
is the constant ``t0 + k`` whatever the capacity (``r`` is taken as 0 there).

:func:`bpr`, :func:`bpr_derivative` and :func:`bpr_integral` work on numpy arrays and on torch tensors alike
(array-API style: only arithmetic, ``where`` and a clamp at 0, dispatched on the type of the inputs; torch is
not imported for numpy inputs), so the equilibrium solver (numpy, :class:`BPRCost`) and the N-FPN
(torch, autograd through ``x``, ``t0`` and ``c``) evaluate the same formulas.  The ratio form keeps the
numbers representable for large powers (``t0 b / c^p`` underflows to 0 for ``c = 5000, p = 100`` while
``(x / c)^p`` does not); :meth:`BPRCost.check_range` reports links whose cost still overflows over the flows
that can occur.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable

import numpy as np

__all__ = ["bpr", "bpr_derivative", "bpr_integral", "BPRCost", "CostRangeError"]


class CostRangeError(ValueError):
    """A link's BPR cost is negative or not representable (overflow, NaN) over the flows that can occur."""

    def __init__(self, message: str, link: int) -> None:
        super().__init__(message)
        self.link = link


def _xp(*arrays: Any) -> ModuleType:
    """The array namespace of the inputs: torch when any is a torch tensor, numpy otherwise."""
    for a in arrays:
        if type(a).__module__.partition(".")[0] == "torch":
            import torch

            return torch
    return np


def _asarray(xp: ModuleType, a: Any, like: Any = None) -> Any:
    if xp is np:
        return np.asarray(a, dtype=np.float64)
    if isinstance(a, xp.Tensor):
        return a
    return xp.as_tensor(a, dtype=like.dtype if like is not None else xp.float64,
                        device=like.device if like is not None else None)


def _relu(xp: ModuleType, x: Any) -> Any:
    return np.maximum(x, 0.0) if xp is np else x.clamp(min=0.0)


def _pow(r: Any, p: Any) -> Any:
    """``r ** p``; for the usual BPR power 4 (and 3, 5: its derivative and integral) by multiplications."""
    if isinstance(p, (int, float)) and p in (3.0, 4.0, 5.0):
        r2 = r * r
        return r2 * r if p == 3.0 else (r2 * r2 if p == 4.0 else r2 * r2 * r)
    return r**p


def _args(x: Any, t0: Any, b: Any, c: Any, p: Any) -> tuple:
    """Namespace, clipped flows, ``t0``, ``b``, safe capacity, power and the ratio ``r`` (0 where ``b = 0``)."""
    xp = _xp(x, t0, b, c, p)
    x = _relu(xp, _asarray(xp, x))
    t0, b, c = (_asarray(xp, v, x) for v in (t0, b, c))
    if not isinstance(p, (int, float)):
        p = _asarray(xp, p, x)
    active = (b > 0) & (t0 > 0)  # other links have the constant cost t0 + k
    c_safe = xp.where(active, c, 1.0) if xp is np else xp.where(active, c, xp.ones_like(c))
    r = xp.where(active, x / c_safe, 0.0) if xp is np else xp.where(active, x / c_safe, xp.zeros_like(x))
    return xp, x, t0, b, c_safe, p, r


# The three formulas, in terms of the capacity ratio r (the one definition; the entry points below and
# BPRCost only prepare r and the link parameters).


def _cost(r, a, tb, p):
    """``t = a + tb r^p`` with ``a = t0 + k`` and ``tb = t0 b``."""
    return a + tb * _pow(r, p)


def _cost_derivative(r, coef, p):
    """``t' = coef r^(p-1)`` with ``coef = t0 b p / c``."""
    return coef * _pow(r, p - 1.0)


def _cost_integral(x, r, a, tb, c, p):
    """``T = a x + tb c r^(p+1) / (p+1)``."""
    return a * x + tb * c * _pow(r, p + 1.0) / (p + 1.0)


def bpr(x, t0, b, c, p, k=0.0):
    """``t(x) = t0 (1 + b (x/c)^p) + k`` elementwise (numpy or torch)."""
    _, _, t0, b, _, p, r = _args(x, t0, b, c, p)
    return _cost(r, t0 + k, t0 * b, p)


def bpr_derivative(x, t0, b, c, p):
    """``t'(x) = t0 b p (x/c)^(p-1) / c`` (0 where ``b p = 0``; ``+inf`` at ``x = 0`` when ``p < 1``)."""
    xp, _, t0, b, c, p, r = _args(x, t0, b, c, p)
    active = (b > 0) & (t0 > 0)
    if not isinstance(p, (int, float)):
        active = active & (p > 0)
    elif p <= 0:
        active = active & False
    if xp is np:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(active, _cost_derivative(r, t0 * b * p / c, p), 0.0)
    return xp.where(active, _cost_derivative(r, t0 * b * p / c, p), xp.zeros_like(r))


def bpr_integral(x, t0, b, c, p, k=0.0):
    """``T(x) = int_0^x t(s) ds = t0 x + t0 b c (x/c)^(p+1) / (p+1) + k x`` elementwise (numpy or torch)."""
    _, x, t0, b, c, p, r = _args(x, t0, b, c, p)
    return _cost_integral(x, r, t0 + k, t0 * b, c, p)


@dataclass
class BPRCost:
    """The BPR costs of a network's links (formulas: :func:`bpr`, :func:`bpr_derivative`, :func:`bpr_integral`),
    with the methods the equilibrium solver needs (subsets of links, directional derivatives for line
    searches, the Beckmann objective).  Build with :meth:`from_network`.  numpy, float64.
    """

    t0: np.ndarray
    b: np.ndarray
    capacity: np.ndarray
    power: np.ndarray
    fixed: np.ndarray

    def __post_init__(self) -> None:
        self.t0 = np.asarray(self.t0, dtype=np.float64)
        self.b = np.asarray(self.b, dtype=np.float64)
        self.capacity = np.asarray(self.capacity, dtype=np.float64)
        self.power = np.asarray(self.power, dtype=np.float64)
        self.fixed = np.broadcast_to(np.asarray(self.fixed, dtype=np.float64), self.t0.shape).copy()
        if np.any((self.b > 0) & ~(self.capacity > 0)):
            raise ValueError("capacity must be positive on links with b > 0")
        active = (self.b > 0) & (self.t0 > 0)  # other links: constant cost t0 + k
        uniq = np.unique(self.power[active]) if active.any() else np.array([1.0])
        # one power for all links: pass it as a float (the p = 4 path multiplies instead of calling pow)
        self._p: np.ndarray | float = float(uniq[0]) if uniq.size == 1 else self.power
        self._c = np.where(active, self.capacity, 1.0)
        self._inv_c = np.where(active, 1.0 / self._c, 0.0)  # r = x / c on active links, 0 elsewhere
        slope = active & (self.power > 0)
        self._tb = np.where(slope, self.t0 * self.b, 0.0)  # t0 b where t' can be non-zero
        self._a = self.t0 + self.fixed
        self._pic = self.power * self._inv_c  # p / c
        self._coef = self._tb * self._pic  # t0 b p / c
        self._mask_dp = bool(np.any(slope & (self.power < 1)))  # t' = inf at x = 0 possible

    @classmethod
    def from_network(cls, network, capacity: np.ndarray | None = None) -> "BPRCost":
        cap = network.capacity if capacity is None else np.asarray(capacity, dtype=np.float64)
        return cls(t0=network.free_flow_time, b=network.b, capacity=cap, power=network.power,
                   fixed=network.fixed_cost)

    def _ratio(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = np.maximum(x, 0.0)
        return x, x * self._inv_c

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Link costs ``t(x)``."""
        return _cost(self._ratio(x)[1], self._a, self._tb, self._p)

    def derivative(self, x: np.ndarray) -> np.ndarray:
        """Diagonal Jacobian ``t'(x)`` (0 on links with ``b p = 0``)."""
        r = self._ratio(x)[1]
        if not self._mask_dp:
            return _cost_derivative(r, self._coef, self._p)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self._tb > 0, _cost_derivative(r, self._coef, self._p), 0.0)

    def integral(self, x: np.ndarray) -> np.ndarray:
        """Per-link Beckmann terms ``T_a(x_a)``."""
        x, r = self._ratio(x)
        return _cost_integral(x, r, self._a, self._tb, self._c, self._p)

    def directional(self, x: np.ndarray, d: np.ndarray, a: float) -> tuple[float, float]:
        """``(g, h)`` with ``g = t(x + a d) . d`` and ``h = (t'(x + a d) d) . d``: first and second derivative
        of ``a -> B(x + a d)`` (used by exact line searches)."""
        if self._mask_dp:
            y = x + a * d
            return float(self(y) @ d), float((self.derivative(y) * d) @ d)
        # _cost and _cost_derivative arranged to share w = tb r^(p-1) d (line searches call this ~10^5 times
        # per solve): t . d = a . d + w . r and t' d . d = (w p / c) . d
        r = self._ratio(x + a * d)[1]
        w = self._tb * _pow(r, self._p - 1.0) * d
        return float(self._a @ d + w @ r), float((w * self._pic) @ d)

    def beckmann(self, x: np.ndarray) -> float:
        """Beckmann objective ``B(x) = sum_a T_a(x_a)``."""
        return float(np.sum(self.integral(x)))

    def subset(self, idx: np.ndarray) -> "BPRCost":
        """Costs of the links ``idx`` only (for line searches on a few links)."""
        out = object.__new__(BPRCost)
        out.t0, out.b, out.capacity, out.power, out.fixed = (self.t0[idx], self.b[idx], self.capacity[idx],
                                                             self.power[idx], self.fixed[idx])
        out._p = self._p if isinstance(self._p, float) else self._p[idx]
        out._c, out._inv_c, out._tb, out._a = self._c[idx], self._inv_c[idx], self._tb[idx], self._a[idx]
        out._coef, out._pic = self._coef[idx], self._pic[idx]
        out._mask_dp = self._mask_dp
        return out

    def check_range(self, max_flow: float, label: Callable[[int], str] | None = None) -> None:
        """Raise :class:`CostRangeError` naming the first link whose cost is negative at zero flow, or whose
        cost, derivative or Beckmann term is not finite for some flow in ``[0, max_flow]`` (with
        ``max_flow`` the total demand, no link of a loop-free assignment carries more).

        The quantities the solver forms are checked at ``max_flow`` with the margin of the sums it takes:
        ``t(X) X L``, ``t'(X) X^2 L`` and ``T(X) L`` (``L`` links) must be finite, so no total system travel
        time, line-search curvature or objective overflows.  ``label(a)`` names link ``a`` in messages (default
        ``"link a+1"``; :meth:`problems.traffic.tntp.Network.link_label`)."""
        L = self.t0.size
        label = label if label is not None else (lambda a: f"link {a + 1}")
        with np.errstate(all="ignore"):
            t_zero = self(np.zeros(L))
            bad = np.flatnonzero(~np.isfinite(t_zero) | (t_zero < 0))
            if bad.size:
                a = int(bad[0])
                raise CostRangeError(
                    f"{label(a)}: generalised cost at zero flow is {t_zero[a]:g} (free-flow time "
                    f"{self.t0[a]:g} + toll/distance cost {self.fixed[a]:g}); link costs must be finite and >= 0",
                    a)
            X = np.full(L, float(max_flow))
            checks = ((self(X) * X * L, "cost"), (self.derivative(X) * X * X * L, "cost derivative"),
                      (self.integral(X) * L, "Beckmann term"))
            for val, what in checks:
                bad = np.flatnonzero(~np.isfinite(val))
                if bad.size:
                    a = int(bad[0])
                    raise CostRangeError(
                        f"{label(a)}: BPR {what} overflows at flow {max_flow:g} (the total demand), with "
                        f"capacity {self.capacity[a]:g}, power {self.power[a]:g}, b {self.b[a]:g}; "
                        "check the link's data", a)
