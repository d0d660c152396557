"""Default tasks: what a model outputs, which loss it gets and how targets are made.

Every task makes ``model(**inputs)`` return one Tensor ``F`` of shape (M, K) and pairs it with
a built-in loss name, so all three Hessian kinds (``"loss"``, ``"outer"``, ``"functional"``)
are defined with closed-form output Hessians (a callable loss defines all three too).

* ``embedding``: F = mean-pooled (mask-weighted) last hidden state, L2-normalised, (N, D);
  targets (N, D) float, fixed random unit vectors (seeded); loss ``mse``.
* ``classification``: F = logits (N, K); targets (N,) int64; loss ``cross_entropy``.
* ``masked_lm``: F = logits at the masked positions (M, V); targets (M,) int64, the original
  tokens; loss ``cross_entropy`` (the standard MLM loss: mean over masked tokens).
* ``causal_lm``: F = logits at positions whose next token is real (M, V); targets (M,) int64,
  the next tokens; loss ``cross_entropy``.

The embedding objective (sentence-embedding regression): L = 1/N sum_i 1/2 ||e(x_i) - y_i||^2
with e the normalised mean-pooled embedding and y_i a fixed unit vector drawn from a seeded
Gaussian. Since ||e|| = ||y|| = 1, L = 1/N sum_i (1 - <e(x_i), y_i>): a cosine-similarity
regression. The output-space loss Hessian is the identity, so H_O = 1/N sum_i J_i^T J_i (rank
at most N (D - 1): the normalisation removes the radial direction) and H_F = 1/N sum_i
sum_k r_ik d^2 e_k/dtheta^2 with residuals r = e - y of norm about sqrt(2) (targets are almost
orthogonal to e in D = 384 dimensions), so the functional part is far from negligible.
See docs/minilm.md.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from scalable_hrank.operators.outputs import differentiable_attention

__all__ = ["Task", "TASK_NAMES", "call_model"]

#: Tasks understood by :class:`Task` and ``load_model_spec(task=...)``.
TASK_NAMES = ("embedding", "classification", "masked_lm", "causal_lm")

Batch = tuple[Any, Tensor]


def call_model(model: Callable[..., Tensor], inputs: Any) -> Tensor:
    """Call ``model`` the way the operators do: Tensor -> m(x), tuple -> m(*x), Mapping -> m(**x).

    Args:
        model: The module.
        inputs: A Tensor, a tuple/list of positional inputs, or a Mapping of keyword inputs.

    Returns:
        The model output. Attention runs on the math SDPA backend, as in the products.
    """
    with differentiable_attention():
        if isinstance(inputs, Mapping):
            return model(**inputs)
        if isinstance(inputs, (tuple, list)):
            return model(*inputs)
        return model(inputs)


@dataclass(frozen=True)
class Task:
    """How to turn tokenized text into ``(inputs, targets)`` for one model type.

    Attributes:
        name: One of :data:`TASK_NAMES`.
        loss: The built-in loss name the task uses.
        output_dim: D for embeddings, K for classification, V for language models.
        mask_token_id: The [MASK] id (masked_lm only).
        mask_prob: Fraction of real, non-special tokens masked per sentence (at least one).
        special_ids: Token ids never masked (CLS, SEP, PAD, ...).
    """

    name: str
    loss: str
    output_dim: int
    mask_token_id: int | None = None
    mask_prob: float = 0.15
    special_ids: tuple[int, ...] = ()

    def make_batch(self, encoded: Mapping[str, Tensor], *, generator: torch.Generator,
                   labels: Tensor | None = None) -> Batch:
        """Build one ``(inputs, targets)`` batch from tokenizer output.

        Args:
            encoded: ``input_ids`` (N, T) int64, ``attention_mask`` (N, T) and optionally
                ``token_type_ids`` (N, T).
            generator: CPU generator for the random targets / masked positions.
            labels: Class labels (N,) int64 for classification; random when None.

        Returns:
            ``(inputs, targets)``: inputs a dict for ``model(**inputs)``; targets as in the
            module table.

        Raises:
            ValueError: If the task needs something ``encoded`` lacks.
        """
        inputs = {k: v for k, v in encoded.items()
                  if k in ("input_ids", "attention_mask", "token_type_ids")}
        ids = inputs["input_ids"]
        n = ids.shape[0]
        if "attention_mask" not in inputs:
            inputs["attention_mask"] = torch.ones_like(ids)
        if self.name == "embedding":
            y = torch.randn(n, self.output_dim, generator=generator, dtype=torch.float64)
            y = (y / y.norm(dim=1, keepdim=True)).to(torch.float32)
            return inputs, y
        if self.name == "classification":
            if labels is None:
                labels = torch.randint(self.output_dim, (n,), generator=generator)
            return inputs, labels.to(torch.int64)
        if self.name == "masked_lm":
            if self.mask_token_id is None:
                msg = "masked_lm needs a tokenizer with a mask token"
                raise ValueError(msg)
            real = inputs["attention_mask"].bool()
            for sid in self.special_ids:
                real &= ids != sid
            u = torch.rand(ids.shape, generator=generator)
            pick = real & (u < self.mask_prob)
            # At least one masked token per sentence with a real token: the largest-u one.
            forced = torch.where(real, u, torch.full_like(u, -1.0)).argmax(dim=1)
            has_real = real.any(dim=1)
            pick[torch.arange(n)[has_real], forced[has_real]] = True
            targets = ids[pick].clone()
            masked = ids.clone()
            masked[pick] = self.mask_token_id
            inputs["input_ids"] = masked
            inputs["label_mask"] = pick
            return inputs, targets
        if self.name == "causal_lm":
            am = inputs["attention_mask"].bool()
            keep = am[:, 1:] & am[:, :-1]
            return inputs, ids[:, 1:][keep].clone()
        msg = f"task must be one of {TASK_NAMES}; got {self.name!r}"
        raise ValueError(msg)


def select_outputs(task: str, out: Any, inputs: Mapping[str, Tensor], *,
                   pooling: str = "mean", normalize: bool = True) -> Tensor:
    """Reduce a Hugging Face model output to the task's (M, K) tensor (see the module table).

    Args:
        task: One of :data:`TASK_NAMES`.
        out: The Hugging Face output object (``last_hidden_state`` or ``logits``).
        inputs: The inputs dict (``attention_mask``, ``label_mask``).
        pooling: ``"mean"`` (mask-weighted) or ``"cls"`` for embeddings.
        normalize: L2-normalise embeddings.

    Returns:
        (N, D) embeddings, (N, K) logits or (M, V) token logits.

    Raises:
        ValueError: If ``task`` is unknown.
    """
    if task == "embedding":
        h = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        if pooling == "cls":
            e = h[:, 0]
        else:
            m = inputs["attention_mask"].to(h.dtype).unsqueeze(-1)
            e = (h * m).sum(dim=1) / m.sum(dim=1).clamp_min(1e-9)
        if normalize:
            e = e / e.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return e
    logits = out.logits if hasattr(out, "logits") else out[0]
    if task == "classification":
        return logits
    if task == "masked_lm":
        return logits[inputs["label_mask"]]
    if task == "causal_lm":
        am = inputs["attention_mask"].bool()
        keep = am[:, 1:] & am[:, :-1]
        return logits[:, :-1][keep]
    msg = f"task must be one of {TASK_NAMES}; got {task!r}"
    raise ValueError(msg)
