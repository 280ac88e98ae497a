"""Exact Nash equilibria of bimatrix games and their certificates.

Player 1 plays ``x in Delta_n`` and maximises ``x^T A y``; player 2 plays ``y in Delta_m`` and maximises
``x^T B y``.

Certificate (Nash gap / exploitability)::

    gap(x, y) = [max_i (A y)_i - x^T A y] + [max_j (B^T x)_j - x^T B y]  >= 0

Each bracket is what a player gains by its best unilateral deviation, so ``gap = 0`` exactly at a Nash
equilibrium, and a strategy pair with ``gap <= eps`` is an ``eps``-equilibrium.  Every equilibrium produced
here is returned together with its gap, computed in float64.

Methods
-------
* zero-sum (``B = -A``): the two linear programs of von Neumann's minimax theorem, solved with cvxpy
  (CLARABEL by default; the problem is compiled once with a ``cvxpy.Parameter`` and re-solved per game)::

      x* = argmax_{x in Delta_n, v} v   s.t.  A^T x >= v 1        (player 1's maximin strategy)
      y* = argmin_{y in Delta_m, u} u   s.t.  A y   <= u 1        (player 2's minimax strategy)

  The interior-point answer (accurate to ~1e-8) is then *polished*: on the supports ``I, J`` it found, the
  indifference equations below are solved exactly by a dense linear solve and the polished pair is kept when
  it is feasible and its gap is smaller.  This gives gaps at the level of float64 round-off (~1e-15).
* general-sum: support enumeration (Nisan et al., *Algorithmic Game Theory*, ch. 3).  For every pair of
  supports ``I subset [n], J subset [m]`` with ``|I| = |J| = k`` solve::

      A[I, J] y_J = u 1,  1^T y_J = 1        (player 1 indifferent on I)
      B[I, J]^T x_I = v 1, 1^T x_I = 1       (player 2 indifferent on J)

  and keep the pair when ``x, y >= 0`` and no action outside the supports does better
  (``A y <= u``, ``B^T x <= v``).  For nondegenerate games (payoffs drawn from a continuous distribution,
  with probability one) this lists *all* equilibria, so uniqueness can be certified too.  The enumeration is
  vectorised over a batch of games: one batched solve per support pair, ``C(n+m, n) - 1`` pairs in all.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from fpntools.errors import UserInputError

__all__ = [
    "nash_gap",
    "regrets",
    "solve_zero_sum",
    "support_enumeration",
    "polish",
    "EquilibriumBatch",
    "solve_games",
]


def _as_games(A: np.ndarray, B: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    A = np.asarray(A, dtype=np.float64)
    if A.ndim == 2:
        A = A[None]
    B = -A if B is None else np.asarray(B, dtype=np.float64)
    if B.ndim == 2:
        B = B[None]
    if A.ndim != 3 or A.shape != B.shape:
        raise UserInputError(f"payoff matrices must both have shape (games, n, m), got {A.shape} and {B.shape}")
    if not (np.all(np.isfinite(A)) and np.all(np.isfinite(B))):
        raise UserInputError("payoff matrices hold a non-finite value (NaN or inf)")
    return A, B


def regrets(A: np.ndarray, B: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-player regrets ``max_i (A y)_i - x^T A y`` and ``max_j (B^T x)_j - x^T B y`` (batched, ``(G,)``)."""
    A, B = _as_games(A, B)
    x = np.asarray(x, dtype=np.float64).reshape(A.shape[0], A.shape[1])
    y = np.asarray(y, dtype=np.float64).reshape(A.shape[0], A.shape[2])
    Ay = np.einsum("gij,gj->gi", A, y)
    Btx = np.einsum("gij,gi->gj", B, x)
    r1 = Ay.max(axis=1) - np.einsum("gi,gi->g", x, Ay)
    r2 = Btx.max(axis=1) - np.einsum("gj,gj->g", y, Btx)
    return r1, r2


