"""Independent dense float64 reference for Hessian ranks (tests only).

Built directly on torch.func, without scalable_hrank.operators, so the package's operators can be
tested against it. Second derivatives are forward-over-reverse, ``jacfwd(grad(f))``, not
``torch.func.hessian`` (= ``jacfwd(jacrev(f))``): in torch 2.13 the vmapped reverse pass inside
``jacrev`` gets the Hessian through ``nn.LayerNorm`` wrong by a few percent, which
``central_difference_hessian`` (differences of gradients) exposes. Attention runs on the math
SDPA backend (the only one with forward-mode derivatives of its backward).

Losses (means over the N samples):
    mse:            1/2 ||F(x) - y||^2,             Q = I
    cross_entropy:  -log softmax(F(x))[y],          Q = diag(pi) - pi pi^T   (y: class indices)
    logcosh:        sum_k log cosh(F(x)_k - y_k),   Q = diag(1 - tanh^2(F - y))
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, jacfwd, jacrev
from torch.nn.attention import SDPBackend, sdpa_kernel

EPS64 = float(torch.finfo(torch.float64).eps)
LOSSES = ("mse", "cross_entropy", "logcosh")


# ----------------------------------------------------------------------------- losses


def _logcosh(z: torch.Tensor) -> torch.Tensor:
    # log cosh z = z + softplus(-2 z) - log 2: no overflow, and smooth at z = 0 (a form with
    # |z| gets a zero second derivative from autograd at z = 0 exactly)
    return z + nn.functional.softplus(-2 * z) - math.log(2.0)


def per_sample_loss(loss: str, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Loss per sample, shape (N,), for outputs (N, K)."""
    if loss == "mse":
        return 0.5 * ((out - y) ** 2).sum(-1)
    if loss == "cross_entropy":
        logp = torch.log_softmax(out, dim=-1)
        if y.dtype in (torch.int64, torch.int32):
            return -logp.gather(-1, y.long().unsqueeze(-1)).squeeze(-1)
        return -(y * logp).sum(-1)
    if loss == "logcosh":
        return _logcosh(out - y).sum(-1)
    raise ValueError(f"unknown loss {loss!r}")


