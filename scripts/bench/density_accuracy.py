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
    ap.add_argument("--out", help="JSON rows")
    args = ap.parse_args(argv)
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}")
    print("| n | kind | counted in | true rank | estimate | interval (95%) | rel. error "
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
                                            "output_space": not args.parameter_space})
            secs = time.perf_counter() - start
            truth = pred.rank(kind)
            conv = bool(res.extra["converged"])
            est = res.extra["estimate"]
            err = abs(est - truth) / truth if conv else float("nan")
            interval = (f"[{res.rank_low}, {res.rank_high}]" if conv
                        else f"infeasible: needs {res.extra['matvecs_needed']} products")
            space = res.extra["space"]
            if space != "parameters":
                space = f"{space} (M = {res.extra['counted_size']})"
            print(f"| {res.n} | {kind} | {space} | {truth} | {est:.1f} | {interval} | "
                  f"{err:.2%} | {conv} | {res.matvecs} | {secs:.0f} |", flush=True)
            rows.append({"n": res.n, "kind": kind, "truth": truth, "estimate": est,
                         "rank_low": res.rank_low, "rank_high": res.rank_high,
                         "converged": conv, "matvecs": res.matvecs, "seconds": secs,
                         "matvecs_needed": res.extra.get("matvecs_needed", res.matvecs),
                         "space": res.extra["space"],
                         "covered": conv and res.rank_low <= truth <= res.rank_high})
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(rows, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
