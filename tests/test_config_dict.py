"""``checked_fields``: the strict dict -> dataclass reading every config's ``from_dict`` uses."""

from dataclasses import dataclass

import pytest

from fpntools import SolveConfig
from fpntools.config_dict import checked_fields
from fpntools.errors import UserInputError


@dataclass
class _Cfg:
    a: int = 1
    b: float = 2.0


def test_known_keys_pass_through_as_a_copy():
    d = {"a": 3}
    out = checked_fields(_Cfg, d, "test config")
    assert out == d and out is not d and _Cfg(**out) == _Cfg(a=3)


@pytest.mark.parametrize("bad, message", [
    ({"a": 1, "zz": 0, "c": 2}, "unknown test config keys: c, zz"),
    ([("a", 1)], "test config must be a mapping, got list"),
    (None, "test config must be a mapping, got NoneType"),
])
def test_foreign_content_is_one_line_naming_it(bad, message):
    with pytest.raises(UserInputError, match=f"^{message}$"):
        checked_fields(_Cfg, bad, "test config")


def test_solve_config_round_trip_and_refusal():
    cfg = SolveConfig(solver="picard", tol=1e-6, stop_mode="abs", divergence_factor=None)
    assert SolveConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(UserInputError, match="unknown solve configuration keys: m"):
        SolveConfig.from_dict({**cfg.to_dict(), "m": 5})
