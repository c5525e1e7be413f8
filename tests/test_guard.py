"""labkit.guard: each guard accepts what it says and names the bad value otherwise."""

import math

import pytest

from labkit import guard


def test_positive_int():
    assert guard.positive_int("steps", 3) == 3
    for bad in (0, -1, 2.0, True, "3", None):
        with pytest.raises(ValueError, match=r"steps must be a positive integer; got steps="):
            guard.positive_int("steps", bad)
    with pytest.raises(ValueError, match="such as 8"):
        guard.positive_int("r", 0, "8")


def test_positive_and_non_negative_float():
    assert guard.positive_float("lr", 1e-4) == 1e-4 and isinstance(guard.positive_float("lr", 1), float)
    for bad in (0, -1e-3, math.nan, math.inf, True, "1e-4"):
        with pytest.raises(ValueError, match=r"lr must be a positive number such as 1e-4; got lr="):
            guard.positive_float("lr", bad, "1e-4")
    assert guard.non_negative_float("kl_coef", 0) == 0.0
    with pytest.raises(ValueError, match="kl_coef must be a number >= 0"):
        guard.non_negative_float("kl_coef", -0.1)


def test_fraction_and_one_of():
    assert guard.fraction("mix", 0) == 0.0 and guard.fraction("mix", 0.5) == 0.5
    with pytest.raises(ValueError, match=r"in \[0, 1\)"):
        guard.fraction("mix", 1.0)
    assert guard.fraction("p", 1.0, closed=True) == 1.0
    for bad in (-0.1, math.nan, "10%", True):
        with pytest.raises(ValueError, match="mix must be"):
            guard.fraction("mix", bad)
    assert guard.one_of("method", "lora", ("lora", "dora")) == "lora"
    with pytest.raises(ValueError, match="method must be one of 'lora', 'dora'; got method='lorra'"):
        guard.one_of("method", "lorra", ("lora", "dora"))
