"""Projections: feasibility, idempotence, nonexpansiveness, agreement with cvxpy (hypothesis-generated cases)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fpntools.operators import (
    AffineSet,
    Box,
    DataBall,
    DenseOperator,
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
    project_simplex,
    project_simplex_product,
)

F64 = torch.float64
TOL = 1e-5  # agreement with cvxpy (Clarabel, tight tolerances)
SETTINGS = settings(max_examples=20, deadline=None)


@dataclass
class Case:
    """A projection with a feasibility test and the cvxpy constraints of its set for sample ``i``."""

    proj: Projection
    n: int
    feasible: Callable[[torch.Tensor], bool]
    constraints: Callable[[object, int], list]


def _rng(data) -> np.random.Generator:
    return np.random.default_rng(data.draw(st.integers(0, 2**31 - 1), label="seed"))


def _incidence(n_nodes: int, edges: list[tuple[int, int]]) -> np.ndarray:
    B = np.zeros((n_nodes, len(edges)))
    for j, (a, b) in enumerate(edges):
        B[a, j], B[b, j] = 1.0, -1.0
    return B


def case_box(data, batch) -> Case:
    rng, n = _rng(data), data.draw(st.integers(1, 6), label="n")
    lo = rng.normal(size=n)
    hi = lo + rng.uniform(0, 2, size=n)
    p = Box(torch.tensor(lo), torch.tensor(hi))
    return Case(
        p, n, lambda z: bool(((z >= torch.tensor(lo) - 1e-12) & (z <= torch.tensor(hi) + 1e-12)).all()),
        lambda v, i: [v >= lo, v <= hi],
    )


def case_nonneg(data, batch) -> Case:
    n = data.draw(st.integers(1, 6), label="n")
    return Case(Nonnegative(), n, lambda z: bool((z >= 0).all()), lambda v, i: [v >= 0])


def case_ball(data, batch) -> Case:
    rng, n = _rng(data), data.draw(st.integers(1, 6), label="n")
    r = rng.uniform(0.1, 3.0, size=batch)
    c = rng.normal(size=n)
    p = L2Ball(torch.tensor(r), torch.tensor(c))
    return Case(
        p, n, lambda z: bool(((z - torch.tensor(c)).norm(dim=1) <= torch.tensor(r) * (1 + 1e-12)).all()),
        lambda v, i: [__import__("cvxpy").norm(v - c, 2) <= r[i]],
    )


def case_simplex(data, batch) -> Case:
    n = data.draw(st.integers(1, 7), label="n")
    t = data.draw(st.floats(0.0, 5.0), label="total")
    return Case(
        Simplex(t), n, lambda z: bool((z >= 0).all()) and bool(torch.allclose(z.sum(-1), torch.full((z.shape[0],), t, dtype=F64), atol=1e-10)),
        lambda v, i: [v >= 0, __import__("cvxpy").sum(v) == t],
    )


def case_simplex_product(data, batch) -> Case:
    rng = _rng(data)
    equal = data.draw(st.booleans(), label="equal")
    K = data.draw(st.integers(1, 4), label="K")
    sizes = [data.draw(st.integers(1, 3))] * K if equal else [data.draw(st.integers(1, 4)) for _ in range(K)]
    totals = rng.uniform(0.0, 3.0, size=(batch, K))
    p = SimplexProduct(sizes, torch.tensor(totals))
    offs = np.concatenate([[0], np.cumsum(sizes)])

    def feasible(z: torch.Tensor) -> bool:
        sums = torch.stack([z[:, offs[k] : offs[k + 1]].sum(1) for k in range(K)], 1)
        return bool((z >= 0).all()) and bool(torch.allclose(sums, torch.tensor(totals), atol=1e-10))

    return Case(
        p, int(offs[-1]), feasible,
        lambda v, i: [v >= 0] + [__import__("cvxpy").sum(v[offs[k] : offs[k + 1]]) == totals[i, k] for k in range(K)],
    )


def _affine(data, batch, kind: str) -> Case:
    rng = _rng(data)
    if kind == "dense":
        n = data.draw(st.integers(2, 7), label="n")
        m = data.draw(st.integers(1, 6), label="m")
        r = data.draw(st.integers(1, min(m, n)), label="rank")
        B = rng.normal(size=(m, r)) @ rng.normal(size=(r, n))  # rank-deficient when r < m
        Bin = torch.tensor(B)
    else:  # incidence matrix of a random graph (rank = nodes - components)
        nodes = data.draw(st.integers(2, 5), label="nodes")
        pairs = [(a, b) for a in range(nodes) for b in range(nodes) if a != b]
        idx = rng.choice(len(pairs), size=rng.integers(1, len(pairs) + 1), replace=False)
        B = _incidence(nodes, [pairs[i] for i in sorted(idx)])
        m, n = B.shape
        Bin = sp.csr_matrix(B)
    b = rng.normal(size=(batch, n)) @ B.T  # consistent right-hand sides, one per sample
    p = AffineSet(Bin, torch.tensor(b), method={"dense": "svd", "lu": "lu", "cg": "cg"}[kind])
    return Case(
        p, n, lambda z: bool(torch.allclose(z @ torch.tensor(B).T, torch.tensor(b), atol=1e-9)),
        lambda v, i: [B @ v == b[i]],
    )


def case_hyperslab(data, batch) -> Case:
    rng, n = _rng(data), data.draw(st.integers(1, 6), label="n")
    a = rng.normal(size=n)
    a[0] = a[0] if abs(a[0]) > 1e-3 else 1.0
    lo = rng.normal(size=batch)
    hi = lo + rng.uniform(0, 2, size=batch) * data.draw(st.sampled_from([0.0, 1.0]), label="width")
    p = Hyperslab(torch.tensor(a), torch.tensor(lo), torch.tensor(hi))

    def feasible(z: torch.Tensor) -> bool:
        s = z @ torch.tensor(a)
        return bool(((s >= torch.tensor(lo) - 1e-9) & (s <= torch.tensor(hi) + 1e-9)).all())

    return Case(p, n, feasible, lambda v, i: [a @ v >= lo[i], a @ v <= hi[i]])


def case_databall(data, batch) -> Case:
    rng = _rng(data)
    n = data.draw(st.integers(2, 6), label="n")
    m = data.draw(st.integers(1, n), label="m")
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    A = q[:m]  # orthonormal rows: A A^T = I
    d = rng.normal(size=(batch, m))
    eps = rng.uniform(0.0, 1.0)
    p = DataBall(DenseOperator(torch.tensor(A)), torch.tensor(d), eps)

    def feasible(z: torch.Tensor) -> bool:
        return bool(((z @ torch.tensor(A).T - torch.tensor(d)).norm(dim=1) <= eps + 1e-10).all())

    return Case(p, n, feasible, lambda v, i: [__import__("cvxpy").norm(A @ v - d[i], 2) <= eps])


CASES = {
    "box": case_box,
    "nonnegative": case_nonneg,
    "l2ball": case_ball,
    "simplex": case_simplex,
    "simplex_product": case_simplex_product,
    "affine_dense": lambda d, b: _affine(d, b, "dense"),
    "affine_sparse_lu": lambda d, b: _affine(d, b, "lu"),
    "affine_sparse_cg": lambda d, b: _affine(d, b, "cg"),
    "hyperslab": case_hyperslab,
    "databall": case_databall,
}

BATCH = 2
points = st.lists(st.floats(-10, 10, allow_nan=False, allow_infinity=False, width=64), min_size=1, max_size=64)


def _draw_x(data, n: int, scale_label: str = "x") -> torch.Tensor:
    vals = data.draw(st.lists(st.floats(-10, 10, allow_nan=False), min_size=BATCH * n, max_size=BATCH * n), label=scale_label)
    return torch.tensor(vals, dtype=F64).reshape(BATCH, n)


@pytest.mark.parametrize("kind", list(CASES))
@SETTINGS
@given(data=st.data())
def test_feasible_idempotent_nonexpansive(kind, data):
    case = CASES[kind](data, BATCH)
    x, y = _draw_x(data, case.n, "x"), _draw_x(data, case.n, "y")
    px, py = case.proj(x), case.proj(y)
    assert px.shape == x.shape and px.dtype == x.dtype
    assert case.feasible(px) and case.feasible(py)
    torch.testing.assert_close(case.proj(px), px, rtol=0, atol=1e-9)  # P o P = P
    assert bool(((px - py).norm(dim=1) <= (x - y).norm(dim=1) * (1 + 1e-9) + 1e-9).all())  # nonexpansive
    # firm nonexpansiveness / obtuse angle: <x - Px, z - Px> <= 0 for z = Py in C
    assert bool((((x - px) * (py - px)).sum(1) <= 1e-8 * (1 + x.norm(dim=1) * py.norm(dim=1))).all())
    # tau is ignored (prox of the indicator)
    torch.testing.assert_close(case.proj(x, 0.3), px)


@pytest.mark.parametrize("kind", list(CASES))
@SETTINGS
@given(data=st.data())
def test_agrees_with_cvxpy(kind, data):
    cp = pytest.importorskip("cvxpy")
    case = CASES[kind](data, BATCH)
    x = _draw_x(data, case.n)
    px = case.proj(x)
    for i in range(1):  # one sample per example keeps the cvxpy time small (the batch is tested above)
        v = cp.Variable(case.n)
        prob = cp.Problem(cp.Minimize(cp.sum_squares(v - x[i].numpy())), case.constraints(v, i))
        prob.solve(solver="CLARABEL", tol_gap_abs=1e-10, tol_gap_rel=1e-10, tol_feas=1e-10)
        assert prob.status in ("optimal", "optimal_inaccurate"), prob.status
        scale = 1.0 + float(x[i].abs().max())
        np.testing.assert_allclose(px[i].numpy(), v.value, atol=TOL * scale, rtol=0)


def test_simplex_exact_examples():
    x = torch.tensor([[0.5, 0.5, 0.5], [2.0, 0.0, -1.0], [0.2, 0.3, 0.5], [-1.0, -1.0, -1.0]], dtype=F64)
    want = torch.tensor([[1 / 3, 1 / 3, 1 / 3], [1.0, 0.0, 0.0], [0.2, 0.3, 0.5], [1 / 3, 1 / 3, 1 / 3]], dtype=F64)
    torch.testing.assert_close(project_simplex(x), want)
    torch.testing.assert_close(project_simplex(x, total=0.0), torch.zeros_like(x))
    # per-row totals
    t = torch.tensor([3.0, 1.0, 2.0, 0.3], dtype=F64)
    torch.testing.assert_close(project_simplex(x, t).sum(-1), t)
    with pytest.raises(ValueError, match="total"):
        Simplex(-1.0)


def test_simplex_product_equal_and_padded_paths_agree_with_loop():
    x = torch.randn(3, 2, 9, dtype=F64)
    for sizes in ([3, 3, 3], [2, 4, 3], [9], [1, 1, 7]):
        totals = torch.rand(len(sizes), dtype=F64) * 3
        got = project_simplex_product(x, sizes, totals)
        offs = np.concatenate([[0], np.cumsum(sizes)])
        want = torch.cat([project_simplex(x[..., offs[k] : offs[k + 1]], totals[k]) for k in range(len(sizes))], -1)
        torch.testing.assert_close(got, want)
    with pytest.raises(ValueError, match="sum\\(sizes\\)"):
        SimplexProduct([2, 2])(torch.randn(2, 5, dtype=F64))


def test_affine_set_methods_agree_on_rank_deficient_incidence_matrix():
    # 5-node graph with two components: rank 3 of 5 rows
    B = _incidence(5, [(0, 1), (1, 2), (2, 0), (0, 2), (3, 4), (4, 3)])
    b = torch.tensor([[1.0, 0.0, -1.0, 2.0, -2.0], [0.0, 3.0, -3.0, -1.0, 1.0]], dtype=F64)
    x = torch.randn(2, 6, dtype=F64)
    dense = AffineSet(torch.tensor(B), b)
    assert dense.rank == 3
    outs = [dense(x), AffineSet(sp.csr_matrix(B), b)(x), AffineSet(sp.csr_matrix(B), b, method="cg")(x),
            AffineSet(torch.tensor(B).to_sparse(), b)(x)]
    for o in outs[1:]:
        torch.testing.assert_close(o, outs[0], rtol=0, atol=1e-10)
    # closed form with the pseudo-inverse
    Bt = torch.tensor(B)
    want = x - (x @ Bt.T - b) @ torch.linalg.pinv(Bt).T
    torch.testing.assert_close(outs[0], want)
    # b at call time overrides the stored one; b = None is the null space
    torch.testing.assert_close(dense(x, b=b.flip(0)), AffineSet(torch.tensor(B), b.flip(0))(x))
    assert float(AffineSet(sp.csr_matrix(B)).residual(AffineSet(sp.csr_matrix(B))(x)).max()) < 1e-12
    with pytest.raises(ValueError, match="not in the range"):
        AffineSet(sp.csr_matrix(B), torch.tensor([1.0, 0, 0, 0, 0], dtype=F64))


@pytest.mark.parametrize("method", ["svd", "lu", "cg"])
def test_affine_set_gradients(method):
    B = _incidence(4, [(0, 1), (1, 2), (2, 3), (3, 0), (0, 2)])
    Bin = torch.tensor(B) if method == "svd" else sp.csr_matrix(B)
    p = AffineSet(Bin, method=method)
    Bt = torch.tensor(B)
    x = torch.randn(2, 5, dtype=F64, requires_grad=True)
    u = torch.randn(2, 5, dtype=F64, requires_grad=True)  # b = B u stays in range(B) (nonempty set)
    assert torch.autograd.gradcheck(lambda x, u: p(x, b=u @ Bt.T), (x, u))
    # VJPs: null-space projector in x, (B^+)^T in b
    pinv = torch.linalg.pinv(Bt)
    b = (u @ Bt.T).detach().requires_grad_()
    g = torch.randn(2, 5, dtype=F64)
    gx, gb = torch.autograd.grad(p(x, b=b), (x, b), g)
    torch.testing.assert_close(gx, g - g @ (pinv @ Bt).T)
    torch.testing.assert_close(gb, g @ pinv)


def test_projection_gradients_and_zero_norm():
    x = torch.zeros(2, 3, dtype=F64, requires_grad=True)
    project_l2_ball(x, 1.0).sum().backward()  # at the center: identity, no NaN
    assert torch.isfinite(x.grad).all()
    y = torch.randn(3, 5, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: project_simplex(v, 1.0), (y,))
    assert torch.autograd.gradcheck(lambda v: SimplexProduct([2, 3])(v), (y,))
    assert torch.autograd.gradcheck(lambda v: project_l2_ball(v, 0.5), (y,))


def test_box_and_hyperslab_function_forms():
    x = torch.tensor([[-2.0, 0.5, 3.0]], dtype=F64)
    torch.testing.assert_close(project_box(x, 0.0, 1.0), torch.tensor([[0.0, 0.5, 1.0]], dtype=F64))
    torch.testing.assert_close(project_box(x, None, torch.tensor([0.0, 0.0, 0.0], dtype=F64)), x.clamp_max(0))
    a = torch.tensor([1.0, 1.0, 1.0], dtype=F64)
    p = project_hyperslab(x, a, -math.inf, 0.0)  # half-space sum <= 0
    torch.testing.assert_close(p, x - 0.5)
    with pytest.raises(ValueError, match="nonzero"):
        Hyperslab(torch.zeros(3))
    with pytest.raises(ValueError, match="lo must be <= hi"):
        Box(1.0, 0.0)


def test_databall_identity_and_refuses_non_tight_operator():
    d = torch.tensor([[3.0, 4.0]], dtype=F64)
    p = DataBall(None, d, 1.0)
    torch.testing.assert_close(p(torch.zeros(1, 2, dtype=F64)), d * (1 - 1 / 5))
    with pytest.raises(ValueError, match="A A\\^T = nu I"):
        DataBall(DenseOperator(torch.randn(3, 5, dtype=F64)), torch.zeros(3, dtype=F64), 1.0)
    # A A^T = 2 I: rows orthogonal with norm sqrt(2)
    A = DenseOperator(torch.tensor([[1.0, 1.0, 0.0], [1.0, -1.0, 0.0]], dtype=F64))
    q = DataBall(A, torch.zeros(2, dtype=F64), 0.5, nu=2.0)
    z = q(torch.randn(4, 3, dtype=F64) * 5)
    assert bool((A(z).norm(dim=1) <= 0.5 + 1e-12).all())


def test_bad_inputs():
    with pytest.raises(TypeError, match="floating-point"):
        Nonnegative()(torch.ones(2, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"radius must be a scalar or have shape \(B,\)"):
        L2Ball(torch.ones(3))(torch.randn(2, 4))
    with pytest.raises(ValueError, match="samples must have 4 entries"):
        AffineSet(torch.randn(2, 4))(torch.randn(2, 5))


@pytest.mark.parametrize("method", ["svd", "lu", "cg"])
def test_affine_set_copy_and_pickle(method):
    import copy
    import pickle

    B = _incidence(3, [(0, 1), (1, 2), (2, 0)])
    p = AffineSet(torch.tensor(B) if method == "svd" else sp.csr_matrix(B), torch.tensor([1.0, 0.0, -1.0], dtype=F64), method=method)
    x = torch.randn(2, 3, dtype=F64)
    for clone in (copy.deepcopy(p), pickle.loads(pickle.dumps(p))):
        torch.testing.assert_close(clone(x), p(x))


# ---------------------------------------------------------------------- relaxed projection onto a data ball
def _relaxed_case(data):
    """A general (not tight) A, data d = A x0 + e with ||e|| < eps (x0 feasible), a relaxation in (0, 2)."""
    rng = _rng(data)
    n = data.draw(st.integers(2, 7), label="n")
    m = data.draw(st.integers(1, 7), label="m")
    A = rng.normal(size=(m, n)) * rng.uniform(0.2, 3.0)
    x0 = rng.normal(size=(BATCH, n))
    e = rng.normal(size=(BATCH, m))
    eps = rng.uniform(0.05, 2.0, size=BATCH)
    e *= (eps * rng.uniform(0.0, 0.99, size=BATCH) / np.linalg.norm(e, axis=1))[:, None]
    lam = data.draw(st.floats(0.05, 1.95), label="lam")
    return A, x0, x0 @ A.T + e, eps, lam


def _relaxed_reference(A, x, d, eps, lam):
    """Dense float64 reference: relax the projection onto the supporting half-space {z : <a, z> <= b},
    a = grad g(x) = A^T r / ||r||, b = <a, x> - g(x), g = ||A . - d|| - eps."""
    out = x.copy()
    for i in range(x.shape[0]):
        r = A @ x[i] - d[i]
        g = np.linalg.norm(r) - eps[i]
        if g <= 0:
            continue
        a = A.T @ r / np.linalg.norm(r)
        b = a @ x[i] - g
        p_half = x[i] - max(a @ x[i] - b, 0.0) / (a @ a) * a
        out[i] = x[i] + lam * (p_half - x[i])
    return out


@SETTINGS
@given(data=st.data())
def test_relaxed_data_projection_matches_dense_reference_and_is_quasi_nonexpansive(data):
    A, x0, d, eps, lam = _relaxed_case(data)
    op = DenseOperator(torch.tensor(A))
    x = _draw_x(data, A.shape[1]).numpy()
    px = project_data_ball_relaxed(torch.tensor(x), op, torch.tensor(d), torch.tensor(eps), lam)
    np.testing.assert_allclose(px.numpy(), _relaxed_reference(A, x, d, eps, lam), rtol=1e-9, atol=1e-9)
    # strongly quasi-nonexpansive towards every feasible point: ||Px - z||^2 <= ||x - z||^2 - (2-lam)/lam ||Px - x||^2
    z = torch.tensor(x0)
    lhs = (px - z).pow(2).sum(1)
    rhs = (torch.tensor(x) - z).pow(2).sum(1) - (2 - lam) / lam * (px - torch.tensor(x)).pow(2).sum(1)
    assert bool((lhs <= rhs + 1e-9 * (1 + rhs.abs())).all())
    # the fixed points are exactly the feasible points
    torch.testing.assert_close(project_data_ball_relaxed(z, op, torch.tensor(d), torch.tensor(eps), lam), z,
                               rtol=0, atol=0)
    outside = (torch.tensor(x) @ torch.tensor(A).T - torch.tensor(d)).norm(dim=1) > torch.tensor(eps) * (1 + 1e-6)
    moved = (px - torch.tensor(x)).norm(dim=1) > 0
    assert bool((moved == outside).all())


@SETTINGS
@given(data=st.data())
def test_relaxed_data_projection_is_the_exact_projection_for_tight_operators(data):
    """For A A^T = nu I and lam = 1 the supporting half-space step lands on the ball: DataBall's projection,
    hence idempotent and nonexpansive there."""
    rng = _rng(data)
    n = data.draw(st.integers(2, 6), label="n")
    m = data.draw(st.integers(1, n), label="m")
    nu = rng.uniform(0.5, 4.0)
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    op = DenseOperator(torch.tensor(q[:m] * math.sqrt(nu)))
    d, eps = torch.tensor(rng.normal(size=(BATCH, m))), float(rng.uniform(0.0, 1.0))
    x, y = _draw_x(data, n, "x"), _draw_x(data, n, "y")
    px, py = project_data_ball_relaxed(x, op, d, eps), project_data_ball_relaxed(y, op, d, eps)
    torch.testing.assert_close(px, DataBall(op, d, eps, nu=nu)(x), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(project_data_ball_relaxed(px, op, d, eps), px, rtol=0, atol=1e-9)
    assert bool(((px - py).norm(dim=1) <= (x - y).norm(dim=1) * (1 + 1e-9) + 1e-9).all())


def test_relaxed_data_projection_iterates_reach_the_ball_and_errors():
    gen = torch.Generator().manual_seed(0)
    A = torch.randn(8, 12, generator=gen, dtype=F64)
    op = DenseOperator(A)
    d = torch.randn(3, 8, generator=gen, dtype=F64) * 4
    eps = torch.tensor([0.1, 0.5, 1.0], dtype=F64)
    x = torch.randn(3, 12, generator=gen, dtype=F64)
    for _ in range(300):  # Fejer-monotone iterates of a relaxed projection converge into the set
        x = project_data_ball_relaxed(x, op, d, eps, 1.5)
    assert bool(((x @ A.T - d).norm(dim=1) <= eps * (1 + 1e-6)).all())
    with pytest.raises(ValueError, match=r"relaxation must lie in \(0, 2\)"):
        project_data_ball_relaxed(x, op, d, eps, 2.0)
    with pytest.raises(TypeError, match="floating-point"):
        project_data_ball_relaxed(torch.zeros(3, 12, dtype=torch.long), op, d, eps)
