"""Making layers contractive: spectral / weight normalisation, Lipschitz estimates, estimate-and-rescale.

A fixed-point layer ``z -> T(z, x)`` has a unique fixed point, found by Picard iteration, when it is a
contraction in ``z``: ``||T(u, x) - T(w, x)|| <= L ||u - w||`` with ``L < 1``. Two ways to get there:

* **by construction** -- :func:`spectral_normalize` bounds the operator norm of a weight,
  ``||W||_2 <= coeff < 1`` (for convolutions the norm of the convolution *operator* on a given input shape,
  not of the reshaped kernel). With 1-Lipschitz activations the layer is then ``coeff``-Lipschitz in ``z``.
* **by estimate and rescale** (Fixed Point Networks, Heaton, Wu Fung et al.) -- :func:`estimate_lipschitz`
  measures ``L`` at sample states and :func:`rescale_to_contraction` scales a chosen weight down so that
  the estimate is ``<= target``. Estimates are lower bounds on the global constant (they probe the map at
  given points only), so this is a training-time safeguard, not a certificate.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from fpntools.regularization import _as_tuple, _batch_size, _Linearization, _normalize, _scale, _sq_norms

__all__ = [
    "RescaleResult",
    "SpectralNormConv2d",
    "SpectralNormLinear",
    "estimate_lipschitz",
    "rescale_to_contraction",
    "spectral_normalize",
    "weight_normalize",
]

StateLike = Union[Tensor, Sequence[Tensor]]
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


# --------------------------------------------------------------------------------------------------------
# spectral normalisation (parametrizations)
# --------------------------------------------------------------------------------------------------------


def _unit(x: Tensor) -> Tensor:
    return x / x.norm().clamp_min(torch.finfo(x.dtype).tiny)


class _SpectralBound(nn.Module):
    """Base parametrization ``W -> W / max(1, sigma(W) / coeff)`` with ``sigma`` from power iteration.

    ``sigma = <u, A_W v>`` for the persistent singular-vector estimates ``u, v`` (buffers), refined by
    ``n_power_iterations`` steps ``v <- A^T u / ||A^T u||, u <- A v / ||A v||`` per forward in training
    mode (none in eval mode, like :func:`torch.nn.utils.parametrizations.spectral_norm`). Gradients flow
    through ``sigma`` (``u, v`` are treated as constants). Weights already below the bound are unchanged.
    """

    def __init__(self, coeff: float, n_power_iterations: int) -> None:
        super().__init__()
        if not 0.0 < coeff:
            raise ValueError(f"coeff must be positive, got {coeff}")
        if n_power_iterations < 0:
            raise ValueError(f"n_power_iterations must be nonnegative, got {n_power_iterations}")
        self.coeff = float(coeff)
        self.n_power_iterations = int(n_power_iterations)

    # operator A_W and its adjoint, on this parametrization's vector shapes
    def _operator(self, W: Tensor, v: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _operator_adjoint(self, W: Tensor, u: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @torch.no_grad()
    def power_iteration(self, W: Tensor, n: int) -> None:
        """Refine the singular-vector buffers ``u, v`` by ``n`` steps (in place, no autograd)."""
        Wd = W.detach()
        for _ in range(n):
            self._v.copy_(_unit(self._operator_adjoint(Wd, self._u)))
            self._u.copy_(_unit(self._operator(Wd, self._v)))

    def sigma(self, W: Tensor) -> Tensor:
        """Current estimate of ``||A_W||_2`` (differentiable in ``W``)."""
        u = self._u.clone(memory_format=torch.contiguous_format)
        v = self._v.clone(memory_format=torch.contiguous_format)
        return (u * self._operator(W, v)).sum()

    def forward(self, W: Tensor) -> Tensor:
        if self.training and self.n_power_iterations > 0:
            self.power_iteration(W, self.n_power_iterations)
        return W / torch.clamp(self.sigma(W) / self.coeff, min=1.0)


class _MatrixBound(_SpectralBound):
    """Spectral bound of ``W`` viewed as the matrix ``W.reshape(out, -1)`` (dense / linear layers)."""

    def __init__(self, W: Tensor, coeff: float, n_power_iterations: int, init_iterations: int) -> None:
        super().__init__(coeff, n_power_iterations)
        out_dim, in_dim = W.shape[0], W[0].numel()
        g = torch.Generator(device="cpu").manual_seed(0)
        self.register_buffer("_u", _unit(torch.randn(out_dim, generator=g, dtype=W.dtype).to(W.device)))
        self.register_buffer("_v", _unit(torch.randn(in_dim, generator=g, dtype=W.dtype).to(W.device)))
        self.power_iteration(W, init_iterations)

    def _operator(self, W: Tensor, v: Tensor) -> Tensor:
        return W.reshape(W.shape[0], -1) @ v

    def _operator_adjoint(self, W: Tensor, u: Tensor) -> Tensor:
        return W.reshape(W.shape[0], -1).T @ u


class _ConvBound(_SpectralBound):
    """Spectral bound of the convolution operator ``x -> conv(x, W)`` on inputs of shape ``(1, C, *spatial)``.

    The adjoint is the VJP of the (linear) convolution, so every padding mode and stride is handled exactly.
    """

    def __init__(
        self, conv: nn.Module, W: Tensor, input_shape: Sequence[int], coeff: float, n_power_iterations: int,
        init_iterations: int,
    ) -> None:  # fmt: skip
        super().__init__(coeff, n_power_iterations)
        self.nd = W.dim() - 2
        self.stride, self.dilation, self.groups = conv.stride, conv.dilation, conv.groups
        self.padding_mode = conv.padding_mode
        if conv.padding_mode != "zeros":
            self.pre_pad = tuple(conv._reversed_padding_repeated_twice)
            self.padding: Any = 0
        else:
            self.pre_pad = ()
            self.padding = conv.padding
        g = torch.Generator(device="cpu").manual_seed(0)
        v0 = torch.randn((1, *input_shape), generator=g, dtype=W.dtype).to(W.device)
        self.register_buffer("_v", _unit(v0))
        with torch.no_grad():
            u0 = self._operator(W.detach(), v0)
        self.register_buffer("_u", _unit(torch.randn(u0.shape, generator=g, dtype=W.dtype).to(W.device)))
        self.power_iteration(W, init_iterations)

    def _operator(self, W: Tensor, v: Tensor) -> Tensor:
        conv = (F.conv1d, F.conv2d, F.conv3d)[self.nd - 1]
        if self.pre_pad:
            v = F.pad(v, self.pre_pad, mode=self.padding_mode)
        return conv(v, W, None, self.stride, self.padding, self.dilation, self.groups)

    def _operator_adjoint(self, W: Tensor, u: Tensor) -> Tensor:
        with torch.enable_grad():
            x = torch.zeros_like(self._v, requires_grad=True)
            (g,) = torch.autograd.grad(self._operator(W.detach(), x), x, u)
        return g


class _ConvFFTBound(_SpectralBound):
    r"""Certified bound: ``sigma`` = the exact norm of the *circular* convolution that contains this one.

    A zero-padded convolution on inputs of length ``H`` per spatial dim is a compression (isometric
    embedding of the input, coordinate selection of the output) of the circular cross-correlation on the
    torus of size ``N = H + total padding``; a circularly padded one (each output position distinct mod
    ``H``) of the circular one on the torus of size ``H``. A compression never has larger norm, and the
    circular operator is block-diagonalised by the DFT (Sedghi, Gupta & Long 2019):

    .. math::  \|A\|_2 \le \max_{\omega} \|\hat K(\omega)\|_2 , \qquad
               \hat K(\omega) = \sum_j W_j e^{-2\pi i \langle \omega, j d \rangle / N} \in
               \mathbb{C}^{C_{out} \times C_{in}}

    (per group). Exact for stride 1 circular convolutions with output size equal to the input size; an
    upper bound otherwise. Costs one FFT of the kernel and ``prod(N)/2`` small SVDs per forward;
    differentiable. No power-iteration state.
    """

    def __init__(self, conv: nn.Module, W: Tensor, input_shape: Sequence[int], coeff: float) -> None:
        super().__init__(coeff, 0)
        nd = W.dim() - 2
        k, d, st = tuple(W.shape[2:]), tuple(conv.dilation), tuple(conv.stride)
        spatial = tuple(input_shape[1:])
        ext = tuple(di * (ki - 1) + 1 for ki, di in zip(k, d))
        if conv.padding_mode == "zeros":
            if isinstance(conv.padding, str):
                total = tuple(0 if conv.padding == "valid" else e - 1 for e in ext)
            else:
                total = tuple(2 * p for p in conv.padding)
            grid = tuple(h + t for h, t in zip(spatial, total))
        elif conv.padding_mode == "circular":
            rp = conv._reversed_padding_repeated_twice  # (last dim left, right, previous dim ...)
            total = tuple(rp[2 * (nd - 1 - i)] + rp[2 * (nd - 1 - i) + 1] for i in range(nd))
            for h, t, e, s_ in zip(spatial, total, ext, st):
                out_len = (h + t - e) // s_ + 1
                if (out_len - 1) * s_ >= h:
                    raise ValueError(
                        f"method='fft': circular padding {total} wraps output positions around an input of size "
                        f"{spatial}; use method='power'"
                    )
            grid = spatial
        else:
            raise ValueError(f"method='fft' supports padding_mode 'zeros' and 'circular', not {conv.padding_mode!r}")
        if any(e > n for e, n in zip(ext, grid)):
            raise ValueError(f"method='fft': kernel extent {ext} exceeds the grid {grid}; use method='power'")
        self.grid, self.dil, self.groups = grid, d, conv.groups

    @torch.no_grad()
    def power_iteration(self, W: Tensor, n: int) -> None:
        return None

    def sigma(self, W: Tensor) -> Tensor:
        nd = W.dim() - 2
        if any(di > 1 for di in self.dil):
            ext = tuple(di * (ki - 1) + 1 for ki, di in zip(W.shape[2:], self.dil))
            Wd = W.new_zeros((*W.shape[:2], *ext))
            Wd[(Ellipsis, *(slice(None, None, di) for di in self.dil))] = W
            W = Wd
        dims = tuple(range(2, 2 + nd))
        K = torch.fft.rfftn(W, s=self.grid, dim=dims)  # (C_out, C_in/g, *freqs)
        g = self.groups
        K = K.reshape(g, K.shape[0] // g, *K.shape[1:])  # (g, C_out/g, C_in/g, *freqs)
        K = K.permute(0, *range(3, 3 + nd), 1, 2)  # (g, *freqs, C_out/g, C_in/g)
        return torch.linalg.matrix_norm(K, ord=2).amax()


def _conv_input_shape(conv: nn.Module, input_shape: Sequence[int] | None) -> tuple[int, ...]:
    nd = conv.weight.dim() - 2
    if input_shape is None:
        raise ValueError(
            f"{type(conv).__name__}: the spectral norm of a convolution depends on the input size; pass "
            f"input_shape=(C, *spatial) or the {nd} spatial sizes of one input sample"
        )
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == nd:
        shape = (conv.in_channels, *shape)
    if len(shape) != nd + 1 or shape[0] != conv.in_channels or any(s < 1 for s in shape):
        raise ValueError(
            f"input_shape {tuple(input_shape)} does not fit {type(conv).__name__} with {conv.in_channels} input "
            f"channels; expected (C={conv.in_channels}, *{nd} spatial sizes) or the {nd} spatial sizes"
        )
    return shape


def spectral_normalize(
    module: nn.Module,
    coeff: float = 0.9,
    name: str = "weight",
    input_shape: Sequence[int] | None = None,
    n_power_iterations: int = 1,
    init_iterations: int = 100,
    method: Literal["power", "fft"] = "power",
) -> nn.Module:
    """Bound the spectral norm of ``module.<name>`` by ``coeff``: ``W_eff = W / max(1, sigma(W) / coeff)``.

    For ``nn.Linear`` (and any module whose weight is a matrix, or reshaped to ``(out, -1)``) ``sigma`` is
    ``||W||_2``. For ``nn.Conv1d/2d/3d`` it is the norm of the convolution operator on inputs of
    ``input_shape`` (required), which -- unlike the reshaped-kernel norm -- really bounds
    ``||conv(x) - conv(y)|| <= coeff ||x - y||`` (for inputs of that size; the bias does not matter).

    ``sigma`` comes from power iteration with persistent vectors: ``init_iterations`` steps now, then
    ``n_power_iterations`` per forward in training mode. Power iteration approaches ``sigma`` from below, so
    the bound holds up to its convergence (relative error ``~ (sigma_2 / sigma_1)^(2k)``). Convolution
    operators often have nearly equal top singular values, where power iteration stalls a little below
    ``sigma`` (typically by 0.1 - 1 %); for a guaranteed bound on convolutions use ``method="fft"``: ``sigma``
    is then the exact norm of the circular convolution that contains the layer's operator (an upper bound,
    exact for stride-1 circular convolutions), computed from the FFT of the kernel at every forward.

    Registers a :mod:`torch.nn.utils.parametrize` parametrization (the raw weight is
    ``module.parametrizations.<name>.original``) and returns ``module``.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be an nn.Module, got {type(module).__name__}")
    W = getattr(module, name, None)
    if not isinstance(W, Tensor):
        raise ValueError(f"{type(module).__name__} has no tensor attribute {name!r} to normalise")
    if parametrize.is_parametrized(module, name):
        raise ValueError(f"{type(module).__name__}.{name} is already parametrized; remove it first")
    if isinstance(module, _CONVS):
        if name != "weight":
            raise ValueError(f"for convolutions only the kernel 'weight' can be normalised, got {name!r}")
        shape = _conv_input_shape(module, input_shape)
        if method == "fft":
            param: nn.Module = _ConvFFTBound(module, W, shape, coeff)
        elif method == "power":
            param = _ConvBound(module, W, shape, coeff, n_power_iterations, init_iterations)
        else:
            raise ValueError(f"method must be 'power' or 'fft', got {method!r}")
    elif isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        raise NotImplementedError("spectral_normalize does not support transposed convolutions")
    else:
        if W.dim() < 2:
            raise ValueError(f"{type(module).__name__}.{name} has shape {tuple(W.shape)}; need a matrix (>= 2 dims)")
        if input_shape is not None:
            raise ValueError("input_shape is only used for convolutions")
        if method != "power":
            raise ValueError(f"method={method!r} is only available for convolutions; matrices use 'power'")
        param = _MatrixBound(W, coeff, n_power_iterations, init_iterations)
    parametrize.register_parametrization(module, name, param)
    return module


