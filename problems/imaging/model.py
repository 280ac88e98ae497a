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
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fpntools.errors import UserInputError

__all__ = [
    "DecoderConfig", "DEQLayer", "DEQDecoder", "save_decoder", "load_decoder", "DEFAULT_WEIGHTS", "SMOOTH_WEIGHTS",
    "ACTIVATIONS",
]

ACTIVATIONS = ("relu", "softplus")

DEFAULT_WEIGHTS = Path(__file__).resolve().parents[2] / "data" / "imaging" / "deq_decoder.safetensors"
SMOOTH_WEIGHTS = DEFAULT_WEIGHTS.with_name("deq_decoder_softplus.safetensors")
"""The shipped weights fine-tuned with the softplus activation (``docs/imaging.md``: smooth latent objectives)."""


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
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if not self.softplus_beta > 0:
            raise ValueError(f"softplus_beta must be positive, got {self.softplus_beta}")

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
    """Decoder ``x -> h(z*(x))`` with the DEQ layer exposed as ``layer(z, x)`` and the head as ``head(z)``."""

    def __init__(self, cfg: DecoderConfig | None = None) -> None:
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
    """Save weights + architecture (safetensors metadata) atomically."""
    from safetensors.torch import save

    from fpntools.training.checkpoint import atomic_write_bytes

    meta = {"config": json.dumps(asdict(model.cfg)), **{k: json.dumps(v) for k, v in (extra or {}).items()}}
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write_bytes(path, save(tensors, metadata=meta))
    Path(path).chmod(0o644)


def load_decoder(path: str | Path | None = None, dtype: torch.dtype = torch.float32) -> DEQDecoder:
    """Load a decoder written by :func:`save_decoder` (default: the shipped weights)."""
    from safetensors import safe_open

    p = Path(path) if path is not None else DEFAULT_WEIGHTS
    if not p.is_file():
        raise UserInputError(f"decoder weights not found: {p} (train them with `python -m problems.imaging.train`)")
    try:
        with safe_open(str(p), framework="pt") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        cfg = DecoderConfig(**json.loads(meta["config"]))
    except Exception as exc:
        raise UserInputError(f"decoder weights {p} are corrupt or not a decoder file: {exc}") from None
    model = DEQDecoder(cfg)
    model.load_state_dict(tensors)
    return model.to(dtype).eval()
