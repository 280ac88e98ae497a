"""Jacobian regularisation for fixed-point networks.

* :func:`jacobian_frobenius` -- Hutchinson estimate of ``||J_f(z)||_F^2`` from vector-Jacobian products,
  the penalty of Bai, Koltun & Kolter, *Stabilizing Equilibrium Models by Jacobian Regularization* (2021).
* :func:`spectral_radius` -- ``rho(J_f(z))`` per sample by power iteration on Jacobian-vector products.
* :class:`JacobianPenalty` -- the penalty as a training-loop object: weight, schedule, random application.

States ``z`` are tensors or tuples/lists of tensors batched along dim 0. Per-sample quantities assume the
map acts on each sample independently (no batch statistics), so that the Jacobian of the batched map is
block diagonal and one VJP/JVP of the whole batch gives every sample's product at once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Union

import torch
from torch import Tensor

__all__ = ["JacobianPenalty", "jacobian_frobenius", "spectral_radius"]

StateLike = Union[Tensor, Sequence[Tensor]]
Reduction = Literal["mean", "sum", "none"]


# --------------------------------------------------------------------------------------------------------
# helpers on (tuples of) batched tensors
# --------------------------------------------------------------------------------------------------------


def _as_tuple(x: Any, name: str) -> tuple[tuple[Tensor, ...], bool]:
    """``(tensors, was_single_tensor)``; raises a clear error for anything but a tensor or list/tuple of them."""
    if isinstance(x, Tensor):
        return (x,), True
    if isinstance(x, (tuple, list)):
        if len(x) == 0:
            raise ValueError(f"{name} is an empty {type(x).__name__}; expected at least one tensor")
        for i, t in enumerate(x):
            if not isinstance(t, Tensor):
                raise TypeError(f"{name}[{i}] is a {type(t).__name__}, expected a torch.Tensor")
        return tuple(x), False
    raise TypeError(f"{name} must be a tensor or a tuple/list of tensors, got {type(x).__name__}")


def _batch_size(ts: tuple[Tensor, ...], name: str) -> int:
    for i, t in enumerate(ts):
        if t.dim() == 0:
            raise ValueError(f"{name}[{i}] is a scalar; states are batched along dim 0, e.g. shape (B, n)")
    b = ts[0].shape[0]
    for i, t in enumerate(ts):
        if t.shape[0] != b:
            raise ValueError(f"{name}[{i}] has batch size {t.shape[0]} but {name}[0] has {b}")
    return b


def _sq_norms(ts: Sequence[Tensor]) -> Tensor:
    """Per-sample squared Euclidean norm over all tensors of a state: shape (B,)."""
    return sum(t.reshape(t.shape[0], -1).pow(2).sum(dim=1) for t in ts)  # type: ignore[return-value]


def _scale(ts: Sequence[Tensor], s: Tensor) -> tuple[Tensor, ...]:
    """Multiply sample ``b`` of every tensor by ``s[b]``."""
    return tuple(t * s.reshape((-1,) + (1,) * (t.dim() - 1)).to(t.dtype) for t in ts)


def _grads_or_zeros(grads: Sequence[Tensor | None], like: Sequence[Tensor]) -> tuple[Tensor, ...]:
    return tuple(torch.zeros_like(t) if g is None else g for g, t in zip(grads, like))


def _reduce(per_sample: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    if reduction == "none":
        return per_sample
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


# --------------------------------------------------------------------------------------------------------
# Hutchinson estimate of the Jacobian Frobenius norm
# --------------------------------------------------------------------------------------------------------


def jacobian_frobenius(
    fz: StateLike,
    z: StateLike,
    n_samples: int = 1,
    normalize: bool = True,
    create_graph: bool = True,
    reduction: Reduction = "mean",
    noise: Literal["gaussian", "rademacher"] = "gaussian",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Hutchinson estimate of the squared Frobenius norm of ``J = d f(z) / d z``, per sample.

    With ``eps ~ N(0, I)`` (or Rademacher) in the output space,

    .. math::  \\|J\\|_F^2 = \\operatorname{tr}(J J^T) = \\mathbb{E}_\\varepsilon \\|\\varepsilon^T J\\|_2^2
               \\approx \\frac{1}{S} \\sum_{s=1}^S \\|\\varepsilon_s^T J\\|_2^2 ,

    each ``eps^T J`` one vector-Jacobian product ``torch.autograd.grad(fz, z, eps)``. The estimate is
    unbiased; its variance is ``2 ||J J^T||_F^2 / S`` for Gaussian and smaller for Rademacher noise.

    Args:
        fz: ``f(z)``, computed from ``z`` with ``z.requires_grad`` true (tensor or tuple/list of tensors,
            batched along dim 0).
        z: the state, same batch size as ``fz``; a tuple/list state differentiates w.r.t. every tensor.
        n_samples: number ``S`` of probe vectors.
        normalize: divide by the per-sample state dimension ``N = sum_i prod(z_i.shape[1:])`` (as Bai et al.,
            which keeps the penalty weight independent of the width).
        create_graph: keep the graph of the VJPs so the estimate can be differentiated (training lowers it);
            ``False`` for monitoring only.
        reduction: ``"mean"`` (default) or ``"sum"`` over the batch, or ``"none"`` for a (B,) tensor.
        noise: ``"gaussian"`` (default) or ``"rademacher"`` probes.
        generator: optional ``torch.Generator`` (on the device of ``fz``) for reproducible probes.

    Per-sample values assume ``f`` treats samples independently (block-diagonal Jacobian of the batch).
    """
    fzs, _ = _as_tuple(fz, "fz")
    zs, _ = _as_tuple(z, "z")
    if n_samples < 1:
        raise ValueError(f"n_samples must be at least 1, got {n_samples}")
    if noise not in ("gaussian", "rademacher"):
        raise ValueError(f"noise must be 'gaussian' or 'rademacher', got {noise!r}")
    b = _batch_size(zs, "z")
    if _batch_size(fzs, "fz") != b:
        raise ValueError(f"fz has batch size {fzs[0].shape[0]} but z has batch size {b}")
    for i, t in enumerate(zs):
        if not t.requires_grad:
            raise ValueError(
                f"z[{i}] does not require grad; compute fz = f(z) after z.requires_grad_() (e.g. z = z.detach()"
                ".requires_grad_()) so the Jacobian of f at z can be formed"
            )
    if not any(t.requires_grad for t in fzs):
        raise ValueError("fz does not require grad: it was computed without a graph from z (inside no_grad?)")

    total = torch.zeros(b, dtype=fzs[0].dtype, device=fzs[0].device)
    with torch.enable_grad():
        for _ in range(n_samples):
            if noise == "gaussian":
                eps = tuple(
                    torch.randn(t.shape, dtype=t.dtype, device=t.device, generator=generator) for t in fzs
                )
            else:
                eps = tuple(
                    torch.randint(0, 2, t.shape, device=t.device, generator=generator).to(t.dtype) * 2 - 1
                    for t in fzs
                )
            live = [(t, e) for t, e in zip(fzs, eps) if t.requires_grad]  # constant outputs add nothing
            vjp = torch.autograd.grad(
                [t for t, _ in live], zs, [e for _, e in live],
                create_graph=create_graph, retain_graph=True, allow_unused=True,
            )  # fmt: skip
            total = total + _sq_norms(_grads_or_zeros(vjp, zs)).to(total.dtype)
    est = total / n_samples
    if normalize:
        est = est / sum(math.prod(t.shape[1:]) for t in zs)
    return _reduce(est, reduction)


