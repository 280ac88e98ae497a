"""The one tensor input check (fpntools.checks.check_tensor) behind the model and operator checks."""

from __future__ import annotations

import pytest
import torch

from fpntools.checks import InputTypeError, check_tensor
from fpntools.errors import UserInputError
from fpntools.models import check_tensor as model_check
from fpntools.operators._util import check_tensor as operator_check


def test_one_definition_serves_models_and_operators():
    assert model_check is check_tensor
    assert issubclass(InputTypeError, TypeError) and issubclass(InputTypeError, UserInputError)
    ints = torch.ones(2, 3, dtype=torch.int64)
    with pytest.raises(InputTypeError) as model_err:
        model_check(ints, "x", ndim=2)
    with pytest.raises(InputTypeError) as op_err:
        operator_check(ints, "x")
    assert str(model_err.value) == str(op_err.value)
    assert "floating point" in str(op_err.value) and "floating-point" in str(op_err.value)


def test_model_checks():
    x = torch.randn(4, 5)
    assert check_tensor(x, "x", ndim=2, shape={1: 5}) is x
    cases = [
        ([1.0], dict(ndim=2), InputTypeError, "x must be a torch.Tensor, got list"),
        (x[0], dict(ndim=2), UserInputError, r"x must have 2 dimensions, got shape \(5,\)"),
        (x, dict(ndim=(3, 4), hint="MDEQ expects (batch, channels, H, W)"), UserInputError, r"3 or 4 dimensions.*MDEQ"),
        (x, dict(ndim=2, shape={-1: 6}), UserInputError, "size 5 in dimension -1, expected 6"),
        (x[:0], dict(ndim=2), UserInputError, "empty batch"),
        (torch.full((2, 2), float("nan")), dict(ndim=2), UserInputError, "NaN or infinite"),
        (x, dict(ndim=2, floating=False), InputTypeError, "integer ids"),
        (x, dict(min_ndim=3), UserInputError, r"at least 3 dimensions.*\(4, 5\)"),
    ]
    for value, kw, err, msg in cases:
        with pytest.raises(err, match=msg):
            check_tensor(value, "x", **kw)
    check_tensor(torch.randint(0, 5, (2, 7)), "tokens", ndim=2, floating=False)


def test_operator_check_skips_the_finiteness_pass():
    operator_check(torch.full((2, 3), float("inf")), "Box")  # projections accept inf entries
    operator_check(torch.zeros(0, 3), "Box")
    with pytest.raises(ValueError, match="Box must have at least 1 dimensions"):
        operator_check(torch.tensor(1.0), "Box")