def nash_gap(A: np.ndarray, B: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Nash gap (exploitability) ``gap(x, y)`` of the module docstring, for a batch of games: shape ``(G,)``.

    ``x`` and ``y`` should lie in their simplices; the gap is then ``>= 0`` and ``0`` exactly at equilibria.
    """
    r1, r2 = regrets(A, B, x, y)
    return r1 + r2


def _support_solve(A: np.ndarray, I: tuple[int, ...], J: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Solve ``A[I, J] y_J = u 1, 1^T y_J = 1`` for a batch; returns ``(y_J, u, ok)`` (``ok``: nonsingular)."""
    G, k = A.shape[0], len(I)
    M = np.zeros((G, k + 1, k + 1))
    M[:, :k, :k] = A[:, I][:, :, J]
    M[:, :k, k] = -1.0
    M[:, k, :k] = 1.0
    rhs = np.zeros((G, k + 1))
    rhs[:, k] = 1.0
    # singular systems (degenerate supports) are flagged by the condition number and skipped
    cond = np.linalg.cond(M)
    ok = np.isfinite(cond) & (cond < 1e12)
    M[~ok] = np.eye(k + 1)
    sol = np.linalg.solve(M, rhs[..., None])[..., 0]
    return sol[:, :k], sol[:, k], ok


def _check_pair(
    A: np.ndarray, B: np.ndarray, I: tuple[int, ...], J: tuple[int, ...], tol: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidate equilibrium on supports ``(I, J)`` for each game and whether it is one (within ``tol``)."""
    G, n, m = A.shape
    yJ, u, ok_y = _support_solve(A, I, J)
    xI, v, ok_x = _support_solve(np.swapaxes(B, 1, 2), J, I)
    x = np.zeros((G, n))
    y = np.zeros((G, m))
    x[:, list(I)] = xI
    y[:, list(J)] = yJ
    Ay = np.einsum("gij,gj->gi", A, y)
    Btx = np.einsum("gij,gi->gj", B, x)
    valid = (
        ok_x
        & ok_y
        & (xI.min(axis=1) >= -tol)
        & (yJ.min(axis=1) >= -tol)
        & (Ay.max(axis=1) <= u + tol)
        & (Btx.max(axis=1) <= v + tol)
    )
    return np.clip(x, 0.0, None), np.clip(y, 0.0, None), valid


def support_enumeration(
    A: np.ndarray, B: np.ndarray | None = None, tol: float = 1e-10
) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    """All Nash equilibria of each (nondegenerate) game by support enumeration (module docstring).

    Args:
        A, B: payoffs of shape ``(G, n, m)`` (or one game ``(n, m)``); ``B=None`` means zero-sum ``B = -A``.
        tol: feasibility tolerance of the sign and best-response checks.

    Returns:
        For each game a list of equilibria ``(x, y)``, duplicates (within ``1e-8``) removed.
    """
    A, B = _as_games(A, B)
    G, n, m = A.shape
    found: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in range(G)]
    for k in range(1, min(n, m) + 1):
        for I in itertools.combinations(range(n), k):
            for J in itertools.combinations(range(m), k):
                x, y, valid = _check_pair(A, B, I, J, tol)
                for g in np.flatnonzero(valid):
                    xs, ys = x[g] / x[g].sum(), y[g] / y[g].sum()
                    if not any(np.abs(xs - a).max() < 1e-8 and np.abs(ys - b).max() < 1e-8 for a, b in found[g]):
                        found[g].append((xs, ys))
    return found


def polish(
    A: np.ndarray, B: np.ndarray, x: np.ndarray, y: np.ndarray, support_tol: float = 1e-6
) -> tuple[np.ndarray, np.ndarray]:
    """Refine approximate equilibria ``(x, y)`` by solving the indifference equations on their supports.

    Supports are read off with thresholds ``support_tol``, ``100 support_tol`` and ``support_tol / 100`` in turn;
    a game's polished pair replaces the input only when the supports have equal size, the solve succeeds,
    the result is feasible and its Nash gap is smaller.
    """
    A, B = _as_games(A, B)
    x, y = np.array(x, dtype=np.float64), np.array(y, dtype=np.float64)
    gap = nash_gap(A, B, x, y)
    for g in range(A.shape[0]):
        for thr in (support_tol, 100 * support_tol, 0.01 * support_tol):
            I = tuple(int(i) for i in np.flatnonzero(x[g] > thr))
            J = tuple(int(j) for j in np.flatnonzero(y[g] > thr))
            if len(I) != len(J) or not I:
                continue
            xp, yp, valid = _check_pair(A[g : g + 1], B[g : g + 1], I, J, tol=1e-9)
            if not valid[0]:
                continue
            xp, yp = xp / xp.sum(axis=1, keepdims=True), yp / yp.sum(axis=1, keepdims=True)
            gp = nash_gap(A[g : g + 1], B[g : g + 1], xp, yp)[0]
            if gp <= gap[g]:
                x[g], y[g], gap[g] = xp[0], yp[0], gp
                break
    return x, y


class _ZeroSumLP:
    """The two minimax LPs, compiled once per shape with a cvxpy ``Parameter`` (DPP) and re-solved per game."""

    def __init__(self, n: int, m: int) -> None:
        import cvxpy as cp

        self.A = cp.Parameter((n, m))
        self.x, self.v = cp.Variable(n), cp.Variable()
        self.y, self.u = cp.Variable(m), cp.Variable()
        self.p1 = cp.Problem(cp.Maximize(self.v), [self.A.T @ self.x >= self.v, cp.sum(self.x) == 1, self.x >= 0])
        self.p2 = cp.Problem(cp.Minimize(self.u), [self.A @ self.y <= self.u, cp.sum(self.y) == 1, self.y >= 0])

    def solve(self, A: np.ndarray, solver: str) -> tuple[np.ndarray, np.ndarray, float]:
        self.A.value = A
        self.p1.solve(solver=solver)
        self.p2.solve(solver=solver)
        if self.p1.status != "optimal" or self.p2.status != "optimal":
            raise RuntimeError(f"minimax LP not solved to optimality ({self.p1.status}, {self.p2.status})")
        x = np.clip(np.asarray(self.x.value, dtype=np.float64), 0.0, None)
        y = np.clip(np.asarray(self.y.value, dtype=np.float64), 0.0, None)
        return x / x.sum(), y / y.sum(), float(self.v.value)


_LP_CACHE: dict[tuple[int, int], _ZeroSumLP] = {}


def solve_zero_sum(
    A: np.ndarray, solver: str = "CLARABEL", refine: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Equilibria of zero-sum games ``(A, -A)`` by the minimax LPs (cvxpy), polished (module docstring).

    Args:
        A: payoffs of player 1, shape ``(G, n, m)`` or ``(n, m)``.
        solver: a cvxpy LP solver name (``"CLARABEL"``, ``"HIGHS"``, ...).
        refine: polish on the supports (see :func:`polish`).

    Returns:
        ``(x, y, value)`` of shapes ``(G, n)``, ``(G, m)``, ``(G,)``; ``value = x^T A y`` is the game value.
    """
    A, _ = _as_games(A)
    G, n, m = A.shape
    lp = _LP_CACHE.get((n, m))
    if lp is None:
        lp = _LP_CACHE[(n, m)] = _ZeroSumLP(n, m)
    xs, ys = np.zeros((G, n)), np.zeros((G, m))
    for g in range(G):
        xs[g], ys[g], _ = lp.solve(A[g], solver)
    if refine:
        xs, ys = polish(A, -A, xs, ys)
    value = np.einsum("gi,gij,gj->g", xs, A, ys)
    return xs, ys, value


@dataclass
class EquilibriumBatch:
    """Certified equilibria of a batch of games.

    Attributes:
        x, y: equilibrium strategies, ``(G, n)`` and ``(G, m)``.
        gap: their Nash gap under the game (float64), the certificate.
        count: number of equilibria found by support enumeration (general-sum), or ``1`` (zero-sum LP; generic
            zero-sum games have a unique equilibrium).
        method: ``"lp"`` or ``"support-enumeration"``.
    """

    x: np.ndarray
    y: np.ndarray
    gap: np.ndarray
    count: np.ndarray
    method: str


def solve_games(A: np.ndarray, B: np.ndarray, zero_sum: bool, lp_solver: str = "CLARABEL") -> EquilibriumBatch:
    """Equilibria of a batch of games with their certificates.

    Zero-sum: :func:`solve_zero_sum`.  General-sum: :func:`support_enumeration`; when a game has several
    equilibria the first one listed (smallest support, then lexicographic supports) is returned and ``count``
    says how many there are, so callers can keep only games with a unique equilibrium.  Games where the
    enumeration finds none (degenerate games) get NaN strategies and ``count = 0``.
    """
    A, B = _as_games(A, B)
    G, n, m = A.shape
    if zero_sum:
        if not np.allclose(B, -A):
            raise UserInputError("zero_sum=True but B != -A")
        x, y, _ = solve_zero_sum(A, solver=lp_solver)
        return EquilibriumBatch(x, y, nash_gap(A, B, x, y), np.ones(G, dtype=np.int64), "lp")
    eqs = support_enumeration(A, B)
    x, y = np.full((G, n), np.nan), np.full((G, m), np.nan)
    count = np.array([len(e) for e in eqs], dtype=np.int64)
    for g, e in enumerate(eqs):
        if e:
            x[g], y[g] = e[0]
    gap = np.full(G, np.nan)
    ok = count > 0
    if ok.any():
        gap[ok] = nash_gap(A[ok], B[ok], x[ok], y[ok])
    return EquilibriumBatch(x, y, gap, count, "support-enumeration")
