"""Hutchinson Jacobian penalty, spectral radius by power iteration, the JacobianPenalty training object."""

import pytest
import torch

from fpntools.regularization import JacobianPenalty, jacobian_frobenius, spectral_radius

D = torch.float64


def _mlp(n: int = 6, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(n, n, generator=g, dtype=D) / n**0.5
    c = torch.randn(n, generator=g, dtype=D)
    return lambda z: torch.tanh(z @ A.T + c)


def _dense_jacobians(f, z: torch.Tensor) -> torch.Tensor:
    """(B, n, n) per-sample Jacobians of a row-wise map."""
    return torch.stack([torch.autograd.functional.jacobian(lambda v: f(v[None])[0], zb) for zb in z])


# ------------------------------------------------------------------------------------------- Hutchinson


@pytest.mark.parametrize("noise", ["gaussian", "rademacher"])
def test_hutchinson_matches_exact_frobenius(noise: str) -> None:
    f = _mlp()
    z = torch.randn(3, 6, dtype=D, requires_grad=True)
    fz = f(z)
    exact = _dense_jacobians(f, z.detach()).pow(2).sum(dim=(1, 2))
    g = torch.Generator().manual_seed(0)
    est = jacobian_frobenius(
        fz, z, n_samples=3000, normalize=False, create_graph=False, reduction="none", noise=noise, generator=g
    )
    assert est.shape == (3,)
    torch.testing.assert_close(est, exact, rtol=0.05, atol=0)
    # normalisation by the state dimension and batch reductions
    mean = jacobian_frobenius(fz, z, n_samples=3000, create_graph=False, noise=noise, generator=g)
    torch.testing.assert_close(mean, exact.mean() / 6, rtol=0.05, atol=0)


def test_hutchinson_single_probe_is_unbiased() -> None:
    """The mean of many independent one-probe estimates converges to ||J||_F^2 (within a few %)."""
    f = _mlp(4, seed=2)
    z = torch.randn(1, 4, dtype=D, requires_grad=True)
    fz = f(z)
    exact = _dense_jacobians(f, z.detach()).pow(2).sum()
    g = torch.Generator().manual_seed(5)
    draws = torch.stack(
        [jacobian_frobenius(fz, z, normalize=False, create_graph=False, generator=g) for _ in range(2000)]
    )
    assert draws.std() > 0.05 * exact  # genuinely random single estimates ...
    torch.testing.assert_close(draws.mean(), exact, rtol=0.05, atol=0)  # ... with the right mean


def test_hutchinson_tuple_state() -> None:
    g = torch.Generator().manual_seed(3)
    A, B, C = (torch.randn(3, 3, generator=g, dtype=D) for _ in range(3))

    def f(s):
        a, b = s
        return torch.sin(a @ A + b @ B), b @ C

    a = torch.randn(2, 3, dtype=D, requires_grad=True)
    b = torch.randn(2, 3, dtype=D, requires_grad=True)
    fz = f((a, b))
    flat = lambda v: torch.cat(f((v[None, :3], v[None, 3:])), dim=1)[0]  # noqa: E731
    exact = torch.stack(
        [torch.autograd.functional.jacobian(flat, torch.cat([a[i], b[i]]).detach()).pow(2).sum() for i in range(2)]
    )
    est = jacobian_frobenius(fz, [a, b], n_samples=3000, create_graph=False, reduction="none", generator=g)
    torch.testing.assert_close(est, exact / 6, rtol=0.05, atol=0)


def test_penalty_gradient_matches_finite_differences() -> None:
    """With fixed probes the estimate is a smooth function of the parameters: gradcheck in float64."""
    g0 = torch.Generator().manual_seed(7)
    W = torch.randn(4, 4, generator=g0, dtype=D, requires_grad=True)
    x = torch.randn(3, 4, generator=g0, dtype=D)
    z0 = torch.randn(3, 4, generator=g0, dtype=D)

    def penalty(weight: torch.Tensor) -> torch.Tensor:
        z = z0.clone().requires_grad_()
        fz = torch.tanh(z @ weight.T + x)
        return jacobian_frobenius(fz, z, n_samples=2, generator=torch.Generator().manual_seed(11))

    assert torch.autograd.gradcheck(penalty, (W,))
    # and training lowers it: one gradient step decreases the penalty
    p0 = penalty(W)
    (gw,) = torch.autograd.grad(p0, W)
    assert penalty(W - 0.1 * gw) < p0


def test_hutchinson_bad_input() -> None:
    z = torch.randn(2, 3)
    with pytest.raises(ValueError, match="does not require grad"):
        jacobian_frobenius(z * 2, z)
    zr = z.clone().requires_grad_()
    with pytest.raises(ValueError, match="batch size 4 but z has batch size 2"):
        jacobian_frobenius(torch.randn(4, 3, requires_grad=True), zr)
    with pytest.raises(ValueError, match="n_samples"):
        jacobian_frobenius(zr * 2, zr, n_samples=0)
    with pytest.raises(TypeError, match="tensor or a tuple/list"):
        jacobian_frobenius(zr * 2, {"z": zr})  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------- spectral radius


def _batched_linear(mats: torch.Tensor):
    return lambda z: torch.einsum("bij,bj->bi", mats, z)


def test_spectral_radius_symmetric() -> None:
    g = torch.Generator().manual_seed(0)
    Q, _ = torch.linalg.qr(torch.randn(2, 7, 7, generator=g, dtype=D))
    lam = torch.tensor([[-2.0, 1.5, 1.0, 0.5, 0.1, -0.3, 0.0], [0.9, -0.6, 0.5, 0.3, 0.2, 0.1, 0.05]], dtype=D)
    A = Q @ torch.diag_embed(lam) @ Q.transpose(1, 2)
    z = torch.randn(2, 7, dtype=D)
    rho = spectral_radius(_batched_linear(A), z, n_iter=300, tol=1e-12, generator=g)
    exact = torch.linalg.eigvals(A).abs().amax(dim=1)
    torch.testing.assert_close(rho, exact, rtol=1e-6, atol=0)
    torch.testing.assert_close(exact, torch.tensor([2.0, 0.9], dtype=D))


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")  # inside torch.func
@pytest.mark.parametrize("method", ["vjp", "jvp"])
def test_spectral_radius_nonsymmetric_nonlinear(method: str) -> None:
    g = torch.Generator().manual_seed(1)
    n = 6
    P = torch.eye(n, dtype=D) + 0.3 * torch.randn(n, n, generator=g, dtype=D)
    A = P @ torch.diag(torch.tensor([-3.0, 1.0, -0.8, 0.5, 0.2, 0.1], dtype=D)) @ torch.linalg.inv(P)

    def f(z: torch.Tensor) -> torch.Tensor:
        return z @ A.T + 0.1 * torch.tanh(z)

    z = torch.randn(3, n, dtype=D)
    eig = torch.linalg.eigvals(_dense_jacobians(f, z))
    dominant = eig[torch.arange(3), eig.abs().argmax(dim=1)]
    assert (dominant.imag.abs() < 1e-10).all()  # real dominant eigenvalue
    rho = spectral_radius(f, z, n_iter=300, tol=1e-12, method=method, generator=g)
    torch.testing.assert_close(rho, dominant.abs(), rtol=1e-6, atol=0)
    assert not rho.requires_grad and rho.shape == (3,)


def test_spectral_radius_tuple_state_and_no_grad_context() -> None:
    g = torch.Generator().manual_seed(2)
    M = torch.randn(5, 5, generator=g, dtype=D)
    M = (M + M.T) / 2

    def f(s):
        a, b = s
        v = torch.cat([a, b], dim=1) @ M
        return v[:, :2], v[:, 2:]

    with torch.no_grad():  # works inside no_grad (evaluation loops)
        rho = spectral_radius(f, (torch.randn(2, 2, dtype=D), torch.randn(2, 3, dtype=D)), n_iter=500, tol=1e-13)
    torch.testing.assert_close(rho, torch.linalg.eigvalsh(M).abs().max().expand(2), rtol=1e-6, atol=0)


def test_spectral_radius_zero_jacobian_and_errors() -> None:
    z = torch.randn(2, 3)
    torch.testing.assert_close(spectral_radius(lambda v: torch.ones_like(v), z), torch.zeros(2))
    with pytest.raises(ValueError, match=r"shape \(2, 4\) but z\[0\] has shape \(2, 3\)"):
        spectral_radius(lambda v: torch.cat([v, v[:, :1]], dim=1), z)
    with pytest.raises(ValueError, match="method"):
        spectral_radius(lambda v: v, z, method="svd")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------- JacobianPenalty


def test_penalty_object_schedule_and_probability() -> None:
    f = _mlp(4)
    z = torch.randn(2, 4, dtype=D, requires_grad=True)
    fz = f(z)
    pen = JacobianPenalty(weight=2.0, schedule="linear", warmup_steps=10, generator=torch.Generator().manual_seed(0))
    assert pen.weight_at(0) == 0.0 and pen.weight_at(5) == 1.0 and pen.weight_at(50) == 2.0
    assert pen(fz, z, step=0).item() == 0.0
    ref = jacobian_frobenius(fz, z, generator=torch.Generator().manual_seed(0))
    full = JacobianPenalty(weight=2.0, generator=torch.Generator().manual_seed(0))(fz, z, step=3)
    torch.testing.assert_close(full, 2.0 * ref)
    assert full.requires_grad

    sometimes = JacobianPenalty(weight=1.0, p=0.3, generator=torch.Generator().manual_seed(1))
    applied = sum(bool(sometimes(fz, z, step=k) != 0) for k in range(300))
    assert 60 <= applied <= 120
    assert JacobianPenalty(p=0.0)(fz, z, 1).item() == 0.0


def test_penalty_object_validation() -> None:
    with pytest.raises(ValueError, match="probability"):
        JacobianPenalty(p=1.5)
    with pytest.raises(ValueError, match="warmup_steps"):
        JacobianPenalty(schedule="linear")
    with pytest.raises(ValueError, match="schedule"):
        JacobianPenalty(schedule="cosine")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="weight"):
        JacobianPenalty(weight=-1.0)


def test_tuple_state_with_a_constant_output() -> None:
    """Outputs that do not depend on z (no graph) are handled: they contribute zero Jacobian rows."""
    A = torch.randn(3, 3, dtype=D)
    A = A + A.T  # real spectrum, so power iteration converges

    def f(s):
        a, b = s
        return a @ A.T, torch.ones_like(b)

    a = torch.randn(2, 3, dtype=D, requires_grad=True)
    b = torch.randn(2, 2, dtype=D, requires_grad=True)
    est = jacobian_frobenius(
        f((a, b)), (a, b), n_samples=2000, normalize=False, create_graph=False, noise="rademacher", reduction="none"
    )
    torch.testing.assert_close(est, A.pow(2).sum().expand(2), rtol=0.05, atol=0)
    rho = spectral_radius(f, (a.detach(), b.detach()), n_iter=500, tol=1e-12)
    torch.testing.assert_close(rho, torch.linalg.eigvals(A).abs().max().expand(2), rtol=1e-4, atol=0)
