"""Lanczos spectrum estimates against dense eigendecompositions."""

import pytest
import torch

from fpntools.operators import lanczos


def _spd(n: int, eigenvalues: torch.Tensor, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    return q @ torch.diag(eigenvalues) @ q.T


def test_full_krylov_space_gives_the_exact_spectrum():
    ev = torch.linspace(0.1, 30.0, 40, dtype=torch.float64)
    a = _spd(40, ev)
    res = lanczos(lambda v: a @ v, torch.randn(40, dtype=torch.float64), steps=40)
    assert res.steps == 40
    torch.testing.assert_close(res.ritz_values, ev, rtol=1e-8, atol=1e-8)
    assert abs(float(res.weights.sum()) - 1.0) < 1e-12
    assert res.condition_estimate == pytest.approx(300.0, rel=1e-8)


def test_few_steps_find_the_extremes_from_inside():
    ev = torch.cat([torch.tensor([0.05]), torch.linspace(1.0, 2.0, 200), torch.tensor([27.0])]).double()
    a = _spd(202, ev, seed=1)
    v0 = torch.randn(202, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    res = lanczos(lambda v: a @ v, v0, steps=25)
    lo, hi = float(res.ritz_values[0]), float(res.ritz_values[-1])
    # Ritz values lie in [lambda_min, lambda_max] (Cauchy interlacing) and the isolated extremes converge first
    assert 0.05 - 1e-10 <= lo < 0.05 + 1e-6
    assert 27.0 - 1e-6 < hi <= 27.0 + 1e-10


def test_weights_are_the_start_vectors_spectral_components():
    ev = torch.tensor([1.0, 2.0, 5.0, 9.0], dtype=torch.float64)
    a = torch.diag(ev)
    v0 = torch.tensor([1.0, 1.0, 0.0, 2.0], dtype=torch.float64)  # no component on the eigenvalue 5
    res = lanczos(lambda v: a @ v, v0, steps=4)
    assert res.steps == 3  # the Krylov space of v0 is invariant after three steps
    torch.testing.assert_close(res.ritz_values, torch.tensor([1.0, 2.0, 9.0], dtype=torch.float64))
    torch.testing.assert_close(res.weights, torch.tensor([1.0, 1.0, 4.0], dtype=torch.float64) / 6.0)


def test_matvec_on_shaped_tensors():
    ev = torch.linspace(1.0, 4.0, 24, dtype=torch.float64)
    a = _spd(24, ev, seed=3)
    res = lanczos(lambda v: (a @ v.reshape(-1)).reshape(2, 3, 4), torch.ones(2, 3, 4, dtype=torch.float64), steps=24)
    torch.testing.assert_close(res.ritz_values, ev, rtol=1e-8, atol=1e-8)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="steps"):
        lanczos(lambda v: v, torch.ones(3), steps=0)
    with pytest.raises(ValueError, match="zero"):
        lanczos(lambda v: v, torch.zeros(3), steps=2)
    with pytest.raises(ValueError, match="finite"):
        lanczos(lambda v: v, torch.tensor([1.0, float("nan")]), steps=2)
    with pytest.raises(ValueError, match="shape"):
        lanczos(lambda v: v[:2], torch.ones(3), steps=2)
