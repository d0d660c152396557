"""Pre-emption: turn Slurm's signals into a saved checkpoint and a clean stop.

Slurm sends SIGUSR1 (``--signal=B:USR1@120``) before the time limit and SIGTERM on
``scancel``. A :class:`PreemptionHandler` turns the signal into a flag, and a
:class:`CheckpointSaver`, passed as the solver's per-block callback, saves every
``every_seconds`` (:func:`scalable_hrank.checkpoint.save_checkpoint`) and, once a signal
arrived, saves and raises :class:`Preempted`. The command line turns :class:`Preempted` into
exit code :data:`PREEMPTED_EXIT_CODE` (3), on which the sbatch templates (the repository's
``slurm/`` folder, installed with the package) requeue the job; the requeued job loads the
checkpoint and goes on.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import FrameType
from typing import Any

from scalable_hrank.checkpoint import load_checkpoint, save_checkpoint
from scalable_hrank.errors import HRankError

__all__ = [
    "PREEMPTED_EXIT_CODE",
    "CheckpointSaver",
    "Preempted",
    "PreemptionHandler",
    "in_slurm",
]

logger = logging.getLogger(__name__)

#: Exit code of a process that saved a checkpoint after a pre-emption signal and stopped.
PREEMPTED_EXIT_CODE = 3


class Preempted(HRankError):
    """A pre-emption signal arrived; the state was saved and the computation stopped.

    The command line exits with :data:`PREEMPTED_EXIT_CODE` on it.

    Attributes:
        path: The checkpoint just written.
        signum: The signal received (e.g. ``signal.SIGUSR1``).

    """

    exit_code = PREEMPTED_EXIT_CODE

    def __init__(self, message: str, *, path: str | Path, signum: int | None) -> None:
        super().__init__(message)
        self.path = Path(path)
        self.signum = signum


def in_slurm() -> bool:
    """Return True inside a Slurm job (``SLURM_JOB_ID`` is set)."""
    return bool(os.environ.get("SLURM_JOB_ID"))


class PreemptionHandler:
    """Turn pre-emption signals into a flag, for the duration of a ``with`` block.

    Slurm sends SIGUSR1 before the time limit (``--signal=B:USR1@120``, forwarded to Python
    by the sbatch templates) and SIGTERM on ``scancel``. The handler only records the signal;
    the computation polls :attr:`signalled` at a safe point (a :class:`CheckpointSaver` does),
    saves and stops. Previous handlers are restored on exit, unless a signal arrived: then the
    signals stay ignored, so that a repeated one cannot kill the process while it exits with
    the checkpoint's code. Must be entered in the main thread.

    Args:
        signals: Signals to catch (default SIGUSR1 and SIGTERM).
        requeue: When True and inside Slurm, :meth:`requeue` (called by
            :class:`CheckpointSaver` after saving) runs ``scontrol requeue $SLURM_JOB_ID``.
            Leave False when the job script requeues on exit code 3 (the templates in
            ``slurm/`` do), or the job would be requeued twice.

    Attributes:
        signum: The first signal received, or None.

    """

    def __init__(self, signals: Iterable[int] = (signal.SIGUSR1, signal.SIGTERM), *,
                 requeue: bool = False) -> None:
        self.signals = tuple(signals)
        self.requeue_on_signal = requeue
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def signalled(self) -> bool:
        """True once one of the signals arrived."""
        return self.signum is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:  # noqa: ARG002
        if self.signum is None:
            self.signum = signum
        logger.warning("received signal %s: will checkpoint and stop at the next block",
                       signal.Signals(signum).name)

    def __enter__(self) -> PreemptionHandler:
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, prev in self._previous.items():
            # after a signal the process is stopping to be resumed: a second copy (the job
            # script forwards one, scancel signals every process of the job) is ignored rather
            # than letting it kill the process on its way out with the checkpoint's exit code
            signal.signal(sig, signal.SIG_IGN if self.signalled else prev)
        self._previous.clear()

    def requeue(self) -> bool:
        """Requeue the current Slurm job if asked to at construction and inside Slurm.

        Not after SIGTERM (``scancel``, or Slurm's own pre-emption, which requeues by itself):
        a cancelled job must stay cancelled.

        Returns:
            True when ``scontrol requeue`` succeeded.

        """
        job = os.environ.get("SLURM_JOB_ID")
        if not (self.requeue_on_signal and job and self.signum != signal.SIGTERM):
            return False
        proc = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True,
                              check=False, timeout=60)
        if proc.returncode:
            logger.error("scontrol requeue %s failed: %s", job, proc.stderr.strip())
            return False
        logger.warning("requeued Slurm job %s", job)
        return True


class CheckpointSaver:
    """Per-block solver callback: save periodically, and save-then-stop on pre-emption.

    ``saver(state)`` saves ``state`` when ``every_seconds`` passed since the last save (or since
    construction) or when ``handler`` caught a signal; after a signal it then raises
    :class:`Preempted`. Use it as ``on_block=saver`` of a resumable solver, and
    :meth:`load` to get the state to resume from.

    Args:
        path: Checkpoint file.
        fingerprint: From :func:`fingerprint`, for the problem being solved.
        every_seconds: Minimum interval between periodic saves; ``math.inf`` saves only on a
            signal, 0 at every call.
        handler: The active :class:`PreemptionHandler`, or None (periodic saves only).
        clock: Monotonic time source (for tests).

    Attributes:
        saves: Number of checkpoints written.

    """

    def __init__(self, path: str | Path, fingerprint: str, *, every_seconds: float = 300.0,
                 handler: PreemptionHandler | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not (every_seconds >= 0):
            msg = f"every_seconds must be >= 0; got {every_seconds!r}"
            raise ValueError(msg)
        self.path = Path(path)
        self.fingerprint = fingerprint
        self.every_seconds = float(every_seconds)
        self.handler = handler
        self._clock = clock
        self._last = clock()
        self.saves = 0

    def load(self) -> Any | None:
        """Return the saved state, or None when there is no checkpoint file yet.

        Raises:
            CheckpointError: If the file exists but is unusable (see :func:`load_checkpoint`).

        """
        if not self.path.exists():
            return None
        state = load_checkpoint(self.path, fingerprint=self.fingerprint)
        logger.info("resuming from checkpoint %s", self.path)
        return state

    def save(self, state: Any) -> None:
        """Save ``state`` now."""
        save_checkpoint(self.path, state, fingerprint=self.fingerprint)
        self._last = self._clock()
        self.saves += 1

    def __call__(self, state: Any) -> None:
        """Save if due; raise :class:`Preempted` after saving if a signal arrived.

        Raises:
            Preempted: After saving, when the handler caught a signal.

        """
        signalled = self.handler is not None and self.handler.signalled
        due = math.isfinite(self.every_seconds) and (
            self._clock() - self._last >= self.every_seconds)
        if signalled or due:
            self.save(state)
        if signalled:
            assert self.handler is not None
            self.handler.requeue()
            sig = self.handler.signum
            name = signal.Signals(sig).name if sig is not None else "signal"
            msg = f"pre-empted by {name}; state saved to {self.path}"
            raise Preempted(msg, path=self.path, signum=sig)

    def remove(self) -> None:
        """Delete the checkpoint file (after the final result is safely written)."""
        self.path.unlink(missing_ok=True)
