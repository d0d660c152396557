"""Losses on network outputs: value, residual dl/dF and products with d^2 l / dF^2.

Every loss here is a mean over the batch (the first axis of the outputs) of a per-sample
loss summed over the remaining axes, so batches combine by sample count. The residual and
the output-space Hessian product come from autograd on the (small) outputs, which serves the
built-in losses and user callables alike.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from scalable_hrank._validation import check_choice

LossFn = Callable[[Tensor, Tensor], Tensor]
LOSSES = ("mse", "cross_entropy", "logcosh")
_LOG2 = math.log(2.0)


def mse(outputs: Tensor, targets: Tensor) -> Tensor:
    """Mean over samples of 1/2 ||F - y||^2 (written out: F.mse_loss breaks jvp(grad))."""
    return 0.5 * (outputs - targets).pow(2).sum() / outputs.shape[0]


def cross_entropy(outputs: Tensor, targets: Tensor) -> Tensor:
    """Mean over samples of softmax cross-entropy on logits (last axis = classes).

    ``targets``: class indices shaped like ``outputs[..., 0]`` (entries -100 are ignored) or
    probabilities shaped like ``outputs``.
    """
    logp = torch.log_softmax(outputs, dim=-1)
    if targets.is_floating_point():
        return -(targets * logp).sum() / outputs.shape[0]
    keep = targets != -100
    safe = torch.where(keep, targets, torch.zeros_like(targets))
    picked = logp.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    return -(picked * keep).sum() / outputs.shape[0]


def logcosh(outputs: Tensor, targets: Tensor) -> Tensor:
    """Mean over samples of sum log cosh(F - y), in an overflow-free form.

    log cosh z = z + softplus(-2 z) - log 2 for every real z; no abs(), whose kink at z = 0
    would zero the second derivative where an output fits its target exactly.
    """
    z = outputs - targets
    return (z + torch.nn.functional.softplus(-2.0 * z) - _LOG2).sum() / outputs.shape[0]


_BUILTIN: dict[str, LossFn] = {"mse": mse, "cross_entropy": cross_entropy, "logcosh": logcosh}


def resolve_loss(loss: str | LossFn) -> tuple[str, LossFn]:
    """Return (name, function) for a loss name or a user callable."""
    if callable(loss):
        return getattr(loss, "__name__", "callable"), loss
    name = check_choice("loss", loss, LOSSES)
    return name, _BUILTIN[name]


def check_targets(name: str, outputs: Tensor, targets: Tensor) -> None:
    """Raise ValueError when ``targets`` cannot go with ``outputs`` under the built-in loss."""
    if name in ("mse", "logcosh"):
        if targets.shape != outputs.shape:
            msg = (f"loss {name!r} needs targets shaped like the outputs {tuple(outputs.shape)}; "
                   f"got {tuple(targets.shape)} (one-hot encode class labels for mse)")
            raise ValueError(msg)
    elif name == "cross_entropy":
        if targets.is_floating_point():
            if targets.shape != outputs.shape:
                msg = (f"cross_entropy with probability targets needs shape "
                       f"{tuple(outputs.shape)}; got {tuple(targets.shape)}")
                raise ValueError(msg)
        else:
            if targets.shape != outputs.shape[:-1]:
                msg = (f"cross_entropy with class indices needs targets of shape "
                       f"{tuple(outputs.shape[:-1])}; got {tuple(targets.shape)}")
                raise ValueError(msg)
            valid = targets[targets != -100]
            if valid.numel() and (valid.min() < 0 or valid.max() >= outputs.shape[-1]):
                msg = (f"cross_entropy class indices must lie in [0, {outputs.shape[-1]}); "
                       f"got values from {int(valid.min())} to {int(valid.max())}")
                raise ValueError(msg)


def residual(loss_fn: LossFn, outputs: Tensor, targets: Tensor) -> Tensor:
    """dl/dF at ``outputs`` (same shape), detached. Includes the 1/batch factor of the mean."""
    out = outputs.detach().requires_grad_(True)
    with torch.enable_grad():
        (g,) = torch.autograd.grad(loss_fn(out, targets), out)
    return g.detach()


def _logcosh_curvature(outputs: Tensor, targets: Tensor, scale: float) -> Tensor:
    """Diagonal of logcosh's output Hessian, ``scale (1 - tanh^2(F - y))``, shaped like F."""
    return (1.0 - torch.tanh(outputs - targets) ** 2) * scale


