"""Normalising the ``data`` argument: an (inputs, targets) pair or an iterable of pairs."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from scalable_hrank.errors import InputError, NonFiniteError


class NonFiniteDataError(InputError, NonFiniteError):
    """The user's data holds NaN or inf: bad input (exit 2) that makes the loss non-finite."""


@dataclass(frozen=True)
class Batch:
    """One batch: inputs (Tensor, tuple or mapping), targets, and its sample count."""

    index: int
    inputs: Any
    targets: Tensor
    size: int


def _first_tensor(x: Any) -> Tensor | None:
    if isinstance(x, Tensor):
        return x
    if isinstance(x, Mapping):
        x = list(x.values())
    if isinstance(x, (tuple, list)):
        for item in x:
            t = _first_tensor(item)
            if t is not None:
                return t
    return None


def move_inputs(x: Any, dtype: torch.dtype, device: torch.device) -> Any:
    """Move inputs to ``device``; floating tensors are cast to ``dtype``, others keep theirs."""
    if isinstance(x, Tensor):
        return x.to(device=device, dtype=dtype if x.is_floating_point() else x.dtype)
    if isinstance(x, Mapping):
        return {k: move_inputs(v, dtype, device) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(move_inputs(v, dtype, device) for v in x)
    return x


def call_model(model_call: Any, params: dict[str, Tensor], inputs: Any) -> Tensor:
    """``functional_call`` with inputs given as a Tensor, a tuple (positional) or a Mapping."""
    if isinstance(inputs, Mapping):
        return torch.func.functional_call(model_call, params, (), dict(inputs))
    if isinstance(inputs, (tuple, list)):
        return torch.func.functional_call(model_call, params, tuple(inputs))
    return torch.func.functional_call(model_call, params, (inputs,))


def _non_finite(x: Any, name: str) -> str | None:
    """Name of the first floating tensor in ``x`` holding NaN or inf, with the count."""
    if isinstance(x, Tensor):
        if x.is_floating_point() or x.is_complex():
            bad = int((~torch.isfinite(x)).sum())
            if bad:
                return f"{name} ({bad} of {x.numel()} entries NaN or inf)"
        return None
    items: Iterable[tuple[str, Any]] = ()
    if isinstance(x, Mapping):
        items = ((f"{name}[{k!r}]", v) for k, v in x.items())
    elif isinstance(x, (tuple, list)):
        items = ((f"{name}[{j}]", v) for j, v in enumerate(x))
    for sub, v in items:
        found = _non_finite(v, sub)
        if found is not None:
            return found
    return None


def _fingerprint(inputs: Any, targets: Tensor) -> float:
    t = _first_tensor(inputs)
    s = float(targets.double().sum()) if targets.numel() else 0.0
    if t is not None and t.numel():
        s += float(t.double().sum()) * 1.000001
    return s


class BatchSource:
    """Iterates the user's data as :class:`Batch` objects, with checks.

    The data is read once at construction (sample count, a cheap fingerprint per batch); each
    later pass compares fingerprints, so a pipeline that changes between passes (shuffling
    with replacement, random augmentation) is reported instead of giving a random matrix.

    Raises:
        NonFiniteDataError: A batch with NaN or inf in its inputs or targets (named, with
            the batch index); an ``InputError`` and a ``NonFiniteError``.
        ValueError: Empty data, a batch that is not an (inputs, targets) pair, inputs and
            targets with different batch sizes.
    """

    def __init__(self, data: Any, dtype: torch.dtype, device: torch.device) -> None:
        if isinstance(data, tuple) and len(data) == 2 and isinstance(data[1], Tensor):
            self._source: Iterable[Any] = [data]
        elif isinstance(data, Iterable) and not isinstance(data, (Tensor, str, Mapping)):
            self._source = data
        else:
            msg = ("data must be an (inputs, targets) pair or an iterable of such pairs "
                   f"(a DataLoader); got {type(data).__name__}")
            raise TypeError(msg)
        self.dtype, self.device = dtype, device
        self._prints: list[float] = []
        self.sizes: list[int] = []
        for _ in self._iterate(check=False):
            pass
        if not self.sizes or sum(self.sizes) == 0:
            msg = "data is empty: no batch with at least one sample"
            raise ValueError(msg)

    @property
    def num_samples(self) -> int:
        """N, the total number of samples."""
        return sum(self.sizes)

    def _iterate(self, *, check: bool) -> Iterator[Batch]:
        prints: list[float] = []
        for i, item in enumerate(self._source):
            if not (isinstance(item, (tuple, list)) and len(item) == 2):
                msg = f"batch {i} is not an (inputs, targets) pair; got {type(item).__name__}"
                raise ValueError(msg)
            x, y = item
            if not isinstance(y, Tensor):
                y = torch.as_tensor(y)
            first = _first_tensor(x)
            if first is None:
                msg = f"batch {i} has no tensor among its inputs"
                raise ValueError(msg)
            # Samples are what the loss averages over: the rows of the targets (for a masked
            # LM that is the masked tokens, not the sentences of the inputs).
            size = int(y.shape[0]) if y.dim() else 1
            if size == 0:
                continue
            if not check:
                bad = _non_finite(x, "inputs") or _non_finite(y, "targets")
                if bad is not None:
                    msg = (f"batch {i} has non-finite data in its {bad}, so the loss is not "
                           "finite; clean or drop those samples")
                    raise NonFiniteDataError(msg, num_matvecs=0, batch=i)
            fp = _fingerprint(x, y)
            prints.append(fp)
            seen = len(prints)
            if check and (seen > len(self._prints) or fp != self._prints[seen - 1]):
                msg = (f"data changed between passes at batch {i}: the data pipeline is not "
                       "deterministic (shuffling, sampling or augmentation); fix a seed or "
                       "pass the data as fixed tensors")
                raise ValueError(msg)
            if not check:
                self.sizes.append(size)
            yield Batch(i, move_inputs(x, self.dtype, self.device),
                        move_inputs(y, self.dtype, self.device), size)
        if not check:
            self._prints = prints
        elif len(prints) != len(self._prints):
            msg = (f"data changed between passes: {len(prints)} batches now, "
                   f"{len(self._prints)} before")
            raise ValueError(msg)

    def __iter__(self) -> Iterator[Batch]:
        return self._iterate(check=True)
