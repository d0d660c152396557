"""Parameter selection for models: pick, count and freeze parameters by name pattern.

The pattern rules (globs, module paths, ``re:`` regexes, comma-separated lists) and the
matcher itself live in :mod:`scalable_hrank.operators.params`; they are re-exported here.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from torch import nn

from scalable_hrank.operators.params import match_parameters, split_patterns

__all__ = ["match_parameters", "select_parameters", "split_patterns", "freeze_except"]

logger = logging.getLogger(__name__)

def select_parameters(
    model: nn.Module,
    patterns: str | Iterable[str] | None = None,
    *,
    include_frozen: bool = False,
) -> list[tuple[str, nn.Parameter]]:
    """Select ``(name, parameter)`` pairs of ``model`` by name patterns.

    Args:
        model: Any module.
        patterns: Globs / module paths / ``re:`` regexes, or None for every parameter.
        include_frozen: Also match parameters with ``requires_grad=False`` (e.g. the unused
            ones a loaded :class:`~scalable_hrank.models.ModelBundle` froze). Default: only
            trainable ones, the set ``curvature_operator(params=None)`` uses.

    Returns:
        Pairs in ``model.named_parameters()`` order. The block size is
        ``sum(p.numel() for _, p in pairs)``; callers print it.

    Raises:
        ValueError: If a pattern matches nothing, or nothing is trainable.
    """
    named = [(n, p) for n, p in model.named_parameters() if include_frozen or p.requires_grad]
    if not named:
        msg = "the model has no trainable parameters to select from"
        raise ValueError(msg)
    if patterns is None:
        return named
    keep = set(match_parameters(named, patterns))
    out = [(n, p) for n, p in named if n in keep]
    logger.info("selected %d tensors, %d parameters",
                len(out), sum(p.numel() for _, p in out))
    return out


def freeze_except(model: nn.Module, names: Iterable[str]) -> int:
    """Set ``requires_grad=False`` on every parameter not in ``names``.

    Args:
        model: The module, modified in place.
        names: Parameter names to keep trainable.

    Returns:
        The number of scalar parameters left trainable.
    """
    keep = set(names)
    count = 0
    for n, p in model.named_parameters():
        p.requires_grad_(n in keep)
        count += p.numel() if n in keep else 0
    return count
