"""hrank rank: the rank of one model's H_L / H_O / H_F, written as JSON with provenance.

The device is "auto" by default: this process's GPU when CUDA is available (LOCAL_RANK's under
torchrun or srun), else the CPU; model and data are moved there, whatever their source.
``--out`` and ``--checkpoint`` are checked for writability before any product. With
``--checkpoint`` a run resumes where it stopped (pre-empted, or out of budget: rerun with a
larger ``--max-matvecs``), and ``--kind all`` keeps the kinds it finished.

Exit codes: 0 every result exact, certified, or a converged density estimate; 1 a result is
only a bound (budget exhausted, infeasible density); 2 bad arguments, input, files,
environment or checkpoint; 3 pre-empted (state checkpointed: rerun the same command to
resume); 4 internal error.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from scalable_hrank import __version__
from scalable_hrank._io import atomic_write_text, check_writable
from scalable_hrank._validation import parse_size
from scalable_hrank.checkpoint import per_rank_path
from scalable_hrank.cli.errors import EXIT_PREEMPTED, exit_code
from scalable_hrank.cli.progress import ProductBar
from scalable_hrank.cli.resume import KindCheckpoint, kind_path, problem_fingerprint
from scalable_hrank.distributed.env import World, init_from_env, shard, shutdown
from scalable_hrank.distributed.resources import configure_threads, resolve_device, to_device
from scalable_hrank.errors import InputError
from scalable_hrank.estimators import estimator, method_names
from scalable_hrank.models.problem import MODEL_OPTION_KEYS, add_model_arguments
from scalable_hrank.operators import kind_names, parameter_space
from scalable_hrank.preemption import Preempted, PreemptionHandler
from scalable_hrank.rank import estimate_rank
from scalable_hrank.result import RankResult

log = logging.getLogger(__name__)

_DTYPES = {"float64": torch.float64, "float32": torch.float32}
#: Options a config file may set (same names as the flags, with underscores).
_CONFIG_KEYS = ("model", "data", "samples", "loss", "params", "kind", "method", "rtol", "atol",
                "seed", "max_matvecs", "block_size", "dtype", "device", "out", "checkpoint",
                "checkpoint_every", "probes", "parts_bound", "distributed", "progress",
                "memory", "threads", "shard_basis", *MODEL_OPTION_KEYS)


def _density_options(s: dict[str, Any]) -> dict[str, Any] | None:
    """The ``density`` options of estimate_rank from the settings (None: defaults)."""
    opts: dict[str, Any] = {}
    if s.get("probes"):
        opts["num_probes"] = int(s["probes"])
    if s.get("parts_bound"):
        opts["bound_from_parts"] = True
    return opts or None


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``hrank rank``."""
    p = sub.add_parser("rank", help="rank of one model's Hessian (or its parts)",
                       description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="TOML/JSON/YAML file with any of the options below "
                                    "(flags given on the command line win)")
    p.add_argument("--model", help="mlp:WIDTHS[:ACTIVATION][:bias] (e.g. mlp:64,12,12,10:tanh), "
                                   "hf:minilm, hf:PATH, timm:NAME, torchvision:NAME, file:CKPT "
                                   "(with --builder), module:function, file.py:function "
                                   "(default mlp:64,12,12,10)")
    p.add_argument("--data", help="for mlp: digits (default) | gaussian | FILE.pt; for other "
                                  "models a text or tensor file (default: built-in sample)")
    p.add_argument("--samples", type=int, help="samples of digits/gaussian data (default 100)")
    p.add_argument("--loss", help="mse | cross_entropy | logcosh (default: the model's)")
    p.add_argument("--params", action="append",
                   help="parameter name globs, comma-separated or repeated "
                        "(e.g. 'encoder.layer.5.*'); default all")
    p.add_argument("--kind", choices=[*kind_names(), "all"], help="default loss")
    p.add_argument("--method", choices=method_names(), help="default auto")
    p.add_argument("--rtol", type=float, help="threshold relative to sigma_max(H_L)")
    p.add_argument("--atol", type=float, help="absolute threshold")
    p.add_argument("--seed", type=int, help="default 0")
    p.add_argument("--max-matvecs", type=int, dest="max_matvecs", help="product budget")
    p.add_argument("--block-size", type=int, dest="block_size", help="default 8")
    p.add_argument("--probes", type=int, help="SLQ probes for --method density (default 16)")
    p.add_argument("--parts-bound", action="store_true", default=None, dest="parts_bound",
                   help="--method density, kind loss: when the count is infeasible, bound it "
                        "from above by counting H_O and H_F too (rank(H_L) <= rank(H_O) + "
                        "rank(H_F); each with the same budget)")
    p.add_argument("--dtype", choices=sorted(_DTYPES), help="product dtype (default float64)")
    p.add_argument("--memory", help="memory budget for the plan, e.g. 8G or 512M (default: "
                                    "the device's free memory)")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N (default $HRANK_DEVICE, else "
                                    "auto: this process's GPU when CUDA is available, else "
                                    "the CPU)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: the CPUs this "
                                               "process may use; SLURM_CPUS_PER_TASK caps it)")
    p.add_argument("--out", help="JSON result file (written atomically)")
    p.add_argument("--checkpoint", help="checkpoint file: saved periodically, on "
                                        "SIGUSR1/SIGTERM and when the budget runs out; resumed "
                                        "when present (kept while a result is only a bound)")
    p.add_argument("--checkpoint-every", type=float, dest="checkpoint_every",
                   help="seconds between periodic checkpoints (default 300)")
    p.add_argument("--distributed", action="store_true", default=None,
                   help="torch.distributed data parallel (torchrun / srun env)")
    p.add_argument("--shard-basis", action="store_true", default=None, dest="shard_basis",
                   help="with --distributed: each process keeps only its slice of the Krylov "
                        "basis (memory per process falls with the process count; one "
                        "checkpoint file per process)")
    p.add_argument("--progress", action="store_true", default=None,
                   help="progress bar: products, products per second and ETA")
    add_model_arguments(p)
    return p


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    cfg: dict[str, Any] = {}
    if args.config:
        cfg = _read_config(Path(args.config))
    defaults = {"model": "mlp:64,12,12,10", "kind": "loss", "method": "auto", "seed": 0,
                "block_size": 8, "dtype": "float64", "samples": 100,
                "device": os.environ.get("HRANK_DEVICE") or "auto",
                "checkpoint_every": 300.0, "distributed": False, "progress": False}
    out = {**defaults, **cfg}
    for key in _CONFIG_KEYS:
        val = getattr(args, key, None)
        if val is not None:
            out[key] = val
    if not str(out["model"]).startswith("mlp:") and "samples" not in cfg and args.samples is None:
        out.pop("samples")  # only the built-in mlp data use it; model specs bring their own
    if isinstance(out.get("params"), list):
        out["params"] = [g.strip() for item in out["params"] for g in str(item).split(",")
                         if g.strip()]
    elif isinstance(out.get("params"), str):
        out["params"] = [g.strip() for g in out["params"].split(",") if g.strip()]
    return out


