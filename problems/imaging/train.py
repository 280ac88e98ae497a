"""Train the shipped DEQ decoder as a patch autoencoder (encoder + DEQ decoder, implicit gradients).

``python -m problems.imaging.train --minutes 8 --out data/imaging/deq_decoder.safetensors``

Loss per batch of ``P`` patches: ``mean ||h(z*(E(p))) - p||^2 + latent_weight * mean ||E(p)||^2``; the
latent penalty keeps latents on the scale of the Gaussian prior used at inference.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import typer

import fpntools
from problems.imaging.data import TEST_IMAGES, TRAIN_IMAGES, PatchSampler, load_image, psnr
from problems.imaging.model import DEFAULT_WEIGHTS, DecoderConfig, DEQDecoder, save_decoder

__all__ = ["TrainConfig", "train_decoder"]


@dataclass
class TrainConfig:
    """Training options (wall-clock budget ``minutes``; ``steps`` caps the number of batches)."""

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


def _test_psnr(model: DEQDecoder, deq: fpntools.FixedPoint) -> float:
    model.eval()
    vals = []
    with torch.no_grad():
        for name in TEST_IMAGES:
            img = load_image(name)[:128, :128]
            t = torch.from_numpy(img).float()[None, None]
            x = model.encode(t)
            z, _ = deq(x, z0=model.initial_state(x))
            vals.append(psnr(model.head(z)[0, 0].numpy(), img))
    model.train()
    return float(np.mean(vals))


def train_decoder(cfg: TrainConfig, model_cfg: DecoderConfig, out: str, log: bool = True) -> dict:
    """Train and save; returns a summary (steps, patches seen, seconds, held-out autoencoding PSNR)."""
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
        with safe_open(cfg.init, framework="pt") as fh:
            prev = json.loads((fh.metadata() or {}).get("summary", "{}"))
        prior_steps = int(prev.get("total_steps", prev.get("steps", 0)))
        sampler = PatchSampler(sampler.images, cfg.patch, cfg.seed + prior_steps)
    deq = fpntools.FixedPoint(
        model.layer, "anderson", fpntools.Implicit(tol=cfg.bwd_tol, max_iter=cfg.bwd_max_iter),
        tol=cfg.fwd_tol, max_iter=cfg.fwd_max_iter, m=5,
    )
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    t0 = time.perf_counter()
    budget = cfg.minutes * 60
    step = 0
    ema = None
    while step < cfg.steps and time.perf_counter() - t0 < budget:
        frac = (time.perf_counter() - t0) / budget
        for g in opt.param_groups:
            g["lr"] = cfg.lr * (0.1 if frac > 0.85 else 1.0)
        p = sampler.sample(cfg.batch)
        x = model.encode(p)
        z, info = deq(x, z0=model.initial_state(x))
        rec = model.head(z)
        mse = ((rec - p) ** 2).mean()
        loss = mse + cfg.latent_weight * (x**2).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        m = float(mse.detach())
        ema = m if ema is None else 0.98 * ema + 0.02 * m
        if log and step % 100 == 0:
            print(
                f"step {step} {time.perf_counter() - t0:.0f}s mse {ema:.5f} ({-10 * np.log10(ema):.2f} dB) "
                f"fwd steps {int(info.steps.max())} |x| {float(x.pow(2).mean()):.3f}",
                flush=True,
            )
    seconds = time.perf_counter() - t0
    summary = {
        "steps": step, "total_steps": prior_steps + step, "patches": step * cfg.batch, "seconds": round(seconds, 1),
        "heldout_autoencoder_psnr": round(_test_psnr(model, deq), 2), "train": asdict(cfg),
    }
    save_decoder(model, out, {"summary": summary})
    if log:
        print(summary)
    return summary


def main(
    minutes: float = typer.Option(10.0, help="wall-clock training budget"),
    steps: int = typer.Option(2000, help="number of batches (of 32 patches 32x32)"),
    out: str = typer.Option(str(DEFAULT_WEIGHTS), help="output .safetensors"),
    channels: int = typer.Option(24),
    latent_channels: int = typer.Option(2),
    latent_weight: float = typer.Option(1e-3),
    seed: int = typer.Option(0),
    init: str = typer.Option("", help="resume from these weights"),
) -> None:
    """Train the DEQ patch decoder."""
    train_decoder(
        TrainConfig(minutes=minutes, steps=steps, latent_weight=latent_weight, seed=seed, init=init or None),
        DecoderConfig(channels=channels, latent_channels=latent_channels),
        out,
    )


if __name__ == "__main__":
    typer.run(main)
