"""``fpntools games solve``: the game of one context, its certified equilibrium (all of them for general-sum
games) and the Nash gap of each, as printable text."""

from __future__ import annotations

import numpy as np

from problems.games.equilibria import nash_gap, solve_games, support_enumeration
from problems.games.families import ContextualGameFamily, check_contexts

__all__ = ["solve_context"]


def solve_context(family: ContextualGameFamily, context: np.ndarray) -> str:
    """``A(d)`` (and ``B(d)``), then the minimax-LP equilibrium (zero-sum) or every equilibrium found by support
    enumeration (general-sum), each with its Nash gap; ``context`` is checked against the family."""
    d = check_contexts(context, family.context_dim)
    A, B = family.payoffs(d)
    with np.printoptions(precision=4, suppress=True):
        lines = [family.describe(), f"A(d) =\n{A[0]}"]
        if family.zero_sum:
            eq = solve_games(A, B, zero_sum=True)
            lines += [
                "method: lp (minimax LPs with cvxpy, polished on the supports)",
                f"x* = {eq.x[0]}\ny* = {eq.y[0]}\nNash gap = {eq.gap[0]:.3e}",
            ]
            return "\n".join(lines)
        lines.append(f"B(d) =\n{B[0]}")
        eqs = support_enumeration(A, B)[0]
        lines.append(f"method: support-enumeration; equilibria found: {len(eqs)}")
        for k, (x, y) in enumerate(eqs):
            lines.append(f"[{k}] x* = {x}  y* = {y}  Nash gap = {nash_gap(A, B, x, y)[0]:.3e}")
    return "\n".join(lines)
