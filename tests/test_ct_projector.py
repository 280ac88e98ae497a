"""CT operator: exact sparse export vs ASTRA, adjointness, autograd, cache, fan beam."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from problems.ct.geometry import CTGeometry
from problems.ct.projector import AstraProjector, ct_operator, projection_matrix


TINY = CTGeometry(image_size=12, n_angles=5, n_detectors=17)
FAN = CTGeometry.fan(source_origin=40.0, origin_detector=20.0, image_size=16, n_angles=12, n_detectors=25)


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "cache"


@pytest.mark.parametrize("geometry", [TINY, FAN, CTGeometry(image_size=16, n_angles=6, n_detectors=23, projector="strip")])
def test_sparse_export_exact_and_matches_astra(geometry, cache) -> None:
    op = ct_operator(geometry, cache_dir=cache, dtype=torch.float64)
    assert op.in_shape == geometry.image_shape and op.out_shape == geometry.sino_shape
    # the sparse pair (W, W^T) is exact: dot test at float64 round-off
    assert op.adjointness_error(batch=3) < 1e-10
    native = AstraProjector(geometry)
    x = torch.rand(3, *geometry.image_shape, dtype=torch.float64)
    y = torch.rand(3, *geometry.sino_shape, dtype=torch.float64)
    # ASTRA computes in float32: same matrix to float32 accuracy, adjoint pair to ~1e-7
    torch.testing.assert_close(native(x), op(x), rtol=1e-5, atol=1e-5 * float(op(x).abs().max()))
    torch.testing.assert_close(native.T(y), op.T(y), rtol=1e-5, atol=1e-5 * float(op.T(y).abs().max()))
    assert native.adjointness_error(batch=3) < 1e-6


def test_default_geometry_adjointness_and_norm(cache) -> None:
    g = CTGeometry()
    op = ct_operator(g, cache_dir=cache)
    assert op.out_shape == (30, 183)
    assert op.adjointness_error() < 1e-10  # run in float64 on the exported float32 weights
    native = AstraProjector(g)
    assert native.adjointness_error(batch=1) < 1e-6
    x = torch.rand(2, 128, 128)
    torch.testing.assert_close(native(x), op(x), rtol=1e-4, atol=1e-4)
    # ||A||^2 of the 30-angle Radon matrix: about 30 * 123.6 (the norm of A^T A at the zero frequency)
    assert 55 < op.norm(n_iter=30) < 66


def test_matrix_cache_roundtrip(cache) -> None:
    W1 = projection_matrix(TINY, cache_dir=cache)
    files = list(cache.glob("ct_matrix_*.npz"))
    assert len(files) == 1 and TINY.key() in files[0].name
    assert not list(cache.glob(".*tmp*"))  # atomic write left no temporary
    W2 = projection_matrix(TINY, cache_dir=cache)
    assert (W1 != W2).nnz == 0 and W1.dtype == np.float32
    files[0].write_bytes(b"corrupt")
    W3 = projection_matrix(TINY, cache_dir=cache)  # rebuilt
    assert (W1 != W3).nnz == 0


def test_autograd_through_projectors(cache) -> None:
    g = CTGeometry(image_size=6, n_angles=3, n_detectors=9)
    op = ct_operator(g, cache_dir=cache, dtype=torch.float64)
    x = torch.rand(2, *g.image_shape, dtype=torch.float64, requires_grad=True)
    y = torch.rand(2, *g.sino_shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(op, (x,))
    assert torch.autograd.gradcheck(op.T, (y,))
    assert torch.autograd.gradgradcheck(lambda u: op(u).pow(2).sum(), (x,))
    # ASTRA native: float32 inside, linear so a large finite-difference step is exact
    native = AstraProjector(g)
    assert torch.autograd.gradcheck(native, (x,), eps=1.0, atol=1e-4, rtol=1e-4)
    assert torch.autograd.gradcheck(native.T, (y,), eps=1.0, atol=1e-4, rtol=1e-4)
    # the sparse export is the default operator, exported from the projector too
    assert (native.to_sparse(cache_dir=cache, dtype=torch.float64).to_scipy() != op.to_scipy()).nnz == 0


def test_operator_errors(cache) -> None:
    op = ct_operator(TINY, cache_dir=cache)
    with pytest.raises(ValueError, match=r"\(B, 12, 12\)"):
        op(torch.zeros(12, 12))
    with pytest.raises(ValueError, match="backend"):
        ct_operator(TINY, backend="gpu", cache_dir=cache)
    with pytest.raises(ValueError, match="backend"):
        AstraProjector(TINY, backend="tpu")