def output_hessians(loss: str, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Output-space loss Hessians Q_n, shape (N, K, K), closed form."""
    n, k = out.shape
    if loss == "mse":
        return torch.eye(k, dtype=out.dtype).expand(n, k, k).clone()
    if loss == "cross_entropy":
        pi = torch.softmax(out, dim=-1)
        return torch.diag_embed(pi) - pi.unsqueeze(-1) * pi.unsqueeze(-2)
    if loss == "logcosh":
        return torch.diag_embed(1 - torch.tanh(out - y) ** 2)
    raise ValueError(f"unknown loss {loss!r}")


def residuals(loss: str, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """dl/dF per sample, shape (N, K)."""
    if loss == "mse":
        return out - y
    if loss == "cross_entropy":
        pi = torch.softmax(out, dim=-1)
        target = y if y.is_floating_point() else nn.functional.one_hot(y, out.shape[1]).to(pi)
        return pi - target
    if loss == "logcosh":
        return torch.tanh(out - y)
    raise ValueError(f"unknown loss {loss!r}")


# ----------------------------------------------------------------------------- curvature


def _flat(model: nn.Module) -> tuple[torch.Tensor, list[tuple[str, torch.Size]]]:
    named = [(k, v) for k, v in model.named_parameters() if v.requires_grad]
    theta = torch.cat([v.detach().reshape(-1) for _, v in named]).to(torch.float64)
    return theta, [(k, v.shape) for k, v in named]


def _unflatten(theta: torch.Tensor, spec: list[tuple[str, torch.Size]]) -> dict[str, torch.Tensor]:
    out, i = {}, 0
    for name, shape in spec:
        size = math.prod(shape)
        out[name] = theta[i:i + size].reshape(shape)
        i += size
    return out


def hessian_of(f, theta: torch.Tensor) -> torch.Tensor:
    """Dense Hessian of a scalar f at theta, forward-over-reverse (``jacfwd(grad(f))``)."""
    with sdpa_kernel([SDPBackend.MATH]):
        return jacfwd(grad(f))(theta)


def central_difference_hessian(f, theta: torch.Tensor, step: float = 1e-5) -> torch.Tensor:
    """Hessian by central differences of gradients, column j = (g(t + h e_j) - g(t - h e_j)) / 2h.

    Independent of any second-derivative rule of autograd; error O(h^2) plus rounding
    O(eps / h), about 1e-9 relative at h = 1e-5 in float64.
    """
    g = grad(f)
    eye = torch.eye(theta.numel(), dtype=theta.dtype)
    cols = [(g(theta + step * e) - g(theta - step * e)) / (2 * step) for e in eye]
    return torch.stack(cols, dim=1)


def flat_loss(model: nn.Module, loss: str, X, Y: torch.Tensor):
    """(theta, f): the flat float64 parameters and theta -> mean loss over (X, Y).

    X may be a Tensor (model(X)) or a tuple (model(*X)).
    """
    theta, spec = _flat(model)
    args = X if isinstance(X, tuple) else (X,)

    def f(t: torch.Tensor) -> torch.Tensor:
        return per_sample_loss(loss, functional_call(model, _unflatten(t, spec), args), Y).mean()

    return theta, f


def dense_curvatures(model: nn.Module, loss: str, X, Y: torch.Tensor
                     ) -> dict[str, torch.Tensor]:
    """Dense H_L, H_O, H_F (float64, n x n) of the mean loss over (X, Y) at the model's parameters.

    H_L = :func:`hessian_of` the mean loss; H_O = sum_n J_n^T Q_n J_n / N with J from jacrev
    (first order) and Q_n in closed form; H_F = :func:`hessian_of` the mean over n of
    <residual_n, F(x_n)> with the residual dl/dF held fixed (closed form). Three independent
    computations: ``H_L - H_O - H_F`` is a consistency check, not an input. (Subtracting
    instead, H_F = H_L - H_O, leaves rounding noise above the rank threshold in some cases,
    e.g. a one-layer log-cosh net where H_F is exactly zero.) X may be a Tensor or a tuple
    of positional inputs; outputs must be (N, K).
    """
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}")
    model = model.to(torch.float64)
    args = tuple(a.to(torch.float64) if a.is_floating_point() else a
                 for a in (X if isinstance(X, tuple) else (X,)))
    Y = Y if not Y.is_floating_point() else Y.to(torch.float64)
    theta, spec = _flat(model)
    n = Y.shape[0]

    def outputs(t: torch.Tensor) -> torch.Tensor:
        with sdpa_kernel([SDPBackend.MATH]):
            return functional_call(model, _unflatten(t, spec), args)

    def mean_loss(t: torch.Tensor) -> torch.Tensor:
        return per_sample_loss(loss, outputs(t), Y).mean()

    h_l = hessian_of(mean_loss, theta)
    out = outputs(theta).detach()
    jac = jacrev(outputs)(theta)                       # (N, K, n)
    q = output_hessians(loss, out, Y)                  # (N, K, K)
    h_o = torch.einsum("nkp,nkl,nlq->pq", jac, q, jac) / n
    res = residuals(loss, out, Y).detach()

    def weighted_outputs(t: torch.Tensor) -> torch.Tensor:
        return (res * outputs(t)).sum() / n

    h_f = hessian_of(weighted_outputs, theta)
    return {kind: 0.5 * (h + h.T) for kind, h in
            (("loss", h_l), ("outer", h_o), ("functional", h_f))}


def sigma_max(h: torch.Tensor) -> float:
    """Spectral norm of a symmetric matrix."""
    return float(torch.linalg.eigvalsh(h).abs().max()) if h.numel() else 0.0


def reference_rank(h: torch.Tensor, scale: float | None = None) -> int:
    """Count eigenvalues with |lambda| > scale * n * eps64 (scale defaults to sigma_max(h))."""
    n = h.shape[0]
    if n == 0:
        return 0
    eig = torch.linalg.eigvalsh(0.5 * (h + h.T))
    if scale is None:
        scale = float(eig.abs().max())
    return int((eig.abs() > scale * n * EPS64).sum())


def reference_ranks(curv: dict[str, torch.Tensor]) -> dict[str, int]:
    """Ranks of the three matrices of :func:`dense_curvatures`, all against sigma_max(H_L)."""
    scale = sigma_max(curv["loss"])
    return {kind: reference_rank(h, scale) for kind, h in curv.items()}


def spectral_gap(h: torch.Tensor, rank: int) -> float:
    """Ratio |lambda|_(rank) / |lambda|_(rank+1) of sorted magnitudes (inf if nothing below)."""
    mags = torch.linalg.eigvalsh(0.5 * (h + h.T)).abs().sort(descending=True).values
    if rank == 0 or rank >= mags.numel():
        return math.inf
    lo = float(mags[rank])
    return math.inf if lo == 0 else float(mags[rank - 1]) / lo


# ----------------------------------------------------------------------------- builders


def linear_mlp(widths, bias: bool = False, activation=None, seed: int = 0) -> nn.Sequential:
    """nn.Sequential of Linear layers [d, M_1, ..., K], Glorot-uniform weights, float64.

    Biases (if any) are drawn N(0, 0.1^2) so the point stays generic. ``activation`` is a module
    class (e.g. nn.Tanh) inserted between consecutive linear layers.
    """
    gen = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    pairs = list(zip(widths[:-1], widths[1:], strict=True))
    for i, (a, b) in enumerate(pairs):
        lin = nn.Linear(a, b, bias=bias, dtype=torch.float64)
        bound = math.sqrt(6.0 / (a + b))
        with torch.no_grad():
            lin.weight.copy_((torch.rand(b, a, generator=gen, dtype=torch.float64) * 2 - 1)
                             * bound)
            if bias:
                lin.bias.copy_(0.1 * torch.randn(b, generator=gen, dtype=torch.float64))
        layers.append(lin)
        if activation is not None and i < len(pairs) - 1:
            layers.append(activation())
    return nn.Sequential(*layers)


class NormedMLP(nn.Module):
    """Linear -> LayerNorm -> tanh -> Linear: (N, d) -> (N, K)."""

    def __init__(self, d: int, width: int, k: int) -> None:
        super().__init__()
        self.inp = nn.Linear(d, width)
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.norm(self.inp(x))))


class TinyAttention(nn.Module):
    """Embed -> LayerNorm -> nn.MultiheadAttention + residual -> LayerNorm -> mean over tokens ->
    Linear: (N, T, d) -> (N, K). ``need_weights=None`` calls the attention the default way;
    ``False`` takes torch's scaled_dot_product_attention path."""

    def __init__(self, d: int, embed: int, heads: int, k: int,
                 need_weights: bool | None = None) -> None:
        super().__init__()
        self.embed = nn.Linear(d, embed)
        self.norm1 = nn.LayerNorm(embed)
        self.attn = nn.MultiheadAttention(embed, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(embed)
        self.head = nn.Linear(embed, k)
        self.need_weights = need_weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(self.embed(x))
        kw = {} if self.need_weights is None else {"need_weights": self.need_weights}
        h = self.norm2(h + self.attn(h, h, h, **kw)[0])
        return self.head(h.mean(dim=1))


def perturbed(model: nn.Module, seed: int = 0, scale: float = 0.3) -> nn.Module:
    """``model`` in float64 eval mode with every parameter moved by N(0, scale^2): LayerNorm's
    unit weights and zero biases are a special point (its Hessian blocks degenerate there)."""
    gen = torch.Generator().manual_seed(seed)
    model = model.to(torch.float64).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=torch.float64))
    return model


