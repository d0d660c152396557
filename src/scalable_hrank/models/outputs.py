"""Pick one output of a model that returns several (a dict key other than ``"logits"``)."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn
from torch.func import functional_call

from scalable_hrank.operators.outputs import model_outputs

__all__ = ["SelectOutput"]


class SelectOutput(nn.Module):
    """``model`` whose forward returns ``model(...)[key]`` (unwrapped as the operators do).

    The wrapped model's children and direct parameters are registered on this module, so
    parameter names stay the model's own (``encoder.layer.0...``, not ``model.encoder...``)
    and ``params=`` globs written for the model keep working.

    Args:
        model: Any module returning a Mapping (dict, ``ModelOutput``), a tuple or a Tensor.
        key: The Mapping entry the loss acts on (e.g. ``"pooler_output"``).
    """

    def __init__(self, model: nn.Module, key: str) -> None:
        super().__init__()
        object.__setattr__(self, "_wrapped", model)
        for name, child in model.named_children():
            self.add_module(name, child)
        for name, p in model.named_parameters(recurse=False):
            self.register_parameter(name, p)
        for name, b in model.named_buffers(recurse=False):
            self.register_buffer(name, b)
        self._direct = [n for n, _ in model.named_parameters(recurse=False)] + [
            n for n, _ in model.named_buffers(recurse=False)]
        self.key = key

    def train(self, mode: bool = True) -> SelectOutput:  # noqa: D102 - as nn.Module.train
        super().train(mode)
        self._wrapped.train(mode)
        return self

    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        """The ``key`` output of the wrapped model, (N, K)."""
        if not self._direct:
            return model_outputs(self._wrapped(*args, **kwargs), self.key)
        # the model's own tensors live on this module (where functional_call swaps them)
        own = {n: getattr(self, n) for n in self._direct}
        return model_outputs(functional_call(self._wrapped, own, args, kwargs), self.key)
