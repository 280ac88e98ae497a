"""``fpntools games ...``: solve, bench and train on tiny problems; user errors are one clear line."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from typer.testing import CliRunner

from fpntools.cli import app, main
from problems.games.cli import load_trained

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


def test_train_writes_checkpoint_and_resumes(tmp_path):
    ckpt = tmp_path / "nfpn.pt"
    base = ["games", "train", "--family", "general", "--n-train", "32", "--n-test", "8", "--hidden", "8",
            "--checkpoint", str(ckpt), "--checkpoint-every", "1", "--no-progress"]
    result = runner.invoke(app, [*base, "--epochs", "1"])
    assert result.exit_code == 0, result.output
    assert ckpt.is_file() and "test:" in result.output
    result = runner.invoke(app, [*base, "--epochs", "2", "--resume"])
    assert result.exit_code == 0, result.output
    assert "resumed" in result.output and "epoch 1" in result.output
    model, cfg = load_trained(ckpt)
    with torch.no_grad():
        z, info = model(torch.zeros(2, cfg.context_dim))
    assert z.shape == (2, 6) and bool(info.converged.all())


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
