"""All three predicted ranks of one chain of linear layers, with how far to trust each.

:func:`predict_rank_from_widths` combines the formulas of :mod:`scalable_hrank.theory.formulas`
into a :class:`RankPrediction` that records the ingredients (q, r, s, K_f, ...) and, per
matrix, whether the value is exact, an estimate, or unknown, with the reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from scalable_hrank.errors import InputError
from scalable_hrank.theory.formulas import functional_and_loss_ranks, outer_rank
from scalable_hrank.theory.inputs import (
    num_parameters,
    resolve_augmented_rank,
    resolve_chain,
    resolve_residual_rank,
)

__all__ = ["KINDS", "RankPrediction", "predict_rank_from_widths"]

#: The three curvature matrices, in the package's names.
KINDS = ("loss", "outer", "functional")


@dataclass(frozen=True)
class RankPrediction:
    """The predicted ranks for one network, with the ingredients and how far to trust them.

    Attributes:
        loss: Predicted rank of H_L (None where no formula applies, see ``reasons``).
        outer: Predicted rank of H_O (the Gauss-Newton part).
        functional: Predicted rank of H_F (None where no formula applies).
        exact: Kind -> True where the formula is exact (linear network, generic point or the
            stated residual rank, and with biases inside the regime of
            docs/theory.md#with-biases).
        reasons: Kind -> a sentence saying why the value is exact, an estimate or None.
        q: Bottleneck min(r, M_1, ..., M_{L-1}, K_f).
        r: Input rank rank(X).
        s: Residual rank used (generic: min(r, K_f)).
        K_f: Effective output rank (K, or K - 1 for cross-entropy).
        M: Sum of the hidden widths.
        L: Number of linear layers.
        n: Number of parameters.
        widths: (d, M_1, ..., M_{L-1}, K).
        bias: Whether the linear layers carry biases.
        loss_name: "mse", "cross_entropy" or "logcosh".
        q_F: min(s, M_1, ..., M_{L-1}), the bottleneck of H_F at a general point.
        augmented_input_rank: r~ = rank([X, 1]) used for the bias formulas (None without bias).
        num_samples: N, when known from the data.
        activations: Names of the non-identity activations (empty for a linear network).
    """

    loss: int | None
    outer: int | None
    functional: int | None
    exact: dict[str, bool]
    reasons: dict[str, str]
    q: int
    r: int
    s: int
    K_f: int
    M: int
    L: int
    n: int
    widths: tuple[int, ...]
    bias: bool
    loss_name: str = "mse"
    q_F: int = 0
    augmented_input_rank: int | None = None
    num_samples: int | None = None
    activations: tuple[str, ...] = ()

    def rank(self, kind: str) -> int | None:
        """Return the predicted rank of ``kind`` ("loss", "outer" or "functional").

        Args:
            kind: Which curvature matrix.

        Returns:
            The predicted rank, or None where no formula applies.

        Raises:
            InputError: If ``kind`` is not one of :data:`KINDS`.
        """
        if kind not in KINDS:
            msg = f"kind must be one of {KINDS}; got {kind!r}"
            raise InputError(msg)
        return {"loss": self.loss, "outer": self.outer, "functional": self.functional}[kind]

    @property
    def linear(self) -> bool:
        """True when every activation is the identity."""
        return not self.activations


def _outer_reason(acts: tuple[str, ...], estimate: str, bias: bool, r: int,
                  r_aug: int | None, num_samples: int | None) -> str:
    if acts:
        return estimate
    why = "exact: linear network"
    if bias:
        why += f", r~ = {r_aug}"
        if r_aug == r and num_samples is None:
            why += " (N unknown: min(N K_f, .) not applied)"
    return why


def predict_rank_from_widths(widths: Sequence[int], *, loss: str = "mse",
                             input_rank: int | None = None, residual_rank: int | None = None,
                             bias: bool = False, num_samples: int | None = None,
                             augmented_input_rank: int | None = None,
                             activations: Sequence[str] = ()) -> RankPrediction:
    """Predict all three ranks of a chain of linear layers.

    Args:
        widths: [d, M_1, ..., M_{L-1}, K].
        loss: "mse", "cross_entropy" or "logcosh".
        input_rank: r = rank(X); default min(N, d) (d when N is unknown).
        residual_rank: s; default min(r, K_f) (generic point).
        bias: Whether every layer has a bias.
        num_samples: N; None means unknown (generic data with N > d is assumed).
        augmented_input_rank: r~ = rank([X, 1]) (bias only); default r + 1, or r when N <= r.
        activations: Names of the non-identity activations; non-empty makes every value an
            estimate (the linear-network formula applied to a non-linear network).

    Returns:
        The :class:`RankPrediction` with its ingredients.

    Raises:
        InputError: If an argument is out of range.
    """
    w, r, k_f, q = resolve_chain(widths, loss, input_rank, num_samples)
    s = resolve_residual_rank(residual_rank, r, k_f)
    r_aug = resolve_augmented_rank(augmented_input_rank, r, w[0], num_samples) if bias else None
    h_o = outer_rank(w, loss=loss, input_rank=r, bias=bias, num_samples=num_samples,
                     augmented_input_rank=augmented_input_rank)
    h_f, h_l, why = functional_and_loss_ranks(
        w, loss=loss, input_rank=r, residual_rank=s, bias=bias, num_samples=num_samples,
        augmented_input_rank=augmented_input_rank)
    acts = tuple(activations)
    estimate = ""
    if acts:
        names = ", ".join(sorted(set(acts)))
        estimate = f"estimate: {names} network (the linear-network formula, not exact)"
    exact = {"outer": not acts}
    reasons = {"outer": _outer_reason(acts, estimate, bias, r, r_aug, num_samples)}
    for kind, value in (("functional", h_f), ("loss", h_l)):
        exact[kind] = value is not None and not acts
        if value is None:
            reasons[kind] = f"None: {why}"
        else:
            reasons[kind] = estimate if acts else f"exact: linear network, {why}"
    hidden = w[1:-1]
    return RankPrediction(
        loss=h_l, outer=h_o, functional=h_f, exact=exact, reasons=reasons, q=q, r=r, s=s,
        K_f=k_f, M=sum(hidden), L=len(w) - 1, n=num_parameters(w, bias=bias), widths=w,
        bias=bias, loss_name=loss, q_F=min((s, *hidden)), augmented_input_rank=r_aug,
        num_samples=num_samples, activations=acts,
    )
