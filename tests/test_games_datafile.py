"""The user's own game data: ``games make-data`` / ``train --data`` / ``predict`` / ``evaluate --data``; file
round trips, one-line errors for bad files, predictions on the simplices."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fpntools.cli import main
from fpntools.errors import UserInputError
from problems.games.data import GameDataConfig, make_dataset
from problems.games.datafile import FileDataConfig, load_contexts, load_game_data, save_game_data
from problems.games.equilibria import nash_gap
from problems.games.train import load_trained


def _run(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["fpntools", "games", *args])
    with pytest.raises(SystemExit) as exc:
        main()
    out = capsys.readouterr()
    return (0 if exc.value.code is None else int(exc.value.code)), out.out, out.err


def _one_line_error(code: int, err: str, message: str, expected_code: int = 2) -> None:
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert code == expected_code, err
    assert len(lines) == 1 and message in lines[0], err
    assert "Traceback" not in err


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A general-sum 3x3 training file and a test file of the same family (other context seed)."""
    folder = tmp_path_factory.mktemp("gamesdata")
    for name, n, seed in (("train.npz", 64, 1), ("test.npz", 16, 2)):
        cfg = GameDataConfig(family="general", n_train=n, n_test=0, data_seed=seed)
        save_game_data(folder / name, make_dataset(cfg)[0])
    return folder


@pytest.fixture(scope="module")
def trained(files, tmp_path_factory):
    """A tiny N-FPN trained through ``train --data`` (2 epochs)."""
    run = tmp_path_factory.mktemp("gamesrun") / "run"
    mp = pytest.MonkeyPatch()
    try:
        mp.setattr(sys, "argv", ["fpntools", "games", "train", "--data", str(files / "train.npz"), "--out", str(run),
                                 "--epochs", "2", "--hidden", "8", "--no-progress", "--device", "cpu"])
        with pytest.raises(SystemExit) as exc:
            main()
        assert exc.value.code in (0, None)
    finally:
        mp.undo()
    return run


def test_make_data_round_trip(monkeypatch, capsys, tmp_path):
    out = tmp_path / "rps.npz"
    code, text, err = _run(monkeypatch, capsys, "make-data", "--family", "rps", "--n", "12", "--out", str(out))
    assert code == 0 and "wrote 12 certified games" in text, err
    with np.load(out) as z:
        assert sorted(z.files) == ["A", "B", "context", "gap", "x", "y"]
        raw = {k: z[k] for k in z.files}
    data = load_game_data(out)
    expected, _ = make_dataset(GameDataConfig(family="rps", n_train=12, n_test=0, data_seed=1))
    for key in ("d", "A", "B", "x", "y"):
        np.testing.assert_array_equal(getattr(data, key), getattr(expected, key))
    np.testing.assert_array_equal(raw["context"], expected.d)
    assert data.gap.max() < 1e-12 and np.array_equal(data.gap, nash_gap(raw["A"], raw["B"], raw["x"], raw["y"]))
    # written again and read back: the same arrays; a file without payoffs has no gap
    save_game_data(tmp_path / "again.npz", data)
    again = load_game_data(tmp_path / "again.npz")
    assert all(np.array_equal(getattr(again, k), getattr(data, k)) for k in ("d", "A", "B", "x", "y", "gap"))
    np.savez(tmp_path / "plain.npz", context=data.d, x=data.x, y=data.y)
    plain = load_game_data(tmp_path / "plain.npz")
    assert plain.A is None and plain.gap is None and not plain.has_payoffs
    # A alone is a zero-sum game: B = -A
    np.savez(tmp_path / "zs.npz", context=data.d, x=data.x, y=data.y, A=data.A)
    zs = load_game_data(tmp_path / "zs.npz")
    np.testing.assert_array_equal(zs.B, -data.A)
    assert zs.gap.max() < 1e-12


def _write(path: Path, **arrays) -> str:
    np.savez(path, **arrays)
    return str(path)


