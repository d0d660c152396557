"""Process-group set-up from torchrun or Slurm variables, and data sharding."""

from __future__ import annotations

import datetime
import logging
import os
import subprocess
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

logger = logging.getLogger(__name__)

#: Seconds a collective waits for a peer before it raises (override: HRANK_DIST_TIMEOUT).
DEFAULT_TIMEOUT_S = 300.0
#: The rendezvous store of this process's group (None when single or after shutdown).
_STORE: dist.Store | None = None
_LEFT_KEY = "hrank/left"
#: Seconds the store's host waits for its peers to report that they left.
LEAVE_TIMEOUT_S = 60.0
#: Name prefixes of the threads torch's process groups and rendezvous stores start.
_GROUP_THREAD_PREFIXES = ("gloo", "pt_gloo", "pt_nccl", "pt_tcpstore")


@dataclass(frozen=True)
class World:
    """Where this process stands among the processes of one computation.

    Attributes:
        rank: Global rank, 0 <= rank < size.
        size: Number of processes.
        local_rank: Rank on this node (selects the GPU).
        backend: "nccl", "gloo", or None when single process.
        device: Device this process computes on ("cuda:<local_rank>" or "cpu").

    """

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str | None = None
    device: str = "cpu"

    @property
    def distributed(self) -> bool:
        """True when a process group with more than one process is active."""
        return self.size > 1


def is_distributed() -> bool:
    """Return True when a default process group is initialized with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world() -> World:
    """Return the :class:`World` of the default process group (single process if none)."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    local = int(os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", "0")))
    backend = dist.get_backend()
    device = f"cuda:{torch.cuda.current_device()}" if backend == "nccl" else "cpu"
    return World(dist.get_rank(), dist.get_world_size(), local, backend, device)


def _first_host(nodelist: str) -> str:
    """Expand a Slurm node list (``node[01-04]``) with scontrol and return its first host."""
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True,
                             text=True, check=True, timeout=30).stdout.split()
    except (OSError, subprocess.SubprocessError) as exc:
        msg = (f"cannot expand SLURM_JOB_NODELIST={nodelist!r} with `scontrol show hostnames` "
               f"({exc}); set MASTER_ADDR")
        raise RuntimeError(msg) from exc
    if not out:
        msg = f"`scontrol show hostnames {nodelist}` returned no host; set MASTER_ADDR"
        raise RuntimeError(msg)
    return out[0]


