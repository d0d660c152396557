"""Reading a network and its data for the rank formulas: widths, activations, r, r~ and N.

:func:`predict_rank` turns an ``nn.Sequential`` of ``nn.Linear`` layers (with elementwise
activations in between) and optional data into the arguments of
:func:`scalable_hrank.theory.prediction.predict_rank_from_widths`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from scalable_hrank.errors import InputError
from scalable_hrank.theory.inputs import check_loss
from scalable_hrank.theory.prediction import RankPrediction, predict_rank_from_widths

__all__ = ["ELEMENTWISE_ACTIVATIONS", "predict_rank"]

#: Parameter-free elementwise modules accepted between the linear layers.
ELEMENTWISE_ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.Identity, nn.Tanh, nn.ReLU, nn.LeakyReLU, nn.GELU, nn.Sigmoid, nn.SiLU, nn.Softplus,
    nn.ELU, nn.SELU, nn.CELU, nn.Mish, nn.Hardtanh, nn.ReLU6, nn.Hardswish, nn.Hardsigmoid,
    nn.Softsign, nn.Tanhshrink, nn.LogSigmoid,
)


def _linear_chain(model: nn.Module) -> tuple[list[nn.Linear], list[str]]:
    """Flatten a (nested) ``nn.Sequential`` into its linear layers and activation names.

    Args:
        model: One ``nn.Linear``, or an ``nn.Sequential`` (possibly nested) of ``nn.Linear``
            layers and parameter-free modules of :data:`ELEMENTWISE_ACTIVATIONS`.

    Returns:
        The linear layers in order, and the lower-case class names of the activations other
        than ``nn.Identity``.

    Raises:
        InputError: If the model or one of its children is of another kind.
    """
    supported = ", ".join(c.__name__ for c in ELEMENTWISE_ACTIVATIONS)
    if isinstance(model, nn.Linear):
        return [model], []
    if not isinstance(model, nn.Sequential):
        msg = (f"predict_rank supports an nn.Sequential of nn.Linear layers and elementwise "
               f"activations ({supported}); got {type(model).__name__}")
        raise InputError(msg)
    linears: list[nn.Linear] = []
    acts: list[str] = []
    for name, child in model.named_children():
        if isinstance(child, nn.Sequential):
            sub_linears, sub_acts = _linear_chain(child)
            linears += sub_linears
            acts += sub_acts
        elif isinstance(child, nn.Linear):
            linears.append(child)
        elif (isinstance(child, ELEMENTWISE_ACTIVATIONS)
              and not any(True for _ in child.parameters())):
            if not isinstance(child, nn.Identity):
                acts.append(type(child).__name__.lower())
        else:
            msg = (f"predict_rank: module {name!r} ({type(child).__name__}) is not supported; "
                   f"expected nn.Linear or a parameter-free elementwise activation "
                   f"({supported})")
            raise InputError(msg)
    return linears, acts


def _input_ranks(data: Any, d: int) -> tuple[int, int, int]:
    """Return (N, rank(X), rank([X, 1])) of the inputs in ``data``.

    Ranks use ``torch.linalg.matrix_rank``'s default threshold on a float64 copy of the
    stacked inputs. Cost: two SVDs of an N x d (and N x (d + 1)) matrix.

    Args:
        data: An (inputs, targets) pair or an iterable of such batches; inputs (N_b, d) or
            (N_b, ...) with d features in all.
        d: The first layer's ``in_features``.

    Raises:
        InputError: If ``data`` has another form, is empty, or has another feature count.
    """
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        batches: Iterable[Any] = [data]
    elif isinstance(data, (Mapping, torch.Tensor)):
        msg = f"data must be an (inputs, targets) pair or an iterable of them; got {type(data)}"
        raise InputError(msg)
    else:
        batches = data
    parts = []
    for batch in batches:
        x = batch[0] if isinstance(batch, (tuple, list)) else None
        if not isinstance(x, torch.Tensor):
            msg = ("data: predict_rank needs tensor inputs in (inputs, targets) batches; got "
                   f"{type(x).__name__ if x is not None else type(batch).__name__}")
            raise InputError(msg)
        parts.append(x.detach().to("cpu", torch.float64).reshape(x.shape[0], -1))
    if not parts:
        msg = f"data must be a non-empty pair or iterable of batches; got {data!r}"
        raise InputError(msg)
    x = torch.cat(parts)
    if x.shape[1] != d:
        msg = (f"data must have inputs with {d} features (the first layer's in_features); "
               f"got shape {tuple(x.shape)}")
        raise InputError(msg)
    ones = torch.ones(x.shape[0], 1, dtype=x.dtype)
    r = int(torch.linalg.matrix_rank(x))
    r_aug = int(torch.linalg.matrix_rank(torch.cat([x, ones], dim=1)))
    return x.shape[0], r, r_aug


def _widths(linears: list[nn.Linear]) -> tuple[list[int], bool]:
    """(d, M_1, ..., K) of the chain and whether its layers carry biases."""
    has_bias = [lin.bias is not None for lin in linears]
    if any(has_bias) and not all(has_bias):
        msg = ("model: predict_rank needs all linear layers with bias or all without; got bias "
               f"pattern {has_bias}")
        raise InputError(msg)
    widths = [linears[0].in_features]
    for i, lin in enumerate(linears):
        if lin.in_features != widths[-1]:
            msg = (f"model: linear layer {i} has in_features {lin.in_features}, but the "
                   f"previous layer gives {widths[-1]}")
            raise InputError(msg)
        if any(not p.requires_grad for p in lin.parameters()):
            msg = f"model: linear layer {i} has frozen parameters; the formulas count all"
            raise InputError(msg)
        widths.append(lin.out_features)
    return widths, all(has_bias)


def predict_rank(model: nn.Module, *, loss: str = "mse", input_rank: int | None = None,
                 data: Any = None, residual_rank: int | None = None,
                 augmented_input_rank: int | None = None) -> RankPrediction:
    """Predict rank(H_L), rank(H_O) and rank(H_F) of a chain of linear layers.

    Exact for linear networks at a generic point (random initialisation, generic data); for
    non-linear elementwise activations the linear formula is returned as an estimate
    (``exact`` False). Formulas and conditions: docs/theory.md#rank-formulas. Cost: two SVDs
    of the N x d inputs when ``data`` is given, no Hessian product.

    Args:
        model: An ``nn.Sequential`` (possibly nested) of ``nn.Linear`` layers, all with or all
            without bias, and parameter-free elementwise activations, or one ``nn.Linear``.
        loss: "mse", "cross_entropy" or "logcosh" (K_f = K, K - 1, K).
        input_rank: r = rank(X); overrides the value measured on ``data``. Without both,
            generic inputs with N > d are assumed (r = d).
        data: (inputs, targets) or an iterable of such batches; inputs (N, d) or (N, ...) with
            d features. Gives N, r = rank(X) and r~ = rank([X, 1]) (float64,
            the default threshold of ``torch.linalg.matrix_rank``).
        residual_rank: s = rank(sum_n residual_n x_n^T) at the current point; default
            min(r, K_f) (generic point). s = 0 is a zero-residual minimum, where
            rank(H_L) = rank(H_O).
        augmented_input_rank: r~ = rank([X, 1]), overrides the measured value (bias only).

    Returns:
        A :class:`RankPrediction`; ``functional``/``loss`` are None with biases outside the
        regime (the reason is in ``reasons``).

    Raises:
        InputError: If the model holds an unsupported module, layers mix bias and no bias,
            widths do not chain, a parameter is frozen, ``data`` has the wrong form, or an
            argument is out of range.
    """
    check_loss(loss)
    linears, acts = _linear_chain(model)
    if not linears:
        msg = f"model must be a chain with at least one nn.Linear; got {type(model).__name__}"
        raise InputError(msg)
    widths, bias = _widths(linears)
    num_samples = None
    r_aug = augmented_input_rank
    if data is not None:
        num_samples, r_measured, r_aug_measured = _input_ranks(data, widths[0])
        if input_rank is None:
            input_rank = r_measured
        if r_aug is None and bias:
            # keep the measured affine gap r~ - r when input_rank overrides the measured r
            r_aug = input_rank + min(max(r_aug_measured - r_measured, 0), 1)
    return predict_rank_from_widths(
        widths, loss=loss, input_rank=input_rank, residual_rank=residual_rank, bias=bias,
        num_samples=num_samples, augmented_input_rank=r_aug, activations=acts,
    )
