"""CT training through the one trainer (run folder, exact resume, weights; a tiny end-to-end run on mixed data over
many geometries) and the ``fpntools ct`` commands: outputs, progress, bad input and solver status, on tiny
geometries (and the shipped weights at three geometries)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from fpntools.cli import app as top_app
from fpntools.cli_support import EXIT_NOT_USABLE, EXIT_USER_ERROR
from fpntools.errors import UserInputError
from fpntools.training.checkpoint import CheckpointError
from problems.ct.cli import app
from problems.ct.ffpn import FFPN_SOLVE, FFPNConfig
from problems.ct.acquisition import acquisition, estimate_noise
from problems.ct.geometry import CTGeometry
from problems.ct.train import TrainConfig, train, train_summary
from problems.ct.weights import load_model, save_weights, shipped_weights

G = CTGeometry(image_size=16, n_angles=8, n_detectors=23)
GEOM_ARGS = ["--size", "16", "--angles", "8", "--detectors", "23"]
SMALL_NET = FFPNConfig(channels=4, layers=2, prior_width=4, prior_levels=2, reference_tv_iters=20)
SMALL_ARGS = ["--channels", "4", "--layers", "2", "--prior-width", "4", "--prior-levels", "2",
              "--reference-tv-iters", "20"]
SMALL_SOLVE = FFPN_SOLVE.with_(max_iter=15, eval_max_iter=20)
TRAIN_ARGS = ["--epoch-size", "4", "--n-val", "1", "--batch-size", "2", "--device", "cpu", "--size", "16",
              "--no-progress", *SMALL_ARGS]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny F-FPN trained one epoch on the mixed data (natural crops when available, phantoms, ellipses) over
    all training geometries of 16 x 16 images, its weights and a projection-matrix cache shared by the module."""
    root = tmp_path_factory.mktemp("ct_tiny")
    cache = root / "cache"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FPNTOOLS_CACHE", str(cache))
        cfg = TrainConfig(epochs=1, batch_size=2, epoch_size=4, n_val=1, image_size=16, device="cpu",
                          run_dir=str(root / "run"), progress=False)
        model, result = train(cfg, SMALL_NET, solve=SMALL_SOLVE, log=None)
    w = root / "net.safetensors"
    save_weights(model, w, train_summary(cfg, result))
    return {"root": root, "cache": cache / "ct", "weights": w, "model": model, "result": result, "config": cfg}


@pytest.fixture(autouse=True)
def _shared_cache(tiny, monkeypatch):
    monkeypatch.setenv("FPNTOOLS_CACHE", str(tiny["cache"].parent))


def _invoke(args: list[str]):
    return CliRunner().invoke(app, args)


def test_train_uses_the_trainer_run_folder_and_weights(tiny, tmp_path) -> None:
    result, run = tiny["result"], tiny["root"] / "run"
    assert {p.name for p in run.iterdir()} >= {"config.json", "history.json", "checkpoint.pt"}
    hist = json.loads((run / "history.json").read_text())
    assert len(hist) == 1 and np.isfinite(hist[0]["val_psnr"]) and result.best_epoch == 1
    assert {"train_loss", "train_psnr", "train_steps", "lr", "val_psnr", "val_steps", "val_psnr_ct-like",
            "val_psnr_ellipses", "val_psnr_shepp-logan-variants"} <= set(hist[0])
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["trainer"]["schedule"] == "cosine" and cfg["trainer"]["select_metric"] == "val_psnr"
    assert cfg["solve_config"] == SMALL_SOLVE.to_dict() and cfg["model"] == "ffpn"
    assert len(cfg["geometries"]) == 10 and {g["beam"] for g in cfg["geometries"]} == {"parallel", "fan"}
    # a second start in the same folder is refused without --resume / --force
    with pytest.raises(UserInputError, match="already holds a checkpoint"):
        train(tiny["config"], SMALL_NET, solve=SMALL_SOLVE, log=None)
    loaded, meta = load_model(tiny["weights"])
    assert meta["kind"] == "ffpn" and len(meta["history"]) == 1 and len(meta["geometries"]) == 10
    assert loaded.solve == SMALL_SOLVE and loaded.config == SMALL_NET
    y = torch.rand(2, 8, 23) * 5
    acq = acquisition(G)
    with torch.no_grad():
        torch.testing.assert_close(loaded(y, acq)[0], tiny["model"].eval()(y, acq)[0])
    (tmp_path / "w.safetensors").write_bytes(tiny["weights"].read_bytes())
    with pytest.raises(CheckpointError, match="metadata"):
        load_model(tmp_path / "w.safetensors")
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "missing.safetensors")