# --------------------------------------------------------------------------------------------------------
# Jacobian-vector products and the spectral radius
# --------------------------------------------------------------------------------------------------------


class _Linearization:
    """``v -> J v`` and ``w -> J^T w`` of ``f`` at ``z`` (tuples of tensors), reusing one forward pass.

    ``J v`` uses the double-VJP identity ``J v = d/du <J^T u, v>``: ``J^T u`` is built once with
    ``create_graph=True`` for a dummy ``u`` and differentiated w.r.t. ``u`` for every ``v``. ``method="jvp"``
    uses forward-mode ``torch.func.jvp`` instead (one forward evaluation of ``f`` per product).
    """

    def __init__(self, f: Callable[[Any], Any], z: StateLike, method: str = "vjp") -> None:
        if method not in ("vjp", "jvp"):
            raise ValueError(f"method must be 'vjp' (double-VJP) or 'jvp' (torch.func.jvp), got {method!r}")
        zs, single = _as_tuple(z, "z")
        _batch_size(zs, "z")
        self.single, self.method, self.f = single, method, f
        self.kind = type(z)
        self.z = tuple(t.detach().requires_grad_(True) for t in zs)
        with torch.enable_grad():
            out = f(self._pack(self.z))
        self.fz, _ = _as_tuple(out, "f(z)")
        if len(self.fz) and _batch_size(self.fz, "f(z)") != self.z[0].shape[0]:
            raise ValueError(f"f(z) has batch size {self.fz[0].shape[0]} but z has {self.z[0].shape[0]}")
        self.depends = any(t.requires_grad for t in self.fz)  # False: f(z) is constant in z, J = 0
        self.jtu: tuple[Tensor, ...] = ()
        if method == "vjp" and self.depends:
            with torch.enable_grad():
                self.u = tuple(torch.zeros_like(t, requires_grad=True) for t in self.fz)
                live = [i for i, t in enumerate(self.fz) if t.requires_grad]
                jtu = torch.autograd.grad(
                    [self.fz[i] for i in live], self.z, [self.u[i] for i in live], create_graph=True,
                    allow_unused=True,
                )  # fmt: skip
            # components of J^T u that do not depend on u are zero (their columns of J vanish): skip them
            self.jtu_of = [i for i, g in enumerate(jtu) if g is not None and g.requires_grad]
            self.jtu = tuple(jtu[i] for i in self.jtu_of)

    def _pack(self, ts: Sequence[Tensor]) -> Any:
        if self.single:
            return ts[0]
        return tuple(ts) if self.kind is tuple else list(ts)

    def jvp(self, v: Sequence[Tensor]) -> tuple[Tensor, ...]:
        if not self.depends:
            return tuple(torch.zeros_like(t) for t in self.fz)
        if self.method == "jvp":
            _, out = torch.func.jvp(lambda *a: self.f(self._pack(a)), tuple(t.detach() for t in self.z), tuple(v))
            return _as_tuple(out, "f(z)")[0]
        if not self.jtu:  # J^T u independent of u: J = 0
            return tuple(torch.zeros_like(t) for t in self.fz)
        with torch.enable_grad():
            vs = [v[i] for i in self.jtu_of]
            g = torch.autograd.grad(self.jtu, self.u, vs, retain_graph=True, allow_unused=True)
        return _grads_or_zeros(g, self.fz)

    def vjp(self, w: Sequence[Tensor]) -> tuple[Tensor, ...]:
        if not self.depends:
            return tuple(torch.zeros_like(t) for t in self.z)
        live = [i for i, t in enumerate(self.fz) if t.requires_grad]
        with torch.enable_grad():
            g = torch.autograd.grad(
                [self.fz[i] for i in live], self.z, [w[i] for i in live], retain_graph=True, allow_unused=True
            )
        return _grads_or_zeros(g, self.z)


