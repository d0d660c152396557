"""A user-supplied loss callable defines all three matrices, H_L, H_O and H_F.

The reference here is built only from torch.func on the callable itself (``jacfwd(jacrev)``),
never from scalable_hrank.operators: H_L is the Hessian of the mean loss in the parameters,
H_O = J^T Q J with Q the Hessian of the loss in the outputs, and H_F the Hessian of
<stopgrad(dl/dF), F(theta)>. The loss is none of the built-ins: a pseudo-Huber term plus a
coupling of the outputs, so that Q is neither the identity nor diagonal and varies per sample.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, jacfwd, jacrev

import scalable_hrank as hr

KINDS = ("loss", "outer", "functional")
EPS64 = float(torch.finfo(torch.float64).eps)


def coupled_huber(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over samples of sum_k (sqrt(1 + z_k^2) - 1) + 0.3 (sum_k z_k)^2, z = F - y."""
    z = outputs - targets
    per_sample = (torch.sqrt(1.0 + z * z) - 1.0).sum(-1) + 0.3 * z.sum(-1) ** 2
    return per_sample.sum() / outputs.shape[0]


def _model(activation: type[nn.Module], seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 4), activation(), nn.Linear(4, 3)).double()


def _data(n: int = 9, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 5, generator=g, dtype=torch.float64),
            torch.randn(n, 3, generator=g, dtype=torch.float64))


def dense_reference(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """H_L, H_O, H_F of ``coupled_huber`` (float64, P x P), each computed on its own."""
    names = [k for k, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def outputs(t: torch.Tensor) -> torch.Tensor:
        parts, i = {}, 0
        for name, shape in zip(names, shapes, strict=True):
            size = math.prod(shape)
            parts[name] = t[i:i + size].reshape(shape)
            i += size
        return functional_call(model, parts, (x,))

    h_l = jacfwd(jacrev(lambda t: coupled_huber(outputs(t), y)))(theta)
    out = outputs(theta).detach()
    jac = jacrev(outputs)(theta)                                     # (N, K, P)
    q = jacfwd(jacrev(lambda f: coupled_huber(f, y)))(out)           # (N, K, N, K)
    h_o = torch.einsum("akp,akbl,blq->pq", jac, q, jac)
    res = grad(lambda f: coupled_huber(f, y))(out)                   # dl/dF, 1/N included
    h_f = jacfwd(jacrev(lambda t: (res * outputs(t)).sum()))(theta)
    return {"loss": h_l, "outer": h_o, "functional": h_f}


def _reference_rank(h: torch.Tensor, scale: float) -> int:
    eig = torch.linalg.eigvalsh(0.5 * (h + h.T))
    return int((eig.abs() > scale * h.shape[0] * EPS64).sum())


@pytest.mark.parametrize("kind", KINDS)
def test_callable_loss_operator_equals_dense_reference(kind: str) -> None:
    model = _model(nn.Tanh, seed=0)
    x, y = _data()
    ref = dense_reference(model, x, y)
    assert float((ref["loss"] - ref["outer"] - ref["functional"]).norm()) < 1e-12 * float(
        ref["loss"].norm())  # the reference is consistent: H_L = H_O + H_F
    assert float(ref["functional"].norm()) > 1e-2 * float(ref["loss"].norm())  # H_F matters
    got = hr.curvature_operator(model, coupled_huber, (x, y), kind).to_dense()
    assert float((got - ref[kind]).norm()) <= 1e-10 * float(ref[kind].norm())


@pytest.mark.parametrize("kind", KINDS)
def test_callable_loss_ranks_match_dense_reference(kind: str) -> None:
    # a linear chain 5 -> 4 -> 3 with biases: rank-deficient H_O and H_F with a clear gap
    model = _model(nn.Identity, seed=2)
    x, y = _data(n=12, seed=3)
    ref = dense_reference(model, x, y)
    scale = float(torch.linalg.eigvalsh(ref["loss"]).abs().max())
    expected = _reference_rank(ref[kind], scale)
    assert 0 < expected < ref[kind].shape[0]
    # Q has full rank K here, so the formulas hold with K_f = K, as for mse (18, 24, 36)
    assert expected == hr.predict_rank(model, loss="mse", data=(x, y)).rank(kind)
    exact = hr.exact_rank(model, coupled_huber, (x, y), kind)
    sketch = hr.estimate_rank(model, coupled_huber, (x, y), kind, method="sketch", seed=0)
    assert exact.rank == expected
    assert sketch.certified and sketch.rank == expected
