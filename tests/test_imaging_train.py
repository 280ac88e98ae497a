"""Imaging training on the one trainer: the decoder (ordinary and joint-solve batches, Jacobian penalty, activation
switch), exact resume, the run folder, the patch source's determinism; the digits demo's classifier training."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fpntools.solve_config import JacobianRegConfig
from problems.imaging.model import DEFAULT_SOLVE, DecoderConfig, DEQDecoder, load_decoder, save_decoder
from problems.imaging.train import TrainConfig, train_decoder
from problems.imaging.data import NATURAL_ROOT

SMALL = DecoderConfig(channels=8, latent_channels=2, encoder_width=8)
FAST = DEFAULT_SOLVE.with_(max_iter=5, backward_max_iter=5)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_decoder(path).state_dict()


def test_decoder_training_with_jacobian_penalty_writes_loadable_weights(tmp_path: Path):
    """A few batches with the Jacobian penalty: the penalty enters the loss (its metric is positive), the weights
    are written atomically with a summary and the solve configuration, and load back with it; the run folder holds
    config.json and one history record per epoch."""
    out = tmp_path / "w.safetensors"
    solve = FAST.with_(jacobian=JacobianRegConfig(weight=0.1))
    cfg = TrainConfig(patch=16, batch=4, steps=4, minutes=0, epoch_batches=2)
    res = train_decoder(cfg, SMALL, out, solve=solve, run_dir=tmp_path / "run", log=False)
    s = res.summary
    assert s["steps"] == 4 and s["stop_reason"] == "done" and s["train"]["steps"] == 4
    assert all(np.isfinite(v) for v in s["heldout_psnr"].values())
    loaded = load_decoder(out)
    assert loaded.solve == solve and not list(tmp_path.glob("*.tmp*"))
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2] and all(h["train_jac"] > 0 for h in history)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["solve"]["jacobian"]["weight"] == 0.1 and config["decoder"]["channels"] == 8


def test_fine_tuning_switches_the_activation_and_the_file_keeps_it(tmp_path: Path):
    """``--activation softplus`` with ``--init``: the relu weights are loaded into a softplus decoder and
    fine-tuned; the written file records the activation, and a further fine-tune keeps it."""
    torch.manual_seed(0)
    save_decoder(DEQDecoder(SMALL), tmp_path / "relu.safetensors")
    cfg = TrainConfig(patch=16, batch=4, steps=2, minutes=0, init=str(tmp_path / "relu.safetensors"),
                      activation="softplus")
    train_decoder(cfg, SMALL, tmp_path / "soft.safetensors", solve=FAST, log=False)
    soft = load_decoder(tmp_path / "soft.safetensors")
    assert soft.cfg.activation == "softplus" and load_decoder(tmp_path / "relu.safetensors").cfg.activation == "relu"
    again = replace(cfg, init=str(tmp_path / "soft.safetensors"), activation=None)
    res = train_decoder(again, SMALL, tmp_path / "again.safetensors", solve=FAST, log=False)
    assert load_decoder(tmp_path / "again.safetensors").cfg.activation == "softplus"
    assert res.summary["total_steps"] == 4  # the --init weights had seen 2 steps
    with pytest.raises(ValueError, match="activation"):
        DecoderConfig(activation="tanh")


@pytest.mark.parametrize("backward", ["jfb", "implicit"])
def test_joint_batch_loss_trains_the_decoder_through_the_joint_solve(backward: str):
    """A batch restored by the augmented solve: the loss is finite and its gradient reaches the DEQ layer and the
    head (the encoder's estimate only centres the prior and gets none)."""
    from problems.imaging.tasks import lam_for_sigma, step_for_lam
    from problems.imaging.train import Corruption, corrupt, joint_batch_loss

    torch.manual_seed(0)
    model = DEQDecoder(replace(SMALL, activation="softplus"))
    p = torch.rand(2, 1, 16, 16)
    y, m, _ = corrupt(p, np.random.default_rng(0), Corruption(p_clean=1.0, p_mask=1.0))
    assert float(m.mean()) < 1.0
    jb = joint_batch_loss(model, p, y, m, TrainConfig(joint_iters=4, joint_backward=backward, joint_residual_weight=1.0))
    assert jb.jacobian_loss is None and 1 <= jb.steps <= 4 and torch.isfinite(jb.mse)
    assert jb.residual_loss is not None and float(jb.residual_loss.detach()) > 0  # four iterations do not converge
    # the penalty is the squared joint residual at the end state: DEQ, adjoint and alpha-scaled gradient parts
    r, alpha = jb.result, step_for_lam(lam_for_sigma(0.0))
    squared = (r.deq_residual**2 + r.adjoint_residual**2 + (alpha * r.grad_norm) ** 2).sum()
    n = r.z.numel()
    torch.testing.assert_close(jb.residual_loss.detach() * n, squared, rtol=1e-4, atol=1e-10)
    (jb.mse + jb.residual_loss).backward()
    for module in (model.layer.conv1, model.layer.inject, model.full_conv, model.out_conv):
        g = module.weight.grad
        assert g is not None and torch.isfinite(g).all() and float(g.abs().max()) > 0
    assert all(q.grad is None for q in model.encoder.parameters())


def test_training_through_the_joint_solve_writes_weights(tmp_path: Path):
    """``joint_fraction = 1``: every batch goes through the joint solve; the weights change, are written with the
    count of joint batches and load back. Bad options are named."""
    torch.manual_seed(0)
    save_decoder(DEQDecoder(SMALL), tmp_path / "init.safetensors")
    cfg = TrainConfig(patch=16, batch=2, steps=2, minutes=0, joint_fraction=1.0, joint_iters=3,
                      init=str(tmp_path / "init.safetensors"))
    res = train_decoder(cfg, SMALL, tmp_path / "joint.safetensors", solve=FAST, log=False)
    assert res.summary["joint_batches"] == 2
    before, after = load_decoder(tmp_path / "init.safetensors"), load_decoder(tmp_path / "joint.safetensors")
    assert not torch.equal(before.head_conv.weight, after.head_conv.weight)
    assert torch.equal(before.encoder[0].weight, after.encoder[0].weight)  # joint batches do not train the encoder
    for bad, match in (({"joint_fraction": 1.5}, "joint_fraction"), ({"joint_iters": 0}, "joint_iters"),
                       ({"joint_backward": "unroll"}, "joint_backward"), ({"joint_residual_weight": -1}, "residual"),
                       ({"patch": 30}, "patch"), ({"lr": float("nan")}, "lr"), ({"lr_drop": 0.0}, "lr_drop")):
        with pytest.raises(ValueError, match=match):
            TrainConfig(**bad)


def test_resume_is_exact_and_the_learning_rate_drop_survives_it(tmp_path: Path):
    """A run stopped after 3 of 6 steps and resumed ends with exactly the weights of an uninterrupted run. The run
    mixes ordinary and joint-solve batches, a Jacobian penalty applied at random (global RNG), and the learning
    rate drop at half the steps (before the interruption: the checkpoint must carry it)."""
    solve = FAST.with_(jacobian=JacobianRegConfig(weight=0.1, prob=0.5))
    cfg = TrainConfig(patch=16, batch=4, steps=6, minutes=0, epoch_batches=2, lr_drop=0.4, joint_fraction=0.5,
                      joint_iters=3, joint_residual_weight=1.0)
    whole = train_decoder(cfg, SMALL, tmp_path / "a.safetensors", solve=solve, run_dir=tmp_path / "A", log=False)
    part = train_decoder(cfg, SMALL, tmp_path / "b.safetensors", solve=solve, run_dir=tmp_path / "B", log=False,
                         max_steps=3)
    assert part.summary["stop_reason"] == "max_steps" and part.summary["steps"] == 3
    rest = train_decoder(cfg, SMALL, tmp_path / "b.safetensors", solve=solve, run_dir=tmp_path / "B", log=False,
                         resume=True)
    assert rest.summary["steps"] == 6 and rest.summary["joint_batches"] == whole.summary["joint_batches"] >= 1
    wa, wb = _weights(tmp_path / "a.safetensors"), _weights(tmp_path / "b.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    ha = json.loads((tmp_path / "A" / "history.json").read_text())
    hb = json.loads((tmp_path / "B" / "history.json").read_text())
    assert [h["train_loss"] for h in ha] == [h["train_loss"] for h in hb]
    assert [h["lr"] for h in ha] == [2e-3, pytest.approx(2e-4), pytest.approx(2e-4)]
    # another recipe cannot resume this run folder
    with pytest.raises(ValueError, match="cannot resume"):
        train_decoder(replace(cfg, latent_weight=0.5), SMALL, tmp_path / "c.safetensors", solve=solve,
                      run_dir=tmp_path / "B", log=False, resume=True)


def test_patch_source_is_deterministic_and_shards_add_up():
    """A batch depends only on the trainer's generator and the sample indices: the same seed gives the same batch,
    and two shards of the index set (data-parallel processes) give exactly the halves of the whole batch."""
    from problems.imaging.data import center_crop, load_image
    from problems.imaging.train import PatchSource

    src = PatchSource([center_crop(load_image("moon"), 128)], 16, 8, joint_fraction=0.5)
    idx = torch.randperm(8, generator=torch.Generator().manual_seed(1))
    whole = src.batch(idx, torch.Generator().manual_seed(7))
    again = src.batch(idx, torch.Generator().manual_seed(7))
    lo, hi = src.batch(idx[:3], torch.Generator().manual_seed(7)), src.batch(idx[3:], torch.Generator().manual_seed(7))
    for k in ("p", "y", "m", "s"):
        assert torch.equal(whole[k], again[k])
        assert torch.equal(whole[k], torch.cat([lo[k], hi[k]]))
    assert whole["joint"] == lo["joint"] == hi["joint"]
    other = src.batch(idx, torch.Generator().manual_seed(8))
    assert not torch.equal(whole["p"], other["p"])
    assert len(src) == 8 and whole["p"].shape == (8, 1, 16, 16)


def test_train_command_refuses_an_existing_checkpoint_and_bad_output(tmp_path: Path):
    """``fpntools imaging train`` writes the weights into the run folder; run again without --resume it is refused
    with one line (exit 2); a weights file in a missing folder is refused before training."""
    from fpntools.cli import app

    runner = CliRunner()
    args = ["imaging", "train", "--run-dir", str(tmp_path / "run"), "--steps", "2", "--batch", "2", "--patch", "16",
            "--channels", "8", "--latent-channels", "2", "--encoder-width", "8", "--minutes", "0", "--device", "cpu"]
    ok = runner.invoke(app, args)
    assert ok.exit_code == 0, ok.output
    assert (tmp_path / "run" / "decoder.safetensors").is_file() and "wrote" in ok.output
    again = runner.invoke(app, args)
    assert again.exit_code == 2
    lines = [ln for ln in again.output.splitlines() if ln.strip()]
    assert lines[-1].startswith("error: ") and "--resume" in lines[-1] and "Traceback" not in again.output
    other = [*args[:3], str(tmp_path / "run2"), *args[4:], "--out", str(tmp_path / "no" / "w.safetensors")]
    bad = runner.invoke(app, other)
    assert bad.exit_code == 2 and "does not exist" in bad.output, bad.output
    assert not (tmp_path / "run2" / "checkpoint.pt").exists()


def test_classifier_training_resumes_exactly(tmp_path: Path):
    """The digits classifier (adversarial training with the augmented attack) trained 2 epochs in one go equals 1
    epoch, then a resumed second epoch; the run folder records both epochs."""
    from problems.imaging.adversarial import AdvConfig, DEQClassifier, load_digits_split, train

    xtr, ytr, _, _ = load_digits_split()
    x, y = xtr[:128], ytr[:128]

    def fresh() -> DEQClassifier:
        torch.manual_seed(0)
        return DEQClassifier(hidden=16)

    cfg = AdvConfig(epochs=2, batch=64, train_aug_iters=3)
    whole = fresh()
    train(whole, x, y, cfg, adversarial=True, run_dir=tmp_path / "A")
    part = fresh()
    train(part, x, y, replace(cfg, epochs=1), adversarial=True, run_dir=tmp_path / "B")
    part = fresh()
    train(part, x, y, cfg, adversarial=True, run_dir=tmp_path / "B", resume=True)
    sa, sb = whole.state_dict(), part.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert len(json.loads((tmp_path / "B" / "history.json").read_text())) == 2


@pytest.mark.parametrize("which", ["relu", "softplus"])
def test_shipped_weights_load_with_their_training_solve(which: str):
    """The shipped files predate the SolveConfig: their training summary's solver keys map onto it, and the
    decoder's own solve then reproduces the held-out PSNRs recorded in the files at the end of training."""
    from safetensors import safe_open

    from problems.imaging.model import SCIKIT_WEIGHTS, SMOOTH_WEIGHTS
    from problems.imaging.train import heldout_psnr

    path = SCIKIT_WEIGHTS if which == "relu" else SMOOTH_WEIGHTS
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
    assert "solve" not in meta  # the legacy format
    model = load_decoder(path)
    assert model.solve == DEFAULT_SOLVE.with_(jacobian=JacobianRegConfig(weight=0.02, prob=1.0))
    recorded = json.loads(meta["summary"])["heldout_psnr"]
    assert {f"sigma={s}": round(heldout_psnr(model, s), 2) for s in (0.0, 0.2, 0.4)} == recorded


def test_legacy_solver_keys_map_onto_the_solve_config(tmp_path: Path):
    """``fwd_tol / fwd_max_iter / bwd_tol / bwd_max_iter / jac_weight / jac_prob`` of an old summary become the
    SolveConfig fields; a file written now stores ``solve`` itself and loads it back."""
    from problems.imaging.model import solve_from_metadata

    old = {"summary": json.dumps({"train": {"fwd_tol": 1e-4, "fwd_max_iter": 7, "bwd_tol": 1e-5, "bwd_max_iter": 9,
                                            "jac_weight": 0.5, "jac_prob": 0.25, "lr": 1e-3}})}
    cfg = solve_from_metadata(old)
    assert (cfg.tol, cfg.max_iter, cfg.backward_tol, cfg.backward_max_iter) == (1e-4, 7, 1e-5, 9)
    assert (cfg.jacobian.weight, cfg.jacobian.prob, cfg.solver, cfg.backward, cfg.anderson_m) == (
        0.5, 0.25, "anderson", "implicit", 5)
    assert solve_from_metadata({}) == DEFAULT_SOLVE
    model = DEQDecoder(SMALL, FAST.with_(backward="jfb", eval_tol=1e-5))
    save_decoder(model, tmp_path / "w.safetensors")
    assert load_decoder(tmp_path / "w.safetensors").solve == model.solve


@pytest.mark.skipif(not (NATURAL_ROOT / "train400").is_dir(), reason="../shared/data/natural-images is absent")
def test_natural_weights_reproduce_their_validation_psnr():
    """The shipped natural-image prior (the default weights) loads with its own solve and reproduces the
    validation PSNR recorded in it at sigma 25 (amortised restoration of the held-out train400 images; the
    record has all four levels 0/15/25/50)."""
    from safetensors import safe_open

    from problems.imaging.data import load_training_images, split_train_validation
    from problems.imaging.model import DEFAULT_WEIGHTS, NATURAL_WEIGHTS
    from problems.imaging.train import VALIDATION_SIGMAS, ValidationSet

    assert DEFAULT_WEIGHTS == NATURAL_WEIGHTS
    with safe_open(str(NATURAL_WEIGHTS), framework="pt") as fh:
        summary = json.loads(fh.metadata()["summary"])
    assert summary["train"]["data"] in ("train400", ".gpu/data/train400.npy") or summary["train"]["data"].endswith(
        "train400.npy")
    _, val = split_train_validation(load_training_images("train400"), "train400")
    model = load_decoder(NATURAL_WEIGHTS)
    assert set(summary["validation_psnr"]) == {f"sigma={round(s * 255)}/255" for s in VALIDATION_SIGMAS}
    got = round(ValidationSet(val).psnr(model, 25 / 255), 2)  # one level (the selection metric) keeps it fast
    assert got == pytest.approx(summary["validation_psnr"]["sigma=25/255"], abs=0.011)
