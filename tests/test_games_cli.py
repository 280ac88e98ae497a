"""``fpntools games ...``: solve, bench, train and evaluate on tiny problems; user errors are one clear line,
unusable solver output exits 3."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from fpntools.cli import app, main
from fpntools.training.checkpoint import load_checkpoint, save_checkpoint
from problems.games.train import load_trained

runner = CliRunner()


def test_solve_prints_certified_equilibrium():
    result = runner.invoke(app, ["games", "solve", "--family", "general", "--context", "0.1,-0.2,0.3,0.5"])
    assert result.exit_code == 0, result.output
    assert "support-enumeration" in result.output and "Nash gap" in result.output
    assert "equilibria found: 3" in result.output  # this game has three equilibria, all listed
    gaps = [float(part.split()[0]) for part in result.output.split("Nash gap =")[1:]]
    assert len(gaps) == 3 and max(gaps) < 1e-12
    result = runner.invoke(app, ["games", "solve", "--context", "0.1,-0.2,0.3,0.5"])
    assert result.exit_code == 0 and "lp" in result.output
    assert float(result.output.split("Nash gap =")[1].split()[0]) < 1e-12


def _run(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """Run the console entry point as a user would: exit code, stdout, stderr."""
    monkeypatch.setattr(sys, "argv", ["fpntools", "games", *args])
    with pytest.raises(SystemExit) as exc:
        main()
    out = capsys.readouterr()
    code = exc.value.code
    return (0 if code is None else int(code)), out.out, out.err


def _one_line_error(code: int, err: str, message: str, expected_code: int = 2) -> None:
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert code == expected_code, err
    assert len(lines) == 1 and message in lines[0], err
    assert "Traceback" not in err


TINY = ["--family", "general", "--n-train", "32", "--n-test", "8", "--hidden", "8", "--no-progress"]


def test_bench_prints_table_and_json(tmp_path):
    out = tmp_path / "bench.json"
    args = ["games", "bench", "--family", "general", "--n-train", "48", "--n-test", "16", "--epochs", "1",
            "--hidden", "8", "--json", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    for word in ["nfpn", "mlp", "constant", "Nash gap", "support-enumeration"]:
        assert word in result.output
    rows = json.loads(out.read_text())["rows"]
    assert [r["model"] for r in rows] == ["nfpn", "mlp", "constant"]
    assert all(r["gap"] >= 0 and r["err"] >= 0 for r in rows)
    assert json.loads(out.read_text())["summary"]["max_target_gap"] < 1e-12


@pytest.mark.parametrize("kind", ["directory", "missing folder", "unwritable folder", "suffix"])
def test_bad_output_path_fails_before_computing(monkeypatch, capsys, tmp_path, kind):
    import fpntools.cli_support as support

    locked, folder = tmp_path / "locked", tmp_path / "out.json"
    locked.mkdir()
    folder.mkdir()
    real_access = support.os.access
    # (tests may run as root, who writes anywhere: the folder is made unwritable for the check itself)
    monkeypatch.setattr(
        support.os, "access", lambda path, mode: not (mode & os.W_OK and Path(path) == locked) and real_access(path, mode)
    )
    target, message = {
        "directory": (folder, "is a directory"),
        "missing folder": (tmp_path / "nope" / "bench.json", "does not exist"),
        "unwritable folder": (locked / "bench.json", "is not writable"),
        "suffix": (tmp_path / "bench.csv", "must end in .json"),
    }[kind]
    code, out, err = _run(monkeypatch, capsys, "bench", *TINY, "--epochs", "1", "--json", str(target))
    _one_line_error(code, err, message)
    assert "building" not in err and out == ""  # nothing computed
    # the run folder of `train` and the --json of `evaluate` are checked the same way
    (tmp_path / "afile").write_text("x")
    code, _, err = _run(monkeypatch, capsys, "train", *TINY, "--out", str(tmp_path / "afile"))
    _one_line_error(code, err, "is a file, not a folder")
    code, _, err = _run(monkeypatch, capsys, "train", *TINY, "--out", str(locked))
    _one_line_error(code, err, "is not writable")
    code, _, err = _run(monkeypatch, capsys, "evaluate", str(tmp_path), "--json", str(folder))
    _one_line_error(code, err, "is a directory")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A tiny N-FPN run trained through the CLI (2 epochs), shared by the evaluation tests."""
    folder = tmp_path_factory.mktemp("games") / "run"
    result = runner.invoke(app, ["games", "train", *TINY, "--epochs", "2", "--out", str(folder), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    return folder


def test_train_writes_run_folder(trained_run):
    config = json.loads((trained_run / "config.json").read_text())
    assert config["trainer"]["schedule"] == "cosine" and config["trainer"]["lr_min_ratio"] == 0.05
    assert config["games.model.name"] == "nfpn" and config["games.data.family"] == "general"
    assert config["games.model.nfpn.solve.backward"] == "jfb" and config["games.model.nfpn.hidden"] == 8
    history = json.loads((trained_run / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert {"train_loss", "train_fp_iters", "val_err", "val_gap", "val_fp_converged", "lr"} <= set(history[-1])
    for name in ("weights.pt", "checkpoint.pt"):
        model, cfg = load_trained(trained_run / name)
        with torch.no_grad():
            z, info = model(torch.zeros(2, cfg.context_dim))
        assert z.shape == (2, 6) and bool(info.converged.all())


def test_train_refuses_existing_checkpoint_and_resumes_exactly(monkeypatch, capsys, tmp_path, trained_run):
    # a second run into the same folder is refused (one line, exit 2), nothing overwritten
    before = (trained_run / "checkpoint.pt").read_bytes()
    code, _, err = _run(monkeypatch, capsys, "train", *TINY, "--epochs", "2", "--out", str(trained_run))
    _one_line_error(code, err, "already holds a checkpoint (epoch 2 of 2); pass --resume")
    assert (trained_run / "checkpoint.pt").read_bytes() == before
    # resuming with another recipe or another model is refused, naming the key
    code, _, err = _run(monkeypatch, capsys, "train", *TINY, "--epochs", "2", "--lr", "0.1", "--out", str(trained_run),
                        "--resume")
    _one_line_error(code, err, "cannot resume: the checkpoint was written with lr=0.01")
    code, _, err = _run(monkeypatch, capsys, "train", *TINY, "--epochs", "2", "--hidden", "16", "--out",
                        str(trained_run), "--resume")
    _one_line_error(code, err, "the checkpoint was written with games.model.nfpn.hidden=8 but this run has "
                               "games.model.nfpn.hidden=16")
    assert (trained_run / "checkpoint.pt").read_bytes() == before
    # a run stopped after 3 steps and resumed through the CLI ends with the weights of the uninterrupted run
    from problems.games.bench import data_config
    from problems.games.model import NFPNConfig
    from problems.games.train import recipe, train_run

    cut = tmp_path / "cut"
    stopped = train_run(data_config("general", 3, 4, 32, 8, 0), "nfpn", NFPNConfig(hidden=8),
                        recipe(epochs=2, batch_size=16, seed=0, device="cpu", run_dir=str(cut), progress=False,
                               max_steps=3), log=None)
    assert not stopped.result.completed and stopped.result.steps == 3
    code, _, err = _run(monkeypatch, capsys, "train", *TINY, "--epochs", "2", "--batch-size", "16", "--out", str(cut),
                        "--resume", "--device", "cpu")
    assert code == 0 and "resuming" in err, err
    full = tmp_path / "full"
    code, out, _ = _run(monkeypatch, capsys, "train", *TINY, "--epochs", "2", "--batch-size", "16", "--out", str(full))
    assert code == 0 and f"weights: {full / 'weights.pt'}" in out
    a, _ = load_trained(cut)
    b, _ = load_trained(full)
    for (k, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), k
    # --force starts over
    code, _, err = _run(monkeypatch, capsys, "train", *TINY, "--epochs", "1", "--out", str(full), "--force")
    assert code == 0 and len(json.loads((full / "history.json").read_text())) == 1


def test_evaluate_reports_solver_status(monkeypatch, capsys, tmp_path, trained_run):
    code, out, err = _run(monkeypatch, capsys, "evaluate", str(trained_run), "--json", str(tmp_path / "m.json"))
    assert code == 0 and "fp_converged=1" in out and "warning" not in err, err
    metrics = json.loads((tmp_path / "m.json").read_text())["metrics"]
    assert metrics["fp_converged"] == 1.0 and metrics["err"] > 0
    # one solver step: the face solve still certifies the exact equilibria of the learned game
    code, out, err = _run(monkeypatch, capsys, "evaluate", str(trained_run), "--max-iter", "1")
    assert code == 0 and "fp_converged=1" in out and "warning" not in err, err
    # without the face solve, a budget too small to converge: the metrics are those of the predictions as they
    # are, with a warning
    no_face = _edited(trained_run, tmp_path, "noface.pt", lambda s: s["model"]["nfpn"].update(face_solve=False))
    code, out, err = _run(monkeypatch, capsys, "evaluate", no_face, "--max-iter", "1")
    assert code == 0 and err.startswith("warning:") and "stopped at the iteration budget" in err, err
    # finite weights whose payoffs overflow: NONFINITE solves -> warning, exit 3, no JSON written
    state = load_checkpoint(trained_run / "weights.pt")
    state["state_dict"]["game.net.4.weight"].fill_(3e38)
    save_checkpoint(tmp_path / "huge.pt", state)
    code, _, err = _run(monkeypatch, capsys, "evaluate", str(tmp_path / "huge.pt"), "--json", str(tmp_path / "h.json"))
    assert "warning:" in err and "non-finite or diverged" in err
    _one_line_error(code, err, "the predictions are not usable", expected_code=3)
    assert not (tmp_path / "h.json").exists()


def _edited(trained_run: Path, tmp_path: Path, name: str, edit) -> str:
    state = load_checkpoint(trained_run / "weights.pt")
    edit(state)
    save_checkpoint(tmp_path / name, state)
    return str(tmp_path / name)


def test_weights_that_do_not_match_are_one_line_errors(monkeypatch, capsys, tmp_path, trained_run):
    def nfpn(**changes):
        return lambda s: s["model"]["nfpn"].update(changes)

    def nan_weight(s):
        s["state_dict"]["game.net.0.weight"][0, 0] = float("nan")

    cases = [
        (_edited(trained_run, tmp_path, "hidden.pt", nfpn(hidden=16)), "weights do not match the model description"),
        (_edited(trained_run, tmp_path, "big.pt", nfpn(hidden=10**9)), "above the limit"),
        (_edited(trained_run, tmp_path, "key.pt", nfpn(tol=1.0)), "unknown N-FPN configuration keys: tol"),
        (_edited(trained_run, tmp_path, "acts.pt", lambda s: s["data"].update(n_actions=10**6)), "limited to 8 actions"),
        (_edited(trained_run, tmp_path, "nan.pt", nan_weight), "non-finite values"),
        (_edited(trained_run, tmp_path, "ctx.pt", lambda s: s["model"].update(context_dim=5)), "with 5 context entries"),
        (str(tmp_path / "missing.pt"), "no such run folder or weights file"),
        (str(tmp_path), "holds neither weights.pt nor checkpoint.pt"),
    ]
    torch.save({"model": {}, "epoch": 1}, tmp_path / "other.pt")
    cases.append((str(tmp_path / "other.pt"), "is not a games weights file"))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    cases.append((str(tmp_path / "junk.pt"), "corrupt or not a torch checkpoint"))
    for path, message in cases:
        code, _, err = _run(monkeypatch, capsys, "evaluate", path)
        _one_line_error(code, err, message)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--hidden", "1000000000"], "above the limit"),
        (["--n-actions", "1000000"], "limited to 8 actions"),
        (["--n-train", "1000000000"], "n_train + n_test must be at most"),
        (["--lr", "nan"], "lr must be a positive finite number"),
        (["--device", "tpu"], "--device must be auto, cpu, cuda"),
        (["--model", "constant"], "--model must be nfpn or mlp"),
        (["--resume", "--force"], "contradict"),
    ],
)
def test_train_bad_input_is_one_line(monkeypatch, capsys, tmp_path, args, message):
    code, _, err = _run(monkeypatch, capsys, "train", *TINY, "--out", str(tmp_path / "r"), *args)
    _one_line_error(code, err, message)
    assert not (tmp_path / "r" / "checkpoint.pt").exists() and "building" not in err


@pytest.mark.parametrize(
    "args,message",
    [
        (["--context", "0.1,0.2,0.3"], "context dimension 4"),
        (["--context", "0.1,nan,0.3,0.4"], "non-finite"),
        (["--context", "a,b"], "numbers separated by commas"),
        (["--family", "poker", "--context", "0,0,0,0"], "unknown game family"),
    ],
)
def test_bad_input_is_one_clear_line(monkeypatch, capsys, args, message):
    result = runner.invoke(app, ["games", "solve", *args])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    monkeypatch.setattr(sys, "argv", ["fpntools", "games", "solve", *args])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err and "Traceback" not in err


def test_weights_written_before_issue_17_still_load(tmp_path, trained_run):
    """An older weights file has no context standardisation buffers and no temperature / face-solve keys: it
    loads as the model it was (identity standardisation, fixed regulariser, no face solve)."""
    def old(state):
        for key in ("game.scaler.mean", "game.scaler.scale"):
            del state["state_dict"][key]
        for key in ("temperature", "face_solve"):
            del state["model"]["nfpn"][key]
        # an older model had no temperature outputs: drop the last two rows of the read-out
        for key in ("game.net.4.weight", "game.net.4.bias"):
            state["state_dict"][key] = state["state_dict"][key][:-2].clone()

    model, _ = load_trained(_edited(trained_run, tmp_path, "old.pt", old))
    assert model.config.face_solve is False and model.config.temperature == 0.0
    assert float(model.game.scaler.mean.abs().max()) == 0.0 and bool((model.game.scaler.scale == 1).all())
    with torch.no_grad():
        z, info = model(torch.zeros(3, 4))
    assert z.shape == (3, 6) and torch.isfinite(z).all()
    # a file missing other weights is still refused
    def broken(state):
        old(state)
        del state["state_dict"]["game.net.0.bias"]

    with pytest.raises(Exception, match="weights do not match"):
        load_trained(_edited(trained_run, tmp_path, "broken.pt", broken))
