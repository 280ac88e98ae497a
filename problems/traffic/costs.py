"""BPR link costs, their derivatives and the Beckmann potential.

For a link ``a`` with free-flow time ``t0``, BPR coefficient ``b``, capacity ``c``, power ``p`` and a
flow-independent generalised cost ``k`` (tolls, distance):

    t_a(x)   = t0 (1 + b (x / c)^p) + k
    t'_a(x)  = t0 b p x^(p-1) / c^p
    T_a(x)   = int_0^x t_a(s) ds = t0 x + t0 b c (x / c)^(p+1) / (p + 1) + k x

The Beckmann objective ``B(x) = sum_a T_a(x_a)`` is convex; its minimisers over the feasible link flows are
the user (Wardrop) equilibria.  Negative flows (rounding) are clipped to 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["bpr", "bpr_derivative", "bpr_integral", "BPRCost"]


def _ratio(x: np.ndarray, c: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``x / c`` where ``b > 0`` (``c > 0`` there), 0 elsewhere; negative flows clipped."""
    x = np.maximum(np.asarray(x, dtype=np.float64), 0.0)
    safe = np.where(b > 0, c, 1.0)
    return np.where(b > 0, x / safe, 0.0)


def bpr(x, t0, b, c, p, k=0.0) -> np.ndarray:
    """``t(x) = t0 (1 + b (x/c)^p) + k`` elementwise."""
    b = np.asarray(b, dtype=np.float64)
    r = _ratio(x, np.asarray(c, dtype=np.float64), b)
    return t0 * (1.0 + b * r**p) + k


def bpr_derivative(x, t0, b, c, p) -> np.ndarray:
    """``t'(x) = t0 b p x^(p-1) / c^p`` (0 where ``b p = 0``; ``+inf`` at ``x = 0`` when ``p < 1``)."""
    b = np.asarray(b, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    c = np.asarray(c, dtype=np.float64)
    r = _ratio(x, c, b)
    active = (b > 0) & (p > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        val = t0 * b * p * r ** (p - 1.0) / np.where(active, c, 1.0)
    return np.where(active, val, 0.0)


def bpr_integral(x, t0, b, c, p, k=0.0) -> np.ndarray:
    """``T(x) = int_0^x t(s) ds = t0 x + t0 b c (x/c)^(p+1) / (p+1) + k x`` elementwise."""
    b = np.asarray(b, dtype=np.float64)
    c = np.asarray(c, dtype=np.float64)
    xx = np.maximum(np.asarray(x, dtype=np.float64), 0.0)
    r = _ratio(xx, c, b)
    return t0 * xx + t0 * b * np.where(b > 0, c, 0.0) * r ** (p + 1.0) / (p + 1.0) + k * xx


@dataclass
class BPRCost:
    """Vectorised BPR costs of a network's links (see the module docstring for the formulas).

    Internally ``t(x) = a + k x^p`` with ``a = t0 + fixed`` and ``k = t0 b / c^p`` (0 where ``b = 0``), which
    is cheap to evaluate on subsets of links (line searches).  Build with :meth:`from_network`.
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
        active = (self.b > 0) & (self.t0 > 0)
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
            k = self.t0 * self.b / np.where(active, self.capacity, 1.0) ** self.power
        self._a = self.t0 + self.fixed
        self._k = np.where(active, k, 0.0)
        self._p = self.power.copy()
        uniq = np.unique(self._p[active]) if active.any() else np.array([1.0])
        self._scalar_p = float(uniq[0]) if uniq.size == 1 else None

    @classmethod
    def from_network(cls, network, capacity: np.ndarray | None = None) -> "BPRCost":
        cap = network.capacity if capacity is None else np.asarray(capacity, dtype=np.float64)
        return cls(t0=network.free_flow_time, b=network.b, capacity=cap, power=network.power,
                   fixed=network.fixed_cost)

    def _pow(self, x: np.ndarray, q: np.ndarray | float) -> np.ndarray:
        if self._scalar_p == 4.0 and isinstance(q, float):
            x2 = x * x
            return x2 * x2 * (x ** (q - 4.0) if q != 4.0 else 1.0)
        return x**q

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Link costs ``t(x)``."""
        x = np.maximum(x, 0.0)
        p = self._p if self._scalar_p is None else self._scalar_p
        return self._a + self._k * self._pow(x, p)

    def derivative(self, x: np.ndarray) -> np.ndarray:
        """Diagonal Jacobian ``t'(x) = k p x^(p-1)`` (0 on links with ``k p = 0``)."""
        x = np.maximum(x, 0.0)
        if self._scalar_p is not None:
            p = self._scalar_p
            if p == 4.0:
                return 4.0 * self._k * (x * x * x)
            with np.errstate(divide="ignore", invalid="ignore"):
                v = self._k * p * x ** (p - 1.0)
            return np.where(self._k > 0, v, 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            v = self._k * self._p * x ** (self._p - 1.0)
        return np.where((self._k > 0) & (self._p > 0), v, 0.0)

    def integral(self, x: np.ndarray) -> np.ndarray:
        """Per-link Beckmann terms ``T_a(x_a) = a x + k x^(p+1) / (p+1)``."""
        x = np.maximum(x, 0.0)
        p = self._p if self._scalar_p is None else self._scalar_p
        return self._a * x + self._k * x ** (p + 1.0) / (p + 1.0)

    def directional(self, x: np.ndarray, d: np.ndarray, a: float) -> tuple[float, float]:
        """``(g, h)`` with ``g = t(x + a d) . d`` and ``h = (t'(x + a d) d) . d``: first and second derivative
        of ``a -> B(x + a d)`` (used by exact line searches)."""
        y = np.maximum(x + a * d, 0.0)
        if self._scalar_p == 4.0:
            y3 = y * y * y
            kd = self._k * d
            return float(self._a @ d + (kd * y3) @ y), float(4.0 * (kd * y3) @ d)
        p = self._p if self._scalar_p is None else self._scalar_p
        g = float((self._a + self._k * y**p) @ d)
        with np.errstate(divide="ignore", invalid="ignore"):
            tp = np.where(self._k > 0, self._k * p * y ** (p - 1.0), 0.0)
        return g, float((tp * d) @ d)

    def beckmann(self, x: np.ndarray) -> float:
        """Beckmann objective ``B(x) = sum_a T_a(x_a)``."""
        return float(np.sum(self.integral(x)))

    def subset(self, idx: np.ndarray) -> "BPRCost":
        """Costs of the links ``idx`` only (for line searches on a few links)."""
        out = object.__new__(BPRCost)
        out.t0, out.b, out.capacity, out.power, out.fixed = (self.t0[idx], self.b[idx], self.capacity[idx],
                                                             self.power[idx], self.fixed[idx])
        out._a, out._k, out._p, out._scalar_p = self._a[idx], self._k[idx], self._p[idx], self._scalar_p
        return out