class SpectralNormLinear(nn.Linear):
    """``nn.Linear`` with ``||W||_2 <= coeff`` (see :func:`spectral_normalize`)."""

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, coeff: float = 0.9,
        n_power_iterations: int = 1, init_iterations: int = 100,
        device: torch.device | str | None = None, dtype: torch.dtype | None = None,
    ) -> None:  # fmt: skip
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        spectral_normalize(self, coeff, n_power_iterations=n_power_iterations, init_iterations=init_iterations)


class SpectralNormConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose convolution operator on inputs ``input_shape = (C, H, W)`` (or ``(H, W)``) has
    norm ``<= coeff`` (see :func:`spectral_normalize`; ``method="fft"`` for a certified bound); other
    arguments as ``nn.Conv2d``."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
        input_shape: Sequence[int], coeff: float = 0.9, n_power_iterations: int = 1, init_iterations: int = 100,
        method: Literal["power", "fft"] = "power", **conv_kwargs: Any,
    ) -> None:  # fmt: skip
        super().__init__(in_channels, out_channels, kernel_size, **conv_kwargs)
        spectral_normalize(
            self, coeff, input_shape=input_shape, n_power_iterations=n_power_iterations,
            init_iterations=init_iterations, method=method,
        )  # fmt: skip


def weight_normalize(module: nn.Module, name: str = "weight", dim: int = 0) -> nn.Module:
    """Weight normalisation ``W = g * V / ||V||`` (norms over all dims but ``dim``), Salimans & Kingma 2016.

    The reparametrisation used by multiscale DEQs; it does not bound ``||W||_2`` by itself, but it exposes
    the scale ``g`` (``module.parametrizations.<name>.original0``), which is the weight
    :func:`rescale_to_contraction` scales for such modules. Returns ``module``.
    """
    if not isinstance(getattr(module, name, None), Tensor):
        raise ValueError(f"{type(module).__name__} has no tensor attribute {name!r} to normalise")
    if parametrize.is_parametrized(module, name):
        raise ValueError(f"{type(module).__name__}.{name} is already parametrized; remove it first")
    return nn.utils.parametrizations.weight_norm(module, name=name, dim=dim)


