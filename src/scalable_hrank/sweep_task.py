"""Running one sweep task: build its problem, solve each kind (checkpointed), add the bounds."""

from __future__ import annotations

import json
import logging
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from scalable_hrank._io import atomic_write_text
from scalable_hrank._validation import parse_size
from scalable_hrank.checkpoint import (
    CheckpointSaver,
    Preempted,
    PreemptionHandler,
    fingerprint,
)
from scalable_hrank.operators import kind_names
from scalable_hrank.sweep import (
    DEFAULTS,
    RANK_DEFAULTS,
    build_problem,
    model_settings,
    result_path,
)

__all__ = ["run_task"]

logger = logging.getLogger(__name__)



@dataclass
class _Problem:
    model: torch.nn.Module
    loss: Any
    data: Any
    params: Any


def _task_problem(s: Mapping[str, Any]) -> _Problem:
    if s.get("model") is None:
        model, data = build_problem(s)
        return _Problem(model, s["loss"], data, None)
    from scalable_hrank.models.problem import build_problem as build_model_problem
    from scalable_hrank.models.problem import check_selection

    problem = build_model_problem(model_settings(s))
    check_selection(problem.model, s.get("params"), problem.unused)
    return _Problem(problem.model, problem.loss, problem.data, s.get("params"))


def _device(name: Any) -> torch.device | None:
    if name in (None, "auto"):
        return torch.device("cuda") if torch.cuda.is_available() else None
    return torch.device(str(name))


def _move(problem: _Problem, device: torch.device | None) -> None:
    if device is None:
        return
    from scalable_hrank.data.loaders import batch_to

    problem.model.to(device)
    data = problem.data
    if isinstance(data, tuple):
        problem.data = batch_to(data, device)
    else:
        problem.data = [batch_to(b, device) for b in data]


def _solve_settings(s: Mapping[str, Any]) -> dict[str, Any]:
    skip = {"task", "sweep", "checkpoint_every", "throttle_seconds", "compare_exact", "device"}
    return {k: v for k, v in s.items() if k not in skip}


class _Throttle:
    """Per-block callback that sleeps, then calls the saver (a testing aid for pre-emption)."""

    def __init__(self, saver: CheckpointSaver, seconds: float) -> None:
        self.saver, self.seconds = saver, seconds

    def __call__(self, state: Any) -> None:
        if self.seconds > 0:
            time.sleep(self.seconds)
        self.saver(state)


def _solve(s: Mapping[str, Any], problem: _Problem, kind: str, out: Path, suffix: str,
           handler: PreemptionHandler | None, savers: list[CheckpointSaver]) -> tuple[Any, bool]:
    """One kind of one task: exact, or estimated with a checkpoint; and whether it resumed."""
    import scalable_hrank as hr
    from scalable_hrank.models.problem import dtype_of

    common = {"rtol": s["rtol"], "atol": s["atol"], "params": problem.params}
    if s["method"] == "exact":
        return hr.exact_rank(problem.model, problem.loss, problem.data, kind, **common), False
    fp = fingerprint(problem.model.parameters(), problem.data,
                     {**_solve_settings(s), "kind": kind})
    saver = CheckpointSaver(out / f"task-{int(s.get('task', 0)):05d}{suffix}.ckpt", fp,
                            every_seconds=float(s["checkpoint_every"]), handler=handler)
    savers.append(saver)
    resume = saver.load()
    if resume is not None:
        from scalable_hrank.cli.progress import products_done

        print(f"hrank sweep: resuming from {saver.path} ({products_done(resume)} products done)",
              flush=True)
    density = {}
    if s.get("probes"):
        density["num_probes"] = int(s["probes"])
    if s.get("parts_bound"):
        density["bound_from_parts"] = True
    res = hr.estimate_rank(
        problem.model, problem.loss, problem.data, kind, method=s["method"],
        seed=int(s["seed"]), max_matvecs=s["max_matvecs"], block_size=int(s["block_size"]),
        dtype=dtype_of(s.get("dtype", "float64")), memory_bytes=parse_size(s.get("memory")),
        on_block=_Throttle(saver, float(s["throttle_seconds"])), resume_state=resume,
        density=density or None, **common)
    return res, resume is not None


