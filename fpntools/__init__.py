"""fpntools: implicit-depth (fixed-point) networks, operators and applications.

``z, info = fpntools.fixed_point(f, z0, solver="anderson", backward="implicit", tol=1e-4, max_iter=50)``

The names below are loaded on first use (PEP 562), so importing a torch-free part of the package
(``fpntools.errors``, ``fpntools.cli_support``, ``fpntools.atomic_io``, the command line) does not import torch.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Any

__version__ = "0.1.0"

#: public name -> module that defines it
_EXPORTS = {
    "JFB": "fpntools.backward",
    "BackwardMode": "fpntools.backward",
    "Implicit": "fpntools.backward",
    "ImplicitCG": "fpntools.backward",
    "Phantom": "fpntools.backward",
    "Unroll": "fpntools.backward",
    "FixedPoint": "fpntools.fixed_point",
    "fixed_point": "fpntools.fixed_point",
    "FixedPointError": "fpntools.info",
    "FixedPointInfo": "fpntools.info",
    "Status": "fpntools.info",
    "KM": "fpntools.solvers",
    "Anderson": "fpntools.solvers",
    "Broyden": "fpntools.solvers",
    "FixedPointSolver": "fpntools.solvers",
    "Picard": "fpntools.solvers",
    "JacobianRegConfig": "fpntools.solve_config",
    "SolveConfig": "fpntools.solve_config",
    "make_fixed_point": "fpntools.solve_config",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Load a public name (or a submodule, ``fpntools.operators``) on first access."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    if importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


class _Package(types.ModuleType):
    """Keeps ``fpntools.fixed_point`` the function: importing the submodule of the same name binds the module
    as an attribute of the package, which must not replace the public function."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _EXPORTS and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
