"""Atomic file writes: temporary file in the same folder, fsync, rename.

The file gets the permissions a plain ``open(path, "w")`` would give (0666 minus the umask),
not the 0600 of a temporary file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fchmod(fh.fileno(), 0o666 & ~_umask())
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Text version of :func:`atomic_write_bytes` (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def check_writable(path: Path, what: str = "output") -> Path:
    """Make sure a file can later be written atomically at ``path``, before any work is done.

    Creates the missing parent folders and a probe file beside the target (removed again),
    so that a long run never finds out at its end (or at pre-emption) that its result or
    checkpoint cannot be saved.

    Args:
        path: The file to be written.
        what: What the file is, for the message ("--out", "--checkpoint", ...).

    Returns:
        ``path`` as a ``Path``.

    Raises:
        InputError: If ``path`` is a folder, or its folder cannot be created or written to.
    """
    from scalable_hrank.errors import InputError

    path = Path(path)
    if path.is_dir():
        msg = f"{what} {path} is a folder; give a file name"
        raise InputError(msg)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=path.parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        msg = (f"{what} {path} cannot be written ({exc.strerror or exc}); choose a writable "
               "location")
        raise InputError(msg) from exc
    return path
