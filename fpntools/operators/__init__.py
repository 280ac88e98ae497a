"""Linear operators, projections, proximal maps and splitting schemes (see ``docs/design.md``).

* :mod:`~fpntools.operators.linear`: :class:`LinearOperator` and concrete operators (exact adjoints,
  differentiable with VJP ``A^T``).
* :mod:`~fpntools.operators.projections`: projections onto convex sets (callable, batched over dim 0).
* :mod:`~fpntools.operators.prox`: proximal maps ``prox(v, tau)``.
* :mod:`~fpntools.operators.splitting`: splitting schemes as fixed-point maps ``T(state) -> state``.
* :mod:`~fpntools.operators.spectrum`: Lanczos estimates of the spectrum of a symmetric operator (e.g. a Hessian).
"""

from fpntools.operators.linear import (
    AdjointOperator,
    ComposedOperator,
    DenseOperator,
    Diagonal,
    FiniteDifferenceGradient,
    Identity,
    LinearOperator,
    MatrixFreeOperator,
    ScaledOperator,
    SparseOperator,
    SumOperator,
    divergence,
    gradient,
)
from fpntools.operators.projections import (
    AffineSet,
    Box,
    DataBall,
    Hyperslab,
    L2Ball,
    Nonnegative,
    Projection,
    Simplex,
    SimplexProduct,
    project_box,
    project_data_ball_relaxed,
    project_hyperslab,
    project_l2_ball,
    project_nonnegative,
    project_simplex,
    project_simplex_product,
)
from fpntools.operators.prox import (
    ConjugateProx,
    IndicatorProx,
    L1Prox,
    SquaredL2Prox,
    TVProx,
    conjugate_prox,
    prox_l1,
    prox_l21_conjugate,
    tv_norm,
)
from fpntools.operators.spectrum import LanczosResult, lanczos
from fpntools.operators.splitting import PDHG, DavisYin, DouglasRachford, ForwardBackward, iterate

__all__ = [
    # linear
    "AdjointOperator",
    "ComposedOperator",
    "DenseOperator",
    "Diagonal",
    "FiniteDifferenceGradient",
    "Identity",
    "LinearOperator",
    "MatrixFreeOperator",
    "ScaledOperator",
    "SparseOperator",
    "SumOperator",
    "divergence",
    "gradient",
    # projections
    "AffineSet",
    "Box",
    "DataBall",
    "Hyperslab",
    "L2Ball",
    "Nonnegative",
    "Projection",
    "Simplex",
    "SimplexProduct",
    "project_box",
    "project_data_ball_relaxed",
    "project_hyperslab",
    "project_l2_ball",
    "project_nonnegative",
    "project_simplex",
    "project_simplex_product",
    # prox
    "ConjugateProx",
    "IndicatorProx",
    "L1Prox",
    "SquaredL2Prox",
    "TVProx",
    "conjugate_prox",
    "prox_l1",
    "prox_l21_conjugate",
    "tv_norm",
    # splitting
    "DavisYin",
    "DouglasRachford",
    "ForwardBackward",
    "PDHG",
    "iterate",
    # spectrum
    "LanczosResult",
    "lanczos",
]
