"""Fused steps of the fixed-point engine on flat batched states, with Triton kernels and torch fallbacks.

Functions
---------
* :func:`anderson_gram` -- ``H = G G^T`` per sample, the Gram matrix of the Anderson residual history.
* :func:`anderson_mix` -- the Anderson mixing step

  .. math::  z_{k+1} = \\beta \\sum_{i<m} \\alpha_i F_i + (1 - \\beta) \\sum_{i<m} \\alpha_i X_i ,

  one fused pass over ``X`` and ``F`` (the ``X`` pass is skipped entirely when ``beta == 1``).
* :func:`anderson_combine` -- the same kernel as two weighted sums ``sum_i c_i F_i + sum_i d_i G_i``; the
  solver stores residuals ``G`` instead of iterates and mixes with ``c = alpha``, ``d = -(1 - beta) alpha``.
* :func:`residual_norms` -- ``(||f(z) - z||_2, ||f(z)||_2)`` per sample in one pass over ``fz`` and ``z``.

Dispatch
--------
Every function takes ``backend="auto" | "torch" | "triton"``. ``"auto"`` runs the compiled Triton kernel
when the inputs are CUDA tensors, :func:`triton_available` is true and the interpreter is off, else the
torch path. ``"triton"`` forces the
kernel; on CPU tensors this only works under the Triton interpreter (``TRITON_INTERPRET=1`` in the environment
when the kernels are first built). Triton is imported lazily: this module imports without Triton installed.

Both paths accumulate in float32 for float16 / bfloat16 inputs (float64 stays float64) and return the input
dtype. Both paths are differentiable: the Triton path is wrapped in an ``autograd.Function`` whose backward
is written in torch ops (so double backward works too).
"""

from __future__ import annotations

import functools
import importlib.util
import os
from types import SimpleNamespace
from typing import Any, Literal

import torch
from torch import Tensor

__all__ = [
    "Backend",
    "anderson_combine",
    "anderson_gram",
    "anderson_mix",
    "residual_norms",
    "triton_available",
    "triton_status",
]

Backend = Literal["auto", "torch", "triton"]
_BACKENDS = ("auto", "torch", "triton")
_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


# --------------------------------------------------------------------------------------------------------
# Triton availability and lazily built kernels
# --------------------------------------------------------------------------------------------------------


def _interpret_mode() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


@functools.lru_cache(maxsize=None)
def _import_triton() -> tuple[Any, str | None]:
    """``(triton module or None, error message or None)``; cached so a failing import is tried once."""
    if importlib.util.find_spec("triton") is None:
        return None, "not installed"
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception as exc:  # a broken install must not break fpntools
        return None, f"import failed ({type(exc).__name__}: {exc})"
    return triton, None


def triton_available() -> bool:
    """True when ``triton`` (and ``triton.language``) import. Says nothing about a GPU being present."""
    return _import_triton()[0] is not None


def triton_status() -> str:
    """One line for ``fpntools info``: Triton version and where the fpntools kernels can run."""
    triton, err = _import_triton()
    if triton is None:
        return str(err)
    version = getattr(triton, "__version__", "installed")
    if torch.cuda.is_available():
        where = f"kernels run on CUDA ({torch.cuda.get_device_name(0)})"
    elif _interpret_mode():
        where = "no CUDA device; kernels run on CPU in the interpreter (TRITON_INTERPRET=1)"
    else:
        where = "no CUDA device; kernels unused (torch fallback), TRITON_INTERPRET=1 runs them on CPU"
    return f"{version} ({where})"


