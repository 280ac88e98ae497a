"""Which optional backends work on this machine (for ``fpntools info`` and for skipping tests)."""

from __future__ import annotations

import importlib
import platform

__all__ = ["backend_report", "version_of"]


def version_of(module: str) -> str | None:
    try:
        mod = importlib.import_module(module)
    except Exception:
        return None
    return str(getattr(mod, "__version__", "installed"))


def _cuda() -> str:
    import torch

    if not torch.cuda.is_available():
        return f"not available (torch {torch.__version__}, CPU build)" if "+cpu" in torch.__version__ else "not available"
    return f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"


def _astra() -> list[tuple[str, str]]:
    v = version_of("astra")
    if v is None:
        return [("ASTRA", "not installed")]
    import astra

    cpu = "works"
    try:
        import numpy as np

        vol = astra.create_vol_geom(8, 8)
        proj = astra.create_proj_geom("parallel", 1.0, 12, np.linspace(0, np.pi, 4, endpoint=False))
        pid = astra.create_projector("linear", proj, vol)
        sid, _ = astra.create_sino(np.ones((8, 8), dtype=np.float32), pid)
        astra.data2d.delete(sid)
        astra.projector.delete(pid)
    except Exception as exc:  # report, never crash `info`
        cpu = f"broken ({exc})"
    gpu = "works" if astra.use_cuda() else "not available"
    return [("ASTRA", v), ("ASTRA CPU projectors", cpu), ("ASTRA CUDA projectors", gpu)]


def _triton() -> str:
    try:
        from fpntools.kernels import triton_status
    except ImportError:
        return "not installed" if version_of("triton") is None else f"{version_of('triton')}"
    return triton_status()


def _cvxpy() -> str:
    if version_of("cvxpy") is None:
        return "not installed"
    import cvxpy

    return f"{cvxpy.__version__} (solvers: {', '.join(sorted(cvxpy.installed_solvers()))})"


def backend_report() -> list[tuple[str, str]]:
    """Rows ``(component, status)`` describing versions and working backends."""
    import fpntools
    import torch

    rows = [
        ("fpntools", fpntools.__version__),
        ("python", platform.python_version()),
        ("torch", torch.__version__),
        ("CUDA", _cuda()),
    ]
    rows += _astra()
    rows += [("triton", _triton()), ("cvxpy", _cvxpy())]
    for mod in ["numpy", "scipy", "skimage", "networkx", "torchdeq"]:
        rows.append((mod, version_of(mod) or "not installed"))
    return rows
