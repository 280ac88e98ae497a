"""Diagnostics behind the figures of docs/imaging.md that the benchmark table does not print.

Run: OMP_NUM_THREADS=1 python examples/imaging_diagnostics.py [--weights W.safetensors] [--sections a,b,...]

Sections:
* ``conditioning``: the decoder's equilibrium: ``||J_f(z*)||_F^2 / N`` (Hutchinson, 4 samples) and mean Anderson
  steps to relative residual 1e-5 on 32 corrupted training patches; Picard and Anderson steps to 1e-6 at the
  encoder's latent of the camera inpainting task.
* ``encoder``: mean PSNR of the encoder's estimate alone on the validation crops, per benchmark task.
* ``tv_oracle``: on the benchmark's test crops, TV with the weight that is best on each crop (0.05 ... 1 in steps
  of 0.05) against the augmented restoration.
* ``from_naive``: camera inpainting: the joint solve started at the naive method's solution, with and without
  the settle stage, and at the encoder's latent (objective every 25 iterations), to tell a different local
  minimum from slow convergence.
* ``stagnation``: camera and coins inpainting: where the joint solve stops (status, input-gradient norm, DEQ
  residual), the objective split into data and prior terms for it and for the naive method, Adam with the naive
  method's settings continued from the joint solve's end point, and the joint solve run to 1000 iterations.
* ``smoothness``: camera inpainting, in float64 at the joint solve's end point: the adjoint gradient's
  directional derivative along ``-g / ||g||`` against central difference quotients of the objective with steps
  1e-5 ... 1e-2 (they agree to O(h^2) on a smooth objective; relu kinks make them drift at tiny steps).
* ``cost``: milliseconds per call (median of 30) of the DEQ layer, the layer with its vector-Jacobian product,
  the objective with its gradient (decoder head at full resolution), one joint iteration, and one Anderson step
  (memory 20) on the stacked state, for camera inpainting.
* ``memory``: time to the naive method's final objective for Anderson memory 5 / 10 / 20 on the first three
  validation crops (denoising), and the final objective of memory 5 / 20 / 40 on four crops (inpainting).
* ``spectrum``: camera and coins inpainting: Ritz values of the Hessian of the latent objective at the naive
  method's solution (40 Lanczos steps from a random vector, Hessian-vector products by central differences of
  the float64 adjoint gradient), the weight of the prior-dominated bulk, and how many Ritz values exceed
  ``2 / alpha`` (directions in which the joint step is expansive, left to Anderson to stabilise).
* ``prior_weight``: the inpainting benchmark rows at prior weights 0.1 (the benchmark's), 0.3 and 1 (time to the
  naive method's final objective, 3 runs): how the joint solve's reach depends on the conditioning.
* ``validation_reach``: the inpainting benchmark row (one run) on each validation crop: naive steps and joint
  iterations to the naive method's final objective, speedup, final objectives and PSNR; for choosing decoder
  weights (e.g. checkpoints of training through the joint solve) without looking at the test crops.
* ``steps``: camera and coins inpainting: final objective of the joint solve for joint steps 1 / (lam + 3), 0.2,
  0.1, 1/30 and Anderson memories 20 ... 80, against the naive method's final objective.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np
import torch

import fpntools
from fpntools.augmented import (
    AugmentedMap,
    Counter,
    augmented_solve,
    input_gradient,
    naive_solve,
    solve_equilibrium,
)
from fpntools.metrics import psnr
from fpntools.operators import lanczos
from fpntools.regularization import jacobian_frobenius
from problems.imaging.bench import TASKS, make_observation, run_task
from problems.imaging.data import TRAIN_IMAGES, PatchSampler, center_crop, load_image, validation_crops
from problems.imaging.model import SCIKIT_WEIGHTS, load_decoder
from problems.imaging.tasks import (
    AUGMENTED_DEFAULT,
    TaskConfig,
    keep_known,
    make_problem,
    restore_amortized,
    restore_augmented,
    restore_naive,
    step_for_lam,
    tv_denoise,
    tv_inpaint,
)
from problems.imaging.train import Corruption, corrupt

SECTIONS = (
    "conditioning", "encoder", "tv_oracle", "from_naive", "stagnation", "smoothness", "cost", "memory", "spectrum",
    "prior_weight", "steps", "validation_reach",
)


def task_config(task) -> TaskConfig:
    """The benchmark's settings for ``task`` (as in :func:`problems.imaging.bench.run_task`)."""
    cfg = TaskConfig(lam=task.lam, sigma=task.sigma)
    return replace(cfg, naive=replace(cfg.naive, lr=task.naive_lr))


