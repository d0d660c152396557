"""``hrank sweep``: list, run one task of, or run locally a sweep file (see scalable_hrank.sweep).

Exit codes: 0 every task run succeeded, 1 a task failed (its record says why), 2 bad
arguments or sweep file, 3 pre-empted (checkpoint saved; rerun the task to resume).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from scalable_hrank.checkpoint import PREEMPTED_EXIT_CODE, Preempted, PreemptionHandler

logger = logging.getLogger(__name__)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``hrank sweep``."""
    p = subparsers.add_parser(
        "sweep", help="expand a sweep grid; list, run one task or run all locally",
        description="Expand the grid of a sweep file (TOML or JSON) into numbered tasks.")
    p.add_argument("config", type=Path, help="sweep file (.toml or .json)")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--list", action="store_true", help="print the tasks and their settings")
    mode.add_argument("--task", type=int, metavar="I", help="run task I")
    mode.add_argument("--local", action="store_true", help="run every task here, in order")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default hrank-out/<sweep name>)")
    p.add_argument("--force", action="store_true",
                   help="with --local: rerun tasks that already have an ok record")
    p.add_argument("--json", action="store_true", help="with --list: print JSON lines")
    return p


def run(args: argparse.Namespace) -> int:
    """Run ``hrank sweep``; return the exit code."""
    from scalable_hrank.sweep import (
        check_writable,
        load_config,
        result_path,
        run_task,
        write_task_list,
    )

    cfg = load_config(args.config)
    out = args.out or Path("hrank-out") / cfg.name
    if args.list:
        for s in cfg.tasks():
            if args.json:
                sys.stdout.write(json.dumps(s) + "\n")
            else:
                axes = " ".join(f"{k}={s[k]}" for k, _ in cfg.axes)
                sys.stdout.write(f"{s['task']:5d}  {axes}\n")
        sys.stdout.write(f"# {cfg.num_tasks} tasks; axes: "
                         f"{', '.join(f'{k}[{len(v)}]' for k, v in cfg.axes) or 'none'}\n")
        return 0
    indices = [args.task] if args.task is not None else range(cfg.num_tasks)
    check_writable(out)  # before any product
    if args.local:
        write_task_list(cfg, out)
    failed = 0
    with PreemptionHandler() as handler:
        for i in indices:
            settings = cfg.task(i)
            path = result_path(out, i)
            if args.local and not args.force and path.exists():
                try:
                    if json.loads(path.read_text()).get("status") == "ok":
                        logger.info("task %d: already done (%s)", i, path)
                        continue
                except ValueError:
                    pass
            sys.stderr.write(f"task {i}: started\n")
            sys.stderr.flush()
            try:
                record = run_task(settings, out, handler=handler)
            except Preempted as exc:
                logger.warning("task %d: %s", i, exc)
                return PREEMPTED_EXIT_CODE
            if record["status"] != "ok":
                failed += 1
                sys.stderr.write(f"task {i} failed: {record.get('error')}\n")
            else:
                ranks = ", ".join(f"{kind} {res['rank']}" for kind, res in
                                  record["results"].items())
                res = next(iter(record["results"].values()))
                sys.stdout.write(f"task {i}: rank {ranks} of n={res['n']} "
                                 f"({res['method']}, {record['seconds']:.2f}s) -> {path}\n")
    return 1 if failed else 0
