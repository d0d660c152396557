"""Helpers shared by the reproduction scripts: parser, exact measurement, CSV, figures.

Every script measures the exact dense float64 ranks of H_L, H_O and H_F
(``scalable_hrank.exact.exact_ranks``, default threshold P * eps * sigma_max(H_L)) and puts
them next to the closed forms (``scalable_hrank.theory``), one CSV row per model.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from scalable_hrank.exact import exact_ranks  # noqa: E402

KINDS = ("loss", "outer", "functional")
#: Relative thresholds (fraction of sigma_max(H_L)) reported besides the default one.
EXTRA_RTOLS = (1e-12, 1e-9, 1e-6)


def parser(name: str, doc: str | None) -> argparse.ArgumentParser:
    """Argument parser with the options every script shares (--small, --out)."""
    p = argparse.ArgumentParser(prog=f"{name}.py", description=doc)
    p.add_argument("--small", action="store_true", help="CI-sized run (a few seconds)")
    p.add_argument("--out", default=None,
                   help=f"output folder (default results/reproduce/{name})")
    p.add_argument("--data", default=None,
                   help="local images instead of the built-in data: MNIST IDX images file, "
                        "CIFAR python batch or .npz (x, y); grayscale, pooled to "
                        "sqrt(d) x sqrt(d), first N images")
    return p


def dataset(args: argparse.Namespace, n: int, d: int, k: int, loss: str,
            default: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The script's built-in data ``default``, or ``--data`` images pooled to d = side^2."""
    if args.data is None:
        return default
    from scalable_hrank.data.images import load_image_file

    side = math.isqrt(d)
    if side * side != d:
        msg = f"--data needs a square input size; this run uses d = {d}"
        raise SystemExit(msg)
    return load_image_file(args.data, n, side=side, loss=loss, num_classes=k)


def out_dir(args: argparse.Namespace, name: str) -> Path:
    """Create and return the output folder."""
    path = Path(args.out) if args.out else Path("results") / "reproduce" / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def rtol_column(kind: str, rtol: float) -> str:
    """Column name of the rank of ``kind`` at a relative threshold, e.g. ``rank_loss@1e-09``."""
    return f"rank_{kind}@{rtol:.0e}"


def measure(model: torch.nn.Module, loss: str, data: Any, prediction: Any = None,
            *, keep: bool = False) -> dict[str, Any]:
    """Exact ranks of the three kinds (plus ranks at EXTRA_RTOLS) and the prediction, as a row.

    Args:
        model: The network.
        loss: Loss name.
        data: (inputs, targets).
        prediction: A RankPrediction (its values go to pred_<kind>, pred_<kind>_exact).
        keep: Also return the RankResults under the key "_results" (not written to CSV).

    Returns:
        Row dict: p, rank_<kind>, rank_<kind>@<rtol>, pred_<kind>, pred_<kind>_exact, gap_<kind>.
    """
    res = exact_ranks(model, loss, data)
    row: dict[str, Any] = {"p": res["loss"].n}
    for kind in KINDS:
        r = res[kind]
        row[f"rank_{kind}"] = r.rank
        mags = [abs(v) for v in r.eigenvalues]
        for rt in EXTRA_RTOLS:
            row[rtol_column(kind, rt)] = sum(1 for m in mags if m > rt * r.scale)
        row[f"gap_{kind}"] = "" if r.gap is None else f"{r.gap[1] / max(r.gap[0], 1e-300):.1e}"
        if prediction is not None:
            value = prediction.rank(kind)
            row[f"pred_{kind}"] = "" if value is None else value
            row[f"pred_{kind}_exact"] = bool(prediction.exact[kind] and value is not None)
    if keep:
        row["_results"] = res
    return row


def write_csv(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Write rows (union of keys, first-seen order; keys starting with _ skipped) to CSV."""
    cols: list[str] = []
    for row in rows:
        cols += [k for k in row if k not in cols and not k.startswith("_")]
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return path


def mismatches(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """Describe every row/kind where an exact formula disagrees with the measured rank."""
    bad = []
    for i, row in enumerate(rows):
        for kind in KINDS:
            if row.get(f"pred_{kind}_exact") in (True, "True") and \
                    int(row[f"pred_{kind}"]) != int(row[f"rank_{kind}"]):
                bad.append(f"row {i} {kind}: measured {row[f'rank_{kind}']}, "
                           f"predicted {row[f'pred_{kind}']}")
    return bad


def report(name: str, rows: Sequence[Mapping[str, Any]], files: Sequence[Path],
           start: float) -> int:
    """Print the outputs, the mismatches of exact formulas and the wall time; return 0."""
    bad = mismatches(rows)
    exact = sum(1 for r in rows for k in KINDS if r.get(f"pred_{k}_exact") in (True, "True"))
    print(f"{name}: {len(rows)} rows, {exact} exact-formula comparisons, {len(bad)} mismatches")
    for line in bad:
        print("  MISMATCH", line)
    for f in files:
        print(f"  wrote {f}")
    print(f"  wall time {time.perf_counter() - start:.1f} s")
    sys.stdout.flush()
    return 0


#: Kind -> symbol used in figure titles.
KIND_LABELS = {"loss": "H_L", "outer": "H_O", "functional": "H_F"}
