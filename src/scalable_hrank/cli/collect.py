"""hrank collect DIR: gather the per-task records of a sweep into one CSV and JSON table.

Missing tasks (no record) and failed ones are listed on stderr; exit code 1 if there is any,
0 otherwise. The expected task count comes from ``--config`` or ``sweep.json`` (written by
``hrank submit sweep``) in DIR; without either, from the highest task index found.
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

#: Result fields copied into the table.
RESULT_COLUMNS = ("rank", "n", "kind", "method", "tol", "matvecs", "seconds", "certified",
                  "rank_low", "rank_high", "confidence")


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


def collect(folder: Path, num_tasks: int | None = None) -> dict[str, Any]:
    """Read every ``task-*.json`` in ``folder``.

    Returns:
        ``{"rows": [...], "missing": [indices], "failed": [indices], "num_tasks": n}``; one
        row per expected task (missing ones with status "missing").
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
    if num_tasks is None:
        manifest = folder / "sweep.json"
        if manifest.exists():
            num_tasks = int(json.loads(manifest.read_text())["num_tasks"])
        else:
            num_tasks = max(records, default=-1) + 1
    rows, missing, failed = [], [], []
    for i in range(num_tasks):
        rec = records.get(i)
        if rec is None:
            missing.append(i)
            rows.append({"task": i, "status": "missing"})
            continue
        row: dict[str, Any] = {"task": i, "status": rec.get("status", "failed")}
        settings = {k: v for k, v in rec.get("settings", {}).items() if k not in ("task",)}
        row.update(settings)
        result = rec.get("result") or {}
        row.update({f"result_{k}" if k in settings else k: result.get(k)
                    for k in RESULT_COLUMNS})
        row["exact_rank"] = rec.get("exact_rank")
        row["wall_seconds"] = rec.get("seconds")
        row["error"] = rec.get("error")
        if row["status"] != "ok":
            failed.append(i)
        rows.append(row)
    return {"num_tasks": num_tasks, "rows": rows, "missing": missing, "failed": failed}


def _csv(rows: list[dict[str, Any]]) -> str:
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def run(args: argparse.Namespace) -> int:
    """Run ``hrank collect``; return the exit code."""
    if not args.dir.is_dir():
        msg = f"{args.dir} is not a folder"
        raise FileNotFoundError(msg)
    num_tasks = None
    if args.config is not None:
        from scalable_hrank.sweep import load_config

        num_tasks = load_config(args.config).num_tasks
    table = collect(args.dir, num_tasks)
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
        for row in table["rows"]:
            if row["status"] not in ("ok", "missing"):
                sys.stderr.write(f"  task {row['task']}: {row.get('error')}\n")
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
