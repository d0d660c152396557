"""``hrank plot``: figures from result files (RankResult JSON, or a sweep CSV / JSON).

- RankResult JSON (written by ``RankResult.to_json``), one or several: the sorted spectrum
  (``--type spectrum``, the default when eigenvalues are stored), the rank-vs-threshold curve
  (``--type curve``), or the SLQ spectral density of a ``--method density`` result
  (``--type density``, its default).
- A sweep (CSV with a header, a JSON list of row objects, or ``{"rows": [...]}``): measured
  ``rank_<kind>`` against predicted ``pred_<kind>`` over the column ``--x``.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any

from scalable_hrank.result import RankResult

_KINDS = ("loss", "outer", "functional")


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``hrank plot``."""
    p = sub.add_parser("plot", help="figures from RankResult JSON or sweep CSV/JSON files",
                       description=__doc__.replace("``", ""))
    p.add_argument("inputs", nargs="+", metavar="RESULT", help="result file(s)")
    p.add_argument("--out", required=True, help="output PNG")
    p.add_argument("--type", dest="kind",
                   choices=["auto", "spectrum", "curve", "density", "sweep"],
                   default="auto", help="figure type (default: from the file)")
    p.add_argument("--predicted-index", type=int, action="append", default=None,
                   help="predicted rank to mark (repeat once per result)")
    p.add_argument("--labels", default=None, help="comma-separated legend labels")
    p.add_argument("--x", default=None, help="sweep: column on the x axis (default: first)")
    p.add_argument("--kinds", default="loss,outer,functional",
                   help="sweep: kinds to draw (default %(default)s)")
    p.add_argument("--normalize", default=None, help="sweep: divide by this column (e.g. p)")
    p.add_argument("--group", default=None, help="sweep: one line set per value of a column")
    p.add_argument("--title", default=None)
    return p


def _load(path: Path) -> tuple[str, Any]:
    """Return ("result", RankResult) or ("sweep", rows)."""
    if not path.exists():
        msg = f"no such file: {path}"
        raise FileNotFoundError(msg)
    if path.suffix.lower() == ".csv":
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
        return "sweep", rows
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        msg = f"{path}: neither CSV nor JSON ({exc})"
        raise ValueError(msg) from None
    if isinstance(data, dict) and "rank" in data and "kind" in data:
        return "result", RankResult.from_dict(data)
    if isinstance(data, dict) and isinstance(data.get("rows"), list):
        return "sweep", data["rows"]
    if isinstance(data, list) and data and all(isinstance(r, dict) for r in data):
        return "sweep", data
    msg = f"{path}: not a RankResult JSON nor a sweep (rows of objects)"
    raise ValueError(msg)


def run(args: argparse.Namespace) -> int:
    """Draw the figure and write it; bad inputs raise ValueError (exit code 2)."""
    from scalable_hrank import plots

    loaded = [_load(Path(p)) for p in args.inputs]
    types = {t for t, _ in loaded}
    if len(types) > 1:
        msg = "mix of RankResult and sweep files; plot them separately"
        raise ValueError(msg)
    labels = args.labels.split(",") if args.labels else None
    kind = args.kind
    if "sweep" in types:
        if kind not in ("auto", "sweep"):
            msg = f"--type {kind} needs RankResult JSON files; got a sweep"
            raise ValueError(msg)
        rows = [r for _, part in loaded for r in part]
        x = args.x or next(iter(rows[0]))
        kinds = [k for k in args.kinds.split(",") if k]
        fig = plots.plot_sweep(rows, x=x, kinds=kinds, normalize=args.normalize,
                               group=args.group, title=args.title)
    else:
        results = [r for _, r in loaded]
        if labels is not None and len(labels) != len(results):
            msg = f"--labels needs {len(results)} labels; got {len(labels)}"
            raise ValueError(msg)
        if kind == "sweep":
            msg = "--type sweep needs a CSV or a JSON list of rows"
            raise ValueError(msg)
        if kind == "auto":
            if all(r.method == "density" and r.extra.get("nodes") for r in results):
                kind = "density"
            else:
                kind = "spectrum" if all(r.eigenvalues for r in results) else "curve"
        pred = args.predicted_index
        if pred is not None and len(pred) == 1:
            pred = pred * len(results)
        if kind == "density":
            if len(results) != 1:
                msg = "--type density draws one result at a time"
                raise ValueError(msg)
            fig = plots.plot_result_density(results[0], title=args.title)
        elif kind == "spectrum":
            fig = plots.plot_spectrum(results, labels=labels, predicted_index=pred,
                                      title=args.title)
        else:
            fig = plots.plot_rank_curve(results, predicted=pred, title=args.title)
    out = plots.save_figure(fig, args.out)
    print(f"wrote {out}")
    return 0
