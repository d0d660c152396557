"""``hrank predict``: the paper's closed-form ranks of H_L, H_O, H_F for a linear chain.

Formulas of Singh, Bachmann, Hofmann 2021 (arXiv 2106.16225) and their bias extension, stated
with their conditions in docs/theory.md#rank-formulas, via
:func:`scalable_hrank.theory.predict_rank_from_widths`. Nothing is
computed on a model: widths, input rank and (optionally) N and the residual rank are given.
"""

from __future__ import annotations

import argparse
import json

from scalable_hrank.theory import LOSSES, predict_rank_from_widths

_KINDS = (("loss", "H_L"), ("outer", "H_O"), ("functional", "H_F"))


def _widths(text: str) -> list[int]:
    try:
        widths = [int(w) for w in text.replace(" ", "").split(",") if w != ""]
    except ValueError:
        msg = f"--widths must be comma-separated integers d,M1,...,K; got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if len(widths) < 2:
        msg = f"--widths needs at least d and K (d,M1,...,K); got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return widths


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``hrank predict``."""
    p = sub.add_parser("predict", help="closed-form ranks of a linear network (no model run)",
                       description=__doc__)
    p.add_argument("--widths", type=_widths, required=True,
                   help="d,M1,...,M_{L-1},K (input, hidden widths, outputs)")
    p.add_argument("--input-rank", type=int, default=None,
                   help="r = rank(X) (default min(N, d), or d without --samples)")
    p.add_argument("--loss", choices=LOSSES, default="mse")
    p.add_argument("--bias", action="store_true", help="every layer has a bias")
    p.add_argument("--samples", type=int, default=None, help="N (default unknown, N > d)")
    p.add_argument("--residual-rank", type=int, default=None,
                   help="s = rank(sum_n residual_n x_n^T) (default generic, min(r, K_f))")
    p.add_argument("--json", action="store_true",
                   help='print only {"loss": .., "outer": .., "functional": ..}')
    return p


def run(args: argparse.Namespace) -> int:
    """Print the predicted ranks; ValueError/TypeError (bad values) become exit code 2."""
    pred = predict_rank_from_widths(
        args.widths, loss=args.loss, input_rank=args.input_rank, bias=args.bias,
        num_samples=args.samples, residual_rank=args.residual_rank)
    if args.json:
        print(json.dumps({"loss": pred.loss, "outer": pred.outer,
                          "functional": pred.functional}))
        return 0
    print(f"widths {list(pred.widths)}, loss {pred.loss_name}, bias {pred.bias}: "
          f"p = {pred.n}, r = {pred.r}, K_f = {pred.K_f}, q = {pred.q}, s = {pred.s}, "
          f"M = {pred.M}, L = {pred.L}")
    for kind, name in _KINDS:
        value = pred.rank(kind)
        how = "none" if value is None else ("exact" if pred.exact[kind] else "estimate")
        shown = "-" if value is None else str(value)
        print(f"  rank({name}) = {shown:>6}  {how:<8} {pred.reasons[kind]}")
    return 0
