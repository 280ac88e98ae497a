"""Errors that describe bad user input (files, shapes, values); the CLI prints them without a traceback."""

from __future__ import annotations

__all__ = ["UserInputError"]


class UserInputError(ValueError):
    """Bad input from a user: a missing or corrupt file, a wrong shape, dtype or value. The message names it."""