@functools.lru_cache(maxsize=None)
def _kernels(interpret: bool) -> SimpleNamespace:
    """Build the ``@triton.jit`` kernels once per interpreter mode.

    ``triton.jit`` decides at decoration time whether a function is compiled or interpreted (it reads
    ``TRITON_INTERPRET``), hence the cache key.
    """
    triton, err = _import_triton()
    if triton is None:
        raise RuntimeError(f"backend='triton' requested but triton is {err}")
    import triton.language as tl

    @triton.jit
    def mix_kernel(
        x_ptr, f_ptr, cx_ptr, cf_ptr, out_ptr,
        n, m,
        sxb, sxm, sxn,
        sfb, sfm, sfn,
        scb, scm,
        sob, son,
        MIX_X: tl.constexpr, ACC64: tl.constexpr, BLOCK: tl.constexpr,
    ):  # fmt: skip
        # out[b, j] = sum_i cf[b, i] F[b, i, j] + cx[b, i] X[b, i, j], j in this program's block of N.
        b = tl.program_id(0).to(tl.int64)
        offs = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        if ACC64:
            acc = tl.zeros([BLOCK], dtype=tl.float64)
        else:
            acc = tl.zeros([BLOCK], dtype=tl.float32)
        for i in range(m):
            cf = tl.load(cf_ptr + b * scb + i * scm)
            fv = tl.load(f_ptr + b * sfb + i * sfm + offs * sfn, mask=mask, other=0.0)
            acc += cf * fv.to(acc.dtype)
            if MIX_X:
                cx = tl.load(cx_ptr + b * scb + i * scm)
                xv = tl.load(x_ptr + b * sxb + i * sxm + offs * sxn, mask=mask, other=0.0)
                acc += cx * xv.to(acc.dtype)
        tl.store(out_ptr + b * sob + offs * son, acc.to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def resid_kernel(
        fz_ptr, z_ptr, part_ptr,
        n,
        sfb, sfn, szb, szn,
        spb, spc,
        ACC64: tl.constexpr, BLOCK: tl.constexpr, ITERS: tl.constexpr,
    ):  # fmt: skip
        # part[b, c, 0] = sum_j (fz - z)^2, part[b, c, 1] = sum_j fz^2 over chunk c (ITERS blocks) of sample b.
        b = tl.program_id(0).to(tl.int64)
        c = tl.program_id(1).to(tl.int64)
        if ACC64:
            sr = tl.zeros([BLOCK], dtype=tl.float64)
            sf = tl.zeros([BLOCK], dtype=tl.float64)
        else:
            sr = tl.zeros([BLOCK], dtype=tl.float32)
            sf = tl.zeros([BLOCK], dtype=tl.float32)
        for it in range(ITERS):
            offs = (c * ITERS + it) * BLOCK + tl.arange(0, BLOCK)
            mask = offs < n
            fv = tl.load(fz_ptr + b * sfb + offs * sfn, mask=mask, other=0.0).to(sr.dtype)
            zv = tl.load(z_ptr + b * szb + offs * szn, mask=mask, other=0.0).to(sr.dtype)
            d = fv - zv
            sr += d * d
            sf += fv * fv
        tl.store(part_ptr + b * spb + c * spc, tl.sum(sr, axis=0))
        tl.store(part_ptr + b * spb + c * spc + 1, tl.sum(sf, axis=0))

    return SimpleNamespace(triton=triton, mix=mix_kernel, resid=resid_kernel)


# --------------------------------------------------------------------------------------------------------
# validation and dispatch
# --------------------------------------------------------------------------------------------------------


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_float(name: str, t: Any) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _FLOATS:
        raise TypeError(f"{name} has dtype {t.dtype}; expected float16, bfloat16, float32 or float64")


def _use_triton(backend: str, *tensors: Tensor) -> bool:
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    if backend == "torch":
        return False
    on_cuda = all(t.is_cuda for t in tensors)
    if backend == "auto":  # the compiled kernel only: the interpreter (TRITON_INTERPRET=1) is a CPU debugging aid
        return on_cuda and triton_available() and not _interpret_mode()
    # forced
    if not triton_available():
        raise RuntimeError(f"backend='triton' requested but triton is {_import_triton()[1]}")
    if not on_cuda and not _interpret_mode():
        devices = sorted({str(t.device) for t in tensors})
        raise RuntimeError(
            f"backend='triton' needs CUDA tensors (got {', '.join(devices)}); "
            "set TRITON_INTERPRET=1 before the first kernel call to run the kernels on CPU in the interpreter"
        )
    return True


# --------------------------------------------------------------------------------------------------------
# Gram matrix
# --------------------------------------------------------------------------------------------------------


def anderson_gram(G: Tensor) -> Tensor:
    """Batched Gram matrix ``H[b] = G[b] G[b]^T``, i.e. ``H[b, i, j] = <g_i, g_j>`` for ``G`` of shape (B, m, N).

    A single batched GEMM (cuBLAS / MKL already run it at roofline, so there is no Triton kernel). For
    float16 / bfloat16 input the products are accumulated and returned in float32, since residual inner
    products easily leave the half-precision range. Returns a (B, m, m) symmetric tensor.
    """
    _check_float("G", G)
    if G.dim() != 3:
        raise ValueError(f"G must have shape (B, m, N), got {tuple(G.shape)}")
    acc = _acc_dtype(G.dtype)
    Ga = G if G.dtype == acc else G.to(acc)
    return torch.bmm(Ga, Ga.transpose(1, 2))


# --------------------------------------------------------------------------------------------------------
# Anderson mixing
# --------------------------------------------------------------------------------------------------------


def _check_mix(X: Tensor, F: Tensor, alpha: Tensor, beta: float) -> None:
    _check_float("X", X)
    _check_float("F", F)
    _check_float("alpha", alpha)
    if X.dim() != 3:
        raise ValueError(f"X must have shape (B, m, N), got {tuple(X.shape)}")
    if F.shape != X.shape:
        raise ValueError(f"F has shape {tuple(F.shape)} but X has shape {tuple(X.shape)}; they must match")
    if alpha.shape != X.shape[:2]:
        raise ValueError(f"alpha must have shape (B, m) = {tuple(X.shape[:2])}, got {tuple(alpha.shape)}")
    if F.dtype != X.dtype:
        raise TypeError(f"F has dtype {F.dtype} but X has dtype {X.dtype}; they must match")
    if len({X.device, F.device, alpha.device}) != 1:
        raise ValueError(f"X, F, alpha must be on one device, got {X.device}, {F.device}, {alpha.device}")
    if X.shape[1] == 0:
        raise ValueError("X has an empty history (m = 0); Anderson mixing needs at least one pair")
    if isinstance(beta, Tensor) or not isinstance(beta, (int, float)):
        raise TypeError(f"beta must be a Python float, got {type(beta).__name__}")


def _combine_torch(F: Tensor, cf: Tensor, G: Tensor | None, cg: Tensor | None) -> Tensor:
    acc = _acc_dtype(F.dtype)
    out = torch.bmm(cf.to(acc).unsqueeze(1), F if F.dtype == acc else F.to(acc))
    if G is not None:
        cga, Ga = cg.to(acc).unsqueeze(1), (G if G.dtype == acc else G.to(acc))
        out = torch.baddbmm(out, cga, Ga) if torch.is_grad_enabled() else out.baddbmm_(cga, Ga)
    out = out.squeeze(1)
    return out if out.dtype == F.dtype else out.to(F.dtype)


def _block_for(n: int) -> int:
    return int(min(1024, max(16, 1 << max(0, (n - 1).bit_length()))))


def _mix_triton_raw(X: Tensor, F: Tensor, cf: Tensor, cx: Tensor, mix_x: bool, out: Tensor | None = None) -> Tensor:
    """``sum_i cf_i F_i (+ cx_i X_i when mix_x)`` by the kernel; ``cf`` and ``cx`` contiguous ``(B, m)``.

    ``out`` (B, N) may be one of the rows ``X[:, i]`` or ``F[:, i]`` being mixed: each program reads all ``m``
    entries of its block before it writes the block.
    """
    k = _kernels(_interpret_mode())
    b, m, n = F.shape
    if out is None:
        out = torch.empty(b, n, dtype=F.dtype, device=F.device)
    if n == 0 or b == 0:
        return out
    block = _block_for(n)
    grid = (b, k.triton.cdiv(n, block))
    k.mix[grid](
        X, F, cx, cf, out,
        n, m,
        X.stride(0), X.stride(1), X.stride(2),
        F.stride(0), F.stride(1), F.stride(2),
        cf.stride(0), cf.stride(1),
        out.stride(0), out.stride(1),
        MIX_X=mix_x, ACC64=cf.dtype == torch.float64, BLOCK=block,
    )  # fmt: skip
    return out


class _CombineTriton(torch.autograd.Function):
    """``out = sum_i cf_i F_i + cg_i G_i`` by the Triton kernel; backward in torch ops (double-differentiable).

    With upstream gradient ``g``: ``dF_i = cf_i g``, ``dG_i = cg_i g``, ``dcf_i = <g, F_i>``,
    ``dcg_i = <g, G_i>``. ``G = None`` drops the second sum (the kernel then never reads it).
    """

    @staticmethod
    def forward(ctx: Any, F: Tensor, cf: Tensor, G: Tensor | None, cg: Tensor | None) -> Tensor:  # type: ignore[override]
        acc = _acc_dtype(F.dtype)
        cfa = cf.detach().to(acc).contiguous()
        mix_g = G is not None
        cga = cg.detach().to(acc).contiguous() if mix_g else cfa
        ctx.save_for_backward(F, cf, G, cg)
        return _mix_triton_raw(G.detach() if mix_g else F.detach(), F.detach(), cfa, cga, mix_g)

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, g: Tensor
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None, Tensor | None]:
        F, cf, G, cg = ctx.saved_tensors
        acc = _acc_dtype(F.dtype)
        ga = g.to(acc)
        dF = dcf = dG = dcg = None
        if ctx.needs_input_grad[0]:
            dF = (cf.to(acc)[:, :, None] * ga[:, None, :]).to(F.dtype)
        if ctx.needs_input_grad[1]:
            dcf = torch.bmm(F.to(acc), ga.unsqueeze(-1)).squeeze(-1).to(cf.dtype)
        if G is not None and ctx.needs_input_grad[2]:
            dG = (cg.to(acc)[:, :, None] * ga[:, None, :]).to(G.dtype)
        if G is not None and ctx.needs_input_grad[3]:
            dcg = torch.bmm(G.to(acc), ga.unsqueeze(-1)).squeeze(-1).to(cg.dtype)
        return dF, dcf, dG, dcg


