"""``hrank plot``: a figure of anything the command line writes.

- A result of ``hrank rank --out`` (one kind or ``--kind all``), or a ``RankResult.to_json``
  file; several files are overlaid, each with its own threshold and gap. ``--type spectrum``
  (the default when eigenvalues are stored), ``curve`` (rank against the threshold) or
  ``density`` (the quadrature density of a ``--method density`` result).
- The table of ``hrank collect`` (``results.csv`` or ``results.json``): a rank map of blocks by
  kinds when the sweep has a block axis (``--type map``), otherwise rank against the sweep's
  axes (``--type axes``, ``--x`` picks the axis), log axes where the data span decades.
- A reproduction sweep (CSV of ``rank_<kind>`` / ``pred_<kind>`` columns): ``--type sweep``.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any

from scalable_hrank._io import check_writable
from scalable_hrank.errors import InputError
from scalable_hrank.result import RankResult

_TYPES = ("auto", "spectrum", "curve", "density", "map", "axes", "sweep")


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``hrank plot``."""
    p = sub.add_parser("plot", help="figures of rank results, collected sweeps and sweeps",
                       description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="FILE",
                   help="result JSON file(s), or one collected table (CSV or JSON)")
    p.add_argument("--out", required=True, help="output PNG")
    p.add_argument("--type", dest="kind", choices=_TYPES, default="auto",
                   help="figure type (default: from the file)")
    p.add_argument("--predicted-index", type=int, action="append", default=None,
                   help="predicted rank to mark (repeat once per result)")
    p.add_argument("--labels", default=None, help="comma-separated legend labels")
    p.add_argument("--x", default=None, help="tables: column on the x axis")
    p.add_argument("--kinds", default=None, help="tables: kinds to draw (default: all)")
    p.add_argument("--normalize", default=None, help="sweep: divide by this column (e.g. p)")
    p.add_argument("--group", default=None, help="sweep: one line set per value of a column")
    p.add_argument("--title", default=None)
    return p


def _results(doc: dict[str, Any], path: Path) -> list[tuple[str, RankResult]]:
    """The results of one JSON document: ``[(label, result), ...]``."""
    if isinstance(doc.get("results"), dict) and doc["results"]:
        return [(f"{path.stem} {kind}", RankResult.from_dict(r))
                for kind, r in doc["results"].items()]
    return [(path.stem, RankResult.from_dict(doc))]


def _load(path: Path) -> tuple[str, Any]:
    """``("results", [(label, RankResult)])``, ``("collected", rows)`` or ``("sweep", rows)``."""
    if not path.is_file():
        msg = f"no such file: {path}"
        raise InputError(msg)
    if path.suffix.lower() == ".csv":
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
        return _table(rows, path)
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        msg = f"{path}: neither CSV nor JSON ({exc})"
        raise InputError(msg) from None
    if isinstance(data, dict) and (("rank" in data and "kind" in data)
                                   or isinstance(data.get("results"), dict)):
        try:
            return "results", _results(data, path)
        except TypeError as exc:
            msg = f"{path}: not a complete rank result ({exc})"
            raise InputError(msg) from None
    if isinstance(data, dict) and isinstance(data.get("rows"), list):
        return _table(data["rows"], path)
    if isinstance(data, list) and data and all(isinstance(r, dict) for r in data):
        return _table(data, path)
    msg = (f"{path}: not a result of hrank rank, nor a table of hrank collect or of a sweep "
           "(rows of objects)")
    raise InputError(msg)


def _table(rows: list[dict[str, Any]], path: Path) -> tuple[str, Any]:
    from scalable_hrank.plots import is_collected

    if not rows:
        msg = f"{path}: the table has no rows (no task finished yet?)"
        raise InputError(msg)
    return ("collected" if is_collected(rows) else "sweep"), rows


def _plot_table(kind: str, what: str, rows: list[dict[str, Any]], args: argparse.Namespace,
                plots: Any) -> Any:
    kinds = [k for k in (args.kinds or "").split(",") if k] or None
    if what == "sweep":
        if kind not in ("auto", "sweep"):
            msg = f"--type {kind} needs result files or a collected table; got a sweep table"
            raise InputError(msg)
        return plots.plot_sweep(rows, x=args.x or next(iter(rows[0])),
                                kinds=kinds or ("loss", "outer", "functional"),
                                normalize=args.normalize, group=args.group, title=args.title)
    if kind == "auto":
        kind = "map" if any(r.get("block") for r in rows) else "axes"
    if kind == "map":
        return plots.plot_rank_map(rows, title=args.title)
    if kind == "axes":
        return plots.plot_collected(rows, x=args.x, kinds=kinds, title=args.title)
    msg = f"--type {kind} needs result files; a collected table takes --type map or axes"
    raise InputError(msg)


def run(args: argparse.Namespace) -> int:
    """Draw the figure and write it; bad inputs raise InputError (exit code 2)."""
    out = check_writable(Path(args.out), "--out")
    from scalable_hrank import plots

    loaded = [_load(Path(p)) for p in args.inputs]
    whats = {w for w, _ in loaded}
    if len(whats) > 1 or (whats != {"results"} and len(loaded) > 1):
        msg = "give result files (overlaid), or one table; not a mix"
        raise InputError(msg)
    kind = args.kind
    what = next(iter(whats))
    if what != "results":
        fig = _plot_table(kind, what, loaded[0][1], args, plots)
        print(f"wrote {plots.save_figure(fig, out)}")
        return 0
    pairs = [pair for _, part in loaded for pair in part]
    results = [r for _, r in pairs]
    labels = args.labels.split(",") if args.labels else None
    if labels is None and len(loaded) > 1:  # several files: say which result is which
        labels = [f"{label.split()[0]}: {plots.result_label(r)}" for label, r in pairs]
    if labels is not None and len(labels) != len(results):
        msg = f"--labels needs {len(results)} labels (one per result); got {len(labels)}"
        raise InputError(msg)
    if kind in ("map", "axes", "sweep"):
        msg = f"--type {kind} needs a table; got result files"
        raise InputError(msg)
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
            raise InputError(msg)
        fig = plots.plot_result_density(results[0], title=args.title)
    elif kind == "spectrum":
        missing = [label for label, r in pairs if not r.eigenvalues]
        if missing:
            msg = f"--type spectrum: no eigenvalues stored in {missing}; use --type curve"
            raise InputError(msg)
        fig = plots.plot_spectrum(results, labels=labels, predicted_index=pred,
                                  title=args.title)
    else:
        fig = plots.plot_rank_curve(results, predicted=pred, labels=labels, title=args.title)
    print(f"wrote {plots.save_figure(fig, out)}")
    return 0