def conditioning(model) -> None:
    patches = PatchSampler([load_image(n) for n in TRAIN_IMAGES], 32, 1).sample(32)
    y, m, s = corrupt(patches, np.random.default_rng(0), Corruption())
    with torch.no_grad():
        x = model.encode(y, m, s)
        z, info = fpntools.fixed_point(lambda z: model.layer(z, x), model.initial_state(x), "anderson", "jfb",
                                       tol=1e-5, max_iter=300)
    z = z.detach().requires_grad_()
    jf = jacobian_frobenius(model.layer(z, x), z, n_samples=4, normalize=True,
                            generator=torch.Generator().manual_seed(0))
    print(f"training patches: ||J_f||_F^2 / N = {float(jf.detach()):.3f}, Anderson steps to 1e-5: mean "
          f"{float(info.steps.float().mean()):.1f} ({int(info.converged.sum())}/32 converged)")
    img = center_crop(load_image("camera"), 96)
    y, mask = make_observation(img, TASKS[2])
    prob = make_problem(model, y, mask, task_config(TASKS[2]))
    x = prob.x0()
    for solver in ("picard", "anderson"):
        with torch.no_grad():
            _, info = fpntools.fixed_point(lambda z: prob.f(z, x), prob.z0(x), solver, "jfb", tol=1e-6, max_iter=300)
        print(f"camera inpainting latent, {solver}: {info.summary()}")


def encoder(model) -> None:
    crops = validation_crops(96)
    for task in TASKS:
        vals = []
        for _, img in crops:
            y, mask = make_observation(img, task)
            out = keep_known(restore_amortized(model, y, mask, task_config(task)), y, mask, task.sigma)
            vals.append(float(psnr(np.clip(out, 0, 1), img)))
        print(f"{task.name}: encoder alone {np.mean(vals):.2f} dB (mean of {len(crops)} validation crops)")


def tv_oracle(model) -> None:
    weights = np.round(np.arange(0.05, 1.0001, 0.05), 2)
    for name in ("camera", "coins"):
        img = center_crop(load_image(name), 96)
        for task in TASKS:
            y, mask = make_observation(img, task)
            out, _ = restore_augmented(model, y, mask, task_config(task))
            tv = {}
            for w in weights:
                u = tv_denoise(y, w) if mask is None else tv_inpaint(y, mask, w)
                tv[w] = float(psnr(np.clip(u, 0, 1), img))
            best = max(tv, key=tv.get)
            db = float(psnr(np.clip(keep_known(out, y, mask, task.sigma), 0, 1), img))
            print(f"{name} {task.name}: augmented {db:.3f} dB, "
                  f"TV oracle {tv[best]:.3f} dB (weight {best:g})")


def from_naive(model) -> None:
    task = TASKS[2]
    img = center_crop(load_image("camera"), 96)
    y, mask = make_observation(img, task)
    cfg = task_config(task)
    prob = make_problem(model, y, mask, cfg)
    _, naive = restore_naive(model, y, mask, cfg)
    print(f"camera inpainting: naive final objective {float(prob.objective(naive.x).sum()):.4f}")
    runs = (("naive solution", naive.x.detach(), AUGMENTED_DEFAULT.settle_iters),
            ("naive solution without the settle stage", naive.x.detach(), 0),
            ("encoder latent", prob.x0(), AUGMENTED_DEFAULT.settle_iters))
    for name, x0, settle in runs:
        counter = Counter(record_every=25)
        counter.start()
        solver_cfg = replace(AUGMENTED_DEFAULT, step_size=step_for_lam(prob.lam), settle_iters=settle,
                             solver_options={"m": 20, "beta": 1.0})
        with torch.no_grad():
            augmented_solve(prob.f, prob.loss, x0, prob.z0(x0), None, solver_cfg, counter=counter)
        curve = [round(float(prob.objective(s.x).sum()), 4) for s in counter.snapshots]
        print(f"  joint solve from the {name}: objective every 25 iterations {curve}")


