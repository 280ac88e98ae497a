"""Linear operators ``A: R^{in_shape} -> R^{out_shape}`` acting on batches, with exact adjoints.

Every operator is a :class:`torch.nn.Module` with per-sample shapes ``in_shape`` / ``out_shape``; inputs are
batched, ``x`` of shape ``(B, *in_shape)`` and ``y`` of shape ``(B, *out_shape)``. A subclass implements

* ``_forward(x) = A x`` and
* ``_adjoint(y) = A^T y``

on batched tensors, without autograd concerns. The public maps ``A(x)`` (also ``op(x)``, ``op.forward(x)``,
``op @ x``) and ``A_adjoint(y)`` (also ``op.T(y)``) validate shapes and go through a pair of custom autograd
functions: the vector-Jacobian product of ``x -> A x`` is ``g -> A^T g`` and that of ``y -> A^T y`` is
``g -> A g``. Each backward is itself built from the other function, so higher derivatives (double backward)
work, and forward-mode AD (``jvp``) is ``A`` resp. ``A^T``. Subclasses therefore may use non-differentiable
code (sparse kernels, external libraries) in ``_forward`` / ``_adjoint``.

Calls that need no derivative (autograd not recording for the input and no forward-mode AD active) call
``_forward`` / ``_adjoint`` directly, skipping the ``autograd.Function`` overhead in no-grad solver loops.
Composite operators (``@``, ``+``, ``*``, ``.T``) apply the same rule to each factor.

Exception: when the operator owns parameters with ``requires_grad`` (a learned matrix, say) and autograd is
recording, ``_forward`` / ``_adjoint`` are called directly so gradients also reach those parameters; such
operators must then implement them with differentiable torch operations (all operators here do).

Algebra: ``op1 @ op2`` (composition ``x -> A1 A2 x``), ``c * op``, ``op1 + op2``, ``op1 - op2``, ``-op``,
``op.T`` (the adjoint as an operator object; ``op.T.T`` is ``op``).
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "LinearOperator",
    "AdjointOperator",
    "ComposedOperator",
    "ScaledOperator",
    "SumOperator",
    "DenseOperator",
    "SparseOperator",
    "MatrixFreeOperator",
    "Identity",
    "Diagonal",
    "FiniteDifferenceGradient",
    "gradient",
    "divergence",
]

Shape = tuple[int, ...]


def _as_shape(shape: int | Sequence[int], name: str) -> Shape:
    if isinstance(shape, int):
        shape = (shape,)
    try:
        out = tuple(int(s) for s in shape)
    except TypeError as exc:
        raise TypeError(f"{name} must be an int or a sequence of ints, got {shape!r}") from exc
    if any(s < 0 for s in out):
        raise ValueError(f"{name} must have nonnegative entries, got {out}")
    return out


def _numel(shape: Shape) -> int:
    return math.prod(shape)


class _ApplyForward(torch.autograd.Function):
    """``x -> A x`` with VJP ``A^T`` and JVP ``A`` (double-differentiable through :class:`_ApplyAdjoint`)."""

    @staticmethod
    def forward(x: Tensor, op: LinearOperator) -> Tensor:  # type: ignore[override]
        return op._forward(x)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        ctx.op = inputs[1]

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return _ApplyAdjoint.apply(g, ctx.op), None

    @staticmethod
    def jvp(ctx: Any, x_t: Tensor, _op_t: Any) -> Tensor:  # type: ignore[override]
        return ctx.op._forward(x_t)


class _ApplyAdjoint(torch.autograd.Function):
    """``y -> A^T y`` with VJP ``A`` and JVP ``A^T`` (double-differentiable through :class:`_ApplyForward`)."""

    @staticmethod
    def forward(y: Tensor, op: LinearOperator) -> Tensor:  # type: ignore[override]
        return op._adjoint(y)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        ctx.op = inputs[1]

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return _ApplyForward.apply(g, ctx.op), None

    @staticmethod
    def jvp(ctx: Any, y_t: Tensor, _op_t: Any) -> Tensor:  # type: ignore[override]
        return ctx.op._adjoint(y_t)


_is_wrapped = getattr(getattr(torch._C, "_functorch", None), "is_functorch_wrapped_tensor", None)


def _needs_autograd(t: Tensor) -> bool:
    """Whether applying an operator to ``t`` must go through the custom autograd functions: reverse mode is
    recording for ``t``, a forward-mode AD level is active (``torch.autograd.forward_ad``, ``torch.func.jvp``)
    or ``t`` is a ``torch.func`` wrapper. Otherwise ``_forward`` / ``_adjoint`` are called directly, which
    skips the ``autograd.Function`` overhead in no-grad solver loops."""
    if t.requires_grad and torch.is_grad_enabled():
        return True
    if getattr(torch.autograd.forward_ad, "_current_level", 0) >= 0:
        return True
    return _is_wrapped is None or bool(_is_wrapped(t))


def _fwd(op: LinearOperator, x: Tensor) -> Tensor:
    """``op._forward(x)`` inside a composite operator, keeping autograd correct for every child: children with
    trainable parameters run directly (parameter gradients), others through the custom function (their
    ``_forward`` need not be differentiable)."""
    if not op._direct() and _needs_autograd(x):
        return _ApplyForward.apply(x, op)
    return op._forward(x)


def _adj(op: LinearOperator, y: Tensor) -> Tensor:
    """``op._adjoint(y)`` inside a composite operator (see :func:`_fwd`)."""
    if not op._direct() and _needs_autograd(y):
        return _ApplyAdjoint.apply(y, op)
    return op._adjoint(y)


class LinearOperator(nn.Module):
    """Base class of batched linear operators ``A: (B, *in_shape) -> (B, *out_shape)``.

    Args:
        in_shape: per-sample input shape (no batch dimension).
        out_shape: per-sample output shape (no batch dimension).

    Subclasses implement ``_forward(x)`` (``A x``) and ``_adjoint(y)`` (``A^T y``) on batched tensors and
    register their tensors as buffers (or parameters) so that ``.to(device, dtype)`` moves them.
    """

    def __init__(self, in_shape: int | Sequence[int], out_shape: int | Sequence[int]) -> None:
        super().__init__()
        self.in_shape: Shape = _as_shape(in_shape, "in_shape")
        self.out_shape: Shape = _as_shape(out_shape, "out_shape")

    # ------------------------------------------------------------------ to implement
    def _forward(self, x: Tensor) -> Tensor:
        """``A x`` for ``x`` of shape ``(B, *in_shape)``; returns ``(B, *out_shape)``."""
        raise NotImplementedError

    def _adjoint(self, y: Tensor) -> Tensor:
        """``A^T y`` for ``y`` of shape ``(B, *out_shape)``; returns ``(B, *in_shape)``."""
        raise NotImplementedError

    # ------------------------------------------------------------------ checks
    @property
    def in_size(self) -> int:
        """``prod(in_shape)``: the number of columns of the matrix of ``A``."""
        return _numel(self.in_shape)

    @property
    def out_size(self) -> int:
        """``prod(out_shape)``: the number of rows of the matrix of ``A``."""
        return _numel(self.out_shape)

    def _check(self, t: Tensor, shape: Shape, what: str) -> None:
        if not isinstance(t, Tensor):
            raise TypeError(f"{type(self).__name__}.{what} expects a torch.Tensor, got {type(t).__name__}")
        if t.ndim != len(shape) + 1 or tuple(t.shape[1:]) != shape:
            expected = "(B, " + ", ".join(map(str, shape)) + ")" if shape else "(B,)"
            raise ValueError(
                f"{type(self).__name__}.{what}: expected input of shape {expected} (a batch of per-sample shape "
                f"{shape}), got {tuple(t.shape)}"
            )
        if not (t.is_floating_point() or t.is_complex()):
            raise TypeError(f"{type(self).__name__}.{what}: expected a floating-point tensor, got dtype {t.dtype}")

    def _direct(self) -> bool:
        """Whether to bypass the custom autograd functions (learnable parameters need their gradients)."""
        return torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters())

    # ------------------------------------------------------------------ public maps
    def A(self, x: Tensor) -> Tensor:
        """``A x`` for ``x`` of shape ``(B, *in_shape)``, differentiable (VJP ``A^T``)."""
        self._check(x, self.in_shape, "A")
        if self._direct() or not _needs_autograd(x):
            return self._forward(x)
        return _ApplyForward.apply(x, self)

    def A_adjoint(self, y: Tensor) -> Tensor:
        """``A^T y`` for ``y`` of shape ``(B, *out_shape)``, differentiable (VJP ``A``)."""
        self._check(y, self.out_shape, "A_adjoint")
        if self._direct() or not _needs_autograd(y):
            return self._adjoint(y)
        return _ApplyAdjoint.apply(y, self)

    def forward(self, x: Tensor) -> Tensor:
        """Same as :meth:`A`."""
        return self.A(x)

    @property
    def T(self) -> LinearOperator:  # noqa: N802 - mathematical notation
        """The adjoint ``A^T`` as an operator (``op.T(y) == op.A_adjoint(y)``)."""
        return AdjointOperator(self)

    @property
    def H(self) -> LinearOperator:  # noqa: N802
        """Alias of :attr:`T` (real operators)."""
        return self.T

    # ------------------------------------------------------------------ algebra
    def __matmul__(self, other: Any) -> Any:
        if isinstance(other, LinearOperator):
            return ComposedOperator(self, other)
        if isinstance(other, Tensor):
            return self.A(other)
        return NotImplemented

    def __mul__(self, c: Any) -> Any:
        if isinstance(c, (int, float)) or (isinstance(c, Tensor) and c.ndim == 0):
            return ScaledOperator(self, c)
        return NotImplemented

    __rmul__ = __mul__

    def __truediv__(self, c: Any) -> Any:
        if isinstance(c, (int, float)) or (isinstance(c, Tensor) and c.ndim == 0):
            return ScaledOperator(self, 1.0 / c)
        return NotImplemented

    def __neg__(self) -> LinearOperator:
        return ScaledOperator(self, -1.0)

    def __add__(self, other: Any) -> Any:
        if isinstance(other, LinearOperator):
            return SumOperator(self, other)
        return NotImplemented

    def __sub__(self, other: Any) -> Any:
        if isinstance(other, LinearOperator):
            return SumOperator(self, ScaledOperator(other, -1.0))
        return NotImplemented

    # ------------------------------------------------------------------ utilities
    def _reference(self, dtype: torch.dtype | None, device: torch.device | str | None) -> tuple[torch.dtype, torch.device]:
        ref = next((t for t in list(self.parameters()) + list(self.buffers()) if t.is_floating_point()), None)
        if dtype is None:
            dtype = ref.dtype if ref is not None else torch.float64
        if device is None:
            device = ref.device if ref is not None else torch.device("cpu")
        return dtype, torch.device(device)

    @torch.no_grad()
    def norm(
        self,
        n_iter: int = 100,
        tol: float = 1e-9,
        seed: int = 0,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> float:
        """Operator 2-norm ``||A||_2 = sqrt(lambda_max(A^T A))`` by power iteration on ``A^T A``.

        ``v_{k+1} = A^T A v_k / ||A^T A v_k||``, estimate ``lambda_k = <v_k, A^T A v_k>`` (Rayleigh quotient,
        a lower bound increasing to ``||A||^2``). Stops after ``n_iter`` steps or when the relative change of
        ``lambda_k`` is below ``tol``. Deterministic (generator seeded with ``seed``). Default dtype/device:
        those of the operator's first floating buffer, else float64 on the CPU.
        """
        if n_iter < 1:
            raise ValueError(f"n_iter must be >= 1, got {n_iter}")
        dtype, device = self._reference(dtype, device)
        gen = torch.Generator().manual_seed(seed)
        v = torch.randn((1, *self.in_shape), generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)
        nv = v.norm()
        if nv == 0:
            return 0.0
        v = v / nv
        lam = 0.0
        for _ in range(n_iter):
            w = self._adjoint(self._forward(v))
            lam_new = float((v * w).sum())
            nw = float(w.norm())
            if nw == 0.0 or not math.isfinite(nw):
                lam = max(lam_new, 0.0) if math.isfinite(lam_new) else lam
                break
            v = w / nw
            if abs(lam_new - lam) <= tol * abs(lam_new):
                lam = lam_new
                break
            lam = lam_new
        return math.sqrt(max(lam, 0.0))

    @torch.no_grad()
    def adjointness_error(
        self,
        batch: int = 2,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
        seed: int = 0,
    ) -> float:
        """Dot-product test: relative error ``|<A x, y> - <x, A^T y>| / max(||A x|| ||y||, ||x|| ||A^T y||)``.

        ``x``, ``y`` are standard normal of shapes ``(batch, *in_shape)``, ``(batch, *out_shape)`` (seeded);
        the inner products run over the whole batch. The operator's buffers are used in ``dtype`` (a copy is
        made when they differ), so that the test measures the operator and not the rounding of float32. Returns
        ``0.0`` for the zero operator.
        """
        _, device = self._reference(None, device)
        op = self._cast(dtype, device)
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn((batch, *self.in_shape), generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)
        y = torch.randn((batch, *self.out_shape), generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)
        ax = op._forward(x)
        aty = op._adjoint(y)
        lhs = float((ax * y).sum())
        rhs = float((x * aty).sum())
        scale = max(float(ax.norm()) * float(y.norm()), float(x.norm()) * float(aty.norm()))
        if scale == 0.0:
            return 0.0 if lhs == rhs == 0.0 else math.inf
        return abs(lhs - rhs) / scale

    def _cast(self, dtype: torch.dtype, device: torch.device) -> LinearOperator:
        """``self`` if its floating buffers already have ``dtype`` / ``device``, else a converted deep copy."""
        tensors = [t for t in list(self.parameters()) + list(self.buffers()) if t.is_floating_point()]
        if all(t.dtype == dtype and t.device == device for t in tensors):
            return self
        try:
            return copy.deepcopy(self).to(device=device, dtype=dtype)
        except Exception:  # operators holding non-copyable handles: use as is
            return self

    @torch.no_grad()
    def to_dense(
        self, dtype: torch.dtype | None = None, device: torch.device | str | None = None, max_entries: int = 2**24
    ) -> Tensor:
        """The matrix of ``A`` of shape ``(prod(out_shape), prod(in_shape))`` (C-order flattening), built by
        applying ``A`` to the columns of the identity. Refuses operators with more than ``max_entries`` entries.
        """
        n, m = self.in_size, self.out_size
        if n * m > max_entries:
            raise ValueError(f"to_dense: {m} x {n} matrix has more than max_entries={max_entries} entries")
        dtype, device = self._reference(dtype, device)
        eye = torch.eye(n, dtype=dtype, device=device).reshape(n, *self.in_shape)
        cols = self._forward(eye).reshape(n, m)
        return cols.T.contiguous()

    def extra_repr(self) -> str:
        return f"in_shape={self.in_shape}, out_shape={self.out_shape}"


# ---------------------------------------------------------------------- algebra
class AdjointOperator(LinearOperator):
    """``A^T`` of a given operator (shares its buffers; ``.T`` returns the original operator)."""

    def __init__(self, op: LinearOperator) -> None:
        super().__init__(in_shape=op.out_shape, out_shape=op.in_shape)
        self.op = op

    def _forward(self, x: Tensor) -> Tensor:
        return _adj(self.op, x)

    def _adjoint(self, y: Tensor) -> Tensor:
        return _fwd(self.op, y)

    @property
    def T(self) -> LinearOperator:  # noqa: N802
        return self.op


class ComposedOperator(LinearOperator):
    """``A_1 A_2 ... A_k`` (applied right to left); adjoint ``A_k^T ... A_1^T``."""

    def __init__(self, *ops: LinearOperator) -> None:
        flat: list[LinearOperator] = []
        for op in ops:
            if not isinstance(op, LinearOperator):
                raise TypeError(f"ComposedOperator expects LinearOperators, got {type(op).__name__}")
            flat.extend(op.ops if isinstance(op, ComposedOperator) else [op])
        if not flat:
            raise ValueError("ComposedOperator needs at least one operator")
        for left, right in zip(flat[:-1], flat[1:]):
            if left.in_shape != right.out_shape:
                raise ValueError(
                    f"cannot compose {type(left).__name__} (in_shape {left.in_shape}) @ "
                    f"{type(right).__name__} (out_shape {right.out_shape}): shapes differ"
                )
        super().__init__(in_shape=flat[-1].in_shape, out_shape=flat[0].out_shape)
        self.ops = nn.ModuleList(flat)

    def _forward(self, x: Tensor) -> Tensor:
        for op in reversed(self.ops):
            x = _fwd(op, x)
        return x

    def _adjoint(self, y: Tensor) -> Tensor:
        for op in self.ops:
            y = _adj(op, y)
        return y


class ScaledOperator(LinearOperator):
    """``c A`` for a scalar ``c`` (a Python number or a 0-d tensor; a tensor with ``requires_grad`` is learned)."""

    def __init__(self, op: LinearOperator, c: float | Tensor) -> None:
        super().__init__(in_shape=op.in_shape, out_shape=op.out_shape)
        self.op = op
        if isinstance(c, nn.Parameter):
            self.c = c
        elif isinstance(c, Tensor):
            if c.ndim != 0:
                raise ValueError(f"scale must be a scalar, got a tensor of shape {tuple(c.shape)}")
            self.register_buffer("c", c.detach().clone())
        else:
            self.c = float(c)

    def _scale(self, t: Tensor) -> Tensor:
        c = self.c
        return t * (c.to(dtype=t.dtype, device=t.device) if isinstance(c, Tensor) else c)

    def _forward(self, x: Tensor) -> Tensor:
        return self._scale(_fwd(self.op, x))

    def _adjoint(self, y: Tensor) -> Tensor:
        return self._scale(_adj(self.op, y))


class SumOperator(LinearOperator):
    """``A_1 + ... + A_k`` (all with the same shapes); adjoint ``A_1^T + ... + A_k^T``."""

    def __init__(self, *ops: LinearOperator) -> None:
        flat: list[LinearOperator] = []
        for op in ops:
            if not isinstance(op, LinearOperator):
                raise TypeError(f"SumOperator expects LinearOperators, got {type(op).__name__}")
            flat.extend(op.ops if isinstance(op, SumOperator) else [op])
        if not flat:
            raise ValueError("SumOperator needs at least one operator")
        for op in flat[1:]:
            if op.in_shape != flat[0].in_shape or op.out_shape != flat[0].out_shape:
                raise ValueError(
                    f"cannot add operators of shapes {flat[0].in_shape}->{flat[0].out_shape} and "
                    f"{op.in_shape}->{op.out_shape}"
                )
        super().__init__(in_shape=flat[0].in_shape, out_shape=flat[0].out_shape)
        self.ops = nn.ModuleList(flat)

    def _forward(self, x: Tensor) -> Tensor:
        out = _fwd(self.ops[0], x)
        for op in self.ops[1:]:
            out = out + _fwd(op, x)
        return out

    def _adjoint(self, y: Tensor) -> Tensor:
        out = _adj(self.ops[0], y)
        for op in self.ops[1:]:
            out = out + _adj(op, y)
        return out


# ---------------------------------------------------------------------- concrete operators
def _like(t: Tensor, ref: Tensor) -> Tensor:
    """``t`` in the dtype/device of ``ref`` (no copy when they agree)."""
    return t.to(dtype=ref.dtype, device=ref.device)


class DenseOperator(LinearOperator):
    """``A x = M vec(x)`` for a dense matrix ``M`` of shape ``(m, n)`` acting on the C-order flattened sample.

    Args:
        matrix: ``(m, n)`` tensor (an :class:`torch.nn.Parameter` is kept as a learnable parameter).
        in_shape: per-sample input shape with ``prod = n`` (default ``(n,)``).
        out_shape: per-sample output shape with ``prod = m`` (default ``(m,)``).
    """

    def __init__(
        self,
        matrix: Tensor,
        in_shape: int | Sequence[int] | None = None,
        out_shape: int | Sequence[int] | None = None,
    ) -> None:
        if not isinstance(matrix, Tensor):
            matrix = torch.as_tensor(matrix)
        if matrix.ndim != 2:
            raise ValueError(f"DenseOperator: matrix must be 2-D (m, n), got shape {tuple(matrix.shape)}")
        if not (matrix.is_floating_point() or matrix.is_complex()):
            matrix = matrix.to(torch.get_default_dtype())
        m, n = matrix.shape
        in_shape = _as_shape(in_shape if in_shape is not None else n, "in_shape")
        out_shape = _as_shape(out_shape if out_shape is not None else m, "out_shape")
        if _numel(in_shape) != n or _numel(out_shape) != m:
            raise ValueError(
                f"DenseOperator: matrix of shape {(m, n)} does not fit in_shape {in_shape} / out_shape {out_shape}"
            )
        super().__init__(in_shape=in_shape, out_shape=out_shape)
        if isinstance(matrix, nn.Parameter):
            self.matrix = matrix
        else:
            self.register_buffer("matrix", matrix)

    def _forward(self, x: Tensor) -> Tensor:
        M = _like(self.matrix, x)
        return (x.reshape(x.shape[0], -1) @ M.T).reshape(x.shape[0], *self.out_shape)

    def _adjoint(self, y: Tensor) -> Tensor:
        M = _like(self.matrix, y)
        return (y.reshape(y.shape[0], -1) @ M).reshape(y.shape[0], *self.in_shape)

    def to_dense(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None, **_: Any) -> Tensor:
        dtype, device = self._reference(dtype, device)
        return self.matrix.detach().to(dtype=dtype, device=device).clone()


def _to_torch_csr(matrix: Any) -> Tensor:
    """A torch sparse CSR tensor (int64 indices) from a scipy sparse matrix or a torch sparse / dense tensor."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        if isinstance(matrix, Tensor):
            if matrix.ndim != 2:
                raise ValueError(f"SparseOperator: matrix must be 2-D, got shape {tuple(matrix.shape)}")
            t = matrix if matrix.layout == torch.sparse_csr else matrix.to_sparse_csr()
            if t.crow_indices().dtype != torch.int64:
                t = torch.sparse_csr_tensor(
                    t.crow_indices().long(), t.col_indices().long(), t.values(), size=t.shape
                )
            return t
        try:
            import scipy.sparse as sp
        except ImportError:  # pragma: no cover
            sp = None
        if sp is not None and sp.issparse(matrix):
            csr = sp.csr_matrix(matrix)
            csr.sum_duplicates()
            crow = torch.from_numpy(csr.indptr.astype("int64"))
            col = torch.from_numpy(csr.indices.astype("int64"))
            val = torch.from_numpy(csr.data.copy())
            return torch.sparse_csr_tensor(crow, col, val, size=csr.shape)
    raise TypeError(
        f"SparseOperator: expected a scipy.sparse matrix or a torch tensor, got {type(matrix).__name__}"
    )


