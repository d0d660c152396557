"""The curvature operator: H_L, H_O or H_F of a model's loss over a whole dataset."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.dropout import _DropoutNd

from scalable_hrank.distributed.env import bind_collectives_before_joining
from scalable_hrank.errors import NonFiniteError
from scalable_hrank.operators.batches import Batch, BatchSource, call_model
from scalable_hrank.operators.kinds import KINDS, KindSpec, kind_spec
from scalable_hrank.operators.losses import LOSSES, LossFn, check_targets, resolve_loss
from scalable_hrank.operators.outputs import differentiable_attention, model_outputs
from scalable_hrank.operators.params import ParameterSpace, parameter_space
from scalable_hrank.operators.products import MatVec, Params

log = logging.getLogger(__name__)

#: Blocks run one column at a time from this many parameters on, by device type (others:
#: one vmap over the whole block). A vmapped block holds k copies of every intermediate; below
#: the threshold it saves the per-column call overhead, which dominates for small models;
#: above it the vmapped block is slower per product on CPUs (docs/benchmarks.md, "HVP cost":
#: ours_vmap_block against ours_block).
COLUMN_LOOP_MIN_SIZE: dict[str, int] = {"cpu": 2**17}

# Before any group exists, so that destroy_process_group can free a group joined later.
bind_collectives_before_joining()


def check_eval_mode(model: nn.Module) -> None:
    """Raise ValueError if a dropout or batch-norm module is in training mode."""
    for name, module in model.named_modules():
        if module.training and isinstance(module, (_DropoutNd, _BatchNorm)):
            what = "random" if isinstance(module, _DropoutNd) else "batch-dependent"
            msg = (f"model is in training mode and {type(module).__name__} at "
                   f"'{name or '<root>'}' makes products {what}; call model.eval() first")
            raise ValueError(msg)


def as_block(block: Tensor, size: int) -> tuple[Tensor, bool]:
    """An operand (size,) or (size, k) as a (size, k) block, and whether it was a vector.

    Raises:
        TypeError: ``block`` is not a tensor.
        ValueError: Its shape does not fit a square operator of side ``size``.
    """
    if not isinstance(block, Tensor):
        msg = f"operand must be a torch.Tensor; got {type(block).__name__}"
        raise TypeError(msg)
    vector = block.dim() == 1
    mat = block.unsqueeze(1) if vector else block
    if mat.dim() != 2 or mat.shape[0] != size:
        msg = f"operand must have shape ({size},) or ({size}, k); got {tuple(block.shape)}"
        raise ValueError(msg)
    return mat, vector


def distributed_run() -> bool:
    """Whether torch.distributed is initialized (products are then all-reduced)."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


