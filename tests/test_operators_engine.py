"""Splitting schemes are fixed-point maps: the engine's solvers solve them, and their fixed points solve
the optimisation problems (checked against scipy)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.optimize
import torch

import fpntools
from fpntools.operators import (
    PDHG,
    Box,
    DenseOperator,
    ForwardBackward,
    L1Prox,
    Nonnegative,
    SquaredL2Prox,
    conjugate_prox,
)


def _nnls_problem(m=30, n=12, batch=3):
    a = torch.randn(m, n, dtype=torch.float64)
    y = torch.randn(batch, m, dtype=torch.float64)
    ref = np.stack([scipy.optimize.nnls(a.numpy(), yi.numpy())[0] for yi in y])
    return a, y, torch.from_numpy(ref)


@pytest.mark.parametrize("solver", ["picard", "anderson"])
def test_forward_backward_nnls_with_engine_solvers(solver):
    a, y, ref = _nnls_problem()
    op = DenseOperator(a)
    step = 1.0 / op.norm() ** 2
    fb = ForwardBackward(lambda x: op.A_adjoint(op.A(x) - y), Nonnegative(), step)
    with torch.no_grad():
        x, info = fpntools.fixed_point(fb, fb.initial_state(torch.zeros_like(ref)), solver, tol=1e-12, max_iter=5000, stop_mode="abs")
    assert info.ok, info.summary()
    torch.testing.assert_close(fb.solution(x), ref, rtol=1e-7, atol=1e-8)


def test_anderson_accelerates_forward_backward():
    a, y, ref = _nnls_problem()
    op = DenseOperator(a)
    fb = ForwardBackward(lambda x: op.A_adjoint(op.A(x) - y), Nonnegative(), 1.0 / op.norm() ** 2)
    steps = {}
    for solver in ["picard", "anderson"]:
        with torch.no_grad():
            _, info = fpntools.fixed_point(fb, torch.zeros_like(ref), solver, tol=1e-10, max_iter=5000, stop_mode="abs")
        steps[solver] = int(info.steps.max())
    assert steps["anderson"] < steps["picard"] / 2, steps


def test_pdhg_tuple_state_with_engine_solver():
    """min_x 0.5||A x - y||^2 + lam ||x||_1 over the box [-1, 1], by PDHG with a (x, y) tuple state."""
    torch.manual_seed(2)
    a = torch.randn(20, 8, dtype=torch.float64)
    y = torch.randn(2, 20, dtype=torch.float64)
    lam = 0.3
    op = DenseOperator(a)
    k = op.norm()
    box, l1 = Box(-1.0, 1.0), L1Prox(lam)
    pdhg = PDHG(op, conjugate_prox(SquaredL2Prox(d=y)), lambda v, t: box(l1(v, t)), tau=0.9 / k, sigma=0.9 / k)
    state0 = pdhg.initial_state(torch.zeros(2, 8, dtype=torch.float64))
    with torch.no_grad():
        state, info = fpntools.fixed_point(pdhg, state0, "anderson", tol=1e-11, max_iter=3000, stop_mode="abs")
    assert info.ok, info.summary()
    x = pdhg.solution(state)
    for i in range(2):
        obj = lambda v: 0.5 * np.sum((a.numpy() @ v - y[i].numpy()) ** 2) + lam * np.abs(v).sum()
        ref = scipy.optimize.minimize(obj, np.zeros(8), method="Powell", bounds=[(-1, 1)] * 8,
                                      options={"xtol": 1e-10, "ftol": 1e-14, "maxiter": 100000})
        assert obj(x[i].numpy()) <= ref.fun + 1e-7
