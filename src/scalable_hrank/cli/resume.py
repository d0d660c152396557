"""Checkpoints of ``hrank rank``: what identifies a run, and resuming each kind.

The fingerprint of a run is its mathematical problem only: the weights, the data, the model's
architecture, the loss, the selected parameters, the kind, the method, the thresholds, the
seed, the dtype and the solver options that shape its state (block size, probes; with a
basis sharded over processes, this process's rank and the process count). It leaves
out where the checkpoint lives, how often it is saved, the device, the memory budget and the
product budget, so that moving a run, giving it a GPU or a larger ``--max-matvecs`` resumes it.
With ``--method auto`` a saved state keeps the method that saved it, so a run resumed under
another memory budget goes on with the method it started with.

One file per kind (``CKPT`` for one kind, ``CKPT.<kind>`` for ``--kind all``) holds either a
solver state (a run under way, or one that stopped at its product budget) or, once the kind is
finished, its result: a pre-empted ``--kind all`` does not recompute the kinds it finished.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from scalable_hrank.checkpoint import fingerprint, load_checkpoint, save_checkpoint
from scalable_hrank.cli.progress import products_done
from scalable_hrank.estimators import resume_entry
from scalable_hrank.preemption import CheckpointSaver, Preempted, PreemptionHandler
from scalable_hrank.result import RankResult

#: Settings that change the answer or the solver's state (besides weights, data and kind).
FINGERPRINT_KEYS = ("loss", "params", "method", "rtol", "atol", "seed", "dtype", "block_size",
                    "probes", "parts_bound", "world")


def state_to_device(state: Any, device: torch.device | str) -> Any:
    """A loaded solver state with its device tensors on ``device`` (checkpoints load on CPU).

    The fingerprint leaves the device out, so a run saved on a GPU resumes on a CPU and back.
    The estimator whose ``resume_state`` the state is (the registry,
    :mod:`scalable_hrank.estimators`) moves it with its ``state_to_device`` (Krylov states:
    basis panels, projected matrix, pending block and coupling); states of estimators without
    one are returned as they are (the SLQ state moves its own vectors when it is restored).
    """
    entry = resume_entry(state)
    if entry is None or entry.state_to_device is None:
        return state
    return entry.state_to_device(state, device)


def kind_path(checkpoint: str | Path, kind: str, all_kinds: bool) -> Path:
    """Checkpoint file of one kind: ``checkpoint`` itself, or ``checkpoint.<kind>``."""
    return Path(f"{checkpoint}.{kind}") if all_kinds else Path(checkpoint)


def problem_fingerprint(model: Any, loss: Any, data: Any, settings: dict[str, Any],
                        kind: str) -> str:
    """Fingerprint of one kind's problem (see the module docstring).

    Cost: one pass over the parameters and the data, copied to the CPU.
    """
    chosen = {key: settings.get(key) for key in FINGERPRINT_KEYS}
    chosen["loss"] = loss if isinstance(loss, str) else getattr(loss, "__qualname__", repr(loss))
    chosen["kind"] = kind
    chosen["architecture"] = repr(model)
    return fingerprint(list(model.parameters()), data, chosen)


def _agree_on_signal(handler: PreemptionHandler) -> bool:
    """Under a process group, share a pre-emption signal seen by any process; True if in one.

    srun forwards the signal to every task, but not at the same instant: without agreement one
    process would stop at block k while the others wait for it in block k + 1's collectives.
    """
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return False
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    flag = torch.tensor([float(handler.signum or 0)], dtype=torch.float64, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    if handler.signum is None and flag.item() > 0:
        handler.signum = int(flag.item())
    return True


class KindCheckpoint:
    """Save and resume one kind of a ``hrank rank`` run.

    Args:
        path: Its checkpoint file.
        fingerprint: From :func:`problem_fingerprint`.
        every_seconds: Seconds between periodic saves.
        handler: The active pre-emption handler.
        device: Where the computation runs (a loaded state is moved there).

    Attributes:
        result: The finished result found in the file (then nothing is computed), or None.
        state: The solver state to resume from, or None.
    """

    def __init__(self, path: Path, fingerprint: str, *, every_seconds: float,
                 handler: PreemptionHandler, device: torch.device | str = "cpu") -> None:
        self.path = path
        self.fingerprint = fingerprint
        self._handler = handler
        self._saver = CheckpointSaver(path, fingerprint, every_seconds=every_seconds,
                                      handler=handler)
        self._resume_point: Any = None
        self._last_pending: int | None = None
        self.result: RankResult | None = None
        self.state: Any = None
        if path.exists():
            saved = load_checkpoint(path, fingerprint=fingerprint)
            if isinstance(saved, dict) and "result" in saved:
                self.result = RankResult.from_dict(saved["result"])
            else:
                self.state = state_to_device(saved, device)

    def announce(self, kind: str) -> None:
        """Print what is resumed, if anything (always: a resume is never silent)."""
        if self.result is not None:
            print(f"hrank rank: {kind}: finished earlier; result read from {self.path}",
                  file=sys.stderr)
        elif self.state is not None:
            print(f"hrank rank: resuming from {self.path} ({products_done(self.state)} "
                  "products done)", file=sys.stderr)

    def on_block(self, progress: Callable[[Any], None] | None) -> Callable[[Any], None]:
        """The solver's per-block callback: progress, periodic and pre-emption saves.

        It also keeps the last state a larger product budget continues from unchanged: the
        state before a Krylov block the budget cut short (narrower than the block pending).
        Under torch.distributed the processes agree on a signal at every block (one all-reduce
        of one number), so that all of them save the same block and stop together.
        """
        def callback(state: Any) -> None:
            if progress is not None:
                progress(state)
            snapshot = state.snapshot() if callable(getattr(state, "snapshot", None)) else state
            width = getattr(state, "last_width", None)
            if self._last_pending is None or width is None or width >= self._last_pending:
                self._resume_point = snapshot
            pending = getattr(state, "pending", None)
            self._last_pending = None if pending is None else int(pending.shape[1])
            together = _agree_on_signal(self._handler)
            try:
                self._saver(snapshot)
            except Preempted:
                if together:
                    torch.distributed.barrier()  # every process has saved before any exits
                raise

        return callback

    def finish(self, result: RankResult, guarantee: str) -> None:
        """Record a finished kind: its result, or, for a bound, the state to continue from."""
        if guarantee in ("bound", "unreliable") and self._resume_point is not None:
            save_checkpoint(self.path, self._resume_point, fingerprint=self.fingerprint)
        elif guarantee not in ("bound", "unreliable"):
            save_checkpoint(self.path, {"result": result.to_dict()},
                            fingerprint=self.fingerprint)

    def remove(self) -> None:
        """Delete the checkpoint (after the run's result file is written)."""
        self.path.unlink(missing_ok=True)
