"""Train, save, load and evaluate one zoo model (the library behind ``fpntools zoo train`` / ``zoo eval``).

A zoo model is described by a :class:`ZooSpec` (architecture, dataset, sizes, solver options). The spec is
checked *before* anything is allocated: every size has a bound and the parameter count is estimated, so a
weights file or command line asking for, say, 1e9 channels is a one-line error rather than an attempt to
allocate tens of gigabytes. Training runs through :class:`fpntools.training.Trainer` (run folder with
``config.json``, ``history.json``, ``checkpoint.pt``; exact resume; ``torchrun`` data parallelism); the
trained weights go to ``<run folder>/model.pt`` (``{"format", "spec", "state_dict"}``, read with
``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from fpntools.config_dict import checked_fields
from fpntools.errors import UserInputError

__all__ = ["MODELS", "IMAGE_MODELS", "DATASETS", "BACKWARDS", "LIMITS", "ZooSpec", "ZooData", "check_size", "check_state_dict", "load_zoo_data",
           "build_model", "train_zoo", "save_zoo_model", "load_zoo_model", "evaluate_zoo"]

MODELS = ("deq", "fpn", "conv-fpn", "sim", "sim2", "mdeq", "deq-transformer", "deq-trellis")
IMAGE_MODELS = ("mdeq", "conv-fpn")
"""Models that take images ``(B, C, H, W)``; the others take flattened inputs (or tokens)."""
DATASETS = ("digits", "cifar10", "images", "pydocs", "wikitext")
BACKWARDS = ("implicit", "implicit_cg", "jfb", "phantom", "unroll")
FORMAT = "fpntools-zoo-1"

LIMITS = {"width": 4096, "seq_len": 8192, "in_dim": 1 << 20, "image_side": 4096, "n_classes": 1 << 20}
"""Upper bounds of the spec's sizes (a spec beyond them is refused before allocating)."""
MAX_PARAMETERS = 200_000_000
"""Largest estimated parameter count accepted (800 MB of float32 weights)."""


