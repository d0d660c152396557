"""Block expansion: one pattern -> one parameter block per matching module or parameter.

Patterns:

* ``type:CLASS``: every module of that class name, e.g. ``type:LayerNorm`` (each
  LayerNorm of the model is one block: its weight and bias).
* a dotted name where ``*``, ``?`` and ``[...]`` match within ONE name component (they never
  cross a dot): ``encoder.layer.*`` is each of the six layers of MiniLM (not their
  sub-modules), ``encoder.layer.*.attention.self.value.bias`` each layer's value bias. A
  pattern is matched against module names and against parameter names.

Each block is named by the matched module or parameter name, which is also its ``params``
selection (a module path selects every parameter below it). Blocks without a trainable
parameter (e.g. ones the loader froze as unreached by the loss) are skipped and reported.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass

from torch import nn

from scalable_hrank.errors import InputError

__all__ = ["Blocks", "expand_blocks"]


@dataclass(frozen=True)
class Blocks:
    """The blocks a set of patterns expands to.

    Attributes:
        names: Block names in the order of their first parameter in
            ``model.named_parameters()``, each once.
        sizes: Trainable parameters in each block.
        skipped: Matched names left out because none of their parameters is trainable.
    """

    names: tuple[str, ...]
    sizes: tuple[int, ...]
    skipped: tuple[str, ...]


def _component_match(name: str, pattern: str) -> bool:
    parts, pats = name.split("."), pattern.split(".")
    return len(parts) == len(pats) and all(
        fnmatch.fnmatchcase(a, b) for a, b in zip(parts, pats, strict=True))


def expand_blocks(model: nn.Module, patterns: str | Iterable[str]) -> Blocks:
    """Expand block patterns (see the module docstring) over ``model``.

    Args:
        model: The module (its trainable parameters define what a block holds).
        patterns: One pattern or several.

    Returns:
        The :class:`Blocks`, in parameter order.

    Raises:
        InputError: No pattern given, or a pattern matches no module or parameter (the
            message shows a few names of the model).
    """
    pats = [patterns] if isinstance(patterns, str) else list(patterns)
    if not pats or not all(isinstance(p, str) and p.strip() for p in pats):
        msg = f"blocks must be one or more non-empty patterns; got {patterns!r}"
        raise InputError(msg)
    modules = [(n, m) for n, m in model.named_modules() if n]
    params = list(model.named_parameters())
    matched: list[str] = []
    for pat in (p.strip() for p in pats):
        if pat.startswith("type:"):
            hits = [n for n, m in modules if type(m).__name__ == pat[5:]]
        else:
            hits = [n for n, _ in modules if _component_match(n, pat)]
            hits += [n for n, _ in params if _component_match(n, pat)]
        if not hits:
            shown = ", ".join(n for n, _ in modules[:6])
            msg = (f"block pattern {pat!r} matches no module or parameter ('*' stays within "
                   f"one name component; 'type:LayerNorm' matches by class); modules "
                   f"include: {shown}, ...")
            raise InputError(msg)
        matched += [h for h in hits if h not in matched]
    def first_parameter(name: str) -> int:
        return next((i for i, (n, _) in enumerate(params)
                     if n == name or n.startswith(name + ".")), len(params))

    names, sizes, skipped = [], [], []
    for name in sorted(matched, key=first_parameter):
        size = sum(p.numel() for n, p in params
                   if p.requires_grad and (n == name or n.startswith(name + ".")))
        if size:
            names.append(name)
            sizes.append(size)
        else:
            skipped.append(name)
    if not names:
        msg = f"blocks {pats} match only parameters that are not trainable: {skipped[:6]}"
        raise InputError(msg)
    return Blocks(tuple(names), tuple(sizes), tuple(skipped))
