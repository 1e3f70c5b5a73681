"""apib_kernels.validation: the integer and number checks shared by apib_kernels and apib."""

import math
from fractions import Fraction

import numpy as np
import pytest

from apib_kernels.validation import check_int, check_number, is_int


def test_is_int():
    assert is_int(0) and is_int(-3) and is_int(np.int64(5))
    assert not is_int(True) and not is_int(False) and not is_int(np.bool_(True))
    assert not is_int(2.0) and not is_int("2") and not is_int(None)


def test_check_int_returns_plain_int():
    assert check_int(3, "k") == 3
    value = check_int(np.int32(7), "k", 1, 7)
    assert value == 7 and type(value) is int


@pytest.mark.parametrize("bad", [True, False, 2.0, "2", None, math.nan])
def test_check_int_rejects_non_integers(bad):
    with pytest.raises(ValueError, match=r"^k must be an integer, got "):
        check_int(bad, "k")


@pytest.mark.parametrize(
    "value, minimum, maximum, message",
    [
        (0, 1, None, r"^n_keep must be an integer >= 1, got 0$"),
        (5, None, 4, r"^n_keep must be an integer <= 4, got 5$"),
        (1, 2, 20, r"^n_keep must be an integer in \[2, 20\], got 1$"),
        (21, 2, 20, r"^n_keep must be an integer in \[2, 20\], got 21$"),
        (True, 0, None, r"^n_keep must be an integer >= 0, got True$"),
    ],
)
def test_check_int_bounds(value, minimum, maximum, message):
    with pytest.raises(ValueError, match=message):
        check_int(value, "n_keep", minimum, maximum)


def test_check_int_bounds_are_inclusive():
    assert check_int(2, "k", 2, 20) == 2 and check_int(20, "k", 2, 20) == 20
    assert check_int(-5, "k", maximum=-5) == -5


def test_check_number_returns_float():
    for v in (0, 0.5, np.float32(0.25), Fraction(1, 4), np.int64(3)):
        out = check_number(v, "tol")
        assert out == float(v) and type(out) is float
    assert check_number(1e-300, "lr", positive=True) == 1e-300
    assert check_number(0, "momentum", below=1) == 0.0


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, np.float64("nan")])
@pytest.mark.parametrize("positive", [False, True])
def test_check_number_rejects_non_finite(bad, positive):
    with pytest.raises(ValueError, match=r"^tol must be a"):
        check_number(bad, "tol", positive=positive)
    with pytest.raises(ValueError, match=r"^tol must be a finite number in"):
        check_number(bad, "tol", positive=positive, below=1)


@pytest.mark.parametrize("bad", [True, False, "0.1", None, 1j])
def test_check_number_rejects_bools_and_non_numbers(bad):
    with pytest.raises(ValueError, match=r"^eps must be a finite number >= 0, got "):
        check_number(bad, "eps")


@pytest.mark.parametrize(
    "value, kwargs, message",
    [
        (-1e-9, {}, r"^weight_decay must be a finite number >= 0, got -1e-09$"),
        (0.0, {"positive": True}, r"^weight_decay must be a positive finite number, got 0.0$"),
        (-1, {"positive": True}, r"^weight_decay must be a positive finite number, got -1$"),
        (1.0, {"below": 1}, r"^weight_decay must be a finite number in \[0, 1\), got 1.0$"),
        (-0.5, {"below": 1}, r"^weight_decay must be a finite number in \[0, 1\), got -0.5$"),
        (0, {"positive": True, "below": 1}, r"^weight_decay must be a finite number in \(0, 1\), got 0$"),
        (5e6, {"positive": True, "below": 4_000_000}, r"in \(0, 4000000\), got 5000000.0$"),
    ],
)
def test_check_number_bounds(value, kwargs, message):
    with pytest.raises(ValueError, match=message):
        check_number(value, "weight_decay", **kwargs)
