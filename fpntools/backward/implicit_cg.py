"""Implicit differentiation with the adjoint linear system solved by conjugate gradient on the normal
equations (the "Jacobian-based" baseline of Wu Fung et al. 2022, JFB paper)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, ClassVar

import torch
from torch import Tensor

from fpntools.backward.implicit import AdjointBackward
from fpntools.info import FixedPointInfo, Status

__all__ = ["ImplicitCG"]

_TINY = 1e-30


@dataclass
class ImplicitCG(AdjointBackward):
    """Implicit function theorem gradient with the adjoint solved by CG on the normal equations (CGNR).

    Same gradient as :class:`~fpntools.Implicit`: with ``z* = f(z*, theta)``, ``J = df/dz (z*)`` and
    ``v = dL/dz*``, ``dL/dtheta = u^T df/dtheta`` where ``u`` solves ``A u = v`` with ``A = (I - J)^T``.
    ``A`` is not symmetric, so conjugate gradient runs on the normal equations of the residual (CGNR)

    .. math::
        A^T A\\, u = A^T v, \\qquad\\text{i.e.}\\qquad (I - J)(I - J)^T u = (I - J)\\, v,

    in the CGLS form, which keeps the residual ``r = v - A u`` of the original system as an iterate
    (so the stopping test needs no extra product). From ``u_0 = 0``: ``r_0 = v``, ``s_0 = p_0 = A^T r_0``,
    ``gamma_0 = ||s_0||^2`` and, per iteration,

    .. math::
        q = A p, \\quad \\alpha = \\gamma / \\|q\\|^2, \\quad u \\mathrel{+}= \\alpha p, \\quad
        r \\mathrel{-}= \\alpha q, \\quad s = A^T r, \\quad \\beta = \\|s\\|^2 / \\gamma, \\quad
        p = s + \\beta p, \\quad \\gamma = \\|s\\|^2.

    CGNR minimises ``||v - A u||`` over the Krylov space, so the residual never grows. For a
    ``rho``-contraction ``f`` the singular values of ``I - J`` lie in ``[1 - rho, 1 + rho]`` and the
    worst-case residual reduction per iteration is ``rho``, as for the plain adjoint fixed-point iteration,
    at twice the cost per iteration.

    Products: ``A p = p - J^T p`` is a vector-Jacobian product through one saved application of ``f`` (as
    in :class:`~fpntools.Implicit`); ``A^T r = r - J r`` needs a Jacobian-vector product, obtained from the
    same saved graph by the double-VJP trick: ``J^T c`` is built once per backward pass for a dummy
    cotangent ``c`` with ``create_graph=True`` (linear in ``c``), and ``J r = d<J^T c, r>/dc`` is a
    backward pass through that graph. An iteration thus costs one VJP and one JVP (about two reverse passes
    through ``f``); setup costs one VJP with ``create_graph`` and one JVP. ``f`` must support double
    backward.

    Batched per sample: each sample has its own CG scalars ``alpha``, ``beta``, ``gamma`` and stops on its
    own, which assumes that samples do not interact in ``f`` (a block-diagonal ``J``, as the forward loop's
    per-sample stopping does). A sample stops when its residual ``||(I - J)^T u - v||`` divided by ``||v||``
    (``stop_mode="rel"``) or not (``"abs"``) is at most ``tol``, when a product is not finite (its last
    finite ``u`` is kept, status ``NONFINITE``), or after ``max_iter`` iterations, or when CG breaks down
    (``A^T r = 0`` with ``r != 0``: ``I - J`` singular; status ``MAX_ITER``). The residuals are the CGLS
    recurrence's (equal to the true residual in exact arithmetic).

    The adjoint solve's :class:`FixedPointInfo` is stored in ``info.backward`` of the forward solve:
    ``steps`` are CG iterations per sample, ``nfe`` the number of operator applications on the batch
    (VJPs plus JVPs, the setup VJP not counted), ``solver`` is ``"cgnr"``. ``raise_on_failure`` raises
    :class:`FixedPointError` when the adjoint solve does not converge.
    """

    tol: float = 1e-6
    max_iter: int = 50
    stop_mode: str = "rel"
    raise_on_failure: bool = False
    name: ClassVar[str] = "implicit_cg"

    def __post_init__(self) -> None:
        if isinstance(self.tol, bool) or not isinstance(self.tol, (int, float)) or not (
            math.isfinite(self.tol) and self.tol > 0
        ):
            raise ValueError(f"ImplicitCG tol must be a positive finite number, got {self.tol!r}")
        if isinstance(self.max_iter, bool) or not isinstance(self.max_iter, int) or self.max_iter < 1:
            raise ValueError(f"ImplicitCG max_iter must be an integer >= 1, got {self.max_iter!r}")
        if self.stop_mode not in ("rel", "abs"):
            raise ValueError(f"ImplicitCG stop_mode must be 'rel' or 'abs', got {self.stop_mode!r}")

    def _operators(self, fz: Tensor, z_in: Tensor) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]:
        """``p -> (I - J)^T p`` (VJP) and ``w -> (I - J) w`` (JVP by double VJP) on the saved graph."""
        with torch.enable_grad():
            c = torch.zeros_like(fz, requires_grad=True)
            (jtc,) = torch.autograd.grad(fz, z_in, c, create_graph=True, allow_unused=True)

        def a_op(p: Tensor) -> Tensor:
            (jtp,) = torch.autograd.grad(fz, z_in, p, retain_graph=True, allow_unused=True)
            return p if jtp is None else p - jtp

        def at_op(w: Tensor) -> Tensor:
            if jtc is None or not jtc.requires_grad:  # f does not depend on z: J = 0
                return w
            (jw,) = torch.autograd.grad(jtc, c, w, retain_graph=True, allow_unused=True)
            return w if jw is None else w - jw

        return a_op, at_op

    def _adjoint(self, fz: Tensor, z_in: Tensor, v: Tensor, *, info: FixedPointInfo) -> Tensor:
        v = v.detach()
        b, dev = v.shape[0], v.device
        rel = self.stop_mode == "rel"
        v_norm = v.norm(dim=1)

        def measure(r: Tensor) -> tuple[Tensor, Tensor]:
            a = r.norm(dim=1)
            return a, a / v_norm.clamp_min(_TINY)

        u = torch.zeros_like(v)
        r = v.clone()
        abs_res, rel_res = measure(r)
        status = torch.full((b,), int(Status.MAX_ITER), dtype=torch.int8, device=dev)
        steps = torch.zeros(b, dtype=torch.long, device=dev)
        done = (rel_res if rel else abs_res) <= self.tol
        status = torch.where(done, int(Status.CONVERGED), status)
        active = ~done
        nfe = 0
        if bool(active.any()):  # (a batch whose v is 0 needs no products, not even the setup)
            a_op, at_op = self._operators(fz, z_in)
            with torch.no_grad():
                s = at_op(r)
                nfe += 1
                gamma = (s * s).sum(1)
                p = torch.where(active[:, None], s, torch.zeros_like(s))
                for k in range(self.max_iter):
                    # breakdown (A^T r = 0, r != 0) or a non-finite direction: stop before stepping
                    bad = active & ~torch.isfinite(gamma)
                    stuck = active & torch.isfinite(gamma) & (gamma <= 0)
                    status = torch.where(bad, int(Status.NONFINITE), status)
                    active = active & ~(bad | stuck)
                    if not bool(active.any()):
                        break
                    p = torch.where(active[:, None], p, torch.zeros_like(p))
                    q = a_op(p)
                    nfe += 1
                    qq = (q * q).sum(1)
                    ok = active & torch.isfinite(qq) & (qq > 0)
                    alpha = torch.where(ok, gamma / qq.clamp_min(_TINY), torch.zeros_like(qq))
                    u = torch.where(ok[:, None], u + alpha[:, None] * p, u)
                    r = torch.where(ok[:, None], r - alpha[:, None] * q, r)
                    steps = torch.where(active, steps + 1, steps)
                    a_k, r_k = measure(r)
                    abs_res = torch.where(ok, a_k, abs_res)
                    rel_res = torch.where(ok, r_k, rel_res)
                    newly_nonfinite = active & ~torch.isfinite(qq)
                    newly_converged = ok & ((r_k if rel else a_k) <= self.tol)
                    status = torch.where(newly_converged, int(Status.CONVERGED), status)
                    status = torch.where(newly_nonfinite, int(Status.NONFINITE), status)
                    active = active & ok & ~newly_converged
                    if not bool(active.any()) or k == self.max_iter - 1:
                        break
                    s = at_op(r)
                    nfe += 1
                    gamma_new = (s * s).sum(1)
                    beta = gamma_new / gamma.clamp_min(_TINY)
                    beta = torch.where(active & (gamma > 0), beta, torch.zeros_like(beta))
                    p = s + beta[:, None] * p
                    gamma = torch.where(active, gamma_new, gamma)
        self._record(
            info, steps=steps, abs_residual=abs_res, rel_residual=rel_res, sample_status=status, nfe=nfe,
            solver="cgnr",
        )
        return u
