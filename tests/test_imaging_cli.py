"""`fpntools imaging`: bad images give a one-line error, exit code 2 and no output file; good ones work."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fpntools.cli import app

runner = CliRunner()


def _png(path: Path, arr: np.ndarray) -> Path:
    import imageio.v3 as iio

    iio.imwrite(path, arr)
    return path


@pytest.fixture
def gray(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    return _png(tmp_path / "in.png", (rng.random((16, 16)) * 255).astype(np.uint8))


def _fails(args: list[str], out: Path, *words: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for w in words:
        assert w in lines[0], lines[0]
    assert "Traceback" not in result.output
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}*"))  # no temporary left behind


def test_wrong_size(tmp_path: Path) -> None:
    img = _png(tmp_path / "odd.png", np.zeros((30, 33), np.uint8))
    _fails(["imaging", "denoise", str(img), "--out", str(tmp_path / "o.png")], tmp_path / "o.png", "multiples of 4")


def test_too_small(tmp_path: Path) -> None:
    img = _png(tmp_path / "tiny.png", np.zeros((8, 8), np.uint8))
    _fails(["imaging", "denoise", str(img), "--out", str(tmp_path / "o.png")], tmp_path / "o.png", "between")


def test_colour_image_rejected(tmp_path: Path) -> None:
    img = _png(tmp_path / "rgb.png", np.zeros((32, 32, 3), np.uint8))
    _fails(["imaging", "denoise", str(img), "--out", str(tmp_path / "o.png")], tmp_path / "o.png", "single-channel")


def test_nan_image_rejected(tmp_path: Path) -> None:
    import imageio.v3 as iio

    arr = np.full((32, 32), 0.5, np.float32)
    arr[3, 4] = np.nan
    path = tmp_path / "nan.tiff"
    iio.imwrite(path, arr)
    _fails(["imaging", "denoise", str(path), "--out", str(tmp_path / "o.png")], tmp_path / "o.png", "NaN")


def test_unreadable_and_missing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"this is not a png")
    out = tmp_path / "o.png"
    _fails(["imaging", "denoise", str(bad), "--out", str(out)], out, "not a readable image")
    _fails(["imaging", "denoise", str(tmp_path / "none.png"), "--out", str(out)], out, "not found")


def test_bad_mask_and_options(tmp_path: Path, gray: Path) -> None:
    out = tmp_path / "o.png"
    small = _png(tmp_path / "m.png", np.full((20, 16), 255, np.uint8))
    _fails(["imaging", "inpaint", str(gray), "--mask", str(small), "--out", str(out)], out, "mask", "16x16")
    empty = _png(tmp_path / "m0.png", np.zeros((16, 16), np.uint8))
    _fails(["imaging", "inpaint", str(gray), "--mask", str(empty), "--out", str(out)], out, "no known pixel")
    _fails(["imaging", "denoise", str(gray), "--sigma", "-1", "--out", str(out)], out, "sigma")
    _fails(["imaging", "denoise", str(gray), "--out", str(tmp_path / "o.jpg")], tmp_path / "o.jpg", ".png")
    _fails(["imaging", "denoise", str(gray), "--out", str(out), "--weights", str(tmp_path / "w.safetensors")], out, "weights")


def test_denoise_and_inpaint_write_png(tmp_path: Path, gray: Path) -> None:
    import imageio.v3 as iio

    out = tmp_path / "den.png"
    result = runner.invoke(app, ["imaging", "denoise", str(gray), "--sigma", "0.2", "--out", str(out), "--max-iter", "3"])
    assert result.exit_code == 0, result.output
    assert iio.imread(out).shape == (16, 16)
    mask = np.full((16, 16), 255, np.uint8)
    mask[4:12, 4:12] = 0
    mpath = _png(tmp_path / "mask.png", mask)
    out2 = tmp_path / "inp.png"
    result = runner.invoke(app, ["imaging", "inpaint", str(gray), "--mask", str(mpath), "--out", str(out2), "--max-iter", "3"])
    assert result.exit_code == 0, result.output
    res = iio.imread(out2)
    assert res.shape == (16, 16)
    np.testing.assert_array_equal(res[mask > 0], iio.imread(gray)[mask > 0])  # known pixels kept (noiseless)
