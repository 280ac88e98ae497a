"""Backward modes against a dense float64 implicit-function-theorem reference and finite differences."""

from __future__ import annotations

import pytest
import torch

import fpntools
from fpntools import Implicit, ImplicitCG, Phantom
from tests.maps import TanhLayer

B, N, D = 4, 12, 5
TIGHT = dict(tol=1e-13, max_iter=400)


def _loss(z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return (w * z).sum() + 0.5 * (z**2).sum()


def _setup():
    layer = TanhLayer(N, D, rho=0.8)
    x = torch.randn(B, D, dtype=torch.float64, requires_grad=True)
    w = torch.randn(B, N, dtype=torch.float64)
    return layer, x, w


def _grads(layer, x, w, backward, solver="anderson"):
    layer.zero_grad()
    x.grad = None
    z, info = fpntools.fixed_point(lambda z: layer(z, x), layer.initial_state(x), solver, backward, **TIGHT)
    assert info.ok
    _loss(z, w).backward()
    return [p.grad.clone() for p in layer.parameters()] + [x.grad.clone()], z.detach()


def _dense_reference(layer, x, w):
    """Solve (I - J)^T u = dL/dz* with the explicit per-sample Jacobian, then u^T df/dtheta."""
    with torch.no_grad():
        z, _ = fpntools.fixed_point(lambda z: layer(z, x), layer.initial_state(x), backward="jfb", **TIGHT)
    dldz = w + z
    us = []
    for i in range(B):
        jac = torch.autograd.functional.jacobian(lambda zi: layer(zi[None], x[i : i + 1].detach())[0], z[i])
        us.append(torch.linalg.solve((torch.eye(N, dtype=z.dtype) - jac).T, dldz[i]))
    u = torch.stack(us)
    layer.zero_grad()
    x.grad = None
    layer(z, x).backward(u)
    return [p.grad.clone() for p in layer.parameters()] + [x.grad.clone()]


def _rel(a, b):
    return max(float((p - q).norm() / q.norm()) for p, q in zip(a, b))


def test_implicit_matches_dense_reference():
    layer, x, w = _setup()
    ref = _dense_reference(layer, x, w)
    got, _ = _grads(layer, x, w, Implicit(tol=1e-13, max_iter=400))
    assert _rel(got, ref) < 1e-8


@pytest.mark.parametrize("mode", ["implicit", "implicit_cg"])
def test_implicit_repeated_backward_and_graph_release(mode):
    """With ``retain_graph`` a second backward pass gets the same implicit gradient; once the caller drops
    its graph, the tensors the adjoint needs (``f(z*)``, and for CG the ``J^T c`` graph of its JVPs) are freed
    without the cyclic collector (a training loop that leaked them grew by megabytes per step)."""
    import gc
    import weakref

    layer, x, w = _setup()
    ref = _dense_reference(layer, x, w)
    outputs: list[weakref.ref] = []

    def f(z):
        out = layer(z, x)
        outputs.append(weakref.ref(out))
        return out

    layer.zero_grad()
    x.grad = None
    backward = Implicit(tol=1e-13, max_iter=400) if mode == "implicit" else ImplicitCG(tol=1e-13, max_iter=100)
    z, _ = fpntools.fixed_point(f, layer.initial_state(x), "anderson", backward, **TIGHT)
    loss = _loss(z, w)
    loss.backward(retain_graph=True)
    first = [p.grad.clone() for p in layer.parameters()] + [x.grad.clone()]
    layer.zero_grad()
    x.grad = None
    loss.backward()
    second = [p.grad.clone() for p in layer.parameters()] + [x.grad.clone()]
    assert _rel(first, ref) < 1e-8 and _rel(second, ref) < 1e-8
    gc.disable()
    try:
        del z, loss
        assert all(r() is None for r in outputs)
    finally:
        gc.enable()


@pytest.mark.parametrize("solver", ["anderson", "broyden", "picard"])
def test_implicit_adjoint_solver_choices(solver):
    layer, x, w = _setup()
    ref = _dense_reference(layer, x, w)
    got, _ = _grads(layer, x, w, Implicit(solver=solver, tol=1e-13, max_iter=600))
    assert _rel(got, ref) < 1e-8


@pytest.mark.parametrize("mode", ["implicit", "implicit_cg"])
def test_implicit_matches_finite_differences(mode):
    layer, x, w = _setup()
    backward = Implicit(tol=1e-13, max_iter=400) if mode == "implicit" else ImplicitCG(tol=1e-13, max_iter=100)
    got, _ = _grads(layer, x, w, backward)
    gx = got[-1]
    h = 1e-6
    for idx in [(0, 0), (1, 3), (3, 4)]:
        xp, xm = x.detach().clone(), x.detach().clone()
        xp[idx] += h
        xm[idx] -= h
        with torch.no_grad():
            zp, _ = fpntools.fixed_point(lambda z: layer(z, xp), layer.initial_state(xp), **TIGHT)
            zm, _ = fpntools.fixed_point(lambda z: layer(z, xm), layer.initial_state(xm), **TIGHT)
        fd = (_loss(zp, w) - _loss(zm, w)) / (2 * h)
        assert abs(float(fd - gx[idx])) < 1e-7 * max(1.0, abs(float(fd)))


def test_unroll_to_convergence_agrees_with_implicit():
    layer, x, w = _setup()
    ref, _ = _grads(layer, x, w, Implicit(tol=1e-13, max_iter=400))
    got, _ = _grads(layer, x, w, "unroll", solver="picard")
    assert _rel(got, ref) < 1e-9
    got_aa, _ = _grads(layer, x, w, "unroll", solver="anderson")
    assert _rel(got_aa, ref) < 1e-6


def test_jfb_is_gradient_of_one_step_at_detached_fixed_point():
    layer, x, w = _setup()
    got, z = _grads(layer, x, w, "jfb")
    dldz = w + z
    params = list(layer.parameters()) + [x]
    ref = torch.autograd.grad(layer(z, x), params, dldz)
    assert _rel(got, ref) < 1e-12


def test_phantom_approaches_implicit_as_k_grows():
    layer, x, w = _setup()
    ref, _ = _grads(layer, x, w, Implicit(tol=1e-13, max_iter=400))
    errs = [_rel(_grads(layer, x, w, Phantom(k=k, tau=0.5))[0], ref) for k in (1, 5, 20, 80)]
    assert all(a > b for a, b in zip(errs, errs[1:])), errs
    assert errs[-1] < 1e-6
    # k = 1, tau = 1 is exactly JFB
    assert _rel(_grads(layer, x, w, Phantom(k=1, tau=1.0))[0], _grads(layer, x, w, "jfb")[0]) < 1e-12


def test_returned_value_is_the_fixed_point_for_every_mode():
    layer, x, _ = _setup()
    for mode in ["implicit", "implicit_cg", "jfb", "phantom", "unroll"]:
        z, info = fpntools.fixed_point(lambda z: layer(z, x), layer.initial_state(x), backward=mode, tol=1e-10, max_iter=300)
        fz = layer(z, x).detach()
        res = (fz - z.detach()).norm(dim=1) / fz.norm(dim=1)
        assert float(res.max()) <= 1e-10 * 1.01, mode
        assert z.requires_grad


@pytest.mark.parametrize("mode", ["implicit", "implicit_cg", "jfb", "phantom", "unroll"])
@pytest.mark.parametrize("container", [tuple, list])
def test_structured_states_match_flat_states(mode, container):
    """A map on a (B,3,4) x (B,5) state equals the same map on the flat (B,17) state, for every mode."""
    torch.manual_seed(1)
    n = 17
    layer = TanhLayer(n, D, rho=0.7)
    x = torch.randn(B, D, dtype=torch.float64, requires_grad=True)
    w = torch.randn(B, n, dtype=torch.float64)

    def flat_f(z):
        return layer(z, x)

    def struct_f(zs):
        flat = torch.cat([zs[0].reshape(B, -1), zs[1]], dim=1)
        out = layer(flat, x)
        return container([out[:, :12].reshape(B, 3, 4), out[:, 12:]])

    tight = {"implicit": Implicit(tol=1e-12, max_iter=300), "implicit_cg": ImplicitCG(tol=1e-12, max_iter=300)}
    backward = tight.get(mode, mode)
    z, _ = fpntools.fixed_point(flat_f, torch.zeros(B, n, dtype=torch.float64), backward=backward, tol=1e-12, max_iter=300)
    _loss(z, w).backward()
    ref = [p.grad.clone() for p in layer.parameters()] + [x.grad.clone()]
    layer.zero_grad()
    x.grad = None
    z0 = container([torch.zeros(B, 3, 4, dtype=torch.float64), torch.zeros(B, 5, dtype=torch.float64)])
    zs, info = fpntools.fixed_point(struct_f, z0, backward=backward, tol=1e-12, max_iter=300)
    assert isinstance(zs, container) and zs[0].shape == (B, 3, 4) and zs[1].shape == (B, 5)
    _loss(torch.cat([zs[0].reshape(B, -1), zs[1]], dim=1), w).backward()
    got = [p.grad.clone() for p in layer.parameters()] + [x.grad.clone()]
    assert _rel(got, ref) < 1e-9


def test_implicit_records_adjoint_info_and_warm_start():
    layer, x, w = _setup()
    bw = Implicit(tol=1e-10, max_iter=200, warm_start=True)
    z, info = fpntools.fixed_point(lambda z: layer(z, x), layer.initial_state(x), backward=bw, tol=1e-12, max_iter=300)
    _loss(z, w).backward()
    assert info.backward is not None and info.backward.ok
    cold = int(info.backward.steps.max())
    z, info = fpntools.fixed_point(lambda z: layer(z, x), layer.initial_state(x), backward=bw, tol=1e-12, max_iter=300)
    _loss(z, w).backward()
    assert int(info.backward.steps.max()) < cold  # started at the previous adjoint solution


def test_no_grad_and_float32():
    layer = TanhLayer(N, D, rho=0.8, dtype=torch.float32)
    x = torch.randn(B, D)
    with torch.no_grad():
        z, info = fpntools.fixed_point(lambda z: layer(z, x), layer.initial_state(x), tol=1e-5)
    assert z.grad_fn is None and not z.requires_grad and info.ok and z.dtype == torch.float32
    z, info = fpntools.fixed_point(lambda z: layer(z, x), layer.initial_state(x), tol=1e-5)
    z.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters())
