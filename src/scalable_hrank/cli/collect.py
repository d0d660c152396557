"""hrank collect DIR: gather the per-task records of a sweep into one CSV and JSON table.

One row per (task, kind) with the columns of :data:`COLUMNS` (block, n, rank, the interval,
its guarantee, products, seconds, the formula bound) and one column per sweep setting (named
``setting_<key>`` where a result column has the same name). ``results.json`` is
``{"num_tasks", "rows", "missing", "failed"}``. Missing tasks (no record) and failed ones are
listed on stderr; exit code 1 if there is any, 0 otherwise. The expected task count comes from
``--config``, ``tasks.json`` (written by ``hrank sweep --local`` and ``hrank submit sweep``) or
``sweep.json`` in DIR; without any, from the highest task index found.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path
from typing import Any

from scalable_hrank._io import atomic_write_text
from scalable_hrank.errors import InputError
from scalable_hrank.operators import kind_names
from scalable_hrank.result import RankResult

#: Result columns of every row, in this order (the settings follow).
COLUMNS = ("task", "status", "block", "kind", "n", "rank", "rank_low", "rank_high", "guarantee",
           "certified", "confidence", "method", "matvecs", "seconds", "bound", "bound_reason",
           "tol", "exact_rank", "wall_seconds", "error")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``hrank collect``."""
    p = subparsers.add_parser("collect", help="gather sweep results into CSV/JSON; flag gaps",
                              description=__doc__.splitlines()[0])
    p.add_argument("dir", type=Path, help="folder with task-<i>.json records")
    p.add_argument("--config", type=Path, default=None, help="sweep file (expected tasks)")
    p.add_argument("--csv", type=Path, default=None, help="CSV path (default DIR/results.csv)")
    p.add_argument("--json", type=Path, default=None,
                   help="JSON path (default DIR/results.json)")
    return p


def _expected(folder: Path, num_tasks: int | None, records: dict[int, dict[str, Any]]
              ) -> tuple[int, dict[int, dict[str, Any]]]:
    """The number of tasks and the settings of each one (from tasks.json, when present)."""
    listed: dict[int, dict[str, Any]] = {}
    task_list = folder / "tasks.json"
    if task_list.exists():
        doc = json.loads(task_list.read_text())
        listed = {int(t["task"]): t for t in doc.get("tasks", [])}
        num_tasks = int(doc["num_tasks"]) if num_tasks is None else num_tasks
    manifest = folder / "sweep.json"
    if num_tasks is None and manifest.exists():
        num_tasks = int(json.loads(manifest.read_text())["num_tasks"])
    if num_tasks is None:
        num_tasks = max(records, default=-1) + 1
    return num_tasks, listed


def _rows(index: int, rec: dict[str, Any] | None, settings: dict[str, Any]
          ) -> list[dict[str, Any]]:
    """The rows of one task: one per kind it ran (or was to run)."""
    status = "missing" if rec is None else rec.get("status", "failed")
    rec = rec or {}
    results = rec.get("results") or ({settings.get("kind"): rec["result"]}
                                     if rec.get("result") else {})
    if not results:
        kind = settings.get("kind")
        results = {k: {} for k in (kind_names() if kind == "all" else (kind or "",))}
    extra = {(f"setting_{k}" if k in COLUMNS else k): v for k, v in settings.items()
             if k not in ("task", "sweep", "block")}
    rows = []
    for kind, res in results.items():
        bound = (rec.get("bounds") or {}).get(kind) or {}
        exact = (rec.get("exact_ranks") or {}).get(kind, rec.get("exact_rank")
                                                    if len(results) == 1 else None)
        row = {"task": index, "status": status, "block": settings.get("block") or "",
               "kind": kind, **{k: res.get(k) for k in ("n", "rank", "rank_low", "rank_high")},
               "guarantee": RankResult.from_dict(res).guarantee if res else None,
               **{k: res.get(k) for k in ("certified", "confidence", "method", "matvecs",
                                          "seconds")},
               "bound": bound.get("bound"), "bound_reason": bound.get("reason"),
               "tol": res.get("tol"), "exact_rank": exact, "wall_seconds": rec.get("seconds"),
               "error": rec.get("error")}
        rows.append({**row, **extra})
    return rows


def collect(folder: Path, num_tasks: int | None = None) -> dict[str, Any]:
    """Read every ``task-*.json`` in ``folder``.

    Returns:
        ``{"num_tasks": n, "rows": [...], "missing": [indices], "failed": [indices]}``: one
        row per (task, kind); missing tasks have status "missing" (one row per kind when
        ``tasks.json`` gives their settings).
    """
    records: dict[int, dict[str, Any]] = {}
    for path in sorted(folder.glob("task-*.json")):
        try:
            rec = json.loads(path.read_text())
            records[int(rec["task"])] = rec
        except (ValueError, KeyError) as exc:
            index = int(path.stem.split("-")[1])
            records[index] = {"task": index, "status": "failed",
                              "error": f"unreadable record {path.name}: {exc}"}
    num_tasks, listed = _expected(folder, num_tasks, records)
    rows, missing, failed = [], [], []
    for i in range(num_tasks):
        rec = records.get(i)
        settings = dict((rec or {}).get("settings") or listed.get(i) or {})
        if rec is None:
            missing.append(i)
        elif rec.get("status") != "ok":
            failed.append(i)
        rows += _rows(i, rec, settings)
    return {"num_tasks": num_tasks, "rows": rows, "missing": missing, "failed": failed}


def _csv(rows: list[dict[str, Any]]) -> str:
    columns: list[str] = list(COLUMNS)
    for row in rows:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n", restval="")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def run(args: argparse.Namespace) -> int:
    """Run ``hrank collect``; return the exit code."""
    if not args.dir.is_dir():
        msg = f"{args.dir} is not a folder"
        raise InputError(msg)
    num_tasks = None
    if args.config is not None:
        from scalable_hrank.sweep import load_config

        num_tasks = load_config(args.config).num_tasks
    table = collect(args.dir, num_tasks)
    if not table["num_tasks"]:
        msg = (f"{args.dir} holds no sweep task records (task-<i>.json or tasks.json): "
               "give the --out folder of hrank sweep / hrank submit sweep")
        raise InputError(msg)
    csv_path = args.csv or args.dir / "results.csv"
    json_path = args.json or args.dir / "results.json"
    atomic_write_text(csv_path, _csv(table["rows"]))
    atomic_write_text(json_path, json.dumps(table, indent=2, default=str) + "\n")
    ok = table["num_tasks"] - len(table["missing"]) - len(table["failed"])
    sys.stdout.write(f"{ok}/{table['num_tasks']} tasks ok -> {csv_path}, {json_path}\n")
    if table["missing"]:
        sys.stderr.write(f"missing tasks: {_ranges(table['missing'])}\n")
    if table["failed"]:
        sys.stderr.write(f"failed tasks: {_ranges(table['failed'])}\n")
        for i in table["failed"]:
            row = next(r for r in table["rows"] if r["task"] == i)
            sys.stderr.write(f"  task {i}: {row.get('error')}\n")
    return 1 if table["missing"] or table["failed"] else 0


def _ranges(indices: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2,5"`` (the form ``sbatch --array`` takes, for resubmission)."""
    parts, start = [], None
    for a, b in zip(indices, [*indices[1:], None], strict=True):
        start = a if start is None else start
        if b != a + 1:
            parts.append(f"{start}-{a}" if start != a else str(a))
            start = None
    return ",".join(parts)