def _split(prob, x) -> tuple[float, float]:
    """Data term and prior term of the objective at ``x`` (accurate equilibrium)."""
    z = solve_equilibrium(prob.f, x.detach(), prob.z0(x), tol=1e-6, max_iter=150)
    with torch.no_grad():
        r = (prob.model.head(z) - prob.y) * prob.mask
        return float(0.5 * r.pow(2).sum()), float(0.5 * prob.lam * (x - prob.x_prior).pow(2).sum())


def _inpainting_cases():
    """``(name, y, mask, cfg)`` of the benchmark's inpainting task on the camera and coins test crops."""
    task = TASKS[2]
    for name in ("camera", "coins"):
        y, mask = make_observation(center_crop(load_image(name), 96), task)
        yield name, y, mask, task_config(task)


def stagnation(model) -> None:
    for name, y, mask, cfg in _inpainting_cases():
        prob = make_problem(model, y, mask, cfg)
        _, naive = restore_naive(model, y, mask, cfg)
        _, joint = restore_augmented(model, y, mask, cfg)
        for label, x in (("naive", naive.x), ("joint", joint.x)):
            data, prior = _split(prob, x)
            print(f"{name} inpainting, {label}: objective {data + prior:.4f} = data {data:.4f} + prior {prior:.4f}")
        print(f"  joint solve: {joint.info.summary()}; ||grad L|| {float(joint.grad_norm.max()):.3g}, DEQ residual "
              f"{float(joint.deq_residual.max()):.3g}")
        x0 = joint.x.detach()
        cont = naive_solve(prob.f, prob.loss, x0, prob.z0(x0), None, cfg.naive)
        print(f"  Adam (the naive settings, {cfg.naive.steps} steps) from the joint end point: objective "
              f"{float(prob.objective(cont.x).sum()):.4f}")
        long_cfg = replace(cfg, augmented=replace(cfg.augmented, max_iter=1000))
        counter = Counter(record_every=100)
        counter.start()
        restore_augmented(model, y, mask, long_cfg, counter)
        curve = [round(float(prob.objective(s.x).sum()), 4) for s in counter.snapshots]
        print(f"  joint solve to 1000 iterations: objective every 100 iterations {curve}", flush=True)


def smoothness(model) -> None:
    _, y, mask, cfg = next(_inpainting_cases())  # camera
    _, joint = restore_augmented(model, y, mask, cfg)
    prob = make_problem(model, y, mask, cfg).to(torch.float64)
    x = joint.x.detach().double()

    def objective(x):
        z = solve_equilibrium(prob.f, x, prob.z0(x), tol=1e-11, max_iter=500)
        with torch.no_grad():
            return float(prob.loss(z, x).sum())

    lval, g, _, _ = input_gradient(prob.f, prob.loss, x, prob.z0(x), tol=1e-11, max_iter=500, backward_tol=1e-11,
                                   backward_max_iter=500)
    d = -g / g.norm()
    print(f"camera inpainting, joint end point (float64): objective {float(lval.sum()):.6f}, ||grad L|| "
          f"{float(g.norm()):.4f}, directional derivative along -g/||g||: {float((g * d).sum()):.6f}")
    quotients = {h: (objective(x + h * d) - objective(x - h * d)) / (2 * h) for h in (1e-5, 1e-4, 1e-3, 1e-2)}
    print("  central difference quotients: " + ", ".join(f"h={h:g}: {q:.6f}" for h, q in quotients.items()))


