"""Formula upper bounds on the rank of a parameter block's H_L, H_O and H_F.

Two facts, each stated in the project's own words (docs/theory.md#rank-formulas has the
derivations for linear networks):

* **Affine image.** Suppose the loss depends on the block theta only through the outputs
  Z(theta) of modules that are affine in their own parameters (``nn.Linear``,
  ``nn.LayerNorm``, convolutions, ``nn.Embedding``), Z = A theta + c. Then the gradient of
  any function of Z is A^T (...), and every second derivative (of the loss, of the outputs,
  of the residual-weighted outputs) is A^T S A for some symmetric S. So H_L, H_O and H_F all
  have rank <= rank(A) <= min(n, dim Z), where dim Z counts every output entry of those
  modules over the whole data: for a linear layer applied to T positions of each of N
  samples, N T out_features. That is why per-token linear layers grow with the number of
  tokens and a bias or LayerNorm block stays at most its size n.
* **Output space.** H_O = sum_i J_i^T Q_i J_i over the M output rows, with Q_i the K x K
  output Hessian of the loss: rank(H_O) <= M rank(Q) = M K for mse and log-cosh, M (K - 1)
  for cross-entropy (the softmax Hessian annihilates the all-ones vector).

The affine bound is applied only to a block inside ONE such module: with two, the second
module's input may depend on the first one's parameters, and its output is then not affine
in the block. Assumption: the selected parameters act only through that module's forward
(no weight tying, no parent module reading them directly). Tied parameters are detected and
get no affine bound; a parent that reads ``module.weight`` itself is not detected.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from scalable_hrank.models.tasks import call_model
from scalable_hrank.operators.params import parameter_space

__all__ = ["AFFINE_MODULES", "Bound", "block_bounds"]

#: Modules whose output is affine in their own parameters.
AFFINE_MODULES: tuple[type[nn.Module], ...] = (
    nn.Linear, nn.LayerNorm, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding)

#: rank(Q) of a built-in loss's K x K output Hessian, as a function of K.
_OUTPUT_HESSIAN_RANK = {"mse": lambda k: k, "logcosh": lambda k: k,
                        "cross_entropy": lambda k: k - 1}


@dataclass(frozen=True)
class Bound:
    """An upper bound on a rank and the formula it comes from.

    Attributes:
        value: The bound.
        reason: The formula with its numbers, e.g. ``"affine image: 2 x 6 x 3 = 36 < n"``.
    """

    value: int
    reason: str


def _owners(model: nn.Module) -> dict[int, list[nn.Module]]:
    """Parameter id -> every module that holds it directly (tied parameters have several)."""
    owners: dict[int, list[nn.Module]] = {}
    for _, module in model.named_modules(remove_duplicate=False):
        for p in module.parameters(recurse=False):
            if module not in owners.setdefault(id(p), []):
                owners[id(p)].append(module)
    return owners


def _batches(data: Any) -> Iterable[tuple[Any, Tensor]]:
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[1], Tensor):
        return [data]
    return data


def _output_sizes(model: nn.Module, modules: Sequence[nn.Module], data: Any
                  ) -> tuple[list[int], int, int]:
    """Output entries of each module over the data, the output rows M and width K of the model.

    Cost: one forward per batch, no gradients.
    """
    sizes = [0] * len(modules)
    hooks = []
    for i, module in enumerate(modules):
        def hook(_m: nn.Module, _inp: Any, out: Any, i: int = i) -> None:
            sizes[i] += int(out.numel()) if isinstance(out, Tensor) else 0
        hooks.append(module.register_forward_hook(hook))
    rows, width = 0, 0
    try:
        with torch.no_grad():
            for inputs, targets in _batches(data):
                from scalable_hrank.operators.outputs import model_outputs

                out = model_outputs(call_model(model, inputs))
                rows += int(targets.shape[0]) if targets.dim() else 1
                width = int(out.shape[-1]) if out.dim() > 1 else 1
    finally:
        for h in hooks:
            h.remove()
    return sizes, rows, width


def block_bounds(model: nn.Module, loss: Any, data: Any,
                 params: None | str | Sequence[str] = None,
                 kinds: Sequence[str] = ("loss", "outer", "functional"),
                 ) -> dict[str, Bound | None]:
    """Formula upper bounds on rank(H_L), rank(H_O), rank(H_F) of the selected block.

    Cost: one forward pass over ``data`` (no gradients, no curvature products).

    Args:
        model: The module (eval mode).
        loss: A built-in loss name or a callable (a callable has no output-space bound
            beyond M K).
        data: An ``(inputs, targets)`` pair or an iterable of pairs.
        params: Name patterns of the block, or None for every trainable parameter.
        kinds: The kinds to bound.

    Returns:
        Kind -> the smallest bound that applies, or None when no formula covers the block
        (a nonlinear block, e.g. a whole transformer layer, has only the H_O bound).
    """
    space, _ = parameter_space(model, params)
    named = dict(model.named_parameters())
    chosen = [named[n] for n in space.names]
    owners = _owners(model)
    modules: list[nn.Module] = []
    affine = True
    for p in chosen:
        holders = owners.get(id(p), [])
        if len(holders) != 1 or not isinstance(holders[0], AFFINE_MODULES):
            affine = False
            break
        if holders[0] not in modules:
            modules.append(holders[0])
    affine = affine and len(modules) == 1
    sizes, rows, width = _output_sizes(model, modules if affine else [], data)
    n = space.size
    found: list[Bound] = []
    if affine:
        found.append(Bound(min(n, sizes[0]),
                           f"affine image: the block acts through one {type(modules[0]).__name__}"
                           f" whose outputs have {sizes[0]} entries over the data; rank <= "
                           f"min(n = {n}, {sizes[0]})"))
    bounds: dict[str, Bound | None] = {}
    for kind in kinds:
        options = list(found)
        if kind == "outer":
            q_rank = _OUTPUT_HESSIAN_RANK.get(loss, lambda k: k)(width) if isinstance(
                loss, str) else width
            name = loss if isinstance(loss, str) else "a callable loss"
            options.append(Bound(min(n, rows * q_rank),
                                 f"output space: M = {rows} output rows x rank(Q) = {q_rank} "
                                 f"({name}, K = {width}); rank <= min(n = {n}, "
                                 f"{rows * q_rank})"))
        bounds[kind] = min(options, key=lambda b: b.value) if options else None
    return bounds