def check_size(name: str, value: Any) -> int:
    """``value`` as an int in ``[1, LIMITS[name]]``, else a one-line error naming ``name``."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise UserInputError(f"{name} must be an integer, got {value!r}")
    if not 1 <= value <= LIMITS[name]:
        raise UserInputError(f"{name} must be between 1 and {LIMITS[name]}, got {value}")
    return value


@dataclass(frozen=True)
class ZooSpec:
    """Architecture and data of one zoo model.

    ``in_dim``: input features of flat models, input channels of image models (``mdeq``, ``conv-fpn``);
    ``image_size``: ``(H, W)`` of image models; ``n_classes``: classes, or the vocabulary size of language
    models (``deq-transformer``, ``deq-trellis``). ``width``: state width (``d_model`` of language models;
    image models use ``width // 2`` channels (conv-fpn) or ``(c, 2c)`` with ``c = width // 16 * 4`` (mdeq)).
    """

    model: str
    dataset: str
    in_dim: int
    n_classes: int
    image_size: tuple[int, int] | None = None
    width: int = 64
    seq_len: int = 64
    backward: str = "implicit"
    jacobian_weight: float = 0.0
    jacobian_prob: float = 1.0

    def __post_init__(self) -> None:
        for name, choices in (("model", MODELS), ("dataset", DATASETS), ("backward", BACKWARDS)):
            if getattr(self, name) not in choices:
                raise UserInputError(f"unknown {name} {getattr(self, name)!r}; choose one of {', '.join(choices)}")
        for name in ("in_dim", "n_classes", "width", "seq_len"):
            object.__setattr__(self, name, check_size(name, getattr(self, name)))
        if self.image_size is not None:
            size = tuple(self.image_size)
            if len(size) != 2 or not all(isinstance(s, int) and 1 <= s <= LIMITS["image_side"] for s in size):
                raise UserInputError(f"image_size must be two integers between 1 and {LIMITS['image_side']}, got "
                                     f"{self.image_size!r}")
            object.__setattr__(self, "image_size", size)
        if (self.model in IMAGE_MODELS) != (self.image_size is not None):
            raise UserInputError(f"image_size must be given exactly for the image models {', '.join(IMAGE_MODELS)}")
        for name, lo, hi in (("jacobian_weight", 0.0, 1e6), ("jacobian_prob", 0.0, 1.0)):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi:
                raise UserInputError(f"{name} must be a number in [{lo:g}, {hi:g}], got {v!r}")
        if self.is_lm != (self.dataset in ("pydocs", "wikitext")):
            if self.is_lm:
                raise UserInputError(f"{self.model} is a language model; use --dataset pydocs or wikitext")
            raise UserInputError(f"{self.model} is an image classifier; use --dataset digits, cifar10 or images")
        n = self.estimated_parameters()
        if n > MAX_PARAMETERS:
            raise UserInputError(f"the {self.model} model would have about {n:.3g} parameters (limit "
                                 f"{MAX_PARAMETERS:.0e}); reduce width")

    @property
    def is_lm(self) -> bool:
        return self.model.startswith("deq-")

    @property
    def task(self) -> str:
        return "lm" if self.is_lm else "classification"

    def estimated_parameters(self) -> int:
        """An upper estimate of the parameter count (no allocation)."""
        w, d, c = self.width, self.in_dim, self.n_classes
        if self.is_lm:
            return c * w + self.seq_len * w + 12 * w * w + 4 * w
        if self.model in IMAGE_MODELS:
            ch = max(4, w // 2)
            return 2 * 9 * (d + 2 * ch) * 2 * ch + 4 * ch * ch * 9 + 2 * ch * c + 64 * ch
        return d * w + 8 * w * w + w * c + 16 * w

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["image_size"] = list(self.image_size) if self.image_size is not None else None
        return d

    @classmethod
    def from_dict(cls, d: Any) -> "ZooSpec":
        """The spec of a saved dict; unknown or missing keys and wrong values are one-line errors."""
        kw = checked_fields(cls, d, "zoo model spec")
        missing = [f.name for f in fields(cls) if f.name not in d and f.name in ("model", "dataset", "in_dim", "n_classes")]
        if missing:
            raise UserInputError(f"zoo model spec lacks {', '.join(missing)}")
        if kw.get("image_size") is not None:
            if not isinstance(kw["image_size"], (list, tuple)):
                raise UserInputError(f"image_size must be two integers, got {kw['image_size']!r}")
            kw["image_size"] = tuple(kw["image_size"])
        return cls(**kw)


@dataclass
class ZooData:
    """Training and test sets of a zoo dataset, with what the model needs to know about them."""

    train: Dataset
    test: Dataset
    in_dim: int
    n_classes: int
    image_size: tuple[int, int] | None = None


def load_zoo_data(model: str, dataset: str, data_dir: Path | None = None, seq_len: int = 64) -> ZooData:
    """Load ``dataset`` shaped for ``model`` (flattened features, images or token windows)."""
    from fpntools.data import (TokenWindows, load_cifar10, load_digits, load_image_folder, load_python_docs_corpus,
                               load_wikitext)

    if model not in MODELS:
        raise UserInputError(f"unknown model {model!r}; choose one of {', '.join(MODELS)}")
    if dataset not in DATASETS:
        raise UserInputError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    check_size("seq_len", seq_len)
    if model.startswith("deq-"):
        if dataset == "pydocs":
            corpus = load_python_docs_corpus()
        elif dataset == "wikitext":
            if data_dir is None:
                raise UserInputError("--data-dir (the folder with wiki.train.tokens ...) is required for wikitext")
            corpus = load_wikitext(data_dir)
        else:
            raise UserInputError(f"{model} is a language model; use --dataset pydocs or wikitext")
        return ZooData(TokenWindows(corpus.train, seq_len), TokenWindows(corpus.valid, seq_len), 1, len(corpus.vocab))
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
    image_size = tuple(int(s) for s in xtr.shape[2:]) if model in IMAGE_MODELS else None
    return ZooData(TensorDataset(xtr, ytr), TensorDataset(xte, yte), int(xtr.shape[1]), n_classes, image_size)


def build_model(spec: ZooSpec) -> nn.Module:
    """The (freshly initialised) model of ``spec``; seed the global RNG first for a reproducible init."""
    from fpntools.models import (ConvFPNClassifier, DEQLanguageModel, DEQMLP, FPNClassifier, JacobianRegConfig,
                                 MDEQClassifier, SIMClassifier, SolveConfig)

    cfg = SolveConfig(backward=spec.backward,
                      jacobian=JacobianRegConfig(weight=spec.jacobian_weight, prob=spec.jacobian_prob))
    m, w, d, c = spec.model, spec.width, spec.in_dim, spec.n_classes
    try:
        if spec.is_lm:
            return DEQLanguageModel(c, w, m.split("-")[1], max_len=spec.seq_len, cfg=cfg)
        if m == "deq":
            return DEQMLP(d, c, width=w, cfg=cfg)
        if m == "fpn":
            return FPNClassifier(d, c, width=w, cfg=cfg)
        if m == "conv-fpn":  # width // 2 channels: 32 at the default width, as in `fpntools bench zoo`
            assert spec.image_size is not None
            return ConvFPNClassifier(d, spec.image_size, c, channels=max(4, w // 2), cfg=cfg)
        if m in ("sim", "sim2"):
            return SIMClassifier(d, c, "single" if m == "sim" else "two", width=w, tier_dim=w)
        ch = max(4, w // 4 // 4 * 4)
        return MDEQClassifier(d, c, channels=(ch, 2 * ch), cfg=cfg)
    except ValueError as exc:  # the constructors name the offending size (e.g. width not divisible by groups)
        if isinstance(exc, UserInputError):
            raise
        raise UserInputError(f"cannot build the {m} model: {exc}") from None


def train_zoo(model: str, dataset: str, trainer_config, *, data_dir: Path | None = None, width: int = 64,
              seq_len: int = 64, backward: str = "implicit", jacobian_weight: float = 0.0,
              jacobian_prob: float = 1.0, eval_batch_size: int = 256, log=None):
    """Train one zoo model with :class:`~fpntools.training.Trainer` and write ``<run_dir>/model.pt``.

    Returns ``(trainer, result, weights_path)`` (``weights_path`` is ``None`` without a run folder or on
    processes other than the main one). The recipe is the zoo's: global RNG seeded with ``seed`` before the
    data and the model are made, task loss plus the model's Jacobian penalty, evaluation on the test split.
    """
    from fpntools.training import Trainer, dataset_evaluator, task_loss
    from fpntools.training.trainer import print_to_stderr

    check_size("width", width)  # before loading any data
    torch.manual_seed(trainer_config.seed)
    data = load_zoo_data(model, dataset, data_dir, seq_len)
    spec = ZooSpec(model=model, dataset=dataset, in_dim=data.in_dim, n_classes=data.n_classes,
                   image_size=data.image_size, width=width, seq_len=seq_len, backward=backward,
                   jacobian_weight=jacobian_weight, jacobian_prob=jacobian_prob)
    net = build_model(spec)
    trainer = Trainer(net, task_loss(spec.task), data.train, trainer_config,
                      evaluate=dataset_evaluator(data.test, spec.task, eval_batch_size, prefix="test"),
                      run_config={**spec.to_dict(), "data_dir": str(data_dir) if data_dir else None},
                      log=log or print_to_stderr)
    result = trainer.fit()
    weights = None
    if trainer.run_dir is not None and trainer.ctx.is_main:
        weights = trainer.run_dir / "model.pt"
        save_zoo_model(weights, spec, trainer.model)
    return trainer, result, weights


def save_zoo_model(path: str | Path, spec: ZooSpec, model: nn.Module) -> None:
    """Write ``{"format", "spec", "state_dict"}`` atomically to ``path``."""
    from fpntools.training import save_checkpoint

    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    save_checkpoint(path, {"format": FORMAT, "spec": spec.to_dict(), "state_dict": state})


def load_zoo_model(path: str | Path) -> tuple[ZooSpec, nn.Module]:
    """Read a ``model.pt`` (or the run folder holding it): the spec is checked before the model is built, and
    weights that do not fit the spec's model are a one-line :class:`~fpntools.errors.UserInputError`."""
    from fpntools.training import CheckpointError, load_checkpoint

    path = Path(path)
    if path.is_dir():
        path = path / "model.pt"
    try:
        obj = load_checkpoint(path)
    except CheckpointError as exc:
        raise UserInputError(str(exc)) from None
    if obj.get("format") != FORMAT or not isinstance(obj.get("state_dict"), dict):
        raise UserInputError(f"{path} is not a zoo model file (format {obj.get('format')!r}, expected {FORMAT!r})")
    spec = ZooSpec.from_dict(obj.get("spec"))
    model = build_model(spec)
    check_state_dict(model, obj["state_dict"], str(path))
    model.load_state_dict(obj["state_dict"])
    return spec, model


def check_state_dict(model: nn.Module, state: dict[str, Any], what: str) -> None:
    """One-line error naming the first missing, unexpected or wrongly shaped entry of ``state``."""
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("penalty_step")]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        parts = ([f"missing {', '.join(missing[:3])}"] if missing else []) + (
            [f"unexpected {', '.join(unexpected[:3])}"] if unexpected else [])
        raise UserInputError(f"the weights in {what} do not match the model of its spec: {'; '.join(parts)}")
    for k, v in own.items():
        got = state.get(k)
        if got is not None and (not isinstance(got, torch.Tensor) or tuple(got.shape) != tuple(v.shape)):
            shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            raise UserInputError(f"the weights in {what} do not match the model of its spec: {k} has shape {shape}, "
                                 f"the model expects {tuple(v.shape)}")


def evaluate_zoo(path: str | Path, data_dir: Path | None = None, batch_size: int = 256,
                 device: str = "auto") -> tuple[ZooSpec, dict[str, float]]:
    """Load a zoo model file and evaluate it on the test split of its dataset."""
    from fpntools.training import dataset_evaluator, resolve_device

    dev = resolve_device(device)
    spec, model = load_zoo_model(path)
    data = load_zoo_data(spec.model, spec.dataset, data_dir, spec.seq_len)
    if (data.in_dim, data.n_classes, data.image_size) != (spec.in_dim, spec.n_classes, spec.image_size):
        raise UserInputError(
            f"the model was trained on data with in_dim={spec.in_dim}, n_classes={spec.n_classes}, "
            f"image_size={spec.image_size}, but {spec.dataset} here has in_dim={data.in_dim}, "
            f"n_classes={data.n_classes}, image_size={data.image_size}")
    model.to(dev).eval()
    return spec, dataset_evaluator(data.test, spec.task, batch_size, prefix="test")(model)