def _ms(fn, n: int = 30) -> float:
    fn()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * float(np.median(times))


def cost(model) -> None:
    _, y, mask, cfg = next(_inpainting_cases())  # camera
    prob = make_problem(model, y, mask, cfg)
    x = prob.x0()
    z = solve_equilibrium(prob.f, x, prob.z0(x))
    mu = torch.randn_like(z)

    def vjp(fn):
        def run():
            with torch.enable_grad():
                zz, xx = z.detach().requires_grad_(), x.detach().requires_grad_()
                torch.autograd.grad(fn(zz, xx), (zz, xx), allow_unused=True)
        return run

    gmap = AugmentedMap(prob.f, prob.loss, step_for_lam(prob.lam))
    state = torch.cat([z.flatten(1), x.flatten(1), mu.flatten(1)], 1)
    anderson = fpntools.Anderson(m=20)
    mem = anderson.init(state)
    for k in range(20):
        _, mem = anderson.step(state + 1e-3 * k, state + torch.randn_like(state), mem, k)
    with torch.no_grad():
        rows = {
            "layer f(z, x)": _ms(lambda: prob.f(z, x)),
            "layer + vector-Jacobian product": _ms(vjp(lambda zz, xx: (prob.f(zz, xx) * mu).sum())),
            "objective + gradient (head at full resolution)": _ms(vjp(lambda zz, xx: prob.loss(zz, xx).sum())),
            "one joint iteration (layer, objective, one backward)": _ms(lambda: gmap((z, x, mu))),
            f"one Anderson step, memory 20, state of {state.shape[1]} numbers": _ms(
                lambda: anderson.step(state, state, mem, 20)),
        }
    for name, ms in rows.items():
        print(f"camera inpainting, {name}: {ms:.2f} ms")


def memory(model) -> None:
    crops = validation_crops(96)
    for task, names, ms in ((TASKS[0], crops[:3], (5, 10, 20)), (TASKS[1], crops[:3], (5, 10, 20)),
                            (TASKS[2], crops[:2] + crops[5:7], (5, 20, 40))):
        for name, img in names:
            for m in ms:
                base = TaskConfig()
                cfg = replace(base, augmented=replace(base.augmented, solver_options={"m": m, "beta": 1.0}))
                r = run_task(model, img, name, task, cfg, repeats=1)
                aug = "not reached" if r.aug_time is None else f"{r.aug_time:.2f} s"
                print(f"{task.name} {name} memory {m}: naive {r.naive_time:.2f} s, augmented {aug}, final objective "
                      f"{r.aug_final:.4f} (target {r.target:.4f})", flush=True)


def spectrum(model) -> None:
    task = TASKS[2]
    for name, y, mask, cfg in _inpainting_cases():
        _, naive = restore_naive(model, y, mask, cfg)
        prob = make_problem(model, y, mask, cfg).to(torch.float64)
        x = naive.x.detach().double()
        state = {"z": prob.z0(x), "mu": None}

        def grad(xx):
            _, g, z, mu = input_gradient(prob.f, prob.loss, xx, state["z"], tol=1e-11, max_iter=500,
                                         backward_tol=1e-11, backward_max_iter=500, mu0=state["mu"])
            state["z"], state["mu"] = z, mu
            return g

        g0 = grad(x)
        eps = 1e-3  # central differences of the float64 adjoint gradient: Hessian-vector products to O(eps^2)
        hvp = lambda v: (grad(x + eps * v) - grad(x - eps * v)) / (2 * eps)  # noqa: E731
        v0 = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        res = lanczos(hvp, v0, steps=40)
        ritz, weights = res.ritz_values, res.weights
        alpha = step_for_lam(task.lam)
        bulk = float(weights[ritz < 2 * task.lam].sum())
        print(f"{name} inpainting, Hessian of L at the naive solution (float64, ||grad L|| {float(g0.norm()):.3g}, "
              f"{res.steps} Lanczos steps from a random vector): smallest Ritz values "
              f"{[round(float(v), 3) for v in ritz[:4]]}, largest {[round(float(v), 2) for v in ritz[-3:]]}, "
              f"max/min {res.condition_estimate:.0f}; weight of Ritz values below 2 lam = {2 * task.lam:g}: {bulk:.2f}; "
              f"{int((ritz > 2 / alpha).sum())} Ritz values above 2 / alpha = {2 / alpha:.1f} (joint step "
              f"alpha = {alpha:.3f} expands those directions)", flush=True)


