"""`fpntools zoo train` / `zoo eval` and `fpntools bench zoo` wiring (tiny runs), bad input via the CLI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from fpntools.cli import app
from fpntools.training import load_checkpoint, save_checkpoint

runner = CliRunner()
SIM = ["zoo", "train", "--model", "sim", "--width", "16", "--device", "cpu"]


def _one_line_error(result, code=2):
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.output  # one line, nothing after it
    return errors[0]


def test_zoo_train_run_folder_refuse_resume_force(tmp_path):
    run = tmp_path / "run"
    result = runner.invoke(app, [*SIM, "--epochs", "1", "--out", str(run)])
    assert result.exit_code == 0, result.output
    assert "test_acc=" in result.output and f"weights: {run / 'model.pt'}" in result.output
    for name in ("config.json", "history.json", "checkpoint.pt", "model.pt"):
        assert (run / name).is_file(), name
    # an existing checkpoint is not overwritten silently
    msg = _one_line_error(runner.invoke(app, [*SIM, "--epochs", "1", "--out", str(run)]))
    assert str(run) in msg and "--resume" in msg and "--force" in msg
    # resuming with another architecture is refused naming the key
    msg = _one_line_error(runner.invoke(app, [*SIM, "--epochs", "1", "--out", str(run), "--resume", "--width", "32"]))
    assert "width=16" in msg and "width=32" in msg
    result = runner.invoke(app, [*SIM, "--epochs", "1", "--out", str(run), "--force"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["zoo", "eval", str(run), "--device", "cpu"])
    assert result.exit_code == 0 and "sim on digits: test_loss=" in result.output, result.output


def test_zoo_train_stopped_then_resumed_equals_uninterrupted(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert runner.invoke(app, [*SIM, "--epochs", "2", "--out", str(a)]).exit_code == 0
    part = runner.invoke(app, [*SIM, "--epochs", "2", "--out", str(b), "--max-steps", "30"])
    assert part.exit_code == 0 and "stopped early: max_steps" in part.output, part.output
    assert runner.invoke(app, [*SIM, "--epochs", "2", "--out", str(b), "--resume"]).exit_code == 0
    wa, wb = (load_checkpoint(p / "model.pt")["state_dict"] for p in (a, b))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_zoo_train_conv_fpn_on_digits_images(tmp_path):
    result = runner.invoke(app, ["zoo", "train", "--model", "conv-fpn", "--epochs", "1", "--width", "8",
                                 "--backward", "implicit_cg", "--device", "cpu", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "test_acc=" in result.output


def test_zoo_train_rejects_bad_choices(tmp_path):
    out = ["--out", str(tmp_path / "r")]
    assert "unknown model 'resnet'" in _one_line_error(runner.invoke(app, ["zoo", "train", "--model", "resnet", *out]))
    msg = _one_line_error(runner.invoke(app, ["zoo", "train", "--model", "deq-transformer", "--dataset", "digits", *out]))
    assert "language model" in msg
    msg = _one_line_error(runner.invoke(app, [*SIM[:4], "--width", "1000000000", *out]))
    assert "width must be between 1 and 4096, got 1000000000" in msg
    assert "lr" in _one_line_error(runner.invoke(app, [*SIM, "--lr", "nan", *out]))
    if not torch.cuda.is_available():
        msg = _one_line_error(runner.invoke(app, [*SIM[:-2], "--device", "cuda", *out]))
        assert msg == "error: --device cuda requested but CUDA is not available"
    assert not (tmp_path / "r" / "checkpoint.pt").exists()


def test_zoo_eval_bad_weights(tmp_path):
    run = tmp_path / "run"
    assert runner.invoke(app, [*SIM, "--epochs", "1", "--out", str(run), "--max-steps", "1"]).exit_code == 0
    good = load_checkpoint(run / "model.pt")

    def crafted(name, **spec_changes):
        obj = {**good, "spec": {**good["spec"], **spec_changes}}
        save_checkpoint(tmp_path / name, obj)
        return runner.invoke(app, ["zoo", "eval", str(tmp_path / name), "--device", "cpu"])

    # a spec asking for absurd sizes: refused before anything is allocated
    assert "width must be between 1 and 4096, got 1000000000" in _one_line_error(crafted("huge.pt", width=10**9))
    assert "in_dim must be between" in _one_line_error(crafted("huge_in.pt", in_dim=10**12))
    assert "would have about" in _one_line_error(crafted("big.pt", width=4096, in_dim=10**6))
    # weights that do not fit the spec's model
    msg = _one_line_error(crafted("mismatch.pt", width=32))
    assert "do not match the model" in msg and "the model expects" in msg
    msg = _one_line_error(crafted("other.pt", model="deq"))
    assert "do not match the model" in msg
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    assert "corrupt" in _one_line_error(runner.invoke(app, ["zoo", "eval", str(tmp_path / "junk.pt")]))
    save_checkpoint(tmp_path / "plain.pt", {"weights": torch.zeros(2)})
    assert "not a zoo model file" in _one_line_error(runner.invoke(app, ["zoo", "eval", str(tmp_path / "plain.pt")]))
    assert "not found" in _one_line_error(runner.invoke(app, ["zoo", "eval", str(tmp_path / "none.pt")]))


def test_zoo_resume_with_a_foreign_checkpoint(tmp_path):
    run = tmp_path / "run"
    assert runner.invoke(app, [*SIM, "--epochs", "1", "--out", str(run), "--max-steps", "1"]).exit_code == 0
    (run / "checkpoint.pt").write_bytes(b"\x00garbage")
    msg = _one_line_error(runner.invoke(app, [*SIM, "--epochs", "1", "--out", str(run), "--resume"]))
    assert "corrupt" in msg and "--force" in msg
    (tmp_path / "file").write_text("x")
    assert "is a file" in _one_line_error(runner.invoke(app, [*SIM, "--out", str(tmp_path / "file")]))


def test_bench_zoo_rejects_unknown_section():
    result = runner.invoke(app, ["bench", "zoo", "--sections", "speed"])
    assert result.exit_code != 0 and "unknown sections" in (str(result.exception) + result.output)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun") is None and not os.path.exists(os.path.join(os.path.dirname(sys.executable),
                    "torchrun")), reason="torchrun not installed")
def test_zoo_train_under_torchrun_two_processes(tmp_path):
    """`torchrun --nproc-per-node 2 -m fpntools zoo train` (gloo on CPU) gives the single-process weights."""
    torchrun = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")
    args = ["-m", "fpntools", *SIM, "--epochs", "1", "--max-steps", "6"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = subprocess.run([torchrun, "--standalone", "--nproc-per-node", "2", *args, "--out", str(tmp_path / "two")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run([sys.executable, *args, "--out", str(tmp_path / "one")], capture_output=True, text=True,
                         env=env, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    w1, w2 = (load_checkpoint(tmp_path / d / "model.pt")["state_dict"] for d in ("one", "two"))
    for k in w1:
        assert torch.allclose(w1[k].double(), w2[k].double(), atol=1e-5, rtol=0), k
