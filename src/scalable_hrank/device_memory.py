"""Memory of the device and of a model's forward: what the memory planner measures."""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

__all__ = ["available_memory", "format_bytes", "measure_activation_bytes"]


def format_bytes(n: float) -> str:
    """Human-readable bytes (binary units): ``format_bytes(3 * 2**30) == '3.00 GiB'``."""
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} B"


def available_memory(device: str | torch.device = "cpu", *, fraction: float = 0.8) -> int:
    """Bytes available for the computation on ``device``.

    Args:
        device: ``"cpu"`` or a CUDA device.
        fraction: Share of the available RAM the planner may use (CPU only; on CUDA the
            free memory reported by the driver is used whole).

    Returns:
        CUDA: ``torch.cuda.mem_get_info`` free bytes. CPU: ``fraction`` of the available
        physical pages (``os.sysconf``; total pages if unavailable).
    """
    dev = torch.device(device)
    if dev.type == "cuda":
        free, _total = torch.cuda.mem_get_info(dev)
        return int(free)
    page = os.sysconf("SC_PAGE_SIZE")
    try:
        pages = os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError):  # pragma: no cover - non-Linux
        pages = os.sysconf("SC_PHYS_PAGES")
    return int(fraction * page * pages)


def measure_activation_bytes(model: nn.Module, batch_example: Any) -> int:
    """Bytes autograd saves for one forward of ``model`` on ``batch_example``.

    Cost: one forward with gradients enabled (no backward). Tensors sharing a storage are
    counted once; parameters themselves are not counted.

    Args:
        model: The module (at least one parameter must require grad, else nothing is saved).
        batch_example: An ``(inputs, targets)`` pair, or bare inputs.

    Returns:
        Saved bytes (the graph a backward would free).
    """
    from .models.tasks import call_model

    inputs = batch_example[0] if isinstance(batch_example, tuple) and len(batch_example) == 2 \
        else batch_example
    param_ptrs = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        try:
            st = t.untyped_storage()
            ptr = st.data_ptr()
            if ptr not in param_ptrs:
                seen[ptr] = max(seen.get(ptr, 0), st.nbytes())
        except (RuntimeError, NotImplementedError):  # pragma: no cover - exotic tensors
            seen[id(t)] = t.numel() * t.element_size()
        return t

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = call_model(model, inputs)
    del out
    return int(sum(seen.values()))