def _csr_transpose(t: Tensor) -> Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        tt = t.t().to_sparse_csr()
        if tt.crow_indices().dtype != torch.int64:
            tt = torch.sparse_csr_tensor(tt.crow_indices().long(), tt.col_indices().long(), tt.values(), size=tt.shape)
        return tt


class SparseOperator(LinearOperator):
    """``A x = W vec(x)`` for a sparse matrix ``W`` of shape ``(m, n)`` stored in torch CSR format.

    The batch is applied as one sparse-dense product ``(W X^T)^T`` with ``X = (B, n)``; the CSR of ``W^T`` is
    built once at construction, so ``A^T y = (W^T Y^T)^T`` is a CSR product as well. Both buffers move with
    ``.to(device, dtype)``; an input of another dtype/device converts the matrices on the fly (slower: call
    ``.to`` once instead).

    Kernels (``backend``):

    * ``"torch"``: torch's CSR product (MKL on the CPU, cuSPARSE on CUDA; multithreaded).
    * ``"scipy"``: CPU only: ``scipy.sparse`` CSR product on zero-copy numpy views of the same buffers
      (single-threaded; no OpenMP start-up cost, which dominates small products and oversubscribed CPUs).
    * ``"auto"`` (default): on the CPU with float32/float64, ``"torch"`` when torch runs single-threaded
      (``torch.get_num_threads() == 1``: its kernel is then the fastest) and ``"scipy"`` otherwise (torch's
      OpenMP region was measured at 20-100 ms per product on a busy 2-core machine, scipy at 10-60 ms for a
      128x128 CT matrix with batches 1-32); ``"torch"`` on other devices and dtypes. Force a kernel with
      ``backend="torch"`` / ``"scipy"`` (both give the same values up to summation order).

    Args:
        matrix: ``scipy.sparse`` matrix, torch sparse (COO/CSR) tensor or dense tensor, shape ``(m, n)``.
        in_shape: per-sample input shape with ``prod = n`` (default ``(n,)``).
        out_shape: per-sample output shape with ``prod = m`` (default ``(m,)``).
        backend: ``"auto" | "torch" | "scipy"``.
    """

    def __init__(
        self,
        matrix: Any,
        in_shape: int | Sequence[int] | None = None,
        out_shape: int | Sequence[int] | None = None,
        backend: str = "auto",
    ) -> None:
        if backend not in ("auto", "torch", "scipy"):
            raise ValueError(f"SparseOperator: backend must be 'auto', 'torch' or 'scipy', got {backend!r}")
        W = _to_torch_csr(matrix)
        if not (W.values().is_floating_point() or W.values().is_complex()):
            W = W.to(torch.get_default_dtype())
        m, n = W.shape
        in_shape = _as_shape(in_shape if in_shape is not None else n, "in_shape")
        out_shape = _as_shape(out_shape if out_shape is not None else m, "out_shape")
        if _numel(in_shape) != n or _numel(out_shape) != m:
            raise ValueError(
                f"SparseOperator: matrix of shape {(m, n)} does not fit in_shape {in_shape} / out_shape {out_shape}"
            )
        super().__init__(in_shape=in_shape, out_shape=out_shape)
        self.backend = backend
        self.register_buffer("matrix", W)
        self.register_buffer("matrix_t", _csr_transpose(W))
        self._scipy_cache: dict[bool, tuple[tuple, Any]] = {}

    def __deepcopy__(self, memo: dict) -> SparseOperator:
        # torch cannot deepcopy sparse CSR tensors (no storage): clone the buffers, drop the scipy views
        new = self.__class__.__new__(self.__class__)
        memo[id(self)] = new
        for key, value in self.__dict__.items():
            if key == "_buffers":
                new.__dict__[key] = {
                    k: (None if t is None else t.clone() if t.layout == torch.sparse_csr else copy.deepcopy(t, memo))
                    for k, t in value.items()
                }
            elif key == "_scipy_cache":
                new.__dict__[key] = {}
            else:
                new.__dict__[key] = copy.deepcopy(value, memo)
        return new

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_scipy_cache"] = {}
        return state

    @property
    def nnz(self) -> int:
        """Number of stored entries of ``W``."""
        return int(self.matrix.values().numel())

    def _reference(self, dtype, device):  # type: ignore[override]
        v = self.matrix.values()
        return (dtype or v.dtype), torch.device(device) if device is not None else v.device

    def _cast(self, dtype: torch.dtype, device: torch.device) -> LinearOperator:
        v = self.matrix.values()
        if v.dtype == dtype and v.device == device:
            return self
        return SparseOperator(self.matrix.to(device=device, dtype=dtype), self.in_shape, self.out_shape, self.backend)

    def _use_scipy(self, t: Tensor) -> bool:
        if self.backend == "torch":
            return False
        cpu = t.device.type == "cpu" and self.matrix.device.type == "cpu"
        if self.backend == "scipy":
            if not cpu:
                raise ValueError("SparseOperator(backend='scipy') works on CPU tensors only")
            return True
        return (
            cpu
            and torch.get_num_threads() > 1
            and t.dtype in (torch.float32, torch.float64)
            and self.matrix.values().dtype in (torch.float32, torch.float64)
        )

    def _scipy_matrix(self, transpose: bool) -> Any:
        """A ``scipy.sparse.csr_matrix`` sharing memory with the CSR buffer (rebuilt if the buffer changed)."""
        import scipy.sparse as sp

        W = self.matrix_t if transpose else self.matrix
        v = W.values()
        key = (v.data_ptr(), v.dtype, v._version, W.col_indices().data_ptr(), tuple(W.shape))
        hit = self._scipy_cache.get(transpose)
        if hit is not None and hit[0] == key:
            return hit[1]
        S = sp.csr_matrix(
            (v.detach().numpy(), W.col_indices().numpy(), W.crow_indices().numpy()), shape=tuple(W.shape), copy=False
        )
        self._scipy_cache[transpose] = (key, S)
        return S

    def _matmul(self, transpose: bool, t: Tensor, out_shape: Shape) -> Tensor:
        flat = t.reshape(t.shape[0], -1)
        if self._use_scipy(t):
            S = self._scipy_matrix(transpose)
            out = torch.from_numpy(np.asarray(S @ flat.detach().numpy().T)).T
            return out.to(dtype=t.dtype).reshape(t.shape[0], *out_shape)
        W = self.matrix_t if transpose else self.matrix
        v = W.values()
        if v.dtype != t.dtype or v.device != t.device:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                W = W.to(device=t.device, dtype=t.dtype)
        out = (W @ flat.T).T
        return out.reshape(t.shape[0], *out_shape)

    def _forward(self, x: Tensor) -> Tensor:
        return self._matmul(False, x, self.out_shape)

    def _adjoint(self, y: Tensor) -> Tensor:
        return self._matmul(True, y, self.in_shape)

    def to_dense(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None, **_: Any) -> Tensor:
        dtype, device = self._reference(dtype, device)
        return self.matrix.to_dense().to(dtype=dtype, device=device)

    def to_scipy(self) -> Any:
        """The matrix as a ``scipy.sparse.csr_matrix`` (on the CPU)."""
        import scipy.sparse as sp

        W = self.matrix.cpu()
        return sp.csr_matrix(
            (W.values().numpy(), W.col_indices().numpy(), W.crow_indices().numpy()), shape=tuple(W.shape)
        )

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, nnz={self.nnz}, backend={self.backend!r}"


