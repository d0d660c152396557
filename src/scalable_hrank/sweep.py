"""Parameter sweeps: a grid in a TOML/JSON file, expanded into numbered tasks, one result each.

A sweep file has a ``[sweep]`` table; every list-valued key is a grid axis, every scalar a fixed
setting. Optional ``[slurm]`` options are used by ``hrank submit sweep``. Two kinds of sweep:

**MLP grids** (no ``model``): the paper's synthetic setting::

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
    kind = ["loss", "outer"] # or "all": one task, three results
    method = "exact"         # or "auto", "sketch", "lanczos", "density"
    seed = 0
    compare_exact = false    # also record the dense exact rank next to an estimate

**Any model** (``model`` set): every option of ``hrank rank`` is a setting or an axis:
``model``, ``params``, ``data``, ``samples``, ``loss``, ``kind``, ``method``, ``rtol``, ``atol``,
``dtype``, ``device``, ``seed``, ``max_matvecs`` (alias ``budget``), ``block_size``, ``probes``,
``parts_bound``, ``memory`` and the model-source options of
:mod:`scalable_hrank.models.problem` (``builder``, ``weights``, ``num_classes``,
``input_shape``, ``model_task`` (``hrank rank --task``: ``task`` is the task index here),
``labels``, ``max_length``, ``batch_size``). ``blocks`` expands
patterns into one task per matching module or parameter (:mod:`scalable_hrank.models.blocks`):
``blocks = ["type:LayerNorm", "encoder.layer.*.attention.self.value.bias"]`` is an axis
``block`` whose tasks select that block as ``params``::

    [sweep]
    model = "hf:minilm"
    blocks = ["type:LayerNorm", "encoder.layer.*.intermediate.dense.bias"]
    kind = "all"
    method = "sketch"
    samples = 2
    max_length = 16

    [slurm]
    time = "00:30:00"
    gpus = 0
    max_parallel = 16

Tasks are the Cartesian product of the axes in the fixed order of :data:`AXES` (then any other
list-valued keys by name), the last axis varying fastest; task ``i`` is the same settings on
every machine and every run. :func:`run_task` writes ``task-<i>.json`` atomically into the
output folder; ``hrank collect`` gathers them into one row per (task, kind).
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from scalable_hrank._io import atomic_write_text
from scalable_hrank.errors import InputError
from scalable_hrank.models.problem import MODEL_OPTION_KEYS

__all__ = [
    "AXES",
    "DEFAULTS",
    "RANK_DEFAULTS",
    "SweepConfig",
    "build_problem",
    "check_writable",
    "expand",
    "load_config",
    "result_path",
    "run_task",
    "write_task_list",
]

logger = logging.getLogger(__name__)

#: Grid axes in expansion order (first = slowest).
AXES: tuple[str, ...] = ("model", "block", "width", "depth", "num_samples", "activation",
                         "bias", "loss", "kind", "method", "seed")
#: Settings of an MLP-grid task and their defaults.
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
#: The MLP grid's own keys (not allowed beside ``model``).
_MLP_KEYS = ("input_dim", "output_dim", "num_samples", "width", "depth", "activation", "bias")
#: Settings of a task on any model (``model`` set), as ``hrank rank`` takes them.
RANK_DEFAULTS: dict[str, Any] = {
    **{k: v for k, v in DEFAULTS.items() if k not in _MLP_KEYS},
    "model": None, "loss": None, "method": "auto", "params": None, "data": None,
    "samples": None, "dtype": "float64", "device": "auto", "probes": None,
    "parts_bound": False, "memory": None, "block": None,
    # the hf task is ``model_task`` here: ``task`` is the task index of a sweep
    **{("model_task" if k == "task" else k): None for k in MODEL_OPTION_KEYS},
}
_ALIASES = {"d": "input_dim", "K": "output_dim", "N": "num_samples", "samples": "num_samples",
            "activations": "activation", "widths": "width", "depths": "depth",
            "losses": "loss", "kinds": "kind", "methods": "method", "seeds": "seed",
            "models": "model", "budget": "max_matvecs"}
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
        skipped_blocks: Block names a ``blocks`` pattern matched but left out (nothing
            trainable in them).
    """

    name: str
    fixed: dict[str, Any]
    axes: tuple[tuple[str, tuple[Any, ...]], ...]
    slurm: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    skipped_blocks: tuple[str, ...] = ()

    @property
    def num_tasks(self) -> int:
        """Number of grid points."""
        return math.prod(len(v) for _, v in self.axes)

    def task(self, index: int) -> dict[str, Any]:
        """Settings of task ``index`` (0-based), with ``task`` and ``sweep`` keys added.

        A ``block`` value also sets ``params`` to the block's name.

        Raises:
            InputError: If ``index`` is outside ``[0, num_tasks)``.
        """
        if not 0 <= index < self.num_tasks:
            msg = f"task must be in [0, {self.num_tasks}); got {index}"
            raise InputError(msg)
        settings = dict(self.fixed)
        rest = index
        for key, values in reversed(self.axes):
            rest, i = divmod(rest, len(values))
            settings[key] = values[i]
        if settings.get("block") is not None:
            settings["params"] = settings["block"]
        return {"sweep": self.name, "task": index, **settings}

    def tasks(self) -> list[dict[str, Any]]:
        """All task settings, in index order."""
        return [self.task(i) for i in range(self.num_tasks)]


