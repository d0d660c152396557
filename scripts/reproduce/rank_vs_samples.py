"""Rank vs sample size (docs/reproduction.md): hidden [10, 10], K = 10, d = 64 Gaussian inputs.

H_O and H_L rise with slope q while N < d (r = min(N, d)), then stay flat; H_F is flat (300 for
MSE without bias). Linear network, MSE and cross-entropy, with and without bias.
"""

from __future__ import annotations

import time

import common

from scalable_hrank.data.digits import gaussian
from scalable_hrank.models.mlp import mlp
from scalable_hrank.plots import legend_below, plot_sweep, pyplot, save_figure
from scalable_hrank.theory import predict_rank

NAME = "rank_vs_samples"


def main(argv: list[str] | None = None) -> int:
    args = common.parser(NAME, __doc__).parse_args(argv)
    out = common.out_dir(args, NAME)
    start = time.perf_counter()
    if args.small:
        d, hidden, k, samples = 12, [3, 3], 4, [4, 8, 12, 20]
    else:
        d, hidden, k = 64, [10, 10], 10
        samples = [10, 20, 30, 40, 50, 64, 80, 100, 150, 200, 300, 400]
    rows = []
    for loss in ("mse", "cross_entropy"):
        for bias in (False, True):
            for n in samples:
                x, y = common.dataset(args, n, d, k, loss,
                                      gaussian(n, d, k, loss=loss, seed=0))
                model = mlp([d, *hidden, k], bias=bias, seed=0)
                pred = predict_rank(model, loss=loss, data=(x, y))
                row = {"loss": loss, "bias": bias, "N": n, "d": d,
                       "hidden": "-".join(map(str, hidden)), "K": k, "r": pred.r, "q": pred.q}
                row.update(common.measure(model, loss, (x, y), pred))
                rows.append(row)
    csv_path = common.write_csv(rows, out / f"{NAME}.csv")
    fig, axes = pyplot().subplots(2, 2, figsize=(11, 9), sharex=True, layout="constrained")
    for i, loss in enumerate(("mse", "cross_entropy")):
        for j, bias in enumerate((False, True)):
            sel = [r for r in rows if r["loss"] == loss and r["bias"] == bias]
            plot_sweep(sel, x="N", ax=axes[i, j],
                       title=f"{loss}, {'with' if bias else 'no'} bias, hidden {hidden}, d={d}")
            legend_below(axes[i, j], ncol=3)
    fig.suptitle("Hessian rank against the number of samples N (markers: exact rank; dashed: "
                 "formula)")
    png = save_figure(fig, out / f"{NAME}.png")
    return common.report(NAME, rows, [csv_path, png], start)


if __name__ == "__main__":
    raise SystemExit(main())
