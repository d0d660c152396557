"""Parameter selection by name: the one place where name globs are matched.

A *pattern* is one of

* a shell glob over dotted parameter names (``fnmatch`` rules: ``*`` also crosses dots,
  ``?``, ``[0-5]``), e.g. ``"encoder.layer.5.*"`` or ``"*.LayerNorm.weight"``;
* a module path without wildcards, which selects every parameter below that module
  (``"encoder.layer.5"`` == ``"encoder.layer.5.*"``) or exactly one parameter
  (``"encoder.layer.5.output.dense.bias"``);
* ``"re:<regex>"``: a Python regular expression matched with ``re.fullmatch``.

A comma-separated string is split into several patterns. Selected names keep the order of
``model.named_parameters()``, the order the operators flatten them in (docs/CONTRACTS.md).
"""

from __future__ import annotations

import fnmatch
import logging
import re
from collections.abc import Iterable, Sequence

import torch
from torch import nn

__all__ = ["match_parameters", "select_parameters", "split_patterns", "freeze_except"]

logger = logging.getLogger(__name__)

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
