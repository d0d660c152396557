"""Curvature kinds: one small spec per matrix, and the registry that names them.

A kind says how to build one batch's product closure and what the estimators may assume about
the matrix. Everything that depends on the kind (the operator's products, the threshold's
scale, whether a density count may treat the matrix as PSD, the output-space Gram route of
H_O, the parts bound of H_L) reads the spec, so adding a kind is one :class:`KindSpec` passed
to :func:`register_kind` (and its dense reference in the tests); docs/CONTRACTS.md has a
worked example.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from scalable_hrank._registry import Registry
from scalable_hrank.operators.losses import LOSSES, LossFn
from scalable_hrank.operators.products import (
    Forward,
    MatVec,
    Params,
    functional_hessian_matvec,
    loss_hessian_matvec,
    outer_hessian_matvec,
    output_factor_maps,
)

#: ``(theta, forward, loss_fn, targets, weight) -> (v -> w H_b v, batch loss)``: one batch's
#: product closure on per-parameter tuples shaped like ``theta`` (see operators/products.py).
ProductFactory = Callable[[Params, Forward, LossFn, Tensor, float], tuple[MatVec, Tensor]]
#: ``(theta, forward, loss_fn, targets, weight) -> (v -> A_b^T v, u -> A_b u, outputs)`` or
#: None: a factor ``A_b`` of the batch's matrix ``w M_b = A_b A_b^T`` over its outputs.
FactorFactory = Callable[..., tuple[Callable[[Params], Tensor], Callable[[Tensor], Params],
                                    Tensor] | None]


@dataclass(frozen=True)
class KindSpec:
    """What the package knows about one curvature matrix.

    Attributes:
        name: The ``kind`` argument (``"loss"``, ``"outer"``, ``"functional"``, ...).
        symbol: How results and docs write the matrix (``"H_L"``).
        product: Builds one batch's product closure; the operator sums the batches with
            weights ``N_b / N``.
        psd_losses: Built-in losses (:data:`~scalable_hrank.operators.losses.LOSSES` names)
            for which the matrix is positive semi-definite; empty when it is indefinite in
            general. A user callable loss is never assumed to make it PSD.
        scale_kind: The kind whose largest |eigenvalue| scales the relative threshold
            (``tol = rtol * sigma_max``). Every built-in kind uses ``"loss"``: H_F of a
            one-layer net is exactly zero, so it cannot scale its own threshold.
        output_factor: When the matrix is ``A A^T`` with ``A`` over the M model outputs,
            builds one batch's factor maps (the output-space Gram route: count on the
            M x M ``A^T A`` when M < P); None when that route does not apply.
        parts: Kinds whose matrices sum to this one (``H_L = H_O + H_F``): the density
            estimator can bound this kind's rank by the sum of theirs; empty when none.
    """

    name: str
    symbol: str
    product: ProductFactory
    psd_losses: tuple[str, ...] = ()
    scale_kind: str = "loss"
    output_factor: FactorFactory | None = None
    parts: tuple[str, ...] = ()

    def is_psd(self, builtin_loss: str | None) -> bool:
        """Whether the matrix is PSD for this loss (``None``: a user callable)."""
        return builtin_loss is not None and builtin_loss in self.psd_losses


#: The built-in kinds: "loss" = H_L (Hessian of the loss), "outer" = H_O (Gauss-Newton),
#: "functional" = H_F. :func:`kind_names` lists these and any registered since.
KINDS = ("loss", "outer", "functional")
_KINDS: Registry[KindSpec] = Registry("kind", KINDS)


def register_kind(spec: KindSpec) -> KindSpec:
    """Make ``spec`` available as ``kind=spec.name`` everywhere; returns it.

    Raises:
        ValueError: A kind of that name is already registered.
    """
    return _KINDS.add(spec.name, spec)


def unregister_kind(name: str) -> None:
    """Remove a kind added with :func:`register_kind` (built-in kinds stay)."""
    _KINDS.remove(name)


def kind_names() -> tuple[str, ...]:
    """Every registered kind, built-ins first."""
    return _KINDS.names()


def kind_spec(name: str) -> KindSpec:
    """The spec of kind ``name``.

    Raises:
        ValueError: No kind of that name is registered (the message lists the known ones).
        TypeError: ``name`` is not a string.
    """
    return _KINDS.get(name)


register_kind(KindSpec("loss", "H_L", loss_hessian_matvec, parts=("outer", "functional")))
register_kind(KindSpec("outer", "H_O", outer_hessian_matvec, psd_losses=LOSSES,
                       output_factor=output_factor_maps))
register_kind(KindSpec("functional", "H_F", functional_hessian_matvec))

__all__ = ["KINDS", "KindSpec", "kind_names", "kind_spec", "register_kind", "unregister_kind"]
