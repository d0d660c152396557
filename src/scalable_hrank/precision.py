"""Precision of curvature products: which dtype they run in, and TF32 kept off."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

__all__ = ["LOW_PRECISION", "parameter_dtype", "product_dtype", "tf32_disabled"]

#: Dtypes whose products resolve eigenvalues only down to about 1e-2 of lambda_max.
LOW_PRECISION = (torch.bfloat16, torch.float16)


@contextlib.contextmanager
def tf32_disabled() -> Iterator[None]:
    """Turn TF32 off for CUDA matmul and cuDNN inside the block (restored on exit).

    TF32 rounds float32 matmul inputs to a 10-bit mantissa (relative error ~5e-4), far
    above the float32 noise floor that rank thresholds assume (docs/theory.md#threshold-rule).
    Harmless on CPU-only machines.

    Yields:
        None.
    """
    matmul = torch.backends.cuda.matmul
    cudnn = torch.backends.cudnn
    saved_prec = torch.get_float32_matmul_precision()
    saved_matmul = matmul.allow_tf32
    saved_cudnn = cudnn.allow_tf32
    try:
        matmul.allow_tf32 = False
        cudnn.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")
        yield
    finally:
        matmul.allow_tf32 = saved_matmul
        cudnn.allow_tf32 = saved_cudnn
        torch.set_float32_matmul_precision(saved_prec)


def parameter_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the model's first floating-point parameter (float32 if none)."""
    for p in model.parameters():
        if p.dtype.is_floating_point:
            return p.dtype
    return torch.float32


def product_dtype(model_dtype: torch.dtype, requested: torch.dtype | None = None, *,
                  allow_low_precision: bool = False) -> tuple[torch.dtype, float, str | None]:
    """Choose the dtype of curvature products.

    Args:
        model_dtype: The parameters' dtype.
        requested: An explicit product dtype, or None (model dtype, upcast if low).
        allow_low_precision: Accept bf16/fp16 products and their error budget.

    Returns:
        ``(dtype, error_budget, note)``: error budget = 10 eps(dtype), the relative
        threshold below which eigenvalues cannot be resolved; a note when upcasting.

    Raises:
        ValueError: If bf16/fp16 products are requested without ``allow_low_precision``.
    """
    dt = requested or model_dtype
    note = None
    if dt in LOW_PRECISION and not allow_low_precision:
        if requested is not None:
            eps = torch.finfo(dt).eps
            msg = (f"products in {dt} err by about eps = {eps:.1e} of lambda_max, so no "
                   f"eigenvalue below ~{10 * eps:.1e} lambda_max can be told from zero; pass "
                   f"allow_low_precision=True to accept this, or use float32/float64")
            raise ValueError(msg)
        note = (f"model is {model_dtype}; products upcast to torch.float32 (pass "
                f"allow_low_precision=True to run them in {model_dtype} with error budget "
                f"{10 * torch.finfo(model_dtype).eps:.1e} lambda_max)")
        dt = torch.float32
    elif dt in LOW_PRECISION:
        note = (f"low-precision products in {dt}: eigenvalues below "
                f"{10 * torch.finfo(dt).eps:.1e} lambda_max are not resolved; "
                f"use rtol >= that")
    return dt, 10 * torch.finfo(dt).eps, note