class MatrixFreeOperator(LinearOperator):
    """An operator given by two functions on batched tensors: ``forward_fn(x) = A x``, ``adjoint_fn(y) = A^T y``.

    The caller is responsible for the pair being adjoint (check with :meth:`adjointness_error`).
    """

    def __init__(
        self,
        forward_fn: Callable[[Tensor], Tensor],
        adjoint_fn: Callable[[Tensor], Tensor],
        in_shape: int | Sequence[int],
        out_shape: int | Sequence[int],
    ) -> None:
        if not callable(forward_fn) or not callable(adjoint_fn):
            raise TypeError("MatrixFreeOperator: forward_fn and adjoint_fn must be callables")
        super().__init__(in_shape=in_shape, out_shape=out_shape)
        self.forward_fn = forward_fn
        self.adjoint_fn = adjoint_fn

    def _forward(self, x: Tensor) -> Tensor:
        return self.forward_fn(x)

    def _adjoint(self, y: Tensor) -> Tensor:
        return self.adjoint_fn(y)


class Identity(LinearOperator):
    """``I x = x`` on samples of shape ``shape``."""

    def __init__(self, shape: int | Sequence[int]) -> None:
        super().__init__(in_shape=shape, out_shape=shape)

    def _forward(self, x: Tensor) -> Tensor:
        return x

    def _adjoint(self, y: Tensor) -> Tensor:
        return y

    def norm(self, *args: Any, **kwargs: Any) -> float:
        return 1.0 if self.in_size > 0 else 0.0


