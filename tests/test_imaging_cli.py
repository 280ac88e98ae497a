"""`fpntools imaging`: bad images give a one-line error, exit code 2 and no output file; good ones work."""

from __future__ import annotations

import os
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


def test_odd_size_is_padded_and_restored(tmp_path: Path) -> None:
    """Sides that are not multiples of 4 are padded by reflection inside the restoration; the output has the
    input's size."""
    import imageio.v3 as iio

    img = _png(tmp_path / "odd.png", (np.random.default_rng(1).random((18, 21)) * 255).astype(np.uint8))
    out = tmp_path / "o.png"
    result = runner.invoke(app, ["imaging", "denoise", str(img), "--out", str(out), "--max-iter", "2"])
    assert result.exit_code == 0, result.output
    assert iio.imread(out).shape == (18, 21)


def test_too_small(tmp_path: Path) -> None:
    img = _png(tmp_path / "tiny.png", np.zeros((8, 8), np.uint8))
    _fails(["imaging", "denoise", str(img), "--out", str(tmp_path / "o.png")], tmp_path / "o.png", "between")


def test_colour_round_trip_keeps_shape_channels_and_alpha(tmp_path: Path) -> None:
    """RGB and RGBA are accepted by denoise and inpaint (both colour modes): the output has the input's shape and
    channels, the alpha channel comes back unchanged, and noiseless inpainting keeps every known pixel of every
    channel."""
    import imageio.v3 as iio

    rng = np.random.default_rng(0)
    rgb = (rng.random((20, 24, 3)) * 255).astype(np.uint8)
    alpha = (rng.random((20, 24)) * 255).astype(np.uint8)
    rgba = _png(tmp_path / "rgba.png", np.dstack([rgb, alpha]))
    plain = _png(tmp_path / "rgb.png", rgb)
    for src, channels in ((rgba, 4), (plain, 3)):
        for mode in ("opponent", "rgb"):
            out = tmp_path / f"o_{channels}_{mode}.png"
            result = runner.invoke(app, ["imaging", "denoise", str(src), "--sigma", "0.1", "--out", str(out),
                                         "--max-iter", "2", "--colour", mode])
            assert result.exit_code == 0, result.output
            res = iio.imread(out)
            assert res.shape == (20, 24, channels) and res.dtype == np.uint8
            if channels == 4:
                np.testing.assert_array_equal(res[..., 3], alpha)
    mask = np.full((20, 24), 255, np.uint8)
    mask[4:12, 8:16] = 0
    out = tmp_path / "inp.png"
    result = runner.invoke(app, ["imaging", "inpaint", str(rgba), "--mask", str(_png(tmp_path / "m.png", mask)),
                                 "--out", str(out), "--max-iter", "2"])
    assert result.exit_code == 0, result.output
    res = iio.imread(out)
    assert res.shape == (20, 24, 4)
    np.testing.assert_array_equal(res[mask > 0], np.dstack([rgb, alpha])[mask > 0])
    np.testing.assert_array_equal(res[..., 3], alpha)


def test_five_channel_image_rejected(tmp_path: Path) -> None:
    import imageio.v3 as iio

    path = tmp_path / "five.tiff"
    iio.imwrite(path, np.zeros((32, 32, 5), np.uint8))
    _fails(["imaging", "denoise", str(path), "--out", str(tmp_path / "o.png")], tmp_path / "o.png", "5 channels")


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


# ---------------------------------------------------------------------------------------------------------------
# output paths, weights files, solver status, size limit, progress (issue 14's bad-input table)


def _small_weights(path: Path, **fill: float) -> Path:
    """A small decoder's weights file; ``fill`` sets named tensors to a constant (e.g. huge values)."""
    import torch

    from problems.imaging.model import DecoderConfig, DEQDecoder, save_decoder

    torch.manual_seed(0)
    model = DEQDecoder(DecoderConfig(channels=8, latent_channels=2, encoder_width=8))
    with torch.no_grad():
        for name, value in fill.items():
            model.get_parameter(name).fill_(value)
    save_decoder(model, path)
    return path


