"""Proximal maps: closed forms, optimality conditions, TV prox against cvxpy, Moreau's identity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fpntools.operators import (
    Box,
    IndicatorProx,
    L1Prox,
    SquaredL2Prox,
    TVProx,
    conjugate_prox,
    prox_l1,
    prox_l21_conjugate,
    tv_norm,
)

F64 = torch.float64


@settings(max_examples=20, deadline=None)
@given(
    vals=st.lists(st.floats(-10, 10, allow_nan=False), min_size=1, max_size=12),
    tau=st.floats(0.0, 5.0, allow_nan=False),
)
def test_prox_l1_closed_form_and_optimality(vals, tau):
    v = torch.tensor(vals, dtype=F64).reshape(1, -1)
    x = prox_l1(v, tau)
    torch.testing.assert_close(x, torch.sign(v) * torch.clamp(v.abs() - tau, min=0))
    # optimality: (v - x) / tau in the subdifferential of ||.||_1 at x
    r = v - x
    nz = x != 0
    torch.testing.assert_close(r[nz], tau * torch.sign(x[nz]))
    assert bool((r[~nz].abs() <= tau + 1e-12).all())


def test_prox_l1_tensor_threshold_weights_and_errors():
    v = torch.tensor([[3.0, -3.0, 0.5], [1.0, 2.0, -4.0]], dtype=F64)
    t = torch.tensor([[1.0], [2.0]], dtype=F64)  # one threshold per sample
    torch.testing.assert_close(prox_l1(v, t), torch.tensor([[2.0, -2.0, 0.0], [0.0, 0.0, -2.0]], dtype=F64))
    w = torch.tensor([1.0, 0.0, 2.0], dtype=F64)
    p = L1Prox(lam=0.5, weights=w)
    torch.testing.assert_close(p(v, 2.0), prox_l1(v, 2.0 * 0.5 * w))
    torch.testing.assert_close(p.value(v), 0.5 * (v.abs() * w).sum(1))
    with pytest.raises(ValueError, match="tau must be >= 0"):
        prox_l1(v, -1.0)
    with pytest.raises(TypeError, match="floating-point"):
        prox_l1(torch.ones(2, 2, dtype=torch.int64), 1.0)


def test_moreau_identity_and_conjugate_of_l1():
    v = torch.randn(4, 6, dtype=F64) * 3
    conj = conjugate_prox(L1Prox(lam=1.5))
    # (lam ||.||_1)* is the indicator of the l_inf ball of radius lam: its prox is clipping
    torch.testing.assert_close(conj(v, 0.7), v.clamp(-1.5, 1.5))
    # Moreau decomposition v = prox_g(v) + prox_{g*}(v)  (step 1)
    torch.testing.assert_close(L1Prox(lam=1.5)(v, 1.0) + conj(v, 1.0), v)
    sq = SquaredL2Prox(d=torch.ones(6, dtype=F64), lam=2.0)
    torch.testing.assert_close(sq(v, 1.0) + conjugate_prox(sq)(v, 1.0), v)


def test_squared_l2_prox_optimality():
    d = torch.randn(3, 5, dtype=F64)
    v = torch.randn(3, 5, dtype=F64)
    tau = torch.tensor([0.5, 1.0, 2.0], dtype=F64)  # per-sample steps
    x = SquaredL2Prox(d, lam=3.0)(v, tau)
    # gradient of lam/2 ||x - d||^2 + ||x - v||^2 / (2 tau) vanishes
    torch.testing.assert_close(3.0 * (x - d) + (x - v) / tau[:, None], torch.zeros_like(x))


def test_indicator_prox_is_projection():
    v = torch.randn(3, 4, dtype=F64) * 2
    box = Box(-1.0, 1.0)
    torch.testing.assert_close(IndicatorProx(box)(v, 123.0), v.clamp(-1, 1))
    torch.testing.assert_close(box(v, 0.1), v.clamp(-1, 1))


def _cvxpy_tv_prox(v: np.ndarray, t: float) -> np.ndarray:
    cp = pytest.importorskip("cvxpy")
    H, W = v.shape
    X = cp.Variable((H, W))
    gx = cp.vstack([X[1:, :] - X[:-1, :], np.zeros((1, W))])
    gy = cp.hstack([X[:, 1:] - X[:, :-1], np.zeros((H, 1))])
    mags = cp.norm(cp.vstack([cp.vec(gx, order="C"), cp.vec(gy, order="C")]), 2, axis=0)
    prob = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(X - v) + t * cp.sum(mags)))
    prob.solve(solver="CLARABEL", tol_gap_abs=1e-10, tol_gap_rel=1e-10, tol_feas=1e-10)
    assert prob.status == "optimal", prob.status
    return X.value


def test_tv_prox_matches_cvxpy_on_6x6():
    pytest.importorskip("cvxpy")
    torch.manual_seed(1)
    v = torch.zeros(2, 6, 6, dtype=F64)
    v[:, 1:4, 2:5] = 1.0
    v = v + 0.3 * torch.randn(2, 6, 6, dtype=F64)
    lam, tau = torch.tensor([0.15, 0.4], dtype=F64), 1.0
    prox = TVProx((6, 6), lam=lam, iters=3000, tol=1e-10)
    x = prox(v, tau)
    for b in range(2):
        ref = _cvxpy_tv_prox(v[b].numpy(), float(lam[b]) * tau)
        np.testing.assert_allclose(x[b].numpy(), ref, atol=2e-4)
        obj = lambda z: 0.5 * float(((z - v[b : b + 1]) ** 2).sum()) + float(lam[b]) * float(tv_norm(z))
        assert obj(x[b : b + 1]) <= obj(torch.from_numpy(ref)[None]) + 1e-6


def test_tv_prox_properties():
    v = torch.rand(2, 5, 7, dtype=F64)
    p = TVProx((5, 7), lam=0.2, iters=500, tol=1e-8)
    x = p(v)
    torch.testing.assert_close(x.mean(dim=(1, 2)), v.mean(dim=(1, 2)))  # TV prox preserves the mean
    assert bool((tv_norm(x) <= tv_norm(v)).all())
    # constant images are fixed; lam = 0 is the identity; autograd through the iterations has no NaN
    c = torch.full((1, 5, 7), 0.3, dtype=F64, requires_grad=True)
    out = p(c)
    torch.testing.assert_close(out, c.detach())
    out.sum().backward()
    assert torch.isfinite(c.grad).all()
    torch.testing.assert_close(TVProx((5, 7), lam=0.0, iters=5)(v), v)
    # huge weight: the solution is the mean image
    big = TVProx((5, 7), lam=1e3, iters=3000, tol=0)(v)
    torch.testing.assert_close(big, v.mean(dim=(1, 2), keepdim=True).expand_as(v), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match=r"expected input of shape"):
        p(torch.rand(2, 7, 5, dtype=F64))


def test_tv_prox_channels_and_warm_start():
    v = torch.rand(2, 3, 6, 6, dtype=F64)
    p = TVProx((3, 6, 6), lam=0.1, dims=(1, 2), iters=400, tol=1e-9)
    x, dual = p(v, return_dual=True)
    cold = p.last_iters
    assert dual.shape == (2, 2, 3, 6, 6)
    # channels are independent
    single = TVProx((6, 6), lam=0.1, iters=400, tol=1e-9)
    torch.testing.assert_close(x[:, 1], single(v[:, 1]), atol=1e-6, rtol=0)
    # warm start from the converged dual stops quickly with the same answer
    x2 = p(v, p0=dual)
    assert p.last_iters <= 40 < cold
    torch.testing.assert_close(x2, x, atol=1e-6, rtol=0)


def _group_soft_threshold(w: np.ndarray, t: np.ndarray) -> np.ndarray:
    """prox of t ||.||_{2,1} over axis 1 (dense float64 reference): w_i max(0, 1 - t / ||w_i||)."""
    n = np.linalg.norm(w, axis=1, keepdims=True)
    return w * np.maximum(0.0, 1.0 - t / np.where(n > 0, n, 1.0)) * (n > 0)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), s=st.floats(0.05, 20.0), k=st.integers(1, 3))
def test_prox_l21_conjugate_is_the_dual_ball_projection(seed, s, k):
    """Moreau: prox_{s f*}(v) = v - s prox_{f/s}(v/s) with the group soft threshold, for f = r ||.||_{2,1}
    and one radius per sample; feasible, idempotent, nonexpansive, obtuse angle."""
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(3, k, 4, 5)) * rng.uniform(0.1, 5.0)
    r = rng.uniform(0.0, 2.0, size=3)
    r[0] = 0.0 if seed % 3 == 0 else r[0]
    p = prox_l21_conjugate(torch.tensor(v), torch.tensor(r))
    rb = r.reshape(-1, 1, 1, 1)
    ref = v - s * _group_soft_threshold(v / s, rb / s)
    np.testing.assert_allclose(p.numpy(), ref, rtol=1e-10, atol=1e-12)
    assert bool((p.pow(2).sum(1).sqrt() <= torch.tensor(rb[:, 0]) * (1 + 1e-12) + 1e-15).all())
    torch.testing.assert_close(prox_l21_conjugate(p, torch.tensor(r)), p, rtol=0, atol=1e-12)
    w = torch.tensor(rng.normal(size=v.shape))
    pw = prox_l21_conjugate(w, torch.tensor(r))
    assert float((p - pw).norm()) <= float((torch.tensor(v) - w).norm()) * (1 + 1e-12)
    assert float(((torch.tensor(v) - p) * (pw - p)).sum()) <= 1e-9  # <v - Pv, z - Pv> <= 0 for z in the ball


def test_prox_l21_conjugate_scalar_radius_and_errors():
    v = torch.tensor([[[3.0], [4.0]]], dtype=F64)  # one vector (3, 4) of norm 5
    torch.testing.assert_close(prox_l21_conjugate(v, 1.0), v / 5)
    torch.testing.assert_close(prox_l21_conjugate(v, 10.0), v)
    torch.testing.assert_close(prox_l21_conjugate(v, 0.0), torch.zeros_like(v))
    with pytest.raises(ValueError, match="radius must be >= 0"):
        prox_l21_conjugate(v, -1.0)