def test_training_pool_is_the_same_for_any_number_of_workers() -> None:
    from problems.ct.train import make_image_pool

    a = make_image_pool(6, (0.0, 0.5, 0.5), seed=3, chunk=2, size=16)
    b = make_image_pool(6, (0.0, 0.5, 0.5), seed=3, chunk=2, size=16, workers=2)
    assert a.shape == (6, 16, 16) and torch.equal(a, b) and float(a.min()) >= 0 and float(a.max()) <= 1


def test_cli_train_resume_is_exact(tiny, tmp_path) -> None:
    """Two epochs in one run equal a run stopped after one epoch and a half, then resumed (weights bit for bit),
    through the CLI."""
    full, part = tmp_path / "full.safetensors", tmp_path / "part.safetensors"
    r = _invoke(["train", "--out", str(full), "--epochs", "2", *TRAIN_ARGS])
    assert r.exit_code == 0, r.output
    assert "wrote" in r.stdout and "run folder" in r.stdout and (tmp_path / "full_run" / "checkpoint.pt").is_file()
    r = _invoke(["train", "--out", str(part), "--epochs", "2", "--max-steps", "3", *TRAIN_ARGS])
    assert r.exit_code == 0 and "stopped early" in r.stdout, r.output
    first = json.loads(part.with_suffix(".json").read_text())["history"]
    assert len(first) == 1
    r = _invoke(["train", "--out", str(part), "--epochs", "2", *TRAIN_ARGS])
    assert r.exit_code == EXIT_USER_ERROR or isinstance(r.exception, UserInputError)
    assert "--resume" in str(r.exception)
    r = _invoke(["train", "--out", str(part), "--epochs", "2", "--resume", *TRAIN_ARGS])
    assert r.exit_code == 0, r.output
    assert "resuming" in r.stderr
    a, b = load_file(str(full)), load_file(str(part))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ha = json.loads(full.with_suffix(".json").read_text())["history"]
    hb = json.loads(part.with_suffix(".json").read_text())["history"]
    assert [h["val_psnr"] for h in ha] == [h["val_psnr"] for h in hb]
    assert hb[0] == first[0]  # epoch 1 was restored from the checkpoint (its wall time too), not run again


def test_cli_simulate_reconstruct(tiny, tmp_path) -> None:
    sino, truth, rec = tmp_path / "y.npy", tmp_path / "x.npy", tmp_path / "r.npy"
    r = _invoke(["simulate", "--out", str(sino), "--truth-out", str(truth), "-n", "2", *GEOM_ARGS])
    assert r.exit_code == 0, r.output
    assert np.load(sino).shape == (2, 8, 23) and np.load(truth).shape == (2, 16, 16)
    for method in ("fbp", "tv"):
        r = _invoke(["reconstruct", str(sino), "--method", method, "--out", str(rec), "--truth", str(truth),
                     "--iters", "100", "--png", str(tmp_path / "r.png"), *GEOM_ARGS])
        assert r.exit_code == 0, r.output
        assert "PSNR" in r.stdout and np.load(rec).shape == (2, 16, 16) and (tmp_path / "r.png").is_file()
        assert "output usable" in r.stdout
    assert "estimated relative noise level" in r.stderr and "tuned lam" in r.stdout
    r = _invoke(["reconstruct", str(sino), "--method", "tv", "--noise", "0.02", "--lam", "0.3", "--iters", "50",
                 "--out", str(rec), *GEOM_ARGS])
    assert r.exit_code == 0 and "lam 0.3" in r.stdout and "estimated" not in r.stderr, r.output
    r = _invoke(["reconstruct", str(sino), "--method", "ffpn", "--weights", str(tiny["weights"]), "--out", str(rec),
                 *GEOM_ARGS])
    assert r.exit_code == 0, r.output
    assert "converged to tolerance" in r.stdout and "output usable" in r.stdout and np.isfinite(np.load(rec)).all()
    # the same weights at a fan-beam geometry
    fan = ["--size", "16", "--angles", "12", "--detectors", "25", "--beam", "fan", "--source-origin", "32",
           "--origin-detector", "32"]
    r = _invoke(["simulate", "--out", str(tmp_path / "f.npy"), "-n", "2", *fan])
    assert r.exit_code == 0, r.output
    for method in ("fbp", "ffpn"):
        r = _invoke(["reconstruct", str(tmp_path / "f.npy"), "--method", method, "--weights", str(tiny["weights"]),
                     "--out", str(rec), *fan])
        assert r.exit_code == 0 and np.load(rec).shape == (2, 16, 16), r.output
    r = _invoke(["reconstruct", str(sino), "--method", "fbp", "--out", str(tmp_path / "only.png"), *GEOM_ARGS])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "only.png").read_bytes()[:4] == b"\x89PNG" and not (tmp_path / "only.png.npy").exists()