def _bad_files(tmp_path: Path) -> list[tuple[str, str]]:
    rng = np.random.default_rng(0)
    d = rng.standard_normal((10, 4))
    x = rng.dirichlet(np.ones(3), 10)
    y = rng.dirichlet(np.ones(2), 10)
    A = rng.standard_normal((10, 3, 2))
    nan_x = x.copy()
    nan_x[3, 1] = np.nan
    off = x.copy()
    off[4] *= 1.01
    neg = x.copy()
    neg[5] = [1.2, -0.2, 0.0]
    (tmp_path / "junk.npz").write_bytes(b"this is not a zip archive")
    np.save(tmp_path / "single.npy", d)
    np.savez(tmp_path / "objects.npz", context=np.array([{"a": 1}] * 10, dtype=object), x=x, y=y)
    return [
        (_write(tmp_path / "nox.npz", context=d, y=y), "missing key x"),
        (_write(tmp_path / "rows.npz", context=d, x=x[:9], y=y), "'x' has 9 rows but 'context' has 10"),
        (_write(tmp_path / "nan.npz", context=d, x=nan_x, y=y), "'x' holds a non-finite value (NaN or inf) at index (3, 1)"),
        (_write(tmp_path / "nanctx.npz", context=np.where(d > 2.0, np.inf, d) + np.r_[np.zeros(9), np.nan][:, None], x=x, y=y),
         "'context' holds a non-finite value"),
        (_write(tmp_path / "sum.npz", context=d, x=off, y=y), "'x' row 4 is not a mixed strategy"),
        (_write(tmp_path / "neg.npz", context=d, x=neg, y=y), "'x' row 5 is not a mixed strategy (smallest entry -0.2"),
        (_write(tmp_path / "shape.npz", context=d, x=x, y=y, A=A[:, :, :1]), "'A' must have shape (n, n1, n2) = (10, 3, 2)"),
        (_write(tmp_path / "bonly.npz", context=d, x=x, y=y, B=A), "'B' given without 'A'"),
        (_write(tmp_path / "extra.npz", context=d, x=x, y=y, flows=d), "unknown key flows"),
        (_write(tmp_path / "dims.npz", context=d[:, 0], x=x, y=y), "'context' must have shape (n, p), got (10,)"),
        (_write(tmp_path / "text.npz", context=d.astype(str), x=x, y=y), "'context' must hold numbers"),
        (str(tmp_path / "objects.npz"), "cannot read without pickle"),
        (str(tmp_path / "junk.npz"), "not a readable .npz archive"),
        (str(tmp_path / "single.npy"), "expected an .npz archive"),
        (str(tmp_path / "missing.npz"), "data file not found"),
    ]


def test_bad_data_files_are_one_line_errors(monkeypatch, capsys, tmp_path):
    for path, message in _bad_files(tmp_path):
        with pytest.raises(UserInputError, match=None) as exc:
            load_game_data(path)
        assert message in str(exc.value) and "\n" not in str(exc.value), (path, str(exc.value))
    # through the command line: exit 2, one line, no run folder content written (two representative files)
    for path, message in _bad_files(tmp_path)[1:3]:
        run = tmp_path / "run"
        code, _, err = _run(monkeypatch, capsys, "train", "--data", path, "--out", str(run), "--no-progress")
        _one_line_error(code, err, message)
        assert not (run / "checkpoint.pt").exists()
    # strategies within the tolerance are accepted (and renormalised); a looser --simplex-tol accepts more
    rng = np.random.default_rng(1)
    x = rng.dirichlet(np.ones(3), 8)
    x[0] *= 1 + 5e-7
    data = load_game_data(_write(tmp_path / "near.npz", context=rng.random((8, 2)), x=x, y=x))
    np.testing.assert_allclose(data.x.sum(1), 1.0, rtol=0, atol=1e-15)
    x[1] *= 1.01
    path = _write(tmp_path / "loose.npz", context=rng.random((8, 2)), x=x, y=x)
    with pytest.raises(UserInputError, match="tolerance 1e-06"):
        load_game_data(path)
    assert load_game_data(path, simplex_tol=0.02).x.shape == (8, 3)


def test_train_data_excludes_family_options(monkeypatch, capsys, tmp_path, files):
    code, _, err = _run(monkeypatch, capsys, "train", "--data", str(files / "train.npz"), "--family", "rps",
                        "--out", str(tmp_path / "r"))
    _one_line_error(code, err, "--data takes the games from the file; --family describe a built-in family")
    code, _, err = _run(monkeypatch, capsys, "train", "--data", str(files / "train.npz"), "--val-fraction", "1.5",
                        "--out", str(tmp_path / "r"))
    _one_line_error(code, err, "--val-fraction must lie in [0, 1)")


