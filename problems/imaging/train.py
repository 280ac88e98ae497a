"""Train the shipped DEQ decoder and its amortised encoder on corrupted patches (implicit gradients).

``python -m problems.imaging.train --minutes 45 --out data/imaging/deq_decoder.safetensors``

Each clean patch ``p`` is corrupted by :func:`corrupt` (Gaussian noise of a random level, and for some
patches missing 8x8 blocks); with ``y, m, sigma`` the observation, mask and level the loss per batch is
``mean ||h(z*(E(y, m, sigma))) - p||^2 + latent_weight * mean ||E(y, m, sigma)||^2`` (the latent penalty
keeps latents on a fixed scale). The weights are saved atomically every ``save_every`` minutes, so an
interrupted run loses at most that much (resume with ``--init``).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
import typer
from torch import Tensor

import fpntools
from fpntools.augmented import AugmentedMap, AugmentedResult, augmented_solve
from problems.imaging.data import TEST_IMAGES, TRAIN_IMAGES, PatchSampler, center_crop, load_image, psnr
from problems.imaging.model import DEFAULT_WEIGHTS, DecoderConfig, DEQDecoder, save_decoder
from problems.imaging.tasks import LatentProblem, TaskConfig, joint_config, lam_for_sigma

__all__ = ["TrainConfig", "Corruption", "corrupt", "heldout_psnr", "JointBatch", "joint_batch_loss", "train_decoder"]


@dataclass
class TrainConfig:
    """Training options (wall-clock budget ``minutes``; ``steps`` caps the number of batches). ``jac_weight``
    > 0 adds the Jacobian penalty ``jac_weight * ||J_f(z*)||_F^2 / N`` (Bai, Koltun, Kolter 2021; one Hutchinson
    sample, applied with probability ``jac_prob`` per batch), which keeps the equilibrium easy to solve.
    ``activation`` (with ``init``) switches the loaded weights to another activation before fine-tuning.

    Training through the joint fixed point (Gurumurthy et al.): a fraction ``joint_fraction`` of the batches are
    inpainting observations (every patch has missing blocks, no noise) restored by the augmented solve itself --
    the latent problem of :mod:`problems.imaging.tasks` with the prior weight of noiseless inpainting, started at
    the encoder's estimate, ``joint_iters`` joint iterations after the settle stage -- and the loss is
    ``mean ||h(z_K) - p||^2`` of the joint solve's end point, differentiated by ``joint_backward`` (``"jfb"``:
    one differentiated application of the joint map; ``"implicit"``: the implicit backward of the joint fixed
    point, second order). The decoder learns latent problems that the joint solve finishes in ``joint_iters``."""

    patch: int = 32
    batch: int = 32
    lr: float = 2e-3
    minutes: float = 8.0
    steps: int = 100000
    latent_weight: float = 1e-3
    fwd_tol: float = 1e-3
    fwd_max_iter: int = 20
    bwd_tol: float = 1e-3
    bwd_max_iter: int = 20
    seed: int = 0
    threads: int = 1
    init: str | None = None
    save_every: float = 5.0
    jac_weight: float = 0.0
    jac_prob: float = 1.0
    activation: str | None = None
    joint_fraction: float = 0.0
    joint_iters: int = 50
    joint_backward: str = "jfb"
    joint_residual_weight: float = 0.0
    log_every: int = 100

    def __post_init__(self) -> None:
        if not 0.0 <= self.joint_fraction <= 1.0:
            raise ValueError(f"joint_fraction must lie in [0, 1], got {self.joint_fraction}")
        if self.joint_iters < 1:
            raise ValueError(f"joint_iters must be at least 1, got {self.joint_iters}")
        if self.joint_residual_weight < 0:
            raise ValueError(f"joint_residual_weight must be nonnegative, got {self.joint_residual_weight}")
        if self.joint_backward not in ("jfb", "implicit"):
            raise ValueError(f"joint_backward must be 'jfb' or 'implicit', got {self.joint_backward!r}")


@dataclass(frozen=True)
class Corruption:
    """Training corruptions: with probability ``p_clean`` a patch is clean (latent fitting), otherwise noisy
    with ``sigma ~ U(0, sigma_max)``; independently, with probability ``p_mask`` a random ``fraction`` in
    ``fraction_range`` of the ``block x block`` cells (random grid offset) is missing."""

    p_clean: float = 0.15
    sigma_max: float = 0.5
    p_mask: float = 0.35
    block: int = 8
    fraction_range: tuple[float, float] = (0.1, 0.4)


def corrupt(p: Tensor, rng: np.random.Generator, c: Corruption = Corruption()) -> tuple[Tensor, Tensor, Tensor]:
    """Observations ``(y, mask, sigma)`` for clean patches ``p`` ``(B, 1, S, S)``; missing pixels of ``y`` are 0."""
    b, _, h, w = p.shape
    sigma = np.where(rng.random(b) < c.p_clean, 0.0, rng.uniform(0, c.sigma_max, b))
    mask = np.ones((b, 1, h, w), dtype=np.float32)
    for k in np.flatnonzero(rng.random(b) < c.p_mask):
        gh, gw = h // c.block + 2, w // c.block + 2
        cells = rng.random((gh, gw)) < rng.uniform(*c.fraction_range)
        full = np.kron(cells, np.ones((c.block, c.block)))
        i, j = rng.integers(c.block), rng.integers(c.block)
        mask[k, 0] = 1.0 - full[i : i + h, j : j + w]
    s = torch.as_tensor(sigma, dtype=p.dtype)
    m = torch.from_numpy(mask).to(p.dtype)
    noise = torch.from_numpy(rng.standard_normal(p.shape)).to(p.dtype)
    return (p + s.view(-1, 1, 1, 1) * noise) * m, m, s


@dataclass
class JointBatch:
    """Loss terms of a batch restored by the joint solve: ``mse`` of ``h(z_K)`` against the clean patches, the
    Jacobian penalty (or ``None``), the squared joint residual ``||G(s_K) - s_K||^2 / N`` at the end state (or
    ``None`` when not asked for), the joint steps taken and the solve's :class:`AugmentedResult` (residuals at
    the end state)."""

    mse: Tensor
    jacobian_loss: Tensor | None
    residual_loss: Tensor | None
    steps: int
    result: AugmentedResult


def joint_batch_loss(
    model: DEQDecoder, p: Tensor, y: Tensor, m: Tensor, cfg: TrainConfig, penalty=None
) -> JointBatch:
    """Loss terms of one batch restored by the augmented joint solve (noiseless inpainting observations ``y``,
    known pixels ``m``, clean patches ``p``).

    The prior is centred on the encoder's (detached) estimate with weight ``lam_for_sigma(0)``; gradients reach
    the decoder through ``cfg.joint_backward``. With ``cfg.joint_residual_weight > 0`` the joint map ``G`` is
    applied once more at the (detached) end state ``s_K = (z, x, mu)``, differentiably in the weights, and
    ``||G(s_K) - s_K||^2 / N`` (DEQ, adjoint and ``alpha``-scaled input-gradient residuals) is returned: a
    penalty on joint solves that have not converged after ``joint_iters`` iterations."""
    with torch.no_grad():
        x_hat = model.encode(y, m, 0.0)
    task = TaskConfig(lam=lam_for_sigma(0.0))
    prob = LatentProblem(model, y, m, lam=task.lam, x_prior=x_hat)
    backward = fpntools.Implicit(tol=1e-4, max_iter=50) if cfg.joint_backward == "implicit" else "jfb"
    solver_cfg = replace(joint_config(task, inpainting=True), max_iter=cfg.joint_iters, backward=backward,
                         jacobian_penalty=penalty)
    alpha = solver_cfg.step_size
    res = augmented_solve(prob.f, prob.loss, x_hat, prob.z0(x_hat), None, solver_cfg)
    mse = ((model.head(res.z) - p) ** 2).mean()
    residual = None
    if cfg.joint_residual_weight > 0:
        z, x, mu = res.z.detach(), res.x.detach(), res.mu.detach()
        ev = AugmentedMap(prob.f, prob.loss, alpha).evaluate(z, x, mu)
        sq = (ev.fz - z).pow(2).sum() + (ev.mu_next - mu).pow(2).sum() + (alpha * ev.grad_x).pow(2).sum()
        residual = cfg.joint_residual_weight * sq / z.numel()
    return JointBatch(mse, res.jacobian_loss, residual, int(res.info.steps.max()), res)


def _ema(avg: float | None, value: Tensor, decay: float) -> float:
    """Exponential moving average for progress lines (``value`` detached)."""
    v = float(value.detach())
    return v if avg is None else decay * avg + (1 - decay) * v


def heldout_psnr(model: DEQDecoder, deq: fpntools.FixedPoint, sigma: float = 0.0, size: int = 96) -> float:
    """Mean PSNR of the amortised restoration ``h(z*(E(y)))`` of the held-out central crops at noise ``sigma``
    (0: autoencoding); a report, never used for selection."""
    model.eval()
    vals = []
    rng = np.random.default_rng(0)
    with torch.no_grad():
        for name in TEST_IMAGES:
            img = center_crop(load_image(name), size)
            t = torch.from_numpy(img + sigma * rng.standard_normal(img.shape)).float()[None, None]
            x = model.encode(t, None, sigma)
            z, _ = deq(x, z0=model.initial_state(x))
            vals.append(psnr(model.head(z)[0, 0].numpy(), img))
    model.train()
    return float(np.mean(vals))


def train_decoder(
    cfg: TrainConfig, model_cfg: DecoderConfig, out: str, log: bool = True, corruption: Corruption = Corruption()
) -> dict:
    """Train and save; returns a summary (steps, patches seen, seconds, held-out PSNRs)."""
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    sampler = PatchSampler([load_image(n) for n in TRAIN_IMAGES], cfg.patch, cfg.seed)
    model = DEQDecoder(model_cfg)
    prior_steps = 0
    if cfg.init is not None:  # resume from saved weights
        import json

        from safetensors import safe_open

        from problems.imaging.model import load_decoder

        model = load_decoder(cfg.init).train()
        if cfg.activation is not None and cfg.activation != model.cfg.activation:
            # fine-tune the same weights under another activation (e.g. relu -> softplus for a smooth decoder)
            state = model.state_dict()
            model = DEQDecoder(replace(model.cfg, activation=cfg.activation)).train()
            model.load_state_dict(state)
        with safe_open(cfg.init, framework="pt") as fh:
            prev = json.loads((fh.metadata() or {}).get("summary", "{}"))
        prior_steps = int(prev.get("total_steps", prev.get("steps", 0)))
        sampler = PatchSampler(sampler.images, cfg.patch, cfg.seed + prior_steps)
    rng = np.random.default_rng([cfg.seed, prior_steps])
    penalty = None
    if cfg.jac_weight > 0:
        from fpntools.regularization import JacobianPenalty

        penalty = JacobianPenalty(weight=cfg.jac_weight, p=cfg.jac_prob,
                                  generator=torch.Generator().manual_seed(cfg.seed))
    deq = fpntools.FixedPoint(
        model.layer, "anderson", fpntools.Implicit(tol=cfg.bwd_tol, max_iter=cfg.bwd_max_iter),
        tol=cfg.fwd_tol, max_iter=cfg.fwd_max_iter, m=5, jacobian_penalty=penalty,
    )
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    t0 = time.perf_counter()
    budget = cfg.minutes * 60
    step = 0
    ema = joint_ema = res_ema = None
    n_joint = joint_steps = 0
    last_save = t0

    def summary() -> dict:
        return {
            "steps": step, "total_steps": prior_steps + step, "patches": step * cfg.batch, "joint_batches": n_joint,
            "seconds": round(time.perf_counter() - t0, 1), "train": asdict(cfg), "corruption": asdict(corruption),
        }

    while step < cfg.steps and time.perf_counter() - t0 < budget:
        frac = (time.perf_counter() - t0) / budget
        for g in opt.param_groups:
            g["lr"] = cfg.lr * (0.1 if frac > 0.85 else 1.0)
        p = sampler.sample(cfg.batch)
        joint = cfg.joint_fraction > 0 and rng.random() < cfg.joint_fraction
        if joint:  # through the augmented joint solve, on noiseless inpainting observations
            y, m, _ = corrupt(p, rng, replace(corruption, p_clean=1.0, p_mask=1.0))
            jb = joint_batch_loss(model, p, y, m, cfg, penalty)
            mse, joint_steps = jb.mse, jb.steps
            loss = mse + sum(t for t in (jb.jacobian_loss, jb.residual_loss) if t is not None)
            if jb.residual_loss is not None:
                res_ema = _ema(res_ema, jb.residual_loss, 0.95)
            n_joint += 1
            joint_ema = _ema(joint_ema, mse, 0.95)
        else:
            y, m, s = corrupt(p, rng, corruption)
            x = model.encode(y, m, s)
            z, info = deq(x, z0=model.initial_state(x))
            rec = model.head(z)
            mse = ((rec - p) ** 2).mean()
            loss = mse + cfg.latent_weight * (x**2).mean()
            if info.jacobian_loss is not None:
                loss = loss + info.jacobian_loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if not joint:
            ema = _ema(ema, mse, 0.98)
        if log and step % cfg.log_every == 0:
            parts = [f"step {step} {time.perf_counter() - t0:.0f}s"]
            if ema is not None:
                parts.append(
                    f"mse {ema:.5f} ({-10 * np.log10(ema):.2f} dB) fwd steps {int(info.steps.max())} "
                    f"|x| {float(x.detach().pow(2).mean()):.3f}"
                    + ("" if info.jacobian_loss is None else f" jac {float(info.jacobian_loss.detach()):.2e}")
                )
            if joint_ema is not None:
                parts.append(f"{n_joint} joint batches: mse {joint_ema:.5f} ({-10 * np.log10(joint_ema):.2f} dB), "
                             f"joint steps {joint_steps}" + ("" if res_ema is None else f", residual {res_ema:.2e}"))
            print(" | ".join(parts), flush=True)
        if time.perf_counter() - last_save > cfg.save_every * 60:
            save_decoder(model, out, {"summary": summary()})
            last_save = time.perf_counter()
    final = summary()
    final["heldout_psnr"] = {f"sigma={s}": round(heldout_psnr(model, deq, s), 2) for s in (0.0, 0.2, 0.4)}
    save_decoder(model, out, {"summary": final})
    if log:
        print(final)
    return final


def main(
    minutes: float = typer.Option(10.0, help="wall-clock training budget"),
    steps: int = typer.Option(2000, help="number of batches (of 32 patches 32x32)"),
    out: str = typer.Option(str(DEFAULT_WEIGHTS), help="output .safetensors"),
    channels: int = typer.Option(DecoderConfig.channels),
    latent_channels: int = typer.Option(DecoderConfig.latent_channels),
    encoder_width: int = typer.Option(DecoderConfig.encoder_width),
    latent_weight: float = typer.Option(1e-3),
    lr: float = typer.Option(TrainConfig.lr, help="Adam learning rate (x0.1 for the last 15% of the run)"),
    seed: int = typer.Option(0),
    init: str = typer.Option("", help="resume from these weights"),
    jac_weight: float = typer.Option(0.0, help="Jacobian penalty weight (0: off)"),
    jac_prob: float = typer.Option(1.0, help="probability of applying the Jacobian penalty per batch"),
    activation: str = typer.Option(
        "", help="relu or softplus (default: relu, or that of the --init weights, which this switches)"
    ),
    joint_fraction: float = typer.Option(0.0, help="fraction of batches trained through the joint solve (0: off)"),
    joint_iters: int = typer.Option(TrainConfig.joint_iters, help="joint iterations per joint batch"),
    joint_backward: str = typer.Option(TrainConfig.joint_backward, help="jfb or implicit"),
    joint_residual_weight: float = typer.Option(
        0.0, help="weight of the squared joint residual at the end of each joint batch (0: off)"
    ),
    log_every: int = typer.Option(TrainConfig.log_every, help="print a progress line every this many batches"),
) -> None:
    """Train the DEQ patch decoder."""
    train_decoder(
        TrainConfig(minutes=minutes, steps=steps, lr=lr, latent_weight=latent_weight, seed=seed, init=init or None,
                    jac_weight=jac_weight, jac_prob=jac_prob, activation=activation or None,
                    joint_fraction=joint_fraction, joint_iters=joint_iters, joint_backward=joint_backward,
                    joint_residual_weight=joint_residual_weight,
                    log_every=log_every),
        DecoderConfig(channels=channels, latent_channels=latent_channels, encoder_width=encoder_width,
                      activation=activation or "relu"),
        out,
    )


if __name__ == "__main__":
    typer.run(main)
