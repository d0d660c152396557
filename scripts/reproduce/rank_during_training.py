"""Rank during training (docs/reproduction.md): linear and tanh nets on digits, float64.

Full-batch SGD with momentum on the MSE loss (one-hot targets) drives the residuals to zero
(N <= d: a linear net can interpolate). At log-spaced epochs we record the exact dense ranks
of H_L, H_O, H_F and the general-point formula with the current residual rank
s = rank(Omega), Omega = sum_n residual_n x_n^T (K x d), counted as

    s = #{ sigma_i(Omega) > rho * ||X||_2^2 },   rho = P * eps(float64)

(the Hessian's own relative tolerance: H_F scales with Omega, H_L with X^T X). Columns
s@1e-09 and s@1e-06 give s at looser rho. For the tanh net the formula is only an estimate.
"""

from __future__ import annotations

import time

import common
import torch

from scalable_hrank.data.digits import digits
from scalable_hrank.models.mlp import mlp
from scalable_hrank.plots import legend_below, plot_sweep, pyplot, save_figure
from scalable_hrank.theory import predict_rank

NAME = "rank_during_training"


def residual_ranks(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                   rhos: tuple[float, ...]) -> tuple[list[int], list[float]]:
    """Ranks of Omega = sum_n (F(x_n) - y_n) x_n^T at thresholds rho * ||X||_2^2, and its svals."""
    with torch.no_grad():
        omega = (model(x) - y).T @ x
        sv = torch.linalg.svdvals(omega)
        scale = float(torch.linalg.matrix_norm(x, ord=2)) ** 2
    return [int((sv > rho * scale).sum()) for rho in rhos], (sv / scale).tolist()


def checkpoints(epochs: int, count: int) -> list[int]:
    """0 and ``count`` roughly log-spaced epochs up to ``epochs``."""
    pts = {0, epochs}
    for i in range(1, count):
        pts.add(int(round(epochs ** (i / count))))
    return sorted(pts)


def main(argv: list[str] | None = None) -> int:
    p = common.parser(NAME, __doc__)
    p.add_argument("--epochs", type=int, default=None, help="training epochs (full batch)")
    p.add_argument("--lr", type=float, default=0.05, help="SGD learning rate (momentum 0.9)")
    args = p.parse_args(argv)
    out = common.out_dir(args, NAME)
    start = time.perf_counter()
    if args.small:
        # CI size: the first 4 one-hot columns only (K = 4), so a tiny net can interpolate
        n, widths, epochs, count = 8, [64, 6, 6, 4], args.epochs or 1500, 4
    else:
        n, widths, epochs, count = 20, [64, 12, 12, 10], args.epochs or 40000, 14
    loss = "mse"
    x, y = common.dataset(args, n, 64, 10, loss, digits(n, loss=loss))
    y = y[:, : widths[-1]]
    rows = []
    for act in ("linear", "tanh"):
        model = mlp(widths, activation=act, seed=0)
        opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
        marks = checkpoints(epochs, count)
        for epoch in range(epochs + 1):
            if epoch in marks:
                rho = model_rho(model)
                (s, s9, s6), svals = residual_ranks(model, x, y, (rho, 1e-9, 1e-6))
                pred = predict_rank(model, loss=loss, data=(x, y), residual_rank=s)
                with torch.no_grad():
                    value = 0.5 * float(((model(x) - y) ** 2).sum(1).mean())
                row = {"activation": act, "epoch": epoch, "loss_value": f"{value:.3e}",
                       "s": s, "s@1e-09": s9, "s@1e-06": s6,
                       "omega_smax_rel": f"{svals[0]:.2e}", "r": pred.r, "q": pred.q}
                row.update(common.measure(model, loss, (x, y), pred))
                if epoch > 0:  # s is counted at a threshold: the formula is a bound here
                    for kind in common.KINDS:
                        row[f"pred_{kind}_exact"] = False
                row["formula"] = "exact (generic point)" if epoch == 0 else "upper bound"
                rows.append(row)
                print(f"  {act} epoch {epoch:6d} loss {value:.2e} s={s} ranks "
                      f"{row['rank_loss']}/{row['rank_outer']}/{row['rank_functional']} "
                      f"pred {row['pred_loss']}/{row['pred_outer']}/{row['pred_functional']} "
                      f"({time.perf_counter() - start:.0f} s)", flush=True)
            if epoch == epochs:
                break
            opt.zero_grad()
            value = 0.5 * ((model(x) - y) ** 2).sum(1).mean()
            value.backward()
            opt.step()
    csv_path = common.write_csv(rows, out / f"{NAME}.csv")
    fig, axes = pyplot().subplots(1, 2, figsize=(12, 5), layout="constrained")
    for ax, act in zip(axes, ("linear", "tanh"), strict=True):
        sel = [dict(r, epoch=max(r["epoch"], 0.5)) for r in rows if r["activation"] == act]
        plot_sweep(sel, x="epoch", ax=ax,
                   title=f"{act} {'-'.join(map(str, widths))}, digits N={n}, MSE")
        ax.set_xscale("log")
        ax.set_xlabel("epoch (0 drawn at 0.5)")
        legend_below(ax, ncol=2)
    png = save_figure(fig, out / f"{NAME}.png")
    return common.report(NAME, rows, [csv_path, png], start)


def model_rho(model: torch.nn.Module) -> float:
    """rho = P * eps(float64), the default relative tolerance of the exact Hessian ranks."""
    return sum(p.numel() for p in model.parameters()) * torch.finfo(torch.float64).eps


if __name__ == "__main__":
    raise SystemExit(main())