class Diagonal(LinearOperator):
    """``D x = w * x`` (elementwise) for weights ``w`` of the per-sample shape; self-adjoint.

    ``weights`` is registered as a buffer (or kept as a parameter if it is an :class:`torch.nn.Parameter`).
    """

    def __init__(self, weights: Tensor) -> None:
        if not isinstance(weights, Tensor):
            weights = torch.as_tensor(weights, dtype=torch.get_default_dtype())
        if not (weights.is_floating_point() or weights.is_complex()):
            weights = weights.to(torch.get_default_dtype())
        super().__init__(in_shape=tuple(weights.shape), out_shape=tuple(weights.shape))
        if isinstance(weights, nn.Parameter):
            self.weights = weights
        else:
            self.register_buffer("weights", weights)

    def _forward(self, x: Tensor) -> Tensor:
        return x * _like(self.weights, x)

    def _adjoint(self, y: Tensor) -> Tensor:
        return y * _like(self.weights, y).conj()

    def norm(self, *args: Any, **kwargs: Any) -> float:
        return float(self.weights.detach().abs().max()) if self.weights.numel() else 0.0


def _resolve_dims(ndim: int, dims: Sequence[int] | None) -> tuple[int, ...]:
    if dims is None:
        return tuple(range(ndim))
    out = []
    for d in dims:
        d = int(d)
        if not -ndim <= d < ndim:
            raise ValueError(f"dimension {d} out of range for a per-sample shape of {ndim} dims")
        out.append(d % ndim)
    if len(set(out)) != len(out):
        raise ValueError(f"repeated dimensions in {tuple(dims)}")
    return tuple(out)


