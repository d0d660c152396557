"""Per-batch product factories for the three curvature matrices, built on torch.func.

Each factory takes the parameters ``theta`` (a tuple of tensors, one per parameter), a
forward function ``forward(theta) -> outputs`` for one batch, the loss, the targets and the
batch weight ``w = N_b / N``, and returns ``matvec(v) -> H_b v`` on tuples shaped like
``theta``: per-parameter results, so that no product assembles a P-vector of its own (the
caller sums the batches into one flat buffer).

Caching: the returned closures hold the graph of the batch (forward + first backward), so
repeated products cost one reverse sweep through that graph each (reverse-over-reverse)
instead of a forward and two backward sweeps with ``cache=False``; their cost against a
gradient is measured in docs/benchmarks.md. Memory per batch: the activations plus the first
backward's intermediates.

Which factory serves which kind is the kind's spec (operators/kinds.py).

Forwards: the caller's ``forward`` returns the output tensor and runs attention on a
twice-differentiable kernel (``operators.outputs``); a kernel without a double derivative is
refused with an InputError naming it, at build or product time.

Blocks: the caller maps the columns of a block (a loop or one ``torch.func.vmap``, chosen in
curvature.py). The closures run with autograd recording off, so a product builds no graph of
its own (``torch.func``'s vjp would otherwise record one that nobody differentiates).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from scalable_hrank.operators.losses import (
    LossFn,
    output_hessian_factor,
    output_hessian_matmul,
    residual,
)
from scalable_hrank.operators.outputs import refuse_single_derivative_kernels

Params = tuple[Tensor, ...]
Forward = Callable[[Params], Tensor]
MatVec = Callable[[Params], Params]


def _without_graph(mv: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``mv`` run with autograd recording off; a kernel without a double derivative refused."""
    def matvec(v: Any) -> Any:
        with torch.no_grad(), refuse_single_derivative_kernels():
            return mv(v)

    return matvec


def _refusing(factory: Callable[..., Any]) -> Callable[..., Any]:
    """``factory`` with autograd's "no double derivative" errors raised as InputError."""
    @functools.wraps(factory)
    def build(*args: Any, **kwargs: Any) -> Any:
        with refuse_single_derivative_kernels():
            return factory(*args, **kwargs)

    return build


@_refusing
def loss_hessian_matvec(theta: Params, forward: Forward, loss_fn: LossFn, targets: Tensor,
                        weight: float) -> tuple[MatVec, Tensor]:
    """V -> w H_b v with H_b the Hessian of the batch's mean loss; also returns the loss.

    Cost: one forward + backward to build; each product one reverse-over-reverse sweep.
    """
    def batch_loss(t: Params) -> tuple[Tensor, Tensor]:
        value = loss_fn(forward(t), targets)
        return value * weight, value.detach()

    grad_fn = torch.func.grad(batch_loss, has_aux=True)
    _, vjp_fn, value = torch.func.vjp(grad_fn, theta, has_aux=True)
    return _without_graph(lambda v: vjp_fn(v)[0]), value


@_refusing
def functional_hessian_matvec(theta: Params, forward: Forward, loss_fn: LossFn,
                              targets: Tensor, weight: float) -> tuple[MatVec, Tensor]:
    """V -> w H_F,b v, the Hessian of <stopgrad(dl/dF), F(theta)>; also returns the loss.

    H_F is computed directly (no difference of two matrices), so it is exactly zero where
    the network is linear in theta. Cost as :func:`loss_hessian_matvec`.
    """
    outputs = forward(theta).detach()
    value = loss_fn(outputs, targets).detach()
    res = residual(loss_fn, outputs, targets) * weight

    def weighted_outputs(t: Params) -> Tensor:
        return (forward(t) * res).sum()

    _, vjp_fn = torch.func.vjp(torch.func.grad(weighted_outputs), theta)
    return _without_graph(lambda v: vjp_fn(v)[0]), value


def _jacobian_maps(theta: Params, forward: Forward,
                   ) -> tuple[Tensor, Callable[[Tensor], Params], Callable[[Params], Tensor]]:
    """The batch's outputs and ``u -> J^T u``, ``v -> J v`` on cached graphs.

    J^T u is the batch's reverse pass, and J v is the reverse pass of ``u -> J^T u``
    (linear in u; the "double-vjp" trick), so no product re-runs the network's forward. For
    a late parameter block of a deep model that is the difference between one partial
    backward and a whole forward with tangents. Memory: the batch's forward graph plus one
    backward's intermediates.
    """
    outputs, vjp_fn = torch.func.vjp(forward, theta)
    outputs = outputs.detach()
    with torch.enable_grad():
        _, jacobian_fn = torch.func.vjp(lambda u: vjp_fn(u)[0], torch.zeros_like(outputs))
    return outputs, (lambda u: vjp_fn(u)[0]), (lambda v: jacobian_fn(v)[0])


@_refusing
def outer_hessian_matvec(theta: Params, forward: Forward, loss_fn: LossFn, targets: Tensor,
                         weight: float) -> tuple[MatVec, Tensor]:
    """V -> w J^T Q J v (Gauss-Newton), Q = d^2 l / dF^2; also returns the loss.

    Both Jacobian products reuse cached graphs (:func:`_jacobian_maps`); Q acts on the small
    output space in closed form. Cost per product: two reverse sweeps through the cached
    graphs.
    """
    outputs, jt, jac = _jacobian_maps(theta, forward)
    value = loss_fn(outputs, targets).detach()
    q_matmul = output_hessian_matmul(loss_fn, outputs, targets)
    return _without_graph(lambda v: jt(q_matmul(jac(v)) * weight)), value


@_refusing
def output_factor_maps(theta: Params, forward: Forward, loss_fn: LossFn, targets: Tensor,
                       weight: float,
                       ) -> tuple[Callable[[Params], Tensor], Callable[[Tensor], Params],
                                  Tensor] | None:
    """The factor ``A_b = sqrt(w) J^T L`` of the batch's ``w J^T Q J = A_b A_b^T``.

    Returns ``(v -> A_b^T v, u -> A_b u, outputs)``: ``A_b^T v`` is shaped like the outputs,
    ``A_b u`` like ``theta``; or None when the loss has no closed-form factor ``L`` of Q
    (a user callable; ``losses.output_hessian_factor``). Cost of each map: one reverse sweep
    through the cached graphs.
    """
    outputs, jt, jac = _jacobian_maps(theta, forward)
    factor = output_hessian_factor(loss_fn, outputs, targets)
    if factor is None:
        return None
    lt, ell = factor
    root = math.sqrt(weight)
    return (_without_graph(lambda v: lt(jac(v)) * root),
            _without_graph(lambda u: jt(ell(u) * root)), outputs)