def _random_unit(ts: Sequence[Tensor], generator: torch.Generator | None) -> tuple[Tensor, ...]:
    v = tuple(torch.randn(t.shape, dtype=t.dtype, device=t.device, generator=generator) for t in ts)
    return _scale(v, _sq_norms(v).rsqrt())


def _normalize(ts: Sequence[Tensor]) -> tuple[tuple[Tensor, ...], Tensor]:
    n = _sq_norms(ts).sqrt()
    safe = torch.where(n > 0, n, torch.ones_like(n))
    return _scale(ts, 1.0 / safe), n


def spectral_radius(
    f: Callable[[Any], Any],
    z: StateLike,
    n_iter: int = 50,
    tol: float = 1e-6,
    method: Literal["vjp", "jvp"] = "vjp",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Spectral radius ``rho(J_f(z_b)) = max |lambda_i|`` of each sample's Jacobian, by power iteration.

    ``v_{k+1} = J v_k / ||J v_k||`` from a random unit ``v_0``; the estimate is ``rho_k = ||J v_k||``
    (``||v_k|| = 1``), which tends to ``|lambda_1|`` at rate ``|lambda_2 / lambda_1|`` when the dominant
    eigenvalue is unique (real, or simple in modulus). Stops when every sample's estimate changes by at
    most ``tol`` relatively, or after ``n_iter`` products. For a dominant complex-conjugate pair the
    direction does not settle and ``rho_k`` oscillates around ``rho``: use more iterations and read it as
    an estimate. Jacobian products use the double-VJP trick by default (works with any op autograd can
    differentiate twice) or ``torch.func.jvp`` (``method="jvp"``).

    Args:
        f: the map ``z -> f(z)``, state to state of the same structure.
        z: the point (tensor or tuple/list of tensors batched along dim 0); not modified.
        n_iter: maximal number of Jacobian-vector products.
        tol: relative change of the estimate below which iteration stops.
        method: ``"vjp"`` or ``"jvp"``.
        generator: optional generator for the random start.

    Returns:
        (B,) tensor, detached, in the dtype of ``z``.
    """
    if n_iter < 1:
        raise ValueError(f"n_iter must be at least 1, got {n_iter}")
    lin = _Linearization(f, z, method)
    if len(lin.fz) != len(lin.z):
        raise ValueError(f"f(z) has {len(lin.fz)} tensor(s) but z has {len(lin.z)}; f must map a state to a state")
    for i, (a, b) in enumerate(zip(lin.fz, lin.z)):
        if a.shape != b.shape:
            raise ValueError(
                f"f(z) must have the structure of z for a spectral radius; f(z)[{i}] has shape {tuple(a.shape)} "
                f"but z[{i}] has shape {tuple(b.shape)}"
            )
    v = _random_unit(lin.z, generator)
    rho_prev: Tensor | None = None
    rho = torch.zeros(lin.z[0].shape[0], dtype=lin.z[0].dtype, device=lin.z[0].device)
    for _ in range(n_iter):
        w = tuple(t.detach() for t in lin.jvp(v))
        v_next, rho = _normalize(w)
        # a zero product (nilpotent / zero Jacobian) keeps the old direction; its estimate is 0
        v = tuple(torch.where((rho > 0).reshape((-1,) + (1,) * (a.dim() - 1)), a, b) for a, b in zip(v_next, v))
        if rho_prev is not None and bool(((rho - rho_prev).abs() <= tol * rho.abs()).all()):
            break
        rho_prev = rho
    return rho.detach()


# --------------------------------------------------------------------------------------------------------
# training-loop penalty
# --------------------------------------------------------------------------------------------------------


@dataclass
class JacobianPenalty:
    """``weight(step) * ||J_f(z)||_F^2 / N`` applied with probability ``p`` per training step.

    ``weight(step) = weight`` for ``schedule="constant"`` and ``weight * min(1, step / warmup_steps)`` for
    ``schedule="linear"`` (linear warm-up from zero). When the random draw skips a step, or the scheduled
    weight is zero, no VJP is computed and a zero scalar is returned. The expected penalty over the draw is
    ``p * weight(step) * estimate`` (no ``1/p`` reweighting, as in Bai et al.).

    Example::

        z = z_star.detach().requires_grad_()   # at the fixed point
        loss = task_loss + penalty(layer(z, x), z, step)
    """

    weight: float = 1.0
    p: float = 1.0
    n_samples: int = 1
    schedule: Literal["constant", "linear"] = "constant"
    warmup_steps: int = 0
    normalize: bool = True
    generator: torch.Generator | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.weight < 0:
            raise ValueError(f"weight must be nonnegative, got {self.weight}")
        if not 0.0 <= self.p <= 1.0:
            raise ValueError(f"p (probability of applying the penalty) must lie in [0, 1], got {self.p}")
        if self.n_samples < 1:
            raise ValueError(f"n_samples must be at least 1, got {self.n_samples}")
        if self.schedule not in ("constant", "linear"):
            raise ValueError(f"schedule must be 'constant' or 'linear', got {self.schedule!r}")
        if self.schedule == "linear" and self.warmup_steps < 1:
            raise ValueError(f"schedule='linear' needs warmup_steps >= 1, got {self.warmup_steps}")

    def weight_at(self, step: int) -> float:
        """The scheduled weight at training step ``step`` (0-based)."""
        if self.schedule == "constant":
            return float(self.weight)
        return float(self.weight) * min(1.0, max(0, step) / self.warmup_steps)

    def __call__(self, fz: StateLike, z: StateLike, step: int = 0) -> Tensor:
        fzs, _ = _as_tuple(fz, "fz")
        zero = torch.zeros((), dtype=fzs[0].dtype, device=fzs[0].device)
        w = self.weight_at(step)
        if w == 0.0 or self.p == 0.0:
            return zero
        if self.p < 1.0:
            draw = torch.rand((), generator=self.generator, device=self.generator.device if self.generator else "cpu")
            if float(draw) >= self.p:
                return zero
        est = jacobian_frobenius(
            fz, z, n_samples=self.n_samples, normalize=self.normalize, create_graph=True, generator=self.generator
        )
        return w * est