def prior_weight(model) -> None:
    for lam in (0.1, 0.3, 1.0):
        task = replace(TASKS[2], lam=lam)
        for name in ("camera", "coins"):
            img = center_crop(load_image(name), 96)
            r = run_task(model, img, name, task, TaskConfig(), repeats=3)
            aug = "not reached" if r.aug_time is None else f"{r.aug_time:.2f} s ({r.aug_nloss} iterations)"
            speed = "" if r.speedup is None else f", speedup {r.speedup:.1f}x"
            print(f"inpainting lam {lam:g}, {name}: naive {r.naive_time:.2f} s ({r.naive_nloss} steps), augmented "
                  f"{aug}{speed}; final objective naive {r.extra['naive_final']:.4f} / augmented {r.aug_final:.4f}; "
                  f"PSNR naive {r.psnr_naive:.2f} / augmented {r.psnr_augmented:.2f} dB", flush=True)


def steps(model) -> None:
    task = TASKS[2]
    grid = ((step_for_lam(task.lam), 20), (0.2, 20), (0.2, 60), (0.1, 40), (0.1, 80), (1 / 30, 20), (1 / 30, 80))
    for name, y, mask, cfg in _inpainting_cases():
        prob = make_problem(model, y, mask, cfg)
        _, naive = restore_naive(model, y, mask, cfg)
        target = float(prob.objective(naive.x).sum())
        for alpha, m in grid:
            c = replace(cfg, step_size=alpha, augmented=replace(cfg.augmented, solver_options={"m": m, "beta": 1.0}))
            _, joint = restore_augmented(model, y, mask, c)
            print(f"{name} inpainting, joint step {alpha:.3f}, Anderson memory {m}: final objective "
                  f"{float(prob.objective(joint.x).sum()):.4f} (naive final {target:.4f}), relative residual "
                  f"{float(joint.info.rel_residual.max()):.1e}", flush=True)


def validation_reach(model) -> None:
    ratios = []
    for name, img in validation_crops(96):
        r = run_task(model, img, name, TASKS[2], TaskConfig(), repeats=1)
        ratios.append(float("inf") if r.aug_nloss is None else r.aug_nloss / max(r.naive_nloss, 1))
        aug = "not reached" if r.aug_time is None else f"{r.aug_nloss} iterations, {r.aug_time:.2f} s, {r.speedup:.2f}x"
        print(f"inpainting {name}: naive {r.naive_nloss} steps, {r.naive_time:.2f} s; augmented {aug}; final objective "
              f"{r.extra['naive_final']:.4f} / {r.aug_final:.4f}; PSNR {r.psnr_naive:.2f} / {r.psnr_augmented:.2f} dB",
              flush=True)
    reached = sum(np.isfinite(ratios))
    print(f"reached on {reached} of {len(ratios)} crops; median joint iterations / naive steps "
          f"{float(np.median(ratios)):.2f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default=None, help="decoder weights (default: the first shipped ones, data/imaging/deq_decoder.safetensors)")
    ap.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated: " + ", ".join(SECTIONS))
    args = ap.parse_args()
    sections = args.sections.split(",")
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        raise SystemExit(f"unknown section {unknown[0]!r}; choose from {', '.join(SECTIONS)}")
    torch.set_num_threads(1)
    model = load_decoder(args.weights or SCIKIT_WEIGHTS)
    for p in model.parameters():
        p.requires_grad_(False)
    for section in sections:
        print(f"== {section}", flush=True)
        globals()[section](model)


if __name__ == "__main__":
    main()
