"""Closed-form Hessian ranks of chains of linear layers: pure integer arithmetic.

The formulas, their conditions and where they come from are stated in
docs/theory.md#rank-formulas; the symbols (d, M_l, K, K_f, r, s, q, q_F, M, L, r~) are
defined there and resolved by :mod:`scalable_hrank.theory.inputs`. Every value is capped at
the number of parameters n. Cost: a few integer operations, nothing touches a model.
"""

from __future__ import annotations

from collections.abc import Sequence

from scalable_hrank.errors import InputError
from scalable_hrank.theory.inputs import (
    check_count,
    num_parameters,
    resolve_augmented_rank,
    resolve_chain,
    resolve_residual_rank,
)

__all__ = [
    "bias_regime",
    "bottleneck",
    "functional_and_loss_ranks",
    "functional_rank",
    "layer_block_rank",
    "loss_rank",
    "outer_rank",
    "rank_deficiency",
]


def _no_augmented_without_bias(augmented_input_rank: int | None) -> None:
    if augmented_input_rank is not None:
        msg = f"augmented_input_rank must be None without biases; got {augmented_input_rank!r}"
        raise InputError(msg)


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
    return resolve_chain(widths, loss, input_rank, num_samples)[3]


def bias_regime(widths: Sequence[int], *, loss: str = "mse", input_rank: int | None = None,
                num_samples: int | None = None) -> tuple[bool, str]:
    """Decide whether the bias formulas for H_F and H_L apply (docs/theory.md#with-biases).

    The regime is N > d, r >= K_f and no interior bottleneck (no hidden layer i <= L - 2 with
    M_i = q while every later hidden width exceeds q). It is sufficient, not necessary.

    Args:
        widths: [d, M_1, ..., M_{L-1}, K].
        loss: "mse", "cross_entropy" or "logcosh".
        input_rank: r; default min(N, d).
        num_samples: N; None means unknown and N > d is assumed.

    Returns:
        (inside, reason): a sentence naming the condition that holds or fails.
    """
    w, r, k_f, q = resolve_chain(widths, loss, input_rank, num_samples)
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
    """Predict the rank of the outer-product (Gauss-Newton) part H_O.

    Without bias: q (r + K_f - q). With bias and r~ = r + 1: q (r + K_f - q) + K_f; with
    r~ = r: min(N K_f, q (r + K_f - q) + K_f - q) (the min is skipped when N is unknown).
    Capped at n. H_O does not depend on the residuals, so this holds at any point where the
    weights are generic.

    Args:
        widths: [d, M_1, ..., M_{L-1}, K].
        loss: "mse", "cross_entropy" or "logcosh".
        input_rank: r = rank(X); default min(N, d).
        bias: Whether every layer has a bias.
        num_samples: N, optional.
        augmented_input_rank: r~ = rank([X, 1]); default r + 1 (r when N <= r).

    Returns:
        rank(H_O).

    Raises:
        InputError: If an argument is out of range.
    """
    w, r, k_f, q = resolve_chain(widths, loss, input_rank, num_samples)
    value = q * (r + k_f - q)
    if bias:
        r_aug = resolve_augmented_rank(augmented_input_rank, r, w[0], num_samples)
        if r_aug == r + 1:
            value += k_f
        else:
            value += k_f - q
            if num_samples is not None:
                value = min(num_samples * k_f, value)
    else:
        _no_augmented_without_bias(augmented_input_rank)
    return min(value, num_parameters(w, bias=bias))


def functional_and_loss_ranks(widths: Sequence[int], *, loss: str = "mse",
                              input_rank: int | None = None, residual_rank: int | None = None,
                              bias: bool = False, num_samples: int | None = None,
                              augmented_input_rank: int | None = None
                              ) -> tuple[int | None, int | None, str]:
    """Return ``(rank H_F, rank H_L, reason)`` for a chain of linear layers.

    Without bias, at residual rank s (q_F = min(s, M_1, ..., M_{L-1})):
    rank H_F = 2 q_F (M + s) - L q_F^2 (0 for L = 1) and
    rank H_L = q (r + K_f - q) + 2 q_F M - (L - 1) q_F^2. With bias, inside
    :func:`bias_regime`, r~ = r + 1 and a generic residual (s = min(r, K_f)):
    rank H_F = 2 q M + 2 q s - L q^2 + (L - 2) q and
    rank H_L = 2 q M + q (r + K_f) - L q^2 + K_f + (L - 1) q. Both capped at n.

    Args: as :func:`loss_rank`.

    Returns:
        The two ranks (both None where no formula is known: biases outside the regime, or
        biases at a non-generic residual rank) and a sentence saying which case applied.

    Raises:
        InputError: If an argument is out of range.
    """
    w, r, k_f, q = resolve_chain(widths, loss, input_rank, num_samples)
    s = resolve_residual_rank(residual_rank, r, k_f)
    hidden = w[1:-1]
    n_layers, m_sum = len(w) - 1, sum(hidden)
    n = num_parameters(w, bias=bias)
    generic = s == min(r, k_f)
    if bias:
        r_aug = resolve_augmented_rank(augmented_input_rank, r, w[0], num_samples)
        inside, why = bias_regime(w, loss=loss, input_rank=r, num_samples=num_samples)
        if not inside:
            return None, None, why
        if r_aug != r + 1:
            return None, None, (f"biases: outside the regime, r~ = r = {r} (inputs affinely "
                                "degenerate)")
        if not generic:
            return None, None, (f"biases: no formula at a non-generic residual rank "
                                f"(s = {s} < min(r, K_f) = {min(r, k_f)})")
        f_val = 0 if n_layers == 1 else (2 * q * m_sum + 2 * q * s - n_layers * q * q
                                         + (n_layers - 2) * q)
        l_val = (2 * q * m_sum + q * (r + k_f) - n_layers * q * q + k_f + (n_layers - 1) * q)
        return min(f_val, n), min(l_val, n), why
    _no_augmented_without_bias(augmented_input_rank)
    q_f = min((s, *hidden))
    f_val = 0 if n_layers == 1 else 2 * q_f * (m_sum + s) - n_layers * q_f * q_f
    l_val = q * (r + k_f - q) + 2 * q_f * m_sum - (n_layers - 1) * q_f * q_f
    why = (f"generic point, s = min(r, K_f) = {s}" if generic
           else f"general point with residual rank s = {s}, q_F = {q_f}")
    return min(f_val, n), min(l_val, n), why


