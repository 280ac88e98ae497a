"""``fpntools zoo``: train a zoo model on a dataset (single process, or under torchrun for data parallelism)
and evaluate a trained one.

Examples::

    fpntools zoo train --model fpn --dataset digits --epochs 10 --out runs/fpn
    fpntools zoo train --model fpn --dataset digits --epochs 20 --out runs/fpn --resume
    fpntools zoo train --model mdeq --dataset cifar10 --data-dir ~/data/cifar-10-batches-py --jacobian-weight 2
    torchrun --nproc-per-node 2 -m fpntools zoo train --model deq --dataset digits --device cpu --out runs/deq
    fpntools zoo eval runs/fpn/model.pt
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from problems.zoo.train import BACKWARDS, DATASETS, MODELS

app = typer.Typer(help="Model zoo: DEQ, MDEQ, SIM, FPN, DEQ sequence models.", no_args_is_help=True)


@app.callback()
def _group() -> None:
    """Model zoo: train DEQ, MDEQ, SIM, FPN and DEQ sequence models (benchmarks: ``fpntools bench zoo``)."""


@app.command()
def train(
    model: str = typer.Option("deq", help=f"one of {', '.join(MODELS)}"),
    dataset: str = typer.Option("digits", help=f"one of {', '.join(DATASETS)}"),
    data_dir: Optional[Path] = typer.Option(None, help="dataset folder (cifar10, images, wikitext)"),
    out: Optional[Path] = typer.Option(None, "--out", help="run folder: config.json, history.json, checkpoint.pt, "
                                       "model.pt (default runs/zoo-MODEL-DATASET)"),
    epochs: int = typer.Option(10, help="training epochs"),
    batch_size: int = typer.Option(64, help="global batch size (split across processes)"),
    lr: float = typer.Option(1e-3, help="learning rate (Adam)"),
    width: int = typer.Option(64, help="state width (d_model for language models)"),
    seq_len: int = typer.Option(64, help="sequence length (language models)"),
    backward: str = typer.Option("implicit", help=" | ".join(BACKWARDS)),
    jacobian_weight: float = typer.Option(0.0, help="Jacobian regularisation weight (0: off)"),
    jacobian_prob: float = typer.Option(1.0, help="probability of applying the Jacobian penalty per step"),
    device: str = typer.Option("auto", help="auto | cpu | cuda (auto: cuda when available)"),
    resume: bool = typer.Option(False, "--resume", help="continue the run in --out from its checkpoint"),
    force: bool = typer.Option(False, "--force", help="start over even though --out holds a checkpoint"),
    checkpoint_every: int = typer.Option(0, help="also checkpoint every N steps"),
    seed: int = typer.Option(0, help="random seed (initialisation and sample order)"),
    max_steps: Optional[int] = typer.Option(None, help="stop after N steps in total (--resume continues)"),
    max_minutes: float = typer.Option(0.0, help="time budget in minutes (0: none; --resume continues)"),
) -> None:
    """Train one zoo model; under torchrun every process takes a shard of each global batch."""
    from fpntools.training import TrainerConfig
    from problems.zoo.train import train_zoo

    run_dir = out if out is not None else Path("runs") / f"zoo-{model}-{dataset}"
    cfg = TrainerConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=device, run_dir=str(run_dir),
                        resume=resume, force=force, checkpoint_every=checkpoint_every, max_steps=max_steps,
                        max_minutes=max_minutes)
    trainer, res, weights = train_zoo(model, dataset, cfg, data_dir=data_dir, width=width, seq_len=seq_len,
                                      backward=backward, jacobian_weight=jacobian_weight, jacobian_prob=jacobian_prob)
    if trainer.ctx.is_main:
        if res.final:
            typer.echo("  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in res.final.items()))
        state = "" if res.completed else f" (stopped early: {res.stop_reason}; --resume continues)"
        typer.echo(f"weights: {weights}{state}")


@app.command("eval")
def evaluate(
    weights: Path = typer.Argument(..., help="model.pt written by `zoo train` (or its run folder)"),
    data_dir: Optional[Path] = typer.Option(None, help="dataset folder (cifar10, images, wikitext)"),
    batch_size: int = typer.Option(256, help="evaluation batch size"),
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
) -> None:
    """Evaluate a trained zoo model on the test split of its dataset."""
    from problems.zoo.train import evaluate_zoo

    spec, metrics = evaluate_zoo(weights, data_dir, batch_size, device)
    typer.echo(f"{spec.model} on {spec.dataset}: " + "  ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
