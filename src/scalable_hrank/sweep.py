"""Parameter sweeps: a grid in a TOML/JSON file, expanded into numbered tasks, one result each.

A sweep file has a ``[sweep]`` table; every list-valued key is a grid axis, every scalar a fixed
setting. Optional ``[slurm]`` options are used by ``hrank submit sweep``::

    [sweep]
    name = "mlp-ranks"
    input_dim = 6            # d
    output_dim = 3           # K
    num_samples = [10, 40]   # N
    width = [4, 8]
    depth = [1, 2]           # hidden layers
    activation = ["linear", "tanh"]
    bias = [false, true]
    loss = "mse"             # "mse", "cross_entropy", "logcosh"
    kind = ["loss", "outer"]
    method = "exact"         # or "auto", "sketch", "lanczos", "density"
    seed = 0
    compare_exact = false    # also record the dense exact rank next to an estimate

    [slurm]
    time = "00:30:00"
    gpus = 0
    max_parallel = 16

Tasks are the Cartesian product of the axes in the fixed order of :data:`AXES` (then any other
list-valued keys by name), the last axis varying fastest; task ``i`` is the same settings on
every machine and every run. :func:`run_task` writes ``task-<i>.json`` atomically into the
output folder; ``hrank collect`` gathers them.
"""

from __future__ import annotations

import json
import logging
import math
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from scalable_hrank._io import atomic_write_text
from scalable_hrank.checkpoint import (
    CheckpointSaver,
    Preempted,
    PreemptionHandler,
    fingerprint,
)

__all__ = [
    "AXES",
    "DEFAULTS",
    "SweepConfig",
    "build_problem",
    "expand",
    "load_config",
    "result_path",
    "run_task",
]

logger = logging.getLogger(__name__)

#: Grid axes in expansion order (first = slowest).
AXES: tuple[str, ...] = ("width", "depth", "num_samples", "activation", "bias", "loss", "kind",
                         "method", "seed")
#: Settings of a task and their defaults.
DEFAULTS: dict[str, Any] = {
    "input_dim": 6,
    "output_dim": 3,
    "num_samples": 20,
    "width": 4,
    "depth": 1,
    "activation": "linear",
    "bias": False,
    "loss": "mse",
    "kind": "loss",
    "method": "exact",
    "seed": 0,
    "rtol": None,
    "atol": None,
    "max_matvecs": None,
    "block_size": 8,
    "compare_exact": False,
    "checkpoint_every": 300.0,
    "throttle_seconds": 0.0,
}
_ALIASES = {"d": "input_dim", "K": "output_dim", "N": "num_samples", "samples": "num_samples",
            "activations": "activation", "widths": "width", "depths": "depth",
            "losses": "loss", "kinds": "kind", "methods": "method", "seeds": "seed"}
_SLURM_KEYS = {"time", "partition", "gpus", "cpus_per_task", "mem", "max_parallel", "account",
               "qos", "constraint", "job_name", "sbatch"}


@dataclass(frozen=True)
class SweepConfig:
    """A parsed sweep file.

    Attributes:
        name: Sweep name (job name, default output folder ``hrank-out/<name>``).
        fixed: Scalar settings shared by every task.
        axes: ``(key, values)`` grid axes in expansion order.
        slurm: Options of the ``[slurm]`` table.
        path: The file it was read from (None when built in memory).
    """

    name: str
    fixed: dict[str, Any]
    axes: tuple[tuple[str, tuple[Any, ...]], ...]
    slurm: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def num_tasks(self) -> int:
        """Number of grid points."""
        return math.prod(len(v) for _, v in self.axes)

    def task(self, index: int) -> dict[str, Any]:
        """Settings of task ``index`` (0-based), with ``task`` and ``sweep`` keys added.

        Raises:
            ValueError: If ``index`` is outside ``[0, num_tasks)``.
        """
        if not 0 <= index < self.num_tasks:
            msg = f"task must be in [0, {self.num_tasks}); got {index}"
            raise ValueError(msg)
        settings = dict(self.fixed)
        rest = index
        for key, values in reversed(self.axes):
            rest, i = divmod(rest, len(values))
            settings[key] = values[i]
        return {"sweep": self.name, "task": index, **settings}

    def tasks(self) -> list[dict[str, Any]]:
        """All task settings, in index order."""
        return [self.task(i) for i in range(self.num_tasks)]


