"""hrank demo: exact, predicted and matrix-free ranks of small MLPs on real digits."""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from scalable_hrank._io import atomic_write_text
from scalable_hrank.data.digits import digits
from scalable_hrank.exact import exact_ranks
from scalable_hrank.models.mlp import describe, mlp
from scalable_hrank.operators import KINDS
from scalable_hrank.rank import estimate_rank
from scalable_hrank.theory import predict_rank

#: (widths, activation, bias, loss) of the demo models; d = 64 pixels, K = 10 classes.
DEMO_MODELS = (
    ((64, 4, 4, 10), "linear", False, "cross_entropy"),
    ((64, 12, 12, 10), "linear", False, "cross_entropy"),
    ((64, 10, 10, 10), "linear", False, "mse"),
    ((64, 8, 8, 10), "linear", True, "mse"),
    ((64, 12, 12, 10), "tanh", False, "cross_entropy"),
)


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``hrank demo``."""
    p = sub.add_parser("demo", help="exact vs predicted vs matrix-free ranks on digits",
                       description=__doc__)
    p.add_argument("--samples", type=int, default=100, help="digits used (default 100)")
    p.add_argument("--out", default="hrank-demo.json", help="JSON output (default %(default)s)")
    p.add_argument("--method", default="sketch", choices=["sketch", "lanczos"],
                   help="matrix-free method for the comparison column")
    return p


def run(args: argparse.Namespace) -> int:
    """Print the table, write the JSON; exit 1 if a certified rank disagrees with exact."""
    rows = []
    print(f"scalable-hrank demo: sklearn digits, N={args.samples}, float64, "
          f"matrix-free method={args.method}")
    header = (f"{'model':<26}{'loss':<7}{'n':>6}  {'kind':<11}{'exact':>6}{'pred':>6} "
              f"{'':<9}{'matfree':>8} {'cert':<5}{'prods':>6}{'time':>7}")
    print(header)
    print("-" * len(header))
    bad = 0
    for widths, act, bias, loss in DEMO_MODELS:
        start = time.perf_counter()
        x, y = digits(args.samples, loss=loss)
        model = mlp(widths, activation=act, bias=bias, seed=0)
        exact = exact_ranks(model, loss, (x, y))
        pred = predict_rank(model, loss=loss, data=(x, y))
        for kind in KINDS:
            est = estimate_rank(model, loss, (x, y), kind, method=args.method, seed=0)
            p = pred.rank(kind)
            how = ("" if p is None else "exact" if pred.exact[kind] else "estimate")
            agree = est.certified and est.rank == exact[kind].rank
            bad += est.certified and not agree
            label = describe(widths, act, bias) if kind == "loss" else ""
            ln = {"cross_entropy": "ce"}.get(loss, loss) if kind == "loss" else ""
            n = str(exact[kind].n) if kind == "loss" else ""
            print(f"{label:<26}{ln:<7}{n:>6}  {kind:<11}{exact[kind].rank:>6}"
                  f"{'-' if p is None else p:>6} {how:<9}{est.rank:>8} "
                  f"{'yes' if est.certified else 'no':<5}{est.matvecs:>6}"
                  f"{est.seconds:>6.1f}s")
            rows.append({
                "model": describe(widths, act, bias), "widths": list(widths),
                "activation": act, "bias": bias, "loss": loss, "n": exact[kind].n,
                "input_rank": pred.r, "kind": kind, "exact_rank": exact[kind].rank,
                "exact_tol": exact[kind].tol, "predicted_rank": p,
                "prediction": how or None, "prediction_reason": pred.reasons[kind],
                "matfree_method": args.method, "matfree_rank": est.rank,
                "certified": est.certified, "matvecs": est.matvecs,
                "matfree_seconds": est.seconds,
            })
        rows[-1]["model_seconds"] = time.perf_counter() - start
    out = {"samples": args.samples, "torch": torch.__version__,
           "machine": platform.platform(), "rows": rows}
    atomic_write_text(Path(args.out), json.dumps(out, indent=2) + "\n")
    print(f"\nr = rank(X) = {rows[0]['input_rank']}; pred = the paper's formula (exact for "
          "linear nets; an estimate for tanh). JSON: " + args.out)
    if bad:
        print(f"{bad} certified matrix-free ranks disagree with the exact ones")
    return 1 if bad else 0
