"""``fpntools ct bench`` (issue 15): test sets, geometries, per-image metrics, the targets, the JSON, the figure,
one-line errors. Tiny sizes (32 x 32 images, 10 angles) with an untrained network saved as weights."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from fpntools.cli import app as top_app
from fpntools.cli_support import EXIT_USER_ERROR
from fpntools.errors import UserInputError
from fpntools.metrics import psnr
from problems.ct.bench import (
    BenchConfig,
    bench_document,
    bench_table,
    default_geometries,
    parse_geometries,
    required_margin,
    run_bench,
    targets,
    targets_table,
    held_out_images,
)
from problems.ct.train import VALIDATION_GEOMETRIES

SIZE = 32


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A projection-matrix cache for the module and untrained F-FPN / unrolled weights."""
    from problems.ct.ffpn import build_model
    from problems.ct.weights import save_weights

    root = tmp_path_factory.mktemp("ct_bench")
    weights = {}
    for kind in ("ffpn", "unrolled"):
        weights[kind] = root / f"{kind}.safetensors"
        save_weights(build_model(kind), weights[kind], {})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FPNTOOLS_CACHE", str(root / "cache"))
        yield {"root": root, "weights": weights}


@pytest.fixture(scope="module")
def result(env):
    """One tiny bench: par10, phantoms (2) and Shepp-Logan, FBP, TV (20 iterations) and the F-FPN, batches of 1."""
    cfg = BenchConfig(methods=["ffpn", "tv", "fbp"], geometries=["par10"], sets=["shepp-logan", "phantoms"],
                      n_test=2, iters=20, batch_size=1, image_size=SIZE, ffpn_weights=env["weights"]["ffpn"])
    lines: list[str] = []
    return run_bench(cfg, log=lines.append), lines


def test_default_geometries_are_the_validation_geometries() -> None:
    geoms = parse_geometries(default_geometries())
    assert list(geoms) == ["par20", "par30", "par60", "fan60"]
    assert tuple(geoms.values()) == VALIDATION_GEOMETRIES
    assert [required_margin(g) for g in geoms.values()] == [0.5, 1.0, 0.5, 0.5]


def test_test_sets_are_held_out_and_deterministic() -> None:
    from problems.ct.images import rich_phantoms
    from problems.ct.phantoms import shepp_logan

    a, notes = held_out_images(["phantoms", "shepp-logan"], 2, seed=3, size=SIZE)
    b, _ = held_out_images(["phantoms", "shepp-logan"], 2, seed=3, size=SIZE)
    assert notes == [] and a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert np.array_equal(a["phantoms"], rich_phantoms(2, SIZE, rng=np.random.default_rng(20_003)))
    assert not np.array_equal(a["phantoms"], rich_phantoms(2, SIZE, rng=np.random.default_rng(3)))
    assert np.array_equal(a["shepp-logan"], shepp_logan(SIZE)[None])


def test_bsd68_is_skipped_with_a_note_without_natural_images(monkeypatch) -> None:
    import problems.ct.images as images

    monkeypatch.setattr(images, "natural_images_root", lambda: None)
    sets, notes = held_out_images(["bsd68", "shepp-logan"], 2, size=SIZE)
    assert list(sets) == ["shepp-logan"] and len(notes) == 1 and "bsd68 skipped" in notes[0]


def test_rows_metrics_and_order(result) -> None:
    res, lines = result
    assert [(r["set"], r["method"]) for r in res.rows] == [
        (s, m) for s in ("phantoms", "shepp-logan") for m in ("fbp", "tv", "ffpn")]
    for r in res.rows:
        n = 2 if r["set"] == "phantoms" else 1
        assert r["n"] == n and len(r["psnr_per_image"]) == n and len(r["ssim_per_image"]) == n
        assert math.isclose(r["psnr"], float(np.mean(r["psnr_per_image"])), rel_tol=1e-12)
        assert math.isclose(r["seconds_per_image"], r["seconds"] / n, rel_tol=1e-12)
        assert all(math.isfinite(v) for v in r["psnr_per_image"]) and r["usable"]
    tv = res.row("par10", "phantoms", "tv")
    assert res.row("par10", "phantoms", "fbp")["steps"] is None and 1 <= tv["steps"] <= 20
    assert len(lines) == 1 + 6 and lines[-1].startswith("[6/6] par10 shepp-logan ffpn: PSNR")


def test_figure_panel_is_the_reconstruction_of_the_row(result) -> None:
    """The figure shows Shepp-Logan (no BSD68 requested) at par10 (par30 not run); its PSNR is the row's."""
    res, _ = result
    assert res.figure_geometry == "par10" and [p.label for p in res.panels] == ["shepp-logan test image 0, par10"]
    panel = res.panels[0]
    for m, rec in panel.recs.items():
        assert math.isclose(float(psnr(rec, panel.truth)), res.row("par10", "shepp-logan", m)["psnr"], rel_tol=1e-6)


