"""`fpntools imaging bench --dataset` and the natural-image data (train400 / Set12 / BSD68)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fpntools.cli import app
from problems.imaging.data import NATURAL_ROOT, VALIDATION_COUNT, load_natural_set, split_train_validation

runner = CliRunner()


def _fake_root(tmp_path: Path) -> Path:
    """A data root with 22 tiny train400 images and one odd-sized Set12 image (smooth random fields)."""
    import imageio.v3 as iio

    rng = np.random.default_rng(0)
    for folder, n, shape in (("train400", VALIDATION_COUNT + 2, (32, 32)), ("Set12", 1, (34, 41))):
        (tmp_path / folder).mkdir()
        for i in range(n):
            field = np.cumsum(np.cumsum(rng.standard_normal(shape), 0), 1)
            field = (field - field.min()) / (np.ptp(field) + 1e-9)
            iio.imwrite(tmp_path / folder / f"{i:03d}.png", (field * 255).astype(np.uint8))
    return tmp_path


def test_dataset_bench_denoising_rows(tmp_path: Path) -> None:
    """The denoising rows alone (``--no-masks --naive-crop 0``) on a tiny data root: every method with finite
    numbers, the published figures beside them, no inpainting or speed table."""
    root = _fake_root(tmp_path)
    result = runner.invoke(app, ["imaging", "bench", "--dataset", "set12", "--sigma", "50", "--naive-crop", "0",
                                 "--no-masks", "--data-root", str(root)])
    assert result.exit_code == 0, result.output
    rows = [ln for ln in result.stdout.splitlines() if ln.startswith("| 50 |")]
    assert len(rows) == 7 and any(r.startswith("| 50 | BM3D (published, all of Set12) | 26.72 |") for r in rows)
    assert "biharmonic" not in result.stdout and "naive nested" not in result.stdout
    for ln in rows:
        if "published" not in ln:
            cells = [c.strip() for c in ln.strip("|").split("|")]
            assert all(np.isfinite(float(c)) for c in cells[2:]), ln


@pytest.mark.slow
def test_dataset_bench_prints_every_row(tmp_path: Path) -> None:
    """On a tiny data root the benchmark prints every method's row (denoising with the published figures, the
    naive speed row, the four inpainting masks) with finite PSNR, SSIM and times; TV weights come from the
    validation images of train400."""
    root = _fake_root(tmp_path)
    result = runner.invoke(app, ["imaging", "bench", "--dataset", "set12", "--sigma", "25", "--naive-crop", "32",
                                 "--data-root", str(root)])
    assert result.exit_code == 0, result.output
    out = result.stdout
    for method in ("augmented DEQ", "encoder alone", "TV (tuned,", "TV (oracle)", "BM3D (bm3d package)",
                   "BM3D (published, all of Set12) | 29.97", "DnCNN-S (published, all of Set12) | 30.44",
                   "blocks 25%", "blocks 50%", "pixels 50%", "pixels 80%", "biharmonic", "TV inpainting"):
        assert method in out, method
    rows = [ln for ln in out.splitlines() if ln.startswith("| 25 |") and "published" not in ln]
    assert len(rows) == 6  # five methods and the speed row
    for ln in rows[:5]:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        assert all(np.isfinite(float(c)) for c in cells[2:]), ln


def test_dataset_bench_bad_options_and_missing_data(tmp_path: Path) -> None:
    """Bad options and a missing data folder: one line, exit code 2, before any work."""
    for args, words in (
        (["--dataset", "kodak"], ("--dataset", "kodak")),
        (["--dataset", "set12", "--sigma", "0"], ("--sigma",)),
        (["--dataset", "set12", "--limit", "-1"], ("--limit",)),
        (["--dataset", "set12", "--naive-crop", "30"], ("--naive-crop",)),
        (["--dataset", "bsd68", "--data-root", str(tmp_path / "none")], ("BSD68", "not found")),
    ):
        result = runner.invoke(app, ["imaging", "bench", *args])
        assert result.exit_code == 2, result.output
        lines = [ln for ln in result.output.splitlines() if ln.strip()]
        assert lines[-1].startswith("error: ") and all(w in lines[-1] for w in words), result.output
        assert "Traceback" not in result.output


@pytest.mark.skipif(not (NATURAL_ROOT / "train400").is_dir(), reason="../shared/data/natural-images is absent")
def test_train400_split_and_npy_stack_agree(tmp_path: Path) -> None:
    """train400 from its folder and from a .npy stack are the same images; the last 20 validate and are
    disjoint from the training part."""
    from problems.imaging.data import load_training_images

    imgs = load_training_images("train400")
    assert len(imgs) == 400 and imgs[0].shape == (180, 180)
    stack = tmp_path / "t.npy"
    np.save(stack, np.stack([(im[:40, :40] * 255).round().astype(np.uint8) for im in imgs[:25]]))
    again = load_training_images(str(stack))
    np.testing.assert_array_equal(again[3], imgs[3][:40, :40])
    train, val = split_train_validation(imgs, "train400")
    assert len(train) == 380 and len(val) == VALIDATION_COUNT and val[0] is imgs[380]
    names = [n for n, _ in load_natural_set("train400")]
    assert names[380] == "test_381.png"