# --------------------------------------------------------------------------------------------------------
# Lipschitz estimates
# --------------------------------------------------------------------------------------------------------


def _jacobian_norms(f: Callable[[Any], Any], z: StateLike, n_iter: int, generator: torch.Generator | None) -> Tensor:
    """Per-sample ``||J_f(z_b)||_2`` by power iteration on ``J^T J`` (``sigma_k = ||J v_k||``, ``||v_k|| = 1``)."""
    lin = _Linearization(f, z, "vjp")
    v = tuple(torch.randn(t.shape, dtype=t.dtype, device=t.device, generator=generator) for t in lin.z)
    v, _ = _normalize(v)
    sigma = torch.zeros(lin.z[0].shape[0], dtype=lin.z[0].dtype, device=lin.z[0].device)
    for _ in range(n_iter):
        jv = tuple(t.detach() for t in lin.jvp(v))
        sigma = _sq_norms(jv).sqrt()
        w = tuple(t.detach() for t in lin.vjp(jv))
        w_unit, wn = _normalize(w)
        keep = wn > 0
        v = tuple(torch.where(keep.reshape((-1,) + (1,) * (a.dim() - 1)), a, b) for a, b in zip(w_unit, v))
    return sigma.detach()


@torch.no_grad()
def _pair_ratios(
    f: Callable[[Any], Any], z: StateLike, n_iter: int, pair_scale: float, generator: torch.Generator | None
) -> Tensor:
    zs, single = _as_tuple(z, "z")
    kind = type(z)
    pack = (lambda ts: ts[0]) if single else (lambda ts: tuple(ts) if kind is tuple else list(ts))
    n = sum(math.prod(t.shape[1:]) for t in zs)
    rms = (_sq_norms(zs) / n).sqrt()
    step = pair_scale * torch.where(rms > 0, rms, torch.ones_like(rms))
    fz, _ = _as_tuple(f(pack(zs)), "f(z)")
    best = torch.zeros(zs[0].shape[0], dtype=zs[0].dtype, device=zs[0].device)
    for _ in range(n_iter):
        d = tuple(torch.randn(t.shape, dtype=t.dtype, device=t.device, generator=generator) for t in zs)
        d = _scale(d, step)
        fy, _ = _as_tuple(f(pack([a + b for a, b in zip(zs, d)])), "f(z)")
        ratio = (_sq_norms([a - b for a, b in zip(fy, fz)]) / _sq_norms(d)).sqrt()
        best = torch.maximum(best, ratio)
    return best


