"""Rank vs depth (docs/reproduction.md): 1..9 hidden layers of width 25, N = 50, MSE.

Inputs are d = 16 Gaussian (kept small so that the 9-layer net, p = 5650, stays a dense
float64 problem; wall times are in docs/reproduction.md); K = 10, so q = min(r, 25, K) = 10 and
rank/p tends to q (2 m - q) / m^2 = 0.64 as layers are added.
"""

from __future__ import annotations

import time

import common

from scalable_hrank.data.digits import gaussian
from scalable_hrank.models.mlp import mlp
from scalable_hrank.plots import legend_below, plot_sweep, pyplot, save_figure
from scalable_hrank.theory import predict_rank

NAME = "rank_vs_depth"


def main(argv: list[str] | None = None) -> int:
    p = common.parser(NAME, __doc__)
    p.add_argument("--max-depth", type=int, default=9, help="most hidden layers (default 9)")
    args = p.parse_args(argv)
    out = common.out_dir(args, NAME)
    start = time.perf_counter()
    if args.small:
        d, m, k, n, depths = 6, 5, 3, 10, [1, 2, 3, 4]
    else:
        d, m, k, n, depths = 16, 25, 10, 50, list(range(1, args.max_depth + 1))
    loss = "mse"
    x, y = common.dataset(args, n, d, k, loss, gaussian(n, d, k, loss=loss, seed=0))
    rows = []
    for depth in depths:
        model = mlp([d, *[m] * depth, k], seed=0)
        pred = predict_rank(model, loss=loss, data=(x, y))
        row = {"depth": depth, "width": m, "d": d, "K": k, "N": n, "r": pred.r, "q": pred.q}
        row.update(common.measure(model, loss, (x, y), pred))
        row["rank_loss/p"] = round(row["rank_loss"] / row["p"], 4)
        rows.append(row)
        print(f"  depth={depth} p={row['p']:5d} rank H_L={row['rank_loss']:5d} "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
    csv_path = common.write_csv(rows, out / f"{NAME}.csv")
    q = rows[0]["q"]
    limit = q * (2 * m - q) / m**2
    fig, axes = pyplot().subplots(1, 2, figsize=(12, 5), layout="constrained")
    plot_sweep(rows, x="depth", ax=axes[0], title=f"ranks, width {m}, d={d}, N={n}, K={k}")
    plot_sweep(rows, x="depth", kinds=("loss",), normalize="p", ax=axes[1],
               title="rank(H_L) / p")
    axes[1].axhline(limit, ls=":", color="0.4", label=f"q(2m-q)/m^2 = {limit:.2f}")
    for ax in axes:
        legend_below(ax, ncol=2)
    axes[0].set_xlabel("hidden layers")
    axes[1].set_xlabel("hidden layers")
    png = save_figure(fig, out / f"{NAME}.png")
    return common.report(NAME, rows, [csv_path, png], start)


if __name__ == "__main__":
    raise SystemExit(main())