def _read_config(path: Path) -> dict[str, Any]:
    text = path.read_text()
    if path.suffix == ".toml":
        import tomllib

        data = tomllib.loads(text)
    elif path.suffix in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        msg = f"config {path} must hold a mapping of option names to values"
        raise InputError(msg)
    data = {k.replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(data) - set(_CONFIG_KEYS))
    if unknown:
        msg = f"config {path}: unknown options {unknown}; known: {list(_CONFIG_KEYS)}"
        raise InputError(msg)
    return data


def _problem(s: dict[str, Any]) -> tuple[Any, Any, Any, str]:
    from scalable_hrank.models.problem import build_problem, check_selection

    problem = build_problem(s)
    check_selection(problem.model, s.get("params"), problem.unused)
    return problem.model, problem.loss, problem.data, problem.description


def _git_hash() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def provenance(settings: dict[str, Any]) -> dict[str, Any]:
    """Versions, machine and settings of a run, for its result file."""
    return {
        "scalable_hrank": __version__, "torch": torch.__version__,
        "python": sys.version.split()[0], "git": _git_hash(),
        "machine": {"platform": platform.platform(), "host": socket.gethostname(),
                    "cpu_threads": torch.get_num_threads(),
                    "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None},
        "settings": settings, "command": sys.argv,
        "slurm_job": os.environ.get("SLURM_JOB_ID"),
    }


def _expected_products(method: str, n: int, block_size: int,
                       budget: int | None) -> int | None:
    """Total of a progress bar: the budget, else the method's bound where one is known."""
    if budget:
        return int(budget)
    if method == "auto":
        return None
    return estimator(method).max_products(n, block_size)


def _solve(s: dict[str, Any], kind: str, model: Any, loss: Any, data: Any, selected: Any,
           dtype: torch.dtype, n: int, ckpt: KindCheckpoint | None) -> RankResult:
    """One estimate_rank call with a progress bar and the kind's checkpoint."""
    if ckpt is not None and ckpt.result is not None:
        return ckpt.result
    method = str(s["method"])
    budget = s.get("max_matvecs")
    bar = ProductBar(bool(s["progress"]), f"{kind} {method}",
                     _expected_products(method, n, int(s["block_size"]), budget))
    progress = bar.update if s["progress"] else None
    on_block = ckpt.on_block(progress) if ckpt is not None else progress
    try:
        res = estimate_rank(
            model, loss, data, kind, method=method, params=selected,
            rtol=s.get("rtol"), atol=s.get("atol"), seed=int(s["seed"]),
            max_matvecs=budget, dtype=dtype, block_size=int(s["block_size"]),
            memory_bytes=parse_size(s.get("memory")), on_block=on_block,
            resume_state=None if ckpt is None else ckpt.state, density=_density_options(s),
            shard_basis=bool(s.get("shard_basis")))
    except BaseException:
        bar.close()
        raise
    bar.finish(res.matvecs)
    if ckpt is not None:
        ckpt.finish(res, res.guarantee)
    return res


def _check_finite(data: Any) -> None:
    """Refuse data with NaN or infinity (else every product is NaN, found only much later)."""
    batches = [data] if isinstance(data, tuple) else data if isinstance(data, list) else []
    for i, batch in enumerate(batches):
        stack = [batch]
        while stack:
            item = stack.pop()
            if isinstance(item, torch.Tensor):
                if item.is_floating_point() and not bool(torch.isfinite(item).all()):
                    msg = (f"the data hold NaN or infinity (batch {i}); clean or impute them "
                           "before computing a Hessian")
                    raise InputError(msg)
            elif isinstance(item, dict):
                stack.extend(item.values())
            elif isinstance(item, (tuple, list)):
                stack.extend(item)


def _check_outputs(s: dict[str, Any], kinds: list[str]) -> None:
    """Fail now, before any product, if the result or a checkpoint could not be written."""
    if s.get("out"):
        check_writable(Path(s["out"]), "--out")
    if s.get("checkpoint"):
        for kind in kinds:
            check_writable(kind_path(s["checkpoint"], kind, s["kind"] == "all"), "--checkpoint")


def _write_result(s: dict[str, Any], description: str, n: int,
                  results: dict[str, RankResult]) -> None:
    doc: dict[str, Any] = {"model": description, "n": n,
                           "results": {k: r.to_dict() for k, r in results.items()},
                           "guarantees": {k: r.guarantee for k, r in results.items()},
                           "provenance": provenance(dict(s))}
    if len(results) == 1:
        doc.update(next(iter(results.values())).to_dict())
    atomic_write_text(Path(s["out"]), json.dumps(doc, indent=2, default=str) + "\n")


def run(args: argparse.Namespace) -> int:
    """Run the rank computation(s) and write the result JSON."""
    s = _settings(args)
    dtype = _DTYPES.get(str(s["dtype"]))
    if dtype is None:
        msg = f"dtype must be one of {sorted(_DTYPES)}; got {s['dtype']!r}"
        raise InputError(msg)
    kinds = list(kind_names()) if s["kind"] == "all" else [s["kind"]]
    _check_outputs(s, kinds)
    s["threads"] = configure_threads(s.get("threads"))
    device = resolve_device(s.get("device"))
    world = None
    if s["distributed"]:
        world = init_from_env(backend="gloo" if device.type == "cpu" else None)
    model, loss, data, description = _problem(s)
    _check_finite(data)
    model, data = model.to(device), to_device(data, device)
    s["device"] = str(device)
    selected = s.get("params")
    n = parameter_space(model, selected)[0].size
    rank0 = world is None or world.rank == 0
    print(f"{description}: {n} selected parameters on {device}", file=sys.stderr)
    sharded = bool(s.get("shard_basis")) and world is not None and world.size > 1
    fp_settings = {**s, "world": (world.rank, world.size) if sharded else None}
    fingerprints = ({k: problem_fingerprint(model, loss, data, fp_settings, k) for k in kinds}
                    if s.get("checkpoint") else {})
    if world is not None and world.size > 1:
        data = shard(data, world.rank, world.size)
    results: dict[str, RankResult] = {}
    checkpoints: list[KindCheckpoint] = []
    with PreemptionHandler() as handler:
        for kind in kinds:
            ckpt = None
            if s.get("checkpoint"):
                path = kind_path(s["checkpoint"], kind, s["kind"] == "all")
                if sharded:  # each process saves its own slice of the basis
                    path = per_rank_path(path, world.rank, world.size)
                ckpt = KindCheckpoint(path, fingerprints[kind], handler=handler,
                                      every_seconds=float(s["checkpoint_every"]),
                                      device=device)
                checkpoints.append(ckpt)
                if rank0:
                    ckpt.announce(kind)
            try:
                res = _solve(s, kind, model, loss, data, selected, dtype, n, ckpt)
            except Preempted as exc:
                print(f"hrank rank: {exc}; rerun the same command to resume", file=sys.stderr)
                _leave(world)  # every process stops at the same block
                return EXIT_PREEMPTED
            results[kind] = res
            if rank0:
                print(res.summary())
                for note in res.notes:
                    print(f"  note: {note}")
    if s.get("out") and rank0:
        _write_result(s, description, n, results)
    code = exit_code(results.values())
    if code == 0:
        for ckpt in checkpoints:
            ckpt.remove()
    elif checkpoints and rank0:
        print(f"hrank rank: only a bound; the state is kept in {s['checkpoint']}: rerun with a "
              "larger --max-matvecs to continue", file=sys.stderr)
    _leave(world)
    return code


def _leave(world: World | None) -> None:
    """Leave the process group in step with the other processes (no-op when single)."""
    if world is not None and world.size > 1:
        shutdown()