def test_cli_input_errors(tmp_path) -> None:
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((23, 8), np.float32))
    r = _invoke(["reconstruct", str(bad), "--method", "fbp", "--out", str(tmp_path / "o.npy"), *GEOM_ARGS])
    assert r.exit_code != 0 and "expected (8, 23)" in str(r.exception)
    assert not (tmp_path / "o.npy").exists()  # no partial output
    r = _invoke(["reconstruct", str(tmp_path / "none.npy"), "--out", str(tmp_path / "o.npy")])
    assert r.exit_code != 0 and "not found" in str(r.exception)
    bad_inputs = {
        "nan": (np.where(np.arange(8 * 23).reshape(8, 23) == 5, np.nan, 0.0), "1 NaN or infinite"),
        "inf": (np.full((2, 8, 23), np.inf), "368 NaN or infinite"),
        "empty": (np.zeros((0, 8, 23), np.float32), "empty batch"),
        "complex": (np.zeros((8, 23), np.complex64), "dtype complex64"),
        "text": (np.full((8, 23), "a"), "dtype <U1"),
        "bool": (np.zeros((8, 23), bool), "dtype bool"),
        "float32 overflow": (np.full((8, 23), 1e300), "beyond the float32 range"),
    }
    for tag, (arr, message) in bad_inputs.items():
        path, out = tmp_path / f"{tag}.npy", tmp_path / f"{tag}_out.npy"
        np.save(path, arr)
        r = _invoke(["reconstruct", str(path), "--method", "fbp", "--out", str(out), *GEOM_ARGS])
        assert r.exit_code != 0 and isinstance(r.exception, UserInputError), (tag, r.exception)
        assert message in str(r.exception), (tag, str(r.exception))
        assert not out.exists()
    np.save(tmp_path / "ints.npy", np.zeros((8, 23), np.int16))  # integer sinograms are real numbers: accepted
    r = _invoke(["reconstruct", str(tmp_path / "ints.npy"), "--method", "fbp", "--out", str(tmp_path / "i.npy"),
                 *GEOM_ARGS])
    assert r.exit_code == 0, r.output
    good = tmp_path / "good.npy"
    np.save(good, np.zeros((8, 23), np.float32))
    r = _invoke(["reconstruct", str(good), "--method", "ffpn", "--weights", str(tmp_path / "no.safetensors"),
                 "--out", str(tmp_path / "o.npy"), *GEOM_ARGS])
    assert r.exit_code != 0 and isinstance(r.exception, UserInputError) and "not found" in str(r.exception)
    for noise in ("-0.1", "nan", "2"):
        r = _top(["reconstruct", str(good), "--method", "tv", "--noise", noise, "--out", str(tmp_path / "o.npy"),
                  *GEOM_ARGS])
        assert r.exit_code == EXIT_USER_ERROR and "--noise must be" in r.output and r.output.count("\n") == 1


def _top(args: list[str]):
    """The top-level CLI (one-line ``error: ...`` and its exit code)."""
    return CliRunner().invoke(top_app, ["ct", *args])