def _normalize(table: Mapping[str, Any], where: str) -> dict[str, Any]:
    allowed = set(DEFAULTS) | set(RANK_DEFAULTS) | {"blocks"}
    out: dict[str, Any] = {}
    for raw_key, value in table.items():
        key = _ALIASES.get(raw_key, raw_key)
        if key == "num_samples" and "model" in table and raw_key == "samples":
            key = "samples"  # a model's sample count, not the MLP grid's N
        if key == "task":
            msg = (f"setting 'task' in {where}: a sweep numbers its tasks; the hf task "
                   "(hrank rank --task) is model_task here")
            raise InputError(msg)
        if key not in allowed or key == "block":
            msg = (f"unknown setting {raw_key!r} in {where}; allowed: name, "
                   f"{', '.join(sorted(allowed))}")
            raise InputError(msg)
        if key in out:
            msg = f"setting {key!r} given twice in {where} (once as an alias)"
            raise InputError(msg)
        out[key] = value
    return out


def _block_axis(settings: dict[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The block names ``settings["blocks"]`` expands to on the (fixed) model, and skipped ones."""
    from scalable_hrank.models.blocks import expand_blocks
    from scalable_hrank.models.problem import build_problem as build_model_problem

    if isinstance(settings.get("model"), list) or settings.get("model") is None:
        msg = "blocks need one fixed model (model = \"...\", not a list or an MLP grid)"
        raise InputError(msg)
    if settings.get("params") is not None:
        msg = "give either blocks (one task per block) or params (one selection), not both"
        raise InputError(msg)
    fixed = {k: (v[0] if isinstance(v, list) else v) for k, v in settings.items()
             if k != "blocks"}
    problem = build_model_problem(model_settings({**RANK_DEFAULTS, **fixed}))
    blocks = expand_blocks(problem.model, settings["blocks"])
    for name in blocks.skipped:
        logger.warning("block %s skipped: none of its parameters is trainable", name)
    return blocks.names, blocks.skipped


def model_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """A task's settings as :func:`scalable_hrank.models.problem.build_problem` takes them."""
    out = {k: v for k, v in settings.items() if k not in ("task", "model_task")}
    out["task"] = settings.get("model_task")
    return out


def expand(grid: Mapping[str, Any], *, name: str = "sweep",
           slurm: Mapping[str, Any] | None = None, path: Path | None = None) -> SweepConfig:
    """Build a :class:`SweepConfig` from a settings mapping (lists are grid axes).

    Cost: with ``blocks``, loading the model once to expand them.

    Raises:
        InputError: An unknown setting, an empty axis, an unknown ``[slurm]`` option, MLP
            grid keys beside ``model``, or blocks that cannot be expanded.
    """
    settings = _normalize(grid, "[sweep]")
    for key in slurm or {}:
        if key not in _SLURM_KEYS:
            msg = f"unknown option {key!r} in [slurm]; allowed: {', '.join(sorted(_SLURM_KEYS))}"
            raise InputError(msg)
    any_model = "model" in settings
    if any_model:
        mlp_keys = sorted(k for k in settings if k in _MLP_KEYS)
        if mlp_keys:
            msg = (f"settings {mlp_keys} belong to the MLP grid (no model); with model = "
                   "... use samples, data and the model's own options")
            raise InputError(msg)
    defaults = RANK_DEFAULTS if any_model else DEFAULTS
    skipped: tuple[str, ...] = ()
    if "blocks" in settings:
        names, skipped = _block_axis(settings)
        settings = {k: v for k, v in settings.items() if k != "blocks"}
        settings["block"] = list(names)
    fixed = {k: v for k, v in defaults.items() if k not in settings}
    axes: list[tuple[str, tuple[Any, ...]]] = []
    order = list(AXES) + sorted(k for k in settings if k not in AXES)
    for key in order:
        if key not in settings:
            continue
        value = settings[key]
        if isinstance(value, list) and key != "input_shape":
            if not value:
                msg = f"grid axis {key!r} is empty"
                raise InputError(msg)
            axes.append((key, tuple(value)))
        else:
            fixed[key] = value
    return SweepConfig(name=str(name), fixed=fixed, axes=tuple(axes), slurm=dict(slurm or {}),
                       path=path, skipped_blocks=skipped)


def load_config(path: str | Path) -> SweepConfig:
    """Read a sweep file (``.toml`` or ``.json``).

    Raises:
        InputError: If the file does not exist, cannot be parsed or holds unknown settings.
    """
    path = Path(path)
    if not path.is_file():
        msg = f"sweep file {path} does not exist"
        raise InputError(msg)
    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix == ".json" else _toml().loads(text)
    except ValueError as exc:  # JSONDecodeError and TOMLDecodeError are ValueErrors
        msg = f"cannot parse sweep file {path}: {exc}"
        raise InputError(msg) from exc
    grid = dict(data.get("sweep", {}))
    unknown = set(data) - {"sweep", "slurm"}
    if unknown:
        msg = f"sweep file {path} has unknown tables {sorted(unknown)}; use [sweep] and [slurm]"
        raise InputError(msg)
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
            raise InputError(msg) from None
    return tomllib


def result_path(out_dir: str | Path, index: int) -> Path:
    """File a task writes its record to."""
    return Path(out_dir) / f"task-{index:05d}.json"


def check_writable(out_dir: str | Path) -> Path:
    """Create ``out_dir`` and check that files can be written there (before any product).

    Raises:
        InputError: The folder cannot be created or written.
    """
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-check-"):
            pass
    except OSError as exc:
        msg = f"sweep output folder {out} is not writable ({exc.strerror or exc}); pick --out"
        raise InputError(msg) from exc
    return out


def write_task_list(cfg: SweepConfig, out_dir: str | Path) -> Path:
    """Write every task's settings to ``out_dir/tasks.json`` (``hrank collect`` reads it)."""
    path = Path(out_dir) / "tasks.json"
    doc = {"name": cfg.name, "num_tasks": cfg.num_tasks, "tasks": cfg.tasks(),
           "skipped_blocks": list(cfg.skipped_blocks)}
    atomic_write_text(path, json.dumps(doc, indent=2, default=str) + "\n")
    return path


def build_problem(settings: Mapping[str, Any]) -> tuple[torch.nn.Module, tuple[Any, Any]]:
    """The MLP and synthetic Gaussian data of one MLP-grid task (deterministic in ``seed``).

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


def run_task(settings: Mapping[str, Any], out_dir: str | Path, *,
             handler: Any = None) -> dict[str, Any]:
    """Run one task and write its record (see :func:`scalable_hrank.sweep_task.run_task`)."""
    from scalable_hrank.sweep_task import run_task as run

    return run(settings, out_dir, handler=handler)