def _combine(
    F: Tensor, cf: Tensor, G: Tensor | None, cg: Tensor | None, backend: Backend, out: Tensor | None = None
) -> Tensor:
    """Dispatch without input validation (the engine's hot loop; public callers go through the checks).

    ``out`` (no autograd): write the result there; it may be one of the rows being combined.
    """
    triton = _use_triton(backend, F, cf)
    if out is None:
        return _CombineTriton.apply(F, cf, G, cg) if triton else _combine_torch(F, cf, G, cg)
    if triton:
        acc = _acc_dtype(F.dtype)
        cfa = cf.to(acc).contiguous()
        cga = cg.to(acc).contiguous() if G is not None else cfa
        return _mix_triton_raw(F if G is None else G, F, cfa, cga, G is not None, out=out)
    return out.copy_(_combine_torch(F, cf, G, cg))


def anderson_combine(
    F: Tensor, cf: Tensor, G: Tensor | None = None, cg: Tensor | None = None, backend: Backend = "auto"
) -> Tensor:
    """Two weighted sums over a history: ``out[b] = sum_i cf[b,i] F[b,i] + sum_i cg[b,i] G[b,i]``.

    The Anderson solver keeps ``f(z_i)`` in ``F`` and the residuals ``g_i = f(z_i) - z_i`` in ``G``, so its
    step ``beta sum a_i f_i + (1 - beta) sum a_i z_i`` is ``cf = a``, ``cg = -(1 - beta) a`` (and ``G`` is not
    read at all when ``beta = 1``). ``F, G``: (B, m, N), any strides; ``cf, cg``: (B, m). Returns (B, N) in
    ``F``'s dtype, accumulated in float32 (float64 for float64 input); differentiable in every argument.
    """
    _check_mix(F if G is None else G, F, cf, 1.0)
    if (G is None) != (cg is None):
        raise ValueError("G and cg go together: pass both or neither")
    if cg is not None and cg.shape != cf.shape:
        raise ValueError(f"cg has shape {tuple(cg.shape)} but cf has shape {tuple(cf.shape)}; they must match")
    return _combine(F, cf, G, cg, backend)


