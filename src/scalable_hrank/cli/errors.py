"""Exit codes of ``hrank`` and which exceptions are the user's to fix.

Everything the user supplies (arguments, data, files, model, environment, checkpoints) is
reported as one line ``hrank: error: <message>`` with :data:`EXIT_USAGE`; anything else is a
bug in scalable-hrank and gets :data:`EXIT_INTERNAL` with its traceback.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable

from scalable_hrank.errors import InputError, NonFiniteError
from scalable_hrank.result import RankResult

#: Every result exact, certified or a converged estimate; or the command succeeded.
EXIT_OK = 0
#: Some result is only a bound (or sweep tasks are missing or failed).
EXIT_BOUND = 1
#: Bad arguments, input, files, environment or checkpoint.
EXIT_USAGE = 2
#: Pre-empted after saving a checkpoint: rerun the same command to resume.
EXIT_PREEMPTED = 3
#: An unexpected internal error (a bug).
EXIT_INTERNAL = 4
#: Code -> meaning, as the README and docs/cluster.md state them.
EXIT_CODES: dict[int, str] = {
    EXIT_OK: "every result exact, certified or a converged estimate",
    EXIT_BOUND: "some result only a bound, or sweep tasks missing or failed",
    EXIT_USAGE: "bad arguments, input, files, environment or checkpoint",
    EXIT_PREEMPTED: "pre-empted after checkpointing; rerun the same command to resume",
    EXIT_INTERNAL: "internal error (a bug; the traceback is printed)",
}



def exit_code(results: Iterable[RankResult]) -> int:
    """EXIT_OK when every result is exact, certified or an estimate; else EXIT_BOUND."""
    return EXIT_OK if all(r.reliable for r in results) else EXIT_BOUND


_FILE_HINTS = {
    errno.ENOENT: "check the path",
    errno.EACCES: "choose a writable location or fix the permissions",
    errno.EPERM: "choose a writable location or fix the permissions",
    errno.EROFS: "the file system is read-only; choose another location",
    errno.ENOSPC: "the disk is full; free space or choose another location",
    errno.EISDIR: "give a file name, not a folder",
    errno.ENOTDIR: "a component of the path is a file, not a folder",
}


def _checkpoint_error() -> type[Exception] | None:
    try:
        from scalable_hrank.checkpoint import CheckpointError
    except ImportError:  # pragma: no cover - the package always has it
        return None
    return CheckpointError


def user_error_message(exc: BaseException) -> str | None:
    """One-line message for an error the user can fix, or None for an internal error.

    User-caused: :class:`~scalable_hrank.errors.InputError` and every ``ValueError`` (the
    public API's contract for a wrong value), a bad checkpoint, files and the environment
    (every ``OSError``), a missing optional package, and non-finite losses or data.
    """
    ckpt = _checkpoint_error()
    if ckpt is not None and isinstance(exc, ckpt):
        if getattr(exc, "reason", None) == "fingerprint":
            return str(exc)
        return f"{exc}; delete it to start again"
    if isinstance(exc, (InputError, ValueError)):
        return str(exc)
    if isinstance(exc, NonFiniteError):
        return (f"{exc} (check the data and the weights for NaN or infinity; in float32, "
                "try --dtype float64)")
    if isinstance(exc, ModuleNotFoundError):
        name = exc.name or str(exc)
        if name.split(".")[0] == "scalable_hrank":
            return None  # our own module: a broken installation or a bug
        return (f"the optional package {name!r} is not installed: pip install it (see the "
                "README's extras, e.g. pip install 'scalable-hrank[plots]')")
    if isinstance(exc, ImportError):
        return str(exc)
    if isinstance(exc, OSError):  # files, network, devices: the environment, not a bug
        hint = _FILE_HINTS.get(exc.errno or 0)
        where = f": {exc.filename}" if exc.filename else ""
        text = exc.strerror or str(exc)
        return f"{text}{where}" + (f" ({hint})" if hint else "")
    return None
