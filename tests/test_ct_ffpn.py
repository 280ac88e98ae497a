"""CT F-FPN: Lipschitz bounds, the relaxed data projection, fixed-point solve, gradients, training, weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from problems.ct.ffpn import (
    FFPN,
    CTFeasibilityOperator,
    FFPNConfig,
    LipschitzCNN,
    UnrolledCT,
    conv_operator_norm,
    relaxed_data_projection,
)
from problems.ct.geometry import CTGeometry, ShapeError
from problems.ct.phantoms import random_ellipses, simulate
from problems.ct.projector import ct_operator

G = CTGeometry(image_size=32, n_angles=12, n_detectors=47)


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "cache"


@pytest.fixture
def problem(cache):
    op = ct_operator(G, cache_dir=cache)
    x = torch.from_numpy(random_ellipses(4, 32, seed=1))
    y = simulate(x, G, seed=2, operator=op)
    return op, x, y


def test_conv_operator_norm_matches_power_iteration() -> None:
    w = torch.randn(5, 3, 3, 3, dtype=torch.float64)
    est = float(conv_operator_norm(w))
    assert abs(est - float(conv_operator_norm(w, grid=128))) < 1e-2 * est
    v = torch.randn(1, 3, 96, 96, dtype=torch.float64)  # zero-padded conv on a large image
    for _ in range(60):
        v = F.conv_transpose2d(F.conv2d(v, w, padding=1), w, padding=1)
        v = v / v.norm()
    power = float(F.conv2d(v, w, padding=1).norm())
    assert power <= est * 1.005 and power > 0.97 * est


@pytest.mark.parametrize("activation", ["leaky_relu", "maxmin"])
def test_lipschitz_cnn_is_nonexpansive(activation) -> None:
    phi = LipschitzCNN(channels=8, layers=3, activation=activation)
    with torch.no_grad():
        for c in phi.convs:
            c.weight.mul_(10.0)  # far from normalised: the normalisation must act
        u, v = torch.rand(6, 20, 20), torch.rand(6, 20, 20)
        ratio = (phi(u) - phi(v)).flatten(1).norm(dim=1) / (u - v).flatten(1).norm(dim=1)
    assert float(ratio.max()) <= 1.0 + 1e-5
    for w, _ in phi.normalized():
        assert float(conv_operator_norm(w.detach())) <= 1.0 + 1e-5


def test_relaxed_data_projection(problem) -> None:
    op, x, y = problem
    eps = 0.015 * y.flatten(1).norm(dim=1) * 1.2  # the truth is feasible
    assert bool(((op(x) - y).flatten(1).norm(dim=1) <= eps).all())
    v = torch.rand_like(x)
    p = relaxed_data_projection(v, y, op, eps)
    # quasi-nonexpansive w.r.t. feasible points, identity on the set
    assert bool(((p - x).flatten(1).norm(dim=1) < (v - x).flatten(1).norm(dim=1)).all())
    torch.testing.assert_close(relaxed_data_projection(x, y, op, eps), x)
    # repeated relaxed projections approach the data ball
    r0 = float((op(v) - y).norm())
    for _ in range(20):
        v = relaxed_data_projection(v, y, op, eps)
    assert float((op(v) - y).norm()) < 0.2 * r0


def test_gradient_variant_is_a_contraction(problem) -> None:
    op, x, y = problem
    cfg = FFPNConfig(channels=8, data_step="gradient", relaxation=1.9, init="zeros", gamma=0.9)
    T = CTFeasibilityOperator(op, cfg, G)
    with torch.no_grad():
        ctx = T.context(y)
        u, v = torch.rand_like(x), torch.rand_like(x)
        ratio = (T.T(u, ctx) - T.T(v, ctx)).flatten(1).norm(dim=1) / (u - v).flatten(1).norm(dim=1)
    assert float(ratio.max()) <= 0.9 + 1e-4


@pytest.mark.parametrize("backward", ["jfb", "implicit"])
def test_ffpn_fixed_point_and_gradients(problem, backward) -> None:
    op, x, y = problem
    model = FFPN(op, FFPNConfig(channels=8, backward=backward, tol=1e-4, max_iter=60), G)
    u, info = model(y)
    assert u.shape == x.shape and float(u.detach().min()) >= 0 and float(u.detach().max()) <= 1
    assert info.status.name == "CONVERGED", info
    # u is a fixed point of T
    with torch.no_grad():
        res = (model.T(u, y) - u).flatten(1).norm(dim=1) / u.flatten(1).norm(dim=1)
    assert float(res.max()) < 1e-3
    loss = (u - x).pow(2).mean()
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    # the projector's matrix is not a parameter / state of the model
    assert all("matrix" not in k for k in model.state_dict())
    single, _ = model.eval()(y[0])
    assert single.shape == (32, 32)
    with pytest.raises(ShapeError, match=r"expected \(12, 47\)"):
        model(torch.zeros(47, 12))


def test_fbp_conditioning_keeps_the_contraction(problem) -> None:
    op, x, y = problem
    cfg = FFPNConfig(channels=8, data_step="gradient", relaxation=1.9, condition="fbp", gamma=0.9)
    T = CTFeasibilityOperator(op, cfg, G)
    with torch.no_grad():
        for c in T.phi.convs:
            c.weight.mul_(10.0)
        ctx = T.context(y)
        assert ctx["cond"].shape == x.shape and T.phi.convs[0].weight.shape[1] == 2
        u, v = torch.rand_like(x), torch.rand_like(x)
        ratio = (T.T(u, ctx) - T.T(v, ctx)).flatten(1).norm(dim=1) / (u - v).flatten(1).norm(dim=1)
    assert float(ratio.max()) <= 0.9 + 1e-4
    model = FFPN(op, FFPNConfig(channels=8, condition="fbp"), G)
    u, info = model(y)
    (u - x).pow(2).mean().backward()
    assert model.T.phi.convs[0].weight.grad is not None


def test_unet_prior_keeps_the_contraction_and_learns(problem) -> None:
    """The U-Net prior only gates (values in (0, 1)) and shifts: T stays a gamma-contraction in u whatever its
    weights, and every U-Net parameter receives a gradient through the fixed point."""
    op, x, y = problem
    cfg = FFPNConfig(channels=8, data_step="gradient", relaxation=1.9, prior="unet", prior_width=4, gamma=0.9)
    T = CTFeasibilityOperator(op, cfg, G)
    with torch.no_grad():
        for p in T.parameters():
            p.add_(torch.randn_like(p) * 3.0)
        ctx = T.context(y)
        assert [g.shape for g in ctx["gates"]] == [(4, 8, 32, 32)] * (cfg.layers - 1)
        assert all(float(g.min()) >= 0 and float(g.max()) <= 1 for g in ctx["gates"])
        assert ctx["offset"].shape == x.shape
        u, v = torch.rand_like(x), torch.rand_like(x)
        ratio = (T.T(u, ctx) - T.T(v, ctx)).flatten(1).norm(dim=1) / (u - v).flatten(1).norm(dim=1)
    assert float(ratio.max()) <= 0.9 + 1e-4
    model = FFPN(op, FFPNConfig(channels=8, prior="unet", prior_width=4, prior_levels=2), G)
    u, info = model(y)
    (u - x).pow(2).mean().backward()
    grads = {n: p.grad for n, p in model.named_parameters() if n.startswith("T.prior.")}
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads.values())
    # at initialisation the offset makes the FBP a fixed point of K when Phi vanishes: gates and offset are live
    assert float(grads["T.prior.head.weight"].abs().sum()) > 0


@pytest.mark.parametrize("reference", ["fbp", "tv"])
def test_precomputed_reference_gives_the_same_reconstruction(problem, reference) -> None:
    """Training caches the parameter-free reference reconstruction; passing it must not change the result."""
    op, x, y = problem
    model = FFPN(op, FFPNConfig(channels=4, prior_width=4, prior_levels=2, reference=reference,
                                reference_tv_iters=10), G).eval()
    ref = model.T.reference_image(y)
    assert ref.shape == x.shape
    with torch.no_grad():
        u1, _ = model(y)
        u2, _ = model(y, reference=ref)
        u3, _ = model(y[0], reference=ref[0])
    torch.testing.assert_close(u1, u2)
    torch.testing.assert_close(u3, u1[0], atol=1e-5, rtol=1e-4)


def test_tv_reference_is_better_than_fbp(problem) -> None:
    op, x, y = problem
    from fpntools.metrics import psnr

    T_fbp = CTFeasibilityOperator(op, FFPNConfig(reference="fbp"), G)
    T_tv = CTFeasibilityOperator(op, FFPNConfig(reference="tv", reference_tv_iters=40), G)
    assert float(psnr(T_tv.reference_image(y), x).mean()) > float(psnr(T_fbp.reference_image(y), x).mean())


def test_prior_handles_sizes_not_divisible_by_two() -> None:
    from problems.ct.prior import ReferenceConditioner

    net = ReferenceConditioner([3, 3], width=4, levels=3)
    gates, offset = net(torch.rand(2, 27, 27))
    assert offset.shape == (2, 27, 27) and [g.shape for g in gates] == [(2, 3, 27, 27)] * 2


def test_unrolled_gradients(problem) -> None:
    op, x, y = problem
    model = UnrolledCT(op, FFPNConfig(channels=8, unrolled_steps=3, init="zeros"), G)
    u, info = model(y)
    assert info is None and u.shape == x.shape
    (u - x).pow(2).mean().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="gamma"):
        FFPNConfig(gamma=1.0)
    with pytest.raises(ValueError, match="data_step"):
        FFPNConfig(data_step="exact")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="relaxation"):
        FFPNConfig(relaxation=2.0)
    with pytest.raises(ValueError, match="even"):
        FFPNConfig(activation="maxmin", channels=5)
    with pytest.raises(ValueError, match="prior"):
        FFPNConfig(prior="transformer")  # type: ignore[arg-type]
    assert FFPNConfig.from_dict(FFPNConfig(channels=4).to_dict()).channels == 4
