"""Rank vs channels of a linear CNN (Singh, Hofmann, Schoelkopf 2023, arXiv 2305.09088).

Conv2d layers without activation or bias on 8x8 digits (N = 100, MSE, one-hot targets):
Conv(1->c, 3x3, pad 1) -> Conv(c->c, 3x3, stride 2, pad 1) -> Conv(c->c, 3x3, stride 2, pad 1)
-> flatten (c x 2 x 2) -> Linear(4c -> 10). p = 18 c^2 + 49 c grows quadratically in c; the
measured exact ranks grow linearly. We fit rank = a c + b (least squares) and report slope,
intercept and the largest residual, and p = alpha c^2 + beta c + gamma. No closed form is
asserted here (the pred_* columns stay empty).
"""

from __future__ import annotations

import time

import common
import numpy as np
import torch
from torch import nn

from scalable_hrank.data.digits import digits
from scalable_hrank.plots import legend_below, plot_sweep, pyplot, save_figure

NAME = "rank_vs_channels_cnn"


def linear_cnn(channels: int, *, classes: int = 10, seed: int = 0) -> nn.Sequential:
    """The bias-free linear CNN above, float64, default (Kaiming-uniform) init from ``seed``."""
    torch.manual_seed(seed)
    c = channels
    return nn.Sequential(
        nn.Conv2d(1, c, 3, padding=1, bias=False),
        nn.Conv2d(c, c, 3, stride=2, padding=1, bias=False),
        nn.Conv2d(c, c, 3, stride=2, padding=1, bias=False),
        nn.Flatten(),
        nn.Linear(4 * c, classes, bias=False),
    ).double()


def main(argv: list[str] | None = None) -> int:
    p = common.parser(NAME, __doc__)
    p.add_argument("--max-channels", type=int, default=8, help="largest c (default 8)")
    args = p.parse_args(argv)
    out = common.out_dir(args, NAME)
    start = time.perf_counter()
    n, chans = (30, [1, 2, 3]) if args.small else (100, list(range(1, args.max_channels + 1)))
    loss = "mse"
    x, y = common.dataset(args, n, 64, 10, loss, digits(n, loss=loss))
    x = x.reshape(n, 1, 8, 8)
    rows = []
    for c in chans:
        model = linear_cnn(c)
        row = {"channels": c, "N": n}
        row.update(common.measure(model, loss, (x, y)))
        row["rank_loss/p"] = round(row["rank_loss"] / row["p"], 4)
        rows.append(row)
        print(f"  c={c} p={row['p']} ranks {row['rank_loss']}/{row['rank_outer']}/"
              f"{row['rank_functional']} ({time.perf_counter() - start:.0f} s)", flush=True)
    cs = np.array(chans, dtype=float)
    fits = {}
    for kind in common.KINDS:
        ranks = np.array([r[f"rank_{kind}"] for r in rows], dtype=float)
        a, b = np.polyfit(cs, ranks, 1)
        fits[kind] = (a, b, float(np.abs(ranks - (a * cs + b)).max()))
    pfit = np.polyfit(cs, [r["p"] for r in rows], 2)
    for r in rows:
        for kind, (a, b, _) in fits.items():
            r[f"fit_{kind}"] = round(a * r["channels"] + b, 2)
    csv_path = common.write_csv(rows, out / f"{NAME}.csv")
    lines = [f"p = {pfit[0]:.2f} c^2 + {pfit[1]:.2f} c + {pfit[2]:.2f}"]
    for kind, (a, b, err) in fits.items():
        lines.append(f"rank({common.KIND_LABELS[kind]}) = {a:.2f} c + {b:.2f} "
                     f"(max |residual| {err:.2f})")
    (out / f"{NAME}_fit.txt").write_text("\n".join(lines) + "\n")
    fig, axes = pyplot().subplots(1, 2, figsize=(12, 4.6), layout="constrained")
    plot_sweep(rows, x="channels", predicted="fit_{kind}", predicted_label="linear fit",
               ax=axes[0], title=f"linear CNN on 8x8 digits, N={n}: exact ranks and p")
    axes[0].plot(chans, [r["p"] for r in rows], "k^-", ms=4, label="p (parameters)")
    legend_below(axes[0], ncol=3)
    ps = np.array([r["p"] for r in rows], dtype=float)
    ranks = np.array([r["rank_loss"] for r in rows], dtype=float)
    axes[1].loglog(ps, ranks, "o-", ms=4, label="rank(H_L)")
    axes[1].loglog(ps, ps, "k--", lw=1, label="rank = p (full rank)")
    axes[1].loglog(ps, ranks[-1] * np.sqrt(ps / ps[-1]), ":", color="0.4",
                   label="slope 1/2 (through the last point)")
    slope = float(np.polyfit(np.log(ps[-3:]), np.log(ranks[-3:]), 1)[0])
    axes[1].set_xlabel("p (parameters)")
    axes[1].set_ylabel("rank(H_L)")
    axes[1].set_title(f"rank(H_L) against p, log-log: local slope {slope:.2f} at the "
                      "largest c")
    legend_below(axes[1], ncol=2)
    png = save_figure(fig, out / f"{NAME}.png")
    print("\n".join("  " + line for line in lines))
    return common.report(NAME, rows, [csv_path, png, out / f"{NAME}_fit.txt"], start)


if __name__ == "__main__":
    raise SystemExit(main())
