"""FixedPoint with a Jacobian penalty: the loss is the Hutchinson estimate and training lowers ||J||_F."""

from __future__ import annotations

import torch

from fpntools import FixedPoint
from fpntools.regularization import JacobianPenalty, jacobian_frobenius
from tests.maps import TanhLayer


def _exact_frobenius_sq(layer, z, x):
    total = 0.0
    for i in range(z.shape[0]):
        jac = torch.autograd.functional.jacobian(lambda zi: layer(zi[None], x[i : i + 1])[0], z[i].detach())
        total += float(jac.square().sum())
    return total / z.shape[0]


def test_penalty_is_reported_in_training_only_and_is_unbiased():
    layer = TanhLayer(8, 3, rho=0.9)
    x = torch.randn(4, 3, dtype=torch.float64)
    deq = FixedPoint(layer, tol=1e-10, max_iter=200, jacobian_penalty=JacobianPenalty(weight=1.0, n_samples=2000, normalize=False))
    z, info = deq(x)
    assert info.jacobian_loss is not None and info.jacobian_loss.requires_grad
    exact = _exact_frobenius_sq(layer, z, x)
    assert abs(float(info.jacobian_loss.detach()) - exact) < 0.1 * exact
    deq.eval()
    _, info_eval = deq(x)
    assert info_eval.jacobian_loss is None


def test_training_with_penalty_lowers_jacobian_norm():
    torch.manual_seed(3)
    layer = TanhLayer(16, 4, rho=0.95, dtype=torch.float32)
    x = torch.randn(32, 4)
    deq = FixedPoint(layer, tol=1e-5, max_iter=100, jacobian_penalty=JacobianPenalty(weight=1.0, n_samples=1))
    opt = torch.optim.Adam(layer.parameters(), lr=1e-2)

    def frob() -> float:
        z, _ = deq(x)
        zi = z.detach().requires_grad_()
        return float(jacobian_frobenius(layer(zi, x), zi, n_samples=64, create_graph=False))

    before = frob()
    for _ in range(30):
        z, info = deq(x)
        loss = info.jacobian_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert frob() < 0.5 * before


def test_penalty_schedule_counter_is_checkpointed():
    layer = TanhLayer(6, 3, rho=0.5, dtype=torch.float32)
    deq = FixedPoint(layer, tol=1e-5, jacobian_penalty=JacobianPenalty(weight=1.0, schedule="linear", warmup_steps=10))
    x = torch.randn(2, 3)
    for _ in range(3):
        deq(x)
    state = deq.state_dict()
    assert int(state["penalty_step"]) == 3
    fresh = FixedPoint(TanhLayer(6, 3, dtype=torch.float32), jacobian_penalty=JacobianPenalty())
    fresh.load_state_dict(state)
    assert int(fresh.penalty_step) == 3
    del state["penalty_step"]  # inference weights saved without the counter still load
    fresh.load_state_dict(state)
    assert int(fresh.penalty_step) == 0
