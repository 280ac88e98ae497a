"""``fpntools zoo``: train a zoo model on a dataset (single process, or under torchrun for data parallelism).

Examples::

    fpntools zoo train --model fpn --dataset digits --epochs 10
    fpntools zoo train --model mdeq --dataset cifar10 --data-dir ~/data/cifar-10-batches-py --jacobian-weight 2
    torchrun --nproc_per_node 2 -m fpntools zoo train --model deq --dataset digits --checkpoint run.pt
"""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help="Model zoo: DEQ, MDEQ, SIM, FPN, DEQ sequence models.", no_args_is_help=True)

MODELS = ("deq", "fpn", "conv-fpn", "sim", "sim2", "mdeq", "deq-transformer", "deq-trellis")
IMAGE_MODELS = ("mdeq", "conv-fpn")
"""Models that take images ``(B, C, H, W)``; the others take flattened inputs."""
DATASETS = ("digits", "cifar10", "images", "pydocs", "wikitext")


@app.callback()
def _group() -> None:
    """Model zoo: train DEQ, MDEQ, SIM, FPN and DEQ sequence models (benchmarks: ``fpntools bench zoo``)."""


def build(model: str, dataset: str, data_dir: Path | None, backward: str, jacobian_weight: float,
          jacobian_prob: float, width: int, seq_len: int):
    """Datasets and model for ``fpntools zoo train`` (returns ``(model, train, test, task)``)."""
    import torch
    from torch.utils.data import TensorDataset

    from fpntools.data import TokenWindows, load_cifar10, load_digits, load_image_folder, load_python_docs_corpus, load_wikitext
    from fpntools.errors import UserInputError
    from fpntools.models import (ConvFPNClassifier, DEQLanguageModel, DEQMLP, FPNClassifier, JacobianRegConfig,
                                 MDEQClassifier, SIMClassifier, SolveConfig)

    if model not in MODELS:
        raise UserInputError(f"unknown model {model!r}; choose one of {', '.join(MODELS)}")
    if dataset not in DATASETS:
        raise UserInputError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    cfg = SolveConfig(backward=backward, jacobian=JacobianRegConfig(weight=jacobian_weight, prob=jacobian_prob))
    if model.startswith("deq-"):
        if dataset == "pydocs":
            corpus = load_python_docs_corpus()
        elif dataset == "wikitext":
            if data_dir is None:
                raise UserInputError("--data-dir (the folder with wiki.train.tokens ...) is required for wikitext")
            corpus = load_wikitext(data_dir)
        else:
            raise UserInputError(f"{model} is a language model; use --dataset pydocs or wikitext")
        net = DEQLanguageModel(len(corpus.vocab), width, model.split("-")[1], max_len=seq_len, cfg=cfg)
        return net, TokenWindows(corpus.train, seq_len), TokenWindows(corpus.valid, seq_len), "lm"
    if dataset in ("pydocs", "wikitext"):
        raise UserInputError(f"{model} is an image classifier; use --dataset digits, cifar10 or images")
    if dataset == "digits":
        s = load_digits(flat=model not in IMAGE_MODELS)
        xtr, ytr, xte, yte = s.x_train, s.y_train, s.x_test, s.y_test
        n_classes = 10
    else:
        if data_dir is None:
            raise UserInputError(f"--data-dir is required for dataset {dataset}")
        if dataset == "cifar10":
            (xtr, ytr), (xte, yte) = load_cifar10(data_dir, "train"), load_cifar10(data_dir, "test")
            n_classes = 10
        else:
            x, y, classes = load_image_folder(data_dir, size=(32, 32))
            perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
            n_test = max(1, len(y) // 5)
            xte, yte, xtr, ytr = x[perm[:n_test]], y[perm[:n_test]], x[perm[n_test:]], y[perm[n_test:]]
            n_classes = len(classes)
        if model not in IMAGE_MODELS:
            xtr, xte = xtr.flatten(1), xte.flatten(1)
    in_dim = xtr.shape[1]
    if model == "deq":
        net = DEQMLP(in_dim, n_classes, width=width, cfg=cfg)
    elif model == "fpn":
        net = FPNClassifier(in_dim, n_classes, width=width, cfg=cfg)
    elif model == "conv-fpn":  # width // 2 channels: 32 at the default width, as in `fpntools bench zoo`
        net = ConvFPNClassifier(in_dim, tuple(xtr.shape[2:]), n_classes, channels=max(4, width // 2), cfg=cfg)
    elif model in ("sim", "sim2"):
        net = SIMClassifier(in_dim, n_classes, "single" if model == "sim" else "two", width=width, tier_dim=width)
    else:
        c = max(4, width // 4 // 4 * 4)
        net = MDEQClassifier(xtr.shape[1], n_classes, channels=(c, 2 * c), cfg=cfg)
    return net, TensorDataset(xtr, ytr), TensorDataset(xte, yte), "classification"


@app.command()
def train(
    model: str = typer.Option("deq", help=f"one of {', '.join(MODELS)}"),
    dataset: str = typer.Option("digits", help=f"one of {', '.join(DATASETS)}"),
    data_dir: Path = typer.Option(None, help="dataset folder (cifar10, images, wikitext)"),
    epochs: int = typer.Option(10, help="training epochs"),
    batch_size: int = typer.Option(64, help="global batch size (split across processes)"),
    lr: float = typer.Option(1e-3, help="learning rate (Adam)"),
    width: int = typer.Option(64, help="state width (d_model for language models)"),
    seq_len: int = typer.Option(64, help="sequence length (language models)"),
    backward: str = typer.Option("implicit", help="implicit | implicit_cg | jfb | phantom | unroll"),
    jacobian_weight: float = typer.Option(0.0, help="Jacobian regularisation weight (0: off)"),
    jacobian_prob: float = typer.Option(1.0, help="probability of applying the Jacobian penalty per step"),
    checkpoint: Path = typer.Option(None, help="checkpoint file (resumed when it exists)"),
    checkpoint_every: int = typer.Option(0, help="also checkpoint every N steps"),
    seed: int = typer.Option(0, help="random seed"),
    max_steps: int = typer.Option(None, help="stop after N steps (resumable)"),
) -> None:
    """Train one zoo model; under torchrun every process takes a shard of each global batch."""
    import torch

    from fpntools.training.distributed import init_distributed, shutdown_distributed
    from fpntools.training.loop import TrainConfig, Trainer

    ctx = init_distributed()
    try:
        torch.manual_seed(seed)
        net, train_set, test_set, task = build(model, dataset, data_dir, backward, jacobian_weight, jacobian_prob,
                                               width, seq_len)
        cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, task=task,
                          checkpoint_path=str(checkpoint) if checkpoint else None, checkpoint_every=checkpoint_every,
                          max_steps=max_steps)
        res = Trainer(net, cfg, train_set, test_set, dist_ctx=ctx).fit()
        if ctx.is_main:
            for h in res.history:
                typer.echo("  ".join(f"{k}={v:.4g}" for k, v in h.items()))
    finally:
        shutdown_distributed()
