"""The estimator registry: one :class:`Estimator` entry per ``method``.

An entry gathers everything the rest of the package needs to know about one method: how it
runs (``run``: a :class:`RankRequest` in, a :class:`~scalable_hrank.result.RankResult` out),
what it costs (working storage and block width for the memory planner, expected products
for plans and progress bars), and which solver state it reports to ``on_block`` (for
checkpoints and resume). :func:`scalable_hrank.estimate_rank`, the planner, ``hrank rank
--method`` and the checkpoint code read the registry, so adding a method is one module that
calls :func:`register_estimator`; docs/CONTRACTS.md has a worked example. ``"auto"`` is not
an entry but a policy over the entries (:mod:`scalable_hrank.estimators.auto`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from scalable_hrank._registry import Registry
from scalable_hrank.operators import CurvatureOperator

if TYPE_CHECKING:
    from scalable_hrank.operators.losses import LossFn
    from scalable_hrank.planner import Plan
    from scalable_hrank.result import RankResult


@dataclass(frozen=True)
class Sizing:
    """One configuration of a method, as the memory planner sizes it.

    Attributes:
        n: Operator size P.
        itemsize: Bytes per number of the product dtype.
        block_size: Columns per block product (k).
        rank: Rank the method's basis must hold (n when unknown).
        probes: SLQ probes (density).
        deflation: Deflation eigenpairs (density).
        max_matvecs: Product budget of the count (density: sets the quadrature's depth).
        device_type: Where the products run (``"cpu"``, ``"cuda"``).
        note: Why this configuration differs from the requested one (None: it does not).
    """

    n: int
    itemsize: int
    block_size: int
    rank: int
    probes: int
    deflation: int
    max_matvecs: int
    device_type: str
    note: str | None = None

    def but(self, **changes: Any) -> Sizing:
        """A copy with ``changes`` applied."""
        return replace(self, **changes)


@dataclass
class RankRequest:
    """Everything an estimator's ``run`` needs; built by :func:`scalable_hrank.estimate_rank`.

    Attributes:
        model, loss, data, params: As passed by the caller (``model`` uncast).
        op: The curvature operator, built on ``model_cast`` (the product dtype).
        model_cast, params_cast: The model in the product dtype and the matching selection
            (build further operators, e.g. the threshold's scale kind, from these).
        kind: The kind's name (``op.spec`` holds its spec).
        rtol, atol: The checked thresholds (None when not given).
        seed: Seed of ``generator`` (fresh estimators of parts reseed from it).
        generator: The CPU generator every random vector comes from.
        max_matvecs: Product budget (None: the method's default).
        block_size: Block width (the planner's for ``auto``).
        certificate_steps: Krylov certificate steps (None: the default).
        memory_bytes: The memory budget given (None: the device's).
        cache: Keep per-batch graphs across products.
        on_block: Per-block callback (checkpoints); receives the method's ``resume_state``.
        resume_state: A state saved from ``on_block`` to resume from.
        options: Method-specific options (``density=`` of estimate_rank).
        shard_basis: Shard the Krylov basis over processes.
        plan: The memory plan.
        notes, extra: Notes and extra fields gathered so far (the result carries them).
        start: ``time.perf_counter()`` at the call (results report the wall time since).
    """

    model: nn.Module
    loss: str | LossFn
    data: Any
    params: Any
    op: CurvatureOperator
    model_cast: nn.Module
    params_cast: Any
    kind: str
    rtol: float | None
    atol: float | None
    seed: int
    generator: torch.Generator
    max_matvecs: int | None
    block_size: int
    certificate_steps: int | None
    memory_bytes: int | None
    cache: bool
    on_block: Callable[[Any], None] | None
    resume_state: Any
    options: dict[str, Any]
    shard_basis: bool
    plan: Plan
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    start: float = 0.0

    def operator(self, kind: str) -> CurvatureOperator:
        """A new operator of ``kind`` on the model, loss, data and parameters of ``op``.

        In the product dtype, with the same graph caching; its products are counted in its
        own ``matvecs``, not in ``op.matvecs``.
        """
        return CurvatureOperator(self.model_cast, self.loss, self.data, kind,
                                 params=self.params_cast, cache=self.cache)


def halved_blocks(sizing: Sizing) -> Iterator[Sizing]:
    """The requested block width, then halved down to 1 (each with a note).

    The configurations of a method whose block width only trades speed for memory.
    """
    k = sizing.block_size
    yield sizing
    while k > 1:
        k = max(1, k // 2)
        yield sizing.but(block_size=k, note=f"block size lowered to {k} to fit")


def _no_products(sizing: Sizing) -> int | None:  # noqa: ARG001 - the registry's signature
    return None


def _one_configuration(sizing: Sizing) -> Iterator[Sizing]:
    yield sizing


@dataclass(frozen=True)
class Estimator:
    """One rank method, as the registry knows it.

    Attributes:
        name: The ``method`` argument.
        run: ``request -> RankResult`` (the method's result builder).
        storage_bytes: Working storage of a configuration in bytes (vectors, bases, dense
            copies); the planner adds the model and the activations of one block product.
        product_width: Columns of one block product of a configuration (the planner counts
            ``A (2 + width)`` bytes of activations, A those of one forward).
        configurations: The configurations the planner tries, most informative first
            (e.g. halved blocks, less deflation), each with a ``note`` if it deviates.
        holds_basis: Storage grows with the rank: the planner finds the largest rank that
            fits (``Plan.max_rank``) and ``auto`` prefers another method over a capped one.
        expected_products: Products a configuration is expected to take at ``sizing.rank``
            (None: not known in advance). An estimate, not a bound.
        max_products: Products the method takes at most on an operator of size n with block
            width b and its default budget (progress bars); None when unknown.
        resume_state: The class of the state ``run`` reports to ``on_block`` and resumes
            from (None: the method does not checkpoint).
        state_to_device: Moves a loaded ``resume_state`` (checkpoints load on the CPU) to a
            device; None when it needs no moving.
    """

    name: str
    run: Callable[[RankRequest], RankResult]
    storage_bytes: Callable[[Sizing], int]
    product_width: Callable[[Sizing], int] = lambda sizing: sizing.block_size
    configurations: Callable[[Sizing], Iterator[Sizing]] = _one_configuration
    holds_basis: bool = False
    expected_products: Callable[[Sizing], int | None] = _no_products
    max_products: Callable[[int, int], int | None] = lambda n, b: None  # noqa: ARG005
    resume_state: type | None = None
    state_to_device: Callable[[Any, torch.device | str], Any] | None = None


#: The methods the package ships (registered by their modules in this package).
BUILTIN_METHODS = ("exact", "sketch", "lanczos", "density")
_ESTIMATORS: Registry[Estimator] = Registry("method", BUILTIN_METHODS, reserved=("auto",))


def register_estimator(entry: Estimator) -> Estimator:
    """Make ``entry`` available as ``method=entry.name`` everywhere; returns it.

    Raises:
        ValueError: The name is ``"auto"`` or already registered.
    """
    return _ESTIMATORS.add(entry.name, entry)


def unregister_estimator(name: str) -> None:
    """Remove an estimator added with :func:`register_estimator` (built-ins stay)."""
    _ESTIMATORS.remove(name)


def method_names() -> tuple[str, ...]:
    """``"auto"``, the built-in methods in :data:`BUILTIN_METHODS` order, then the others."""
    return ("auto", *_ESTIMATORS.names())


def estimator(name: str) -> Estimator:
    """The registry entry of method ``name`` (not ``"auto"``, which is a policy).

    Raises:
        ValueError: No method of that name is registered (the message lists them).
    """
    return _ESTIMATORS.get(name)


def resume_state_classes() -> tuple[type, ...]:
    """The ``resume_state`` classes of the registered estimators (checkpoints rebuild these)."""
    return tuple(e.resume_state for e in _ESTIMATORS.values() if e.resume_state is not None)


def resume_entry(state: Any) -> Estimator | None:
    """The entry whose ``resume_state`` class ``state`` is an instance of, if any."""
    for entry in _ESTIMATORS.values():
        if entry.resume_state is not None and isinstance(state, entry.resume_state):
            return entry
    return None
