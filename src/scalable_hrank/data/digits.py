"""scikit-learn's 8x8 digits (real images shipped with scikit-learn) and Gaussian data."""

from __future__ import annotations

import torch
from torch import Tensor


def _targets(labels: Tensor, num_classes: int, loss: str, dtype: torch.dtype) -> Tensor:
    if loss == "cross_entropy":
        return labels.long()
    return torch.nn.functional.one_hot(labels.long(), num_classes).to(dtype)


def digits(num_samples: int = 100, *, loss: str = "cross_entropy",
           dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    """The first ``num_samples`` digits: inputs (N, 64) scaled to [0, 1], targets.

    Targets: class indices (N,) for cross-entropy, one-hot (N, 10) otherwise. Some pixels are
    zero in every image, so rank(X) < 64 (53 at N = 100).
    """
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    if not 1 <= num_samples <= len(x):
        msg = f"num_samples must be in [1, {len(x)}]; got {num_samples}"
        raise ValueError(msg)
    inputs = torch.as_tensor(x[:num_samples], dtype=dtype) / 16.0
    return inputs, _targets(torch.as_tensor(y[:num_samples]), 10, loss, dtype)


def gaussian(num_samples: int, dim: int, num_classes: int, *, loss: str = "mse",
             seed: int = 0, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    """Standard Gaussian inputs (N, d) and random class targets (indices or one-hot)."""
    g = torch.Generator().manual_seed(seed)
    inputs = torch.randn(num_samples, dim, generator=g, dtype=dtype)
    labels = torch.randint(0, num_classes, (num_samples,), generator=g)
    return inputs, _targets(labels, num_classes, loss, dtype)
