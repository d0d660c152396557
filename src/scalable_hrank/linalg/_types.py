"""Shared type aliases of the linear-algebra layer (see docs/CONTRACTS.md)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Optional

from torch import Tensor

#: ``X (n, k) -> A X (n, k)`` for a symmetric ``A``; same dtype and device; never mutates X.
MatMat = Callable[[Tensor], Tensor]

#: Sums a small tensor (Gram matrix, inner products) over processes when every process holds a
#: slice of each basis vector; ``None`` means one process. Every inner product in linalg goes
#: through it.
Reduce = Optional[Callable[[Tensor], Tensor]]  # noqa: UP045 (runtime alias on python 3.10)

__all__ = ["MatMat", "Reduce"]
