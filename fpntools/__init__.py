"""fpntools: implicit-depth (fixed-point) networks, operators and applications.

``z, info = fpntools.fixed_point(f, z0, solver="anderson", backward="implicit", tol=1e-4, max_iter=50)``
"""

from fpntools.backward import JFB, BackwardMode, Implicit, ImplicitCG, Phantom, Unroll
from fpntools.fixed_point import FixedPoint, fixed_point
from fpntools.info import FixedPointError, FixedPointInfo, Status
from fpntools.solvers import KM, Anderson, Broyden, FixedPointSolver, Picard
from fpntools.solve_config import JacobianRegConfig, SolveConfig, make_fixed_point

__version__ = "0.1.0"

__all__ = [
    "Anderson",
    "BackwardMode",
    "Broyden",
    "FixedPoint",
    "FixedPointError",
    "FixedPointInfo",
    "FixedPointSolver",
    "Implicit",
    "JacobianRegConfig",
    "ImplicitCG",
    "JFB",
    "KM",
    "Phantom",
    "Picard",
    "SolveConfig",
    "Status",
    "Unroll",
    "fixed_point",
    "make_fixed_point",
]
