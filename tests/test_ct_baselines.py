"""CT baselines: ASTRA FBP, PDHG-TV against cvxpy, lambda tuning, noise model of the simulator."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import fpntools
from fpntools.metrics import psnr
from fpntools.operators import tv_norm
from problems.ct.baselines import (
    FBP_FILTERS,
    StackedTVOperator,
    TVConfig,
    fbp,
    tune_tv_lambda,
    tv_objective,
    tv_pdhg,
    tv_reconstruct,
)
from problems.ct.geometry import CTGeometry
from problems.ct.phantoms import CTDataConfig, EllipseConfig, make_dataset, random_ellipses, shepp_logan, simulate
from problems.ct.projector import ct_operator


SMALL = CTGeometry(image_size=16, n_angles=8, n_detectors=23)
MID = CTGeometry(image_size=32, n_angles=12, n_detectors=47)


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "cache"


def test_noise_level_and_reproducibility(cache) -> None:
    op = ct_operator(MID, cache_dir=cache)
    x = torch.from_numpy(random_ellipses(64, 32, seed=1))
    noisy, clean = simulate(x, MID, noise=0.015, seed=7, operator=op, return_clean=True)
    assert noisy.shape == (64, 12, 47) and noisy.dtype == torch.float32
    rms = clean.flatten(1).pow(2).mean(1).sqrt()
    sigma_hat = (noisy - clean).flatten(1).std(dim=1)
    ratio = sigma_hat / (0.015 * rms)
    assert abs(float(ratio.mean()) - 1) < 0.02 and float((ratio - 1).abs().max()) < 0.15  # per-sinogram level
    again = simulate(x, MID, noise=0.015, seed=7, operator=op)
    torch.testing.assert_close(again, noisy, rtol=0, atol=0)
    assert not torch.equal(simulate(x, MID, seed=8, operator=op), noisy)
    one = simulate(x[0].numpy(), MID, noise=0.0, operator=op)
    assert one.shape == (12, 47)
    torch.testing.assert_close(one, clean[0])


def test_dataset_cache(cache) -> None:
    cfg = CTDataConfig(geometry=MID, n_train=5, n_val=3, n_test=2, ellipses=EllipseConfig(max_ellipses=6))
    d1 = make_dataset(cfg, cache_dir=cache)
    files = list(cache.glob("ct_ellipses_*.npz"))
    assert len(files) == 1
    assert d1.train.images.shape == (5, 32, 32) and d1.val.sinograms.shape == (3, 12, 47) and len(d1.test) == 2
    assert not torch.equal(d1.train.images[:2], d1.val.images[:2])
    d2 = make_dataset(cfg, cache_dir=cache)
    torch.testing.assert_close(d2.train.sinograms, d1.train.sinograms, rtol=0, atol=0)
    files[0].write_bytes(b"truncated")
    d3 = make_dataset(cfg, cache_dir=cache)  # regenerated
    torch.testing.assert_close(d3.test.images, d1.test.images, rtol=0, atol=0)
    batches = list(d1.train.batches(2))
    assert [b[0].shape[0] for b in batches] == [2, 2, 1]


@pytest.mark.parametrize("flt", FBP_FILTERS)
def test_fbp_filters_default_geometry(flt) -> None:
    g = CTGeometry()
    x = torch.from_numpy(shepp_logan(128))
    y = simulate(x, g, noise=0.0)
    rec = fbp(y, g, filter=flt)
    assert rec.shape == (128, 128) and float(rec.min()) >= 0 and float(rec.max()) <= 1
    assert float(psnr(rec, x)) > 18.0  # 30 angles: streaks, but the phantom is clearly there
    batch = fbp(torch.stack([y, y]), g, filter=flt)
    torch.testing.assert_close(batch[1], rec)


def test_fbp_errors() -> None:
    with pytest.raises(ValueError, match="unknown FBP filter"):
        fbp(torch.zeros(30, 183), filter="gauss")
    with pytest.raises(ValueError, match=r"expected \(30, 183\)"):
        fbp(torch.zeros(183, 30))
    with pytest.raises((NotImplementedError, RuntimeError), match="fan"):
        fbp(torch.zeros(30, 183), CTGeometry.fan(), backend="cpu")


def test_stacked_tv_operator_is_an_adjoint_pair(cache) -> None:
    """K = [A; mu D] with D from fpntools.operators: exact adjoint, and its norm bound ||K||^2 <= ||A||^2 + 8 mu^2."""
    op = ct_operator(SMALL, dtype=torch.float64, cache_dir=cache)
    K = StackedTVOperator(op, mu=3.0)
    assert K.adjointness_error() < 1e-12 and K.out_shape == (8 * 23 + 2 * 256,)
    assert K.norm(n_iter=500) <= (op.norm(n_iter=500) ** 2 + 8 * 9.0) ** 0.5 * (1 + 1e-9)
    x = torch.rand(2, 16, 16, dtype=torch.float64)
    torch.testing.assert_close(tv_objective(x, op(x), op, 0.5), 0.5 * tv_norm(x))


def test_tv_runs_through_the_engine_loop(cache) -> None:
    """tv_reconstruct is fpntools.fixed_point on the PDHG map: per-image steps and status from the engine, the
    stopping rule its relative residual; tol=0 runs exactly n_iter steps (the reference of the F-FPN)."""
    op = ct_operator(MID, cache_dir=cache)
    x = torch.from_numpy(random_ellipses(3, 32, seed=4))
    y = simulate(x, MID, seed=3, operator=op)
    res = tv_reconstruct(y, op, n_iter=400, tol=3e-4, return_result=True)
    assert res.info.sample_status.tolist() == [0, 0, 0] and len(set(res.info.steps.tolist())) > 1  # per image
    assert bool((res.info.rel_residual <= 3e-4).all())
    T = tv_pdhg(y, op, TVConfig(), float(op.norm()))
    with torch.no_grad():
        z, info = fpntools.fixed_point(T, T.initial_state(torch.zeros(3, 32, 32)), "picard", backward="jfb",
                                       tol=3e-4, max_iter=400, divergence_factor=None)
    torch.testing.assert_close(res.x, z[0], rtol=0, atol=0)
    fixed = tv_reconstruct(y, op, n_iter=7, tol=0.0, return_result=True)
    assert fixed.info.steps.tolist() == [7, 7, 7] and fixed.iterations == 7
    with torch.no_grad():  # the 7th iterate itself, not the best measured one
        s = T.initial_state(torch.zeros(3, 32, 32))
        for _ in range(7):
            s = T(s)
    torch.testing.assert_close(fixed.x, s[0], rtol=0, atol=0)
    with pytest.raises(ValueError, match="tol must be >= 0"):
        TVConfig(tol=-1.0)


def _cvxpy_tv(W: sp.csr_matrix, y: np.ndarray, lam: float, n: int) -> tuple[float, np.ndarray]:
    import cvxpy as cp

    d = sp.diags([-np.ones(n), np.ones(n - 1)], [0, 1]).tolil()
    d[-1, :] = 0  # Neumann: no difference across the last row / column
    d = d.tocsr()
    dr, dc = sp.kron(d, sp.eye(n)), sp.kron(sp.eye(n), d)
    v = cp.Variable(n * n)
    tv = cp.sum(cp.norm(cp.vstack([dr @ v, dc @ v]), 2, axis=0))
    prob = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(W @ v - y) + lam * tv), [v >= 0, v <= 1])
    prob.solve()
    return float(prob.value), np.asarray(v.value).reshape(n, n)


def test_pdhg_tv_matches_cvxpy(cache) -> None:
    """Objective of PDHG-TV within 1e-3 (relative) of cvxpy's, two weights solved in one batch."""
    op = ct_operator(SMALL, cache_dir=cache, dtype=torch.float64)
    x = torch.from_numpy(random_ellipses(2, 16, seed=2)).double()
    y = simulate(x, SMALL, noise=0.02, seed=1, operator=op).double()
    lams = [0.3, 2.0]
    W = op.to_scipy()
    ref = torch.tensor([_cvxpy_tv(W, y[b].numpy().ravel(), lams[b], 16)[0] for b in range(2)], dtype=torch.float64)
    res = tv_reconstruct(y, op, lam=torch.tensor(lams), n_iter=800, tol=1e-10, step_ratio=100.0, return_result=True)
    rel = ((res.objective - ref) / ref).abs()
    assert float(rel.max()) < 1e-3, (res.objective, ref)
    assert float(res.x.min()) >= 0 and float(res.x.max()) <= 1
    one = tv_reconstruct(y[1], op, lam=lams[1], n_iter=50, step_ratio=100.0)
    assert one.shape == (16, 16)


def test_tv_beats_fbp_and_tuning(cache) -> None:
    op = ct_operator(MID, cache_dir=cache)
    x = torch.from_numpy(random_ellipses(3, 32, seed=4))
    y = simulate(x, MID, seed=3, operator=op)
    best, table = tune_tv_lambda(x, y, op, lambdas=[0.03, 0.3, 3.0], config=TVConfig(n_iter=150), refine=1)
    assert best in table and len(table) == 5
    assert table[best] == max(table.values())
    rec = tv_reconstruct(y, op, lam=best, n_iter=150)
    assert float(psnr(rec, x).mean()) > float(psnr(fbp(y, MID), x).mean()) + 1.0
