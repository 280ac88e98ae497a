"""The console command: help on every subcommand, `info`, and the engine benchmark's numbers."""

from __future__ import annotations

import subprocess
import sys

import pytest
import typer.main
from typer.testing import CliRunner

from fpntools.cli import app

runner = CliRunner()


def _all_commands(group, prefix: tuple[str, ...] = ()):
    yield prefix
    if hasattr(group, "list_commands"):
        ctx = group.make_context("fpntools", [], resilient_parsing=True)
        for name in group.list_commands(ctx):
            yield from _all_commands(group.get_command(ctx, name), prefix + (name,))


def test_every_subcommand_has_help():
    commands = list(_all_commands(typer.main.get_command(app)))
    assert ("info",) in commands and ("bench", "engine") in commands
    for cmd in commands:
        result = runner.invoke(app, [*cmd, "--help"])
        assert result.exit_code == 0, (cmd, result.output)
        assert "Usage" in result.output


def test_info_lists_backends():
    result = runner.invoke(app, ["info"])
    assert result.exit_code == 0, result.output
    for word in ["torch", "CUDA", "ASTRA CPU projectors", "triton", "cvxpy"]:
        assert word in result.output


def test_console_script_entry_point():
    out = subprocess.run([sys.executable, "-m", "fpntools", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "info" in out.stdout


def test_engine_bench_rows_are_consistent():
    pytest.importorskip("torchdeq")
    from fpntools.bench.engine import ConvLayer, MLPLayer, run

    layers = {"mlp": lambda: MLPLayer(32, 8), "conv": lambda: ConvLayer(8, 6, 2)}
    rows = run(batch=4, repeats=1, print_table=False, layers=layers)
    libs = {(r.layer, r.library) for r in rows}
    assert {lib for _, lib in libs} == {"fpntools", "torchdeq"}
    for r in rows:
        assert r.forward_ms > 0 and r.backward_ms > 0 and r.forward_steps >= 1
        if r.library == "fpntools":
            assert r.grad_rel_diff is not None and r.grad_rel_diff < 1e-6


def test_user_input_errors_are_one_line_with_exit_code_2(tmp_path):
    bad = tmp_path / "missing.tntp"
    result = runner.invoke(app, ["traffic", "equilibrium", "--net", str(bad), "--trips", str(bad), "--out", str(tmp_path / "o.csv")])
    assert result.exit_code == 2
    assert "Traceback" not in result.output and not (tmp_path / "o.csv").exists()
