"""CT training loop (checkpoints, resume, weights) and the ``fpntools ct`` commands, on a tiny geometry."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fpntools.errors import UserInputError
from fpntools.training.checkpoint import CheckpointError
from problems.ct.cli import app
from problems.ct.ffpn import FFPNConfig
from problems.ct.geometry import CTGeometry
from problems.ct.train import TrainConfig, load_model, save_weights, train

G = CTGeometry(image_size=16, n_angles=8, n_detectors=23)
GEOM_ARGS = ["--size", "16", "--angles", "8", "--detectors", "23"]
SMALL_NET = FFPNConfig(channels=4, layers=2, max_iter=15, eval_max_iter=20, tol=1e-3, unrolled_steps=2)


def test_train_checkpoint_resume_and_weights(tmp_path) -> None:
    cache = tmp_path / "cache"
    ckpt = tmp_path / "run.pt"
    cfg = TrainConfig(epochs=1, batch_size=4, n_train=4, n_val=2, checkpoint=str(ckpt))
    logs: list[str] = []
    model, hist = train(cfg, SMALL_NET, G, cache_dir=cache, progress=False, log=logs.append)
    assert ckpt.is_file() and len(hist) == 1 and np.isfinite(hist[0]["val_psnr"])
    cfg2 = TrainConfig(epochs=2, batch_size=4, n_train=4, n_val=2, checkpoint=str(ckpt))
    model2, hist2 = train(cfg2, SMALL_NET, G, cache_dir=cache, progress=False, log=logs.append)
    assert any("resumed" in line for line in logs)
    assert [h["epoch"] for h in hist2] == [1, 2] and hist2[0] == hist[0]
    with pytest.raises(ValueError, match="another model configuration"):
        train(cfg2, FFPNConfig(channels=5, layers=2), G, cache_dir=cache, progress=False, log=logs.append)
    w = tmp_path / "net.safetensors"
    save_weights(model2, w, "ffpn", G, {"history": hist2})
    loaded, g, meta = load_model(w, cache_dir=cache)
    assert g == G and meta["kind"] == "ffpn" and len(meta["history"]) == 2
    y = torch.rand(2, 8, 23) * 5
    with torch.no_grad():
        torch.testing.assert_close(loaded(y)[0], model2.eval()(y)[0])
    w.with_suffix(".json").unlink()
    with pytest.raises(CheckpointError, match="metadata"):
        load_model(w)
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "missing.safetensors")


def test_cli_simulate_reconstruct_bench(tmp_path) -> None:
    runner = CliRunner()
    cache = ["--cache-dir", str(tmp_path / "cache")]
    sino, truth, rec = tmp_path / "y.npy", tmp_path / "x.npy", tmp_path / "r.npy"
    r = runner.invoke(app, ["simulate", "--out", str(sino), "--truth-out", str(truth), "-n", "2", *GEOM_ARGS, *cache])
    assert r.exit_code == 0, r.output
    assert np.load(sino).shape == (2, 8, 23) and np.load(truth).shape == (2, 16, 16)
    for method in ("fbp", "tv"):
        r = runner.invoke(app, ["reconstruct", str(sino), "--method", method, "--out", str(rec), "--truth", str(truth),
                                "--iters", "100", "--png", str(tmp_path / "r.png"), *GEOM_ARGS, *cache])
        assert r.exit_code == 0, r.output
        assert "PSNR" in r.output and np.load(rec).shape == (2, 16, 16) and (tmp_path / "r.png").is_file()
    # a trained network through the CLI
    w = tmp_path / "net.safetensors"
    r = runner.invoke(app, ["train", "--out", str(w), "--epochs", "1", "--n-train", "4", "--n-val", "2",
                            "--batch-size", "4", "--channels", "4", "--layers", "2", *GEOM_ARGS, *cache])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["reconstruct", str(sino), "--method", "ffpn", "--weights", str(w), "--out", str(rec),
                            *GEOM_ARGS, *cache])
    assert r.exit_code == 0, r.output
    assert "fixed-point steps" in r.output
    out = tmp_path / "bench.json"
    r = runner.invoke(app, ["bench", "--methods", "fbp,tv,ffpn", "--n-test", "2", "--iters", "100",
                            "--ffpn-weights", str(w), "--json", str(out), "--figure", str(tmp_path / "fig.png"),
                            *GEOM_ARGS, *cache])
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text())["results"]
    assert set(res) == {"fbp", "tv", "ffpn"} and all(np.isfinite(v["psnr"]) for v in res.values())
    assert (tmp_path / "fig.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # an output path ending in .png gives an image, not an array
    r = runner.invoke(app, ["reconstruct", str(sino), "--method", "fbp", "--out", str(tmp_path / "only.png"),
                            *GEOM_ARGS, *cache])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "only.png").read_bytes()[:4] == b"\x89PNG" and not (tmp_path / "only.png.npy").exists()


def test_cli_errors(tmp_path) -> None:
    runner = CliRunner()
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((23, 8), np.float32))
    r = runner.invoke(app, ["reconstruct", str(bad), "--method", "fbp", "--out", str(tmp_path / "o.npy"), *GEOM_ARGS])
    assert r.exit_code != 0 and "expected (8, 23)" in str(r.exception)
    assert not (tmp_path / "o.npy").exists()  # no partial output
    r = runner.invoke(app, ["reconstruct", str(tmp_path / "none.npy"), "--out", str(tmp_path / "o.npy")])
    assert r.exit_code != 0 and "not found" in str(r.exception)
    r = runner.invoke(app, ["bench", "--methods", "fbp,magic", *GEOM_ARGS])
    assert r.exit_code != 0 and "unknown methods" in str(r.exception)
    bad_inputs = {
        "nan": (np.where(np.arange(8 * 23).reshape(8, 23) == 5, np.nan, 0.0), "1 NaN or infinite"),
        "inf": (np.full((2, 8, 23), np.inf), "368 NaN or infinite"),
        "empty": (np.zeros((0, 8, 23), np.float32), "empty batch"),
        "complex": (np.zeros((8, 23), np.complex64), "dtype complex64"),
        "text": (np.full((8, 23), "a"), "dtype <U1"),
        "bool": (np.zeros((8, 23), bool), "dtype bool"),
    }
    for tag, (arr, message) in bad_inputs.items():
        path, out = tmp_path / f"{tag}.npy", tmp_path / f"{tag}_out.npy"
        np.save(path, arr)
        r = runner.invoke(app, ["reconstruct", str(path), "--method", "fbp", "--out", str(out), *GEOM_ARGS])
        assert r.exit_code != 0 and isinstance(r.exception, UserInputError), (tag, r.exception)
        assert message in str(r.exception), (tag, str(r.exception))
        assert not out.exists()
    np.save(tmp_path / "ints.npy", np.zeros((8, 23), np.int16))  # integer sinograms are real numbers: accepted
    r = runner.invoke(app, ["reconstruct", str(tmp_path / "ints.npy"), "--method", "fbp",
                            "--out", str(tmp_path / "ints_out.npy"), *GEOM_ARGS])
    assert r.exit_code == 0, r.output
    good = tmp_path / "good.npy"
    np.save(good, np.zeros((8, 23), np.float32))
    r = runner.invoke(app, ["reconstruct", str(good), "--method", "ffpn", "--weights", str(tmp_path / "no.safetensors"),
                            "--out", str(tmp_path / "o.npy"), *GEOM_ARGS])
    assert r.exit_code != 0 and isinstance(r.exception, UserInputError) and "not found" in str(r.exception)


def test_shipped_weights_reconstruct_default_geometry(tmp_path) -> None:
    from fpntools.metrics import psnr
    from problems.ct.phantoms import random_ellipses, simulate
    from problems.ct.projector import ct_operator
    from problems.ct.train import shipped_weights

    g = CTGeometry()
    op = ct_operator(g, cache_dir=tmp_path / "cache")
    for kind in ("ffpn", "unrolled"):
        model, wg, meta = load_model(shipped_weights(kind), op=op)  # type: ignore[arg-type]
        assert wg == g and meta["kind"] == kind and meta["history"]
    x = torch.from_numpy(random_ellipses(1, 128, seed=123))
    y = simulate(x, g, seed=5, operator=op)
    for kind in ("ffpn", "unrolled"):
        model, _, _ = load_model(shipped_weights(kind), op=op)  # type: ignore[arg-type]
        with torch.no_grad():
            u, info = model(y)
            ref = model.T.reference_image(y)
        # on a phantom it never saw, the learned map improves on the classical reconstruction it starts from
        assert float(psnr(u, x)) > max(33.0, float(psnr(ref, x)) + 0.5), (kind, float(psnr(u, x)), float(psnr(ref, x)))
        assert info is None or info.status.name == "CONVERGED"


def test_cli_tune_tv_prints_the_validation_table(tmp_path) -> None:
    r = CliRunner().invoke(app, ["tune-tv", "--n-val", "2", "--iters", "30", *GEOM_ARGS,
                                 "--cache-dir", str(tmp_path / "cache")])
    assert r.exit_code == 0, r.output
    rows = [line for line in r.output.splitlines() if line.startswith("lam ")]
    assert len(rows) >= 6 and sum("<- best" in line for line in rows) == 1
    best = float(r.output.split("best lam = ")[1].split()[0])
    psnrs = {float(line.split()[1].rstrip(":")): float(line.split("PSNR ")[1].split()[0]) for line in rows}
    assert max(psnrs, key=psnrs.get) == pytest.approx(best, rel=1e-3)