def estimate_lipschitz(
    f: Callable[[Any], Any],
    z: StateLike,
    n_iter: int = 20,
    method: Literal["jacobian", "pairs"] = "jacobian",
    reduction: Literal["max", "none"] = "max",
    pair_scale: float = 1.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Estimate the Lipschitz constant of ``f`` (w.r.t. the Euclidean norm of the state) around states ``z``.

    * ``method="jacobian"`` (default): the local constant ``||J_f(z_b)||_2`` at each sample, by ``n_iter``
      steps of power iteration on ``J^T J`` (one JVP and one VJP each). Sharp when the worst direction is at
      the given points; ``L >= sup_z ||J_f(z)||_2 >= max_b ||J_f(z_b)||_2``.
    * ``method="pairs"`` (the Fixed Point Networks check): ``max`` over ``n_iter`` random pairs per sample of
      ``||f(z_b + d) - f(z_b)|| / ||d||`` with ``d ~ N(0, s^2 I)``, ``s = pair_scale * rms(z_b)`` (or
      ``pair_scale`` when ``z_b = 0``). Needs only evaluations of ``f`` but random directions see the
      average gain, not the worst, so it is usually lower than the Jacobian estimate.

    Both are lower bounds of the global constant. Per-sample values assume ``f`` treats samples
    independently. Returns the maximum over the batch (0-dim tensor) or, with ``reduction="none"``, a (B,)
    tensor; detached.
    """
    if n_iter < 1:
        raise ValueError(f"n_iter must be at least 1, got {n_iter}")
    zs, _ = _as_tuple(z, "z")
    _batch_size(zs, "z")
    if method == "jacobian":
        per = _jacobian_norms(f, z, n_iter, generator)
    elif method == "pairs":
        if pair_scale <= 0:
            raise ValueError(f"pair_scale must be positive, got {pair_scale}")
        per = _pair_ratios(f, z, n_iter, pair_scale, generator)
    else:
        raise ValueError(f"method must be 'jacobian' or 'pairs', got {method!r}")
    if reduction == "max":
        return per.max()
    if reduction == "none":
        return per
    raise ValueError(f"reduction must be 'max' or 'none', got {reduction!r}")


# --------------------------------------------------------------------------------------------------------
# estimate and rescale
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RescaleResult:
    """Outcome of :func:`rescale_to_contraction`: estimates before/after, total factor applied, rounds used."""

    before: float
    after: float
    scale: float
    rounds: int


def _resolve_param(module_or_f: Any, param: Tensor | str | None) -> Tensor:
    if isinstance(param, Tensor):
        return param
    if not isinstance(module_or_f, nn.Module):
        raise ValueError("f is not an nn.Module: pass param= the weight tensor to rescale")
    path = "weight" if param is None else param
    owner_path, _, leaf = path.rpartition(".")
    try:
        owner = module_or_f.get_submodule(owner_path) if owner_path else module_or_f
    except AttributeError as exc:
        raise ValueError(f"{type(module_or_f).__name__} has no submodule {owner_path!r} (param={path!r})") from exc
    if parametrize.is_parametrized(owner, leaf):
        plist = owner.parametrizations[leaf]
        if hasattr(plist, "original"):
            return plist.original
        if hasattr(plist, "original0"):  # weight norm: scale the magnitude g
            return plist.original0
        raise ValueError(f"cannot find the raw tensor behind the parametrized {path!r}; pass it as param=")
    t = getattr(owner, leaf, None)
    if not isinstance(t, Tensor):
        hint = " (the default is 'weight'; name the weight that multiplies the state)" if param is None else ""
        raise ValueError(f"{type(module_or_f).__name__} has no tensor {path!r} to rescale{hint}")
    return t


def rescale_to_contraction(
    module_or_f: nn.Module | Callable[[Any], Any],
    z: StateLike,
    target: float = 0.9,
    param: Tensor | str | None = None,
    method: Literal["jacobian", "pairs"] = "jacobian",
    n_iter: int = 20,
    max_rounds: int = 10,
    generator: torch.Generator | None = None,
) -> RescaleResult:
    """Estimate ``L`` of ``z -> f(z)`` at states ``z`` and scale a weight so that the estimate is ``<= target``.

    When ``L > target`` the weight ``W`` (``param``: a tensor, a dotted parameter name of the module, default
    ``"weight"``; for a spectrally / weight-normalised weight its raw tensor resp. magnitude ``g``) is
    multiplied in place by ``target / L``. For ``f(z) = phi(W z + b)`` the Jacobian is ``D(z) W``, so the
    estimate scales by the same factor up to the change of ``D``; the step repeats (at most ``max_rounds``
    times) until the estimate is at most ``target``. Maps already below the target are left alone.

    ``f`` is called as ``f(z)``: wrap layers with extra inputs, e.g.
    ``rescale_to_contraction(lambda s: layer(s, x), z, param=layer.lin.weight)``.
    The estimate is local (see :func:`estimate_lipschitz`): keep a margin in ``target``.

    Raises ``RuntimeError`` when the estimate does not fall below ``target`` (e.g. ``param`` does not
    multiply the state).
    """
    if not 0.0 < target:
        raise ValueError(f"target must be positive, got {target}")
    if max_rounds < 1:
        raise ValueError(f"max_rounds must be at least 1, got {max_rounds}")
    W = _resolve_param(module_or_f, param)
    f = module_or_f

    def est() -> float:
        return float(estimate_lipschitz(f, z, n_iter=n_iter, method=method, generator=generator))

    before = L = est()
    total, rounds = 1.0, 0
    slack = 1e-6 * target  # round-off of the power iteration
    while L > target + slack:
        if rounds == max_rounds:
            raise RuntimeError(
                f"Lipschitz estimate {L:.4g} still above target {target} after {rounds} rescaling rounds "
                f"(initial {before:.4g}, weight scaled by {total:.3g}); is param the weight acting on the state?"
            )
        s = target / L
        with torch.no_grad():
            W.mul_(s)
        total *= s
        rounds += 1
        L_new = est()
        if L_new > L * (1.0 - 1e-3 * (1.0 - s)) and L_new > target + slack:
            raise RuntimeError(
                f"scaling param by {s:.3g} did not lower the Lipschitz estimate ({L:.4g} -> {L_new:.4g}); "
                "param must be the weight that multiplies the state"
            )
        L = L_new
    return RescaleResult(before=before, after=L, scale=total, rounds=rounds)
