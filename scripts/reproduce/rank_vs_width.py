"""Rank vs width (docs/reproduction.md): hidden [w, w], N = 100, d = 64 Gaussian, K = 10, MSE.

rank(H_L) = q (r + K + 4 w - 3 q) grows linearly in w while p = w (d + w + K) grows like w^2,
so rank/p falls like 1/w; for w <= q (= 10 here, r = d) the Hessian has full rank.
"""

from __future__ import annotations

import time

import common

from scalable_hrank.data.digits import gaussian
from scalable_hrank.models.mlp import mlp
from scalable_hrank.plots import legend_below, plot_sweep, pyplot, save_figure
from scalable_hrank.theory import predict_rank

NAME = "rank_vs_width"


def main(argv: list[str] | None = None) -> int:
    p = common.parser(NAME, __doc__)
    p.add_argument("--max-width", type=int, default=56, help="largest w (default 56)")
    args = p.parse_args(argv)
    out = common.out_dir(args, NAME)
    start = time.perf_counter()
    if args.small:
        d, k, n, widths = 12, 4, 20, [2, 4, 6, 8]
    else:
        d, k, n, widths = 64, 10, 100, list(range(4, args.max_width + 1, 4))
    loss = "mse"
    x, y = common.dataset(args, n, d, k, loss, gaussian(n, d, k, loss=loss, seed=0))
    rows = []
    for w in widths:
        model = mlp([d, w, w, k], seed=0)
        pred = predict_rank(model, loss=loss, data=(x, y))
        row = {"width": w, "d": d, "K": k, "N": n, "r": pred.r, "q": pred.q}
        row.update(common.measure(model, loss, (x, y), pred))
        row["rank_loss/p"] = round(row["rank_loss"] / row["p"], 4)
        row["full_rank"] = row["rank_loss"] == row["p"]
        rows.append(row)
        print(f"  w={w:3d} p={row['p']:5d} rank H_L={row['rank_loss']:5d} "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
    csv_path = common.write_csv(rows, out / f"{NAME}.csv")
    fig, axes = pyplot().subplots(1, 2, figsize=(12, 5), layout="constrained")
    plot_sweep(rows, x="width", ax=axes[0], title=f"ranks, hidden [w, w], d={d}, N={n}, K={k}")
    plot_sweep(rows, x="width", kinds=("loss",), normalize="p", ax=axes[1],
               title="rank(H_L) / p  (~ 1/w)")
    ws = [r["width"] for r in rows]
    big = rows[-1]
    c = big["rank_loss"] / big["p"] * big["width"]
    axes[1].plot(ws, [min(1.0, c / w) for w in ws], ":", color="0.4", label=f"{c:.1f} / w")
    for ax in axes:
        legend_below(ax, ncol=2)
    png = save_figure(fig, out / f"{NAME}.png")
    return common.report(NAME, rows, [csv_path, png], start)


if __name__ == "__main__":
    raise SystemExit(main())