def test_predict_writes_strategies_on_the_simplices(monkeypatch, capsys, tmp_path, files, trained):
    model, cfg = load_trained(trained)
    assert isinstance(cfg, FileDataConfig) and (cfg.n, cfg.m, cfg.context_dim, cfg.n_samples, cfg.n_val) == (3, 3, 4, 64, 6)
    with np.load(files / "test.npz") as z:
        contexts = z["context"]
    np.save(tmp_path / "ctx.npy", contexts)
    code, text, err = _run(monkeypatch, capsys, "predict", "--model", str(trained), "--context-file",
                           str(tmp_path / "ctx.npy"), "--out", str(tmp_path / "z.npy"))
    assert code == 0 and "wrote 16 predicted equilibria" in text, err
    z = np.load(tmp_path / "z.npy")
    assert z.shape == (16, 6) and z.dtype == np.float64
    assert z.min() >= 0.0
    np.testing.assert_allclose(z[:, :3].sum(1), 1.0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(z[:, 3:].sum(1), 1.0, rtol=0, atol=1e-12)
    with torch.no_grad():
        np.testing.assert_allclose(z, model.predict(torch.as_tensor(contexts, dtype=torch.float32)).double().numpy(),
                                   atol=1e-6, rtol=0)
    # the same predictions as CSV, from a CSV of contexts
    np.savetxt(tmp_path / "ctx.csv", contexts, delimiter=",")
    code, _, err = _run(monkeypatch, capsys, "predict", "--model", str(trained / "weights.pt"), "--context-file",
                        str(tmp_path / "ctx.csv"), "--out", str(tmp_path / "z.csv"))
    assert code == 0, err
    table = np.loadtxt(tmp_path / "z.csv", delimiter=",", skiprows=1)
    assert (tmp_path / "z.csv").read_text().splitlines()[0] == "x1,x2,x3,y1,y2,y3"
    np.testing.assert_allclose(table, z, atol=1e-6, rtol=0)
    # evaluate on the stored validation split and on another file of the same family
    code, text, err = _run(monkeypatch, capsys, "evaluate", str(trained))
    assert code == 0 and "6 held-out samples of" in text and "gap=" in text, err
    code, text, err = _run(monkeypatch, capsys, "evaluate", str(trained), "--data", str(files / "test.npz"))
    assert code == 0 and "16 samples of" in text, err


def test_predict_bad_input_is_one_line(monkeypatch, capsys, tmp_path, trained):
    np.save(tmp_path / "wrongdim.npy", np.zeros((3, 5)))
    np.save(tmp_path / "nan.npy", np.array([[0.0, 0.1, np.nan, 0.2]]))
    (tmp_path / "ctx.json").write_text("[[0, 0, 0, 0]]")
    np.save(tmp_path / "ok.npy", np.zeros((2, 4)))
    cases = [
        (["--context-file", str(tmp_path / "wrongdim.npy")], "contexts must have shape (m, 4) (the model's context "
                                                              "dimension is 4), got (3, 5)"),
        (["--context-file", str(tmp_path / "nan.npy")], "non-finite value (NaN or inf) at index (0, 2)"),
        (["--context-file", str(tmp_path / "none.npy")], "context file not found"),
        (["--context-file", str(tmp_path / "ctx.json")], "must end in .npy, .npz, .csv or .txt"),
        (["--context-file", str(tmp_path / "ok.npy"), "--model", str(tmp_path / "nomodel")], "no such run folder"),
    ]
    for args, message in cases:
        full = ["predict", "--model", str(trained), "--out", str(tmp_path / "z.npy"), *args]
        if args[-2] == "--model":
            full = ["predict", *args, "--out", str(tmp_path / "z.npy")]
        code, _, err = _run(monkeypatch, capsys, *full)
        _one_line_error(code, err, message)
        assert not (tmp_path / "z.npy").exists()
    code, _, err = _run(monkeypatch, capsys, "predict", "--model", str(trained), "--context-file",
                        str(tmp_path / "ok.npy"), "--out", str(tmp_path / "z.txt"))
    _one_line_error(code, err, "must end in .npy or .csv")
    with pytest.raises(UserInputError, match=r"shape \(m, 4\)"):
        load_contexts(tmp_path / "wrongdim.npy", 4)
    # weights whose payoffs overflow: the solves are not usable -> warning, exit 3, nothing written
    from fpntools.training.checkpoint import load_checkpoint, save_checkpoint

    state = load_checkpoint(trained / "weights.pt")
    state["state_dict"]["game.net.4.weight"].fill_(3e38)
    save_checkpoint(tmp_path / "huge.pt", state)
    code, _, err = _run(monkeypatch, capsys, "predict", "--model", str(tmp_path / "huge.pt"), "--context-file",
                        str(tmp_path / "ok.npy"), "--out", str(tmp_path / "z.npy"))
    assert "warning:" in err and "non-finite or diverged" in err
    _one_line_error(code, err, "the predictions are not usable", expected_code=3)
    assert not (tmp_path / "z.npy").exists()


def test_data_without_payoffs_trains_and_resume_refuses_a_changed_file(monkeypatch, capsys, tmp_path, files):
    data = load_game_data(files / "train.npz")
    # contexts in other units (scaled and shifted): the models standardise them with the training contexts
    np.savez(tmp_path / "plain.npz", context=100.0 * data.d + 5.0, x=data.x, y=data.y)
    run = tmp_path / "run"
    args = ["train", "--data", str(tmp_path / "plain.npz"), "--out", str(run), "--epochs", "1", "--hidden", "8",
            "--no-progress", "--device", "cpu", "--model", "mlp"]
    code, text, err = _run(monkeypatch, capsys, *args)
    assert code == 0 and "validation: err=" in text and "gap=" not in text, err
    model, cfg = load_trained(run)
    train_split, val_split = cfg.splits()  # the seeded 90 / 10 split of the file (default --val-fraction 0.1)
    assert (len(train_split), len(val_split)) == (58, 6)
    everything = FileDataConfig.from_file(tmp_path / "plain.npz", val_fraction=0.0).splits()
    assert (len(everything[0]), len(everything[1])) == (64, 0)
    torch.testing.assert_close(model.scaler.mean, torch.as_tensor(train_split.d.mean(0)).float(), rtol=1e-6, atol=0)
    torch.testing.assert_close(model.scaler.scale, torch.as_tensor(train_split.d.std(0, ddof=1)).float(), rtol=1e-5, atol=0)
    # another file under the same name: resuming is refused, naming the changed digest
    np.savez(tmp_path / "plain.npz", context=data.d, x=data.x, y=data.y)
    code, _, err = _run(monkeypatch, capsys, *args, "--resume")
    _one_line_error(code, err, "games.data.sha256")


def test_bench_on_data_files(monkeypatch, capsys, tmp_path, files):
    out = tmp_path / "b.json"
    code, text, err = _run(monkeypatch, capsys, "bench", "--data", str(files / "train.npz"), "--test-data",
                           str(files / "test.npz"), "--epochs", "1", "--hidden", "8", "--no-progress", "--json", str(out))
    assert code == 0 and "certified solver (support-enumeration)" in text, err
    import json

    doc = json.loads(out.read_text())
    assert [r["model"] for r in doc["rows"]] == ["nfpn", "mlp", "constant"]
    assert doc["summary"]["n_train"] == 64 and doc["summary"]["n_test"] == 16 and doc["summary"]["solver_ms"] > 0
    assert doc["config"] == {"data": str(files / "train.npz"), "test_data": str(files / "test.npz")}
    code, _, err = _run(monkeypatch, capsys, "bench", "--data", str(files / "train.npz"))
    _one_line_error(code, err, "--data and --test-data go together")
    np.savez(tmp_path / "other.npz", context=np.zeros((4, 3)), x=np.full((4, 3), 1 / 3), y=np.full((4, 3), 1 / 3))
    code, _, err = _run(monkeypatch, capsys, "bench", "--data", str(files / "train.npz"), "--test-data",
                        str(tmp_path / "other.npz"))
    _one_line_error(code, err, "holds 3x3 games with 3 context entries")
