"""Exceptions and warnings raised by scalable-hrank.

Public entry points raise ``ValueError`` for a wrong value and ``TypeError`` for a
wrong kind; the classes here add what a built-in cannot carry (a partial result).
"""

from __future__ import annotations

from typing import Any


class HRankError(Exception):
    """Base class of the errors specific to scalable-hrank."""


class InputError(HRankError, ValueError):
    """Something the user supplied is wrong or unusable: arguments, data, files, model, environment.

    The message names the problem and the fix in one line. The command line reports it as
    ``hrank: error: <message>`` with exit code 2 and no traceback (``-v`` shows it).
    """


class NotConvergedError(HRankError, RuntimeError):
    """A solver ran out of its product budget before it could certify its answer.

    Attributes:
        partial: The best result so far (for rank solvers: a certified lower bound).
    """

    def __init__(self, message: str, partial: Any = None) -> None:
        super().__init__(message)
        self.partial = partial


class NonFiniteError(HRankError, FloatingPointError):
    """A loss or a curvature product returned NaN or infinity.

    Attributes:
        num_matvecs: Products spent before the failure.
        batch: Index of the data batch whose product failed (None if unknown).
    """

    def __init__(self, message: str, *, num_matvecs: int | None = None,
                 batch: int | None = None) -> None:
        super().__init__(message)
        self.num_matvecs = num_matvecs
        self.batch = batch


class NumericalWarning(RuntimeWarning):
    """A result is valid but numerically fragile (no spectral gap, noise floor near tol)."""
