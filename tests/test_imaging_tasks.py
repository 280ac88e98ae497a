"""Imaging application: data helpers, TV baselines, latent fitting with the shipped decoder, adversarial attack."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from fpntools.augmented import AugmentedConfig, Counter, NaiveConfig
from fpntools.errors import UserInputError
from fpntools.metrics import psnr
from problems.imaging.data import (
    TEST_IMAGES,
    TRAIN_IMAGES,
    VALIDATION_IMAGES,
    center_crop,
    load_image,
    read_image,
    validation_crops,
)
from problems.imaging.model import SCIKIT_WEIGHTS, load_decoder
from problems.imaging.tasks import (
    TaskConfig,
    block_mask,
    make_problem,
    restore_augmented,
    restore_naive,
    shifted_batch,
    tv_denoise,
    tv_inpaint,
    unshift_mean,
)


@pytest.fixture(scope="module")
def model():
    m = load_decoder(SCIKIT_WEIGHTS)
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def test_masks_and_shift_averaging_roundtrip():
    m = block_mask((64, 48), 8, 0.25, seed=1)
    assert m.shape == (64, 48) and 0.1 < 1 - m.mean() < 0.4
    img = np.random.default_rng(0).random((32, 40))
    for s in (1, 2, 4):
        b = shifted_batch(img, s)
        assert b.shape[0] == s and b.shape[-1] % 4 == 0
        np.testing.assert_allclose(unshift_mean(b.double(), img.shape), img, atol=1e-6)


def test_validation_split_is_disjoint_and_crops_are_real():
    """Tuning crops come from images used neither in training nor by the benchmark; the stereo picture gives
    its left view; crops are distinct, in range, with texture."""
    assert not set(VALIDATION_IMAGES) & (set(TRAIN_IMAGES) | set(TEST_IMAGES))
    left = load_image("stereo_motorcycle")
    assert left.ndim == 2 and left.dtype == np.float64
    crops = validation_crops(48)
    assert len(crops) == 7 and len({name for name, _ in crops}) == 7
    for _, c in crops:
        assert c.shape == (48, 48) and 0.0 <= c.min() and c.max() <= 1.0 and c.std() > 0.02
    assert not np.allclose(crops[0][1], crops[1][1])
    assert len(validation_crops(128)) == 6  # microaneurysms (102 px) is too small for 128


def test_joint_step_follows_prior_weight():
    from problems.imaging.tasks import DATA_CURVATURE, step_for_lam

    assert step_for_lam(30.0) == pytest.approx(1 / (30 + DATA_CURVATURE))
    assert step_for_lam(120.0) < step_for_lam(0.3)


def test_training_corruptions():
    """Noise levels in range, some clean patches, missing pixels zeroed, missing fraction in the set range."""
    from problems.imaging.train import Corruption, corrupt

    rng = np.random.default_rng(0)
    p = torch.rand(400, 1, 32, 32)
    c = Corruption(p_clean=0.2, sigma_max=0.5, p_mask=0.5, fraction_range=(0.1, 0.4))
    y, m, s = corrupt(p, rng, c)
    assert y.shape == m.shape == p.shape and s.shape == (400,)
    assert float(s.min()) == 0.0 and float(s.max()) <= 0.5 and 0.1 < float((s == 0).float().mean()) < 0.3
    assert torch.all(y[m == 0] == 0)
    masked = m.flatten(1).min(1).values == 0
    assert 0.35 < float(masked.float().mean()) < 0.65
    frac = 1 - m[masked].flatten(1).mean(1)
    assert float(frac.min()) > 0.0 and float(frac.max()) < 0.7
    clean = (s == 0) & ~masked
    torch.testing.assert_close(y[clean], p[clean])  # clean, unmasked patches are untouched
    resid = (y - p)[(s > 0.3) & ~masked]
    assert 0.25 < float(resid.std()) < 0.5


def test_amortized_prior_centre_and_shapes(model):
    """The encoder maps an observation (any mask / noise level) to the latent grid; the latent problem is
    centred on it and starts there; a wrongly shaped prior centre is rejected."""
    from problems.imaging.tasks import LatentProblem

    img = center_crop(load_image("coins"), 32)
    y = torch.as_tensor(img, dtype=torch.float32)[None, None]
    x1 = model.encode(y, None, 0.2)
    x2 = model.encode(y.expand(2, -1, -1, -1), torch.ones(2, 1, 32, 32), torch.tensor([0.2, 0.4]))
    assert x1.shape == (1, *model.latent_shape(32, 32)) and x2.shape[0] == 2
    torch.testing.assert_close(x2[:1], x1)
    prob = make_problem(model, img, None, TaskConfig(sigma=0.2))
    torch.testing.assert_close(prob.x0(), x1)
    assert float(prob.loss(prob.z0(x1), x1)[0]) == pytest.approx(
        0.5 * float((model.head(prob.z0(x1)) - y).pow(2).sum()), rel=1e-5
    )
    zero = make_problem(model, img, None, TaskConfig(amortized=False))
    assert float(zero.x0().abs().max()) == 0.0
    with pytest.raises(ValueError, match="latent shape"):
        LatentProblem(model, y, x_prior=torch.zeros(1, 1, 8, 8))


def test_read_image_16bit_and_float(tmp_path: Path):
    import imageio.v3 as iio

    arr = (np.arange(32 * 32).reshape(32, 32) * 60).astype(np.uint16)
    iio.imwrite(tmp_path / "a.png", arr)
    img = read_image(tmp_path / "a.png")
    assert img.dtype == np.float64 and img.max() <= 1 and np.allclose(img, arr / 65535)
    iio.imwrite(tmp_path / "b.tiff", np.full((32, 32), 1.5, np.float32))
    with pytest.raises(UserInputError, match="expected \\[0, 1\\]"):
        read_image(tmp_path / "b.tiff")


def test_tv_baselines():
    img = center_crop(load_image("camera"), 64)
    rng = np.random.default_rng(0)
    y = img + 0.2 * rng.standard_normal(img.shape)
    assert float(psnr(np.clip(tv_denoise(y, 0.2), 0, 1), img)) > float(psnr(np.clip(y, 0, 1), img)) + 5
    mask = block_mask(img.shape, 8, 0.25)
    u = tv_inpaint(np.where(mask, img, 0), mask, 0.05, iters=50)
    np.testing.assert_allclose(u[mask], img[mask])
    filled = np.where(mask, img, img[mask].mean())
    assert float(psnr(np.clip(u, 0, 1), img)) > float(psnr(np.clip(filled, 0, 1), img)) + 3


def test_latent_fitting_augmented_and_naive(model):
    """Fit the decoder latent to a held-out 32x32 crop: both methods lower the objective and end near the
    same value; the joint solve reports small residuals."""
    img = center_crop(load_image("coins"), 32)
    cfg = TaskConfig(
        lam=0.02,
        amortized=False,
        step_size=0.1,
        augmented=AugmentedConfig(max_iter=60, tol=1e-6, solver_options={"m": 20}, backward="jfb"),
        naive=NaiveConfig(lr=0.05, steps=25),
    )
    prob = make_problem(model, img, None, cfg)
    start = float(prob.objective(prob.x0()).sum())
    out_a, res_a = restore_augmented(model, img, None, cfg)
    out_n, res_n = restore_naive(model, img, None, cfg)
    fa, fn = float(prob.objective(res_a.x).sum()), float(prob.objective(res_n.x).sum())
    assert fa < 0.2 * start and fn < 0.2 * start
    assert float(psnr(np.clip(out_a, 0, 1), img)) > 20
    assert res_a.nfe == res_a.info.nfe and res_a.nvjp == res_a.nfe
    assert res_n.nfe > 2 * res_a.nfe / 3  # 25 nested steps already cost more than the 60 joint iterations
    assert float(res_a.deq_residual.max()) < 5e-2 * float(res_a.z.norm())  # 60 joint iterations: near


def test_adversarial_attack_stays_in_ball_and_hurts():
    from problems.imaging.adversarial import (
        AdvConfig,
        DEQClassifier,
        attack_augmented,
        attack_pgd,
        load_digits_split,
        train,
    )

    torch.manual_seed(0)
    xtr, ytr, xte, yte = load_digits_split()
    model = DEQClassifier(hidden=32)
    train(model, xtr[:256], ytr[:256], AdvConfig(epochs=8, batch=64, lr=1e-2), adversarial=False)
    for p in model.parameters():
        p.requires_grad_(False)
    x, y = xte[:64], yte[:64]
    assert float((model(x).argmax(1) == y).float().mean()) > 0.5  # trained
    c = Counter()
    d = attack_augmented(model, x, y, eps=1.0, iters=20, step=0.5, counter=c)
    assert float(d.norm(dim=1).max()) <= 1.0 + 1e-5 and c.nfe == 20
    d2 = attack_pgd(model, x, y, eps=1.0, steps=3, lr=0.25)
    ce = lambda xx: float(torch.nn.functional.cross_entropy(model(xx), y).detach())  # noqa: E731
    assert ce(x + d) > ce(x) and ce(x + d2) > ce(x)


def test_smooth_tv_uses_the_toolbox_gradient():
    """The smoothed TV term of the latent objective tends to the toolbox's isotropic TV as eps -> 0 and is
    ``sum sqrt(|grad u|^2 + eps^2) - eps`` exactly (constant image: 0; one step edge: its length x height)."""
    from fpntools.operators import tv_norm
    from problems.imaging.tasks import smooth_tv

    u = torch.rand(3, 1, 12, 10, dtype=torch.float64)
    torch.testing.assert_close(smooth_tv(u, eps=1e-9), tv_norm(u, dims=(1, 2)), rtol=1e-6, atol=1e-6)
    assert float(smooth_tv(torch.ones(1, 1, 8, 8)).abs().max()) < 1e-6
    edge = torch.zeros(1, 1, 8, 8, dtype=torch.float64)
    edge[..., 4:] = 1.0  # a vertical edge of height 8, jump 1
    assert float(smooth_tv(edge, eps=1e-3)) == pytest.approx(8 * (np.sqrt(1 + 1e-6) - 1e-3), rel=1e-12)


@pytest.mark.slow
def test_bench_row_augmented_needs_fewer_evaluations(model):
    """One benchmark row on a small held-out crop: both reach the common target; the joint solve needs at
    least 3x fewer evaluations + VJPs (slow: ~1 min)."""
    from problems.imaging.bench import TASKS, run_task

    img = center_crop(load_image("camera"), 48)
    row = run_task(model, img, "camera", TASKS[0], TaskConfig(), repeats=1)
    assert row.aug_nfe is not None
    assert (row.naive_nfe + row.naive_nvjp) >= 3 * (row.aug_nfe + row.aug_nvjp)


def test_softplus_decoder_is_smooth_and_tends_to_relu():
    """The softplus activation has a continuous derivative at 0 (relu's jumps by 1), the layer and the head use
    the configured activation, and a large beta gives the relu decoder back."""
    from problems.imaging.model import DecoderConfig, DEQDecoder

    torch.manual_seed(0)
    relu = DEQDecoder(DecoderConfig(channels=8, latent_channels=2, encoder_width=8)).double()

    def variant(beta):
        m = DEQDecoder(replace(relu.cfg, activation="softplus", softplus_beta=beta)).double()
        m.load_state_dict(relu.state_dict())
        return m

    t = torch.tensor([-1e-7, 1e-7], dtype=torch.float64, requires_grad=True)
    for cfg, jump in ((relu.cfg, 1.0), (variant(10.0).cfg, 0.0)):
        (dt,) = torch.autograd.grad(cfg.act(t).sum(), t)
        assert float(dt[1] - dt[0]) == pytest.approx(jump, abs=1e-5)
    z, x = torch.randn(1, 8, 8, 8, dtype=torch.float64), torch.randn(1, 2, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        for m, close in ((variant(1e4), True), (variant(10.0), False)):
            assert torch.allclose(m.layer(z, x), relu.layer(z, x), atol=1e-3) is close
            assert torch.allclose(m.head(z), relu.head(z), atol=1e-3) is close


def test_shipped_smooth_weights_give_a_smooth_objective():
    """With the shipped softplus weights the inpainting objective is smooth: in float64, central difference
    quotients along the descent direction agree with the adjoint gradient from h = 1e-5 up to h = 1e-3; the
    relu weights' quotients drift by more at the same point."""
    from fpntools.augmented import input_gradient, solve_equilibrium
    from problems.imaging.bench import TASKS, make_observation
    from problems.imaging.model import SMOOTH_WEIGHTS

    img = center_crop(load_image("camera"), 32)
    y, mask = make_observation(img, TASKS[2])
    drift = {}
    for path in (SMOOTH_WEIGHTS, SCIKIT_WEIGHTS):
        model = load_decoder(path).requires_grad_(False)
        prob = make_problem(model, y, mask, TaskConfig(lam=TASKS[2].lam)).to(torch.float64)
        x = prob.x0()
        _, g, _, _ = input_gradient(prob.f, prob.loss, x, prob.z0(x), tol=1e-12, max_iter=400, backward_tol=1e-12,
                                    backward_max_iter=400)
        d = -g / g.norm()

        def objective(x):
            z = solve_equilibrium(prob.f, x, prob.z0(x), tol=1e-12, max_iter=400)
            return float(prob.loss(z, x).sum())

        slope = float((g * d).sum())
        quotients = [(objective(x + h * d) - objective(x - h * d)) / (2 * h) for h in (1e-5, 1e-3)]
        assert quotients[0] == pytest.approx(slope, rel=1e-5)
        drift[path] = abs(quotients[1] - slope) / abs(slope)
    assert load_decoder(SMOOTH_WEIGHTS).cfg.activation == "softplus"
    assert drift[SMOOTH_WEIGHTS] < 1e-3 < drift[SCIKIT_WEIGHTS]


def test_tuning_on_validation_crops(model):
    """``tune_task`` / ``tune_naive_lr`` score every value on the crops they are given (PSNR, final objective)."""
    from problems.imaging.bench import TASKS, make_observation, tune_naive_lr, tune_task

    crops = validation_crops(32)[:2]
    fast = TaskConfig(augmented=AugmentedConfig(max_iter=10, solver_options={"m": 5}, backward="jfb"),
                      naive=NaiveConfig(lr=0.05, steps=3))
    by_lam, by_tv = tune_task(model, TASKS[0], (1.0, 10.0), (0.05, 0.2), crops, cfg=fast)
    assert set(by_lam) == {1.0, 10.0} and set(by_tv) == {0.05, 0.2}
    assert all(10 < v < 40 for v in (*by_lam.values(), *by_tv.values()))
    by_lr = tune_naive_lr(model, TASKS[0], (0.0, 0.05), crops, cfg=fast)
    # learning rate 0 leaves the latent at its start: the score is the mean starting objective
    starts = []
    for _, img in crops:
        y, mask = make_observation(img, TASKS[0])
        prob = make_problem(model, y, mask, replace(fast, lam=TASKS[0].lam, sigma=TASKS[0].sigma))
        starts.append(float(prob.objective(prob.x0()).sum()))
    assert by_lr[0.0] == pytest.approx(np.mean(starts), rel=1e-5)
    assert np.isfinite(by_lr[0.05]) and by_lr[0.05] != by_lr[0.0]


def test_anderson_memory_follows_the_task_unless_set(model, monkeypatch):
    import problems.imaging.tasks as tasks

    seen = []
    real = tasks.augmented_solve

    def spy(*args, **kwargs):
        seen.append(args[5].solver_options.get("m"))
        return real(*args, **kwargs)

    monkeypatch.setattr(tasks, "augmented_solve", spy)
    img = center_crop(load_image("coins"), 16)
    short = replace(tasks.AUGMENTED_DEFAULT, max_iter=2, settle_iters=1)
    tasks.restore_augmented(model, img, None, TaskConfig(sigma=0.2, augmented=short))
    tasks.restore_augmented(model, img, block_mask(img.shape, 8, 0.25), TaskConfig(augmented=short))
    pinned = replace(short, solver_options={"m": 3})
    tasks.restore_augmented(model, img, None, TaskConfig(sigma=0.2, augmented=pinned))
    assert seen == [tasks.ANDERSON_MEMORY["denoise"], tasks.ANDERSON_MEMORY["inpaint"], 3]


def test_diagnostics_example_runs_a_section_and_rejects_unknown_ones():
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "examples" / "imaging_diagnostics.py"
    ok = subprocess.run([sys.executable, str(script), "--sections", "encoder"], capture_output=True, text=True,
                        timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.count("encoder alone") == 3
    bad = subprocess.run([sys.executable, str(script), "--sections", "nope"], capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode != 0 and "unknown section 'nope'" in bad.stderr