def functional_rank(widths: Sequence[int], *, loss: str = "mse", input_rank: int | None = None,
                    residual_rank: int | None = None, bias: bool = False,
                    num_samples: int | None = None, augmented_input_rank: int | None = None
                    ) -> int | None:
    """Predict the rank of the functional part H_F (formula: :func:`functional_and_loss_ranks`).

    At a generic point without bias this is 2 q M + 2 q s - L q^2; one hidden layer gives
    2 M_1 s.

    Args: as :func:`loss_rank`.

    Returns:
        rank(H_F), or None with biases outside the regime or at a non-generic residual rank.
    """
    return functional_and_loss_ranks(
        widths, loss=loss, input_rank=input_rank, residual_rank=residual_rank, bias=bias,
        num_samples=num_samples, augmented_input_rank=augmented_input_rank)[0]


def loss_rank(widths: Sequence[int], *, loss: str = "mse", input_rank: int | None = None,
              residual_rank: int | None = None, bias: bool = False,
              num_samples: int | None = None, augmented_input_rank: int | None = None
              ) -> int | None:
    """Predict the rank of the loss Hessian H_L = H_O + H_F.

    At a generic point without bias this is q (r + K_f + 2 M - L q); the general-point and
    bias forms are in :func:`functional_and_loss_ranks`.

    Args:
        widths: [d, M_1, ..., M_{L-1}, K].
        loss: "mse", "cross_entropy" or "logcosh".
        input_rank: r = rank(X); default min(N, d).
        residual_rank: s = rank of the K x d residual-input matrix; default min(r, K_f)
            (generic point). s = 0 is a zero-residual minimum, where rank H_L = rank H_O.
        bias: Whether every layer has a bias.
        num_samples: N, optional (used by the bias regime).
        augmented_input_rank: r~ = rank([X, 1]) (bias only); the bias formula needs
            r~ = r + 1.

    Returns:
        rank(H_L), or None with biases outside the regime or at a non-generic residual rank.
    """
    return functional_and_loss_ranks(
        widths, loss=loss, input_rank=input_rank, residual_rank=residual_rank, bias=bias,
        num_samples=num_samples, augmented_input_rank=augmented_input_rank)[1]


def rank_deficiency(widths: Sequence[int], *, loss: str = "mse", input_rank: int | None = None,
                    residual_rank: int | None = None, bias: bool = False,
                    num_samples: int | None = None) -> int | None:
    """Count the flat directions n - rank(H_L).

    For mse without bias at a generic point this equals
    q (d - r) + sum_{i=1..L} (M_{i-1} - q)(M_i - q) (M_0 = d, M_L = K).

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
    """Predict the rank of the diagonal block (layer, layer) of H_L, no bias.

    H_F vanishes on diagonal blocks (the outputs are linear in each single weight matrix),
    so the block equals that of H_O, the Kronecker product sum_n (B^T Q_n B) (x) (a_n a_n^T)
    with a_n = W_{l-1} ... W_1 x_n and B = W_L ... W_{l+1}. At a generic point its rank is
    min(r, M_1, ..., M_{l-1}) * min(M_l, ..., M_{L-1}, K_f).

    Args:
        widths: [d, M_1, ..., M_{L-1}, K].
        layer: l in 1..L (1 = the first linear layer).
        loss: "mse", "cross_entropy" or "logcosh".
        input_rank: r; default min(N, d).
        num_samples: N, optional.

    Returns:
        The rank of the (M_l M_{l-1}) x (M_l M_{l-1}) block.

    Raises:
        InputError: If ``layer`` is not in [1, L].
    """
    w, r, k_f, _ = resolve_chain(widths, loss, input_rank, num_samples)
    layer = check_count("layer", layer, 1, len(w) - 1)
    left = min((r, *w[1:layer]))
    right = min((*w[layer:-1], k_f))
    return left * right
