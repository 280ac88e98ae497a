"""Contextual matrix games: families ``d -> (A(d), B(d))`` of two-player payoff matrices.

Conventions used throughout :mod:`problems.games`.  Player 1 (rows) plays a mixed strategy
``x in Delta_n``, player 2 (columns) plays ``y in Delta_m``; their expected payoffs are ``x^T A y`` and
``x^T B y`` and each *maximises* its own.  A game is zero-sum when ``B = -A``.

Every family is deterministic given its ``seed``: the random map from contexts to payoffs is drawn once
from ``numpy.random.default_rng(seed)`` when the family is built, so the same seed always gives the
same games.  Contexts are sampled by :meth:`ContextualGameFamily.sample_contexts` from
``Uniform[-1, 1]^p`` with a separate generator.

Families
--------
``RPSFamily`` (``name="rps"``): a context-weighted rock-paper-scissors game, zero-sum, ``n = m = 3``::

    w(d)  = exp(s_w * U d)                          (positive win weights, U in R^{3 x p})
    A(d)  = [[ 0,   -w_2,  w_1],                     (rock loses w_2 to paper, beats scissors by w_1 ...)
             [ w_2,  0,   -w_3],
             [-w_1,  w_3,  0  ]]  +  s_p * reshape(V d, 3, 3)
    B(d)  = -A(d)

The skew-symmetric part alone has the unique equilibrium ``x = y = (w_3, w_1, w_2) / sum(w)``; the small
non-skew perturbation ``s_p V d`` moves it off that closed form (and can make supports smaller).

``RandomGameFamily`` (``name="zero-sum"`` or ``"general"``): ``n x m`` games whose payoffs are a random
one-hidden-layer network of the context::

    A(d) = reshape(W2_A tanh(W1_A d + b1_A) + b2_A, n, m)
    B(d) = -A(d)                                                      (zero-sum)
    B(d) = reshape(W2_B tanh(W1_B d + b1_B) + b2_B, n, m)            (general-sum)

with ``W1 ~ N(0, 1/p)``, ``b1 ~ N(0, 0.1^2)``, ``W2 ~ N(0, 1/h)``, ``b2 ~ N(0, 1)`` (``h`` hidden units).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fpntools.errors import UserInputError

__all__ = [
    "ContextualGameFamily",
    "RPSFamily",
    "RandomGameFamily",
    "make_family",
    "FAMILIES",
    "check_contexts",
    "MAX_CONTEXT_DIM",
    "MAX_ACTIONS_ZERO_SUM",
    "MAX_ACTIONS_GENERAL",
]

FAMILIES = ("rps", "zero-sum", "general")

#: Size limits, checked before anything is allocated. Zero-sum games are solved by an LP (fine far beyond
#: this); general-sum ones by support enumeration over ``C(n + m, n) - 1`` support pairs (12869 at 8x8).
MAX_CONTEXT_DIM = 10_000
MAX_ACTIONS_ZERO_SUM = 64
MAX_ACTIONS_GENERAL = 8


def _check_context_dim(p: int) -> None:
    if not 1 <= p <= MAX_CONTEXT_DIM:
        raise UserInputError(f"context dimension must be between 1 and {MAX_CONTEXT_DIM}, got {p}")


def check_contexts(d: np.ndarray, context_dim: int, what: str = "context") -> np.ndarray:
    """Validate a batch of contexts: a finite float array of shape ``(B, context_dim)``.

    A single context of shape ``(context_dim,)`` is promoted to ``(1, context_dim)``.
    Raises :class:`~fpntools.errors.UserInputError` with the offending shape or values.
    """
    try:
        arr = np.asarray(d, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise UserInputError(f"{what} must be a numeric array, got {type(d).__name__}: {exc}") from None
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != context_dim:
        raise UserInputError(
            f"{what} must have shape (batch, {context_dim}) (context dimension {context_dim}), got {tuple(arr.shape)}"
        )
    if not np.all(np.isfinite(arr)):
        bad = np.argwhere(~np.isfinite(arr))[0]
        raise UserInputError(f"{what} holds a non-finite value (NaN or inf) at index {tuple(int(i) for i in bad)}")
    return arr


class ContextualGameFamily:
    """Base class: a seeded map from contexts ``d in R^p`` to bimatrix games ``(A(d), B(d))``.

    Subclasses set ``name``, ``n``, ``m``, ``context_dim``, ``zero_sum`` and implement :meth:`_payoffs`.
    """

    name: str
    n: int
    m: int
    context_dim: int
    zero_sum: bool

    def payoffs(self, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Payoff matrices ``A(d), B(d)`` of shape ``(B, n, m)`` (float64) for contexts ``d`` of shape ``(B, p)``."""
        arr = check_contexts(d, self.context_dim)
        return self._payoffs(arr)

    def _payoffs(self, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def sample_contexts(self, count: int, seed: int) -> np.ndarray:
        """``count`` contexts drawn i.i.d. from ``Uniform[-1, 1]^p`` with ``default_rng(seed)``."""
        if count < 0:
            raise UserInputError(f"number of contexts must be non-negative, got {count}")
        return np.random.default_rng(seed).uniform(-1.0, 1.0, size=(count, self.context_dim))

    def describe(self) -> str:
        kind = "zero-sum" if self.zero_sum else "general-sum"
        return f"{self.name}: {kind} {self.n}x{self.m} games, context dimension {self.context_dim}"


@dataclass
class RPSFamily(ContextualGameFamily):
    """Context-weighted rock-paper-scissors (zero-sum, 3x3); formula in the module docstring.

    Args:
        context_dim: ``p``, dimension of the context.
        weight_scale: ``s_w``, how strongly the context changes the win weights.
        perturbation: ``s_p``, size of the non-skew perturbation ``s_p V d``.
        seed: seed of ``U`` (3 x p) and ``V`` (9 x p), both with ``N(0, 1/p)`` entries.
    """

    context_dim: int = 4
    weight_scale: float = 1.0
    perturbation: float = 0.3
    seed: int = 0

    def __post_init__(self) -> None:
        _check_context_dim(self.context_dim)
        self.name, self.n, self.m, self.zero_sum = "rps", 3, 3, True
        rng = np.random.default_rng(self.seed)
        p = self.context_dim
        self.U = rng.standard_normal((3, p)) / math.sqrt(p)
        self.V = rng.standard_normal((9, p)) / math.sqrt(p)

    def _payoffs(self, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        w = np.exp(self.weight_scale * d @ self.U.T)  # (B, 3)
        batch = d.shape[0]
        A = np.zeros((batch, 3, 3))
        A[:, 0, 1], A[:, 0, 2] = -w[:, 1], w[:, 0]
        A[:, 1, 0], A[:, 1, 2] = w[:, 1], -w[:, 2]
        A[:, 2, 0], A[:, 2, 1] = -w[:, 0], w[:, 2]
        A = A + self.perturbation * (d @ self.V.T).reshape(batch, 3, 3)
        return A, -A


@dataclass
class RandomGameFamily(ContextualGameFamily):
    """Random ``n x m`` games whose payoffs are a seeded random network of the context (module docstring).

    Args:
        n_actions: ``n`` (player 1); ``m_actions`` defaults to ``n``.
        context_dim: ``p``.
        zero_sum: ``B = -A`` when true, an independent random map otherwise.
        hidden: ``h``, hidden units of the random payoff map.
        seed: seed of the payoff map's weights.
    """

    n_actions: int = 3
    m_actions: int | None = None
    context_dim: int = 4
    zero_sum: bool = True
    hidden: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        m = self.n_actions if self.m_actions is None else self.m_actions
        if self.n_actions < 2 or m < 2:
            raise UserInputError(f"games need at least 2 actions per player, got {self.n_actions}x{m}")
        limit = MAX_ACTIONS_ZERO_SUM if self.zero_sum else MAX_ACTIONS_GENERAL
        if max(self.n_actions, m) > limit:
            how = "the minimax LP" if self.zero_sum else "support enumeration (exponential in the actions)"
            raise UserInputError(
                f"{'zero-sum' if self.zero_sum else 'general-sum'} games are limited to {limit} actions per player "
                f"({how}), got {self.n_actions}x{m}"
            )
        _check_context_dim(self.context_dim)
        self.n, self.m = self.n_actions, m
        self.name = "zero-sum" if self.zero_sum else "general"
        rng = np.random.default_rng(self.seed)
        self._maps = [self._draw(rng) for _ in range(1 if self.zero_sum else 2)]

    def _draw(self, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
        p, h, k = self.context_dim, self.hidden, self.n * self.m
        return (
            rng.standard_normal((h, p)) / math.sqrt(p),
            0.1 * rng.standard_normal(h),
            rng.standard_normal((k, h)) / math.sqrt(h),
            rng.standard_normal(k),
        )

    def _apply(self, maps: tuple[np.ndarray, ...], d: np.ndarray) -> np.ndarray:
        W1, b1, W2, b2 = maps
        return (np.tanh(d @ W1.T + b1) @ W2.T + b2).reshape(d.shape[0], self.n, self.m)

    def _payoffs(self, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        A = self._apply(self._maps[0], d)
        B = -A if self.zero_sum else self._apply(self._maps[1], d)
        return A, B


def make_family(name: str, n_actions: int = 3, context_dim: int = 4, seed: int = 0) -> ContextualGameFamily:
    """Build a family by name: ``"rps"`` (3x3, ``n_actions`` ignored), ``"zero-sum"`` or ``"general"``."""
    key = name.lower()
    if key == "rps":
        return RPSFamily(context_dim=context_dim, seed=seed)
    if key in ("zero-sum", "zerosum", "zero_sum"):
        return RandomGameFamily(n_actions=n_actions, context_dim=context_dim, zero_sum=True, seed=seed)
    if key in ("general", "general-sum"):
        return RandomGameFamily(n_actions=n_actions, context_dim=context_dim, zero_sum=False, seed=seed)
    raise UserInputError(f"unknown game family {name!r}; choose one of {list(FAMILIES)}")
