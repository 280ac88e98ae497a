"""Pieces every command-line module shares: output-path checks, solve-status reporting and exit codes.

Conventions (all ``fpntools`` commands):

* exit code ``2`` (:data:`EXIT_USER_ERROR`): bad input, named in one line on stderr, nothing written;
* exit code ``3`` (:data:`EXIT_NOT_USABLE`): the computation ran but its result is not usable (a solve that
  went non-finite or missed its tolerance where the output depends on it); a warning names the reason;
* exit code ``0``: the output is usable; a solve that stopped at its budget but whose output is still
  usable is reported with a warning on stderr and exit code 0.

Output paths are checked *before* any computation (:func:`check_output_path`), so a typo in ``--out`` never
costs a whole run.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Sequence

from fpntools.errors import UserInputError

__all__ = [
    "EXIT_USER_ERROR",
    "EXIT_NOT_USABLE",
    "NotUsableError",
    "check_output_path",
    "check_output_dir",
    "warn",
]

EXIT_USER_ERROR = 2
EXIT_NOT_USABLE = 3


class NotUsableError(RuntimeError):
    """The computation finished but its result must not be used (non-finite, not converged where it matters).

    The top-level CLI prints ``error: <message>`` and exits with :data:`EXIT_NOT_USABLE`.
    """


def warn(message: str) -> None:
    """One ``warning: ...`` line on stderr."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


def check_output_path(path: str | os.PathLike, suffixes: Sequence[str] | None = None, what: str = "output") -> Path:
    """Validate an output *file* path before computing; returns it as a :class:`Path`.

    Raises :class:`~fpntools.errors.UserInputError` when ``path`` is an existing directory, its folder does not
    exist or is not writable, or its suffix is not one of ``suffixes`` (case-insensitive, e.g. ``(".png",)``).
    """
    p = Path(path)
    if suffixes is not None and p.suffix.lower() not in tuple(s.lower() for s in suffixes):
        raise UserInputError(f"{what} {p} must end in {' or '.join(suffixes)}")
    if p.is_dir():
        raise UserInputError(f"{what} {p} is a directory; give a file name")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise UserInputError(f"{what} folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserInputError(f"{what} folder {parent} is not writable")
    if p.exists() and not os.access(p, os.W_OK):
        raise UserInputError(f"{what} {p} exists and is not writable")
    return p


def check_output_dir(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Validate an output *folder* (created if missing) before computing; returns it as a :class:`Path`.

    Raises :class:`~fpntools.errors.UserInputError` when ``path`` is an existing file, or it cannot be created
    or written.
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UserInputError(f"{what} {p} is a file, not a folder")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserInputError(f"cannot create {what} {p}: {exc.strerror or exc}") from None
    if not os.access(p, os.W_OK | os.X_OK):
        raise UserInputError(f"{what} {p} is not writable")
    return p