def anderson_mix(X: Tensor, F: Tensor, alpha: Tensor, beta: float, backend: Backend = "auto") -> Tensor:
    """Anderson mixing ``out[b] = beta * sum_i alpha[b,i] F[b,i] + (1 - beta) * sum_i alpha[b,i] X[b,i]``.

    Args:
        X: (B, m, N) past iterates ``z_i`` (any strides, e.g. a slice ``hist[:, :n]`` of a ring buffer).
        F: (B, m, N) their images ``f(z_i)``, same shape and dtype as ``X``.
        alpha: (B, m) mixing weights (usually summing to one per sample).
        beta: damping in ``(0, 1]``; ``beta = 1`` never reads ``X``.
        backend: ``"auto"`` (Triton on CUDA when available), ``"torch"`` or ``"triton"``.

    Returns:
        (B, N) tensor in the dtype of ``X``; accumulation in float32 (float64 for float64 input).
    """
    _check_mix(X, F, alpha, beta)
    beta = float(beta)
    cf = alpha if beta == 1.0 else beta * alpha
    if beta == 1.0:
        return _combine(F, cf, None, None, backend)
    return _combine(F, cf, X, (1.0 - beta) * alpha, backend)


# --------------------------------------------------------------------------------------------------------
# residual norms
# --------------------------------------------------------------------------------------------------------


