"""Augmented DEQ (joint inference and input optimisation): residuals, agreement with the nested method and
closed forms, projections, cost counting, and gradients through the joint fixed point (float64)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import Tensor, nn

from fpntools import Anderson, Implicit
from fpntools.augmented import (
    AugmentedConfig,
    AugmentedMap,
    Counter,
    NaiveConfig,
    augmented_solve,
    input_gradient,
    naive_solve,
    solve_equilibrium,
    true_objective,
)

DT = torch.float64
B, N, D, P = 3, 10, 4, 8


class Tanh(nn.Module):
    """``f(z, x) = tanh(W z + U x + b)`` with ``||W||_2 = rho`` (a contraction)."""

    def __init__(self, rho: float = 0.5) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(1)
        w = torch.randn(N, N, generator=g, dtype=DT)
        self.W = nn.Parameter(rho * w / torch.linalg.matrix_norm(w, 2))
        self.U = nn.Parameter(torch.randn(N, D, generator=g, dtype=DT) / D**0.5)
        self.b = nn.Parameter(0.1 * torch.randn(N, generator=g, dtype=DT))

    def forward(self, z: Tensor, x: Tensor) -> Tensor:
        return torch.tanh(z @ self.W.T + x @ self.U.T + self.b)


def _quad_loss(C: Tensor, y: Tensor, lam: float):
    def loss(z: Tensor, x: Tensor) -> Tensor:
        return 0.5 * ((z @ C.T - y) ** 2).sum(1) + 0.5 * lam * (x**2).sum(1)

    return loss


def _setup(lam: float = 0.3):
    g = torch.Generator().manual_seed(2)
    layer = Tanh()
    C = torch.randn(P, N, generator=g, dtype=DT)
    y = torch.randn(B, P, generator=g, dtype=DT)
    return layer, C, y, _quad_loss(C, y, lam)


TIGHT = AugmentedConfig(step_size=0.05, tol=1e-12, max_iter=600, solver_options={"m": 8})


def test_joint_fixed_point_residuals_below_tolerance():
    layer, C, y, loss = _setup()
    x0, z0 = torch.zeros(B, D, dtype=DT), torch.zeros(B, N, dtype=DT)
    with torch.no_grad():
        res = augmented_solve(layer, loss, x0, z0, config=TIGHT)
    assert res.info.ok, res.info.summary()
    assert float(res.deq_residual.max()) < 1e-9
    assert float(res.adjoint_residual.max()) < 1e-9
    assert float(res.grad_norm.max()) < 1e-8
    assert torch.allclose(res.optimality_residual, res.grad_norm)
    # the joint adjoint is the dense adjoint (I - J)^{-T} dl/dz at the equilibrium
    for i in range(B):
        zi, xi = res.z[i], res.x[i]
        jac = torch.autograd.functional.jacobian(lambda v: layer(v[None], xi[None])[0], zi)
        dldz = C.T @ (C @ zi - y[i])
        mu = torch.linalg.solve((torch.eye(N, dtype=DT) - jac).T, dldz)
        assert torch.allclose(res.mu[i], mu, atol=1e-9)
    # and the nested method's gradient at x* vanishes too
    _, g, _, _ = input_gradient(layer, loss, res.x.detach(), z0, tol=1e-12, max_iter=200, backward_tol=1e-12, backward_max_iter=200)
    assert float(g.norm()) < 1e-7


def test_matches_closed_form_and_naive_on_convex_linear_case():
    """Linear DEQ z = A z + Bx + c and quadratic loss: L(x) is a convex quadratic with a closed-form minimiser."""
    g = torch.Generator().manual_seed(3)
    A = torch.randn(N, N, generator=g, dtype=DT)
    A = 0.6 * A / torch.linalg.matrix_norm(A, 2)
    Bm = torch.randn(N, D, generator=g, dtype=DT)
    c = torch.randn(N, generator=g, dtype=DT)
    C = torch.randn(P, N, generator=g, dtype=DT) / N**0.5
    y = torch.randn(B, P, generator=g, dtype=DT)
    lam = 6.0
    f = lambda z, x: z @ A.T + x @ Bm.T + c  # noqa: E731
    loss = _quad_loss(C, y, lam)
    Minv = torch.linalg.inv(torch.eye(N, dtype=DT) - A)
    M, d = C @ Minv @ Bm, C @ Minv @ c
    H = M.T @ M + lam * torch.eye(D, dtype=DT)
    x_star = torch.linalg.solve(H, ((y - d) @ M).T).T
    step = 1.0 / float(torch.linalg.eigvalsh(H).max())
    x0, z0 = torch.zeros(B, D, dtype=DT), torch.zeros(B, N, dtype=DT)
    with torch.no_grad():
        aug = augmented_solve(f, loss, x0, z0, config=AugmentedConfig(step_size=step, tol=1e-12, max_iter=300))
    assert torch.allclose(aug.x, x_star, atol=1e-9)
    naive = naive_solve(
        f, loss, x0, z0,
        config=NaiveConfig(optimizer="gd", lr=step, steps=60, inner_tol=1e-11, inner_max_iter=60, backward_tol=1e-11, backward_max_iter=60),
    )
    assert torch.allclose(naive.x, x_star, atol=1e-6)
    assert torch.allclose(aug.x, naive.x, atol=1e-6)
    assert torch.allclose(aug.objective, naive.objective, rtol=1e-9)
    # the joint solve needs far fewer evaluations of f than the nested one
    assert aug.nfe + aug.nvjp < (naive.nfe + naive.nvjp) / 3


def test_box_projection_gives_projected_stationary_point():
    layer, C, y, loss = _setup(lam=0.0)
    box = lambda x: x.clamp(-0.2, 0.2)  # noqa: E731
    x0, z0 = torch.zeros(B, D, dtype=DT), torch.zeros(B, N, dtype=DT)
    with torch.no_grad():
        res = augmented_solve(layer, loss, x0, z0, box, TIGHT)
    assert res.info.ok
    assert float(res.x.abs().max()) <= 0.2 + 1e-12
    assert float(res.x.abs().max()) == pytest.approx(0.2)  # some bound is active
    assert float(res.optimality_residual.max()) < 1e-8
    # KKT conditions with the nested method's gradient: zero inside, pointing outwards at active bounds
    _, g, _, _ = input_gradient(layer, loss, res.x, z0, tol=1e-12, max_iter=200, backward_tol=1e-12, backward_max_iter=200)
    upper, lower = res.x >= 0.2 - 1e-12, res.x <= -0.2 + 1e-12
    inside = ~(upper | lower)
    assert float(g[inside].abs().max()) < 1e-7
    assert bool((g[upper] <= 1e-9).all()) and bool((g[lower] >= -1e-9).all())


def test_counter_counts_evaluations_and_vjps():
    layer, C, y, loss = _setup()
    x0, z0 = torch.zeros(B, D, dtype=DT), torch.zeros(B, N, dtype=DT)
    counter = Counter(record_every=2)
    counter.start()
    with torch.no_grad():
        res = augmented_solve(layer, loss, x0, z0, config=AugmentedConfig(step_size=0.05, max_iter=20, tol=1e-14), counter=counter)
    assert res.nfe == res.info.nfe == 20 and res.nvjp == 20
    assert res.nloss == counter.nloss == 20  # one objective evaluation (with its gradient) per joint iteration
    assert len(counter.snapshots) == 10 and counter.snapshots[-1].nfe == 18 and counter.snapshots[-1].nloss == 18
    c2 = Counter()
    naive = naive_solve(layer, loss, x0, z0, config=NaiveConfig(steps=3), counter=c2)
    assert naive.nfe == c2.nfe > 3 and naive.nvjp == c2.nvjp > 3
    assert naive.nloss == c2.nloss == 3  # one per outer step, however many inner iterations
    # a true-objective evaluation is not counted
    true_objective(c2.wrap(layer), loss, naive.x, z0)
    assert c2.nvjp == naive.nvjp


@pytest.mark.parametrize("backward", ["implicit", "jfb"])
def test_gradients_through_joint_fixed_point(backward):
    """d/dtheta of an outer loss of (x*, z*) (theta: layer weights and the target y): implicit gradient vs
    central finite differences of the full solve, float64. JFB gives a finite approximation."""
    layer, C, y0, _ = _setup()
    y = y0.clone().requires_grad_()
    w = torch.randn(B, D, dtype=DT)
    x0, z0 = torch.zeros(B, D, dtype=DT), torch.zeros(B, N, dtype=DT)
    bwd = Implicit(tol=1e-12, max_iter=800, solver=Anderson(m=8)) if backward == "implicit" else backward
    cfg = AugmentedConfig(step_size=0.05, tol=1e-13, max_iter=800, solver_options={"m": 8}, backward=bwd)

    def outer(yv: Tensor) -> Tensor:
        res = augmented_solve(layer, _quad_loss(C, yv, 0.3), x0, z0, config=cfg)
        assert res.info.ok
        return (res.x * w).sum() + 0.5 * (res.z**2).sum()

    out = outer(y)
    params = [layer.W, y]
    grads = torch.autograd.grad(out, params)
    assert all(torch.isfinite(g).all() for g in grads)
    if backward != "implicit":
        return
    eps = 1e-4
    g_gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p, g in zip(params, grads):
            d = torch.randn(p.shape, generator=g_gen, dtype=DT)
            p.add_(eps * d)
            fp = float(outer(y))
            p.sub_(2 * eps * d)
            fm = float(outer(y))
            p.add_(eps * d)
            fd = (fp - fm) / (2 * eps)
            assert float((g * d).sum()) == pytest.approx(fd, rel=1e-5, abs=1e-7)


def test_bad_options_and_loss_shape():
    layer, C, y, loss = _setup()
    x0, z0 = torch.zeros(B, D, dtype=DT), torch.zeros(B, N, dtype=DT)
    with pytest.raises(ValueError, match="step_size"):
        AugmentedMap(layer, loss, step_size=-0.1)
    with pytest.raises(ValueError, match="step sizes"):
        augmented_solve(layer, loss, x0, z0, config=AugmentedConfig(step_size=0.0))
    with pytest.raises(ValueError, match="settle_iters"):
        augmented_solve(layer, loss, x0, z0, config=AugmentedConfig(settle_iters=-1))
    with pytest.raises(ValueError, match="per-sample"):
        augmented_solve(layer, lambda z, x: loss(z, x).sum(), x0, z0)
    with pytest.raises(ValueError, match="optimizer"):
        naive_solve(layer, loss, x0, z0, config=NaiveConfig(optimizer="lbfgs"))


def test_schedule_and_jacobian_penalty_hook():
    layer, C, y, loss = _setup()
    x0, z0 = torch.zeros(B, D, dtype=DT), torch.zeros(B, N, dtype=DT)
    calls = []

    def penalty(fz: Tensor, z_in: Tensor, step: int) -> Tensor:
        calls.append(step)
        (jv,) = torch.autograd.grad(fz, z_in, torch.ones_like(fz), create_graph=True)
        return jv.pow(2).sum()

    cfg = AugmentedConfig(step_size=0.05, tol=1e-10, max_iter=400, schedule=((0.01, 10),), jacobian_penalty=penalty)
    res = augmented_solve(layer, loss, x0, z0, config=cfg)
    assert len(res.infos) == 2 and res.infos[0].nfe == 10
    assert res.info.ok and float(res.grad_norm.max()) < 1e-7
    assert res.jacobian_loss is not None and calls == [0]
    res.jacobian_loss.backward()
    assert layer.W.grad is not None


def test_settle_stage_starts_the_joint_solve_at_the_equilibrium_and_adjoint():
    """``settle_iters``: with ``x`` frozen the first stage converges ``z`` and ``mu`` to the dense equilibrium
    and adjoint of ``x0``; the following joint stage reaches the same optimum as without it."""
    layer, C, y, loss = _setup()
    g = torch.Generator().manual_seed(5)
    x0, z0 = torch.randn(B, D, generator=g, dtype=DT), torch.zeros(B, N, dtype=DT)
    settle = AugmentedConfig(step_size=0.05, max_iter=1, settle_iters=200, settle_tol=1e-13, solver_options={"m": 8})
    with torch.no_grad():
        res = augmented_solve(layer, loss, x0, z0, config=settle)
    assert len(res.infos) == 2 and res.infos[0].ok and res.infos[1].nfe == 1
    # a joint stage of one evaluation returns its starting point: the settled state at the unchanged x0
    assert torch.allclose(res.x, x0, rtol=0, atol=1e-12)
    for i in range(B):
        zi = solve_equilibrium(layer, x0[i : i + 1], z0[i : i + 1], tol=1e-13, max_iter=300)[0]
        assert torch.allclose(res.z[i], zi, atol=1e-10)
        jac = torch.autograd.functional.jacobian(lambda v: layer(v[None], x0[i : i + 1])[0], zi)
        mu = torch.linalg.solve((torch.eye(N, dtype=DT) - jac).T, C.T @ (C @ zi - y[i]))
        assert torch.allclose(res.mu[i], mu, atol=1e-9)
    zeros = torch.zeros_like(x0)
    with torch.no_grad():
        full = augmented_solve(layer, loss, zeros, z0, config=replace(TIGHT, settle_iters=200))
        plain = augmented_solve(layer, loss, zeros, z0, config=TIGHT)
    assert full.info.ok and plain.info.ok and torch.allclose(full.x, plain.x, atol=1e-8)
