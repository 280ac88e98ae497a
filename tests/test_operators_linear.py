"""Linear operators: exact adjoints, autograd (incl. double backward), algebra, norms, shapes, dtype/device."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from torch import nn

from fpntools.operators import (
    AdjointOperator,
    ComposedOperator,
    DenseOperator,
    Diagonal,
    FiniteDifferenceGradient,
    Identity,
    LinearOperator,
    MatrixFreeOperator,
    SparseOperator,
    divergence,
    gradient,
)

F64 = torch.float64


def _dense() -> LinearOperator:
    return DenseOperator(torch.randn(6, 12, dtype=F64), in_shape=(3, 4), out_shape=(2, 3))


def _sparse_scipy() -> LinearOperator:
    W = sp.random(7, 12, density=0.3, format="csr", random_state=1, dtype=np.float64)
    return SparseOperator(W, in_shape=(3, 4))


def _sparse_torch() -> LinearOperator:
    M = torch.randn(5, 8, dtype=F64) * (torch.rand(5, 8) < 0.4)
    return SparseOperator(M.to_sparse(), out_shape=(5,))


def _cumsum() -> LinearOperator:
    # A x = cumsum(x); A^T y = reversed cumulative sum of y
    return MatrixFreeOperator(
        lambda x: x.cumsum(dim=1), lambda y: y.flip(1).cumsum(dim=1).flip(1), in_shape=7, out_shape=7
    )


def _grad2d() -> LinearOperator:
    return FiniteDifferenceGradient((4, 5))


OPERATORS: dict[str, Callable[[], LinearOperator]] = {
    "dense": _dense,
    "sparse_scipy": _sparse_scipy,
    "sparse_torch": _sparse_torch,
    "matrix_free": _cumsum,
    "identity": lambda: Identity((2, 3)),
    "diagonal": lambda: Diagonal(torch.randn(3, 4, dtype=F64)),
    "grad_2d": _grad2d,
    "grad_1d": lambda: FiniteDifferenceGradient(6),
    "grad_3d_last2": lambda: FiniteDifferenceGradient((2, 3, 4), dims=(1, 2)),
    "grad_3d_all": lambda: FiniteDifferenceGradient((2, 3, 4)),
    "compose": lambda: _grad2d() @ Diagonal(torch.rand(4, 5, dtype=F64)) @ _grad2d().T,
    "scaled": lambda: 2.5 * _dense(),
    "scaled_tensor": lambda: _dense() * torch.tensor(-0.5, dtype=F64),
    "sum": lambda: _dense() + 3.0 * _dense(),
    "difference": lambda: _sparse_scipy() - _sparse_scipy() / 2,
    "adjoint": lambda: _dense().T,
    "normal": lambda: _dense().T @ _dense(),
}


@pytest.fixture(params=list(OPERATORS), ids=list(OPERATORS))
def op(request) -> LinearOperator:
    return OPERATORS[request.param]()


def test_dot_product_test(op):
    assert op.adjointness_error(batch=3) < 1e-10
    assert op.T.adjointness_error(batch=3) < 1e-10


def test_matrix_of_adjoint_is_transpose(op):
    A = op.to_dense(dtype=F64)
    assert A.shape == (op.out_size, op.in_size)
    torch.testing.assert_close(op.T.to_dense(dtype=F64), A.T, rtol=0, atol=1e-12)
    x = torch.randn(2, *op.in_shape, dtype=F64)
    torch.testing.assert_close(op(x).reshape(2, -1), x.reshape(2, -1) @ A.T, rtol=1e-12, atol=1e-12)


def test_gradcheck_forward_and_adjoint(op):
    x = torch.randn(2, *op.in_shape, dtype=F64, requires_grad=True)
    y = torch.randn(2, *op.out_shape, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(op.A, (x,), fast_mode=True)
    assert torch.autograd.gradgradcheck(op.A, (x,), fast_mode=True)
    assert torch.autograd.gradcheck(op.A_adjoint, (y,), fast_mode=True)
    assert torch.autograd.gradgradcheck(op.A_adjoint, (y,), fast_mode=True)


def test_double_backward_hessian_vector_product():
    op = _sparse_scipy()
    A = op.to_dense()
    x = torch.randn(2, 3, 4, dtype=F64, requires_grad=True)
    v = torch.randn(2, 3, 4, dtype=F64)
    loss = 0.5 * op(x).pow(2).sum()  # Hessian A^T A
    (g,) = torch.autograd.grad(loss, x, create_graph=True)
    torch.testing.assert_close(g.reshape(2, -1), x.detach().reshape(2, -1) @ A.T @ A)
    (hv,) = torch.autograd.grad((g * v).sum(), x)
    torch.testing.assert_close(hv.reshape(2, -1), v.reshape(2, -1) @ A.T @ A)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")  # inside torch.func
def test_forward_mode_jvp():
    op = _grad2d()
    x, v = torch.randn(2, 4, 5, dtype=F64), torch.randn(2, 4, 5, dtype=F64)
    out, tangent = torch.func.jvp(op.A, (x,), (v,))
    torch.testing.assert_close(tangent, op(v))
    _, tangent_t = torch.func.jvp(op.A_adjoint, (out,), (op(v),))
    torch.testing.assert_close(tangent_t, op.T(op(v)))
    # dual numbers (torch.autograd.forward_ad), also under no_grad, with a scipy-backed sparse operator
    import torch.autograd.forward_ad as fwad

    sparse = _sparse_scipy()
    xs, vs = torch.randn(2, 3, 4, dtype=F64), torch.randn(2, 3, 4, dtype=F64)
    with torch.no_grad(), fwad.dual_level():
        out = sparse(fwad.make_dual(xs, vs))
        torch.testing.assert_close(fwad.unpack_dual(out).tangent, sparse(vs))


def test_learnable_matrix_receives_gradient():
    M = nn.Parameter(torch.randn(3, 5, dtype=F64))
    op = DenseOperator(M)
    x, w = torch.randn(4, 5, dtype=F64), torch.randn(4, 3, dtype=F64)
    (op(x) * w).sum().backward()
    torch.testing.assert_close(M.grad, w.T @ x)  # d/dM sum_b <w_b, M x_b>
    M.grad = None
    (op.T(w) * x).sum().backward()
    torch.testing.assert_close(M.grad, w.T @ x)


def test_composite_with_learnable_part_keeps_all_gradients():
    # the scipy-backed sparse kernel is not differentiable by itself; inside a composite that runs directly
    # (because of the learnable diagonal) it must still pass gradients through its custom autograd function
    w = nn.Parameter(torch.rand(3, 4, dtype=F64) + 0.5)
    sparse = _sparse_scipy()
    op = sparse @ Diagonal(w)
    A = sparse.to_dense()
    x = torch.randn(2, 3, 4, dtype=F64, requires_grad=True)
    v = torch.randn(2, 7, dtype=F64)
    (op(x) * v).sum().backward()
    torch.testing.assert_close(x.grad.reshape(2, -1), (v @ A) * w.detach().reshape(1, -1))
    torch.testing.assert_close(w.grad.reshape(-1), ((v @ A) * x.detach().reshape(2, -1)).sum(0))
    assert torch.autograd.gradgradcheck(lambda t: op.T(op(t)), (x.detach().requires_grad_(),), fast_mode=True)


@pytest.mark.parametrize("name", ["dense", "sparse_scipy", "grad_2d", "compose", "normal"])
def test_power_iteration_norm(name):
    op = OPERATORS[name]()
    ref = float(torch.linalg.matrix_norm(op.to_dense(dtype=F64), ord=2))
    assert op.norm(n_iter=3000, tol=1e-13) == pytest.approx(ref, rel=1e-5)


def test_power_iteration_norm_with_known_spectrum():
    q1, _ = torch.linalg.qr(torch.randn(9, 9, dtype=F64))
    q2, _ = torch.linalg.qr(torch.randn(6, 6, dtype=F64))
    s = torch.tensor([3.0, 2.0, 1.0, 0.5, 0.1, 0.0], dtype=F64)
    op = DenseOperator(q1[:, :6] @ torch.diag(s) @ q2.T)
    assert op.norm(n_iter=500, tol=1e-15) == pytest.approx(3.0, rel=1e-12)
    assert (0.5 * op).norm(n_iter=500, tol=1e-15) == pytest.approx(1.5, rel=1e-12)
    assert Identity(4).norm() == 1.0
    assert Diagonal(torch.tensor([1.0, -4.0, 2.0])).norm() == 4.0
    assert FiniteDifferenceGradient((8, 8)).norm(n_iter=2000) <= 8**0.5


def test_finite_difference_values_and_neumann_boundary():
    x = torch.arange(12, dtype=F64).reshape(1, 3, 4) ** 2
    g = FiniteDifferenceGradient((3, 4))(x)
    assert g.shape == (1, 2, 3, 4)
    torch.testing.assert_close(g[0, 0, :2], x[0, 1:] - x[0, :-1])
    torch.testing.assert_close(g[0, 1, :, :3], x[0, :, 1:] - x[0, :, :-1])
    assert bool((g[0, 0, -1] == 0).all()) and bool((g[0, 1, :, -1] == 0).all())
    assert torch.equal(gradient(torch.ones(2, 3, 4, dtype=F64)), torch.zeros(2, 2, 3, 4, dtype=F64))
    # divergence is minus the adjoint
    p = torch.randn(2, 2, 3, 4, dtype=F64)
    xx = torch.randn(2, 3, 4, dtype=F64)
    torch.testing.assert_close((gradient(xx) * p).sum(), -(xx * divergence(p)).sum())
    torch.testing.assert_close(FiniteDifferenceGradient((3, 4)).T(p), -divergence(p))


def test_shape_and_dtype_errors():
    op = _dense()
    with pytest.raises(ValueError, match=r"expected input of shape \(B, 3, 4\).*got \(2, 12\)"):
        op(torch.randn(2, 12, dtype=F64))
    with pytest.raises(ValueError, match=r"\(B, 2, 3\).*got \(2, 3\)"):
        op.T(torch.randn(2, 3, dtype=F64))
    with pytest.raises(TypeError, match="floating-point"):
        op(torch.ones(2, 3, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="cannot compose"):
        _ = op @ op
    with pytest.raises(ValueError, match="cannot add"):
        _ = op + op.T
    with pytest.raises(ValueError, match="does not fit"):
        DenseOperator(torch.randn(3, 4), in_shape=(5,))
    with pytest.raises(ValueError, match="2-D"):
        DenseOperator(torch.randn(3))
    with pytest.raises(TypeError):
        SparseOperator([[1.0, 2.0]])


def test_algebra_structure():
    a, b = _dense(), _dense()
    assert isinstance(a @ b.T, ComposedOperator) and (a @ b.T).in_shape == (2, 3)
    assert isinstance(a.T, AdjointOperator) and a.T.T is a
    x = torch.randn(2, 3, 4, dtype=F64)
    torch.testing.assert_close((a + b)(x), a(x) + b(x))
    torch.testing.assert_close((a - b)(x), a(x) - b(x))
    torch.testing.assert_close((-a)(x), -a(x))
    torch.testing.assert_close(a @ x, a(x))
    # flattening of nested compositions
    c = Identity((2, 3)) @ a @ Identity((3, 4))
    assert len(c.ops) == 3


def test_to_changes_buffers_and_input_dtype_is_respected():
    op = _sparse_scipy().to(torch.float32)
    assert op.matrix.dtype == torch.float32 and op.matrix_t.dtype == torch.float32
    x32 = torch.randn(2, 3, 4)
    assert op(x32).dtype == torch.float32
    x64 = x32.double()
    y = op(x64)  # operator converted on the fly to the input's dtype
    assert y.dtype == F64
    assert op.adjointness_error() < 1e-10  # float64 copy for the test
    d = DenseOperator(torch.randn(3, 4)).to(F64)
    assert d.matrix.dtype == F64
    assert Diagonal(torch.ones(3)).to(F64).weights.dtype == F64
    g = FiniteDifferenceGradient((3, 3))
    assert g(torch.randn(1, 3, 3, dtype=torch.float32)).dtype == torch.float32


def test_sparse_operator_transpose_is_precomputed():
    W = sp.random(6, 9, density=0.4, format="csr", random_state=3)
    op = SparseOperator(W)
    assert op.nnz == W.nnz
    torch.testing.assert_close(op.matrix_t.to_dense(), torch.from_numpy(W.T.toarray()))
    np.testing.assert_allclose(op.to_scipy().toarray(), W.toarray())
    # dense input matrix and CSR input give the same operator
    op2 = SparseOperator(torch.from_numpy(W.toarray()).to_sparse_csr())
    x = torch.randn(3, 9, dtype=F64)
    torch.testing.assert_close(op(x), op2(x))


def test_to_dense_refuses_large():
    with pytest.raises(ValueError, match="max_entries"):
        FiniteDifferenceGradient((64, 64)).to_dense(max_entries=1000)


@pytest.mark.parametrize("backend", ["torch", "scipy"])
def test_sparse_backends_agree_with_full_gradgradcheck(backend):
    W = sp.random(5, 6, density=0.5, format="csr", random_state=4, dtype=np.float64)
    op = SparseOperator(W, backend=backend)
    x = torch.randn(2, 6, dtype=F64, requires_grad=True)
    fast = backend == "torch"  # torch's CSR kernel pays an OpenMP start-up per call on a busy CPU
    assert torch.autograd.gradcheck(op.A, (x,), fast_mode=fast)
    assert torch.autograd.gradgradcheck(op.A, (x,), fast_mode=fast)
    torch.testing.assert_close(op(x.detach()), x.detach() @ torch.from_numpy(W.toarray()).T)
    assert op.adjointness_error() < 1e-12


def test_copy_and_pickle_keep_the_operator():
    import copy
    import pickle

    op = 2.0 * (_sparse_scipy() @ Diagonal(torch.rand(3, 4, dtype=F64)))
    x = torch.randn(2, 3, 4, dtype=F64)
    y = op(x)
    for clone in (copy.deepcopy(op), pickle.loads(pickle.dumps(op))):
        torch.testing.assert_close(clone(x), y)
        assert clone.adjointness_error() < 1e-12
