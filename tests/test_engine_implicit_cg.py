"""The CG-on-normal-equations implicit backward (``"implicit_cg"``) against ``Implicit``, a dense float64
reference and finite differences; its adjoint info, failure reporting, options and graph release."""

from __future__ import annotations


import pytest
import torch

import fpntools
from fpntools import FixedPointError, Implicit, ImplicitCG, Status
from fpntools.backward import BACKWARDS, make_backward
from tests.maps import TanhLayer
from tests.test_engine_gradients import B, D, N, TIGHT, _dense_reference, _grads, _loss, _rel, _setup


def test_implicit_cg_matches_implicit_and_dense_reference():
    layer, x, w = _setup()
    ref = _dense_reference(layer, x, w)
    got, _ = _grads(layer, x, w, ImplicitCG(tol=1e-13, max_iter=100))
    anderson, _ = _grads(layer, x, w, Implicit(tol=1e-13, max_iter=400))
    assert _rel(got, ref) < 1e-8
    assert _rel(got, anderson) < 1e-8
    # registered by name
    assert BACKWARDS["implicit_cg"] is ImplicitCG and "ImplicitCG" in fpntools.__all__
    by_name, _ = _grads(layer, x, w, make_backward("implicit_cg", tol=1e-13, max_iter=100))
    assert _rel(by_name, ref) < 1e-8


def _adjoint_run(layer, x, w, backward):
    """Forward solve of ``f(z) = layer(z, x) + e`` (``e = 0``) and backward of ``_loss``; ``e.grad`` is the
    adjoint solution ``u`` (``df/de = I``). Returns ``(u, v, z*, info)``."""
    e = torch.zeros(B, N, dtype=torch.float64, requires_grad=True)
    z, info = fpntools.fixed_point(lambda z: layer(z, x) + e, layer.initial_state(x), backward=backward, **TIGHT)
    zd = z.detach()
    _loss(z, w).backward()
    return e.grad.clone(), w + zd, zd, info


def _true_rel_residual(layer, x, z, u, v):
    """Per-sample ``||(I - J)^T u - v|| / ||v||`` with the explicit Jacobian."""
    out = []
    for i in range(B):
        jac = torch.autograd.functional.jacobian(lambda zi: layer(zi[None], x[i : i + 1].detach())[0], z[i])
        r = u[i] - jac.T @ u[i] - v[i]
        out.append(float(r.norm() / v[i].norm().clamp_min(1e-300)))
    return torch.tensor(out)


def test_implicit_cg_reaches_tolerance_per_sample_and_reports():
    layer, x, w = _setup()
    w[1] = 0.0  # dL/dz* of sample 1 is z*_1: a different right-hand side per sample
    for tol in (1e-3, 1e-9):
        u, v, z, info = _adjoint_run(layer, x, w, ImplicitCG(tol=tol, max_iter=100))
        bi = info.backward
        assert bi is not None and bi.ok and bool(bi.converged.all()) and bi.status == Status.CONVERGED
        assert bi.solver == "cgnr" and bi.tol == tol and bi.stop_mode == "rel"
        assert bool((bi.rel_residual <= tol).all())
        assert bool((_true_rel_residual(layer, x, z, u, v) <= 1.01 * tol).all())
        steps = bi.steps
        assert bool((steps >= 1).all()) and int(steps.max()) <= N
        # one JVP to start, then one VJP per iteration and one JVP per iteration but the last
        assert bi.nfe == 2 * int(steps.max())
        if tol == 1e-3:
            loose = int(steps.max())
    assert int(steps.max()) > loose


def test_implicit_cg_zero_cotangent_sample_stops_at_once():
    layer, x, w = _setup()
    bw = ImplicitCG(tol=1e-10)
    z, info = fpntools.fixed_point(lambda z: layer(z, x), layer.initial_state(x), backward=bw, **TIGHT)
    # only samples 0 and 2 enter the loss: v = 0 for samples 1 and 3, whose adjoint is 0 after 0 iterations
    (z[[0, 2]] ** 2).sum().backward()
    bi = info.backward
    assert bi.ok and bi.steps[1] == 0 and bi.steps[3] == 0 and bool((bi.steps[[0, 2]] > 0).all())


def test_implicit_cg_non_converging_reports_max_iter_and_can_raise():
    layer, x, w = _setup()
    u, _, _, info = _adjoint_run(layer, x, w, ImplicitCG(tol=1e-12, max_iter=1))
    bi = info.backward
    assert not bi.ok and bi.status == Status.MAX_ITER and not bool(bi.converged.any())
    assert bool((bi.sample_status == int(Status.MAX_ITER)).all()) and bool((bi.steps == 1).all())
    assert bi.nfe == 2 and bool((bi.rel_residual > 1e-12).all()) and bool((bi.rel_residual < 1).all())
    assert torch.isfinite(u).all()  # the one-step CG iterate is still returned as the gradient
    assert "max_iter" in repr(info)
    bw = ImplicitCG(tol=1e-12, max_iter=1, raise_on_failure=True)
    z, info = fpntools.fixed_point(lambda z: layer(z, x), layer.initial_state(x), backward=bw, **TIGHT)
    with pytest.raises(FixedPointError, match="did not converge"):
        _loss(z, w).backward()


@pytest.mark.parametrize(
    "options, match",
    [
        (dict(tol=0.0), "tol"),
        (dict(tol=-1e-3), "tol"),
        (dict(tol=float("nan")), "tol"),
        (dict(max_iter=0), "max_iter"),
        (dict(max_iter=2.5), "max_iter"),
        (dict(stop_mode="max"), "stop_mode"),
    ],
)
def test_implicit_cg_bad_options(options, match):
    with pytest.raises(ValueError, match=match):
        ImplicitCG(**options)
    with pytest.raises(ValueError, match=match):
        make_backward("implicit_cg", **options)


def test_implicit_cg_unknown_option():
    with pytest.raises(TypeError, match="implicit_cg"):
        make_backward("implicit_cg", solver="anderson")


def test_implicit_cg_abs_stop_mode_and_float32():
    torch.manual_seed(0)
    layer = TanhLayer(N, D, rho=0.8, dtype=torch.float32)
    x = torch.randn(B, D)
    bw = ImplicitCG(tol=1e-4, stop_mode="abs")
    z, info = fpntools.fixed_point(lambda z: layer(z, x), layer.initial_state(x), backward=bw, tol=1e-5)
    z.sum().backward()
    bi = info.backward
    assert bi.ok and bi.stop_mode == "abs" and bool((bi.abs_residual <= 1e-4).all())
    assert all(p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all() for p in layer.parameters())


def test_solve_config_gives_implicit_cg_the_backward_budget():
    from fpntools.models import FPNClassifier, SolveConfig

    cfg = SolveConfig(backward="implicit_cg", tol=1e-4, backward_tol=1e-5, backward_max_iter=7)
    torch.manual_seed(0)
    model = FPNClassifier(6, 3, width=8, cfg=cfg)
    bw = model.fpn.backward_mode
    assert isinstance(bw, ImplicitCG) and bw.tol == 1e-5 and bw.max_iter == 7
    out = model(torch.randn(5, 6))
    out.logits.logsumexp(1).sum().backward()  # relu layer: double backward through the saved graph works
    info = out.infos[0].backward
    assert info is not None and int(info.steps.max()) <= 7
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