def _bounds(problem: _Problem, kinds: list[str]) -> dict[str, Any]:
    from scalable_hrank.block_bounds import block_bounds

    found = block_bounds(problem.model, problem.loss, problem.data, problem.params, kinds)
    return {k: None if b is None else {"bound": b.value, "reason": b.reason}
            for k, b in found.items()}


def run_task(settings: Mapping[str, Any], out_dir: str | Path, *,
             handler: PreemptionHandler | None = None) -> dict[str, Any]:
    """Run one task and write its record ``task-<i>.json`` atomically into ``out_dir``.

    ``method="exact"`` calls :func:`scalable_hrank.exact_rank`; other methods call
    :func:`scalable_hrank.estimate_rank` with a checkpoint ``task-<i>[.<kind>].ckpt`` (saved
    every ``checkpoint_every`` seconds and on a pre-emption signal caught by ``handler``),
    resumed when present and removed after the record is written. ``kind="all"`` runs the
    three kinds in turn. Cost: the rank computations, plus one forward pass for the
    formula bounds (:mod:`scalable_hrank.block_bounds`).

    Args:
        settings: One task's settings (:meth:`SweepConfig.task`).
        out_dir: Output folder (created).
        handler: Active pre-emption handler, or None.

    Returns:
        The record: ``task``, ``status`` ("ok" or "failed"), ``settings``, ``results`` (kind
        -> ``RankResult.to_dict`` without eigenvalues), ``result`` (the same, for a single
        kind), ``bounds`` (kind -> formula bound and reason, or None), ``exact_ranks`` /
        ``exact_rank`` (when computed), ``error`` (when failed), ``seconds``.

    Raises:
        Preempted: After saving the checkpoint, when ``handler`` caught a signal (no record
            is written; rerun the task to resume).
    """
    import scalable_hrank as hr

    defaults = RANK_DEFAULTS if settings.get("model") is not None else DEFAULTS
    s = {**defaults, **settings}
    index = int(s.get("task", 0))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {"task": index, "sweep": s.get("sweep"), "settings": dict(settings)}
    kinds = list(kind_names()) if s["kind"] == "all" else [s["kind"]]
    savers: list[CheckpointSaver] = []
    t0 = time.perf_counter()
    try:
        problem = _task_problem(s)
        _move(problem, _device(s.get("device")))
        results, exact, resumed = {}, {}, False
        for kind in kinds:
            suffix = f".{kind}" if len(kinds) > 1 else ""
            res, again = _solve(s, problem, kind, out, suffix, handler, savers)
            resumed = resumed or again
            results[kind] = res.to_dict(eigenvalues=False)
            if s["method"] == "exact":
                exact[kind] = res.rank
            elif s["compare_exact"]:
                exact[kind] = hr.exact_rank(problem.model, problem.loss, problem.data, kind,
                                            rtol=s["rtol"], atol=s["atol"],
                                            params=problem.params).rank
        record.update(status="ok", results=results, bounds=_bounds(problem, kinds),
                      resumed=resumed)
        if exact:
            record["exact_ranks"] = exact
        if len(kinds) == 1:
            record["result"] = results[kinds[0]]
            if exact:
                record["exact_rank"] = exact[kinds[0]]
    except Preempted:
        raise
    except Exception as exc:  # noqa: BLE001 - a failed task is recorded for `hrank collect`
        logger.exception("task %d failed", index)
        record.update(status="failed", error=f"{type(exc).__name__}: {exc}",
                      traceback=traceback.format_exc())
    record["seconds"] = time.perf_counter() - t0
    atomic_write_text(result_path(out, index), json.dumps(record, indent=2, default=str) + "\n")
    if record["status"] == "ok":
        for saver in savers:
            saver.remove()
    return record