def _with_metadata(src: Path, dst: Path, **changes: str) -> Path:
    """Copy a safetensors file with some metadata entries replaced."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), framework="pt") as fh:
        meta = dict(fh.metadata() or {})
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    meta.update(changes)
    save_file(tensors, str(dst), metadata=meta)
    return dst


@pytest.fixture
def no_compute(monkeypatch):
    """Fail the test if a restoration starts (checks must come first)."""
    import problems.imaging.commands as commands

    def boom(*args, **kwargs):
        raise AssertionError("the restoration started before the inputs were checked")

    monkeypatch.setattr(commands, "restore_array", boom)


def test_out_directory_or_missing_folder_rejected_before_computing(tmp_path: Path, gray: Path, no_compute) -> None:
    folder = tmp_path / "folder.png"
    folder.mkdir()
    _fails(["imaging", "denoise", str(gray), "--out", str(folder)], tmp_path / "x.png", "is a directory")
    _fails(["imaging", "denoise", str(gray), "--out", str(tmp_path)], tmp_path / "x.png", "must end in .png")
    out = tmp_path / "missing" / "o.png"
    _fails(["imaging", "denoise", str(gray), "--out", str(out)], out, "does not exist")
    mask = _png(tmp_path / "m.png", np.full((16, 16), 255, np.uint8))
    _fails(["imaging", "inpaint", str(gray), "--mask", str(mask), "--out", str(folder)], tmp_path / "x.png",
           "is a directory")
    _fails(["imaging", "fit", str(gray), "--out", str(out)], out, "does not exist")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into any folder")
def test_out_folder_not_writable_rejected_before_computing(tmp_path: Path, gray: Path, no_compute) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        _fails(["imaging", "denoise", str(gray), "--out", str(locked / "o.png")], locked / "o.png", "not writable")
    finally:
        locked.chmod(0o700)


def test_weights_not_matching_their_config_give_one_line(tmp_path: Path, gray: Path, no_compute) -> None:
    import json

    good = _small_weights(tmp_path / "small.safetensors")
    wrong = _with_metadata(good, tmp_path / "wrong.safetensors",
                           config=json.dumps({"channels": 16, "latent_channels": 2, "groups": 4, "encoder_width": 8}))
    out = tmp_path / "o.png"
    _fails(["imaging", "denoise", str(gray), "--out", str(out), "--weights", str(wrong)], out, "do not match",
           "shape")
    unknown = _with_metadata(good, tmp_path / "unknown.safetensors",
                             config=json.dumps({"channels": 8, "latent_channels": 2, "groups": 4, "width": 8}))
    _fails(["imaging", "denoise", str(gray), "--out", str(out), "--weights", str(unknown)], out, "unknown", "width")
    nan = _small_weights(tmp_path / "nan.safetensors", **{"out_conv.bias": float("nan")})
    _fails(["imaging", "denoise", str(gray), "--out", str(out), "--weights", str(nan)], out, "out_conv.bias", "NaN")


def test_weights_asking_for_1e9_channels_fail_before_allocating(tmp_path: Path, gray: Path, monkeypatch) -> None:
    """The config is bounded field by field before the model is built: the error names the field, and no
    decoder is constructed."""
    import json
    import time

    from problems.imaging import model as model_mod

    huge = _with_metadata(_small_weights(tmp_path / "small.safetensors"), tmp_path / "huge.safetensors",
                          config=json.dumps({"channels": 10**9, "latent_channels": 2, "groups": 4, "encoder_width": 8}))

    def never(*args, **kwargs):
        raise AssertionError("a decoder was built")

    monkeypatch.setattr(model_mod.DEQDecoder, "__init__", never)
    out = tmp_path / "o.png"
    t0 = time.perf_counter()
    _fails(["imaging", "denoise", str(gray), "--out", str(out), "--weights", str(huge)], out, "channels",
           "1000000000", "512")
    assert time.perf_counter() - t0 < 5


def test_non_finite_solve_exits_3_and_writes_nothing(tmp_path: Path, gray: Path) -> None:
    """A decoder whose head overflows (finite but huge weights): even the encoder's restoration is non-finite, so
    no tile can fall back to it; the command says so in one ``error:`` line, exits with 3 and writes no file.
    (A tile whose joint solve alone goes non-finite keeps its start: test_imaging_restore.py.)"""
    weights = _small_weights(tmp_path / "huge.safetensors", **{"head_conv.weight": 1e38, "full_conv.weight": 1e38})
    out = tmp_path / "o.png"
    result = runner.invoke(app, ["imaging", "denoise", str(gray), "--out", str(out), "--weights", str(weights),
                                 "--max-iter", "3"])
    assert result.exit_code == 3, result.output
    last = [ln for ln in result.output.splitlines() if ln.strip()][-1]
    assert last.startswith("error: ") and "not finite" in last and "not written" in last
    assert "Traceback" not in result.output and not out.exists()


def test_restoration_verdict() -> None:
    """Usable when finite (with the objective at both ends and the count of tiles that kept the encoder's
    restoration); a non-finite image or objective is not usable."""
    from problems.imaging.commands import verdict
    from problems.imaging.restore import RestoredImage, TileReport

    def rep(start, final, kept) -> TileReport:
        n = len(start)
        return TileReport(np.array(start, float), np.array(final, float), np.array(kept), np.full(n, 1e-3),
                          np.zeros(n, bool), 7, 0.1)

    ok, msg = verdict(RestoredImage(np.zeros((4, 4)), [rep([2.0, 3.0], [1.0, 2.0], [False, False])], 2))
    assert ok and "2 tile(s), 7 iterations" in msg and "5 -> 3" in msg and "kept" not in msg and "usable" in msg
    ok, msg = verdict(RestoredImage(np.zeros((4, 4)), [rep([2.0], [2.0], [True])], 1))
    assert ok and "1 kept the encoder's restoration" in msg
    ok, msg = verdict(RestoredImage(np.full((4, 4), np.nan), [rep([2.0], [1.0], [False])], 1))
    assert not ok and "not finite" in msg
    ok, msg = verdict(RestoredImage(np.zeros((4, 4)), [rep([np.inf], [np.inf], [True])], 1))
    assert not ok


def test_too_many_pixels_says_what_is_practical(tmp_path: Path, no_compute) -> None:
    """An image above 4096x4096 pixels is refused up front with the practical limit and what to do; a long thin
    image of fewer pixels passes the size check (and 1024x1024, refused before tiling, is accepted)."""
    from problems.imaging.commands import MAX_PIXELS
    from problems.imaging.data import read_image

    big = _png(tmp_path / "big.png", np.zeros((4100, 4100), np.uint8))
    out = tmp_path / "o.png"
    _fails(["imaging", "denoise", str(big), "--out", str(out)], out, "4100x4100", "16,777,216", "crop or downscale")
    thin = _png(tmp_path / "thin.png", np.zeros((64, 8192), np.uint8))
    assert read_image(thin, multiple=1, max_size=8192, max_pixels=MAX_PIXELS).shape == (64, 8192)
    square = _png(tmp_path / "sq.png", np.zeros((1024, 1024), np.uint8))
    assert read_image(square, max_size=8192, max_pixels=MAX_PIXELS).shape == (1024, 1024)


def test_denoise_reports_progress_and_usability(tmp_path: Path, gray: Path) -> None:
    """Progress lines (joint iterations) on stderr, and the final line says whether the output is usable."""
    out = tmp_path / "den.png"
    result = runner.invoke(app, ["imaging", "denoise", str(gray), "--out", str(out), "--max-iter", "3"])
    assert result.exit_code == 0, result.output
    assert "denoise 16x16: joint iteration 1 of at most 33" in result.stderr  # settle 30 + 3
    assert "output usable" in result.stdout and result.stdout.startswith(f"wrote {out}")
    assert "iterations of the joint solve" in result.stdout


def test_bad_options_of_bench_tune_and_adversarial(tmp_path: Path) -> None:
    """Options are checked before any work: each gives one line and exit code 2."""
    for args, words in (
        (["imaging", "bench", "--size", "1000", "--images", "camera"], ("--size 1000", "camera")),
        (["imaging", "bench", "--images", "moon"], ("training images",)),
        (["imaging", "bench", "--repeats", "0", "--images", "camera"], ("--repeats",)),
        (["imaging", "tune", "--lams", "a,b"], ("--lams",)),
        (["imaging", "tune", "--size", "1000"], ("--size",)),
        (["imaging", "adversarial", "--epochs", "0"], ("--epochs",)),
        (["imaging", "adversarial", "--eps", "-1"], ("--eps",)),
        (["imaging", "adversarial", "--resume"], ("run folder",)),
    ):
        _fails(args, tmp_path / "none.png", *words)