def _resid_torch(fz: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
    acc = _acc_dtype(fz.dtype)
    fa = fz.to(acc)
    r = torch.linalg.vector_norm(fa - z.to(acc), dim=1)
    f = torch.linalg.vector_norm(fa, dim=1)
    return r.to(fz.dtype), f.to(fz.dtype)


def _resid_triton_raw(fz: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
    k = _kernels(_interpret_mode())
    b, n = fz.shape
    acc = _acc_dtype(fz.dtype)
    if n == 0:
        zero = torch.zeros(b, dtype=acc, device=fz.device)
        return zero, zero.clone()
    block = _block_for(n)
    iters = int(min(8, k.triton.cdiv(n, block)))
    chunks = k.triton.cdiv(n, block * iters)
    part = torch.empty(b, chunks, 2, dtype=acc, device=fz.device)
    k.resid[(b, chunks)](
        fz, z, part,
        n,
        fz.stride(0), fz.stride(1), z.stride(0), z.stride(1),
        part.stride(0), part.stride(1),
        ACC64=acc == torch.float64, BLOCK=block, ITERS=iters,
    )  # fmt: skip
    sums = part.sum(dim=1).sqrt()
    return sums[:, 0], sums[:, 1]


class _ResidTriton(torch.autograd.Function):
    """Residual norms by the Triton kernel; backward ``d||r|| = r/||r||`` in torch ops (0 at ``r = 0``)."""

    @staticmethod
    def forward(ctx: Any, fz: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        r, f = _resid_triton_raw(fz.detach(), z.detach())
        ctx.save_for_backward(fz, z, r, f)
        return r.to(fz.dtype), f.to(fz.dtype)

    @staticmethod
    def backward(ctx: Any, gr: Tensor, gf: Tensor) -> tuple[Tensor | None, Tensor | None]:  # type: ignore[override]
        fz, z, r, f = ctx.saved_tensors
        acc = r.dtype
        fa, za = fz.to(acc), z.to(acc)
        wr = torch.where(r > 0, gr.to(acc) / r.clamp_min(torch.finfo(acc).tiny), torch.zeros_like(r))
        wf = torch.where(f > 0, gf.to(acc) / f.clamp_min(torch.finfo(acc).tiny), torch.zeros_like(f))
        dr = wr[:, None] * (fa - za)
        dfz = (dr + wf[:, None] * fa).to(fz.dtype) if ctx.needs_input_grad[0] else None
        dz = (-dr).to(z.dtype) if ctx.needs_input_grad[1] else None
        return dfz, dz


def residual_norms(fz: Tensor, z: Tensor, backend: Backend = "auto") -> tuple[Tensor, Tensor]:
    """Per-sample ``(||fz - z||_2, ||fz||_2)`` for flat states ``fz, z`` of shape (B, N), in one pass.

    These are the absolute residual and the scale of the relative residual ``||f(z) - z|| / ||f(z)||`` used
    by the stopping test. Returns two (B,) tensors in the input dtype (sums of squares accumulate in float32,
    float64 for float64 input, so float16 input does not overflow).
    """
    _check_float("fz", fz)
    _check_float("z", z)
    if fz.dim() != 2:
        raise ValueError(f"fz must have shape (B, N), got {tuple(fz.shape)}")
    if z.shape != fz.shape:
        raise ValueError(f"z has shape {tuple(z.shape)} but fz has shape {tuple(fz.shape)}; they must match")
    if z.dtype != fz.dtype:
        raise TypeError(f"z has dtype {z.dtype} but fz has dtype {fz.dtype}; they must match")
    if z.device != fz.device:
        raise ValueError(f"z is on {z.device} but fz is on {fz.device}")
    return _residual_norms(fz, z, backend)


def _residual_norms(fz: Tensor, z: Tensor, backend: Backend = "auto") -> tuple[Tensor, Tensor]:
    """Dispatch without input validation (the engine's hot loop)."""
    if _use_triton(backend, fz, z):
        return _ResidTriton.apply(fz, z)
    return _resid_torch(fz, z)