def env_from_slurm(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return torchrun-style variables (RANK, WORLD_SIZE, ...) derived from Slurm's.

    Inside an ``srun`` step (SLURM_STEP_ID set): SLURM_PROCID, SLURM_STEP_NUM_TASKS (else
    SLURM_NTASKS), SLURM_LOCALID, the first host of SLURM_STEP_NODELIST / SLURM_JOB_NODELIST as
    MASTER_ADDR and a port derived from the job id (``15000 + job_id % 20000``) unless
    MASTER_ADDR / MASTER_PORT are set. In the batch script itself (no SLURM_STEP_ID) the world
    is one process even when the job has several tasks (SLURM_NTASKS): only srun starts them.

    Args:
        environ: Variables to read (default ``os.environ``).

    Returns:
        A dict with RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT; empty outside a
        Slurm task (no SLURM_PROCID).

    """
    env = os.environ if environ is None else environ
    if "SLURM_PROCID" not in env:
        return {}
    if "SLURM_STEP_ID" in env:
        size = env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS") or "1"
    else:
        size = "1"
        if int(env.get("SLURM_NTASKS", "1")) > 1:
            logger.warning("running in the batch script of a job with SLURM_NTASKS=%s tasks: "
                           "one process; start one per task with srun to use them all",
                           env["SLURM_NTASKS"])
    out = {
        "RANK": env["SLURM_PROCID"],
        "WORLD_SIZE": size,
        "LOCAL_RANK": env.get("SLURM_LOCALID", "0"),
    }
    if int(size) > 1:
        addr = env.get("MASTER_ADDR")
        if not addr:
            nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST")
            if not nodelist:
                msg = "inside Slurm without SLURM_JOB_NODELIST or MASTER_ADDR"
                raise RuntimeError(msg)
            addr = _first_host(nodelist)
        out["MASTER_ADDR"] = addr
        out["MASTER_PORT"] = env.get("MASTER_PORT") or str(
            15000 + int(env.get("SLURM_JOB_ID", "0")) % 20000)
    return out


def init_from_env(*, backend: str | None = None, timeout: float | None = None) -> World:
    """Join the process group described by torchrun or Slurm environment variables.

    torchrun's RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT win; otherwise they are
    derived from Slurm's (:func:`env_from_slurm`, one process per task, e.g. ``srun -n 8``).
    A world of one process initializes nothing. Calling it again returns the current world.

    Args:
        backend: "nccl" or "gloo"; default nccl when CUDA is available, else gloo.
        timeout: Seconds a collective (and the rendezvous) waits for a peer before raising, so
            that a dead or hung peer makes the others fail within a bounded time instead of
            hanging until the job's time limit. Default ``HRANK_DIST_TIMEOUT`` or 300.

    Returns:
        This process's :class:`World`. With NCCL the current CUDA device is set to
        ``local_rank % device_count``.

    Raises:
        RuntimeError: If MASTER_ADDR cannot be found, or the rendezvous fails or times out.

    """
    if dist.is_available() and dist.is_initialized():
        return world()
    derived = {} if "RANK" in os.environ else env_from_slurm()
    env = {**derived, **{k: os.environ[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK",
                                                    "MASTER_ADDR", "MASTER_PORT")
                         if k in os.environ}}
    rank, size = int(env.get("RANK", "0")), int(env.get("WORLD_SIZE", "1"))
    local = int(env.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    backend = backend or ("nccl" if cuda else "gloo")
    device = "cpu"
    if backend == "nccl":
        torch.cuda.set_device(local % torch.cuda.device_count())
        device = f"cuda:{torch.cuda.current_device()}"
    if size <= 1:
        return World(rank=0, size=1, local_rank=local, backend=None, device=device)
    if timeout is None:
        timeout = float(os.environ.get("HRANK_DIST_TIMEOUT", DEFAULT_TIMEOUT_S))
    # Fail on a dead NCCL peer instead of hanging (the watchdog aborts the communicator).
    os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    if "MASTER_ADDR" not in env:
        msg = "WORLD_SIZE > 1 but MASTER_ADDR is not set"
        raise RuntimeError(msg)
    host, port = env["MASTER_ADDR"], int(env.get("MASTER_PORT", "29500"))
    logger.info("joining %s:%d as rank %d of %d (%s, timeout %.0fs)", host, port, rank, size,
                backend, timeout)
    wait = datetime.timedelta(seconds=timeout)
    # The rendezvous store is ours, not the group's, so it outlives the group: shutdown()
    # uses it to let every process finish tearing down before the store's host exits.
    global _STORE  # noqa: PLW0603 - one process group per process
    _STORE = dist.TCPStore(host, port, world_size=size, is_master=rank == 0, timeout=wait)
    dist.init_process_group(backend=backend, store=_STORE, rank=rank, world_size=size,
                            timeout=wait)
    return World(rank, size, local, backend, device)


def bind_collectives_before_joining() -> None:
    """Import the modules that bind the default group at import time, while there is none.

    ``torch.distributed.nn.functional`` takes ``group.WORLD`` as the default argument of its
    ten collectives, evaluated on import. torch.func imports it lazily (its first gradient
    imports torch._dynamo, which imports it through FSDP), so without this the first product
    after joining would store ten references to the default group. ``destroy_process_group``
    then cannot free the group: its gloo threads outlive :func:`shutdown` and are torn down
    during interpreter exit, after a peer may have closed its sockets, which can abort the
    process ("terminate called without an active exception"). Imported before joining, they
    bind None. Called on importing the curvature operators, which ``import scalable_hrank``
    (and so every import of this module) does: before any group a process joins afterwards,
    through :func:`init_from_env` or torch.distributed itself. A no-op when torch.distributed
    is not built.
    """
    if dist.is_available():
        import torch.distributed.nn.functional  # noqa: F401, PLC0415 - for its side effect


def group_threads(grace_s: float = 1.0) -> list[str]:
    """Names of this process's live threads that belong to a process group or its store.

    After :func:`shutdown` returns the list must be empty: a thread left over means the
    group was not freed and will be torn down during interpreter exit. A joined thread can
    stay listed for a moment while the kernel reaps it, so the list is re-read for up to
    ``grace_s`` seconds until it is empty; a group that was not freed keeps its threads.
    Read from ``/proc/self/task`` (Linux); elsewhere always empty.
    """
    deadline = time.monotonic() + grace_s
    while (names := _live_group_threads()) and time.monotonic() < deadline:
        time.sleep(0.01)
    return names


def _live_group_threads() -> list[str]:
    names = []
    for task in Path("/proc/self/task").glob("*"):
        try:
            name = (task / "comm").read_text().strip()
            state = (task / "stat").read_text().rpartition(")")[2].split()[0]
        except (OSError, IndexError):  # the thread ended while listing
            continue
        if state not in ("Z", "X") and name.startswith(_GROUP_THREAD_PREFIXES):
            names.append(name)
    return sorted(names)


def shutdown() -> list[str]:
    """Leave the process group in step with the others (no-op when none is initialized).

    Every process must call it at the same point, once nothing else is sent: the processes
    meet at a barrier, each destroys its group, reports on the rendezvous store, and the
    store's host (rank 0) returns only once every peer has reported (or after
    ``LEAVE_TIMEOUT_S``). No process then sees a peer's sockets or the store close while it
    is still tearing its own group down, which can abort a process at exit. Not for error
    paths where a peer may be gone: there, leave with ``os._exit``.

    Returns:
        The group's threads still running (:func:`group_threads`), logged as a warning: empty
        when the group was freed, and when there was no group or this module did not create it.
    """
    global _STORE  # noqa: PLW0603
    if not (dist.is_available() and dist.is_initialized()):
        return []
    rank, size = dist.get_rank(), dist.get_world_size()
    dist.barrier()
    dist.destroy_process_group()
    store, _STORE = _STORE, None
    if store is None:  # a group this module did not create
        return []
    store.add(_LEFT_KEY, 1)
    if rank == 0:
        deadline = time.monotonic() + LEAVE_TIMEOUT_S
        while store.add(_LEFT_KEY, 0) < size and time.monotonic() < deadline:
            time.sleep(0.01)
    del store
    if left := group_threads():
        logger.warning("rank %d: the process group was not freed (threads %s still run): "
                       "something keeps a reference to it", rank, ", ".join(left))
    return left


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """Return the sum of ``tensor`` over all processes (``tensor`` itself when single).

    The input is not modified. All processes must call it with the same shape and dtype.
    Cost: one all-reduce of ``tensor.numel()`` elements.
    """
    if not is_distributed():
        return tensor
    out = tensor.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def _split_samples(obj: Any, index: int, parts: int) -> Any:
    if isinstance(obj, Tensor):
        return torch.tensor_split(obj, parts, dim=0)[index]
    if isinstance(obj, Mapping):
        return {k: _split_samples(v, index, parts) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(_split_samples(v, index, parts) for v in obj)
    return obj


def _is_pair(data: Any) -> bool:
    return (isinstance(data, tuple) and len(data) == 2 and isinstance(data[1], Tensor)
            and isinstance(data[0], (Tensor, tuple, Mapping)))


def shard(data_batches: Any, rank: int, world: int, *, by: str = "auto") -> list[Any]:
    """Return this process's share of the data, deterministically.

    Args:
        data_batches: An ``(inputs, targets)`` pair or an iterable of such batches. Inputs may
            be a tensor, a tuple or a mapping of tensors (split along dim 0).
        rank: This process's rank, ``0 <= rank < world``.
        world: Number of processes.
        by: "batch" (batches ``rank, rank + world, ...``, round-robin), "sample" (each batch
            split along dim 0 into ``world`` contiguous near-equal parts, this rank's part), or
            "auto" (samples for a single pair, batches for an iterable with at least ``world``
            batches, samples otherwise).

    Returns:
        A list of batches (possibly empty for "batch" sharding). The union over ranks is the
        data, each sample exactly once. Products summed over ranks stay sample-weighted only if
        each batch is weighted by the global sample count, not the shard's.

    Raises:
        ValueError: If ``rank``/``world``/``by`` are invalid.

    """
    if world < 1 or not 0 <= rank < world:
        msg = f"rank must be in [0, world) with world >= 1; got rank={rank}, world={world}"
        raise ValueError(msg)
    if by not in ("auto", "batch", "sample"):
        msg = f"by must be one of ('auto', 'batch', 'sample'); got {by!r}"
        raise ValueError(msg)
    batches = [data_batches] if _is_pair(data_batches) else list(data_batches)
    if by == "auto":
        by = "batch" if len(batches) >= world and not _is_pair(data_batches) else "sample"
    if by == "batch":
        return batches[rank::world]
    return [_split_samples(b, rank, world) for b in batches]


def batches_of(data: Iterable[Any]) -> list[Any]:
    """Return the batches of ``data`` (a single pair becomes a one-element list)."""
    return [data] if _is_pair(data) else list(data)