def gradient(x: Tensor, dims: Sequence[int] | None = None) -> Tensor:
    """Forward differences with Neumann boundary of a batch ``x`` of shape ``(B, *shape)``.

    ``(grad x)_k[i] = x[i + e_k] - x[i]`` where ``i + e_k`` is inside the grid, and ``0`` on the last slice along
    dimension ``k``. ``dims`` are per-sample dimensions (default: all); the result has shape
    ``(B, len(dims), *shape)``.
    """
    dims = _resolve_dims(x.ndim - 1, dims)
    comps = []
    for d in dims:
        ax = d + 1
        diff = torch.diff(x, dim=ax)
        pad_shape = list(x.shape)
        pad_shape[ax] = 1
        comps.append(torch.cat([diff, x.new_zeros(pad_shape)], dim=ax))
    return torch.stack(comps, dim=1)


def divergence(p: Tensor, dims: Sequence[int] | None = None) -> Tensor:
    """Discrete divergence, the negative adjoint of :func:`gradient`: ``<grad x, p> = -<x, div p>``.

    ``p`` has shape ``(B, k, *shape)`` with component ``j`` the field along ``dims[j]`` (default
    ``dims = range(len(shape))``). Along one dimension of length ``n`` (backward differences):
    ``(div p)[0] = p[0]``, ``(div p)[i] = p[i] - p[i-1]`` for ``0 < i < n-1``, ``(div p)[n-1] = -p[n-2]``
    (and ``0`` when ``n == 1``).
    """
    if p.ndim < 2:
        raise ValueError(f"divergence expects (B, k, *shape), got shape {tuple(p.shape)}")
    ndim = p.ndim - 2
    dims = _resolve_dims(ndim, dims)
    if p.shape[1] != len(dims):
        raise ValueError(f"divergence: p has {p.shape[1]} components for {len(dims)} dims")
    out = torch.zeros_like(p[:, 0])
    for j, d in enumerate(dims):
        ax = d + 1
        q = p[:, j]
        n = q.shape[ax]
        if n == 1:
            continue
        first = q.narrow(ax, 0, 1)
        mid = q.narrow(ax, 1, n - 2) - q.narrow(ax, 0, n - 2)
        last = -q.narrow(ax, n - 2, 1)
        out = out + torch.cat([first, mid, last], dim=ax)
    return out