class CurvatureOperator:
    """Matrix-free P x P curvature matrix of ``loss(model(inputs), targets)`` over ``data``.

    ``op @ v`` takes v of shape (P,) or a block (P, k) in the operator's dtype/device and
    returns the same shape. Batches are weighted by their sample counts (N_b / N), so the
    matrix does not depend on how the data is cut into batches. When torch.distributed is
    initialized, each process passes its shard of the data and products are all-reduced.

    Args:
        model: The network; its selected parameters fix dtype and device.
        loss: "mse", "cross_entropy", "logcosh" or a callable ``loss(outputs, targets)`` that
            averages over the batch (its output-space Hessian comes from autograd).
        data: An (inputs, targets) pair or an iterable of pairs.
        kind: "loss" (H_L), "outer" (H_O = sum J^T Q J), "functional" (H_F = H_L - H_O,
            computed directly as the Hessian of the residual-weighted outputs), or another
            kind registered with :func:`scalable_hrank.operators.kinds.register_kind`.
        params: None (all trainable), name globs, or a list of the model's parameters.
        cache: Keep each batch's graph across products (faster; memory per batch about
            the activations plus one backward's intermediates).

    Cost of ``op @ V`` with V (P, k): k products per batch; with ``cache`` each is a reverse
    sweep through the batch's cached graph (its cost against a gradient: docs/benchmarks.md).

    Attributes:
        kind: The kind's name; ``spec`` its :class:`~scalable_hrank.operators.kinds.KindSpec`.
        loss_name: The loss's name (a callable's ``__name__``); ``loss_fn`` the function.
        builtin_loss: The built-in loss's name, or None for a user callable.
        model: The network; ``space`` (:class:`ParameterSpace`) the selected parameters and
            ``theta`` their current values (per-parameter tensors).
        batches: The data as a :class:`~scalable_hrank.operators.batches.BatchSource`
            (iterable of batches; this process's shard under torch.distributed).
        num_samples: N, the samples over all batches (and processes).
        dtype, device, shape: Of the operator (``shape == (P, P)``).
        matvecs: Products taken so far (a block of k counts k).

    Raises:
        ValueError: Unknown kind/loss, training-mode dropout/batch-norm, empty data, targets
            that do not fit the loss, selected parameters the loss does not reach.
        NonFiniteError: A non-finite loss (at construction) or product.
    """

    def __init__(self, model: nn.Module, loss: str | LossFn, data: Any, kind: str = "loss", *,
                 params: None | Sequence[str] | Sequence[nn.Parameter] = None,
                 cache: bool = True) -> None:
        self.spec: KindSpec = kind_spec(kind)
        self.kind = self.spec.name
        self.loss_name, self.loss_fn = resolve_loss(loss)
        self.builtin_loss = None if callable(loss) else self.loss_name
        check_eval_mode(model)
        self.model = model
        self.space, self.theta = parameter_space(model, params)
        self.dtype, self.device = self.space.dtype, self.space.device
        self.shape = (self.space.size, self.space.size)
        self.batches = BatchSource(data, self.dtype, self.device)
        n_samples = torch.tensor(float(self.batches.num_samples))
        if distributed_run():
            torch.distributed.all_reduce(n_samples)
        self.num_samples = int(n_samples.item())
        self.cache = cache
        self._cached: dict[int, MatVec] = {}
        self._use_vmap = True
        self.matvecs = 0
        self._check_first_batch()

    @property
    def size(self) -> int:
        """P, the number of parameters the matrix is taken over."""
        return self.space.size

    # -- per batch ---------------------------------------------------------------------------
    def first_batch(self) -> Batch:
        """This process's first batch (the one the memory planner measures)."""
        return next(iter(self.batches))

    def forward(self, batch: Batch) -> Callable[[Params], Tensor]:
        """``theta -> outputs`` of ``batch`` (per-parameter tuple in ``space.names`` order).

        The closure the product factories differentiate; attention runs on a twice
        differentiable kernel. Cost: one forward per call.
        """
        fixed, names, model = self.space.fixed, self.space.names, self.model

        def forward(theta: Params) -> Tensor:
            with differentiable_attention():
                return model_outputs(call_model(
                    model, {**fixed, **dict(zip(names, theta, strict=True))}, batch.inputs))

        return forward

    def _check_first_batch(self) -> None:
        """Targets fit, loss finite, every selected parameter reached (one gradient)."""
        batch = self.first_batch()
        leaves = [t.detach().clone().requires_grad_(True) for t in
                  self.space.unflatten(self.theta).values()]
        params = dict(zip(self.space.names, leaves, strict=True))
        with torch.enable_grad():
            with differentiable_attention():
                out = model_outputs(call_model(self.model, {**self.space.fixed, **params},
                                               batch.inputs))
            if self.builtin_loss in LOSSES:
                check_targets(self.builtin_loss, out, batch.targets)
            value = self.loss_fn(out, batch.targets)
            if value.dim() != 0:
                msg = f"loss must return a scalar; got shape {tuple(value.shape)}"
                raise ValueError(msg)
            if not torch.isfinite(value):
                msg = f"loss is {value.item()} on batch {batch.index}; fix the model or data"
                raise NonFiniteError(msg, num_matvecs=0, batch=batch.index)
            grads = torch.autograd.grad(value, leaves, allow_unused=True)
        unused = [n for n, g in zip(self.space.names, grads, strict=True) if g is None]
        if unused:
            msg = (f"selected parameters not reached by the loss: {unused[:8]}"
                   f"{' ...' if len(unused) > 8 else ''}; leave them out with params=")
            raise ValueError(msg)

    def _batch_matvec(self, batch: Batch) -> MatVec:
        if batch.index in self._cached:
            return self._cached[batch.index]
        weight = batch.size / self.num_samples
        mv, value = self.spec.product(self.space.split(self.theta), self.forward(batch),
                                      self.loss_fn, batch.targets, weight)
        if not torch.isfinite(value):
            msg = f"loss is {value.item()} on batch {batch.index}"
            raise NonFiniteError(msg, num_matvecs=self.matvecs, batch=batch.index)
        if self.cache:
            self._cached[batch.index] = mv
        return mv

    def _all_cached(self) -> bool:
        """Whether every batch's product closure is cached (no data pass needed)."""
        return self.cache and len(self._cached) == len(self.batches.sizes)

    def _matvecs_per_batch(self) -> Iterator[tuple[int, MatVec]]:
        """(batch index, product closure) over the data; no data pass once all are cached."""
        if self._all_cached():
            yield from self._cached.items()
            return
        for batch in self.batches:
            yield batch.index, self._batch_matvec(batch)

    def column_loop(self) -> bool:
        """Whether blocks run one column at a time (policy by size, or vmap unsupported)."""
        min_size = COLUMN_LOOP_MIN_SIZE.get(self.device.type)
        return not self._use_vmap or (min_size is not None and self.size >= min_size)

    def _sum_into(self, out: Tensor, parts: Params, *, first: bool) -> None:
        """Write (``first``) or add per-parameter results into the flat buffer ``out`` (..., P)."""
        if first:
            lead = out.shape[:-1]
            torch.cat([p.reshape(*lead, -1) for p in parts], dim=-1, out=out)
        else:
            torch._foreach_add_(list(self.space.split(out)), list(parts))

    def _matmat_vmapped(self, cols: Tensor) -> Tensor | None:
        """Sum over batches of one vmap over the rows of ``cols`` (k, P).

        None if there is no batch or vmap is not supported (then ``_use_vmap`` is cleared).
        """
        out: Tensor | None = None
        tangents = self.space.split(cols)
        for _, mv in self._matvecs_per_batch():
            try:
                parts = torch.func.vmap(mv)(tangents)
            except (RuntimeError, NotImplementedError) as exc:
                log.info("vmap over tangents failed (%s); falling back to a column loop", exc)
                self._use_vmap = False
                return None
            first = out is None
            out = torch.empty_like(cols) if out is None else out
            self._sum_into(out, parts, first=first)
        return out

    def _matmat_columns(self, cols: Tensor) -> Tensor | None:
        """Sum over batches, one row of ``cols`` (k, P) at a time; None if there is no batch.

        Each product's per-parameter results are written or added into the row of one
        (k, P) buffer (no P-vector is assembled per product). Once every batch's graph is
        cached, each column runs through all batches before the next, so its row stays in
        the CPU cache; before that, batches come first (one data pass per call).
        """
        out = torch.empty_like(cols)
        seen = False
        if self._all_cached() and self._cached:
            for row, col in zip(out, cols, strict=True):
                tangent = self.space.split(col)
                for number, mv in enumerate(self._cached.values()):
                    self._sum_into(row, mv(tangent), first=number == 0)
            return out
        for _, mv in self._matvecs_per_batch():
            for row, col in zip(out, cols, strict=True):
                self._sum_into(row, mv(self.space.split(col)), first=not seen)
            seen = True
        return out if seen else None

    def _non_finite_error(self, cols: Tensor) -> NonFiniteError:
        """Find the first batch whose product is not finite (runs only after a failure)."""
        where = f"after {self.matvecs} products"
        for index, mv in self._matvecs_per_batch():
            for col in cols:
                if not all(torch.isfinite(p).all() for p in mv(self.space.split(col))):
                    msg = f"non-finite curvature product on batch {index} {where}"
                    return NonFiniteError(msg, num_matvecs=self.matvecs, batch=index)
        msg = f"curvature product overflowed when summed over the batches {where}"
        return NonFiniteError(msg, num_matvecs=self.matvecs, batch=None)

    # -- public ------------------------------------------------------------------------------
    def matmat(self, block: Tensor) -> Tensor:
        """Return H @ block for block (P,) or (P, k); counts k products.

        A block result is column-major (the transposed (k, P) buffer), as LAPACK returns
        blocks; a column-major operand is used without a copy. Cost: k products per batch
        and one finiteness reduction; on a non-finite result, the products again to name
        the batch.
        """
        mat, vector = as_block(block, self.size)
        # (k, P) unit-stride columns: no copy for a column-major block (as LAPACK's QR
        # returns), one transposition for a row-major one
        cols = mat.to(device=self.device, dtype=self.dtype).T.contiguous()
        out: Tensor | None = None
        if not self.column_loop():
            out = self._matmat_vmapped(cols)
        if self.column_loop():  # by policy, or because vmap just failed
            out = self._matmat_columns(cols)
        out = torch.zeros_like(cols) if out is None else out  # no batch on this process
        # one reduction (cheap); the elementwise check and the search only when it fails
        if not torch.isfinite(out.sum()) and not torch.isfinite(out).all():
            raise self._non_finite_error(cols)
        if distributed_run():
            torch.distributed.all_reduce(out)
        self.matvecs += mat.shape[1]
        # column-major (P, k), no transposition: the solvers keep their bases column-major
        # (a row-major basis times a column-major block takes a much slower matmul path;
        # docs/benchmarks.md, "HVP cost")
        return out[0] if vector else out.T

    __matmul__ = matmat

    def to_dense(self, *, block_size: int = 64) -> Tensor:
        """The dense P x P matrix from P products (blocks of unit vectors). Small models only.

        Cost: P products, P^2 numbers of memory in the operator's dtype.
        """
        eye = torch.eye(self.size, dtype=self.dtype, device=self.device)
        cols = [self.matmat(eye[:, i:i + block_size]) for i in range(0, self.size, block_size)]
        return torch.cat(cols, dim=1)

    def to_scipy(self) -> Any:
        """A ``scipy.sparse.linalg.LinearOperator`` in float64 (for ``eigsh`` cross-checks)."""
        from scipy.sparse.linalg import LinearOperator

        def matmat(x: np.ndarray) -> np.ndarray:
            t = torch.as_tensor(np.asarray(x, dtype=np.float64).reshape(self.size, -1))
            return self.matmat(t).detach().cpu().double().numpy()

        return LinearOperator(self.shape, matvec=matmat, matmat=matmat, rmatvec=matmat,
                              dtype=np.float64)

    def check_symmetry(self, generator: torch.Generator | None = None, *,
                       rtol: float | None = None) -> float:
        """Probe <u, H v> against <H u, v> and H v against a repeat; return the asymmetry.

        Cost: 3 products. Raises ValueError when the relative mismatch exceeds ``rtol``
        (default 1e4 eps of the dtype): the model or data pipeline is not deterministic, or
        the loss is not twice differentiable where evaluated.
        """
        gen = generator or torch.Generator().manual_seed(12345)
        uv = torch.randn(self.size, 2, generator=gen, dtype=torch.float64)
        uv = uv.to(self.device, self.dtype)
        huv = self.matmat(uv)
        hv_again = self.matmat(uv[:, 1])
        scale = (huv.norm() * uv.norm()).double().clamp_min(torch.finfo(torch.float64).tiny)
        asym = abs(float(uv[:, 0] @ huv[:, 1] - huv[:, 0] @ uv[:, 1])) / float(scale)
        repeat = float((hv_again - huv[:, 1]).norm() / huv[:, 1].norm().clamp_min(1e-300))
        limit = rtol if rtol is not None else 1e4 * torch.finfo(self.dtype).eps
        if repeat > limit:
            msg = (f"two products with the same vector differ by {repeat:.2e} (relative): the "
                   "model or data pipeline is not deterministic (dropout, sampling, augmentation)")
            raise ValueError(msg)
        if asym > limit:
            msg = (f"<u,Hv> and <Hu,v> differ by {asym:.2e} (relative): the operator is not "
                   "symmetric; is the loss twice differentiable here?")
            raise ValueError(msg)
        return max(asym, repeat)

    def __repr__(self) -> str:
        return (f"CurvatureOperator(kind={self.kind!r}, loss={self.loss_name!r}, P={self.size}, "
                f"N={self.num_samples}, dtype={self.dtype}, device={self.device})")


def curvature_operator(model: nn.Module, loss: str | LossFn, data: Any, kind: str = "loss", *,
                       params: None | Sequence[str] | Sequence[nn.Parameter] = None,
                       cache: bool = True) -> CurvatureOperator:
    """Build a :class:`CurvatureOperator` (see there for arguments and errors)."""
    return CurvatureOperator(model, loss, data, kind, params=params, cache=cache)


__all__ = ["KINDS", "CurvatureOperator", "ParameterSpace", "curvature_operator",
           "distributed_run"]
