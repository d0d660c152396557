"""Which parameters a curvature matrix is taken over, and the flat vector that holds them.

Name patterns (the one place they are matched) are one of

* a shell glob over dotted parameter names (``fnmatch`` rules: ``*`` also crosses dots,
  ``?``, ``[0-5]``), e.g. ``"encoder.layer.5.*"`` or ``"*.LayerNorm.weight"``;
* a module path without wildcards, which selects every parameter below that module
  (``"encoder.layer.5"`` == ``"encoder.layer.5.*"``) or exactly one parameter;
* ``"re:<regex>"``: a Python regular expression matched with ``re.fullmatch``.

A comma-separated string is split into several patterns. Selected names keep the order of
``model.named_parameters()``, the order in which the operators flatten them.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

_MAX_NAMES_SHOWN = 8


def split_patterns(patterns: str | Iterable[str]) -> list[str]:
    """Normalise patterns: a string is split at commas; blanks are dropped.

    Args:
        patterns: One pattern, a comma-separated string, or an iterable of patterns.

    Returns:
        The list of non-empty, stripped patterns.

    Raises:
        TypeError: If ``patterns`` is neither a string nor an iterable of strings.
    """
    if isinstance(patterns, str):
        # A regex may contain commas: an "re:" string is one pattern.
        items: list[str] = [patterns] if patterns.startswith("re:") else patterns.split(",")
    else:
        try:
            items = list(patterns)
        except TypeError as exc:
            msg = ("patterns must be a string or an iterable of strings; "
                   f"got {type(patterns).__name__}")
            raise TypeError(msg) from exc
        for item in items:
            if not isinstance(item, str):
                msg = f"each pattern must be a string; got {type(item).__name__}"
                raise TypeError(msg)
    out: list[str] = []
    for item in items:
        item = item.strip()
        if item:
            out.append(item)
    return out


def _matcher(pattern: str):
    if pattern.startswith("re:"):
        rx = re.compile(pattern[3:])
        return lambda name: rx.fullmatch(name) is not None
    if any(ch in pattern for ch in "*?["):
        return lambda name: fnmatch.fnmatchcase(name, pattern)
    prefix = pattern.rstrip(".") + "."
    return lambda name: name == pattern or name.startswith(prefix)


def _preview(names: Sequence[str], pattern: str) -> str:
    # Show the names that share the longest prefix with the pattern first: the likely typo.
    stem = re.split(r"[*?\[]", pattern.removeprefix("re:"), maxsplit=1)[0]

    def common(name: str) -> int:
        n = 0
        for a, b in zip(name, stem, strict=False):
            if a != b:
                break
            n += 1
        return n

    ranked = sorted(names, key=lambda n: -common(n))[:_MAX_NAMES_SHOWN]
    more = "" if len(names) <= _MAX_NAMES_SHOWN else f", ... ({len(names)} in all)"
    return ", ".join(ranked) + more


def match_parameters(
    named_params: Iterable[tuple[str, torch.Tensor]] | Iterable[str],
    patterns: str | Iterable[str],
) -> list[str]:
    """Return the parameter names matched by any of ``patterns``, in the input order.

    Args:
        named_params: ``model.named_parameters()`` (pairs) or plain names.
        patterns: Globs, module paths or ``re:`` regexes (see the module docstring); a
            string may hold several, separated by commas.

    Returns:
        The matched names, each once, in the order of ``named_params``.

    Raises:
        ValueError: If no pattern is given, or if a pattern matches nothing (the message
            names the pattern and a few available names).
    """
    names = [item if isinstance(item, str) else item[0] for item in named_params]
    pats = split_patterns(patterns)
    if not pats:
        msg = "patterns must name at least one parameter glob; got an empty selection"
        raise ValueError(msg)
    chosen: set[str] = set()
    for pat in pats:
        try:
            match = _matcher(pat)
        except re.error as exc:
            msg = f"pattern {pat!r} is not a valid regular expression: {exc}"
            raise ValueError(msg) from exc
        hits = [n for n in names if match(n)]
        if not hits:
            msg = (f"parameter pattern {pat!r} matches no parameter; "
                   f"available names include: {_preview(names, pat)}")
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

    def split(self, flat: Tensor) -> tuple[Tensor, ...]:
        """Views of ``flat`` (..., P) shaped like the parameters: (..., *shape) each, no copy."""
        lead = flat.shape[:-1]
        parts = torch.split(flat, self.numels, dim=-1)
        return tuple(p.view(*lead, *s) for p, s in zip(parts, self.shapes, strict=True))

    def unflatten(self, theta: Tensor) -> dict[str, Tensor]:
        """Split a flat (P,) vector into named views shaped like the parameters."""
        return dict(zip(self.names, self.split(theta), strict=True))


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
        chosen = match_parameters(list(named), params)
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
