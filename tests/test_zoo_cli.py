"""`fpntools zoo train` and `fpntools bench zoo` wiring (tiny runs)."""

from __future__ import annotations

from typer.testing import CliRunner

from fpntools.cli import app

runner = CliRunner()


def test_zoo_train_sim_on_digits_and_resume(tmp_path):
    ck = tmp_path / "sim.pt"
    args = ["zoo", "train", "--model", "sim", "--epochs", "1", "--width", "16", "--checkpoint", str(ck)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "eval_acc=" in result.output and ck.is_file()


def test_zoo_train_conv_fpn_on_digits_images():
    result = runner.invoke(app, ["zoo", "train", "--model", "conv-fpn", "--epochs", "1", "--width", "8",
                                 "--backward", "implicit_cg"])
    assert result.exit_code == 0, result.output
    assert "eval_acc=" in result.output


def test_zoo_train_rejects_bad_choices():
    result = runner.invoke(app, ["zoo", "train", "--model", "resnet"])
    assert result.exit_code == 2
    assert "error: unknown model 'resnet'" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["zoo", "train", "--model", "deq-transformer", "--dataset", "digits"])
    assert result.exit_code == 2 and "language model" in result.output


def test_bench_zoo_rejects_unknown_section():
    result = runner.invoke(app, ["bench", "zoo", "--sections", "speed"])
    assert result.exit_code != 0 and "unknown sections" in str(result.exception)
