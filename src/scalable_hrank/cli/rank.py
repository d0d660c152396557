"""hrank rank: the rank of one model's H_L / H_O / H_F, written as JSON with provenance.

Exit codes: 0 every result exact, certified, or a converged density estimate; 1 a result is
only a bound (budget exhausted, infeasible density); 2 bad arguments or input; 3 pre-empted
(state checkpointed: rerun the same command to resume).
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
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch

from scalable_hrank import __version__
from scalable_hrank._io import atomic_write_text
from scalable_hrank.models.problem import MODEL_OPTION_KEYS, add_model_arguments
from scalable_hrank.operators import KINDS
from scalable_hrank.rank import METHODS, estimate_rank
from scalable_hrank.result import RankResult

log = logging.getLogger(__name__)

#: Exit code of a run stopped by SIGUSR1/SIGTERM after saving its checkpoint.
EXIT_PREEMPTED = 3
_DTYPES = {"float64": torch.float64, "float32": torch.float32}
#: Options a config file may set (same names as the flags, with underscores).
_CONFIG_KEYS = ("model", "data", "samples", "loss", "params", "kind", "method", "rtol", "atol",
                "seed", "max_matvecs", "block_size", "dtype", "device", "out", "checkpoint",
                "checkpoint_every", "probes", "parts_bound", "distributed", "progress",
                "memory", *MODEL_OPTION_KEYS)


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
    p.add_argument("--kind", choices=[*KINDS, "all"], help="default loss")
    p.add_argument("--method", choices=METHODS, help="default auto")
    p.add_argument("--rtol", type=float, help="threshold relative to sigma_max(H_L)")
    p.add_argument("--atol", type=float, help="absolute threshold")
    p.add_argument("--seed", type=int, help="default 0")
    p.add_argument("--max-matvecs", type=int, dest="max_matvecs", help="product budget")
    p.add_argument("--block-size", type=int, dest="block_size", help="default 8")
    p.add_argument("--probes", type=int, help="SLQ probes for --method density (default 8)")
    p.add_argument("--parts-bound", action="store_true", default=None, dest="parts_bound",
                   help="--method density, kind loss: when the count is infeasible, bound it "
                        "from above by counting H_O and H_F too (rank(H_L) <= rank(H_O) + "
                        "rank(H_F); each with the same budget)")
    p.add_argument("--dtype", choices=sorted(_DTYPES), help="product dtype (default float64)")
    p.add_argument("--memory", help="memory budget for the plan, e.g. 8G or 512M (default: "
                                    "the device's free memory)")
    p.add_argument("--device", help="cpu | cuda | cuda:N (default: the model's)")
    p.add_argument("--out", help="JSON result file (written atomically)")
    p.add_argument("--checkpoint", help="checkpoint file: saved periodically and on "
                                        "SIGUSR1/SIGTERM, resumed when present")
    p.add_argument("--checkpoint-every", type=float, dest="checkpoint_every",
                   help="seconds between periodic checkpoints (default 300)")
    p.add_argument("--distributed", action="store_true", default=None,
                   help="torch.distributed data parallel (torchrun / srun env)")
    p.add_argument("--progress", action="store_true", default=None, help="tqdm progress bar")
    add_model_arguments(p)
    return p


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    cfg: dict[str, Any] = {}
    if args.config:
        cfg = _read_config(Path(args.config))
    defaults = {"model": "mlp:64,12,12,10", "kind": "loss", "method": "auto", "seed": 0,
                "block_size": 8, "dtype": "float64", "samples": 100,
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
        raise TypeError(msg)
    data = {k.replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(data) - set(_CONFIG_KEYS))
    if unknown:
        msg = f"config {path}: unknown options {unknown}; known: {list(_CONFIG_KEYS)}"
        raise ValueError(msg)
    return data


def _problem(s: dict[str, Any]) -> tuple[Any, Any, Any, str]:
    from scalable_hrank.models.problem import build_problem, check_selection

    problem = build_problem(s)
    check_selection(problem.model, s.get("params"), problem.unused)
    return problem.model, problem.loss, problem.data, problem.description


def _bytes(text: Any) -> int | None:
    """'8G', '512M', '1e9' -> bytes (binary units); None stays None."""
    if text is None:
        return None
    t = str(text).strip().upper().removesuffix("B")
    scale = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}.get(t[-1:], 1)
    try:
        return int(float(t[:-1] if scale > 1 else t) * scale)
    except ValueError:
        msg = f"memory must be a size such as 8G or 512M; got {text!r}"
        raise ValueError(msg) from None


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


def _progress_callback(enabled: bool, kind: str, n: int) -> Any:
    if not enabled:
        return None, None
    from tqdm import tqdm

    bar = tqdm(total=n, desc=f"{kind} products", unit="mv", file=sys.stderr)

    def update(state: Any) -> None:
        bar.n = state.num_matvecs
        bar.set_postfix(basis=state.size)
        bar.refresh()

    return update, bar


def _checkpoint_path(s: dict[str, Any], kind: str) -> Path:
    suffix = f".{kind}" if s["kind"] == "all" else ""
    return Path(str(s["checkpoint"]) + suffix)


def _one_kind(s: dict[str, Any], kind: str, model: Any, loss: Any, data: Any, selected: Any,
              dtype: torch.dtype, n: int, stack: ExitStack) -> RankResult | None:
    """One estimate_rank call with progress and checkpointing; None when pre-empted."""
    from scalable_hrank.checkpoint import (
        CheckpointSaver,
        Preempted,
        PreemptionHandler,
        fingerprint,
    )

    progress, bar = _progress_callback(bool(s["progress"]), kind, n)
    if bar is not None:
        stack.callback(bar.close)
    saver, resume = None, None
    if s.get("checkpoint"):
        fp = fingerprint(list(model.parameters()), data,
                         {**s, "kind": kind, "out": None, "progress": None})
        handler = stack.enter_context(PreemptionHandler())
        saver = CheckpointSaver(_checkpoint_path(s, kind), fp,
                                every_seconds=float(s["checkpoint_every"]), handler=handler)
        resume = saver.load()

    def on_block(state: Any) -> None:
        if progress is not None:
            progress(state)
        if saver is not None:
            saver(state.snapshot())

    try:
        return estimate_rank(
            model, loss, data, kind, method=str(s["method"]), params=selected,
            rtol=s.get("rtol"), atol=s.get("atol"), seed=int(s["seed"]),
            max_matvecs=s.get("max_matvecs"), dtype=dtype, block_size=int(s["block_size"]),
            memory_bytes=_bytes(s.get("memory")),
            on_block=on_block if (progress or saver) else None, resume_state=resume,
            density=_density_options(s))
    except Preempted as exc:
        print(f"hrank rank: {exc}; rerun the same command to resume", file=sys.stderr)
        return None


def run(args: argparse.Namespace) -> int:
    """Run the rank computation(s) and write the result JSON."""
    s = _settings(args)
    dtype = _DTYPES.get(str(s["dtype"]))
    if dtype is None:
        msg = f"dtype must be one of {sorted(_DTYPES)}; got {s['dtype']!r}"
        raise ValueError(msg)
    world = None
    if s["distributed"]:
        from scalable_hrank.distributed import init_from_env, shard

        world = init_from_env()
    model, loss, data, description = _problem(s)
    if s.get("device") and str(s["model"]).startswith("mlp:"):
        model = model.to(s["device"])
    if world is not None and world.size > 1:
        data = shard(data, world.rank, world.size)
    kinds = list(KINDS) if s["kind"] == "all" else [s["kind"]]
    selected = s.get("params")
    from scalable_hrank.operators import parameter_space

    n = parameter_space(model, selected)[0].size
    log.info("%s: %d selected parameters", description, n)
    print(f"{description}: {n} selected parameters", file=sys.stderr)
    results: dict[str, RankResult] = {}
    preempted = False
    for kind in kinds:
        with ExitStack() as stack:
            res = _one_kind(s, kind, model, loss, data, selected, dtype, n, stack)
        if res is None:
            preempted = True
            break
        results[kind] = res
        if world is None or world.rank == 0:
            print(res.summary())
            for note in res.notes:
                print(f"  note: {note}")
    if preempted:
        return EXIT_PREEMPTED
    rank0 = world is None or world.rank == 0
    if s.get("out") and rank0:
        doc = {"model": description, "n": n,
               "results": {k: r.to_dict() for k, r in results.items()},
               "provenance": provenance({k: v for k, v in s.items()})}
        if len(results) == 1:
            doc.update(next(iter(results.values())).to_dict())
        atomic_write_text(Path(s["out"]), json.dumps(doc, indent=2, default=str) + "\n")
    if s.get("checkpoint"):
        for kind in kinds:
            _checkpoint_path(s, kind).unlink(missing_ok=True)
    if world is not None:
        from scalable_hrank.distributed import shutdown

        torch.distributed.barrier()  # nobody tears the group down while a peer still talks
        shutdown()
    ok = all(r.certified or r.method == "exact" or bool(r.extra.get("converged"))
             for r in results.values())
    return 0 if ok else 1

