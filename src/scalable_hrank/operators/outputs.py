"""What a model's forward must deliver to the products: one output tensor, twice differentiable.

Two concerns of every forward the curvature products run:

* **Outputs as models return them.** A Tensor is used as is; a Mapping (a dict, or a Hugging
  Face ``ModelOutput``, which is one) gives its ``"logits"`` entry; a tuple or list gives its
  first element. Any other key is picked with :class:`~scalable_hrank.models.SelectOutput`.
* **Attention with a second derivative.** A Hessian product differentiates the backward pass
  once more. The fused ``scaled_dot_product_attention`` kernels (flash, memory-efficient,
  cuDNN) have no derivative of their backward, so every forward runs with SDPA restricted to
  its math backend, which is built of ordinary differentiable operations (it materialises the
  (T, T) score matrix per head). A kernel that still has no double derivative (a fused one
  called directly) is refused with :class:`~scalable_hrank.errors.InputError` naming it. Not
  detected: a custom ``autograd.Function`` whose backward is marked once-differentiable;
  ``torch.func`` treats its backward as constant, so its second derivative is silently zero.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping
from typing import Any

from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from scalable_hrank.errors import InputError

#: The Mapping key read when a model returns a dict or ``ModelOutput``.
DEFAULT_OUTPUT_KEY = "logits"

_NO_DOUBLE_DERIVATIVE = re.compile(r"derivative for (?P<op>\S+) is not implemented")


def model_outputs(out: Any, key: str = DEFAULT_OUTPUT_KEY) -> Tensor:
    """The tensor the loss acts on, from what a model's forward returned.

    Args:
        out: A Tensor; a Mapping (dict, ``ModelOutput``) holding ``key``; or a tuple/list whose
            first element is one of these.
        key: The Mapping entry to use.

    Returns:
        The output tensor, unchanged (no copy).

    Raises:
        InputError: A Mapping without ``key`` (the message lists its keys), an empty tuple,
            or anything else.
    """
    if isinstance(out, Tensor):
        return out
    if isinstance(out, Mapping):
        if key in out and out[key] is not None:
            return model_outputs(out[key], key)
        keys = [k for k, v in out.items() if v is not None]
        msg = (f"model returned a {type(out).__name__} without a {key!r} entry (keys: {keys}); "
               f"pick the output with scalable_hrank.models.SelectOutput(model, key)")
        raise InputError(msg)
    if isinstance(out, (tuple, list)) and out:
        return model_outputs(out[0], key)
    msg = (f"model returned {type(out).__name__}; it must return a Tensor, a dict or "
           "ModelOutput with 'logits', or a tuple whose first element is the outputs")
    raise InputError(msg)


@contextlib.contextmanager
def differentiable_attention() -> Iterator[None]:
    """Run ``scaled_dot_product_attention`` on its math backend (any device) inside the block.

    Yields:
        None.
    """
    with sdpa_kernel([SDPBackend.MATH]):
        yield


@contextlib.contextmanager
def refuse_single_derivative_kernels() -> Iterator[None]:
    """Turn autograd's "no double derivative" errors into an :class:`InputError` naming the op.

    Yields:
        None.

    Raises:
        InputError: An operation inside the block has no derivative of its backward.
    """
    try:
        yield
    except RuntimeError as exc:
        found = _NO_DOUBLE_DERIVATIVE.search(str(exc))
        if found is None:
            raise
        msg = (f"the model uses {found.group('op')}, which has no second derivative, so "
               "Hessian products cannot run through it; use a twice-differentiable "
               "implementation (for attention: torch.nn.functional."
               "scaled_dot_product_attention or an eager softmax(QK^T)V; Hugging Face "
               "models: attn_implementation='eager')")
        raise InputError(msg) from exc
