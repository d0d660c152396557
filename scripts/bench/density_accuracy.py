"""Density (deflated SLQ) rank counts vs the paper's exact formulas on deep linear MLPs.

Synthetic Gaussian data, widths [d, m, m, K], float64. Truth: theory.predict_rank (exact for
linear nets at a generic point; PAPER.md). For each n the script reports estimate, interval,
products, seconds and whether SLQ converged; infeasible kinds report the products they need.

    python scripts/bench/density_accuracy.py --widths 68,280,961 --kinds outer,functional,loss
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

import scalable_hrank as hr
from scalable_hrank.data.digits import gaussian
from scalable_hrank.models.mlp import mlp


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--widths", default="68,280", help="hidden widths m (n = m^2 + 80 m)")
    ap.add_argument("--kinds", default="outer,functional,loss")
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--classes", type=int, default=16)
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--probes", type=int, default=8)
    ap.add_argument("--max-matvecs", type=int, default=None,
                    help="SLQ budget (default: the package default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--parameter-space", action="store_true",
                    help="count H_O in parameter space too (no output-space Gram matrix)")
    ap.add_argument("--parts-bound", action="store_true",
                    help="infeasible H_L: bound it from above by counting H_O and H_F")
    ap.add_argument("--out", help="JSON rows")
    args = ap.parse_args(argv)
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}")
    print("| n | kind | counted in | true rank | estimate | interval (level) | rel. error "
          "| converged | products | seconds |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for m in (int(w) for w in args.widths.split(",")):
        widths = (args.d, m, m, args.classes)
        model = mlp(widths, seed=args.seed)
        data = gaussian(args.samples, args.d, args.classes, loss="mse", seed=args.seed)
        pred = hr.predict_rank(model, loss="mse", data=data)
        for kind in args.kinds.split(","):
            start = time.perf_counter()
            res = hr.estimate_rank(model, "mse", data, kind, method="density", seed=args.seed,
                                   max_matvecs=args.max_matvecs,
                                   density={"num_probes": args.probes,
                                            "output_space": not args.parameter_space,
                                            "bound_from_parts": args.parts_bound})
            secs = time.perf_counter() - start
            truth = pred.rank(kind)
            conv = bool(res.extra["converged"])
            bracketed = "parts_bound" in res.extra and res.rank_high < res.n
            est = res.extra["estimate"] if conv else float(res.rank)
            err = abs(est - truth) / truth if conv or bracketed else float("nan")
            level = f"{res.confidence:.1%}"
            if conv:
                interval = f"[{res.rank_low}, {res.rank_high}] ({level})"
                shown = f"{est:.1f}"
            elif bracketed:
                interval = (f"bounds [{res.rank_low}, {res.rank_high}] ({level}); "
                            f"count needs {res.extra['matvecs_needed']:,} products")
                shown = f"{res.rank} (midpoint)"
            else:
                interval = (f"rank >= {res.rank_low} ({level}); count needs "
                            f"{res.extra['matvecs_needed']:,} products")
                shown = "-"
            space = res.extra["space"]
            if space != "parameters":
                space = f"{space} (M = {res.extra['counted_size']})"
            print(f"| {res.n:,} | {kind} | {space} | {truth} | {shown} | {interval} | "
                  f"{err:.2%} | {conv} | {res.matvecs:,} | {secs:.0f} |", flush=True)
            rows.append({"n": res.n, "kind": kind, "truth": truth, "estimate": est,
                         "rank_low": res.rank_low, "rank_high": res.rank_high,
                         "converged": conv, "matvecs": res.matvecs, "seconds": secs,
                         "matvecs_needed": res.extra.get("matvecs_needed", res.matvecs),
                         "space": res.extra["space"],
                         "covered": res.rank_low <= truth <= res.rank_high,
                         "parts_bound": res.extra.get("parts_bound")})
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(rows, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
