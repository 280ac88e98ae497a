"""CT problem: geometry validation, phantoms, noise model, data-set cache and the LoDoPaB loader."""

from __future__ import annotations

import math
import warnings

import h5py
import numpy as np
import pytest
import torch

from problems.ct.geometry import CTGeometry, ShapeError
from problems.ct.lodopab import LoDoPaBError, load_lodopab, lodopab_files
from problems.ct.phantoms import EllipseConfig, random_ellipses, shepp_logan


# ------------------------------------------------------------------------------------------ geometry
def test_default_geometry_contract() -> None:
    g = CTGeometry()
    assert (g.image_size, g.n_angles, g.n_detectors, g.detector_width) == (128, 30, 183, 1.0)
    assert g.beam == "parallel" and g.projector_type == "linear"
    assert g.sino_shape == (30, 183) and g.image_shape == (128, 128)
    np.testing.assert_allclose(g.angles, np.arange(30) * math.pi / 30)
    assert g.angles[-1] < math.pi
    assert g.field_of_view_radius >= 128 / math.sqrt(2)
    assert CTGeometry().key() == g.key() and CTGeometry(n_angles=31).key() != g.key()
    assert CTGeometry.from_dict(g.to_dict()) == g


def test_fan_geometry_and_errors() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        f = CTGeometry.fan()
    assert f.beam == "fan" and f.projector_type == "line_fanflat" and f.magnification == 2.0
    assert f.field_of_view_radius >= 128 / math.sqrt(2)
    with pytest.raises(ValueError, match="source_origin"):
        CTGeometry(beam="fan")
    with pytest.raises(ValueError, match="fan-beam"):
        CTGeometry(source_origin=300.0, origin_detector=100.0)
    with pytest.raises(ValueError, match="projector"):
        CTGeometry(projector="line_fanflat")
    with pytest.warns(UserWarning, match="not measured"):
        CTGeometry(n_detectors=100)


def test_sinogram_shape_validation() -> None:
    g = CTGeometry()
    yb, batched = g.check_sinogram(torch.zeros(30, 183))
    assert yb.shape == (1, 30, 183) and not batched
    yb, batched = g.check_sinogram(np.zeros((4, 30, 183)))
    assert yb.shape == (4, 30, 183) and batched
    with pytest.raises(ShapeError, match=r"expected \(30, 183\).*transposed"):
        g.check_sinogram(torch.zeros(183, 30))
    with pytest.raises(ShapeError, match=r"\(2, 1, 30, 183\).*channel"):
        g.check_sinogram(torch.zeros(2, 1, 30, 183))
    with pytest.raises(ShapeError, match=r"has shape \(64, 64\); expected \(128, 128\)"):
        g.check_image(torch.zeros(64, 64))


# ------------------------------------------------------------------------------------------ phantoms
def test_ellipses_reproducible_and_in_range() -> None:
    a = random_ellipses(6, size=64, seed=3)
    b = random_ellipses(6, size=64, seed=3)
    c = random_ellipses(2, size=64, seed=3, start=4)
    assert a.shape == (6, 64, 64) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a[4:], c)  # image i depends on (seed, i) only
    assert not np.array_equal(a, random_ellipses(6, size=64, seed=4))
    assert a.min() >= 0.0 and a.max() <= 1.0 and a.max() > 0.1
    # everything inside the inscribed disc (radius 0.95 of the half-width)
    n = 64
    cc = (np.arange(n) + 0.5) * 2 / n - 1
    r = np.hypot(*np.meshgrid(cc, cc))
    assert a[:, r > 0.97].max() == 0.0
    s = random_ellipses(2, size=32, seed=0, config=EllipseConfig(supersample=3))
    assert 0 <= s.min() and s.max() <= 1 and len(np.unique(s)) > 10
    with pytest.raises(ValueError):
        EllipseConfig(min_ellipses=5, max_ellipses=2)


def test_shepp_logan() -> None:
    s = shepp_logan(64)
    assert s.shape == (64, 64) and s.min() >= 0 and s.max() <= 1 and s.max() > 0.9


# ------------------------------------------------------------------------------------------ LoDoPaB
def _write(path, data, key="data") -> None:
    with h5py.File(path, "w") as fh:
        fh.create_dataset(key, data=data)


def test_lodopab_loader(tmp_path) -> None:
    rng = np.random.default_rng(0)
    d0 = rng.uniform(0, 1, (3, 362, 362)).astype(np.float32)
    d1 = rng.uniform(0, 1, (2, 362, 362)).astype(np.float32)
    _write(tmp_path / "ground_truth_test_000.hdf5", d0)
    _write(tmp_path / "ground_truth_test_001.hdf5", d1)
    _write(tmp_path / "ground_truth_train_000.hdf5", d1)
    assert [p.name for p in lodopab_files(tmp_path, "test")] == [
        "ground_truth_test_000.hdf5",
        "ground_truth_test_001.hdf5",
    ]
    x = load_lodopab(tmp_path, "test", image_size=64)
    assert x.shape == (5, 64, 64) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
    # area resize preserves the mean of each image
    np.testing.assert_allclose(x[3].mean(), d1[0].mean(), rtol=1e-2)
    assert load_lodopab(tmp_path, "test", image_size=64, max_images=4).shape == (4, 64, 64)
    np.testing.assert_allclose(load_lodopab(tmp_path, "test", image_size=64, max_images=4), x[:4])
    assert load_lodopab(tmp_path, "train", image_size=32).shape == (2, 32, 32)


def test_lodopab_errors(tmp_path) -> None:
    with pytest.raises(LoDoPaBError, match="not found"):
        load_lodopab(tmp_path / "nope", "train")
    with pytest.raises(LoDoPaBError, match="ground_truth_validation_000.hdf5"):
        load_lodopab(tmp_path, "val")
    with pytest.raises(ValueError, match="unknown LoDoPaB split"):
        load_lodopab(tmp_path, "dev")
    _write(tmp_path / "ground_truth_validation_000.hdf5", np.zeros((1, 8, 8)), key="images")
    with pytest.raises(LoDoPaBError, match=r"no dataset 'data'.*images"):
        load_lodopab(tmp_path, "validation")
    _write(tmp_path / "ground_truth_test_000.hdf5", np.zeros((4, 8)))
    with pytest.raises(LoDoPaBError, match="expected \\(n, 362, 362\\)"):
        load_lodopab(tmp_path, "test")
    (tmp_path / "ground_truth_train_000.hdf5").write_bytes(b"not hdf5")
    with pytest.raises(LoDoPaBError, match="HDF5"):
        load_lodopab(tmp_path, "train")
    _write(tmp_path / "ground_truth_train_002.hdf5", np.zeros((1, 8, 8)))
    with pytest.raises(LoDoPaBError, match=r"missing file indices \[1\]"):
        load_lodopab(tmp_path, "train")
