"""Sorted spectra, linear vs tanh vs ReLU (docs/reproduction.md), at initialisation.

The same MLP (digits, MSE, no bias) with three activations. The figure shows the sorted
|eigenvalues| of H_L with the predicted index (the linear formula) and the default threshold;
the CSV gives the ranks at the default threshold and at rtol 1e-12, 1e-9, 1e-6 of
sigma_max(H_L), next to the linear formula (exact for the linear net, an estimate otherwise).
"""

from __future__ import annotations

import time

import common

from scalable_hrank.data.digits import digits
from scalable_hrank.models.mlp import mlp
from scalable_hrank.plots import legend_below, plot_spectrum, pyplot, save_figure
from scalable_hrank.theory import predict_rank

NAME = "spectrum_linear_vs_tanh"
ACTIVATIONS = ("linear", "tanh", "relu")


def main(argv: list[str] | None = None) -> int:
    args = common.parser(NAME, __doc__).parse_args(argv)
    out = common.out_dir(args, NAME)
    start = time.perf_counter()
    configs = ([[64, 4, 4, 10]] if args.small
               else [[64, 12, 12, 10], [64, 20, 10], [64, 8, 8, 8, 10]])
    n = 30 if args.small else 100
    loss = "mse"
    x, y = common.dataset(args, n, 64, 10, loss, digits(n, loss=loss))
    rows, spectra = [], {}
    for widths in configs:
        for act in ACTIVATIONS:
            model = mlp(widths, activation=act, seed=0)
            pred = predict_rank(model, loss=loss, data=(x, y))
            row = {"widths": "-".join(map(str, widths)), "activation": act, "N": n,
                   "r": pred.r, "q": pred.q}
            row.update(common.measure(model, loss, (x, y), pred, keep=True))
            rows.append(row)
            if widths == configs[0]:
                spectra[act] = (row["_results"]["loss"], pred.loss)
    csv_path = common.write_csv(rows, out / f"{NAME}.csv")
    kinds = ("loss", "outer", "functional")
    ncol = len(kinds)
    fig, axes = pyplot().subplots(1, ncol, figsize=(6 * ncol, 6), layout="constrained")
    w0 = "-".join(map(str, configs[0]))
    for ax, kind in zip(axes, kinds, strict=True):
        results = {act: r["_results"][kind] for act, r in
                   zip(ACTIVATIONS, rows[:len(ACTIVATIONS)], strict=True)}
        pred = rows[0][f"pred_{kind}"]
        plot_spectrum(results, predicted_index=pred, ax=ax,
                      title=f"{common.KIND_LABELS[kind]} of the MLP {w0} on digits, N={n}")
        legend_below(ax, ncol=2)
    fig.suptitle("sorted |eigenvalues| by activation; red line: the formula's rank for the "
                 "linear net")
    png = save_figure(fig, out / f"{NAME}.png")
    return common.report(NAME, rows, [csv_path, png], start)


if __name__ == "__main__":
    raise SystemExit(main())
