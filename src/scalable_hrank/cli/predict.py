"""hrank predict: the closed-form ranks of H_L, H_O and H_F for a chain of linear layers.

Nothing is computed on a model: the widths, the input rank r and optionally the sample count N
and the residual rank s are given. The formulas and when each is exact are in docs/theory.md
(section "Rank formulas") of the scalable-hrank repository.
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
    """Register the predict subcommand on ``sub``; returns its parser."""
    p = sub.add_parser("predict", help="closed-form ranks of a linear network (no model run)",
                       description=__doc__)
    p.add_argument("--widths", type=_widths, required=True,
                   help="d,M1,...,M_{L-1},K (input, hidden widths, outputs)")
    p.add_argument("--input-rank", type=int, default=None,
                   help="r = rank(X) (default min(N, d), or d without --samples)")
    p.add_argument("--loss", choices=LOSSES, default="mse",
                   help="sets K_f: K outputs, or K - 1 for cross_entropy (default mse)")
    p.add_argument("--bias", action="store_true", help="every layer has a bias")
    p.add_argument("--samples", type=int, default=None, help="N (default unknown, N > d)")
    p.add_argument("--residual-rank", type=int, default=None,
                   help="s = rank(sum_n residual_n x_n^T) (default generic, min(r, K_f))")
    p.add_argument("--json", action="store_true",
                   help='print only {"loss": .., "outer": .., "functional": ..}')
    return p


def run(args: argparse.Namespace) -> int:
    """Print the predicted ranks; returns exit code 0 (bad values raise InputError: exit 2)."""
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
