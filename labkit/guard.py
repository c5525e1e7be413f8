"""Argument guards: a bad knob gives one clear ValueError that names the value, what is valid and an example,
instead of a traceback from deep inside torch. Every labkit function that takes a learning rate, a rank, a
number of steps or a share checks it with these.

    guard.positive_int("steps", steps)                         # 1, 2, ...  (not True, not 2.0)
    guard.int_between("k", k, 1, n, about="documents to return")
    guard.positive_float("lr", lr, "1e-4 or 3e-4")             # finite and > 0
    guard.non_negative_float("kl_coef", kl, "0 switches it off")
    guard.fraction("mix", mix, "0.1")                          # in [0, 1)
    guard.one_of("method", method, ("lora", "dora"))
"""

from __future__ import annotations

import math
import numbers


def _say(name: str, what: str, value, example: str | None, about: str | None = None) -> str:
    such = f" such as {example}" if example else ""
    why = f" ({about})" if about else ""
    return f"{name} must be {what}{such}{why}; got {name}={value!r}."


def _is_real(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, numbers.Real)


def positive_int(name: str, value, example: str | None = None, about: str | None = None) -> int:
    """VALUE as an int >= 1; a bool, a float or anything below 1 raises a ValueError naming NAME
    (and ABOUT, a few words on what it is)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(_say(name, "a positive integer", value, example, about))
    return int(value)


def non_negative_int(name: str, value, example: str | None = None, about: str | None = None) -> int:
    """VALUE as an int >= 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(_say(name, "an integer >= 0", value, example, about))
    return int(value)


def int_between(name: str, value, low: int, high: int, about: str | None = None) -> int:
    """VALUE as an int with LOW <= VALUE <= HIGH."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not low <= value <= high:
        raise ValueError(_say(name, f"an integer between {low} and {high}", value, None, about))
    return int(value)


def positive_float(name: str, value, example: str | None = None, about: str | None = None) -> float:
    """VALUE as a finite float > 0."""
    if not _is_real(value) or not math.isfinite(value) or value <= 0:
        raise ValueError(_say(name, "a positive number", value, example, about))
    return float(value)


def non_negative_float(name: str, value, example: str | None = None, about: str | None = None) -> float:
    """VALUE as a finite float >= 0."""
    if not _is_real(value) or not math.isfinite(value) or value < 0:
        raise ValueError(_say(name, "a number >= 0", value, example, about))
    return float(value)


def fraction(name: str, value, example: str | None = None, about: str | None = None, *,
             closed: bool = False) -> float:
    """VALUE as a float in [0, 1) ([0, 1] with CLOSED)."""
    ok = _is_real(value) and math.isfinite(value) and 0 <= value and (value <= 1 if closed else value < 1)
    if not ok:
        raise ValueError(_say(name, "a number in [0, 1]" if closed else "a number in [0, 1)", value, example, about))
    return float(value)


def one_of(name: str, value, choices) -> object:
    """VALUE if it is one of CHOICES, else a ValueError listing them."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {name}={value!r}.")
    return value