def test_targets_follow_the_rows(result) -> None:
    res, _ = result
    ts = targets(res)
    assert [t["set"] for t in ts] == ["phantoms", "shepp-logan"]
    for t in ts:
        f, tv = res.row("par10", t["set"], "ffpn"), res.row("par10", t["set"], "tv")
        assert t["ffpn_minus_tv"] == pytest.approx(f["psnr"] - tv["psnr"])
        assert t["beats_tv"] == (t["ffpn_minus_tv"] >= 0.5) and t["required_margin"] == 0.5
        assert t["faster_than_tv"] == (f["seconds_per_image"] < tv["seconds_per_image"])
        assert t["ffpn_minus_unrolled"] is None and t["beats_unrolled"] is None  # unrolled not run
        assert t["met"] == (t["beats_tv"] and t["faster_than_tv"])


def test_json_document_and_tables(result, tmp_path) -> None:
    from rich.console import Console

    from problems.ct.figures import save_bench_figure

    res, _ = result
    doc = json.loads(json.dumps(bench_document(res)))
    assert set(doc) == {"config", "geometries", "sets", "notes", "figure_geometry", "results", "targets",
                        "all_targets_met"}
    assert doc["sets"] == {"phantoms": 2, "shepp-logan": 1} and doc["geometries"]["par10"]["n_angles"] == 10
    assert doc["config"]["ffpn_weights"].endswith("ffpn.safetensors") and doc["config"]["known_noise"] is False
    assert len(doc["results"]) == 6 and len(doc["results"][0]["psnr_per_image"]) == 2
    assert doc["all_targets_met"] == all(t["met"] for t in doc["targets"])
    console = Console(record=True, width=160)
    console.print(bench_table(res))
    console.print(targets_table(res))
    text = console.export_text()
    assert "PSNR (dB)" in text and "F-FPN − TV (dB)" in text and "shepp-logan" in text
    save_bench_figure(tmp_path / "b.png", res.panels, "t")
    assert (tmp_path / "b.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _top(args: list[str]):
    return CliRunner().invoke(top_app, ["ct", "bench", *args])


@pytest.mark.parametrize("args, message", [
    (["--geometries", "par20,cone5"], "unknown geometry 'cone5'"),
    (["--geometries", " , "], "--geometries is empty"),
    (["--methods", "fbp,sart"], "unknown method(s) sart"),
    (["--sets", "ellipses"], "unknown test set(s) ellipses"),
    (["--noise", "-0.1"], "--noise must be"),
    (["--batch-size", "0"], "--batch-size must be"),
    (["--filter", "box"], "unknown FBP filter"),
    (["--figure", "x.txt"], "must end in .png"),
    (["--methods", "ffpn", "--ffpn-weights", "/nonexistent/w.safetensors", "--no-figure"], "not found"),
])
def test_bad_options_give_one_line_and_exit_2(args, message, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    r = _top(args)
    assert r.exit_code == EXIT_USER_ERROR, r.output
    assert message in r.output and r.output.count("\n") == 1 and r.output.startswith("error: ")


def test_bench_config_rejects_bad_values() -> None:
    with pytest.raises(UserInputError, match="--n-test"):
        BenchConfig(n_test=0)
    with pytest.raises(UserInputError, match="--size"):
        BenchConfig(image_size=4)


def test_cli_end_to_end(env, tmp_path) -> None:
    """The command with both networks: table, target table, JSON and figure."""
    out_json, fig = tmp_path / "b.json", tmp_path / "fig" / "b.png"
    r = _top(["--geometries", "par10", "--sets", "shepp-logan", "--methods", "fbp,tv,unrolled,ffpn", "--iters", "10",
              "--size", str(SIZE), "--ffpn-weights", str(env["weights"]["ffpn"]), "--unrolled-weights",
              str(env["weights"]["unrolled"]), "--json", str(out_json), "--figure", str(fig), "--known-noise"])
    assert r.exit_code == 0, r.output
    assert "Targets of issue 15" in r.output and "[4/4] par10 shepp-logan ffpn" in r.output
    doc = json.loads(out_json.read_text())
    assert doc["config"]["known_noise"] is True and [x["method"] for x in doc["results"]] == [
        "fbp", "tv", "unrolled", "ffpn"]
    t = doc["targets"][0]
    assert t["beats_unrolled"] == (t["ffpn_minus_unrolled"] >= 0) and fig.read_bytes()[:4] == b"\x89PNG"
