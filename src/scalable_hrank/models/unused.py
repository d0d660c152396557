"""Detect parameters that the loss does not depend on (e.g. BERT's pooler for embeddings).

Such parameters contribute exact zero rows and columns to every Hessian kind; keeping them
only inflates n (and memory per vector) without changing any rank. They are found with one
gradient on a sample batch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..operators.losses import resolve_loss
from ..operators.outputs import model_outputs
from .tasks import call_model

__all__ = ["UnusedParameters", "find_unused_parameters", "exclude_unused"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class UnusedParameters:
    """Names of parameters the loss does not depend on at the sample batch.

    Attributes:
        unreached: Not in the autograd graph of the loss (gradient None): the loss does not
            depend on them at all, for any input.
        zero_gradient: In the graph but with an exactly zero loss gradient AND an exactly
            zero gradient of a random linear functional <r, F> of the outputs (so J^T r = 0,
            not merely a stationary point of the loss). Their Hessian rows are zero except
            in contrived cases (a parameter entering only quadratically around 0).
        counts: Number of scalar parameters in each list, ``(unreached, zero_gradient)``.
    """

    unreached: tuple[str, ...]
    zero_gradient: tuple[str, ...]
    counts: tuple[int, int] = (0, 0)

    @property
    def names(self) -> tuple[str, ...]:
        """All excluded names, unreached first."""
        return self.unreached + self.zero_gradient


def find_unused_parameters(model: nn.Module, loss: str | Callable[[Tensor, Tensor], Tensor],
                           batch: tuple[Any, Tensor], *, seed: int = 0) -> UnusedParameters:
    """Find trainable parameters the loss does not reach, with one gradient on ``batch``.

    Cost: one forward, one backward (two when some gradient is exactly zero); memory of one
    training step on the batch.

    Args:
        model: The module (eval mode; not modified).
        loss: A built-in loss name or a callable ``loss(outputs, targets) -> scalar``.
        batch: One ``(inputs, targets)`` pair.
        seed: Seed of the random output functional of the second probe.

    Returns:
        The unreached and zero-gradient parameter names, in ``named_parameters()`` order.
    """
    loss_fn = resolve_loss(loss)[1]
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        return UnusedParameters((), ())
    inputs, targets = batch
    with torch.enable_grad():
        out = model_outputs(call_model(model, inputs))
        value = loss_fn(out, targets)
        grads = torch.autograd.grad(value, [p for _, p in named], allow_unused=True,
                                    retain_graph=True)
        unreached = [n for (n, _), g in zip(named, grads, strict=True) if g is None]
        zero = [(n, p) for (n, p), g in zip(named, grads, strict=True)
                if g is not None and not bool(g.any())]
        zero_names: list[str] = []
        if zero:
            gen = torch.Generator().manual_seed(seed)
            r = torch.randn(out.shape, generator=gen, dtype=out.dtype).to(out.device)
            probe = torch.autograd.grad((out * r).sum(), [p for _, p in zero],
                                        allow_unused=True)
            zero_names = [n for (n, _), g in zip(zero, probe, strict=True)
                          if g is None or not bool(g.any())]
    sizes = dict((n, p.numel()) for n, p in named)
    return UnusedParameters(tuple(unreached), tuple(zero_names),
                            (sum(sizes[n] for n in unreached), sum(sizes[n] for n in zero_names)))


def exclude_unused(model: nn.Module, unused: UnusedParameters) -> None:
    """Freeze (``requires_grad=False``) the unused parameters and log what was left out.

    After this, ``curvature_operator(params=None)`` (all trainable parameters) skips them.

    Args:
        model: The module, modified in place.
        unused: The result of :func:`find_unused_parameters`.
    """
    names = set(unused.names)
    if not names:
        return
    for n, p in model.named_parameters():
        if n in names:
            p.requires_grad_(False)
    if unused.unreached:
        logger.warning("left out %d parameter tensors (%d parameters) the loss does not reach: %s",
                       len(unused.unreached), unused.counts[0], ", ".join(unused.unreached))
    if unused.zero_gradient:
        logger.warning("left out %d parameter tensors (%d parameters) with zero first "
                       "derivative of the outputs at the sample batch: %s",
                       len(unused.zero_gradient), unused.counts[1],
                       ", ".join(unused.zero_gradient))
