"""Solver working memory (every allocation counted by the CPU meter) and the two paths of the Anderson step
(host weights without autograd, torch weights under autograd)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fpntools
from fpntools import Anderson, Implicit, Picard
from fpntools.bench.memory import PeakMemory, peak_bytes_of_events
from fpntools.solvers import anderson_weights
from fpntools.solvers.anderson import anderson_weights_host

B, N = 4, 1 << 18  # a 4 MB float32 state: the meter's small tensors are < 0.1% of it
STATE = B * N * 4


def _peak(fn) -> float:
    fn()  # warm-up: lazy initialisation is not part of the peak
    with PeakMemory("cpu") as pm:
        fn()
    return pm.peak_bytes / STATE


def test_meter_sees_every_cpu_allocation():
    assert peak_bytes_of_events([(2, -5), (0, 10), (1, 4)]) == 14
    x = torch.randn(B, N)
    with PeakMemory("cpu") as pm:
        a = x * 2  # +1
        b = a + 1  # +2
        del a  # +1
        c = b * b  # +2
        del b, c
    assert pm.method.startswith("cpu") and abs(pm.peak_bytes / STATE - 2.0) < 1e-3


@pytest.fixture(scope="module")
def maps():
    torch.manual_seed(0)
    c = torch.randn(B, N)
    w = torch.tensor(0.5, requires_grad=True)

    def f_inplace(z):  # allocates exactly its output
        return torch.tanh(z).mul_(0.5).add_(c)

    def f_param(z):
        return torch.tanh(w * z) + c

    return c, w, f_inplace, f_param


@pytest.mark.parametrize("solver, bound", [(Anderson(m=5), 2 * 5 + 3), (Picard(), 4)])
def test_forward_solve_buffers(maps, solver, bound):
    """Anderson(m) holds its 2m ring buffers (iterates and residuals, the iterate written into its slot) plus
    f(z) and a mixing temporary; Picard holds z, f(z), the best iterate and the residual temporary."""
    c, _, f, _ = maps
    z0 = torch.zeros(B, N)

    def run():
        with torch.no_grad():
            fpntools.fixed_point(f, z0, solver, tol=1e-30, max_iter=12, divergence_factor=None)

    copies = _peak(run)
    assert copies <= bound + 0.01, copies
    if isinstance(solver, Anderson):
        assert copies >= 2 * solver.m  # the meter does see the ring buffers


@pytest.mark.parametrize("solver, bound", [(Anderson(m=5), 2 * 5 + 4), (Picard(), 5)])
def test_implicit_backward_buffers(maps, solver, bound):
    """Forward solve + implicit backward (adjoint by the same solver), above one differentiable application
    of f (forward and backward): the adjoint solve's buffers, z* and f(z*) kept for the adjoint, no copy of
    the forward history and no second output buffer."""
    c, w, _, f = maps
    z0 = torch.zeros(B, N)

    def base():
        w.grad = None
        (f(z0) * c).sum().backward()

    def run():
        w.grad = None
        backward = Implicit(solver=solver, tol=1e-30, max_iter=12)
        z, _ = fpntools.fixed_point(f, z0, solver, backward, tol=1e-30, max_iter=12, divergence_factor=None)
        (z * c).sum().backward()

    extra = _peak(run) - _peak(base)
    assert extra <= bound + 0.01, extra


def test_host_and_torch_anderson_weights_agree():
    g = torch.Generator().manual_seed(1)
    G = torch.randn(6, 4, 30, dtype=torch.float64, generator=g)
    for lam in (0.0, 1e-4):
        ref = anderson_weights(G @ G.mT, lam, newest=2)
        got = anderson_weights_host((G @ G.mT).numpy(), lam, newest=2)
        np.testing.assert_allclose(got, ref.numpy(), rtol=1e-9, atol=1e-12)
    # degenerate Gram matrices: identical residuals (every alpha summing to one is optimal), zero, NaN
    rank1 = torch.randn(6, 1, 30, dtype=torch.float64, generator=g).expand(6, 4, 30)
    for gram in [rank1 @ rank1.mT, torch.zeros(6, 4, 4, dtype=torch.float64),
                 torch.full((6, 4, 4), float("nan"), dtype=torch.float64)]:
        for lam in (0.0, 1e-4):
            got = anderson_weights_host(gram.numpy(), lam, newest=2)
            assert np.isfinite(got).all()
            np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-12)
            if bool(torch.isfinite(gram).all()):
                ref = anderson_weights(gram, lam, newest=2)
                quad = lambda a: np.einsum("bi,bij,bj->b", a, gram.numpy(), a)  # noqa: E731
                np.testing.assert_allclose(quad(got), quad(ref.numpy()), rtol=1e-6, atol=1e-12)
            else:
                np.testing.assert_array_equal(got, np.eye(4)[[2] * 6])  # the Picard fallback


def _tanh_map(dtype=torch.float64, device="cpu"):
    g = torch.Generator().manual_seed(2)
    W = torch.randn(12, 12, dtype=dtype, generator=g).to(device)
    W = 0.8 * W / torch.linalg.matrix_norm(W, 2)
    x = torch.randn(3, 12, dtype=dtype, generator=g).to(device)
    theta = torch.tensor(1.3, dtype=dtype, device=device, requires_grad=True)
    return (lambda z: torch.tanh(theta * (z @ W.T) + x)), theta


@pytest.mark.parametrize("beta", [1.0, 0.6])
def test_anderson_no_grad_and_unrolled_paths_agree(beta):
    """The in-place path (host weights, ring writes) and the autograd path compute the same iterates."""
    f, _ = _tanh_map()
    z0 = torch.zeros(3, 12, dtype=torch.float64)
    solver = Anderson(m=3, beta=beta)
    with torch.no_grad():
        z_a, info_a = fpntools.fixed_point(f, z0, solver, "jfb", tol=1e-12, max_iter=60)
    z_b, info_b = fpntools.fixed_point(f, z0, solver, "unroll", tol=1e-12, max_iter=60)
    assert info_a.ok and torch.equal(info_a.steps, info_b.steps)
    torch.testing.assert_close(z_a, z_b.detach(), rtol=1e-12, atol=1e-12)


def test_unrolled_anderson_gradient_matches_finite_differences():
    """``tol = 0``: exactly K Anderson steps, differentiated through the mixing weights."""
    f, theta = _tanh_map()
    z0 = torch.zeros(3, 12, dtype=torch.float64)
    r = torch.randn(3, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(3))

    def loss() -> torch.Tensor:
        z, _ = fpntools.fixed_point(f, z0, Anderson(m=3, beta=0.7), "unroll", tol=0.0, max_iter=6)
        return (z * r).sum()

    (grad,) = torch.autograd.grad(loss(), theta)
    h = 1e-6
    with torch.no_grad():
        theta += h
        up = float(loss())
        theta -= 2 * h
        down = float(loss())
        theta += h
    assert float(grad) == pytest.approx((up - down) / (2 * h), rel=1e-6)


def test_best_iterate_survives_the_ring_overwrite():
    """The best iterate is older than the Anderson memory: it is kept (copied out of the ring slot before the
    slot is reused), returned, and does not keep the ring buffers alive."""
    d = torch.tensor([1.0, 0.01, 1.0, 1.0, 1.0, 1.0, 1.0])
    seen: list[torch.Tensor] = []

    def f(z):
        k = len(seen)
        seen.append(z.clone())
        return z + d[min(k, len(d) - 1)]

    with torch.no_grad():
        z, info = fpntools.fixed_point(f, torch.zeros(2, 5), Anderson(m=2), tol=1e-9, max_iter=7,
                                       stop_mode="abs", divergence_factor=None)
    assert torch.equal(z, seen[1])
    torch.testing.assert_close(info.abs_residual, torch.full((2,), 0.01 * 5**0.5))
    assert z.untyped_storage().nbytes() == z.numel() * z.element_size()


def test_returned_value_is_a_view_without_copy_and_gradients_flow():
    f, theta = _tanh_map()
    z, info = fpntools.fixed_point(f, torch.zeros(3, 12, dtype=torch.float64), tol=1e-12, max_iter=80)
    assert info.ok and z.grad_fn is not None
    (g,) = torch.autograd.grad(z.sum(), theta)
    assert torch.isfinite(g)


def test_anderson_triton_mixing_matches_torch():
    """The fused kernel (``backend="triton"``: compiled on CUDA, run by the interpreter on CPU) gives the torch
    path's solve."""
    from fpntools.kernels import triton_available
    from fpntools.kernels.anderson import _interpret_mode

    if not (triton_available() and (torch.cuda.is_available() or _interpret_mode())):
        pytest.skip("triton not installed, or no CUDA and TRITON_INTERPRET is not 1")
    device = "cpu" if _interpret_mode() else "cuda"
    f, _ = _tanh_map(device=device)
    z0 = torch.zeros(3, 12, dtype=torch.float64, device=device)
    with torch.no_grad():
        z_t, info_t = fpntools.fixed_point(f, z0, Anderson(m=3, beta=0.8), tol=1e-10, max_iter=60)
        z_k, info_k = fpntools.fixed_point(f, z0, Anderson(m=3, beta=0.8, backend="triton"), tol=1e-10, max_iter=60)
    assert info_t.ok and torch.equal(info_t.steps, info_k.steps)
    torch.testing.assert_close(z_k, z_t, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="backend"):
        Anderson(backend="cuda")
