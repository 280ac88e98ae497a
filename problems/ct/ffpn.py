"""Feasibility-based fixed point network (F-FPN) for CT and its unrolled counterpart.

Following Heaton, Wu Fung, Gibali & Yin, "Feasibility-based fixed point networks" (2021), the
reconstruction is the fixed point ``u* = T_theta(u*; y)`` of a learned operator built from a learned
regularisation step followed by (relaxed) projections onto the constraint sets

    C_data = {u : ||A u - y||_2 <= eps},      C_box = {u : 0 <= u <= 1}:

    T_theta(u; y) = P_box( P_data( u - s R_theta(u) ) ),       R_theta = I - K_theta.

Regularisation step.
    ``K_theta(u; y) = gamma ((1 - beta) u + beta Phi_theta(u; g(y))) + b(y)`` with ``Phi_theta`` a small CNN whose
    convolutions are spectrally normalised (operator norm ``<= 1``, computed from the Fourier symbol of the
    kernel, :func:`conv_operator_norm`) and 1-Lipschitz activations (LeakyReLU or MaxMin) whose hidden features
    are multiplied by per-pixel gates ``g(y) in (0, 1)``, ``beta = sigmoid(b)`` learned, ``gamma < 1``.
    The gates and the offset image ``b(y)`` come from an unconstrained U-Net on a reference reconstruction of ``y``
    (:mod:`problems.ct.prior`), evaluated once per reconstruction: constants of the map in ``u``.
    So ``Lip_u(K_theta) <= gamma`` and ``N(u) = u - s R_theta(u) = (1 - s) u + s K_theta(u)`` is a
    contraction with constant ``1 - s (1 - gamma)`` for ``s in (0, 1]``.

Data step ``P_data`` (``FFPNConfig.data_step``):
    ``"relaxed"`` (default): the relaxed (subgradient) projection onto ``C_data`` for
    ``g(v) = ||A v - y|| - eps``,

        ``P_data(v) = v - lam * max(g(v), 0) / ||grad g(v)||^2 * grad g(v)``,  ``grad g(v) = A^T r / ||r||``,
        ``r = A v - y``,  i.e.  ``v - lam * (||r|| - eps)_+ ||r|| / ||A^T r||^2 * A^T r``,

    which maps onto the supporting half-space of ``C_data`` at ``v`` (exactly onto it for ``lam = 1``);
    it is firmly quasi-nonexpansive with fixed points ``C_data`` for ``lam in (0, 2)``.
    ``"gradient"``: a Landweber step ``v - (lam / ||A||^2) A^T (A v - y)``, nonexpansive for ``lam in (0, 2]``
    (then ``T_theta`` is a contraction: unique fixed point, linear convergence).

``eps = eps_factor * noise * ||y||`` per sinogram: for ``y = A x + e`` with ``sigma = noise * RMS(A x)``,
``E||e||^2 = noise^2 ||A x||^2`` so the ground truth is feasible (in expectation) for ``eps_factor >= 1``. The
relative noise level ``noise`` is given per sinogram or estimated from it
(:func:`problems.ct.acquisition.estimate_noise`).

One set of weights, any geometry. Nothing learned depends on the geometry: ``Phi_theta`` and the U-Net act on
images, the data step uses the operator ``A`` of the sinogram batch, passed with the sinograms as an
:class:`~problems.ct.acquisition.Acquisition` (``model(y, acq)``). The reference reconstruction is a short TV solve
with the tuned weight of the batch's geometry and noise level (:func:`problems.ct.baselines.tv_weight`), started
from the geometry-agnostic filtered backprojection; with ``noise_input`` the U-Net also sees the noise level.

Solving and training: :class:`FFPN` holds the architecture (:class:`FFPNConfig`) and a
:class:`fpntools.SolveConfig`, and solves ``u = T_theta(u; y)`` with the :class:`fpntools.FixedPoint` module built
by :func:`fpntools.make_fixed_point`. The F-FPN (:data:`FFPN_SOLVE`) finds the fixed point with Anderson
acceleration without a graph and differentiates it with Jacobian-free backpropagation (``backward="jfb"``, one
differentiable application of ``T_theta`` at the fixed point) or implicit differentiation
(``backward="implicit"``). The unrolled baseline is the same model with ``SolveConfig.unrolled(K)``: exactly ``K``
Picard steps ``u_{k+1} = T_theta(u_k; y)``, backpropagating through every one (:func:`default_solve`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fpntools.config_dict import checked_fields
from fpntools.info import FixedPointInfo
from fpntools.operators import project_data_ball_relaxed
from fpntools.solve_config import SolveConfig, make_fixed_point
from problems.ct.acquisition import Acquisition
from problems.ct.prior import ReferenceConditioner

__all__ = [
    "FFPNConfig",
    "FFPN_SOLVE",
    "UNROLLED_STEPS",
    "MODEL_KINDS",
    "default_solve",
    "solve_kind",
    "conv_operator_norm",
    "LipschitzCNN",
    "CTFeasibilityOperator",
    "FFPN",
    "build_model",
    "noise_levels",
]

#: the F-FPN's solve: Anderson (memory 5) to relative residual 1e-3 in training (at most 50 steps) and 1e-4 in
#: eval (at most 100), Jacobian-free backpropagation.
FFPN_SOLVE = SolveConfig(solver="anderson", backward="jfb", tol=1e-3, max_iter=50, anderson_m=5, eval_tol=1e-4,
                         eval_max_iter=100)
#: steps of the unrolled baseline.
UNROLLED_STEPS = 10
MODEL_KINDS = ("ffpn", "unrolled")

# size limits of the architecture (a weights file asking for more is refused before anything is allocated)
_MAX_CHANNELS, _MAX_LAYERS, _MAX_LEVELS = 1024, 64, 8


# ============================================================================================ config
@dataclass
class FFPNConfig:
    """Architecture of the map ``T_theta`` of :class:`FFPN` (the F-FPN and the unrolled network alike).

    Attributes:
        channels: hidden channels of ``Phi_theta``.
        layers: number of convolutions in ``Phi_theta`` (``>= 2``).
        kernel_size: odd kernel size.
        negative_slope: LeakyReLU slope (1-Lipschitz for ``|slope| <= 1``).
        activation: ``"leaky_relu"`` or ``"maxmin"`` (channel pairs ``(a, b) -> (max(a, b), min(a, b))``,
            1-Lipschitz and gradient-norm preserving, Anil et al. 2019; needs an even ``channels``).
        condition: ``"fbp"`` feeds the reference reconstruction ``u_ref(y)`` (see ``reference``) to ``Phi`` as a
            second input channel, ``Phi(u; u_ref)``; the normalised first convolution keeps ``Phi`` 1-Lipschitz in
            ``u``, so all bounds on ``T`` hold unchanged (``u_ref`` is a constant of the fixed-point map).
        reference: the classical reconstruction the network is conditioned on and starts from: ``"fbp"`` (the
            filtered backprojection :meth:`~problems.ct.acquisition.Acquisition.filtered_backprojection`) or
            ``"tv"`` (``reference_tv_iters`` PDHG iterations of TV-regularised least squares started from it, with
            weight ``reference_tv_lam * (n_angles / 30) * (noise / 0.015) * (n / 128)``: a cheap, unconverged TV
            image whose weight follows the geometry and the noise level of each sinogram).
        prior: ``"unet"`` adds an unconstrained U-Net on ``u_ref`` (:class:`~problems.ct.prior.ReferenceConditioner`)
            that gates the hidden features of ``Phi`` per pixel (values in ``(0, 1)``: ``Phi`` stays 1-Lipschitz
            in ``u``) and adds an offset image ``b(y)`` to ``K``; ``"none"`` leaves ``Phi`` unconditioned.
        prior_width, prior_levels: U-Net width (first level) and number of resolutions.
        gamma: Lipschitz bound of ``K_theta`` (``< 1``).
        step: ``s in (0, 1]`` in ``u - s R_theta(u)``.
        beta_init: initial mixing ``beta`` of ``Phi_theta`` with the identity.
        data_step: ``"relaxed"`` (subgradient projection onto the data ball) or ``"gradient"`` (Landweber).
        relaxation: ``lam`` of the data step (``(0, 2)``).
        noise_input: the U-Net prior also sees the relative noise level (a constant image ``noise / 0.03``).
        eps_factor: data-ball radius factor (``eps = eps_factor * noise * ||y||``).
        init: initial iterate: ``"fbp"`` (the reference reconstruction, despite the historical name), ``"zeros"``.

    How the fixed point is solved and differentiated is not part of the architecture: :class:`FFPN` holds a
    :class:`fpntools.SolveConfig` next to it.
    """

    channels: int = 16
    layers: int = 3
    kernel_size: int = 3
    negative_slope: float = 0.1
    activation: Literal["leaky_relu", "maxmin"] = "leaky_relu"
    condition: Literal["none", "fbp"] = "fbp"
    reference: Literal["fbp", "tv"] = "tv"
    reference_tv_iters: int = 80
    reference_tv_lam: float = 0.5
    prior: Literal["none", "unet"] = "unet"
    prior_width: int = 32
    prior_levels: int = 4
    gamma: float = 0.99
    step: float = 1.0
    beta_init: float = 0.25
    data_step: Literal["relaxed", "gradient"] = "relaxed"
    relaxation: float = 1.0
    noise_input: bool = True
    eps_factor: float = 1.0
    init: Literal["fbp", "zeros"] = "fbp"

    def __post_init__(self) -> None:
        if not 2 <= self.layers <= _MAX_LAYERS:
            raise ValueError(f"layers must lie in [2, {_MAX_LAYERS}], got {self.layers}")
        if not 1 <= self.channels <= _MAX_CHANNELS:
            raise ValueError(f"channels must lie in [1, {_MAX_CHANNELS}], got {self.channels}")
        if self.kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {self.kernel_size}")
        if not 0 < self.gamma < 1:
            raise ValueError(f"gamma must lie in (0, 1), got {self.gamma}")
        if not 0 < self.step <= 1:
            raise ValueError(f"step must lie in (0, 1], got {self.step}")
        if not 0 < self.beta_init < 1:
            raise ValueError(f"beta_init must lie in (0, 1), got {self.beta_init}")
        if self.data_step not in ("relaxed", "gradient"):
            raise ValueError(f"data_step must be 'relaxed' or 'gradient', got {self.data_step!r}")
        hi_ok = self.relaxation <= 2 if self.data_step == "gradient" else self.relaxation < 2
        if not (self.relaxation > 0 and hi_ok):
            raise ValueError(f"relaxation must lie in (0, 2) ((0, 2] for 'gradient'), got {self.relaxation}")
        if self.init not in ("fbp", "zeros"):
            raise ValueError(f"init must be 'fbp' or 'zeros', got {self.init!r}")
        if self.activation not in ("leaky_relu", "maxmin"):
            raise ValueError(f"activation must be 'leaky_relu' or 'maxmin', got {self.activation!r}")
        if self.activation == "maxmin" and self.channels % 2:
            raise ValueError(f"activation 'maxmin' needs an even number of channels, got {self.channels}")
        if self.reference not in ("fbp", "tv"):
            raise ValueError(f"reference must be 'fbp' or 'tv', got {self.reference!r}")
        if self.reference_tv_iters < 1 or not self.reference_tv_lam >= 0:
            raise ValueError("reference_tv_iters must be >= 1 and reference_tv_lam >= 0")
        if self.prior not in ("none", "unet"):
            raise ValueError(f"prior must be 'none' or 'unet', got {self.prior!r}")
        if not (1 <= self.prior_width <= _MAX_CHANNELS and 1 <= self.prior_levels <= _MAX_LEVELS):
            raise ValueError(f"prior_width must lie in [1, {_MAX_CHANNELS}] and prior_levels in [1, {_MAX_LEVELS}], "
                             f"got {self.prior_width} and {self.prior_levels}")
        if self.condition not in ("none", "fbp"):
            raise ValueError(f"condition must be 'none' or 'fbp', got {self.condition!r}")
        if abs(self.negative_slope) > 1:
            raise ValueError("negative_slope must satisfy |slope| <= 1 (1-Lipschitz activation)")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict; :meth:`from_dict` inverts it (unknown keys are a ``ValueError`` naming them)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FFPNConfig":
        return cls(**checked_fields(cls, d, "F-FPN configuration"))


def default_solve(kind: str, steps: int = UNROLLED_STEPS) -> SolveConfig:
    """The solve of a model kind: :data:`FFPN_SOLVE` for ``"ffpn"``, ``SolveConfig.unrolled(steps)`` (exactly
    ``steps`` Picard steps, backpropagation through all of them) for ``"unrolled"``."""
    if kind == "ffpn":
        return FFPN_SOLVE
    if kind == "unrolled":
        return SolveConfig.unrolled(steps)
    raise ValueError(f"unknown model kind {kind!r}; use 'ffpn' or 'unrolled'")


def solve_kind(solve: SolveConfig) -> str:
    """``"unrolled"`` for a fixed number of differentiated steps (``backward="unroll"``, ``tol = 0``), else
    ``"ffpn"`` (a fixed point solved to a tolerance)."""
    return "unrolled" if solve.backward == "unroll" and solve.tol == 0 else "ffpn"


# ============================================================================================ Lipschitz CNN
def conv_operator_norm(weight: Tensor, grid: int = 32) -> Tensor:
    """Spectral norm of the 2D convolution with ``weight`` ``(out, in, k, k)``, i.e. ``sup_xi ||W^(xi)||_2`` of
    its Fourier symbol ``W^(xi) = sum_p W[:, :, p] exp(-i xi . p)``, evaluated on a ``grid x grid`` frequency grid
    (differentiable in ``weight``).

    The circular convolution on a ``grid``-periodic domain has exactly this norm; the zero-padded convolution
    on any image size is bounded by the supremum over all frequencies, which this grid maximum approximates
    from below; for 3x3 kernels the symbol is a trigonometric polynomial of degree 1 per axis and a 32-point
    grid already resolves its maximum to well below 1% (checked against a 128-point grid in the tests).
    """
    out_c, in_c, kh, kw = weight.shape
    sym = torch.fft.fft2(weight, s=(grid, grid))  # (out, in, grid, grid)
    sym = sym.permute(2, 3, 0, 1).reshape(grid * grid, out_c, in_c)
    if out_c == 1 or in_c == 1:
        return sym.abs().pow(2).sum(dim=(1, 2)).sqrt().max()
    return torch.linalg.matrix_norm(sym, ord=2).max()


class LipschitzCNN(nn.Module):
    """``Phi(u) = (1 - beta) u + beta C_L(act(... act(C_1(u))))`` with ``||C_i|| <= 1`` (1-Lipschitz), on
    ``(B, n, n)`` images. :meth:`normalized` returns the normalised weights once (reuse them for many
    evaluations of the fixed-point map); :meth:`apply` evaluates ``Phi`` with given weights.
    """

    def __init__(self, channels: int = 16, layers: int = 3, kernel_size: int = 3, negative_slope: float = 0.1,
                 beta_init: float = 0.25, norm_grid: int = 32, activation: str = "leaky_relu",
                 in_channels: int = 1) -> None:
        super().__init__()
        chans = [in_channels] + [channels] * (layers - 1) + [1]
        self.convs = nn.ModuleList(
            nn.Conv2d(chans[i], chans[i + 1], kernel_size, padding=kernel_size // 2) for i in range(layers)
        )
        for c in self.convs:  # start close to the identity: small random kernels
            nn.init.kaiming_uniform_(c.weight, a=math.sqrt(5))
            nn.init.zeros_(c.bias)
        self.beta_logit = nn.Parameter(torch.tensor(math.log(beta_init / (1 - beta_init))))
        self.negative_slope = negative_slope
        self.activation = activation
        self.norm_grid = norm_grid
        self.padding = kernel_size // 2

    @property
    def beta(self) -> Tensor:
        return torch.sigmoid(self.beta_logit)

    def normalized(self) -> list[tuple[Tensor, Tensor]]:
        """``[(W_i / max(1, ||C_i||), b_i)]``: every convolution nonexpansive."""
        out = []
        for c in self.convs:
            sigma = conv_operator_norm(c.weight, self.norm_grid)
            out.append((c.weight / torch.clamp(sigma, min=1.0), c.bias))
        return out

    def apply(self, u: Tensor, weights: list[tuple[Tensor, Tensor]], cond: Tensor | None = None,
              gates: list[Tensor] | None = None) -> Tensor:
        """``Phi(u)``; ``gates[i]`` (values in ``[0, 1]``, shape of the ``i``-th hidden feature map) multiplies
        the ``i``-th hidden layer after its activation (1-Lipschitz, so ``Phi`` stays 1-Lipschitz in ``u``)."""
        h = u[:, None] if cond is None else torch.stack([u, cond], dim=1)
        for i, (w, b) in enumerate(weights):
            h = F.conv2d(h, w, b, padding=self.padding)
            if i < len(weights) - 1:
                if self.activation == "maxmin":
                    a, b = h.chunk(2, dim=1)
                    h = torch.cat([torch.maximum(a, b), torch.minimum(a, b)], dim=1)
                else:
                    h = F.leaky_relu(h, self.negative_slope)
                if gates is not None:
                    h = h * gates[i]
        beta = self.beta
        return (1 - beta) * u + beta * h[:, 0]

    def forward(self, u: Tensor) -> Tensor:
        return self.apply(u, self.normalized())


# ============================================================================================ T_theta
class CTFeasibilityOperator(nn.Module):
    """``T_theta(u; y) = P_box(P_data((1 - s) u + s K_theta(u)))``, see the module docstring.

    ``forward(u, ctx)`` is the map in ``u`` for the per-solve quantities ``ctx = context(y, acq, noise)``; it is the
    layer of the :class:`fpntools.FixedPoint` module of :class:`FFPN` (``initial_state(ctx)`` gives the first
    iterate). The module holds no operator: the acquisition (operator, ``||A||``) comes with every batch.

    Args:
        config: :class:`FFPNConfig`.
    """

    def __init__(self, config: FFPNConfig | None = None) -> None:
        super().__init__()
        self.config = config or FFPNConfig()
        c = self.config
        self.phi = LipschitzCNN(c.channels, c.layers, c.kernel_size, c.negative_slope, c.beta_init,
                                activation=c.activation, in_channels=2 if c.condition == "fbp" else 1)
        self.prior: ReferenceConditioner | None = None
        if c.prior == "unet":
            self.prior = ReferenceConditioner([c.channels] * (c.layers - 1), c.prior_width, c.prior_levels,
                                              offset_scale=1 - c.gamma * (1 - c.beta_init),
                                              extra_channels=1 if c.noise_input else 0)

    @property
    def uses_reference(self) -> bool:
        """Whether the map needs the reference reconstruction (conditioning, initial iterate or prior)."""
        c = self.config
        return c.condition == "fbp" or c.init == "fbp" or self.prior is not None

    # ----------------------------------------------------------------- pieces
    def context(self, y: Tensor, acq: Acquisition, noise: Tensor, reference: Tensor | None = None
                ) -> dict[str, Any]:
        """Per-solve quantities: normalised weights, ``eps`` per sinogram, the acquisition, the reference
        reconstruction (pass ``reference`` to reuse one computed by :meth:`reference_image`), the gates and offset
        of the U-Net prior (``prior="unet"``). ``noise``: ``(B,)`` relative noise levels."""
        c = self.config
        eps = c.eps_factor * noise * y.flatten(1).norm(dim=1)
        ctx: dict[str, Any] = {"weights": self.phi.normalized(), "eps": eps, "y": y, "acq": acq}
        if self.uses_reference:
            ref = reference if reference is not None else self.reference_image(y, acq, noise)
            ctx["reference"] = ref
            if c.condition == "fbp":
                ctx["cond"] = ref
            if self.prior is not None:
                extra = None
                if c.noise_input:
                    extra = (noise / 0.03).to(ref.dtype).view(-1, 1, 1, 1).expand(-1, 1, *ref.shape[-2:])
                ctx["gates"], ctx["offset"] = self.prior(ref, extra)
        return ctx

    def data_step(self, v: Tensor, ctx: dict[str, Any]) -> Tensor:
        """``P_data``: the relaxed projection onto the data ball
        (:func:`fpntools.operators.project_data_ball_relaxed`) or a Landweber step ``lam / ||A||^2``."""
        c = self.config
        acq, y = ctx["acq"], ctx["y"]
        if c.data_step == "relaxed":
            return project_data_ball_relaxed(v, acq.op, y, ctx["eps"], c.relaxation)
        return v - (c.relaxation / acq.op_norm**2) * acq.op.A_adjoint(acq.op(v) - y)

    def forward(self, u: Tensor, ctx: dict[str, Any]) -> Tensor:
        """``T_theta(u; y)`` for the context ``ctx = context(y, acq, noise)``."""
        c = self.config
        k = c.gamma * self.phi.apply(u, ctx["weights"], ctx.get("cond"), ctx.get("gates"))
        if "offset" in ctx:
            k = k + ctx["offset"]
        v = k if c.step == 1.0 else (1 - c.step) * u + c.step * k
        v = self.data_step(v, ctx)
        return v.clamp(0.0, 1.0)

    @torch.no_grad()
    def reference_image(self, y: Tensor, acq: Acquisition, noise: Tensor) -> Tensor:
        """The reference reconstruction of ``y`` (batched), see ``FFPNConfig.reference``: the filtered
        backprojection, or exactly ``reference_tv_iters`` PDHG iterations of TV started from it (weight
        ``reference_tv_lam`` scaled with the angles, the noise level of each sinogram and the image size)."""
        from problems.ct.baselines import TVWeightRule, tv_reconstruct

        c = self.config
        y = y.detach()
        fbp = acq.filtered_backprojection(y)
        if c.reference == "fbp":
            return fbp
        lam = TVWeightRule(scale=c.reference_tv_lam, angle_power=1.0, noise_power=1.0)(acq.geometry, noise)
        return tv_reconstruct(y, acq.op, lam=lam, n_iter=c.reference_tv_iters, x0=fbp, tol=0.0,
                              op_norm=acq.op_norm)

    def initial_state(self, ctx: dict[str, Any]) -> Tensor:
        """Initial iterate: the reference reconstruction (``init="fbp"``) or zeros."""
        if self.config.init == "fbp" and ctx.get("reference") is not None:
            return ctx["reference"]
        y = ctx["y"]
        return y.new_zeros((y.shape[0], *ctx["acq"].op.in_shape))


def _as_batch(y: Tensor, op: Any) -> tuple[Tensor, bool]:
    out_shape = tuple(op.out_shape)
    if tuple(y.shape) == out_shape:
        return y[None], False
    if y.ndim == len(out_shape) + 1 and tuple(y.shape[1:]) == out_shape:
        return y, True
    from problems.ct.geometry import ShapeError

    raise ShapeError(f"sinograms have shape {tuple(y.shape)}; expected {out_shape} or (N, {out_shape[0]}, {out_shape[1]})")


def _as_image_batch(image: Tensor | None, batched: bool) -> Tensor | None:
    return image if image is None or batched else image[None]


def noise_levels(y: Tensor, noise: float | Tensor | None) -> Tensor:
    """``(B,)`` relative noise levels of the batch ``y``: ``noise`` broadcast, or estimated from the sinograms
    (:func:`~problems.ct.acquisition.estimate_noise`) when ``None``."""
    from problems.ct.acquisition import estimate_noise

    if noise is None:
        return estimate_noise(y.detach())
    t = torch.as_tensor(noise, dtype=y.dtype, device=y.device)
    if t.ndim == 0:
        t = t.expand(y.shape[0])
    if t.shape != (y.shape[0],):
        raise ValueError(f"noise has shape {tuple(t.shape)} for {y.shape[0]} sinograms; give a number or (B,)")
    if not bool(torch.isfinite(t).all()) or bool((t < 0).any()):
        raise ValueError("noise levels must be finite and >= 0")
    return t


class FFPN(nn.Module):
    """``u* = T_theta(u*; y)``: the F-FPN, or the unrolled baseline with ``solve=SolveConfig.unrolled(K)``.

    ``forward(y, acq, noise=None) -> (u, info)`` with the engine's :class:`~fpntools.info.FixedPointInfo`
    (per-sample steps, residuals, status). ``acq`` is the :class:`~problems.ct.acquisition.Acquisition` of the
    sinograms (any geometry; default: the one given at construction). The solve is the
    :class:`fpntools.FixedPoint` module ``self.fp`` built from ``solve`` (default :data:`FFPN_SOLVE`); ``self.T``
    is its layer, the map :class:`CTFeasibilityOperator`.

    Args:
        config: the architecture (:class:`FFPNConfig`).
        solve: the :class:`fpntools.SolveConfig` (see :func:`default_solve`).
        acquisition: default acquisition for calls without one.
    """

    def __init__(self, config: FFPNConfig | None = None, solve: SolveConfig | None = None,
                 acquisition: Acquisition | None = None) -> None:
        super().__init__()
        self.solve = solve if solve is not None else FFPN_SOLVE
        self.fp = make_fixed_point(CTFeasibilityOperator(config), self.solve)
        self.acquisition = acquisition

    @property
    def T(self) -> CTFeasibilityOperator:  # noqa: N802 - the paper's notation
        """The fixed-point map ``T_theta``."""
        return self.fp.layer  # type: ignore[return-value]

    @property
    def config(self) -> FFPNConfig:
        return self.T.config

    @property
    def kind(self) -> str:
        """``"ffpn"`` or ``"unrolled"`` (from the solve, :func:`solve_kind`)."""
        return solve_kind(self.solve)

    def describe(self) -> str:
        """One line: the model kind and its solve."""
        s = self.solve
        if self.kind == "unrolled":
            return f"unrolled network ({s.max_iter} {s.solver} steps)"
        return (f"F-FPN ({s.solver}, {s.backward} gradients, tolerance {s.eval_tol if s.eval_tol is not None else s.tol:g}"
                f" in at most {s.eval_max_iter or s.max_iter} steps)")

    def _acq(self, acq: Acquisition | None) -> Acquisition:
        acq = acq if acq is not None else self.acquisition
        if acq is None:
            raise ValueError("no acquisition: pass model(y, acq) with problems.ct.acquisition.acquisition(geometry)")
        return acq

    def forward(self, y: Tensor, acq: Acquisition | None = None, noise: float | Tensor | None = None,
                u0: Tensor | None = None, reference: Tensor | None = None) -> tuple[Tensor, FixedPointInfo]:
        """``(u*, info)`` for sinograms ``y`` of the acquisition ``acq``; ``noise``: relative noise level(s)
        (``None``: estimated per sinogram); ``reference``: precomputed
        :meth:`CTFeasibilityOperator.reference_image` of the same (batched) sinograms."""
        acq = self._acq(acq)
        yb, batched = _as_batch(y, acq.op)
        nz = noise_levels(yb, noise)
        ctx = self.T.context(yb, acq, nz, _as_image_batch(reference, batched))
        u, info = self.fp(ctx, z0=None if u0 is None else _as_image_batch(u0, batched))
        # Anderson mixes iterates with possibly negative weights: the solver's iterate can leave the box by
        # O(residual); T's range lies in the box, so project (a no-op at an exact fixed point and for Picard).
        u = u.clamp(0.0, 1.0)
        return (u if batched else u[0]), info


def build_model(kind: str, config: FFPNConfig | None = None, solve: SolveConfig | None = None,
                acquisition: Acquisition | None = None) -> FFPN:
    """An :class:`FFPN` of ``kind`` (``"ffpn"`` or ``"unrolled"``) with the solve ``solve`` (default
    :func:`default_solve` of the kind); ``solve`` must be of that kind."""
    solve = solve if solve is not None else default_solve(kind)
    if solve_kind(solve) != kind:
        raise ValueError(f"a {kind} model needs a {kind} solve, got {solve}")
    return FFPN(config, solve, acquisition)
