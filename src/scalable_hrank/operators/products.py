"""Per-batch product factories for the three curvature matrices, built on torch.func.

Each factory takes the flat parameters ``theta`` (P,), a forward function
``forward(theta) -> outputs`` for one batch, the loss, the targets and the batch weight
``w = N_b / N``, and returns ``matvec(v: (P,)) -> (P,)``. Columns of a block are mapped with
``torch.func.vmap`` by the caller.

Caching: the returned closures hold the graph of the batch (forward + first backward for
H_L and H_F, forward for H_O), so repeated products cost one reverse sweep through that
graph (reverse-over-reverse), about 1.5x a gradient, instead of re-running forward and
backward (2.9x). Memory per batch: the activations plus the first backward's intermediates.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from scalable_hrank.operators.losses import LossFn, output_hessian_matmul, residual

Forward = Callable[[Tensor], Tensor]
MatVec = Callable[[Tensor], Tensor]


def loss_hessian_matvec(theta: Tensor, forward: Forward, loss_fn: LossFn, targets: Tensor,
                        weight: float) -> tuple[MatVec, Tensor]:
    """V -> w H_b v with H_b the Hessian of the batch's mean loss; also returns the loss.

    Cost: one forward + backward to build; each product one reverse-over-reverse sweep.
    """
    def batch_loss(t: Tensor) -> tuple[Tensor, Tensor]:
        value = loss_fn(forward(t), targets)
        return value * weight, value.detach()

    grad_fn = torch.func.grad(batch_loss, has_aux=True)
    _, vjp_fn, value = torch.func.vjp(grad_fn, theta, has_aux=True)
    return (lambda v: vjp_fn(v)[0]), value


def functional_hessian_matvec(theta: Tensor, forward: Forward, loss_fn: LossFn,
                              targets: Tensor, weight: float) -> tuple[MatVec, Tensor]:
    """V -> w H_F,b v, the Hessian of <stopgrad(dl/dF), F(theta)>; also returns the loss.

    H_F is computed directly (no difference of two matrices), so it is exactly zero where
    the network is linear in theta. Cost as :func:`loss_hessian_matvec`.
    """
    outputs = forward(theta).detach()
    value = loss_fn(outputs, targets).detach()
    res = residual(loss_fn, outputs, targets) * weight

    def weighted_outputs(t: Tensor) -> Tensor:
        return (forward(t) * res).sum()

    _, vjp_fn = torch.func.vjp(torch.func.grad(weighted_outputs), theta)
    return (lambda v: vjp_fn(v)[0]), value


def outer_hessian_matvec(theta: Tensor, forward: Forward, loss_fn: LossFn, targets: Tensor,
                         weight: float) -> tuple[MatVec, Tensor]:
    """V -> w J^T Q J v (Gauss-Newton), Q = d^2 l / dF^2; also returns the loss.

    J v is a forward-mode product (re-runs the forward with tangents), Q acts on the small
    output space, J^T u reuses the cached reverse graph. Cost per product: about one
    forward (dual) + one backward.
    """
    outputs, vjp_fn = torch.func.vjp(forward, theta)
    outputs = outputs.detach()
    value = loss_fn(outputs, targets).detach()
    q_matmul = output_hessian_matmul(loss_fn, outputs, targets)

    def matvec(v: Tensor) -> Tensor:
        jv = torch.func.jvp(forward, (theta,), (v,))[1]
        return vjp_fn(q_matmul(jv) * weight)[0]

    return matvec, value


FACTORIES: dict[str, Callable[..., tuple[MatVec, Tensor]]] = {
    "loss": loss_hessian_matvec,
    "outer": outer_hessian_matvec,
    "functional": functional_hessian_matvec,
}
