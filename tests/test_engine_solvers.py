"""Forward solvers: tolerance reached, acceleration, per-sample stopping, bounded memory, statuses."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fpntools
from fpntools import Anderson, Broyden, FixedPoint, FixedPointError, Status
from fpntools.solvers import anderson_weights
from tests.maps import TanhLayer, linear_slow_map

SOLVERS = ["picard", "km", "anderson", "broyden"]


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("stop_mode", ["rel", "abs"])
def test_solvers_reach_tolerance(solver, stop_mode):
    layer = TanhLayer(30, 6, rho=0.9)
    x = torch.randn(5, 6, dtype=torch.float64)
    with torch.no_grad():
        z, info = fpntools.fixed_point(lambda z: layer(z, x), layer.initial_state(x), solver, tol=1e-9, max_iter=500, stop_mode=stop_mode)
        fz = layer(z, x)
    assert info.status == Status.CONVERGED and bool(info.converged.all())
    res = (fz - z).norm(dim=1)
    if stop_mode == "rel":
        res = res / fz.norm(dim=1)
    assert float(res.max()) <= 1e-9
    # info reports the residual of the returned z, measured independently
    torch.testing.assert_close(info.residual, res, rtol=1e-6, atol=1e-15)


def test_acceleration_beats_picard_on_slow_contraction():
    f, a, c = linear_slow_map(60, rho=0.98, batch=4)
    steps = {}
    for solver in ["picard", "anderson", "broyden"]:
        with torch.no_grad():
            z, info = fpntools.fixed_point(f, torch.zeros_like(c), solver, tol=1e-8, max_iter=2000)
        assert info.ok, (solver, info.summary())
        exact = torch.linalg.solve(torch.eye(60, dtype=a.dtype) - a, c.T).T
        assert float((z - exact).norm() / exact.norm()) < 1e-6
        steps[solver] = int(info.steps.max())
    assert steps["anderson"] < steps["picard"] / 3, steps
    assert steps["broyden"] < steps["picard"] / 3, steps


def test_per_sample_stopping():
    """A fast sample stops early and returns exactly what solving it alone returns."""
    rates = torch.tensor([0.1, 0.95], dtype=torch.float64)
    c = torch.ones(2, 3, dtype=torch.float64)

    def f(z):
        return rates[: z.shape[0], None] * z + c[: z.shape[0]]

    z, info = fpntools.fixed_point(f, torch.zeros(2, 3, dtype=torch.float64), "picard", tol=1e-10, max_iter=1000, stop_mode="abs")
    assert info.ok
    assert int(info.steps[0]) < int(info.steps[1]) / 5
    z_alone, info_alone = fpntools.fixed_point(f, torch.zeros(1, 3, dtype=torch.float64), "picard", tol=1e-10, max_iter=1000, stop_mode="abs")
    assert torch.equal(z[0], z_alone[0]) and int(info.steps[0]) == int(info_alone.steps[0])


@pytest.mark.parametrize("solver", [Anderson(m=3), Broyden(memory=4)])
def test_memory_is_bounded(solver):
    f, _, c = linear_slow_map(20, rho=0.999, batch=2)
    sizes = []
    original = type(solver).step

    def spy(self, z, fz, memory, k):
        out = original(self, z, fz, memory, k)
        mem = out[1]
        sizes.append(sum(t.numel() for t in vars(mem).values() if isinstance(t, torch.Tensor)))
        return out

    type(solver).step = spy
    try:
        with torch.no_grad():
            fpntools.fixed_point(f, torch.zeros_like(c), solver, tol=1e-30, max_iter=200, divergence_factor=None)
    finally:
        type(solver).step = original
    assert len(sizes) == 199
    assert max(sizes) == sizes[5] == sizes[-1]


def test_anderson_weights_never_nan():
    zero = torch.zeros(3, 4, 4, dtype=torch.float64)
    g = torch.randn(3, 1, 10, dtype=torch.float64).expand(3, 4, 10)  # identical residuals: rank one
    for gram in [zero, g @ g.transpose(1, 2), torch.full((3, 4, 4), float("inf"), dtype=torch.float64)]:
        for lam in [0.0, 1e-4]:
            alpha = anderson_weights(gram, lam)
            assert torch.isfinite(alpha).all()
            torch.testing.assert_close(alpha.sum(dim=1), torch.ones(3, dtype=torch.float64))


def test_anderson_on_stalled_and_constant_maps():
    c = torch.randn(3, 8)
    for f in [lambda z: z, lambda z: c.clone(), lambda z: 0.0 * z]:
        z, info = fpntools.fixed_point(f, torch.ones(3, 8), "anderson", stop_mode="abs", tol=1e-6)
        assert torch.isfinite(z).all() and info.ok


def test_diverging_and_nonfinite_maps_are_reported():
    z0 = torch.ones(2, 4)
    _, info = fpntools.fixed_point(lambda z: 3.0 * z + 1.0, z0, "picard", max_iter=100)
    assert info.status == Status.DIVERGED and not bool(info.converged.any())
    _, info = fpntools.fixed_point(lambda z: z + float("nan"), z0, "anderson")
    assert info.status == Status.NONFINITE
    with pytest.raises(FixedPointError, match="did not converge.*diverged"):
        fpntools.fixed_point(lambda z: 3.0 * z + 1.0, z0, "picard", max_iter=100, raise_on_failure=True)
    _, info = fpntools.fixed_point(lambda z: 0.999 * z + 1.0, z0, "picard", max_iter=5)
    assert info.status == Status.MAX_ITER and (info.steps == 5).all()
    # one bad sample does not spoil the others
    def mixed(z):
        out = 0.5 * z + 1.0
        return torch.cat([out[:1], out[1:] + float("inf")])

    z, info = fpntools.fixed_point(mixed, z0, "anderson", tol=1e-8, max_iter=200)
    assert info.sample_status.tolist() == [int(Status.CONVERGED), int(Status.NONFINITE)]
    assert torch.isfinite(z).all()


def test_trace_is_recorded():
    f, _, c = linear_slow_map(10, rho=0.5, batch=3)
    _, info = fpntools.fixed_point(f, torch.zeros_like(c), "picard", tol=1e-8, trace=True)
    assert info.trace.shape == (int(info.steps.max()), 3)
    assert float(info.trace[-1].nan_to_num(0).max()) <= 1e-8


def test_bad_input_errors():
    z0 = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="NaN or inf"):
        fpntools.fixed_point(lambda z: z, torch.full((2, 3), float("nan")))
    with pytest.raises(TypeError, match="floating point"):
        fpntools.fixed_point(lambda z: z, torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"f\(z\) has shape \(2, 4\) but the state has shape \(2, 3\)"):
        fpntools.fixed_point(lambda z: torch.zeros(2, 4), z0)
    with pytest.raises(TypeError, match="dtype torch.float64 but the state has dtype torch.float32"):
        fpntools.fixed_point(lambda z: z.double(), z0)
    with pytest.raises(ValueError, match="same structure"):
        fpntools.fixed_point(lambda z: (z, z), z0)
    with pytest.raises(ValueError, match="batch size 3"):
        fpntools.fixed_point(lambda z: z, (torch.zeros(2, 3), torch.zeros(3, 3)))
    with pytest.raises(TypeError, match="one dtype"):
        fpntools.fixed_point(lambda z: z, (torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.float64)))
    with pytest.raises(ValueError, match="empty batch"):
        fpntools.fixed_point(lambda z: z, torch.zeros(0, 3))
    with pytest.raises(ValueError, match="unknown solver 'newton'"):
        fpntools.fixed_point(lambda z: z, z0, solver="newton")
    with pytest.raises(ValueError, match="unknown backward mode"):
        fpntools.fixed_point(lambda z: z, z0, backward="magic")
    with pytest.raises(TypeError, match="invalid option for solver 'anderson'"):
        fpntools.fixed_point(lambda z: z, z0, solver="anderson", memory=3)
    with pytest.raises(ValueError, match="memory m must be at least 1"):
        Anderson(m=0)


def test_tol_zero_runs_exactly_max_iter_steps_and_returns_the_last_iterate():
    """``tol=0`` (``SolveConfig.unrolled``): f^K(z0) exactly, differentiable through every step; the negative
    tolerance is still an error."""
    w = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    z0 = torch.zeros(3, 2, dtype=torch.float64)
    z, info = fpntools.fixed_point(lambda z: w * z + 1, z0, "picard", backward="unroll", tol=0.0, max_iter=3)
    assert info.steps.tolist() == [3, 3, 3]
    torch.testing.assert_close(z, torch.full_like(z0, 1.75))  # 1 + w + w^2, not the best measured iterate
    (g,) = torch.autograd.grad(z.sum(), w)
    assert float(g) == pytest.approx(6 * (1 + 2 * 0.5))  # d/dw (1 + w + w^2) per entry
    with pytest.raises(ValueError, match="tol must be >= 0"):
        fpntools.fixed_point(lambda z: z, z0, tol=-1.0)


class _NoInit(nn.Module):
    def forward(self, z, x):
        return 0.5 * z + x


def test_fixed_point_module_train_eval_and_errors():
    layer = TanhLayer(10, 4, rho=0.8, dtype=torch.float32)
    deq = FixedPoint(layer, tol=1e-6, max_iter=100, eval_tol=1e-3, m=4)
    x = torch.randn(3, 4)
    z, info = deq(x)
    assert z.shape == (3, 10) and info.ok and info.tol == 1e-6
    z.square().sum().backward()
    assert layer.W.grad is not None
    deq.eval()
    with torch.no_grad():
        z_eval, info_eval = deq(x)
    assert info_eval.tol == 1e-3 and int(info_eval.steps.max()) <= int(info.steps.max())
    with pytest.raises(ValueError, match="initial_state"):
        FixedPoint(_NoInit())(x)
    z, _ = FixedPoint(_NoInit(), solver="picard", tol=1e-7)(x, z0=torch.zeros(3, 4))
    torch.testing.assert_close(z, 2 * x, rtol=1e-5, atol=1e-5)


def test_info_repr_is_one_line_summary():
    f, _, c = linear_slow_map(10, rho=0.5, batch=200)
    _, info = fpntools.fixed_point(f, torch.zeros_like(c), "anderson", tol=1e-6)
    text = repr(info)
    assert "\n" not in text and text.startswith("FixedPointInfo(<anderson: converged, 200/200 converged")