def _target_mass(outputs: Tensor, targets: Tensor, scale: float) -> Tensor:
    """Per-row weight of cross-entropy's output Hessian, shape (..., 1).

    ``scale`` times the target mass (probability targets), or times 0 / 1 for ignored (-100)
    / counted class indices.
    """
    if targets.is_floating_point():
        return targets.sum(-1, keepdim=True) * scale
    return (targets != -100).unsqueeze(-1).to(outputs.dtype) * scale


def output_hessian_matmul(loss_fn: LossFn, outputs: Tensor,
                          targets: Tensor) -> Callable[[Tensor], Tensor]:
    """Return U -> (d^2 l / dF^2) U for tangents U shaped like ``outputs`` (no batch of columns).

    Closed forms for the built-in losses (the 1/batch factor of the mean included):
    mse I, cross-entropy diag(pi) - pi pi^T per row (times the target mass; ignored rows 0),
    logcosh diag(1 - tanh^2(F - y)). A user callable gets one forward-over-reverse pass
    through the loss alone (no network).
    """
    out = outputs.detach()
    scale = 1.0 / out.shape[0]
    if loss_fn is mse:
        return lambda u: u * scale
    if loss_fn is logcosh:
        curv = _logcosh_curvature(out, targets, scale)
        return lambda u: u * curv
    if loss_fn is cross_entropy:
        pi = torch.softmax(out, dim=-1)
        mass = _target_mass(out, targets, scale)
        return lambda u: mass * pi * (u - (pi * u).sum(-1, keepdim=True))

    def grad_f(f: Tensor) -> Tensor:
        return torch.func.grad(loss_fn)(f, targets)

    def apply(u: Tensor) -> Tensor:
        return torch.func.jvp(grad_f, (out,), (u,))[1]

    return apply


OutputMap = Callable[[Tensor], Tensor]


def has_output_factor(loss_fn: LossFn) -> bool:
    """Whether :func:`output_hessian_factor` has a closed form for ``loss_fn``."""
    return loss_fn in (mse, logcosh, cross_entropy)


def output_hessian_factor(loss_fn: LossFn, outputs: Tensor,
                          targets: Tensor) -> tuple[OutputMap, OutputMap] | None:
    """A factor ``L`` with ``L L^T = d^2 l / dF^2`` per row, as ``(u -> L^T u, w -> L w)``.

    Both maps act on tensors shaped like ``outputs`` (one row per sample, O(C) work per
    row). Closed forms: mse ``L = I / sqrt(B)``; logcosh ``L = diag(sqrt(1 - tanh^2))``
    (times ``1/sqrt(B)``); cross-entropy ``L = sqrt(mass) diag(s) (I - s s^T)`` with
    ``s = sqrt(softmax(F))``, which squares to ``mass (diag(pi) - pi pi^T)`` since ``s`` is a
    unit vector. None for a user callable (no closed form).
    """
    out = outputs.detach()
    scale = 1.0 / out.shape[0]
    if loss_fn is mse:
        root = math.sqrt(scale)
        return (lambda u: u * root), (lambda w: w * root)
    if loss_fn is logcosh:
        root = _logcosh_curvature(out, targets, scale).sqrt()
        return (lambda u: u * root), (lambda w: w * root)
    if loss_fn is cross_entropy:
        pi = torch.softmax(out, dim=-1)
        s, root = pi.sqrt(), _target_mass(out, targets, scale).sqrt()

        def lt(u: Tensor) -> Tensor:
            return root * (s * u - s * (pi * u).sum(-1, keepdim=True))

        def ell(w: Tensor) -> Tensor:
            return root * s * (w - s * (s * w).sum(-1, keepdim=True))

        return lt, ell
    return None
