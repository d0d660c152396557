"""Which parameters a curvature matrix is taken over, and the flat vector that holds them."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn


def match_parameters(names: Sequence[str], patterns: Iterable[str]) -> list[str]:
    """Names matching any glob in ``patterns``, in the order of ``names``.

    A pattern that names a module prefix without a wildcard ("encoder.layer.5") selects
    everything under it. Raises ValueError for a pattern that matches nothing.
    """
    patterns = list(patterns)
    chosen: set[str] = set()
    for pat in patterns:
        hits = [n for n in names if fnmatch.fnmatchcase(n, pat)
                or fnmatch.fnmatchcase(n, pat.rstrip(".") + ".*")]
        if not hits:
            some = ", ".join(list(names)[:6])
            msg = (f"params pattern {pat!r} matches no parameter; "
                   f"available names start with: {some} ...")
            raise ValueError(msg)
        chosen.update(hits)
    return [n for n in names if n in chosen]


@dataclass(frozen=True)
class ParameterSpace:
    """The selected parameters of a model, flattened into one vector of length P.

    Attributes:
        names: Selected parameter names, in ``model.named_parameters()`` order.
        shapes: Their shapes.
        numels: Their sizes; ``sum(numels) == size``.
        fixed: Every other parameter and buffer, held constant (detached).
        dtype, device: Shared by all selected parameters.
    """

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]
    numels: tuple[int, ...]
    fixed: dict[str, Tensor]
    dtype: torch.dtype
    device: torch.device

    @property
    def size(self) -> int:
        """P, the number of selected scalar parameters."""
        return sum(self.numels)

    def unflatten(self, theta: Tensor) -> dict[str, Tensor]:
        """Split a flat (P,) vector into named views shaped like the parameters."""
        parts = torch.split(theta, self.numels)
        return {n: p.view(s) for n, p, s in zip(self.names, parts, self.shapes, strict=True)}


def parameter_space(model: nn.Module,
                    params: None | Sequence[str] | Sequence[nn.Parameter] = None,
                    ) -> tuple[ParameterSpace, Tensor]:
    """Select parameters and return the space plus the flat current values (P,).

    Args:
        model: The network.
        params: None (all parameters with ``requires_grad``), name globs, or parameter objects.

    Raises:
        ValueError: Nothing selected, a glob matches nothing, or the selection mixes dtypes
            or devices.
        TypeError: ``params`` mixes kinds or holds objects that are not parameters of the model.
    """
    named = dict(model.named_parameters())
    if params is None:
        chosen = [n for n, p in named.items() if p.requires_grad]
    elif isinstance(params, str):
        chosen = match_parameters(list(named), [params])
    elif all(isinstance(p, str) for p in params):
        chosen = match_parameters(list(named), params)  # type: ignore[arg-type]
    elif all(isinstance(p, torch.Tensor) for p in params):
        ids = {id(p) for p in params}
        chosen = [n for n, p in named.items() if id(p) in ids]
        if len(chosen) != len(ids):
            msg = "params holds tensors that are not parameters of the model"
            raise TypeError(msg)
    else:
        msg = "params must be None, a list of name globs, or a list of the model's parameters"
        raise TypeError(msg)
    if not chosen:
        msg = "no parameters selected: the model has none with requires_grad=True"
        raise ValueError(msg)
    tensors = [named[n] for n in chosen]
    dtypes = {t.dtype for t in tensors}
    devices = {t.device for t in tensors}
    if len(dtypes) > 1 or len(devices) > 1:
        msg = f"selected parameters mix dtypes {dtypes} or devices {devices}; cast the model first"
        raise ValueError(msg)
    if not next(iter(dtypes)).is_floating_point:
        msg = f"selected parameters must be floating point; got {dtypes}"
        raise ValueError(msg)
    fixed = {n: p.detach() for n, p in named.items() if n not in set(chosen)}
    fixed.update({n: b for n, b in model.named_buffers()})
    space = ParameterSpace(
        names=tuple(chosen),
        shapes=tuple(t.shape for t in tensors),
        numels=tuple(t.numel() for t in tensors),
        fixed=fixed,
        dtype=next(iter(dtypes)),
        device=next(iter(devices)),
    )
    theta = torch.cat([t.detach().reshape(-1) for t in tensors])
    return space, theta
