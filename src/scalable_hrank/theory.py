"""Closed-form Hessian ranks of deep linear networks.

The formulas are those of Singh, Bachmann and Hofmann, "Analytic Insights into Structure and
Rank of Neural Network Hessian Maps", NeurIPS 2021 (arXiv 2106.16225), restated in
``shared/PAPER.md`` sections 1-3, together with the bias extension checked numerically for this
project (PAPER.md section 3).

Notation: ``widths = [d, M_1, ..., M_{L-1}, K]`` lists the input dimension, the hidden widths and
the number of outputs of a chain of ``L`` linear layers. ``r = rank(X)``, ``K_f = K`` (MSE,
log-cosh) or ``K - 1`` (cross-entropy), ``q = min(r, M_1, ..., M_{L-1}, K_f)`` (the bottleneck),
``M = M_1 + ... + M_{L-1}``, ``s`` the rank of the residual-input matrix ``Omega`` (``min(r, K_f)``
at a generic point). Every function here is pure integer arithmetic; :func:`predict_rank` reads
the widths off an ``nn.Sequential`` and the data statistics off the data.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from scalable_hrank._validation import bad_value, check_choice

__all__ = [
    "ELEMENTWISE_ACTIVATIONS",
    "LOSSES",
    "RankPrediction",
    "bias_regime",
    "bottleneck",
    "functional_rank",
    "layer_block_rank",
    "loss_rank",
    "num_parameters",
    "outer_rank",
    "output_rank",
    "predict_rank",
    "predict_rank_from_widths",
    "rank_deficiency",
]

#: Loss names the formulas know, with their effective output rank K_f.
LOSSES: tuple[str, ...] = ("mse", "cross_entropy", "logcosh")

#: Parameter-free elementwise modules accepted between the linear layers.
ELEMENTWISE_ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.Identity, nn.Tanh, nn.ReLU, nn.LeakyReLU, nn.GELU, nn.Sigmoid, nn.SiLU, nn.Softplus,
    nn.ELU, nn.SELU, nn.CELU, nn.Mish, nn.Hardtanh, nn.ReLU6, nn.Hardswish, nn.Hardsigmoid,
    nn.Softsign, nn.Tanhshrink, nn.LogSigmoid,
)

_KINDS = ("loss", "outer", "functional")


@dataclass(frozen=True)
class RankPrediction:
    """The paper's ranks for one network, with the ingredients and how far to trust them.

    Attributes:
        loss: Predicted rank of H_L (None where no formula applies, see ``reasons``).
        outer: Predicted rank of H_O (the Gauss-Newton part).
        functional: Predicted rank of H_F (None where no formula applies).
        exact: Kind -> True where the formula is exact (linear network, generic point or the
            stated residual rank, and with biases inside the regime of PAPER.md section 3).
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

        """
        check_choice("kind", kind, _KINDS)
        return {"loss": self.loss, "outer": self.outer, "functional": self.functional}[kind]

    @property
    def linear(self) -> bool:
        """True when every activation is the identity."""
        return not self.activations


# ----------------------------------------------------------------------------- validation


def _check_int(name: str, value: Any, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool):
        msg = f"{name} must be an integer; got bool"
        raise TypeError(msg)
    try:
        value = operator.index(value)  # int and numpy integers
    except TypeError:
        msg = f"{name} must be an integer; got {type(value).__name__}"
        raise TypeError(msg) from None
    if value < minimum or (maximum is not None and value > maximum):
        hi = "" if maximum is None else f" and <= {maximum}"
        err = bad_value(name, f"an integer >= {minimum}{hi}", value)
        raise err
    return value


def _check_widths(widths: Sequence[int]) -> tuple[int, ...]:
    if isinstance(widths, (str, bytes)) or not isinstance(widths, Sequence):
        msg = f"widths must be a sequence of integers [d, M_1, ..., K]; got {type(widths).__name__}"
        raise TypeError(msg)
    if len(widths) < 2:
        err = bad_value("widths", "a sequence [d, M_1, ..., M_{L-1}, K] of length >= 2", widths)
        raise err
    return tuple(_check_int(f"widths[{i}]", w, 1) for i, w in enumerate(widths))


def output_rank(num_outputs: int, loss: str = "mse") -> int:
    """Return the effective output rank K_f of the loss's output-space Hessian.

    Args:
        num_outputs: K, the number of network outputs.
        loss: "mse" or "logcosh" (K_f = K), or "cross_entropy" (K_f = K - 1: softmax is
            invariant to adding a constant to every logit).

    Returns:
        K_f.

    Raises:
        ValueError: If ``loss`` is unknown or ``num_outputs < 1``.

    """
    check_choice("loss", loss, LOSSES)
    _check_int("num_outputs", num_outputs, 1)
    return num_outputs - 1 if loss == "cross_entropy" else num_outputs


def num_parameters(widths: Sequence[int], *, bias: bool = False) -> int:
    """Count the parameters n of the linear chain with these widths.

    Args:
        widths: [d, M_1, ..., M_{L-1}, K].
        bias: Whether every layer has a bias.

    Returns:
        sum_l M_{l-1} M_l (+ sum_l M_l with biases).

    """
    w = _check_widths(widths)
    return sum(a * b + (b if bias else 0) for a, b in zip(w[:-1], w[1:], strict=True))


def _resolve(widths: Sequence[int], loss: str, input_rank: int | None,
             num_samples: int | None) -> tuple[tuple[int, ...], int, int, int]:
    """Validate and return (widths, r, K_f, q)."""
    w = _check_widths(widths)
    check_choice("loss", loss, LOSSES)
    if num_samples is not None:
        _check_int("num_samples", num_samples, 1)
    d = w[0]
    if input_rank is None:
        r = d if num_samples is None else min(num_samples, d)
    else:
        hi = d if num_samples is None else min(d, num_samples)
        r = _check_int("input_rank", input_rank, 0, hi)
    k_f = output_rank(w[-1], loss)
    q = min((r, *w[1:-1], k_f))
    return w, r, k_f, q


def _resolve_residual(residual_rank: int | None, r: int, k_f: int) -> int:
    if residual_rank is None:
        return min(r, k_f)
    return _check_int("residual_rank", residual_rank, 0, min(r, k_f))


def _resolve_augmented(augmented_input_rank: int | None, r: int, d: int,
                       num_samples: int | None) -> int:
    if augmented_input_rank is None:
        return r + 1 if num_samples is None or num_samples > r else r
    allowed = {r, r + 1}
    if num_samples is not None:
        allowed = {a for a in allowed if a <= num_samples}
    a = _check_int("augmented_input_rank", augmented_input_rank, 0, d + 1)
    if a not in allowed:
        err = bad_value("augmented_input_rank", f"one of {sorted(allowed)} (r or r + 1)", a)
        raise err
    return a


# ----------------------------------------------------------------------------- formulas


def bottleneck(widths: Sequence[int], *, loss: str = "mse", input_rank: int | None = None,
               num_samples: int | None = None) -> int:
    """Return the bottleneck q = min(r, M_1, ..., M_{L-1}, K_f).

    Args:
        widths: [d, M_1, ..., M_{L-1}, K].
        loss: "mse", "cross_entropy" or "logcosh" (sets K_f).
        input_rank: r = rank(X); default min(N, d) (d when ``num_samples`` is None).
        num_samples: N, optional.

    Returns:
        q.

    """
    return _resolve(widths, loss, input_rank, num_samples)[3]


def bias_regime(widths: Sequence[int], *, loss: str = "mse", input_rank: int | None = None,
                num_samples: int | None = None) -> tuple[bool, str]:
    """Decide whether the bias formulas for H_F and H_L apply (PAPER.md section 3).

    The regime is N > d, r >= K_f and no interior bottleneck (no hidden layer i <= L - 2 with
    M_i = q while every later hidden width exceeds q). It is sufficient, not necessary.

    Args:
        widths: [d, M_1, ..., M_{L-1}, K].
        loss: "mse", "cross_entropy" or "logcosh".
        input_rank: r; default min(N, d).
        num_samples: N; None means unknown and N > d is assumed.

    Returns:
        (inside, reason).

    """
    w, r, k_f, q = _resolve(widths, loss, input_rank, num_samples)
    d, hidden = w[0], w[1:-1]
    if num_samples is not None and num_samples <= d:
        return False, f"biases: outside the regime, N = {num_samples} <= d = {d}"
    if r < k_f:
        return False, f"biases: outside the regime, r = {r} < K_f = {k_f}"
    for i, m in enumerate(hidden[:-1], start=1):
        if m == q and all(later > q for later in hidden[i:]):
            return False, (f"biases: outside the regime, interior bottleneck at hidden layer {i} "
                           f"(M_{i} = q = {q}, later hidden widths {list(hidden[i:])}); biases "
                           "can bypass it, compute the rank instead")
    note = "" if num_samples is not None else " (N unknown, N > d assumed)"
    return True, f"biases: inside the regime N > d, r >= K_f, no interior bottleneck{note}"


def outer_rank(widths: Sequence[int], *, loss: str = "mse", input_rank: int | None = None,
               bias: bool = False, num_samples: int | None = None,
               augmented_input_rank: int | None = None) -> int:
    """Predict the rank of the outer-product Hessian H_O (Gauss-Newton part).

    Without bias: q (r + K_f - q). With bias and r~ = r + 1: q (r + K_f - q) + K_f; with
    r~ = r: min(N K_f, q (r + K_f - q) + K_f - q) (the min is skipped when N is unknown).
    Capped at the number of parameters. Singh, Bachmann, Hofmann 2021 (arXiv 2106.16225),
    Theorem on rank(H_O); bias cases from PAPER.md section 3.

    Args:
        widths: [d, M_1, ..., M_{L-1}, K].
        loss: "mse", "cross_entropy" or "logcosh".
        input_rank: r = rank(X); default min(N, d).
        bias: Whether every layer has a bias.
        num_samples: N, optional.
        augmented_input_rank: r~ = rank([X, 1]); default r + 1 (r when N <= r).

    Returns:
        rank(H_O) at a generic point (any point: H_O does not depend on the residual).

    Raises:
        ValueError: If an argument is out of range.

    """
    w, r, k_f, q = _resolve(widths, loss, input_rank, num_samples)
    value = q * (r + k_f - q)
    if bias:
        r_aug = _resolve_augmented(augmented_input_rank, r, w[0], num_samples)
        if r_aug == r + 1:
            value += k_f
        else:
            value += k_f - q
            if num_samples is not None:
                value = min(num_samples * k_f, value)
    elif augmented_input_rank is not None:
        err = bad_value("augmented_input_rank", "None without biases", augmented_input_rank)
        raise err
    return min(value, num_parameters(w, bias=bias))


def functional_rank(widths: Sequence[int], *, loss: str = "mse", input_rank: int | None = None,
                    residual_rank: int | None = None, bias: bool = False,
                    num_samples: int | None = None, augmented_input_rank: int | None = None
                    ) -> int | None:
    """Predict the rank of the functional Hessian H_F.

    Generic point, no bias: 2 q M + 2 q s - L q^2 (0 for L = 1). At a point with residual rank
    s: 2 q_F (M + s) - L q_F^2 with q_F = min(s, M_1, ..., M_{L-1}). With bias (generic point,
    inside :func:`bias_regime`): 2 q M + 2 q s - L q^2 + (L - 2) q. Capped at the number of
    parameters. Singh, Bachmann, Hofmann 2021 (arXiv 2106.16225).

    Args:
        widths: [d, M_1, ..., M_{L-1}, K].
        loss: "mse", "cross_entropy" or "logcosh".
        input_rank: r = rank(X); default min(N, d).
        residual_rank: s = rank(sum_n residual_n x_n^T); default min(r, K_f) (generic point).
        bias: Whether every layer has a bias.
        num_samples: N, optional (used by the bias regime).
        augmented_input_rank: r~ = rank([X, 1]) (bias only); the formula needs r~ = r + 1.

    Returns:
        rank(H_F), or None with biases outside the regime or at a non-generic residual rank.

    """
    return _functional_and_loss(widths, loss, input_rank, residual_rank, bias, num_samples,
                                augmented_input_rank)[0][0]


def loss_rank(widths: Sequence[int], *, loss: str = "mse", input_rank: int | None = None,
              residual_rank: int | None = None, bias: bool = False,
              num_samples: int | None = None, augmented_input_rank: int | None = None
              ) -> int | None:
    """Predict the rank of the loss Hessian H_L = H_O + H_F.

    Generic point, no bias: q (r + K_f + 2 M - L q). At a point with residual rank s:
    q (r + K_f - q) + 2 q_F M - (L - 1) q_F^2. With bias (inside :func:`bias_regime`):
    2 q M + q (r + K_f) - L q^2 + K_f + (L - 1) q. Capped at the number of parameters.
    Singh, Bachmann, Hofmann 2021 (arXiv 2106.16225).

    Args:
        widths: [d, M_1, ..., M_{L-1}, K].
        loss: "mse", "cross_entropy" or "logcosh".
        input_rank: r = rank(X); default min(N, d).
        residual_rank: s; default min(r, K_f) (generic point).
        bias: Whether every layer has a bias.
        num_samples: N, optional.
        augmented_input_rank: r~ = rank([X, 1]) (bias only); the formula needs r~ = r + 1.

    Returns:
        rank(H_L), or None with biases outside the regime or at a non-generic residual rank.

    """
    return _functional_and_loss(widths, loss, input_rank, residual_rank, bias, num_samples,
                                augmented_input_rank)[0][1]


def _functional_and_loss(widths: Sequence[int], loss: str, input_rank: int | None,
                         residual_rank: int | None, bias: bool, num_samples: int | None,
                         augmented_input_rank: int | None
                         ) -> tuple[tuple[int | None, int | None], str]:
    """Return ((rank H_F, rank H_L), reason) for a linear chain."""
    w, r, k_f, q = _resolve(widths, loss, input_rank, num_samples)
    s = _resolve_residual(residual_rank, r, k_f)
    hidden = w[1:-1]
    n_layers, m_sum = len(w) - 1, sum(hidden)
    n = num_parameters(w, bias=bias)
    generic = s == min(r, k_f)
    if bias:
        r_aug = _resolve_augmented(augmented_input_rank, r, w[0], num_samples)
        inside, why = bias_regime(w, loss=loss, input_rank=r, num_samples=num_samples)
        if not inside:
            return (None, None), why
        if r_aug != r + 1:
            return (None, None), (f"biases: outside the regime, r~ = r = {r} (inputs affinely "
                                  "degenerate)")
        if not generic:
            return (None, None), (f"biases: no formula at a non-generic residual rank "
                                  f"(s = {s} < min(r, K_f) = {min(r, k_f)})")
        f_val = 0 if n_layers == 1 else (2 * q * m_sum + 2 * q * s - n_layers * q * q
                                         + (n_layers - 2) * q)
        l_val = (2 * q * m_sum + q * (r + k_f) - n_layers * q * q + k_f + (n_layers - 1) * q)
        return (min(f_val, n), min(l_val, n)), why
    if augmented_input_rank is not None:
        err = bad_value("augmented_input_rank", "None without biases", augmented_input_rank)
        raise err
    q_f = min((s, *hidden))
    f_val = 0 if n_layers == 1 else 2 * q_f * (m_sum + s) - n_layers * q_f * q_f
    l_val = q * (r + k_f - q) + 2 * q_f * m_sum - (n_layers - 1) * q_f * q_f
    why = (f"generic point, s = min(r, K_f) = {s}" if generic
           else f"general point with residual rank s = {s}, q_F = {q_f}")
    return (min(f_val, n), min(l_val, n)), why


def rank_deficiency(widths: Sequence[int], *, loss: str = "mse", input_rank: int | None = None,
                    residual_rank: int | None = None, bias: bool = False,
                    num_samples: int | None = None) -> int | None:
    """Count the flat directions n - rank(H_L).

    For MSE without bias this equals q (d - r) + sum_{i=1..L} (M_{i-1} - q)(M_i - q)
    (PAPER.md section 2).

    Args:
        widths: [d, M_1, ..., M_{L-1}, K].
        loss: "mse", "cross_entropy" or "logcosh".
        input_rank: r; default min(N, d).
        residual_rank: s; default generic.
        bias: Whether every layer has a bias.
        num_samples: N, optional.

    Returns:
        n - rank(H_L), or None where rank(H_L) has no formula.

    """
    value = loss_rank(widths, loss=loss, input_rank=input_rank, residual_rank=residual_rank,
                      bias=bias, num_samples=num_samples)
    return None if value is None else num_parameters(widths, bias=bias) - value


def layer_block_rank(widths: Sequence[int], layer: int, *, loss: str = "mse",
                     input_rank: int | None = None, num_samples: int | None = None) -> int:
    """Predict the rank of the diagonal block (layer, layer) of H_L (equal to that of H_O), no bias.

    H_F has zero diagonal blocks, so block (l, l) of H_L is sum_n (B^T Q_n B) kron (a_n a_n^T)
    with a_n = W_{l-1} ... W_1 x_n and B = W_L ... W_{l+1}; its rank is
    min(r, M_1, ..., M_{l-1}) * min(M_l, ..., M_{L-1}, K_f) at a generic point.

    Args:
        widths: [d, M_1, ..., M_{L-1}, K].
        layer: l in 1..L (1 = the first linear layer).
        loss: "mse", "cross_entropy" or "logcosh".
        input_rank: r; default min(N, d).
        num_samples: N, optional.

    Returns:
        The rank of the M_l M_{l-1} square block.

    Raises:
        ValueError: If ``layer`` is not in [1, L].

    """
    w, r, k_f, _ = _resolve(widths, loss, input_rank, num_samples)
    n_layers = len(w) - 1
    layer = _check_int("layer", layer, 1, n_layers)
    left = min((r, *w[1:layer]))
    right = min((*w[layer:-1], k_f))
    return left * right


# ----------------------------------------------------------------------------- predictions


def predict_rank_from_widths(widths: Sequence[int], *, loss: str = "mse",
                             input_rank: int | None = None, residual_rank: int | None = None,
                             bias: bool = False, num_samples: int | None = None,
                             augmented_input_rank: int | None = None,
                             activations: Sequence[str] = ()) -> RankPrediction:
    """Predict all three ranks of a chain of linear layers, as a :class:`RankPrediction`.

    Args:
        widths: [d, M_1, ..., M_{L-1}, K].
        loss: "mse", "cross_entropy" or "logcosh".
        input_rank: r = rank(X); default min(N, d) (d when N is unknown).
        residual_rank: s; default min(r, K_f) (generic point).
        bias: Whether every layer has a bias.
        num_samples: N; None means unknown (generic data with N > d is assumed).
        augmented_input_rank: r~ = rank([X, 1]) (bias only); default r + 1, or r when N <= r.
        activations: Names of the non-identity activations; non-empty makes every value an
            estimate (the paper's linear-network formula applied to a non-linear network).

    Returns:
        The prediction with its ingredients.

    Raises:
        ValueError: If an argument is out of range.

    """
    w, r, k_f, q = _resolve(widths, loss, input_rank, num_samples)
    s = _resolve_residual(residual_rank, r, k_f)
    r_aug = _resolve_augmented(augmented_input_rank, r, w[0], num_samples) if bias else None
    h_o = outer_rank(w, loss=loss, input_rank=r, bias=bias, num_samples=num_samples,
                     augmented_input_rank=augmented_input_rank)
    (h_f, h_l), why = _functional_and_loss(w, loss, r, s, bias, num_samples,
                                           augmented_input_rank)
    acts = tuple(activations)
    exact: dict[str, bool] = {}
    reasons: dict[str, str] = {}
    if acts:
        names = ", ".join(sorted(set(acts)))
        est = f"estimate: {names} network (the linear-network formula, not exact)"
        o_why = est
    else:
        est = ""
        o_why = "exact: linear network"
        if bias:
            o_why += f", r~ = {r_aug}"
            if r_aug == r and num_samples is None:
                o_why += " (N unknown: min(N K_f, .) not applied)"
    reasons["outer"] = o_why
    exact["outer"] = not acts
    for kind, value in (("functional", h_f), ("loss", h_l)):
        if value is None:
            exact[kind] = False
            reasons[kind] = f"None: {why}"
        elif acts:
            exact[kind] = False
            reasons[kind] = est
        else:
            exact[kind] = True
            reasons[kind] = f"exact: linear network, {why}"
    hidden = w[1:-1]
    return RankPrediction(
        loss=h_l, outer=h_o, functional=h_f, exact=exact, reasons=reasons, q=q, r=r, s=s,
        K_f=k_f, M=sum(hidden), L=len(w) - 1, n=num_parameters(w, bias=bias), widths=w,
        bias=bias, loss_name=loss, q_F=min((s, *hidden)), augmented_input_rank=r_aug,
        num_samples=num_samples, activations=acts,
    )


def _chain(model: nn.Module) -> tuple[list[nn.Linear], list[str]]:
    """Flatten a (nested) Sequential into its Linear layers and non-identity activation names."""
    supported = ", ".join(c.__name__ for c in ELEMENTWISE_ACTIVATIONS)
    if isinstance(model, nn.Linear):
        return [model], []
    if not isinstance(model, nn.Sequential):
        msg = (f"predict_rank supports an nn.Sequential of nn.Linear layers and elementwise "
               f"activations ({supported}); got {type(model).__name__}")
        raise TypeError(msg)
    linears: list[nn.Linear] = []
    acts: list[str] = []
    for name, child in model.named_children():
        if isinstance(child, nn.Sequential):
            sub_lin, sub_acts = _chain(child)
            linears += sub_lin
            acts += sub_acts
        elif isinstance(child, nn.Linear):
            linears.append(child)
        elif isinstance(child, ELEMENTWISE_ACTIVATIONS) and not any(True for _ in
                                                                  child.parameters()):
            if not isinstance(child, nn.Identity):
                acts.append(type(child).__name__.lower())
        else:
            msg = (f"predict_rank: module {name!r} ({type(child).__name__}) is not supported; "
                   f"expected nn.Linear or a parameter-free elementwise activation "
                   f"({supported})")
            raise TypeError(msg)
    return linears, acts


def _measure(data: Any, d: int) -> tuple[int, int, int]:
    """Return (N, rank(X), rank([X, 1])) of the inputs in ``data``, in float64."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        batches: Iterable[Any] = [data]
    elif isinstance(data, Mapping) or isinstance(data, torch.Tensor):
        msg = f"data must be an (inputs, targets) pair or an iterable of them; got {type(data)}"
        raise TypeError(msg)
    else:
        batches = data
    parts = []
    for batch in batches:
        x = batch[0] if isinstance(batch, (tuple, list)) else None
        if not isinstance(x, torch.Tensor):
            msg = ("data: predict_rank needs tensor inputs in (inputs, targets) batches; got "
                   f"{type(x).__name__ if x is not None else type(batch).__name__}")
            raise TypeError(msg)
        parts.append(x.detach().to("cpu", torch.float64).reshape(x.shape[0], -1))
    if not parts:
        err = bad_value("data", "a non-empty pair or iterable of batches", data)
        raise err
    x = torch.cat(parts)
    if x.shape[1] != d:
        err = bad_value("data", f"inputs with {d} features (the first layer's in_features)",
                        tuple(x.shape))
        raise err
    ones = torch.ones(x.shape[0], 1, dtype=x.dtype)
    r = int(torch.linalg.matrix_rank(x))
    r_aug = int(torch.linalg.matrix_rank(torch.cat([x, ones], dim=1)))
    return x.shape[0], r, r_aug


def predict_rank(model: nn.Module, *, loss: str = "mse", input_rank: int | None = None,
                 data: Any = None, residual_rank: int | None = None,
                 augmented_input_rank: int | None = None) -> RankPrediction:
    """Predict rank(H_L), rank(H_O) and rank(H_F) of a chain of linear layers.

    Uses the closed forms of Singh, Bachmann, Hofmann 2021 ("Analytic Insights into Structure
    and Rank of Neural Network Hessian Maps", arXiv 2106.16225) and the bias extension of
    PAPER.md section 3. Exact for linear networks at a generic point (random init, generic
    data); for non-linear elementwise activations the linear formula is returned as an estimate
    (``exact`` False), as the paper uses it. Cost: one SVD of the N x d inputs when ``data``
    is given, nothing else.

    Args:
        model: An ``nn.Sequential`` (possibly nested) of ``nn.Linear`` layers, all with or all
            without bias, and parameter-free elementwise activations, or one ``nn.Linear``.
        loss: "mse", "cross_entropy" or "logcosh" (K_f = K, K - 1, K).
        input_rank: r = rank(X); overrides the value measured on ``data``. Without both,
            generic inputs with N > d are assumed (r = d).
        data: (inputs, targets) or an iterable of such batches; inputs (N, d) or (N, ...) with
            d features. Gives N, r = rank(X) and r~ = rank([X, 1]) (float64, the default
            tolerance of ``torch.linalg.matrix_rank``).
        residual_rank: s = rank(sum_n residual_n x_n^T) at the current point; default
            min(r, K_f) (generic point). s = 0 is a zero-residual minimum, where
            rank(H_L) = rank(H_O).
        augmented_input_rank: r~ = rank([X, 1]), overrides the measured value (bias only).

    Returns:
        A :class:`RankPrediction`; ``functional``/``loss`` are None with biases outside the
        regime (the reason is in ``reasons``).

    Raises:
        TypeError: If the model holds an unsupported module, or ``data`` has the wrong form.
        ValueError: If layers mix bias and no bias, widths do not chain, a parameter is frozen,
            or an argument is out of range.

    """
    check_choice("loss", loss, LOSSES)
    linears, acts = _chain(model)
    if not linears:
        err = bad_value("model", "a chain with at least one nn.Linear", type(model).__name__)
        raise err
    has_bias = [lin.bias is not None for lin in linears]
    if any(has_bias) and not all(has_bias):
        msg = ("model: predict_rank needs all linear layers with bias or all without; got bias "
               f"pattern {has_bias}")
        raise ValueError(msg)
    widths = [linears[0].in_features]
    for i, lin in enumerate(linears):
        if lin.in_features != widths[-1]:
            msg = (f"model: linear layer {i} has in_features {lin.in_features}, but the "
                   f"previous layer gives {widths[-1]}")
            raise ValueError(msg)
        if any(not p.requires_grad for p in lin.parameters()):
            msg = f"model: linear layer {i} has frozen parameters; the formulas count all"
            raise ValueError(msg)
        widths.append(lin.out_features)
    num_samples = None
    r_aug = augmented_input_rank
    if data is not None:
        num_samples, r_measured, r_aug_measured = _measure(data, widths[0])
        if input_rank is None:
            input_rank = r_measured
        if r_aug is None and all(has_bias):
            # keep the measured affine gap r~ - r when input_rank overrides the measured r
            r_aug = input_rank + min(max(r_aug_measured - r_measured, 0), 1)
    return predict_rank_from_widths(
        widths, loss=loss, input_rank=input_rank, residual_rank=residual_rank,
        bias=all(has_bias), num_samples=num_samples, augmented_input_rank=r_aug,
        activations=acts,
    )
