"""Per-batch product factories for the three curvature matrices, built on torch.func.

Each factory takes the flat parameters ``theta`` (P,), a forward function
``forward(theta) -> outputs`` for one batch, the loss, the targets and the batch weight
``w = N_b / N``, and returns ``matvec(v: (P,)) -> (P,)``. Columns of a block are mapped with
``torch.func.vmap`` by the caller.

Caching: the returned closures hold the graph of the batch (forward + first backward), so
repeated products cost reverse sweeps through that graph (reverse-over-reverse), about 1.5x a
gradient, instead of re-running forward and backward (2.9x). Memory per batch: the
activations plus the first backward's intermediates.

Blocks: every closure goes through :class:`_Blockwise`, an autograd.Function with its own
vmap rule, so the caller's ``vmap`` over the columns of a block is executed in chunks of
:data:`BLOCK_CHUNK` columns (by device type): one column at a time on CPUs, where one vmap
over a block was no faster per product than a loop (1.3x vs 1.2x of a single product on the
benchmark MLP) and holds k copies of every intermediate, while single products skip vmap's
batching layer (docs/benchmarks.md); and the whole
block in one vmap on GPUs (0.03x per product at k = 32 on an H200). The closures run with
autograd recording off, so a product builds no graph of its own.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from scalable_hrank.operators.losses import LossFn, output_hessian_matmul, residual

Forward = Callable[[Tensor], Tensor]
MatVec = Callable[[Tensor], Tensor]

#: Columns per vmap call when a block is mapped over a product closure, by device type;
#: 1 = a plain loop over the columns, None = the whole block in one vmap. Other device types
#: use the "default" entry. The CPU entry applies from ``CPU_LOOP_MIN_SIZE`` parameters on:
#: below it one vmap over the block is 2-10x cheaper per product (call overhead dominates).
BLOCK_CHUNK: dict[str, int | None] = {"cpu": 1, "default": None}
CPU_LOOP_MIN_SIZE = 2**17


class _Blockwise(torch.autograd.Function):
    """``mv(v)`` as a function whose vmap rule maps the columns in chunks (see module doc)."""

    generate_vmap_rule = False

    @staticmethod
    def forward(v: Tensor, mv: MatVec, chunk: int | None) -> Tensor:  # type: ignore[override]
        return mv(v)

    @staticmethod
    def setup_context(ctx: object, inputs: object, output: object) -> None:
        pass

    @staticmethod
    def vmap(info: object, in_dims: tuple[int | None, ...], v: Tensor, mv: MatVec,
             chunk: int | None) -> tuple[Tensor, int]:
        if in_dims[0] is None:  # the same vector for every column
            return mv(v), None  # type: ignore[return-value]
        cols = v.movedim(in_dims[0], 0).contiguous()  # unit-stride columns
        k = cols.shape[0]
        if chunk == 1:
            return torch.stack([mv(c) for c in cols]), 0
        if chunk is None or chunk >= k:
            return torch.func.vmap(mv)(cols), 0
        return torch.cat([torch.func.vmap(mv)(cols[i:i + chunk])
                          for i in range(0, k, chunk)]), 0


def _blockwise(mv: MatVec, theta: Tensor) -> MatVec:
    """Wrap a single-vector product so that vmapped blocks run in device-sized chunks."""
    device = theta.device
    chunk = BLOCK_CHUNK.get(device.type, BLOCK_CHUNK.get("default"))
    if device.type == "cpu" and theta.numel() < CPU_LOOP_MIN_SIZE:
        chunk = None

    def matvec(v: Tensor) -> Tensor:
        with torch.no_grad():
            return _Blockwise.apply(v, mv, chunk)

    return matvec


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
    return _blockwise(lambda v: vjp_fn(v)[0], theta), value


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
    return _blockwise(lambda v: vjp_fn(v)[0], theta), value


def outer_hessian_matvec(theta: Tensor, forward: Forward, loss_fn: LossFn, targets: Tensor,
                         weight: float) -> tuple[MatVec, Tensor]:
    """V -> w J^T Q J v (Gauss-Newton), Q = d^2 l / dF^2; also returns the loss.

    Both Jacobian products reuse cached graphs: J^T u is the batch's reverse pass, and J v is
    the reverse pass of ``u -> J^T u`` (linear in u; the "double-vjp" trick), so no product
    re-runs the network's forward. For a late parameter block of a deep model that is the
    difference between one partial backward and a whole forward with tangents. Q acts on
    the small output space in closed form. Cost per product: two reverse sweeps through
    the cached graphs; memory: the batch's forward graph plus one backward's intermediates.
    """
    outputs, vjp_fn = torch.func.vjp(forward, theta)
    outputs = outputs.detach()
    value = loss_fn(outputs, targets).detach()
    q_matmul = output_hessian_matmul(loss_fn, outputs, targets)
    with torch.enable_grad():
        _, jacobian_fn = torch.func.vjp(lambda u: vjp_fn(u)[0], torch.zeros_like(outputs))

    def matvec(v: Tensor) -> Tensor:
        jv = jacobian_fn(v)[0]
        return vjp_fn(q_matmul(jv) * weight)[0]

    return _blockwise(matvec, theta), value


FACTORIES: dict[str, Callable[..., tuple[MatVec, Tensor]]] = {
    "loss": loss_hessian_matvec,
    "outer": outer_hessian_matvec,
    "functional": functional_hessian_matvec,
}