def test_out_path_errors_come_before_computing(tmp_path) -> None:
    """`--out` a directory / in a missing or read-only folder: exit 2 and one line, before any work (the
    sinogram file does not even exist, so computing would have failed differently)."""
    missing = tmp_path / "no_such_sinogram.npy"
    (tmp_path / "adir.npy").mkdir()
    cases = {str(tmp_path / "adir.npy"): "is a directory", str(tmp_path / "nofolder" / "r.npy"): "does not exist",
             str(tmp_path / "r.txt"): "must end in .npy or .png"}
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    if not os.access(ro, os.W_OK):  # root ignores permissions
        cases[str(ro / "r.npy")] = "not writable"
    try:
        for out, message in cases.items():
            r = _top(["reconstruct", str(missing), "--method", "fbp", "--out", out, *GEOM_ARGS])
            assert r.exit_code == EXIT_USER_ERROR, (out, r.output)
            assert message in r.output and r.output.count("\n") == 1 and "Traceback" not in r.output
        r = _top(["train", "--out", str(tmp_path / "adir.npy")])
        assert r.exit_code == EXIT_USER_ERROR and "must end in .safetensors" in r.output
    finally:
        ro.chmod(0o700)


def test_scaled_sinograms_are_refused_or_not_usable(tmp_path) -> None:
    """A sinogram scaled by 1e4 / 1e20: exit 2 naming the out-of-range fraction (nothing written) for every
    method; past the range check, the library still never returns a NaN image as usable."""
    from problems.ct.phantoms import random_ellipses, simulate
    from problems.ct.reconstruct import reconstruct

    g = CTGeometry()
    acq = acquisition(g)
    y = simulate(torch.from_numpy(random_ellipses(1, 128, seed=1)), g, seed=0, operator=acq.op)[0]
    for scale in (1e4, 1e20):
        path = tmp_path / f"y{scale:g}.npy"
        np.save(path, (y * scale).numpy())
        for method in ("fbp", "unrolled"):
            out = tmp_path / f"r_{method}.npy"
            r = _top(["reconstruct", str(path), "--method", method, "--out", str(out)])
            assert r.exit_code == EXIT_USER_ERROR, r.output
            assert "exceed the largest line integral" in r.output and "rescale" in r.output and not out.exists()
    rec = reconstruct("unrolled", (y * 1e20)[None], acq, noise=0.015)
    verdict = rec.verdict()
    assert not verdict.usable and "NaN or infinite" in verdict.problems[0] and torch.isfinite(rec.images).all()
    rec = reconstruct("ffpn", (y * 1e4)[None], acq, noise=0.015)
    assert any("upper bound 1" in w for w in rec.verdict().warnings)  # all white: a warning with the fraction
    slight = tmp_path / "slight.npy"
    spiky = y.clone()
    spiky[0, 80:100] += 1e4  # 20 of 5490 entries (0.36%) beyond the range: a warning with the fraction, exit 0
    np.save(slight, spiky.numpy())
    r = _top(["reconstruct", str(slight), "--method", "fbp", "--out", str(tmp_path / "s.npy")])
    assert r.exit_code == 0 and "warning: sinogram" in r.output and "0.364% of its entries exceed" in r.output


def test_weights_of_the_other_kind_are_refused(tmp_path) -> None:
    np.save(tmp_path / "y.npy", np.zeros((30, 183), np.float32))
    for method, other in (("ffpn", "unrolled"), ("unrolled", "ffpn")):
        r = _top(["reconstruct", str(tmp_path / "y.npy"), "--method", method, "--weights",
                  str(shipped_weights(other)), "--out", str(tmp_path / "o.npy")])
        assert r.exit_code == EXIT_USER_ERROR and f"use --method {other}" in r.output, r.output
        assert r.output.count("\n") == 1 and not (tmp_path / "o.npy").exists()


def test_solver_status_decides_the_exit(tiny, tmp_path) -> None:
    """Not converged within the budget: a warning, exit 0, output written; a non-finite solve: exit 3, nothing
    written."""
    sino = tmp_path / "y.npy"
    assert _invoke(["simulate", "--out", str(sino), "-n", "2", *GEOM_ARGS]).exit_code == 0
    meta = json.loads(tiny["weights"].with_suffix(".json").read_text())
    budget = tmp_path / "budget.safetensors"
    budget.write_bytes(tiny["weights"].read_bytes())
    meta["solve_config"] = {**meta["solve_config"], "eval_max_iter": 1, "eval_tol": 1e-12}
    budget.with_suffix(".json").write_text(json.dumps(meta))
    out = tmp_path / "r.npy"
    r = _top(["reconstruct", str(sino), "--method", "ffpn", "--weights", str(budget), "--out", str(out), *GEOM_ARGS])
    assert r.exit_code == 0 and "warning: the ffpn solve stopped at its budget" in r.output and out.is_file()
    nan = tmp_path / "nan.safetensors"
    tensors = load_file(str(tiny["weights"]))
    key = next(k for k in tensors if k.endswith("beta_logit"))
    tensors[key] = torch.full_like(tensors[key], float("nan"))
    from safetensors.torch import save_file

    save_file(tensors, str(nan))
    nan.with_suffix(".json").write_text(tiny["weights"].with_suffix(".json").read_text())
    out2 = tmp_path / "r2.npy"
    r = _top(["reconstruct", str(sino), "--method", "ffpn", "--weights", str(nan), "--out", str(out2), *GEOM_ARGS])
    assert r.exit_code == EXIT_NOT_USABLE and "NaN or infinite" in r.output and "nothing written" in r.output
    assert not out2.exists()


