"""CT training through the one trainer (run folder, exact resume, weights) and the ``fpntools ct`` commands:
outputs, progress, and the bad-input / status rows of issue 14, on a tiny geometry (and the shipped weights)."""

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
from problems.ct.geometry import CTGeometry
from problems.ct.train import TrainConfig, train, train_summary
from problems.ct.weights import load_model, save_weights, shipped_weights

G = CTGeometry(image_size=16, n_angles=8, n_detectors=23)
GEOM_ARGS = ["--size", "16", "--angles", "8", "--detectors", "23"]
SMALL_NET = FFPNConfig(channels=4, layers=2, prior_width=4, prior_levels=2, reference_tv_iters=20)
SMALL_ARGS = ["--channels", "4", "--layers", "2", "--prior-width", "4", "--prior-levels", "2",
              "--reference-tv-iters", "20"]
SMALL_SOLVE = FFPN_SOLVE.with_(max_iter=15, eval_max_iter=20)
TRAIN_ARGS = ["--n-train", "4", "--n-val", "2", "--batch-size", "2", "--device", "cpu",
              "--no-progress", *SMALL_ARGS, *GEOM_ARGS]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny trained F-FPN (1 epoch), its weights and a cache shared by the tests of this module."""
    root = tmp_path_factory.mktemp("ct_tiny")
    cache = root / "cache"
    cfg = TrainConfig(epochs=1, batch_size=2, n_train=4, n_val=2, device="cpu", run_dir=str(root / "run"),
                      progress=False)
    model, result = train(cfg, SMALL_NET, G, solve=SMALL_SOLVE, cache_dir=cache, log=None)
    w = root / "net.safetensors"
    save_weights(model, w, G, train_summary(cfg, result))
    return {"root": root, "cache": cache, "weights": w, "model": model, "result": result, "config": cfg}


def _invoke(args: list[str]):
    return CliRunner().invoke(app, args)


def test_train_uses_the_trainer_run_folder_and_weights(tiny, tmp_path) -> None:
    result, run = tiny["result"], tiny["root"] / "run"
    assert {p.name for p in run.iterdir()} >= {"config.json", "history.json", "checkpoint.pt"}
    hist = json.loads((run / "history.json").read_text())
    assert len(hist) == 1 and np.isfinite(hist[0]["val_psnr"]) and result.best_epoch == 1
    assert {"train_loss", "train_psnr", "train_steps", "lr", "val_psnr", "val_steps"} <= set(hist[0])
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["trainer"]["schedule"] == "exponential" and cfg["trainer"]["select_metric"] == "val_psnr"
    assert cfg["solve_config"] == SMALL_SOLVE.to_dict() and cfg["model"] == "ffpn"
    # a second start in the same folder is refused without --resume / --force
    with pytest.raises(UserInputError, match="already holds a checkpoint"):
        train(tiny["config"], SMALL_NET, G, solve=SMALL_SOLVE, cache_dir=tiny["cache"], log=None)
    loaded, g, meta = load_model(tiny["weights"], cache_dir=tiny["cache"])
    assert g == G and meta["kind"] == "ffpn" and len(meta["history"]) == 1
    assert loaded.solve == SMALL_SOLVE and loaded.config == SMALL_NET
    y = torch.rand(2, 8, 23) * 5
    with torch.no_grad():
        torch.testing.assert_close(loaded(y)[0], tiny["model"].eval()(y)[0])
    (tmp_path / "w.safetensors").write_bytes(tiny["weights"].read_bytes())
    with pytest.raises(CheckpointError, match="metadata"):
        load_model(tmp_path / "w.safetensors")
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "missing.safetensors")


def test_cli_train_resume_is_exact(tiny, tmp_path) -> None:
    """Two epochs in one run equal one epoch, then --resume to two (weights bit for bit), through the CLI."""
    cache = ["--cache-dir", str(tiny["cache"])]
    full, part = tmp_path / "full.safetensors", tmp_path / "part.safetensors"
    r = _invoke(["train", "--out", str(full), "--epochs", "2", *TRAIN_ARGS, *cache])
    assert r.exit_code == 0, r.output
    assert "wrote" in r.stdout and "run folder" in r.stdout and (tmp_path / "full_run" / "checkpoint.pt").is_file()
    r = _invoke(["train", "--out", str(part), "--epochs", "1", *TRAIN_ARGS, *cache])
    assert r.exit_code == 0, r.output
    first = json.loads(part.with_suffix(".json").read_text())["history"]
    r = _invoke(["train", "--out", str(part), "--epochs", "2", *TRAIN_ARGS, *cache])
    assert r.exit_code == EXIT_USER_ERROR or isinstance(r.exception, UserInputError)
    assert "--resume" in str(r.exception)
    r = _invoke(["train", "--out", str(part), "--epochs", "2", "--resume", *TRAIN_ARGS, *cache])
    assert r.exit_code == 0, r.output
    assert "resuming" in r.stderr
    a, b = load_file(str(full)), load_file(str(part))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ha = json.loads(full.with_suffix(".json").read_text())["history"]
    hb = json.loads(part.with_suffix(".json").read_text())["history"]
    assert [h["val_psnr"] for h in ha] == [h["val_psnr"] for h in hb]
    assert hb[0] == first[0]  # epoch 1 was restored from the checkpoint (its wall time too), not run again


def test_cli_simulate_reconstruct_bench(tiny, tmp_path) -> None:
    cache = ["--cache-dir", str(tiny["cache"])]
    sino, truth, rec = tmp_path / "y.npy", tmp_path / "x.npy", tmp_path / "r.npy"
    r = _invoke(["simulate", "--out", str(sino), "--truth-out", str(truth), "-n", "2", *GEOM_ARGS, *cache])
    assert r.exit_code == 0, r.output
    assert np.load(sino).shape == (2, 8, 23) and np.load(truth).shape == (2, 16, 16)
    for method in ("fbp", "tv"):
        r = _invoke(["reconstruct", str(sino), "--method", method, "--out", str(rec), "--truth", str(truth),
                     "--iters", "100", "--png", str(tmp_path / "r.png"), *GEOM_ARGS, *cache])
        assert r.exit_code == 0, r.output
        assert "PSNR" in r.stdout and np.load(rec).shape == (2, 16, 16) and (tmp_path / "r.png").is_file()
        assert "output usable" in r.stdout
    r = _invoke(["reconstruct", str(sino), "--method", "ffpn", "--weights", str(tiny["weights"]), "--out", str(rec),
                 *GEOM_ARGS, *cache])
    assert r.exit_code == 0, r.output
    assert "converged to tolerance" in r.stdout and "output usable" in r.stdout and np.isfinite(np.load(rec)).all()
    out = tmp_path / "bench.json"
    r = _invoke(["bench", "--methods", "fbp,tv,ffpn", "--n-test", "2", "--iters", "100",
                 "--ffpn-weights", str(tiny["weights"]), "--json", str(out), "--figure", str(tmp_path / "f.png"),
                 *GEOM_ARGS, *cache])
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text())["results"]
    assert set(res) == {"fbp", "tv", "ffpn"} and all(np.isfinite(v["psnr"]) for v in res.values())
    assert res["ffpn"]["status"] in ("CONVERGED", "MAX_ITER") and res["tv"]["steps"] <= 100
    assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # progress: one line per method on stderr, before and after it runs
    assert "[1/3] fbp ..." in r.stderr and "[3/3] ffpn: PSNR" in r.stderr and "[1/3]" not in r.stdout
    r = _invoke(["reconstruct", str(sino), "--method", "fbp", "--out", str(tmp_path / "only.png"), *GEOM_ARGS, *cache])
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
    r = _invoke(["bench", "--methods", "fbp,magic", *GEOM_ARGS])
    assert r.exit_code != 0 and "unknown methods" in str(r.exception)
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
        r = _top(["train", "--out", str(tmp_path / "adir.npy"), *GEOM_ARGS])
        assert r.exit_code == EXIT_USER_ERROR and "must end in .safetensors" in r.output
        (tmp_path / "fig.png").mkdir()
        r = _top(["bench", "--figure", str(tmp_path / "fig.png"), "--n-test", "1", *GEOM_ARGS])
        assert r.exit_code == EXIT_USER_ERROR and "--figure" in r.output and "is a directory" in r.output
    finally:
        ro.chmod(0o700)


def test_scaled_sinograms_are_refused_or_not_usable(tmp_path) -> None:
    """A sinogram scaled by 1e4 / 1e20: exit 2 naming the out-of-range fraction (nothing written) for every
    method; past the range check, the library still never returns a NaN image as usable."""
    from problems.ct.phantoms import random_ellipses, simulate
    from problems.ct.projector import ct_operator
    from problems.ct.reconstruct import reconstruct

    g = CTGeometry()
    op = ct_operator(g)
    y = simulate(torch.from_numpy(random_ellipses(1, 128, seed=1)), g, seed=0, operator=op)[0]
    for scale in (1e4, 1e20):
        path = tmp_path / f"y{scale:g}.npy"
        np.save(path, (y * scale).numpy())
        for method in ("fbp", "unrolled"):
            out = tmp_path / f"r_{method}.npy"
            r = _top(["reconstruct", str(path), "--method", method, "--out", str(out)])
            assert r.exit_code == EXIT_USER_ERROR, r.output
            assert "exceed the largest line integral" in r.output and "rescale" in r.output and not out.exists()
    rec = reconstruct("unrolled", (y * 1e20)[None], g, op)
    verdict = rec.verdict()
    assert not verdict.usable and "NaN or infinite" in verdict.problems[0] and torch.isfinite(rec.images).all()
    rec = reconstruct("ffpn", (y * 1e4)[None], g, op)
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
    cache = ["--cache-dir", str(tiny["cache"])]
    sino = tmp_path / "y.npy"
    assert _invoke(["simulate", "--out", str(sino), "-n", "2", *GEOM_ARGS, *cache]).exit_code == 0
    meta = json.loads(tiny["weights"].with_suffix(".json").read_text())
    budget = tmp_path / "budget.safetensors"
    budget.write_bytes(tiny["weights"].read_bytes())
    meta["solve_config"] = {**meta["solve_config"], "eval_max_iter": 1, "eval_tol": 1e-12}
    budget.with_suffix(".json").write_text(json.dumps(meta))
    out = tmp_path / "r.npy"
    r = _top(["reconstruct", str(sino), "--method", "ffpn", "--weights", str(budget), "--out", str(out), *GEOM_ARGS,
              *cache])
    assert r.exit_code == 0 and "warning: the ffpn solve stopped at its budget" in r.output and out.is_file()
    nan = tmp_path / "nan.safetensors"
    tensors = load_file(str(tiny["weights"]))
    key = next(k for k in tensors if k.endswith("beta_logit"))
    tensors[key] = torch.full_like(tensors[key], float("nan"))
    from safetensors.torch import save_file

    save_file(tensors, str(nan))
    nan.with_suffix(".json").write_text(tiny["weights"].with_suffix(".json").read_text())
    out2 = tmp_path / "r2.npy"
    r = _top(["reconstruct", str(sino), "--method", "ffpn", "--weights", str(nan), "--out", str(out2), *GEOM_ARGS,
              *cache])
    assert r.exit_code == EXIT_NOT_USABLE and "NaN or infinite" in r.output and "nothing written" in r.output
    assert not out2.exists()


def test_weights_metadata_errors(tiny, tmp_path) -> None:
    meta = json.loads(tiny["weights"].with_suffix(".json").read_text())
    cases = {
        "channels": ({**meta, "model_config": {**meta["model_config"], "channels": 10**9}}, "channels must lie in"),
        "kind": ({**meta, "kind": "transformer"}, "unknown model kind"),
        "mismatch": ({**meta, "kind": "unrolled"}, "declares a unrolled model but its solve is of the ffpn kind"),
        "unknown key": ({**meta, "model_config": {**meta["model_config"], "depth": 3}}, "unknown F-FPN"),
    }
    for tag, (doc, message) in cases.items():
        w = tmp_path / f"{tag.replace(' ', '_')}.safetensors"
        w.write_bytes(tiny["weights"].read_bytes())
        w.with_suffix(".json").write_text(json.dumps(doc))
        with pytest.raises(CheckpointError, match=message):
            load_model(w, cache_dir=tiny["cache"])


def test_shipped_weights_reconstruct_default_geometry(tmp_path) -> None:
    from fpntools.metrics import psnr
    from problems.ct.phantoms import random_ellipses, simulate
    from problems.ct.projector import ct_operator

    g = CTGeometry()
    op = ct_operator(g)
    x = torch.from_numpy(random_ellipses(1, 128, seed=123))
    y = simulate(x, g, seed=5, operator=op)
    for kind in ("ffpn", "unrolled"):
        model, wg, meta = load_model(shipped_weights(kind), op=op, kind=kind)
        assert wg == g and meta["kind"] == kind and meta["history"] and model.kind == kind
        with torch.no_grad():
            u, info = model(y)
            ref = model.T.reference_image(y)
        # on a phantom it never saw, the learned map improves on the classical reconstruction it starts from
        assert float(psnr(u, x)) > max(33.0, float(psnr(ref, x)) + 0.5), (kind, float(psnr(u, x)), float(psnr(ref, x)))
        assert info.status.name == ("CONVERGED" if kind == "ffpn" else "MAX_ITER") and int(info.steps.max()) <= 100
    assert load_model(shipped_weights("unrolled"), op=op)[0].solve.max_iter == 10


def test_cli_tune_tv_prints_the_validation_table(tmp_path) -> None:
    r = _invoke(["tune-tv", "--n-val", "2", "--iters", "30", *GEOM_ARGS, "--cache-dir", str(tmp_path / "cache")])
    assert r.exit_code == 0, r.output
    rows = [line for line in r.output.splitlines() if line.startswith("lam ")]
    assert len(rows) >= 6 and sum("<- best" in line for line in rows) == 1
    best = float(r.output.split("best lam = ")[1].split()[0])
    psnrs = {float(line.split()[1].rstrip(":")): float(line.split("PSNR ")[1].split()[0]) for line in rows}
    assert max(psnrs, key=psnrs.get) == pytest.approx(best, rel=1e-3)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_train_device_cuda_without_cuda_is_one_line(tmp_path) -> None:
    r = _top(["train", "--device", "cuda", "--out", str(tmp_path / "w.safetensors"), *GEOM_ARGS])
    assert r.exit_code == EXIT_USER_ERROR and "CUDA is not available" in r.output and r.output.count("\n") == 1
    assert not (tmp_path / "w.safetensors").exists()
