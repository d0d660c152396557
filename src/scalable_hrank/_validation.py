"""Argument checks shared by the public entry points; one message format for all."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from scalable_hrank.errors import InputError


def bad_value(name: str, allowed: str, received: Any) -> ValueError:
    """Return a ValueError naming the argument, the allowed values and what was received."""
    return ValueError(f"{name} must be {allowed}; got {received!r}")


def check_choice(name: str, value: Any, choices: Iterable[str]) -> str:
    """Return ``value`` if it is one of ``choices``; raise ValueError/TypeError otherwise."""
    choices = tuple(choices)
    if not isinstance(value, str):
        msg = f"{name} must be a string, one of {choices}; got {type(value).__name__}"
        raise TypeError(msg)
    if value not in choices:
        raise bad_value(name, f"one of {choices}", value)
    return value


def check_tolerance(name: str, value: float | None, *, upper: float | None = None) -> float | None:
    """Check an optional threshold: finite, >= 0 and (when ``upper`` is given) < upper."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        msg = f"{name} must be a real number; got {type(value).__name__}"
        raise TypeError(msg)
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise bad_value(name, "a finite number >= 0", value)
    if upper is not None and value >= upper:
        raise bad_value(name, f"a finite number in [0, {upper:g})", value)
    return value


def check_positive_int(name: str, value: Any, *, minimum: int = 1,
                       maximum: int | None = None, allow_none: bool = False) -> int | None:
    """Check an integer argument lies in ``[minimum, maximum]``."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        msg = f"{name} must be an integer; got {type(value).__name__}"
        raise TypeError(msg)
    hi = "" if maximum is None else f" and <= {maximum}"
    if value < minimum or (maximum is not None and value > maximum):
        raise bad_value(name, f"an integer >= {minimum}{hi}", value)
    return value


def parse_size(text: Any) -> int | None:
    """A memory size such as ``'8G'``, ``'512M'`` or ``'1e9'`` in bytes (binary units).

    None stays None; anything else that is not a size raises ``InputError``.
    """
    if text is None:
        return None
    t = str(text).strip().upper().removesuffix("B")
    scale = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}.get(t[-1:], 1)
    try:
        return int(float(t[:-1] if scale > 1 else t) * scale)
    except ValueError:
        msg = f"memory must be a size such as 8G or 512M; got {text!r}"
        raise InputError(msg) from None
