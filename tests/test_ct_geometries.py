"""One set of CT weights for many geometries: per-geometry operators are adjoint pairs, the data steps are
(quasi-)nonexpansive for every geometry, the same weights reconstruct at several geometries, the noise estimate
and the geometry-agnostic filtered backprojection, the TV weight rule, and bad geometry options."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fpntools.cli import app as top_app
from fpntools.cli_support import EXIT_USER_ERROR
from fpntools.metrics import psnr
from fpntools.operators import project_data_ball_relaxed
from problems.ct.acquisition import acquisition, estimate_noise
from problems.ct.baselines import FBP, TVWeightRule, tv_weight
from problems.ct.ffpn import FFPN, FFPN_SOLVE, CTFeasibilityOperator, FFPNConfig
from problems.ct.geometry import CTGeometry
from problems.ct.phantoms import random_ellipses
from problems.ct.train import geometry_by_name, simulate_batch, train_geometries, validation_geometries

SIZE = 32
GEOMETRIES = train_geometries(SIZE)
SMALL = FFPNConfig(channels=4, layers=2, prior_width=4, prior_levels=2, reference_tv_iters=10)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.from_numpy(random_ellipses(3, SIZE, seed=4))


def _simulate(x: torch.Tensor, g: CTGeometry, level: float = 0.015, seed: int = 0):
    acq = acquisition(g)
    gen = torch.Generator().manual_seed(seed)
    e = torch.randn((x.shape[0], *g.sino_shape), generator=gen)
    return acq, simulate_batch(x, e, torch.full((x.shape[0],), level), acq)


@pytest.mark.parametrize("g", GEOMETRIES, ids=lambda g: f"{g.beam}{g.n_angles}")
def test_operator_of_every_geometry_is_an_adjoint_pair(g) -> None:
    op = acquisition(g, dtype=torch.float64).op
    gen = torch.Generator().manual_seed(1)
    x = torch.randn((2, *g.image_shape), generator=gen, dtype=torch.float64)
    y = torch.randn((2, *g.sino_shape), generator=gen, dtype=torch.float64)
    lhs, rhs = (op(x) * y).sum(), (x * op.A_adjoint(y)).sum()
    assert abs(float(lhs - rhs)) <= 1e-12 * float(lhs.abs() + rhs.abs())


@pytest.mark.parametrize("g", GEOMETRIES, ids=lambda g: f"{g.beam}{g.n_angles}")
def test_data_steps_are_nonexpansive_for_every_geometry(g, images) -> None:
    """The Landweber step ``v - (lam/||A||^2) A^T (A v - y)`` (lam <= 2) is nonexpansive, the relaxed projection
    onto the data ball is quasi-nonexpansive towards feasible points (the truth) and fixes them."""
    acq, y = _simulate(images, g)
    gen = torch.Generator().manual_seed(2)
    u, v = torch.rand(images.shape, generator=gen), torch.rand(images.shape, generator=gen)
    T = CTFeasibilityOperator(FFPNConfig(data_step="gradient", relaxation=2.0))
    ctx = {"acq": acq, "y": y}
    ratio = (T.data_step(u, ctx) - T.data_step(v, ctx)).flatten(1).norm(dim=1) / (u - v).flatten(1).norm(dim=1)
    assert float(ratio.max()) <= 1.0 + 1e-5
    eps = 1.3 * 0.015 * y.flatten(1).norm(dim=1)
    assert bool(((acq.op(images) - y).flatten(1).norm(dim=1) <= eps).all())
    p = project_data_ball_relaxed(u, acq.op, y, eps)
    assert bool(((p - images).flatten(1).norm(dim=1) <= (u - images).flatten(1).norm(dim=1) + 1e-6).all())
    torch.testing.assert_close(project_data_ball_relaxed(images, acq.op, y, eps), images)


def test_the_same_weights_reconstruct_at_three_geometries(images, tmp_path) -> None:
    from problems.ct.weights import load_model, save_weights

    torch.manual_seed(0)
    model = FFPN(SMALL, FFPN_SOLVE.with_(max_iter=30, eval_max_iter=40))
    path = tmp_path / "w.safetensors"
    save_weights(model, path, {})
    loaded, _ = load_model(path)
    for name in ("par15", "par60", "fan45"):
        g = geometry_by_name(name, SIZE)
        acq, y = _simulate(images, g)
        with torch.no_grad():
            u, info = loaded(y, acq)
            u_ref, _ = model.eval()(y, acq)
        assert u.shape == images.shape and bool(torch.isfinite(u).all())
        assert info.status.name == "CONVERGED", (name, info)
        torch.testing.assert_close(u, u_ref)
        # a reconstruction, not noise: better than the all-zeros image
        assert float(psnr(u, images).mean()) > float(psnr(torch.zeros_like(images), images).mean()) + 3
    with pytest.raises(Exception, match=r"expected \(15, 47\)"):
        loaded(torch.zeros(3, 20, 47), acquisition(geometry_by_name("par15", SIZE)))


def test_noise_estimate_follows_the_true_level() -> None:
    """At the default 128 x 128 / 183-detector geometry (at 32 x 32 the image's own detail reads as noise)."""
    g = geometry_by_name("par30")
    x = torch.from_numpy(random_ellipses(6, 128, seed=5))
    medians = []
    for level in (0.005, 0.015, 0.03):
        _, y = _simulate(x, g, level, seed=3)
        est = estimate_noise(y)
        assert est.shape == (6,)
        medians.append(float(est.median()))
        if level >= 0.015:  # at low noise the image's own detail dominates (reads up to ~0.014 at 0.005)
            assert medians[-1] == pytest.approx(level, rel=0.3), (level, est)
    assert medians[0] < medians[1] < medians[2] and medians[0] < 0.012
    assert estimate_noise(y[0]).ndim == 0


def test_filtered_backprojection_matches_astra_fbp(images) -> None:
    g = geometry_by_name("par30", SIZE)
    acq, y = _simulate(images, g)
    ours = psnr(acq.filtered_backprojection(y), images).mean()
    astra_fbp = psnr(FBP(g, filter="hann")(y), images).mean()
    assert float(ours) > float(astra_fbp) - 0.5
    fan = geometry_by_name("fan60", SIZE)
    acq_f, y_f = _simulate(images, fan)
    assert float(psnr(acq_f.filtered_backprojection(y_f), images).mean()) > float(ours) - 3


def test_tv_weight_rule_grows_with_noise_and_angles() -> None:
    rule = TVWeightRule(scale=0.5, angle_power=0.8, noise_power=1.2, fan_factor=1.3)
    g30, g60 = CTGeometry(n_angles=30), CTGeometry(n_angles=60)
    assert rule(g30, 0.015) == pytest.approx(0.5)
    assert rule(g60, 0.015) == pytest.approx(0.5 * 2**0.8)
    assert rule(g30, 0.03) == pytest.approx(0.5 * 2**1.2)
    assert rule(CTGeometry.fan(n_angles=30), 0.015) == pytest.approx(0.65)
    t = tv_weight(g30, torch.tensor([0.005, 0.03]))
    assert t.shape == (2,) and float(t[1]) > float(t[0]) > 0


def test_validation_geometries_are_the_bench_ones() -> None:
    names = [f"{g.beam}{g.n_angles}" for g in validation_geometries()]
    assert names == ["parallel20", "parallel30", "parallel60", "fan60"]
    assert all(g.n_detectors == 183 for g in validation_geometries())
    assert 180 % math.lcm(*[g.n_angles for g in train_geometries()]) == 0


@pytest.mark.parametrize("args,needle", [
    (["--beam", "cone"], "--beam must be parallel or fan"),
    (["--angles", "0"], "n_angles must be a positive integer"),
    (["--detectors", "-3"], "n_detectors must be a positive integer"),
    (["--angle-range", "-1"], "--angle-range must be a positive number"),
    (["--beam", "fan", "--source-origin", "10"], "puts the source inside the image"),
    (["--size", "1"], "image_size must be an integer >= 2"),
])
def test_bad_geometry_options_are_one_line_errors(tmp_path, args, needle) -> None:
    sino = tmp_path / "s.npy"
    np.save(sino, np.zeros((30, 183), np.float32))
    res = CliRunner().invoke(top_app, ["ct", "reconstruct", str(sino), "--out", str(tmp_path / "r.npy"),
                                       "--method", "tv", *args])
    assert res.exit_code == EXIT_USER_ERROR, res.output
    assert needle in res.output and len(res.output.strip().splitlines()) == 1 and "Traceback" not in res.output
    assert not (tmp_path / "r.npy").exists()
