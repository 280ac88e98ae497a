"""Whole-image restoration (problems/imaging/restore.py): colour planes, tiles, blending, the per-tile fallback."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from problems.imaging.restore import (
    RestoreSettings,
    blend_weights,
    from_planes,
    restore_array,
    solve_tiles,
    tile_layout,
    to_planes,
)
from problems.imaging.tasks import lam_for_sigma


@pytest.fixture(scope="module")
def model():
    from problems.imaging.commands import load_frozen_decoder

    torch.set_num_threads(1)
    return load_frozen_decoder()


@pytest.mark.parametrize("n", [16, 96, 100, 256, 260, 512, 1000, 1028])
@pytest.mark.parametrize("tile,overlap", [(256, 32), (64, 16), (32, 8)])
def test_tiles_cover_and_weights_sum_to_one(n: int, tile: int, overlap: int) -> None:
    """Equal tiles of at most ``tile`` (multiples of 4, starts multiples of 4) cover ``[0, n)`` with at least
    ``overlap`` overlap, and the blending weights are a partition of unity."""
    size, starts = tile_layout(n, tile, overlap)
    assert size % 4 == 0 and size <= max(tile, n if n <= tile else 0)
    assert starts[0] == 0 and starts[-1] + size == n and all(s % 4 == 0 for s in starts)
    assert all(b - a <= size - overlap for a, b in zip(starts, starts[1:]))
    w = blend_weights(size, starts, n)
    total = np.zeros(n)
    for s, row in zip(starts, w):
        total[s : s + size] += row
    np.testing.assert_allclose(total, 1.0, atol=1e-12)
    assert (w >= 0).all()


def test_colour_planes_invert_exactly_and_scale_the_noise() -> None:
    """to_planes / from_planes are inverse (RGB, RGBA, gray + alpha; opponent and rgb); the opponent planes of
    i.i.d. noise of level sigma have levels sigma times the returned scales, and lie in [0, 1]."""
    rng = np.random.default_rng(0)
    for shape in ((8, 9, 3), (8, 9, 4), (8, 9, 2), (8, 9)):
        img = rng.random(shape)
        for mode in ("opponent", "rgb"):
            planes, scales, alpha = to_planes(img, mode)
            assert planes.min() >= 0 and planes.max() <= 1
            np.testing.assert_allclose(from_planes(planes, alpha, mode), img, atol=1e-12)
            assert (alpha is None) == (len(shape) == 2 or shape[2] == 3)
    noise = rng.standard_normal((400, 400, 3)) * 0.1
    planes, scales, _ = to_planes(0.5 + noise, "opponent")
    np.testing.assert_allclose(planes.reshape(3, -1).std(1), 0.1 * scales, rtol=0.02)
    np.testing.assert_allclose(scales, [1 / np.sqrt(3), 1 / np.sqrt(2), np.sqrt(6) / 4])


def test_tiling_equals_whole_image_away_from_seams(model) -> None:
    """A 96x96 image restored in 2x2 tiles of 56 (overlap 16) against in one piece. With a tile covering the
    image the result is the whole-image restoration to the bit. In tiles it cannot be equal exactly (group
    normalisation and the equilibrium couple every pixel of a tile), but away from the seams it agrees to
    0.01 on average and the two restorations are over 40 dB apart."""
    from problems.imaging.data import center_crop, load_image

    img = center_crop(load_image("camera"), 96)
    y = img + 0.1 * np.random.default_rng(0).standard_normal(img.shape)
    whole_settings = RestoreSettings(max_iter=3, settle_iters=2, tile=96)
    whole = restore_array(model, y, None, 0.1, lam_for_sigma, whole_settings).image
    again = restore_array(model, y, None, 0.1, lam_for_sigma, RestoreSettings(max_iter=3, settle_iters=2, tile=128))
    np.testing.assert_array_equal(again.image, whole)
    tiled = restore_array(model, y, None, 0.1, lam_for_sigma,
                          RestoreSettings(max_iter=3, settle_iters=2, tile=64, overlap=16))
    assert tiled.tiles == 4 and tile_layout(96, 64, 16) == (56, [0, 40])
    away = np.ones(96, bool)
    away[32:64] = False  # the overlap [40, 56) and 8 pixels either side
    region = np.outer(away, away)
    diff = np.abs(tiled.image - whole)
    assert diff[region].mean() < 0.01, diff[region].mean()
    assert 10 * np.log10(1 / np.mean(diff**2)) > 40


def test_batches_bound_the_tiles_per_solve(model) -> None:
    """batch_pixels caps the tiles per joint solve: 9 tiles of 32x32 with 2 per batch are 5 batches (over one
    plane) and 15 over the three planes of a colour image; progress is called once per batch."""
    y = np.random.default_rng(0).random((80, 80, 3))
    calls = []
    settings = RestoreSettings(tile=32, overlap=8, batch_pixels=2 * 32 * 32, max_iter=1, settle_iters=1)
    out = restore_array(model, y, None, 0.1, lam_for_sigma, settings, progress=lambda a, n: calls.append((a, n)))
    assert tile_layout(80, 32, 8) == (32, [0, 24, 48])
    assert out.tiles == 27 and len(calls) == 15 and calls[0] == (0, 27) and calls[-1] == (26, 27)
    assert out.image.shape == (80, 80, 3)


def test_a_tile_whose_joint_solve_fails_keeps_the_encoders_restoration(model, monkeypatch) -> None:
    """When the joint solve of one tile of a batch goes non-finite, that tile is the encoder's restoration
    (exactly the ``max_iter=0`` output) and is reported; the other tile is the joint solve's unless its
    objective rose."""
    import problems.imaging.restore as restore

    real = restore.augmented_solve

    def broken(*args, **kwargs):
        res = real(*args, **kwargs)
        res.x[0] = float("nan")
        return res

    y = torch.as_tensor(np.random.default_rng(0).random((2, 1, 32, 32)), dtype=torch.float32)
    start, rep0 = solve_tiles(model, y, None, 0.1, lam_for_sigma(0.1), RestoreSettings(max_iter=0))
    monkeypatch.setattr(restore, "augmented_solve", broken)
    out, rep = solve_tiles(model, y, None, 0.1, lam_for_sigma(0.1), RestoreSettings(max_iter=4, settle_iters=2, lam_per_variance=250.0))
    assert rep.kept_start[0] and rep.nonfinite[0] and rep.residual[0] == np.inf and not rep.nonfinite[1]
    np.testing.assert_array_equal(out[0], start[0])
    assert rep.final[0] == rep.start[0] == rep0.start[0]
    assert np.isfinite(out).all()
    if rep.kept_start[1]:  # the other tile follows the same rule: kept exactly when its objective rose
        np.testing.assert_array_equal(out[1], start[1])
    else:
        assert rep.final[1] <= rep.start[1] * (1 + 1e-3) and not np.array_equal(out[1], start[1])
