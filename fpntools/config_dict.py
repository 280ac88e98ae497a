"""Reading a dataclass configuration back from a plain dict (weights metadata, run folders) strictly."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from fpntools.errors import UserInputError

__all__ = ["checked_fields"]

T = TypeVar("T")


def checked_fields(cls: type[T], d: Any, what: str) -> dict[str, Any]:
    """The fields of dataclass ``cls`` held by ``d``, as a new dict, after checking that ``d`` is a mapping whose
    keys are all fields of ``cls``.

    Raises :class:`~fpntools.errors.UserInputError` ``"unknown <what> keys: a, b"`` (or ``"<what> must be a
    mapping"``) so a corrupt or foreign metadata file is one line naming the offending keys. Value checks stay
    in ``cls.__post_init__``; ``cls(**checked_fields(cls, d, what))`` is the usual ``from_dict``.
    """
    if not isinstance(d, dict):
        raise UserInputError(f"{what} must be a mapping, got {type(d).__name__}")
    unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise UserInputError(f"unknown {what} keys: {', '.join(map(str, unknown))}")
    return dict(d)
