"""What this process may use: its compute device and its CPU threads.

The device defaults to "auto": the process's CUDA device when CUDA is available (under
torchrun or srun the GPU of its LOCAL_RANK / SLURM_LOCALID), else the CPU. The torch thread
count defaults to the CPUs this process may run on (its affinity, capped by Slurm's
``SLURM_CPUS_PER_TASK``, shared among the processes torchrun starts on the node).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch

from scalable_hrank.errors import InputError

__all__ = ["allowed_cpus", "configure_threads", "default_threads", "resolve_device", "to_device"]

logger = logging.getLogger(__name__)


def _local_rank(env: Mapping[str, str]) -> int:
    for key in ("LOCAL_RANK", "SLURM_LOCALID"):
        value = env.get(key)
        if value not in (None, ""):
            try:
                return int(value)
            except ValueError:
                msg = f"{key}={value!r} is not an integer; unset it or fix the launcher"
                raise InputError(msg) from None
    return 0


def resolve_device(requested: str | None = "auto", *, environ: Mapping[str, str] | None = None,
                   cuda_available: bool | None = None,
                   device_count: int | None = None) -> torch.device:
    """The device to compute on.

    Args:
        requested: "auto" or None (CUDA when available, else the CPU), "cpu", "cuda" (this
            process's GPU) or "cuda:N".
        environ: Variables to read LOCAL_RANK / SLURM_LOCALID from (default ``os.environ``).
        cuda_available: Override of ``torch.cuda.is_available()`` (tests).
        device_count: Override of ``torch.cuda.device_count()`` (tests).

    Returns:
        ``cpu``, or ``cuda:i`` with i = local rank modulo the visible GPUs for "auto" and
        "cuda", or N for "cuda:N".

    Raises:
        InputError: For an unknown device name, or a CUDA device that is not available.
    """
    env = os.environ if environ is None else environ
    name = "auto" if requested is None else str(requested).strip().lower()
    cuda = torch.cuda.is_available() if cuda_available is None else cuda_available
    if name == "cpu":
        return torch.device("cpu")
    if name not in ("auto", "cuda") and not name.startswith("cuda:"):
        msg = f"--device must be auto, cpu, cuda or cuda:N; got {requested!r}"
        raise InputError(msg)
    if not cuda:
        if name == "auto":
            return torch.device("cpu")
        msg = (f"--device {requested} but CUDA is not available here (no GPU visible, or a "
               "CPU-only torch); use --device cpu, or run on a GPU node")
        raise InputError(msg)
    count = torch.cuda.device_count() if device_count is None else device_count
    if name.startswith("cuda:"):
        try:
            index = int(name.split(":", 1)[1])
        except ValueError:
            msg = f"--device must be cuda:N with an integer N; got {requested!r}"
            raise InputError(msg) from None
        if not 0 <= index < count:
            msg = f"--device {requested}: only {count} CUDA device(s) are visible"
            raise InputError(msg)
        return torch.device(f"cuda:{index}")
    return torch.device(f"cuda:{_local_rank(env) % max(count, 1)}")


def allowed_cpus(environ: Mapping[str, str] | None = None) -> int:
    """CPUs this process may use: its affinity, capped by ``SLURM_CPUS_PER_TASK``."""
    env = os.environ if environ is None else environ
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    slurm = env.get("SLURM_CPUS_PER_TASK")
    if slurm and slurm.isdigit() and int(slurm) > 0:
        cpus = min(cpus, int(slurm))
    return max(cpus, 1)


def default_threads(environ: Mapping[str, str] | None = None) -> int:
    """Torch threads by default: :func:`allowed_cpus` shared among the node's processes.

    ``OMP_NUM_THREADS`` wins when set; torchrun's ``LOCAL_WORLD_SIZE`` processes on one node
    share the affinity (srun gives each task its own).
    """
    env = os.environ if environ is None else environ
    omp = env.get("OMP_NUM_THREADS", "")
    if omp.isdigit() and int(omp) > 0:
        return int(omp)
    cpus = allowed_cpus(env)
    local = env.get("LOCAL_WORLD_SIZE", "")
    if local.isdigit() and int(local) > 1 and "SLURM_CPUS_PER_TASK" not in env:
        cpus = max(cpus // int(local), 1)
    return cpus


def configure_threads(threads: int | None = None, *,
                      environ: Mapping[str, str] | None = None) -> int:
    """Set torch's intra-op threads (``threads`` or :func:`default_threads`) and return it.

    Logs a warning naming the oversubscription when the threads exceed the allowed CPUs, or
    when other processes already keep the CPUs busy (1-minute load average): on a loaded
    machine each extra thread waits for a core and a product can take ten times longer.

    Raises:
        InputError: If ``threads`` is not a positive integer.
    """
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        msg = f"--threads must be a positive integer; got {threads!r}"
        raise InputError(msg)
    env = os.environ if environ is None else environ
    count = threads or default_threads(env)
    cpus = allowed_cpus(env)
    torch.set_num_threads(count)
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # pragma: no cover - not Unix
        load = 0.0
    if count > cpus:
        logger.warning("%d torch threads on %d allowed CPUs: the CPUs are oversubscribed; "
                       "use --threads %d (or OMP_NUM_THREADS)", count, cpus, cpus)
    elif count > 1 and load + count > cpus + 0.5:
        logger.warning("%d torch threads on %d CPUs already loaded %.1f: the CPUs are "
                       "oversubscribed and products may slow down many times; use --threads 1 "
                       "(or OMP_NUM_THREADS=1)", count, cpus, load)
    return count


class _OnDevice:
    """A re-iterable view of batches (a DataLoader) that moves each batch when it is read."""

    def __init__(self, batches: Iterable[Any], device: torch.device) -> None:
        self.batches = batches
        self.device = device

    def __iter__(self) -> Iterator[Any]:
        for batch in self.batches:
            yield to_device(batch, self.device)

    def __len__(self) -> int:
        return len(self.batches)  # type: ignore[arg-type]


def to_device(data: Any, device: torch.device | str) -> Any:
    """Return ``data`` with every tensor on ``device``.

    Tensors, tuples, lists and mappings are moved now; any other iterable of batches (a
    DataLoader) is moved batch by batch as it is read. Non-tensor leaves (strings, numbers)
    are kept. Cost: one copy of each tensor not there yet.
    """
    device = torch.device(device)
    if isinstance(data, torch.Tensor):
        return data.to(device)
    if isinstance(data, Mapping):
        return {k: to_device(v, device) for k, v in data.items()}
    if isinstance(data, (tuple, list)):
        return type(data)(to_device(v, device) for v in data)
    if isinstance(data, (str, bytes, int, float)) or data is None:
        return data
    if isinstance(data, Iterable):
        return _OnDevice(data, device)
    return data
