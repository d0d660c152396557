"""Attention kernels and double derivatives.

Hessian-vector products differentiate the backward pass once more. Fused attention kernels
(PyTorch SDPA flash / memory-efficient backends, FlashAttention-2/3, flex attention) have no
second derivative: on CPU the default SDPA kernel fails with "derivative for
_scaled_dot_product_flash_attention_for_cpu_backward is not implemented"; on GPUs the fused
backends fail the same way or silently fall back. The "eager" (math) path is made of ordinary
differentiable ops, so it supports any order of derivative at the cost of materialising the
(T, T) attention matrix per head.
"""

from __future__ import annotations

import logging

from torch import nn

from scalable_hrank.operators.outputs import differentiable_attention

__all__ = ["ensure_double_backward_attention", "math_sdpa", "attention_implementation",
           "SAFE_ATTENTION"]

logger = logging.getLogger(__name__)

#: Attention implementations whose backward is itself differentiable.
SAFE_ATTENTION = frozenset({"eager"})


def attention_implementation(model: nn.Module) -> str | None:
    """Return the Hugging Face attention implementation of ``model`` (None if not an HF model).

    Args:
        model: Any module; Hugging Face models carry ``config._attn_implementation``.

    Returns:
        For example ``"eager"``, ``"sdpa"``, ``"flash_attention_2"``, ``"flex_attention"``;
        None when ``model`` has no Hugging Face config.
    """
    config = getattr(model, "config", None)
    if config is None:
        inner = getattr(model, "hf_model", None)
        config = getattr(inner, "config", None)
    if config is None:
        return None
    impl = getattr(config, "_attn_implementation", None)
    return None if impl is None else str(impl)


def _hf_models(model: nn.Module) -> list[nn.Module]:
    out = []
    inner = getattr(model, "hf_model", None)
    if inner is not None:
        out.append(inner)
    for m in model.modules():
        if getattr(m, "config", None) is not None and hasattr(m.config, "_attn_implementation"):
            out.append(m)
    seen: set[int] = set()
    return [m for m in out if not (id(m) in seen or seen.add(id(m)))]


def ensure_double_backward_attention(model: nn.Module) -> bool:
    """Switch attention without double-derivative support to the eager (math) path.

    Hugging Face models (and wrappers exposing ``hf_model``) whose
    ``config._attn_implementation`` is not ``"eager"`` are switched with
    ``set_attn_implementation("eager")`` (transformers >= 4.48), else by setting the
    config attribute on every sub-config. A message is logged at WARNING level. Modules that
    call ``scaled_dot_product_attention`` (``nn.MultiheadAttention``, timm ViTs) need nothing:
    the products run it on its math backend.

    Args:
        model: The module, modified in place.

    Returns:
        True if an implementation was changed.
    """
    changed = False
    for hf in _hf_models(model):
        impl = getattr(hf.config, "_attn_implementation", None)
        if impl is None or impl in SAFE_ATTENTION:
            continue
        setter = getattr(hf, "set_attn_implementation", None)
        done = False
        if callable(setter):
            try:
                setter("eager")
                done = True
            except (ValueError, AttributeError, NotImplementedError) as exc:  # pragma: no cover
                logger.debug("set_attn_implementation failed (%s); setting configs", exc)
        if not done:
            for sub in hf.modules():
                cfg = getattr(sub, "config", None)
                if cfg is not None and hasattr(cfg, "_attn_implementation"):
                    cfg._attn_implementation = "eager"
        logger.warning(
            "attention implementation %r has no double derivatives (needed for Hessian "
            "products); switched %s to 'eager' (math path, materialises T x T scores)",
            impl, type(hf).__name__)
        changed = True
    return changed


#: Restricts ``scaled_dot_product_attention`` to its math backend; every product already
#: runs inside it (``scalable_hrank.operators.outputs``), so users need it only for their own
#: double-backward code.
math_sdpa = differentiable_attention
