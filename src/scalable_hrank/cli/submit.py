"""hrank submit: render one of the package's sbatch templates and submit it with sbatch.

    hrank submit rank [options] -- <hrank rank arguments>     one job (srun over GPUs, and
                                                               --distributed added, with
                                                               --nodes/--ntasks-per-node > 1)
    hrank submit sweep SWEEP.toml [--out DIR] [options]       a job array, one task per grid point
    hrank submit command [options] -- <any command>            any command, pre-emptible runner

Everything after ``--`` goes to the job unchanged; ``--`` is required, so that a job option
is never taken for an sbatch option. A job computes on the GPUs it asks for: the script
exports ``HRANK_DEVICE=cuda`` (``cpu`` with ``--gpus 0``), the default of ``hrank rank
--device``, so a GPU job that sees no GPU stops with exit 2 instead of computing on the CPU
(``--env HRANK_DEVICE=...`` or the job's own ``--device`` override it). ``--dry-run``
prints the exact script on stdout (the sbatch command line on stderr) instead of submitting
it. Jobs get ``--signal=B:USR1@120``;
on it the command checkpoints and exits 3 and the script requeues the job (docs/cluster.md).
Exit codes: 0 submitted (or printed); 2 bad arguments, or sbatch refused the job or is not
installed (its message follows ``hrank: error:``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from scalable_hrank._io import atomic_write_text
from scalable_hrank.distributed import slurm
from scalable_hrank.errors import InputError

logger = logging.getLogger(__name__)


def _common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sbatch options (override the template and the sweep's [slurm])")
    g.add_argument("--time", help="time limit, e.g. 02:00:00")
    g.add_argument("--partition")
    g.add_argument("--account")
    g.add_argument("--qos")
    g.add_argument("--constraint")
    g.add_argument("--mem", help="memory per node, e.g. 64G")
    g.add_argument("--gpus", type=int, default=None, metavar="N",
                   help="GPUs per node (--gres=gpu:N); 0 for a CPU job")
    g.add_argument("--nodes", type=int, default=None)
    g.add_argument("--ntasks-per-node", type=int, default=None,
                   help="processes per node (default: one per GPU in multi-node jobs)")
    g.add_argument("--cpus-per-task", type=int, default=None)
    g.add_argument("--job-name")
    g.add_argument("--output", help="log file (sbatch patterns %%x %%j %%A %%a)")
    g.add_argument("--chdir", type=Path, default=None, help="working directory of the job")
    g.add_argument("--sbatch", action="append", default=[], metavar="ARG",
                   help="extra sbatch argument, repeatable (e.g. --sbatch=--exclusive)")
    g.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="variable exported in the job script, repeatable")
    g.add_argument("--template", default=None, help="use this sbatch template file instead")
    p.add_argument("--dry-run", action="store_true", help="print the script; submit nothing")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``hrank submit``."""
    p = subparsers.add_parser("submit", help="submit a rank job or a sweep to Slurm",
                              description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", metavar="WHAT", required=True)
    r = sub.add_parser("rank", help="one `hrank rank` job")
    r.add_argument("--no-checkpoint", action="store_true",
                   help="do not add --checkpoint OUT.ckpt when --out is given")
    _common(r)
    r.add_argument("args", nargs=argparse.REMAINDER,
                   help="-- then the `hrank rank` arguments (the -- is required)")
    s = sub.add_parser("sweep", help="a job array over a sweep file")
    s.add_argument("config", type=Path)
    s.add_argument("--out", type=Path, default=None,
                   help="result folder (default hrank-out/<sweep name>)")
    s.add_argument("--tasks", default=None,
                   help="array indices to run, e.g. 3,7-9 (default: all; see hrank collect)")
    s.add_argument("--max-parallel", type=int, default=None, help="array throttle (%%N)")
    _common(s)
    c = sub.add_parser("command", help="any command under the pre-emptible runner")
    _common(c)
    c.add_argument("args", nargs=argparse.REMAINDER, help="-- then the command (required)")
    return p


def _job_arguments(args: argparse.Namespace) -> list[str]:
    """The words after ``--``; an error showing the right form when ``--`` is missing."""
    words = list(args.args)
    if words and words[0] == "--":
        return words[1:]
    if words:
        msg = (f"put `--` before the arguments of the job: hrank submit {args.what} "
               f"[sbatch options] -- {' '.join(words)}")
        raise InputError(msg)
    return words


def _directives(args: argparse.Namespace, defaults: dict[str, Any]) -> dict[str, str | None]:
    """Template options from the command line, falling back to ``defaults`` ([slurm] table)."""
    def pick(name: str) -> Any:
        value = getattr(args, name, None)
        return defaults.get(name) if value is None else value

    d: dict[str, str | None] = {}
    for name in ("time", "partition", "account", "qos", "constraint", "mem", "nodes",
                 "cpus_per_task", "job_name", "output"):
        value = pick(name)
        if value is not None:
            d["--" + name.replace("_", "-")] = str(value)
    gpus = pick("gpus")
    if gpus is not None:
        d["--gres"] = f"gpu:{gpus}" if int(gpus) > 0 else None
    if args.ntasks_per_node is not None:
        d["--ntasks-per-node"] = str(args.ntasks_per_node)
    if args.chdir is not None:
        d["--chdir"] = str(args.chdir.resolve())
    return d


def _environment(args: argparse.Namespace, gpus: Any = None) -> dict[str, str]:
    """Variables the script exports: HRANK_DEVICE from the GPUs asked for, then ``--env``."""
    env = {} if gpus is None else {"HRANK_DEVICE": "cuda" if int(gpus) > 0 else "cpu"}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            msg = f"--env must be KEY=VALUE; got {item!r}"
            raise InputError(msg)
        env[key] = value
    return env


def _multi(args: argparse.Namespace) -> bool:
    return (args.nodes or 1) > 1 or (args.ntasks_per_node or 1) > 1


def build(args: argparse.Namespace) -> tuple[str, list[str], dict[str, Any] | None]:
    """Return ``(script, extra sbatch args, sweep manifest or None)`` for the parsed arguments.

    Raises:
        ValueError: On missing or inconsistent arguments.
    """
    hrank = slurm.hrank_executable()
    manifest = None
    extra = list(args.sbatch)
    if args.what in ("rank", "command"):
        cmd_args = _job_arguments(args)
        if not cmd_args and args.what == "command":
            msg = "hrank submit command needs a command after --"
            raise InputError(msg)
        name = "distributed" if _multi(args) else "rank"
        if args.what == "rank":
            if ("--out" in cmd_args and "--checkpoint" not in cmd_args
                    and not args.no_checkpoint):
                out = cmd_args[cmd_args.index("--out") + 1]
                cmd_args += ["--checkpoint", f"{out}.ckpt"]
            if name == "distributed" and "--distributed" not in cmd_args:
                cmd_args.append("--distributed")
            words = [*hrank, "rank", *cmd_args]
        else:
            words = cmd_args
        directives = _directives(args, {})
        if name == "distributed":
            gpus = args.gpus if args.gpus is not None else 1
            directives.setdefault("--nodes", str(args.nodes or 1))
            directives["--ntasks-per-node"] = str(args.ntasks_per_node or max(gpus, 1))
        template = slurm.template_path(args.template or name).read_text()
        gpus = 1 if args.gpus is None and args.what == "rank" else args.gpus
        script = slurm.render(template, command=slurm.quote(words), directives=directives,
                              environment=_environment(args, gpus))
        return script, extra, manifest

    from scalable_hrank.sweep import load_config

    cfg = load_config(args.config)
    out = (args.out or Path("hrank-out") / cfg.name).resolve()
    defaults = dict(cfg.slurm)
    defaults.setdefault("job_name", f"hrank-{cfg.name}")
    defaults.setdefault("output", str(out / "logs" / "%x-%A_%a.out"))
    directives = _directives(args, defaults)
    tasks = args.tasks or f"0-{cfg.num_tasks - 1}"
    throttle = args.max_parallel or defaults.get("max_parallel")
    directives["--array"] = f"{tasks}%{throttle}" if throttle else tasks
    extra += [str(a) for a in defaults.get("sbatch", [])]
    words = slurm.quote([*hrank, "sweep", str(cfg.path), "--out", str(out)])
    command = f'{words} --task "${{SLURM_ARRAY_TASK_ID:?}}"'
    template = slurm.template_path(args.template or "sweep").read_text()
    script = slurm.render(template, command=command, directives=directives,
                          environment=_environment(
                              args, args.gpus if args.gpus is not None else defaults.get("gpus")))
    manifest = {"name": cfg.name, "config": str(cfg.path), "num_tasks": cfg.num_tasks,
                "out": str(out), "array": directives["--array"]}
    return script, extra, manifest


def run(args: argparse.Namespace) -> int:
    """Run ``hrank submit``; return the exit code."""
    script, extra, manifest = build(args)
    if args.dry_run:
        sys.stderr.write(f"# would run: sbatch --parsable {slurm.quote(extra)}".rstrip()
                         + " < (the script below)\n")
        sys.stdout.write(script)
        return 0
    if manifest is not None:
        from scalable_hrank.sweep import check_writable, load_config, write_task_list

        out = check_writable(manifest["out"])
        (out / "logs").mkdir(parents=True, exist_ok=True)
        write_task_list(load_config(manifest["config"]), out)
    try:
        job = slurm.sbatch(script, args=extra)
    except slurm.SlurmError as exc:
        msg = f"{exc} (check the sbatch options, and that Slurm answers: sinfo)"
        raise InputError(msg) from exc
    if manifest is not None:
        manifest.update(job_id=job, submitted=time.time())
        atomic_write_text(Path(manifest["out"]) / "sweep.json", json.dumps(manifest, indent=2))
        sys.stdout.write(f"{job}\n")
        sys.stderr.write(f"submitted array job {job} ({manifest['array']}); results in "
                         f"{manifest['out']}; then: hrank collect {manifest['out']}\n")
    else:
        sys.stdout.write(f"{job}\n")
    return 0
