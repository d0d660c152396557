"""Submit the sbatch templates and follow the jobs (plain sbatch).

The templates live in the repository's top-level ``slurm/`` folder (the single source); the
wheel ships a copy as package data (``scalable_hrank/distributed/sbatch/``).

Why plain sbatch rather than submitit: the templates are the artefact users read, edit and
``sbatch`` by hand on any cluster; submission only renders them (``#SBATCH`` options and the
command line) and pipes the result to ``sbatch --parsable``. Job state comes from
``scontrol show job -o``, which works without accounting (sacct) and for every array task.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

logger = logging.getLogger(__name__)

#: Template name -> file in the template folder.
TEMPLATES: dict[str, str] = {
    "rank": "rank.sbatch",
    "distributed": "distributed.sbatch",
    "sweep": "sweep.sbatch",
}
#: Job states after which a job will not run again.
FINAL_STATES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL",
                          "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "PREEMPTED"})

_CMD_MARKER = "# hrank: command"
_DIRECTIVE = re.compile(r"^#SBATCH\s+(--[A-Za-z0-9-]+)(?:[= ](.*))?$")


class SlurmError(RuntimeError):
    """sbatch/scontrol failed, or a job did not finish in time."""


def template_dir() -> Path:
    """Folder of the sbatch templates.

    ``HRANK_SLURM_TEMPLATES`` if set (edited copies); else the copy installed with the wheel
    (``sbatch/`` next to this module); else, in a source checkout or an editable install, the
    repository's ``slurm/`` folder.

    Raises:
        FileNotFoundError: If the folder does not exist.
    """
    env = os.environ.get("HRANK_SLURM_TEMPLATES")
    here = Path(__file__).resolve().parent
    installed, checkout = here / "sbatch", here.parents[2] / "slurm"
    folder = Path(env) if env else installed if installed.is_dir() else checkout
    if not folder.is_dir():
        msg = (f"sbatch templates not found in {folder}; set HRANK_SLURM_TEMPLATES to a "
               "folder of templates or pass --template")
        raise FileNotFoundError(msg)
    return folder


def template_path(name: str) -> Path:
    """Path of template ``name`` ("rank", "distributed" or "sweep") or of a file path.

    Raises:
        FileNotFoundError: If it does not exist.
    """
    path = template_dir() / TEMPLATES[name] if name in TEMPLATES else Path(name)
    if not path.is_file():
        msg = f"sbatch template {path} does not exist"
        raise FileNotFoundError(msg)
    return path


def hrank_executable() -> list[str]:
    """The command that runs this installation's ``hrank`` (absolute, so jobs use the same env).

    The ``hrank`` script next to the running interpreter when present, else the interpreter
    with an inline call of ``scalable_hrank.cli.main``.
    """
    script = Path(sys.executable).parent / "hrank"
    if script.is_file():
        return [str(script)]
    found = shutil.which("hrank")
    if found:
        return [found]
    return [sys.executable, "-c",
            "import sys; from scalable_hrank.cli import main; sys.exit(main(sys.argv[1:]))"]


def quote(args: Iterable[str]) -> str:
    """Shell-quote arguments into one bash word list."""
    return " ".join(shlex.quote(str(a)) for a in args)


def render(template: str, *, command: str | None = None,
           directives: Mapping[str, str | None] | None = None,
           environment: Mapping[str, str] | None = None) -> str:
    """Return a ready-to-submit script from a template's text.

    Args:
        template: Template text (``#SBATCH`` lines, then a ``CMD=(...)`` line after the
            ``# hrank: command`` marker).
        command: Bash words for the ``CMD=( ... )`` array (already quoted: see :func:`quote`);
            None keeps the template's (which uses the script's arguments ``"$@"``).
        directives: ``{"--time": "01:00:00", "--gres": None}``: set (replacing the template's
            value) or, with None, delete an ``#SBATCH`` option.
        environment: Variables exported before the command.

    Returns:
        The script text.

    Raises:
        ValueError: If ``command`` is given and the template has no command marker.
    """
    directives = dict(directives or {})
    lines = template.splitlines()
    out: list[str] = []
    last_directive = 0
    seen: set[str] = set()
    for line in lines:
        m = _DIRECTIVE.match(line)
        if m and m.group(1) in directives:
            key = m.group(1)
            if key not in seen and directives[key] is not None:
                out.append(f"#SBATCH {key}={directives[key]}")
            seen.add(key)
        else:
            out.append(line)
        if m:
            last_directive = len(out)
    new = [f"#SBATCH {k}={v}" if v != "" else f"#SBATCH {k}"
           for k, v in directives.items() if k not in seen and v is not None]
    out[last_directive:last_directive] = new
    if environment:
        at = last_directive + len(new)
        out[at:at] = ["", *(f"export {k}={shlex.quote(str(v))}" for k, v in environment.items())]
    if command is not None:
        for i, line in enumerate(out):
            if line.startswith(_CMD_MARKER):
                j = next(k for k in range(i + 1, len(out)) if out[k].startswith("CMD=("))
                out[j] = f"CMD=({command})"
                break
        else:
            msg = f"template has no '{_CMD_MARKER}' line followed by CMD=(...)"
            raise ValueError(msg)
    return "\n".join(out) + "\n"


def sbatch(script: str, *, args: Sequence[str] = (), cwd: str | Path | None = None) -> str:
    """Submit ``script`` (text, on stdin) with ``sbatch --parsable``; return the job id.

    Raises:
        SlurmError: If sbatch fails or is not installed.
    """
    cmd = ["sbatch", "--parsable", *args]
    try:
        proc = subprocess.run(cmd, input=script, capture_output=True, text=True, cwd=cwd,
                              check=False, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        msg = f"cannot run sbatch: {exc}"
        raise SlurmError(msg) from exc
    if proc.returncode:
        msg = f"sbatch failed ({proc.returncode}): {proc.stderr.strip()}"
        raise SlurmError(msg)
    job = proc.stdout.strip().split(";")[0]
    logger.info("submitted job %s", job)
    return job


def job_records(job_id: str) -> list[dict[str, str]]:
    """``scontrol show job -o`` of a job: one dict per job (per array task for arrays).

    An unknown job (purged: older than MinJobAge) gives an empty list.
    """
    proc = subprocess.run(["scontrol", "show", "job", "-o", str(job_id)], capture_output=True,
                          text=True, check=False, timeout=60)
    if proc.returncode:
        return []
    records = []
    for line in proc.stdout.splitlines():
        rec: dict[str, str] = {}
        for item in re.findall(r"(\w+)=(\S*)", line):
            rec.setdefault(item[0], item[1])
        if rec:
            records.append(rec)
    return records


def wait(job_id: str, *, timeout: float, poll: float = 0.5) -> list[dict[str, str]]:
    """Wait until every task of ``job_id`` is in a final state; return their records.

    A requeued job passes through PENDING again and is waited for.

    Raises:
        SlurmError: If the job is not done within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        recs = job_records(job_id)
        if recs and all(r.get("JobState") in FINAL_STATES for r in recs):
            return recs
        if time.monotonic() > deadline:
            states = sorted({r.get("JobState", "?") for r in recs})
            msg = f"job {job_id} not finished after {timeout:.0f}s (states {states})"
            raise SlurmError(msg)
        time.sleep(poll)
