r"""A small MDEQ-style convolutional DEQ decoder: latent grid ``x`` -> equilibrium ``z*`` -> image ``h(z*)``.

Shapes for an ``H x W`` image: latent ``x`` is ``(B, c_lat, H/4, W/4)``, the equilibrium state ``z`` is
``(B, C, H/2, W/2)``, the image ``(B, 1, H, W)``. Fully convolutional, so a decoder trained on patches
decodes whole images.

Layer (residual block in the style of MDEQ, Bai et al. 2020, with group normalisation):

.. math::
    u(x) &= \mathrm{conv}_{inj}(\mathrm{up}_2(x)) \\
    f(z, x) &= \mathrm{GN}_3\big(\phi(z + \mathrm{GN}_2(W_2 * \phi(\mathrm{GN}_1(W_1 * z)) + u(x)))\big)

Head: ``h(z) = W_o * phi(W_f * phi(up_2(W_h * z))) + 1/2`` (bilinear upsampling, one full-resolution
convolution). ``phi`` is relu or a softplus (``DecoderConfig.activation``).

Amortised inference encoder ``E(y, m, sigma)``: a convolutional network (two stride-2 stages) that maps an
observation -- pixels ``y`` (missing ones set to 0), the known-pixel mask ``m`` and the noise level ``sigma``
as a constant channel -- to a latent estimate ``x_hat``. The decoder and the encoder are trained together on
corrupted patches (random noise levels and missing blocks, clean targets), so ``h(z*(E(y)))`` is already a
restoration; at test time the latent is then optimised under the observation with the prior centred on
``x_hat`` (see :mod:`problems.imaging.tasks`).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fpntools.config_dict import checked_fields
from fpntools.errors import UserInputError
from fpntools.fixed_point import FixedPoint
from fpntools.solve_config import JacobianRegConfig, SolveConfig, make_fixed_point

__all__ = [
    "DecoderConfig", "DEQLayer", "DEQDecoder", "save_decoder", "load_decoder", "DEFAULT_WEIGHTS", "SMOOTH_WEIGHTS",
    "SCIKIT_WEIGHTS", "NATURAL_WEIGHTS",
    "ACTIVATIONS", "DEFAULT_SOLVE", "SIZE_LIMITS", "solve_from_metadata",
]

ACTIVATIONS = ("relu", "softplus")

SIZE_LIMITS: dict[str, int] = {"channels": 512, "latent_channels": 256, "groups": 512, "encoder_width": 512}
"""Upper bounds of the architecture fields (a weights file asking for more is rejected before anything is
allocated; the shipped decoder uses 32 / 8 / 4 / 32)."""

DEFAULT_SOLVE = SolveConfig(
    solver="anderson", backward="implicit", tol=1e-3, max_iter=20, backward_tol=1e-3, backward_max_iter=20,
    anderson_m=5,
)
"""The decoder's equilibrium solve in training (and in eval, where no ``eval_tol`` is set): Anderson with memory 5
to relative residual 1e-3 in at most 20 iterations, implicit backward likewise (the shipped weights' recipe)."""

# keys of the training summary written before the decoder held a SolveConfig -> SolveConfig fields
_LEGACY_SOLVE_KEYS = {"fwd_tol": "tol", "fwd_max_iter": "max_iter", "bwd_tol": "backward_tol",
                      "bwd_max_iter": "backward_max_iter"}
_LEGACY_JACOBIAN_KEYS = {"jac_weight": "weight", "jac_prob": "prob"}

SCIKIT_WEIGHTS = Path(__file__).resolve().parents[2] / "data" / "imaging" / "deq_decoder.safetensors"
"""The first shipped weights (relu), trained on scikit-image pictures: the default of the scikit-image benchmark,
``tune`` and the diagnostics, whose documented numbers they reproduce."""
SMOOTH_WEIGHTS = SCIKIT_WEIGHTS.with_name("deq_decoder_softplus.safetensors")
"""The first shipped weights fine-tuned with the softplus activation (``docs/imaging.md``: smooth latent
objectives)."""
NATURAL_WEIGHTS = SCIKIT_WEIGHTS.with_name("deq_natural.safetensors")
"""The natural-image prior trained on train400 (issue 16; config and history beside it as ``deq_natural.json`` /
``deq_natural_history.json``): the default of ``denoise`` / ``inpaint`` / ``fit`` and ``bench --dataset``."""
DEFAULT_WEIGHTS = NATURAL_WEIGHTS
"""What :func:`load_decoder` loads without a path."""


@dataclass(frozen=True)
class DecoderConfig:
    """Architecture: ``channels`` C of the state, ``latent_channels`` of the latent grid, ``groups`` of GN,
    ``encoder_width`` of the amortised encoder, and the ``activation`` of the DEQ layer and the head:
    ``"relu"`` or ``"softplus"`` (``log(1 + exp(beta t)) / beta`` with ``beta = softplus_beta``, a smooth
    relu: the latent objectives of :mod:`problems.imaging.tasks` are then smooth, which quasi-Newton / Anderson
    joint solves need; the encoder keeps relu, it is not differentiated at test time)."""

    channels: int = 32
    latent_channels: int = 8
    groups: int = 4
    encoder_width: int = 32
    activation: str = "relu"
    softplus_beta: float = 10.0

    def __post_init__(self) -> None:
        for name, top in SIZE_LIMITS.items():
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= top:
                raise UserInputError(f"decoder config field {name} = {v!r} is out of range: an integer from 1 to {top}")
        if self.channels % self.groups:
            raise UserInputError(
                f"decoder config field groups = {self.groups} must divide channels = {self.channels}")
        if self.activation not in ACTIVATIONS:
            raise UserInputError(
                f"decoder config field activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        b = self.softplus_beta
        if not isinstance(b, (int, float)) or isinstance(b, bool) or not (math.isfinite(b) and 0 < b <= 1e6):
            raise UserInputError(f"decoder config field softplus_beta must be a number in (0, 1e6], got {b!r}")

    @classmethod
    def from_dict(cls, d: Any) -> "DecoderConfig":
        """The config of a weights file's metadata; unknown keys and out-of-range sizes are a
        :class:`~fpntools.errors.UserInputError` naming the field (checked before any tensor is allocated)."""
        return cls(**checked_fields(cls, d, "decoder config"))

    def act(self, t: Tensor) -> Tensor:
        """The activation of the layer and the head."""
        return F.relu(t) if self.activation == "relu" else F.softplus(t, beta=self.softplus_beta)

    @property
    def factor(self) -> int:
        """Image side / latent side."""
        return 4


class DEQLayer(nn.Module):
    """``f(z, x)`` of the decoder (see the module docstring)."""

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        c = cfg.channels
        self.inject = nn.Conv2d(cfg.latent_channels, c, 3, padding=1)
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.gn1 = nn.GroupNorm(cfg.groups, c, affine=True)
        self.gn2 = nn.GroupNorm(cfg.groups, c, affine=True)
        self.gn3 = nn.GroupNorm(cfg.groups, c, affine=True)
        for conv in (self.conv1, self.conv2):
            nn.init.normal_(conv.weight, std=0.01)

    def injection(self, x: Tensor) -> Tensor:
        return self.inject(F.interpolate(x, scale_factor=2, mode="nearest"))

    def forward(self, z: Tensor, x: Tensor) -> Tensor:
        act = self.cfg.act
        y = act(self.gn1(self.conv1(z)))
        y = self.gn2(self.conv2(y) + self.injection(x))
        return self.gn3(act(z + y))


class DEQDecoder(nn.Module):
    """Decoder ``x -> h(z*(x))`` with the DEQ layer exposed as ``layer(z, x)`` and the head as ``head(z)``.

    The equilibrium ``z*(x)`` is solved as configured by ``solve`` (a :class:`fpntools.SolveConfig`, default
    :data:`DEFAULT_SOLVE`; recorded in the weights file): :meth:`equilibrium` runs the
    :class:`fpntools.FixedPoint` built from it by :func:`fpntools.make_fixed_point`, in the decoder's train /
    eval mode. The latent-optimisation tasks (:mod:`problems.imaging.tasks`) call ``layer`` directly inside
    their joint or nested solves.
    """

    def __init__(self, cfg: DecoderConfig | None = None, solve: SolveConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or DecoderConfig()
        c, cl = self.cfg.channels, self.cfg.latent_channels
        self.layer = DEQLayer(self.cfg)
        self.head_conv = nn.Conv2d(c, c, 3, padding=1)
        self.full_conv = nn.Conv2d(c, c, 3, padding=1)
        self.out_conv = nn.Conv2d(c, 1, 3, padding=1)
        w = self.cfg.encoder_width
        self.encoder = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(w, w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(w, w, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(w, w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(w, w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(w, w, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(w, w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(w, cl, 1),
        )
        self.set_solve(solve or DEFAULT_SOLVE)

    def set_solve(self, solve: SolveConfig) -> None:
        """Use ``solve`` for :meth:`equilibrium` (the :class:`FixedPoint` is rebuilt; it is not a registered
        submodule, so the state dict holds the decoder's weights only)."""
        if not isinstance(solve, SolveConfig):
            raise TypeError(f"solve must be a SolveConfig, got {type(solve).__name__}")
        self.solve = solve
        object.__setattr__(self, "_deq", make_fixed_point(self.layer, solve))

    @property
    def deq(self) -> FixedPoint:
        """The :class:`fpntools.FixedPoint` of ``layer`` configured by ``solve``."""
        return self._deq  # type: ignore[attr-defined]

    def equilibrium(self, x: Tensor, z0: Tensor | None = None) -> tuple[Tensor, Any]:
        """``(z*(x), info)`` by the configured solve (train-mode tolerances in training, eval ones in eval mode;
        the Jacobian penalty of ``solve.jacobian``, when set, lands in ``info.jacobian_loss`` in training)."""
        deq = self.deq
        if deq.training != self.training:
            deq.train(self.training)
        return deq(x, z0=self.initial_state(x) if z0 is None else z0)

    def head(self, z: Tensor) -> Tensor:
        """Image ``(B, 1, H, W)`` from the state ``(B, C, H/2, W/2)``."""
        act = self.cfg.act
        y = act(F.interpolate(self.head_conv(z), scale_factor=2, mode="bilinear", align_corners=False))
        return self.out_conv(act(self.full_conv(y))) + 0.5

    def encode(self, y: Tensor, mask: Tensor | None = None, sigma: float | Tensor = 0.0) -> Tensor:
        r"""Amortised latent estimate ``x_hat = E(y, m, sigma)`` for observations ``y`` ``(B, 1, H, W)``.

        ``mask`` (``(B, 1, H, W)``, 1 = known pixel; default all known) and ``sigma`` (a float or a ``(B,)``
        tensor of noise levels) describe the corruption; missing pixels are ignored.
        """
        m = torch.ones_like(y) if mask is None else mask.to(y.dtype)
        s = torch.as_tensor(sigma, dtype=y.dtype, device=y.device).reshape(-1, 1, 1, 1).expand_as(y)
        return self.encoder(torch.cat([(y - 0.5) * m, m, s], dim=1))

    def latent_shape(self, h: int, w: int) -> tuple[int, int, int]:
        return (self.cfg.latent_channels, h // 4, w // 4)

    def initial_state(self, x: Tensor) -> Tensor:
        b, _, hl, wl = x.shape
        return x.new_zeros(b, self.cfg.channels, 2 * hl, 2 * wl)


def save_decoder(model: DEQDecoder, path: str | Path, extra: dict | None = None) -> None:
    """Save weights, architecture and solve configuration (safetensors metadata) atomically."""
    from safetensors.torch import save

    from fpntools.training.checkpoint import atomic_write_bytes

    meta = {"config": json.dumps(asdict(model.cfg)), "solve": json.dumps(model.solve.to_dict()),
            **{k: json.dumps(v) for k, v in (extra or {}).items()}}
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write_bytes(path, save(tensors, metadata=meta))
    Path(path).chmod(0o644)


def solve_from_metadata(meta: dict[str, str]) -> SolveConfig:
    """The decoder's :class:`SolveConfig` from a weights file's metadata.

    Files written since the decoder holds a ``SolveConfig`` store it under ``"solve"``. Older files (the shipped
    ones) recorded the training solve as ``fwd_tol`` / ``fwd_max_iter`` / ``bwd_tol`` / ``bwd_max_iter`` /
    ``jac_weight`` / ``jac_prob`` in ``summary.train``, with Anderson (memory 5) forward and an implicit backward
    hard-wired; they map onto the same ``SolveConfig`` fields, so they load with the solve they were trained with.
    """
    if "solve" in meta:
        return SolveConfig.from_dict(json.loads(meta["solve"]))
    train = json.loads(meta.get("summary", "{}")).get("train", {})
    changes: dict[str, Any] = {new: train[old] for old, new in _LEGACY_SOLVE_KEYS.items() if old in train}
    jac = {new: train[old] for old, new in _LEGACY_JACOBIAN_KEYS.items() if old in train}
    if jac:
        changes["jacobian"] = JacobianRegConfig(**jac)
    return DEFAULT_SOLVE.with_(**changes)


def _mismatch(model: nn.Module, tensors: dict[str, Tensor]) -> str | None:
    """First difference between a model's state dict and loaded tensors (missing / unexpected key, shape)."""
    own = model.state_dict()
    missing = [k for k in own if k not in tensors]
    extra = [k for k in tensors if k not in own]
    if missing:
        return f"tensor {missing[0]} is missing" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
    if extra:
        return f"unexpected tensor {extra[0]}" + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else "")
    for k, v in own.items():
        if tuple(tensors[k].shape) != tuple(v.shape):
            return f"{k} has shape {tuple(tensors[k].shape)} in the file but {tuple(v.shape)} in the model"
    return None


def load_decoder(path: str | Path | None = None, dtype: torch.dtype = torch.float32) -> DEQDecoder:
    """Load a decoder written by :func:`save_decoder` (default: the shipped weights).

    Every problem is a one-line :class:`~fpntools.errors.UserInputError`: a missing or unreadable file, a config
    out of range (checked before the model is built, so a file asking for 1e9 channels allocates nothing), and
    tensors that do not match the config.
    """
    from safetensors import safe_open

    p = Path(path) if path is not None else DEFAULT_WEIGHTS
    if not p.is_file():
        raise UserInputError(f"decoder weights not found: {p} (train them with `fpntools imaging train`)")
    try:
        with safe_open(str(p), framework="pt") as fh:
            meta = fh.metadata() or {}
            keys = list(fh.keys())
    except Exception as exc:
        raise UserInputError(f"decoder weights {p} are corrupt or not a safetensors file: {exc}") from None
    if "config" not in meta:
        raise UserInputError(f"decoder weights {p} have no decoder config in their metadata")
    try:
        raw = json.loads(meta["config"])
        solve_meta = solve_from_metadata(meta)
    except json.JSONDecodeError as exc:
        raise UserInputError(f"decoder weights {p}: metadata is not valid JSON ({exc})") from None
    except UserInputError as exc:
        raise UserInputError(f"decoder weights {p}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise UserInputError(f"decoder weights {p}: bad solve configuration ({exc})") from None
    try:
        cfg = DecoderConfig.from_dict(raw)
    except UserInputError as exc:
        raise UserInputError(f"decoder weights {p}: {exc}") from None
    except TypeError as exc:
        raise UserInputError(f"decoder weights {p}: bad decoder config ({exc})") from None
    model = DEQDecoder(cfg, solve_meta)
    with safe_open(str(p), framework="pt") as fh:
        tensors = {k: fh.get_tensor(k) for k in keys}
    problem = _mismatch(model, tensors)
    if problem is not None:
        raise UserInputError(f"decoder weights {p} do not match their config: {problem}")
    bad = next((k for k, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())), None)
    if bad is not None:
        raise UserInputError(f"decoder weights {p}: tensor {bad} holds NaN or infinite values")
    model.load_state_dict(tensors)
    return model.to(dtype).eval()
