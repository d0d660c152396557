"""Density (deflated SLQ) rank counts vs the paper's exact formulas on deep linear MLPs.

Synthetic Gaussian data, widths [d, m, m, K], float64. Truth: theory.predict_rank (exact for
linear nets at a generic point; docs/theory.md#rank-formulas). For each n the script reports
estimate, interval, products, seconds and whether SLQ converged; infeasible kinds report the
products they need.

    python scripts/bench/density_accuracy.py --widths 68,280,961 --kinds outer,functional,loss

With ``--planted``, the spectra built to break a density count instead (the test families of
tests/linalg/density_cases.py at larger n: a shelf at 1.5-5 tau under a large gap, a
log-uniform slope through tau, indefinite mass just above tau, a clean gap), each over
``--seeds`` seeds with the default budget: coverage, half-width, products and seconds.

    python scripts/bench/density_accuracy.py --planted --seeds 20
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

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
    ap.add_argument("--planted", action="store_true", help="the planted families instead")
    ap.add_argument("--seeds", type=int, default=20, help="seeds per planted family")
    ap.add_argument("--rtol", type=float, default=None, help="threshold (default: the rule)")
    ap.add_argument("--out", help="JSON rows")
    args = ap.parse_args(argv)
    if args.planted:
        return planted(args.seeds)
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
                                   max_matvecs=args.max_matvecs, rtol=args.rtol,
                                   density={"num_probes": args.probes,
                                            "output_space": not args.parameter_space,
                                            "bound_from_parts": args.parts_bound})
            secs = time.perf_counter() - start
            truth = pred.rank(kind)
            conv = bool(res.extra["converged"])
            bracketed = "parts_bound" in res.extra and res.rank_high < res.n
            est = res.extra["estimate"] if conv else float(res.extra.get("midpoint", res.rank))
            err = abs(est - truth) / truth if conv or bracketed else float("nan")
            level = f"{res.confidence:.1%}"
            if conv:
                interval = f"[{res.rank_low}, {res.rank_high}] ({level})"
                shown = f"{est:.1f}"
            elif bracketed:
                interval = (f"bounds [{res.rank_low}, {res.rank_high}] ({level}); "
                            f"count needs {res.extra['matvecs_needed']:,} products")
                shown = f"{res.extra['midpoint']:.0f} (midpoint)"
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


class _Planted:
    """A planted spectrum behind the operator interface ``density_rank`` counts on."""

    def __init__(self, case) -> None:
        self.case, self.size, self.kind = case, case.n, "loss"
        self.dtype, self.device, self.matvecs = torch.float64, torch.device("cpu"), 0

    def matmat(self, x: torch.Tensor) -> torch.Tensor:
        return self.case.matmat(x)


def planted(seeds: int) -> int:
    """Coverage and cost of the default density count on the planted families."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.linalg import density_cases as dc

    from scalable_hrank.density import density_rank

    families = {"shelf": dict(n=2000, bulk=300, shelf_size=100),
                "log_slope": dict(n=2000, r=800), "indefinite_edge": dict(n=1000, bulk=200,
                                                                          edge=100),
                "clean_gap": dict(n=2000, r=600)}
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, {seeds} seeds per family")
    print("| family | n | true count | covered | bounds | mean half-width | max half-width "
          "| products (mean) | seconds (mean) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, kw in families.items():
        covered = bounds = 0
        halves, products, secs = [], [], []
        for seed in range(seeds):
            case = dc.FAMILIES[name](seed=seed, **kw)
            start = time.perf_counter()
            res = density_rank(_Planted(case), tau=case.tau, psd=False,
                               generator=torch.Generator().manual_seed(seed))
            secs.append(time.perf_counter() - start)
            truth = case.count()
            covered += res.rank_low <= truth <= res.rank_high
            bounds += res.guarantee == "bound"
            halves.append((res.rank_high - res.rank_low) / 2 / truth)
            products.append(res.matvecs)
        print(f"| {name} | {case.n:,} | {truth} | {covered}/{seeds} | {bounds} | "
              f"{sum(halves) / seeds:.1%} | {max(halves):.1%} | "
              f"{sum(products) / seeds:,.0f} | {sum(secs) / seeds:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