def _normalize(table: Mapping[str, Any], where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for raw_key, value in table.items():
        key = _ALIASES.get(raw_key, raw_key)
        if key not in DEFAULTS:
            allowed = ", ".join(sorted(DEFAULTS))
            msg = f"unknown setting {raw_key!r} in {where}; allowed: name, {allowed}"
            raise ValueError(msg)
        if key in out:
            msg = f"setting {key!r} given twice in {where} (once as an alias)"
            raise ValueError(msg)
        out[key] = value
    return out


def expand(grid: Mapping[str, Any], *, name: str = "sweep",
           slurm: Mapping[str, Any] | None = None, path: Path | None = None) -> SweepConfig:
    """Build a :class:`SweepConfig` from a settings mapping (lists are grid axes).

    Raises:
        ValueError: On an unknown setting, an empty axis or an unknown ``[slurm]`` option.
    """
    settings = _normalize(grid, "[sweep]")
    for key in slurm or {}:
        if key not in _SLURM_KEYS:
            msg = f"unknown option {key!r} in [slurm]; allowed: {', '.join(sorted(_SLURM_KEYS))}"
            raise ValueError(msg)
    fixed = {k: v for k, v in DEFAULTS.items() if k not in settings}
    axes: list[tuple[str, tuple[Any, ...]]] = []
    order = list(AXES) + sorted(k for k in settings if k not in AXES)
    for key in order:
        if key not in settings:
            continue
        value = settings[key]
        if isinstance(value, list):
            if not value:
                msg = f"grid axis {key!r} is empty"
                raise ValueError(msg)
            axes.append((key, tuple(value)))
        else:
            fixed[key] = value
    return SweepConfig(name=str(name), fixed=fixed, axes=tuple(axes), slurm=dict(slurm or {}),
                       path=path)


def load_config(path: str | Path) -> SweepConfig:
    """Read a sweep file (``.toml`` or ``.json``).

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: If it cannot be parsed or holds unknown settings.
    """
    path = Path(path)
    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix == ".json" else _toml().loads(text)
    except ValueError as exc:  # JSONDecodeError and TOMLDecodeError are ValueErrors
        msg = f"cannot parse sweep file {path}: {exc}"
        raise ValueError(msg) from exc
    grid = dict(data.get("sweep", {}))
    unknown = set(data) - {"sweep", "slurm"}
    if unknown:
        msg = f"sweep file {path} has unknown tables {sorted(unknown)}; use [sweep] and [slurm]"
        raise ValueError(msg)
    name = grid.pop("name", path.stem)
    return expand(grid, name=name, slurm=data.get("slurm"), path=path.resolve())


def _toml() -> Any:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            msg = "reading TOML needs Python >= 3.11 or the tomli package; or use a .json file"
            raise ValueError(msg) from None
    return tomllib


def result_path(out_dir: str | Path, index: int) -> Path:
    """File a task writes its record to."""
    return Path(out_dir) / f"task-{index:05d}.json"


def build_problem(settings: Mapping[str, Any]) -> tuple[torch.nn.Module, tuple[Any, Any]]:
    """The MLP and synthetic Gaussian data of one task (deterministic in ``seed``).

    Inputs X (N, d) ~ N(0, 1); targets N(0, 1) (N, K) for "mse"/"logcosh", uniform class
    indices (N,) for "cross_entropy". Widths ``[d] + [width] * depth + [K]``, float64.
    """
    from scalable_hrank.models.mlp import mlp

    s = {**DEFAULTS, **settings}
    d, k, n = int(s["input_dim"]), int(s["output_dim"]), int(s["num_samples"])
    widths = [d] + [int(s["width"])] * int(s["depth"]) + [k]
    model = mlp(widths, activation=s["activation"], bias=bool(s["bias"]), seed=int(s["seed"]))
    g = torch.Generator().manual_seed(10_000 + int(s["seed"]))
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    if s["loss"] == "cross_entropy":
        y = torch.randint(0, k, (n,), generator=g)
    else:
        y = torch.randn(n, k, generator=g, dtype=torch.float64)
    return model, (x, y)


def _solve_settings(s: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("input_dim", "output_dim", "num_samples", "width", "depth", "activation", "bias",
            "loss", "kind", "method", "seed", "rtol", "atol", "max_matvecs", "block_size")
    return {k: s[k] for k in keys}


class _Throttle:
    """Per-block callback that sleeps, then calls the saver (a testing aid for pre-emption)."""

    def __init__(self, saver: CheckpointSaver, seconds: float) -> None:
        self.saver, self.seconds = saver, seconds

    def __call__(self, state: Any) -> None:
        if self.seconds > 0:
            time.sleep(self.seconds)
        self.saver(state)


def run_task(settings: Mapping[str, Any], out_dir: str | Path, *,
             handler: PreemptionHandler | None = None) -> dict[str, Any]:
    """Run one task and write its record ``task-<i>.json`` atomically into ``out_dir``.

    ``method="exact"`` calls :func:`scalable_hrank.exact_rank`; other methods call
    :func:`scalable_hrank.estimate_rank` with a checkpoint ``task-<i>.ckpt`` (saved every
    ``checkpoint_every`` seconds and on a pre-emption signal caught by ``handler``), resumed
    when present and removed after the record is written.

    Args:
        settings: One task's settings (:meth:`SweepConfig.task`).
        out_dir: Output folder (created).
        handler: Active pre-emption handler, or None.

    Returns:
        The record: ``task``, ``status`` ("ok" or "failed"), ``settings``, ``result``
        (``RankResult.to_dict`` without eigenvalues), ``exact_rank`` (when computed),
        ``error`` (when failed), ``seconds``.

    Raises:
        Preempted: After saving the checkpoint, when ``handler`` caught a signal (no record
            is written; rerun the task to resume).
    """
    import scalable_hrank as hr

    s = {**DEFAULTS, **settings}
    index = int(s.get("task", 0))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {"task": index, "sweep": s.get("sweep"), "settings": dict(settings)}
    t0 = time.perf_counter()
    try:
        model, data = build_problem(s)
        common = {"rtol": s["rtol"], "atol": s["atol"]}
        if s["method"] == "exact":
            res = hr.exact_rank(model, s["loss"], data, s["kind"], **common)
            record["exact_rank"] = res.rank
        else:
            fp = fingerprint(model.parameters(), data, _solve_settings(s))
            saver = CheckpointSaver(out / f"task-{index:05d}.ckpt", fp,
                                    every_seconds=float(s["checkpoint_every"]), handler=handler)
            resume = saver.load()
            res = hr.estimate_rank(model, s["loss"], data, s["kind"], method=s["method"],
                                   seed=int(s["seed"]), max_matvecs=s["max_matvecs"],
                                   block_size=int(s["block_size"]),
                                   on_block=_Throttle(saver, float(s["throttle_seconds"])),
                                   resume_state=resume, **common)
            record["resumed"] = resume is not None
            if s["compare_exact"]:
                record["exact_rank"] = hr.exact_rank(model, s["loss"], data, s["kind"],
                                                     **common).rank
        record.update(status="ok", result=res.to_dict(eigenvalues=False))
    except Preempted:
        raise
    except Exception as exc:  # noqa: BLE001 - a failed task is recorded for `hrank collect`
        logger.exception("task %d failed", index)
        record.update(status="failed", error=f"{type(exc).__name__}: {exc}",
                      traceback=traceback.format_exc())
    record["seconds"] = time.perf_counter() - t0
    atomic_write_text(result_path(out, index), json.dumps(record, indent=2, default=str) + "\n")
    if record["status"] == "ok" and s["method"] != "exact":
        saver.remove()
    return record
