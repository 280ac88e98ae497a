"""Equilibrium sequence models for language modelling: DEQ-Transformer and TrellisNet-style layers.

Both layers are weight-tied maps ``z' = f(z; u)`` on a sequence state ``z in R^{B x T x d}`` with the input
``u`` injected at every application (Bai, Kolter & Koltun 2019). Both are causal: position ``t`` of
``f(z; u)`` depends on positions ``<= t`` of ``z`` and ``u`` only, so the equilibrium is causal too and
can be trained with next-token prediction.

* :class:`DEQTransformerLayer` (a causal self-attention block with input injection):

  .. math::
      h = \\mathrm{LN}_1\\big(z + \\mathrm{Attn}_{causal}(z) + u\\big), \\qquad
      f(z; u) = \\mathrm{LN}_2\\big(h + W_2\\,\\mathrm{gelu}(W_1 h)\\big).

* :class:`TrellisNetLayer` (a weight-tied temporal convolution with input injection and gated output,
  the TrellisNet recipe without the LSTM cell state):

  .. math::
      [a; g] = \\mathrm{WN}(W) *_{causal} z + u, \\qquad f(z; u) = \\tanh(a) \\odot \\sigma(g),

  with a left-padded (causal) 1-D convolution of kernel size ``k`` and weight normalisation.

:class:`DEQLanguageModel` embeds tokens, injects them, solves for the equilibrium and decodes every
position to next-token logits. With ``depth=L`` it instead applies the same layer ``L`` times explicitly
(a weight-tied explicit network with exactly the same parameters): the baseline for perplexity and memory.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from fpntools.contraction import weight_normalize as weight_norm

from fpntools.errors import UserInputError
from fpntools.models.base import SolveConfig, ZooOutput, check_tensor, collect, make_fixed_point
from fpntools.models.deq import unroll

__all__ = ["DEQTransformerLayer", "TrellisNetLayer", "DEQLanguageModel", "SEQUENCE_LAYERS"]


class DEQTransformerLayer(nn.Module):
    """Weight-tied causal self-attention block with input injection (see the module docstring)."""

    def __init__(self, d_model: int = 64, n_heads: int = 4, d_ff: int | None = None, init_scale: float = 0.5,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} must be divisible by n_heads {n_heads}")
        d_ff = d_ff or 2 * d_model
        self.d_model, self.n_heads = d_model, n_heads
        self.inject = nn.Linear(d_model, d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.ff1, self.ff2 = nn.Linear(d_model, d_ff), nn.Linear(d_ff, d_model)
        self.ln1, self.ln2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.dropout = dropout
        with torch.no_grad():  # a small residual branch keeps the untrained layer close to a contraction
            self.proj.weight.mul_(init_scale)
            self.ff2.weight.mul_(init_scale)

    def attention(self, z: Tensor) -> Tensor:
        b, t, d = z.shape
        q, k, v = self.qkv(z).view(b, t, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        # explicit causal softmax attention (not F.scaled_dot_product_attention: its fused CPU kernel has no
        # double backward, which the Jacobian penalty needs)
        att = (q @ k.transpose(-2, -1)) * (q.shape[-1] ** -0.5)
        mask = torch.ones(t, t, dtype=torch.bool, device=z.device).triu(1)
        att = torch.softmax(att.masked_fill(mask, float("-inf")), dim=-1)
        if self.training and self.dropout > 0:
            att = F.dropout(att, self.dropout)
        y = att @ v
        return self.proj(y.transpose(1, 2).reshape(b, t, d))

    def forward(self, z: Tensor, u: Tensor) -> Tensor:
        h = self.ln1(z + self.attention(z) + u)
        return self.ln2(h + self.ff2(F.gelu(self.ff1(h))))

    def initial_state(self, u: Tensor) -> Tensor:
        return torch.zeros_like(u)


class TrellisNetLayer(nn.Module):
    """Weight-tied causal temporal convolution with input injection and a gated output."""

    def __init__(self, d_model: int = 64, kernel_size: int = 2, init_scale: float = 0.5) -> None:
        super().__init__()
        if kernel_size < 1:
            raise ValueError(f"kernel_size must be at least 1, got {kernel_size}")
        self.d_model, self.kernel_size = d_model, kernel_size
        self.inject = nn.Linear(d_model, 2 * d_model)
        conv = nn.Conv1d(d_model, 2 * d_model, kernel_size, bias=False)
        with torch.no_grad():
            conv.weight.mul_(init_scale)
        self.conv = weight_norm(conv)

    def forward(self, z: Tensor, u: Tensor) -> Tensor:
        zt = F.pad(z.transpose(1, 2), (self.kernel_size - 1, 0))  # causal: left padding only
        pre = self.conv(zt).transpose(1, 2) + u
        a, g = pre.chunk(2, dim=-1)
        return torch.tanh(a) * torch.sigmoid(g)

    def initial_state(self, u: Tensor) -> Tensor:
        return u.new_zeros(*u.shape[:-1], self.d_model)


SEQUENCE_LAYERS = {"transformer": DEQTransformerLayer, "trellis": TrellisNetLayer}


class DEQLanguageModel(nn.Module):
    """Token-level language model around a DEQ sequence layer.

    ``tokens (B, T) -> e = E[tokens] + P[:T] -> u = layer.inject(e) -> z* = f(z*; u) -> logits = z* E^T``
    (decoder tied to the embedding when ``tie_weights``).

    Args:
        vocab_size: number of token ids.
        d_model: state width.
        layer: ``"transformer"`` or ``"trellis"``.
        max_len: longest sequence (size of the learned positional embedding).
        cfg: how the equilibrium is solved/differentiated (ignored with ``depth``).
        depth: ``None`` for the equilibrium model, or ``L`` for the same layer applied ``L`` times explicitly.
        **layer_kwargs: passed to the layer (``n_heads``, ``d_ff``, ``kernel_size``, ``init_scale``).
    """

    def __init__(self, vocab_size: int, d_model: int = 64, layer: str = "transformer", max_len: int = 256,
                 cfg: SolveConfig | None = None, depth: int | None = None, tie_weights: bool = True,
                 **layer_kwargs) -> None:
        super().__init__()
        if layer not in SEQUENCE_LAYERS:
            raise ValueError(f"unknown sequence layer {layer!r}; choose one of {sorted(SEQUENCE_LAYERS)}")
        if depth is not None and depth < 1:
            raise ValueError(f"depth must be at least 1 (or None for the equilibrium model), got {depth}")
        self.vocab_size, self.max_len, self.depth = vocab_size, max_len, depth
        self.embed = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Parameter(torch.zeros(max_len, d_model))
        nn.init.normal_(self.embed.weight, std=0.1)
        nn.init.normal_(self.pos, std=0.02)
        self.layer = SEQUENCE_LAYERS[layer](d_model, **layer_kwargs)
        self.cfg = cfg or SolveConfig()
        self.deq = make_fixed_point(self.layer, self.cfg) if depth is None else None
        self.norm = nn.LayerNorm(d_model)
        self.decoder = nn.Linear(d_model, vocab_size)
        if tie_weights:
            self.decoder.weight = self.embed.weight

    def forward(self, tokens: Tensor) -> ZooOutput:
        tokens = check_tensor(tokens, "tokens", ndim=2, floating=False, hint="expected (batch, seq_len) token ids")
        if tokens.shape[1] > self.max_len:
            raise UserInputError(f"sequence length {tokens.shape[1]} exceeds max_len {self.max_len}")
        lo, hi = int(tokens.min()), int(tokens.max())
        if lo < 0 or hi >= self.vocab_size:
            raise UserInputError(f"token ids must lie in [0, {self.vocab_size}), got range [{lo}, {hi}]")
        e = self.embed(tokens) + self.pos[: tokens.shape[1]]
        u = self.layer.inject(e)
        z0 = self.layer.initial_state(u)
        if self.deq is None:
            z, infos = unroll(self.layer, z0, (u,), self.depth), []
        else:
            z, info = self.deq(u, z0=z0)
            infos = [info]
        return ZooOutput(self.decoder(self.norm(z)), infos, collect(infos))
