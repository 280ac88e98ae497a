"""Forward fixed-point solvers: small objects sharing one loop (:class:`FixedPointSolver`)."""

from __future__ import annotations

from typing import Any

from fpntools.solvers.anderson import Anderson, anderson_weights
from fpntools.solvers.base import FixedPointSolver, FlatMap, SolverResult, residual_norms
from fpntools.solvers.broyden import Broyden
from fpntools.solvers.picard import KM, Picard

__all__ = [
    "Anderson",
    "Broyden",
    "FixedPointSolver",
    "FlatMap",
    "KM",
    "Picard",
    "SolverResult",
    "anderson_weights",
    "make_solver",
    "residual_norms",
    "SOLVERS",
]

SOLVERS: dict[str, type[FixedPointSolver]] = {"picard": Picard, "km": KM, "anderson": Anderson, "broyden": Broyden}


def make_solver(solver: str | FixedPointSolver, **options: Any) -> FixedPointSolver:
    """A solver object from a name and its options (``make_solver("anderson", m=6)``), or pass one through."""
    if isinstance(solver, FixedPointSolver):
        if options:
            raise TypeError(f"options {sorted(options)} given together with a solver object; set them on the object")
        return solver
    if not isinstance(solver, str) or solver.lower() not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choose one of {sorted(SOLVERS)} or pass a FixedPointSolver")
    cls = SOLVERS[solver.lower()]
    try:
        return cls(**options)
    except TypeError as exc:
        fields = [f for f in cls.__dataclass_fields__ if f != "name"]
        raise TypeError(f"invalid option for solver {solver!r}: {exc}; its options are {fields}") from None
