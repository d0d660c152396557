"""The quantities every rank formula is built from, checked and resolved once.

A chain of L linear layers has ``widths = (d, M_1, ..., M_{L-1}, K)``. From it, the loss and
the data statistics come ``r = rank(X)``, ``K_f`` (the rank of the loss's Hessian in the
outputs), the bottleneck ``q = min(r, M_1, ..., M_{L-1}, K_f)``, the residual rank ``s`` and,
with biases, ``r~ = rank([X, 1])``. Definitions: docs/theory.md#rank-formulas.

Every check raises :class:`scalable_hrank.errors.InputError` naming the argument.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

from scalable_hrank.errors import InputError

__all__ = [
    "LOSSES",
    "check_count",
    "check_loss",
    "check_widths",
    "num_parameters",
    "output_rank",
    "resolve_augmented_rank",
    "resolve_chain",
    "resolve_residual_rank",
]

#: Loss names the formulas know.
LOSSES: tuple[str, ...] = ("mse", "cross_entropy", "logcosh")


def check_count(name: str, value: Any, minimum: int, maximum: int | None = None) -> int:
    """Return ``value`` as an int in ``[minimum, maximum]``.

    Args:
        name: Argument name for the message.
        value: An int or numpy integer (not a bool).
        minimum: Smallest allowed value.
        maximum: Largest allowed value (None: no limit).

    Raises:
        InputError: Not an integer, or out of range.
    """
    if isinstance(value, bool):
        msg = f"{name} must be an integer; got bool"
        raise InputError(msg)
    try:
        value = operator.index(value)
    except TypeError:
        msg = f"{name} must be an integer; got {type(value).__name__}"
        raise InputError(msg) from None
    if value < minimum or (maximum is not None and value > maximum):
        hi = "" if maximum is None else f" and <= {maximum}"
        msg = f"{name} must be an integer >= {minimum}{hi}; got {value!r}"
        raise InputError(msg)
    return value


def check_widths(widths: Sequence[int]) -> tuple[int, ...]:
    """Return ``widths`` as a tuple of positive ints, at least (d, K).

    Raises:
        InputError: Not a sequence of integers >= 1, or shorter than 2.
    """
    if isinstance(widths, (str, bytes)) or not isinstance(widths, Sequence):
        msg = f"widths must be a sequence of integers [d, M_1, ..., K]; got {type(widths).__name__}"
        raise InputError(msg)
    if len(widths) < 2:
        msg = ("widths must be a sequence [d, M_1, ..., M_{L-1}, K] of length >= 2; "
               f"got {widths!r}")
        raise InputError(msg)
    return tuple(check_count(f"widths[{i}]", w, 1) for i, w in enumerate(widths))


def check_loss(loss: Any) -> str:
    """Return ``loss`` if it is one of :data:`LOSSES`.

    Raises:
        InputError: Any other value (the formulas need to know the loss's output rank).
    """
    if not isinstance(loss, str) or loss not in LOSSES:
        msg = f"loss must be one of {LOSSES}; got {loss!r}"
        raise InputError(msg)
    return loss


def output_rank(num_outputs: int, loss: str = "mse") -> int:
    """Return K_f, the rank of the loss's Hessian with respect to the K outputs.

    Args:
        num_outputs: K, the number of network outputs.
        loss: "mse" or "logcosh" (K_f = K), or "cross_entropy" (K_f = K - 1: softmax does
            not change when the same constant is added to every logit).

    Returns:
        K_f.

    Raises:
        InputError: If ``loss`` is unknown or ``num_outputs < 1``.
    """
    check_loss(loss)
    check_count("num_outputs", num_outputs, 1)
    return num_outputs - 1 if loss == "cross_entropy" else num_outputs


def num_parameters(widths: Sequence[int], *, bias: bool = False) -> int:
    """Count the parameters n of the linear chain with these widths.

    Args:
        widths: [d, M_1, ..., M_{L-1}, K].
        bias: Whether every layer has a bias.

    Returns:
        sum_l M_{l-1} M_l (+ sum_l M_l with biases).
    """
    w = check_widths(widths)
    return sum(a * b + (b if bias else 0) for a, b in zip(w[:-1], w[1:], strict=True))


def resolve_chain(widths: Sequence[int], loss: str, input_rank: int | None,
                  num_samples: int | None) -> tuple[tuple[int, ...], int, int, int]:
    """Check the arguments and return ``(widths, r, K_f, q)``.

    Args:
        widths: [d, M_1, ..., M_{L-1}, K].
        loss: One of :data:`LOSSES`.
        input_rank: r; default min(N, d), or d when N is unknown. At most min(N, d).
        num_samples: N, or None when unknown.

    Raises:
        InputError: On any value out of range.
    """
    w = check_widths(widths)
    check_loss(loss)
    if num_samples is not None:
        check_count("num_samples", num_samples, 1)
    d = w[0]
    hi = d if num_samples is None else min(d, num_samples)
    r = hi if input_rank is None else check_count("input_rank", input_rank, 0, hi)
    k_f = output_rank(w[-1], loss)
    return w, r, k_f, min((r, *w[1:-1], k_f))


def resolve_residual_rank(residual_rank: int | None, r: int, k_f: int) -> int:
    """Return s: ``residual_rank`` checked against ``[0, min(r, K_f)]``, default the top.

    Raises:
        InputError: Out of range (the residual-input matrix is K_f x r at most).
    """
    if residual_rank is None:
        return min(r, k_f)
    return check_count("residual_rank", residual_rank, 0, min(r, k_f))


def resolve_augmented_rank(augmented_input_rank: int | None, r: int, d: int,
                           num_samples: int | None) -> int:
    """Return r~ = rank([X, 1]): the given value, checked, or r + 1 (r when N <= r).

    Appending a column of ones raises the rank by at most one, and never above N.

    Raises:
        InputError: A value that is neither r nor r + 1, or above N.
    """
    if augmented_input_rank is None:
        return r + 1 if num_samples is None or num_samples > r else r
    allowed = {r, r + 1}
    if num_samples is not None:
        allowed = {a for a in allowed if a <= num_samples}
    a = check_count("augmented_input_rank", augmented_input_rank, 0, d + 1)
    if a not in allowed:
        msg = f"augmented_input_rank must be one of {sorted(allowed)} (r or r + 1); got {a!r}"
        raise InputError(msg)
    return a