class FiniteDifferenceGradient(LinearOperator):
    """Discrete gradient ``(B, *shape) -> (B, k, *shape)`` by forward differences with Neumann boundary.

    For a 2-D image ``(H, W)`` the output is ``(2, H, W)``: component 0 is ``x[i+1, j] - x[i, j]`` (zero on the
    last row), component 1 is ``x[i, j+1] - x[i, j]`` (zero on the last column). The adjoint is exactly minus
    the :func:`divergence`, and ``||grad||_2^2 <= 4 k`` (``<= 8`` in 2-D).

    Args:
        shape: per-sample shape, e.g. ``(H, W)``.
        dims: per-sample dimensions to differentiate (default all; ``dims=(1, 2)`` for ``(C, H, W)`` images).
    """

    def __init__(self, shape: int | Sequence[int], dims: Sequence[int] | None = None) -> None:
        shape = _as_shape(shape, "shape")
        if len(shape) == 0:
            raise ValueError("FiniteDifferenceGradient needs at least one dimension")
        resolved = _resolve_dims(len(shape), dims)
        super().__init__(in_shape=shape, out_shape=(len(resolved), *shape))
        self.dims: tuple[int, ...] = resolved

    def _forward(self, x: Tensor) -> Tensor:
        return gradient(x, self.dims)

    def _adjoint(self, y: Tensor) -> Tensor:
        return -divergence(y, self.dims)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, dims={self.dims}"