def _targets(labels: torch.Tensor, k: int, loss: str) -> torch.Tensor:
    if loss == "cross_entropy":
        return labels
    return nn.functional.one_hot(labels, k).to(torch.float64)


def gaussian_data(N: int, d: int, K: int, loss: str, seed: int = 0, input_rank: int | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian inputs (N, d) float64 and balanced random-class targets.

    Targets: class indices (N,) int64 for cross_entropy, one-hot (N, K) float64 otherwise.
    Labels are a random permutation of 0, 1, ..., K-1, 0, 1, ... so that min(N, K) classes
    occur: with i.i.d. labels a missing class lowers rank(Y), hence the residual rank s below
    the generic min(r, K_f) (seen: [10, 6, 1, 2, 6], N = 8, rank(H_F) 24 instead of 26).
    ``input_rank`` < min(N, d) builds X = A B from Gaussian factors (N, r) and (r, d).
    """
    gen = torch.Generator().manual_seed(seed)
    if input_rank is None or input_rank >= min(N, d):
        X = torch.randn(N, d, generator=gen, dtype=torch.float64)
    else:
        A = torch.randn(N, input_rank, generator=gen, dtype=torch.float64)
        B = torch.randn(input_rank, d, generator=gen, dtype=torch.float64)
        X = A @ B / math.sqrt(input_rank)
    labels = (torch.arange(N) % K)[torch.randperm(N, generator=gen)]
    return X, _targets(labels, K, loss)


def digits_data(N: int, loss: str = "cross_entropy") -> tuple[torch.Tensor, torch.Tensor]:
    """First N sklearn 8x8 digits, pixels scaled to [0, 1] (X: (N, 64) float64), 10 classes.

    Measured: rank(X) = 53 at N = 100 (41 at N = 41); the paper's r = 41 at N = 100 refers to a
    different downscaled MNIST.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    X = torch.from_numpy(np.asarray(digits.data[:N], dtype=np.float64) / 16.0)
    labels = torch.from_numpy(np.asarray(digits.target[:N], dtype=np.int64))
    return X, _targets(labels, 10, loss)


# ----------------------------------------------------------------------------- the paper's table

#: The paper's table of examples (docs/theory.md#rank-formulas):
#: (d, hidden, K, N, r, loss, bias, p, rank H_O, rank H_F, rank H_L).
PAPER_TABLE: tuple[tuple, ...] = (
    (25, (5, 10), 10, 50, 25, "mse", False, 275, 150, 175, 250),
    (25, (5, 10), 10, 50, 25, "cross_entropy", False, 275, 145, 165, 245),
    (64, (4, 4), 10, 100, 41, "cross_entropy", False, 312, 184, 88, 216),
    (64, (12, 12), 10, 100, 41, "cross_entropy", False, 1032, 369, 351, 639),
    (16, (3, 8), 4, 40, 16, "mse", False, 104, 51, 63, 99),
    (16, (8, 8), 4, 10, 10, "mse", False, 224, 40, 112, 136),
    (16, (8, 8), 10, 5, 5, "mse", False, 272, 50, 135, 160),
    (16, (8, 8), 10, 5, 5, "cross_entropy", False, 272, 45, 135, 155),
    (10, (2, 2, 2, 2), 3, 30, 10, "mse", False, 38, 22, 24, 38),
    (10, (6, 1, 6), 3, 30, 10, "mse", False, 90, 12, 28, 35),
    (10, (6, 1, 6), 3, 30, 10, "cross_entropy", False, 90, 11, 26, 34),
    (12, (20, 20), 3, 40, 12, "mse", False, 700, 36, 231, 258),
    (16, (20,), 4, 40, 16, "mse", False, 400, 64, 160, 208),
    (16, (4, 4), 4, 40, 16, "mse", False, 96, 64, 48, 96),
    (16, (), 4, 40, 16, "mse", False, 64, 64, 0, 64),
    (16, (8, 8), 4, 40, 16, "logcosh", False, 224, 64, 112, 160),
    (16, (8, 8), 4, 40, 16, "mse", True, 244, 68, 116, 172),
    (16, (8, 8), 4, 40, 16, "cross_entropy", True, 244, 51, 90, 135),
    (16, (8, 2), 4, 40, 16, "mse", True, 166, 40, 46, 76),
)


def table_id(row: tuple) -> str:
    """Readable pytest id of a PAPER_TABLE row."""
    d, hidden, k, n, r, loss, bias = row[:7]
    h = "x".join(map(str, hidden)) or "none"
    short = {"mse": "mse", "cross_entropy": "ce", "logcosh": "cosh"}[loss]
    return f"d{d}-h{h}-K{k}-N{n}-r{r}-{short}" + ("-bias" if bias else "")
