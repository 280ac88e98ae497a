"""The CT forward operator ``A`` (Radon transform discretised by ASTRA) as a ``fpntools`` linear operator.

Two implementations of the same matrix ``W in R^{(n_angles n_detectors) x (n^2)}``:

* :class:`AstraProjector`: ASTRA computes ``W x`` and ``W^T y`` on the fly, one image at a time
  (``astra.experimental.direct_FP2D`` / ``direct_BP2D`` on the tensors' memory). On the CPU the projector
  is ``geometry.projector_type`` (``linear`` parallel, ``line_fanflat`` fan); when ASTRA was built with CUDA
  (``astra.use_cuda()``) and the input lives on a GPU, ASTRA's ``cuda`` projector is used instead.
* :class:`fpntools.operators.SparseOperator` of the exported matrix (:func:`projection_matrix`,
  :meth:`AstraProjector.to_sparse`): a batched sparse mat-mat product, the fastest CPU path for training.

Adjointness (``<A x, y> = <x, A^T y>``):

* the sparse operator applies ``W`` and ``W^T`` of one stored matrix, so the pair is exact up to
  floating-point summation (dot-test relative error ~1e-16 in float64, ~1e-7 in float32);
* ASTRA's CPU ``direct_FP2D`` / ``direct_BP2D`` with the ``linear``/``line``/``strip`` and fan projectors use
  the same weights in both directions (measured dot-test error ~1e-8, the float32 accumulation of ASTRA;
  entries match the exported matrix to ~1e-6 relative);
* ASTRA's CUDA projectors are *not* an exact adjoint pair (ray-driven forward projection with texture
  interpolation, pixel-driven backprojection; not measured here, no GPU: use ``adjointness_error()``).
  The fixed-point theory (firm nonexpansiveness of ``I - t A^T A`` and of the data projections) needs the
  exact pair, so :func:`ct_operator` defaults to the sparse matrix.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from fpntools.training.checkpoint import atomic_write
from fpntools.operators.linear import LinearOperator, SparseOperator
from problems.ct.geometry import CTGeometry
from problems.ct.cache import default_cache_dir

__all__ = ["AstraProjector", "projection_matrix", "ct_operator", "astra_has_cuda"]

_ASTRA_LOCK = threading.Lock()


def astra_has_cuda() -> bool:
    """Whether ASTRA was built with CUDA and a GPU is visible (to ASTRA and to torch)."""
    try:
        import astra

        return bool(astra.use_cuda()) and torch.cuda.is_available()
    except Exception:  # pragma: no cover - astra import problems are reported elsewhere
        return False


class _AstraHandle:
    """Owns one ASTRA projector id; deleted with the handle (shared, not duplicated, by deepcopy)."""

    def __init__(self, geometry: CTGeometry, kind: Literal["cpu", "cuda"]) -> None:
        import astra

        self.kind = kind
        ptype = geometry.projector_type if kind == "cpu" else "cuda"
        self.pid = astra.create_projector(ptype, geometry.astra_proj_geom(), geometry.astra_vol_geom())

    def __deepcopy__(self, memo: dict) -> "_AstraHandle":
        return self

    def __del__(self) -> None:
        try:
            import astra

            astra.projector.delete(self.pid)
        except Exception:
            pass


class AstraProjector(LinearOperator):
    """ASTRA-native CT operator ``A: (B, n, n) -> (B, n_angles, n_detectors)``, batched by a loop over ``B``.

    Args:
        geometry: acquisition geometry (default: the 128 / 30 / 183 parallel-beam contract).
        backend: ``"auto"`` (CUDA projector for CUDA inputs when ASTRA has CUDA, else CPU),
            ``"cpu"`` or ``"cuda"`` (always the CUDA projector; inputs are moved as needed).

    ASTRA computes in float32; other dtypes are converted and the result cast back. The CPU pair is
    adjoint to float32 accuracy; the CUDA pair is not exactly adjoint (see the module docstring).
    """

    def __init__(self, geometry: CTGeometry | None = None, backend: Literal["auto", "cpu", "cuda"] = "auto") -> None:
        geometry = geometry or CTGeometry()
        if backend not in ("auto", "cpu", "cuda"):
            raise ValueError(f"backend must be 'auto', 'cpu' or 'cuda', got {backend!r}")
        if backend == "cuda" and not astra_has_cuda():
            raise RuntimeError("backend='cuda' needs ASTRA built with CUDA and a visible GPU")
        super().__init__(in_shape=geometry.image_shape, out_shape=geometry.sino_shape)
        self.geometry = geometry
        self.backend = backend
        self._handles: dict[str, _AstraHandle] = {}

    # ------------------------------------------------------------------ internals
    def _handle(self, kind: Literal["cpu", "cuda"]) -> _AstraHandle:
        h = self._handles.get(kind)
        if h is None:
            h = self._handles[kind] = _AstraHandle(self.geometry, kind)
        return h

    def _kind(self, t: Tensor) -> Literal["cpu", "cuda"]:
        if self.backend == "cuda" or (self.backend == "auto" and t.is_cuda and astra_has_cuda()):
            return "cuda"
        return "cpu"

    def _project(self, inp: Tensor, out_shape: tuple[int, int], forward: bool) -> Tensor:
        kind = self._kind(inp)
        h = self._handle(kind)
        if kind == "cpu":
            work_device = torch.device("cpu")
        else:
            work_device = inp.device if inp.is_cuda else torch.device("cuda")
        src = inp.detach().to(device=work_device, dtype=torch.float32).contiguous()
        dst = torch.empty((src.shape[0], *out_shape), dtype=torch.float32, device=work_device)
        try:
            self._run(h.pid, src, dst, forward)
        except Exception:
            if kind == "cpu":
                raise
            # ASTRA builds without 2D DLPack device support: host buffers with the same CUDA projector
            src_h, dst_h = src.cpu(), dst.cpu()
            self._run(h.pid, src_h, dst_h, forward)
            dst = dst_h
        return dst.to(device=inp.device, dtype=inp.dtype)

    @staticmethod
    def _run(pid: int, src: Tensor, dst: Tensor, forward: bool) -> None:
        import astra.experimental as ax

        with _ASTRA_LOCK:
            for b in range(src.shape[0]):
                if forward:
                    ax.direct_FP2D(pid, src[b], dst[b])
                else:
                    ax.direct_BP2D(pid, dst[b], src[b])

    def _forward(self, x: Tensor) -> Tensor:
        return self._project(x, self.geometry.sino_shape, forward=True)

    def _adjoint(self, y: Tensor) -> Tensor:
        return self._project(y, self.geometry.image_shape, forward=False)

    # ------------------------------------------------------------------ export
    def to_sparse(self, cache_dir: str | os.PathLike | None = None, dtype: torch.dtype = torch.float32) -> SparseOperator:
        """The same operator as an exact (``W``, ``W^T``) :class:`SparseOperator` (see :func:`ct_operator`)."""
        return ct_operator(self.geometry, backend="sparse", cache_dir=cache_dir, dtype=dtype)

    def extra_repr(self) -> str:
        return f"{self.geometry.describe()}, backend={self.backend}"


def _matrix_path(geometry: CTGeometry, cache_dir: str | os.PathLike | None) -> Path:
    base = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return base / f"ct_matrix_{geometry.key()}.npz"


def projection_matrix(
    geometry: CTGeometry | None = None, cache_dir: str | os.PathLike | None = None, use_cache: bool = True
) -> sp.csr_matrix:
    """The ASTRA CPU projection matrix ``W`` of ``geometry`` as a float32 ``scipy.sparse.csr_matrix`` of shape
    ``(n_angles * n_detectors, n^2)`` (row ``a * n_detectors + d``, column ``i * n + j``; C order of the
    sinogram and the image).

    The matrix is exported once with ``astra.projector.matrix`` and cached as
    ``<cache_dir>/ct_matrix_<geometry key>.npz`` (default :func:`~problems.ct.cache.default_cache_dir`),
    written atomically. A corrupt or mismatched cache file is rebuilt.
    """
    geometry = geometry or CTGeometry()
    shape = (geometry.n_angles * geometry.n_detectors, geometry.image_size**2)
    path = _matrix_path(geometry, cache_dir)
    if use_cache and path.is_file():
        try:
            W = sp.load_npz(path).tocsr()
            if W.shape == shape:
                return W.astype(np.float32)
        except Exception:
            pass
    import astra  # only to export a matrix that is not cached yet

    h = _AstraHandle(geometry, "cpu")
    mid = astra.projector.matrix(h.pid)
    try:
        W = astra.matrix.get(mid).tocsr().astype(np.float32)
    finally:
        astra.matrix.delete(mid)
    W.sort_indices()
    W.eliminate_zeros()
    if W.shape != shape:  # pragma: no cover - ASTRA contract
        raise RuntimeError(f"ASTRA returned a projection matrix of shape {W.shape}, expected {shape}")
    if use_cache:
        atomic_write(path, lambda fh: sp.save_npz(fh, W, compressed=False))
    return W


_OPERATOR_MEMO: dict[tuple, Any] = {}


def ct_operator(
    geometry: CTGeometry | None = None,
    backend: Literal["sparse", "astra"] = "sparse",
    cache_dir: str | os.PathLike | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> LinearOperator:
    """The CT operator ``A`` of ``geometry``: ``(B, n, n) -> (B, n_angles, n_detectors)``.

    ``backend="sparse"`` (default): :class:`fpntools.operators.SparseOperator` of the exported matrix
    (exact adjoint pair; fastest batched CPU path; memoised per geometry / dtype / device in the process).
    ``backend="astra"``: :class:`AstraProjector` (CUDA projectors selected automatically for GPU inputs).
    """
    geometry = geometry or CTGeometry()
    if backend == "astra":
        return AstraProjector(geometry)
    if backend != "sparse":
        raise ValueError(f"backend must be 'sparse' or 'astra', got {backend!r}")
    key = (geometry, str(cache_dir), dtype, str(torch.device(device)))
    op = _OPERATOR_MEMO.get(key)
    if op is None:
        W = projection_matrix(geometry, cache_dir)
        np_dtype = {torch.float32: np.float32, torch.float64: np.float64}.get(dtype)
        if np_dtype is None:
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        op = SparseOperator(W.astype(np_dtype), in_shape=geometry.image_shape, out_shape=geometry.sino_shape)
        if torch.device(device).type != "cpu":
            # move the CSR buffers directly (independent of nn.Module.to)
            op.matrix = op.matrix.to(device)
            op.matrix_t = op.matrix_t.to(device)
        op.geometry = geometry
        _OPERATOR_MEMO[key] = op
    return op
