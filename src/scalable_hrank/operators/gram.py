"""H_O seen from the outputs: the M x M Gram matrix ``G = A^T A`` of ``H_O = A A^T``.

With ``Q_b = L_b L_b^T`` the loss's output Hessian on batch b (closed form,
``losses.output_hessian_factor``) and weights ``w_b = N_b / N``,
``H_O = sum_b w_b J_b^T Q_b J_b = A A^T`` for ``A = [sqrt(w_b) J_b^T L_b]_b`` (P x M), where M
is the number of scalar outputs over the whole dataset (N x C for N samples of C outputs).
``G = A^T A`` and ``H_O`` have the same non-zero eigenvalues with the same multiplicities,
so ``rank(H_O) = rank(G)`` at every threshold. When ``M < P`` the count is cheaper there:
the null space shrinks from ``P - r`` to ``M - r`` dimensions, and for a small M the dense
G (M products) gives the exact count whatever P is.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import Tensor

from scalable_hrank.operators.curvature import CurvatureOperator, as_block, distributed_run
from scalable_hrank.operators.losses import has_output_factor
from scalable_hrank.operators.products import Params

log = logging.getLogger(__name__)


class OutputGramOperator:
    """Matrix-free ``G = A^T A`` (M x M) over the outputs of an H_O operator's data.

    ``gram @ U`` takes U of shape (M,) or (M, k) in the operator's dtype and device; blocks
    run as one vmap or a column loop, as the H_O operator's do. Each column costs what one
    H_O product costs (``A u`` then ``A^T`` of it: one reverse sweep
    per batch each) and is counted in ``matvecs`` and in the operator's ``matvecs``.
    Memory: one cached graph per batch (as the H_O operator's own) and one P-vector per
    column in flight.

    Args:
        op: A :class:`CurvatureOperator` whose kind has an ``output_factor`` (of the
            built-in kinds, "outer").

    Raises:
        ValueError: ``op``'s kind has no output factor, its loss is a user callable (no
            closed-form factor of Q), or torch.distributed is initialized (the outputs
            would be spread over processes).
    """

    def __init__(self, op: CurvatureOperator) -> None:
        reason = unavailable_reason(op)
        if reason is not None:
            raise ValueError(reason)
        self.op = op
        self.dtype, self.device = op.dtype, op.device
        self._maps = []
        for batch in op.batches:
            maps = op.spec.output_factor(op.space.split(op.theta), op.forward(batch),
                                         op.loss_fn, batch.targets,
                                         batch.size / op.num_samples)
            if maps is None:  # unavailable_reason checks the loss first
                raise ValueError(unavailable_reason(op))
            self._maps.append(maps)
        self._shapes = [outputs.shape for _, _, outputs in self._maps]
        self._sizes = [math.prod(shape) for shape in self._shapes]
        self.size = sum(self._sizes)
        self.shape = (self.size, self.size)
        self.matvecs = 0

    def _apply(self, u: Tensor) -> Tensor:
        """``G u`` for one column u (M,)."""
        pieces = torch.split(u, self._sizes)
        w: Params = ()
        for (_, a_map, _), piece, shape in zip(self._maps, pieces, self._shapes, strict=True):
            part = a_map(piece.reshape(shape))
            w = tuple(a + b for a, b in zip(w, part, strict=True)) if w else part
        return torch.cat([at_map(w).reshape(-1) for at_map, _, _ in self._maps])

    def matmat(self, block: Tensor) -> Tensor:
        """Return ``G @ block`` for block (M,) or (M, k); counts k products."""
        mat, vector = as_block(block, self.size)
        mat = mat.to(device=self.device, dtype=self.dtype)
        out = None
        if not self.op.column_loop():  # the operator's policy: one vmap over the block
            try:
                out = torch.func.vmap(self._apply, in_dims=1, out_dims=1)(mat)
            except (RuntimeError, NotImplementedError) as exc:
                log.info("vmap over output-space columns failed (%s); using a loop", exc)
        if out is None:
            out = torch.stack([self._apply(col) for col in mat.T], dim=1)
        self.matvecs += mat.shape[1]
        self.op.matvecs += mat.shape[1]
        return out.squeeze(1) if vector else out

    __matmul__ = matmat

    def to_dense(self, *, block_size: int = 64) -> Tensor:
        """The dense M x M matrix, symmetrized. Cost: M products, M^2 numbers."""
        eye = torch.eye(self.size, dtype=self.dtype, device=self.device)
        dense = torch.cat([self.matmat(eye[:, i:i + block_size])
                           for i in range(0, self.size, block_size)], dim=1)
        return 0.5 * (dense + dense.T)


def unavailable_reason(op: CurvatureOperator) -> str | None:
    """Why ``op`` has no output-space Gram operator, or None when it has one."""
    if op.spec.output_factor is None:
        return (f"the output-space Gram matrix is H_O's (a kind with an output-space factor); "
                f"got an operator of kind {op.kind!r}")
    if not has_output_factor(op.loss_fn):
        return (f"loss {op.loss_name!r} has no closed-form factor of its output Hessian; "
                "the output-space Gram matrix needs mse, cross_entropy or logcosh")
    if distributed_run():
        return "the output-space Gram matrix is not supported under torch.distributed"
    return None
