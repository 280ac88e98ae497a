"""Splitting schemes: their fixed points solve small convex problems (checked against cvxpy / closed forms)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fpntools.operators import (
    PDHG,
    Box,
    DavisYin,
    DenseOperator,
    DouglasRachford,
    FiniteDifferenceGradient,
    ForwardBackward,
    L1Prox,
    Nonnegative,
    SquaredL2Prox,
    TVProx,
    iterate,
)

F64 = torch.float64


def _solve_cvxpy(build) -> np.ndarray:
    cp = pytest.importorskip("cvxpy")
    x, prob = build(cp)
    prob.solve(solver="CLARABEL", tol_gap_abs=1e-10, tol_gap_rel=1e-10, tol_feas=1e-10)
    assert prob.status == "optimal", prob.status
    return x.value


def _problem(m: int = 8, n: int = 5, batch: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(m, n, generator=g, dtype=F64)
    b = torch.randn(batch, m, generator=g, dtype=F64) * 2
    return DenseOperator(A), A, b


def _fixed_point_residual(T, z) -> float:
    with torch.no_grad():
        tz = T(z)
    if isinstance(z, tuple):
        return max(float((a - b).norm()) for a, b in zip(tz, z))
    return float((tz - z).norm())


def test_forward_backward_solves_lasso():
    op, A, b = _problem()
    lam = 0.8
    L = op.norm(n_iter=500) ** 2
    T = ForwardBackward(grad_f=lambda x: op.T(op(x) - b), prox_g=L1Prox(lam), step=1.0 / L)
    x = iterate(T, T.initial_state(torch.zeros(2, 5, dtype=F64)), 20000, tol=1e-14)
    assert _fixed_point_residual(T, x) < 1e-9
    for i in range(2):
        def build(cp, i=i):
            v = cp.Variable(5)
            return v, cp.Problem(cp.Minimize(0.5 * cp.sum_squares(A.numpy() @ v - b[i].numpy()) + lam * cp.norm1(v)))

        np.testing.assert_allclose(T.solution(x)[i].numpy(), _solve_cvxpy(build), atol=1e-5)


def test_relaxed_forward_backward_solves_nnls():
    scipy_opt = pytest.importorskip("scipy.optimize")
    op, A, b = _problem(seed=1)
    L = op.norm(n_iter=500) ** 2
    T = ForwardBackward(lambda x: op.T(op(x) - b), Nonnegative(), step=1.5 / L, relax=1.2)
    x = iterate(T, torch.zeros(2, 5, dtype=F64), 20000, tol=1e-14)
    for i in range(2):
        ref, _ = scipy_opt.nnls(A.numpy(), b[i].numpy())
        np.testing.assert_allclose(x[i].numpy(), ref, atol=1e-7)


@pytest.mark.parametrize("relax", [1.0, 1.6])
def test_douglas_rachford_solves_box_qp(relax):
    g = torch.Generator().manual_seed(2)
    M = torch.randn(6, 6, generator=g, dtype=F64)
    Q = M @ M.T + 0.1 * torch.eye(6, dtype=F64)
    c = torch.randn(2, 6, generator=g, dtype=F64) * 3
    lo, hi = -0.5, 1.0
    gamma = 0.7
    inv = torch.linalg.inv(torch.eye(6, dtype=F64) + gamma * Q)  # prox of 0.5 x'Qx + c'x

    def prox_f(v, t):
        assert t == gamma
        return (v - t * c) @ inv.T

    T = DouglasRachford(prox_f, Box(lo, hi), gamma=gamma, relax=relax)
    z = iterate(T, torch.zeros(2, 6, dtype=F64), 20000, tol=1e-14)
    x = T.solution(z)
    assert _fixed_point_residual(T, z) < 1e-9
    for i in range(2):
        def build(cp, i=i):
            v = cp.Variable(6)
            obj = 0.5 * cp.quad_form(v, Q.numpy()) + c[i].numpy() @ v
            return v, cp.Problem(cp.Minimize(obj), [v >= lo, v <= hi])

        np.testing.assert_allclose(x[i].numpy(), _solve_cvxpy(build), atol=1e-5)


def test_davis_yin_solves_box_constrained_lasso():
    op, A, b = _problem(seed=3)
    lam, lo, hi = 0.5, -0.3, 0.6
    L = op.norm(n_iter=500) ** 2
    T = DavisYin(prox_f=L1Prox(lam), prox_g=Box(lo, hi), grad_h=lambda x: op.T(op(x) - b), step=1.0 / L)
    z = iterate(T, torch.zeros(2, 5, dtype=F64), 50000, tol=1e-14)
    x = T.solution(z)
    assert bool(((x >= lo) & (x <= hi)).all())
    for i in range(2):
        def build(cp, i=i):
            v = cp.Variable(5)
            obj = 0.5 * cp.sum_squares(A.numpy() @ v - b[i].numpy()) + lam * cp.norm1(v)
            return v, cp.Problem(cp.Minimize(obj), [v >= lo, v <= hi])

        np.testing.assert_allclose(x[i].numpy(), _solve_cvxpy(build), atol=1e-5)


def test_pdhg_tv_denoising_matches_tv_prox():
    torch.manual_seed(4)
    v = torch.rand(2, 4, 5, dtype=F64)
    lam = 0.2
    K = FiniteDifferenceGradient((4, 5))

    def prox_f_conj(y, sigma):  # f = lam * sum_i |y_i|_2  =>  f* = indicator of {|y_i|_2 <= lam}
        n = y.pow(2).sum(dim=1, keepdim=True).sqrt()
        return y / torch.clamp(n / lam, min=1.0)

    norm = K.norm(n_iter=300)
    ratio = 0.05  # tau / sigma; tau sigma ||K||^2 = 0.98 < 1
    T = PDHG(K, prox_f_conj, SquaredL2Prox(v), tau=0.99 * ratio / norm, sigma=0.99 / (ratio * norm))
    state = iterate(T, T.initial_state(v.clone()), 2000)
    assert isinstance(state, tuple) and state[1].shape == (2, 2, 4, 5)
    assert _fixed_point_residual(T, state) < 1e-5
    ref = TVProx((4, 5), lam=lam, iters=2000, tol=1e-12)(v)
    torch.testing.assert_close(T.solution(state), ref, atol=1e-5, rtol=0)


def test_pdhg_lasso_against_forward_backward_with_list_state():
    op, A, b = _problem(seed=5)
    lam = 0.3
    # min_x 0.5 ||A x - b||^2 + lam ||x||_1 = f(Kx) + g(x), f = 0.5 ||. - b||^2: prox_{s f*}(y) = (y - s b)/(1 + s)
    T = PDHG(op, lambda y, s: (y - s * b) / (1 + s), L1Prox(lam), tau=0.9 / op.norm(), sigma=0.9 / op.norm())
    state = iterate(T, [torch.zeros(2, 5, dtype=F64), torch.zeros(2, 8, dtype=F64)], 50000, tol=1e-14)
    L = op.norm() ** 2
    fb = ForwardBackward(lambda x: op.T(op(x) - b), L1Prox(lam), step=1.0 / L)
    x_fb = iterate(fb, torch.zeros(2, 5, dtype=F64), 20000, tol=1e-14)
    torch.testing.assert_close(T.solution(state), x_fb, atol=1e-7, rtol=0)
    # dual optimality: y* = K x* - b
    torch.testing.assert_close(state[1], op(state[0]) - b, atol=1e-7, rtol=0)


def test_maps_are_differentiable():
    op, A, b = _problem(seed=6)
    bb = b.clone().requires_grad_()
    T = ForwardBackward(lambda x: op.T(op(x) - bb), Box(-1.0, 1.0), step=0.5 / op.norm() ** 2)
    x = torch.zeros(2, 5, dtype=F64)
    for _ in range(5):
        x = T(x)
    x.sum().backward()
    assert bb.grad is not None and torch.isfinite(bb.grad).all()


def test_argument_checks_and_iterate():
    with pytest.raises(ValueError, match="step must be > 0"):
        ForwardBackward(lambda x: x, Nonnegative(), step=0.0)
    with pytest.raises(TypeError, match="prox_g must be callable"):
        DouglasRachford(Nonnegative(), None)
    with pytest.raises(TypeError, match="LinearOperator"):
        PDHG(torch.eye(3), Nonnegative(), Nonnegative(), 1.0, 1.0)
    T = PDHG(DenseOperator(torch.eye(3, dtype=F64)), Nonnegative(), Nonnegative(), 0.5, 0.5)
    with pytest.raises(TypeError, match="pair"):
        T(torch.zeros(1, 3, dtype=F64))
    # iterate: exact count without tol, early stop with tol, tuple states
    half = iterate(lambda z: z / 2, torch.ones(1, 2, dtype=F64), 3)
    torch.testing.assert_close(half, torch.full((1, 2), 0.125, dtype=F64))
    out = iterate(lambda s: (s[0] * 0.5, s[1]), (torch.ones(2, 1), torch.ones(2, 1)), 1000, tol=1e-3)
    assert float(out[0].max()) > 0  # stopped early, well before underflow