def test_weights_metadata_errors(tiny, tmp_path) -> None:
    meta = json.loads(tiny["weights"].with_suffix(".json").read_text())
    cases = {
        "channels": ({**meta, "model_config": {**meta["model_config"], "channels": 10**9}}, "channels must lie in"),
        "kind": ({**meta, "kind": "transformer"}, "unknown model kind"),
        "mismatch": ({**meta, "kind": "unrolled"}, "declares a unrolled model but its solve is of the ffpn kind"),
        "unknown key": ({**meta, "model_config": {**meta["model_config"], "depth": 3}}, "unknown F-FPN"),
        "no solve": ({k: v for k, v in meta.items() if k != "solve_config"}, "missing key"),
    }
    for tag, (doc, message) in cases.items():
        w = tmp_path / f"{tag.replace(' ', '_')}.safetensors"
        w.write_bytes(tiny["weights"].read_bytes())
        w.with_suffix(".json").write_text(json.dumps(doc))
        with pytest.raises(CheckpointError, match=message):
            load_model(w)


@pytest.mark.parametrize("name", ["par30", "par60", "fan60"])
def test_shipped_weights_reconstruct_at_three_geometries(name) -> None:
    """The same shipped weights at three geometries: on held-out phantoms (a seed no training or validation set
    uses) each network improves on the classical reconstruction it starts from."""
    from fpntools.metrics import psnr
    from problems.ct.images import rich_phantoms
    from problems.ct.train import geometry_by_name, simulate_batch

    g = geometry_by_name(name)
    acq = acquisition(g)
    x = torch.from_numpy(rich_phantoms(2, 128, rng=np.random.default_rng(987_654)))
    gen = torch.Generator().manual_seed(5)
    y = simulate_batch(x, torch.randn((2, *g.sino_shape), generator=gen), torch.full((2,), 0.015), acq)
    for kind in ("ffpn", "unrolled"):
        model, meta = load_model(shipped_weights(kind), kind=kind)
        assert meta["kind"] == kind and meta["history"] and model.kind == kind
        with torch.no_grad():
            u, info = model(y, acq)
            ref = model.T.reference_image(y, acq, estimate_noise(y))
        gain = float(psnr(u, x).mean()) - float(psnr(ref, x).mean())
        assert gain > 0.5, (kind, name, gain)
        assert info.status.name == ("CONVERGED" if kind == "ffpn" else "MAX_ITER") and int(info.steps.max()) <= 100
    assert load_model(shipped_weights("unrolled"))[0].solve.max_iter == 10


def test_cli_tune_tv_prints_the_table_and_the_rule(tmp_path) -> None:
    r = _invoke(["tune-tv", "--geometries", "par8,fan12", "--noises", "0.01,0.03", "--n-val", "1", "--iters", "30",
                 "--size", "16"])
    assert r.exit_code == 0, r.output
    rows = [line for line in r.stdout.splitlines() if "best lam" in line]
    assert len(rows) == 4 and "rule: TVWeightRule(scale=" in r.stdout
    r = _top(["tune-tv", "--geometries", "cone9"])
    assert r.exit_code == EXIT_USER_ERROR and "unknown geometry 'cone9'" in r.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_train_device_cuda_without_cuda_is_one_line(tmp_path) -> None:
    r = _top(["train", "--device", "cuda", "--out", str(tmp_path / "w.safetensors")])
    assert r.exit_code == EXIT_USER_ERROR and "CUDA is not available" in r.output and r.output.count("\n") == 1
    assert not (tmp_path / "w.safetensors").exists()
