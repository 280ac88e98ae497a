"""CT F-FPN: Lipschitz bounds, the relaxed data projection, fixed-point solve, gradients, the unrolled network as
the same model with a fixed-step solve, configuration and weights layout."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fpntools import SolveConfig
from fpntools.operators import project_data_ball_relaxed
from problems.ct.ffpn import (
    FFPN,
    FFPN_SOLVE,
    CTFeasibilityOperator,
    FFPNConfig,
    LipschitzCNN,
    build_model,
    conv_operator_norm,
    default_solve,
)
from problems.ct.acquisition import acquisition
from problems.ct.geometry import CTGeometry, ShapeError
from problems.ct.phantoms import random_ellipses, simulate

G = CTGeometry(image_size=32, n_angles=12, n_detectors=47)


def _nz(y: torch.Tensor, level: float = 0.015) -> torch.Tensor:
    return torch.full((y.shape[0],), level)


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "cache"


@pytest.fixture
def problem(cache):
    acq = acquisition(G, cache_dir=cache)
    x = torch.from_numpy(random_ellipses(4, 32, seed=1))
    y = simulate(x, G, seed=2, operator=acq.op)
    return acq, x, y


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
    acq, x, y = problem
    op = acq.op
    eps = 0.015 * y.flatten(1).norm(dim=1) * 1.2  # the truth is feasible
    assert bool(((op(x) - y).flatten(1).norm(dim=1) <= eps).all())
    v = torch.rand_like(x)
    p = project_data_ball_relaxed(v, op, y, eps)
    # quasi-nonexpansive w.r.t. feasible points, identity on the set
    assert bool(((p - x).flatten(1).norm(dim=1) < (v - x).flatten(1).norm(dim=1)).all())
    torch.testing.assert_close(project_data_ball_relaxed(x, op, y, eps), x)
    # repeated relaxed projections approach the data ball
    r0 = float((op(v) - y).norm())
    for _ in range(20):
        v = project_data_ball_relaxed(v, op, y, eps)
    assert float((op(v) - y).norm()) < 0.2 * r0


def test_gradient_variant_is_a_contraction(problem) -> None:
    acq, x, y = problem
    cfg = FFPNConfig(channels=8, data_step="gradient", relaxation=1.9, init="zeros", gamma=0.9)
    T = CTFeasibilityOperator(cfg)
    with torch.no_grad():
        ctx = T.context(y, acq, _nz(y))
        u, v = torch.rand_like(x), torch.rand_like(x)
        ratio = (T(u, ctx) - T(v, ctx)).flatten(1).norm(dim=1) / (u - v).flatten(1).norm(dim=1)
    assert float(ratio.max()) <= 0.9 + 1e-4


@pytest.mark.parametrize("backward", ["jfb", "implicit"])
def test_ffpn_fixed_point_and_gradients(problem, backward) -> None:
    acq, x, y = problem
    model = FFPN(FFPNConfig(channels=8, prior_width=4, prior_levels=2), FFPN_SOLVE.with_(backward=backward, tol=1e-4, max_iter=60), acq)
    u, info = model(y, noise=0.015)
    assert u.shape == x.shape and float(u.detach().min()) >= 0 and float(u.detach().max()) <= 1
    assert info.status.name == "CONVERGED", info
    # u is a fixed point of T
    with torch.no_grad():
        res = (model.T(u, model.T.context(y, acq, _nz(y))) - u).flatten(1).norm(dim=1) / u.flatten(1).norm(dim=1)
    assert float(res.max()) < 1e-3
    loss = (u - x).pow(2).mean()
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    # the projector's matrix is not a parameter / state of the model
    assert all("matrix" not in k for k in model.state_dict())
    single, _ = model.eval()(y[0], noise=0.015)
    assert single.shape == (32, 32)
    with pytest.raises(ShapeError, match=r"expected \(12, 47\)"):
        model(torch.zeros(47, 12))


def test_fbp_conditioning_keeps_the_contraction(problem) -> None:
    acq, x, y = problem
    cfg = FFPNConfig(channels=8, data_step="gradient", relaxation=1.9, condition="fbp", gamma=0.9)
    T = CTFeasibilityOperator(cfg)
    with torch.no_grad():
        for c in T.phi.convs:
            c.weight.mul_(10.0)
        ctx = T.context(y, acq, _nz(y))
        assert ctx["cond"].shape == x.shape and T.phi.convs[0].weight.shape[1] == 2
        u, v = torch.rand_like(x), torch.rand_like(x)
        ratio = (T(u, ctx) - T(v, ctx)).flatten(1).norm(dim=1) / (u - v).flatten(1).norm(dim=1)
    assert float(ratio.max()) <= 0.9 + 1e-4
    model = FFPN(FFPNConfig(channels=8, condition="fbp", prior_width=4, prior_levels=2), acquisition=acq)
    u, info = model(y, noise=0.015)
    (u - x).pow(2).mean().backward()
    assert model.T.phi.convs[0].weight.grad is not None


def test_unet_prior_keeps_the_contraction_and_learns(problem) -> None:
    """The U-Net prior only gates (values in (0, 1)) and shifts: T stays a gamma-contraction in u whatever its
    weights, and every U-Net parameter receives a gradient through the fixed point."""
    acq, x, y = problem
    cfg = FFPNConfig(channels=8, data_step="gradient", relaxation=1.9, prior="unet", prior_width=4, gamma=0.9)
    T = CTFeasibilityOperator(cfg)
    with torch.no_grad():
        for p in T.parameters():
            p.add_(torch.randn_like(p) * 3.0)
        ctx = T.context(y, acq, _nz(y))
        assert [g.shape for g in ctx["gates"]] == [(4, 8, 32, 32)] * (cfg.layers - 1)
        assert all(float(g.min()) >= 0 and float(g.max()) <= 1 for g in ctx["gates"])
        assert ctx["offset"].shape == x.shape
        u, v = torch.rand_like(x), torch.rand_like(x)
        ratio = (T(u, ctx) - T(v, ctx)).flatten(1).norm(dim=1) / (u - v).flatten(1).norm(dim=1)
    assert float(ratio.max()) <= 0.9 + 1e-4
    model = FFPN(FFPNConfig(channels=8, prior="unet", prior_width=4, prior_levels=2), acquisition=acq)
    u, info = model(y, noise=0.015)
    (u - x).pow(2).mean().backward()
    grads = {n: p.grad for n, p in model.named_parameters() if n.startswith("fp.layer.prior.")}
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads.values())
    # at initialisation the offset makes the FBP a fixed point of K when Phi vanishes: gates and offset are live
    assert float(grads["fp.layer.prior.head.weight"].abs().sum()) > 0


@pytest.mark.parametrize("reference", ["fbp", "tv"])
def test_precomputed_reference_gives_the_same_reconstruction(problem, reference) -> None:
    """Training caches the parameter-free reference reconstruction; passing it must not change the result."""
    acq, x, y = problem
    model = FFPN(FFPNConfig(channels=4, prior_width=4, prior_levels=2, reference=reference,
                            reference_tv_iters=10), acquisition=acq).eval()
    ref = model.T.reference_image(y, acq, _nz(y))
    assert ref.shape == x.shape
    with torch.no_grad():
        u1, _ = model(y, noise=0.015)
        u2, _ = model(y, noise=0.015, reference=ref)
        u3, _ = model(y[0], noise=0.015, reference=ref[0])
    torch.testing.assert_close(u1, u2)
    torch.testing.assert_close(u3, u1[0], atol=1e-5, rtol=1e-4)


def test_tv_reference_is_better_than_fbp(problem) -> None:
    acq, x, y = problem
    from fpntools.metrics import psnr

    T_fbp = CTFeasibilityOperator(FFPNConfig(reference="fbp"))
    T_tv = CTFeasibilityOperator(FFPNConfig(reference="tv", reference_tv_iters=40))
    nz = _nz(y)
    assert float(psnr(T_tv.reference_image(y, acq, nz), x).mean()) > float(psnr(T_fbp.reference_image(y, acq, nz), x).mean())


def test_prior_handles_sizes_not_divisible_by_two() -> None:
    from problems.ct.prior import ReferenceConditioner

    net = ReferenceConditioner([3, 3], width=4, levels=3)
    gates, offset = net(torch.rand(2, 27, 27))
    assert offset.shape == (2, 27, 27) and [g.shape for g in gates] == [(2, 3, 27, 27)] * 2


def test_unrolled_is_the_same_model_with_k_picard_steps(problem) -> None:
    """The unrolled network is FFPN with SolveConfig.unrolled(K): exactly T^K(u0), differentiated through all
    K steps (gradients equal to those of the hand-written loop), in training and in eval."""
    acq, x, y = problem
    torch.manual_seed(0)
    model = build_model("unrolled", FFPNConfig(channels=8, prior_width=4, prior_levels=2, init="zeros",
                                              reference="fbp"), default_solve("unrolled", 3), acq)
    assert model.kind == "unrolled" and model.solve == SolveConfig.unrolled(3)
    u, info = model(y, noise=0.015)
    assert info.steps.tolist() == [3] * 4 and u.shape == x.shape
    (u - x).pow(2).mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    model.zero_grad()
    ctx = model.T.context(y, acq, _nz(y))
    v = model.T.initial_state(ctx)
    for _ in range(3):  # the reference: a plain loop of T
        v = model.T(v, ctx)
    torch.testing.assert_close(u, v, rtol=0, atol=0)
    (v - x).pow(2).mean().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], rtol=1e-6, atol=1e-10)
    with torch.no_grad():
        ue, info_e = model.eval()(y, noise=0.015)
    torch.testing.assert_close(ue, u.detach(), rtol=0, atol=1e-6)  # grad-free kernels round differently
    assert info_e.steps.tolist() == [3] * 4
    with pytest.raises(ValueError, match="a ffpn model needs a ffpn solve"):
        build_model("ffpn", FFPNConfig(channels=8), SolveConfig.unrolled(3))


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
    with pytest.raises(ValueError, match="channels must lie in"):
        FFPNConfig(channels=10**9)  # a weights file asking for this is refused before allocating
    assert FFPNConfig.from_dict(FFPNConfig(channels=4).to_dict()).channels == 4
    with pytest.raises(ValueError, match="unknown F-FPN configuration keys: solver"):
        FFPNConfig.from_dict({"solver": "anderson"})
    assert not {"solver", "backward", "tol", "max_iter", "anderson_m", "eval_tol", "eval_max_iter",
                "unrolled_steps"} & set(FFPNConfig().to_dict())
