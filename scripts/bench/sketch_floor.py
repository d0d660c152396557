"""The certified sketch at ranks in the thousands against its linear-algebra floor.

Deep linear MLPs without biases, mse loss, Gaussian inputs and targets, float64; the rank is
fixed by the closed-form formulas (e.g. [1500, 64, 64, 10] with N = 64: rank(H_L) = 3000 at
n = 100,736). One run measures, round-robin on the same threads:

- the floor, two parts: (a) the seconds the sketch itself spends inside the operator's
  products, and (b) one classical Gram-Schmidt pass of an n x r basis against itself in blocks
  of 64 (``C = Q[:, :k]^T X``, ``X -= Q[:, :k] C`` for k = 64, 128, ..., r): the arithmetic a
  fully reorthogonalized basis cannot avoid, at this machine's GEMM rate;
- ``estimate_rank(method="sketch")`` end to end, with a cProfile breakdown by part.

The ratio ``sketch / floor`` is what the benchmark reports, in wall time and in this process's
CPU time (one thread, so CPU time is wall time minus the waits that other processes' load
causes: on a shared machine the CPU-time ratio is the steadier one). Peak memory is the process's
resident-set peak over the sketch run against the n x basis float64 array; with ``--device
cuda`` the basis lives on the GPU, the products are timed to their completion
(``torch.cuda.synchronize``) and the peak is ``torch.cuda.max_memory_allocated`` over the run.

    python scripts/bench/sketch_floor.py --widths 750,64,64,10 --samples 8      # r = 2540
    python scripts/bench/sketch_floor.py --widths 1500,64,64,10 --samples 64    # r = 3000
    python scripts/bench/sketch_floor.py --widths 4650,64,64,10 --samples 64 --no-floor
    python scripts/bench/sketch_floor.py --quick                                # smoke, < 30 s
    python scripts/bench/sketch_floor.py --widths 15600,64,64,10 --samples 64 --device cuda
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import os
import pstats
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import machine, rss_mb, sync, write_json  # noqa: E402

import scalable_hrank as hr  # noqa: E402
from scalable_hrank.linalg import orth  # noqa: E402
from scalable_hrank.models.mlp import mlp  # noqa: E402
from scalable_hrank.operators.curvature import CurvatureOperator  # noqa: E402
from scalable_hrank.theory import predict_rank_from_widths  # noqa: E402

#: (label, function name, file suffix) rows of the profile table; cumulative seconds.
PARTS = (
    ("block step (product + projection + orthonormalization)", "step", "decomp/block.py"),
    ("orthonormalize (within-block + second pass)", "orthonormalize", "orth.py"),
    ("inner (Gram / projection coefficients)", "inner", "orth.py"),
    ("certificate (deflated-operator Lanczos)", "deflated_norm", "krylov_rank.py"),
    ("Ritz values (eigvalsh of B)", "update_ritz", "krylov_rank.py"),
)


class RssPeak:
    """Samples the resident set every 20 ms in a thread; ``peak_mb`` is the largest seen."""

    def __init__(self) -> None:
        self.peak_mb = rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak_mb = max(self.peak_mb, rss_mb())

    def __enter__(self) -> RssPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, rss_mb())


class SecondPassCounter:
    """Counts the directions that get the second Gram-Schmidt pass (``orth._second_pass``)."""

    def __init__(self) -> None:
        self.columns = 0
        self._orig = orth._second_pass

    def __enter__(self) -> SecondPassCounter:
        counter, orig = self, self._orig

        def counted(x: torch.Tensor, *args, **kwargs):
            counter.columns += x.shape[1]
            return orig(x, *args, **kwargs)

        orth._second_pass = counted
        return self

    def __exit__(self, *exc: object) -> None:
        orth._second_pass = self._orig


class ProductClock:
    """Wraps ``CurvatureOperator.matmat`` to add up the seconds spent inside products."""

    def __init__(self, device: str = "cpu") -> None:
        self.device = device
        self.seconds = 0.0
        self.cpu = 0.0
        self.columns = 0
        self._orig = CurvatureOperator.matmat

    def __enter__(self) -> ProductClock:
        clock, orig = self, self._orig

        def timed(op: CurvatureOperator, block: torch.Tensor) -> torch.Tensor:
            t0, c0 = time.perf_counter(), time.process_time()
            out = orig(op, block)
            sync(clock.device)  # a GPU product counts until it has run
            clock.seconds += time.perf_counter() - t0
            clock.cpu += time.process_time() - c0
            clock.columns += 1 if block.dim() == 1 else block.shape[1]
            return out

        CurvatureOperator.matmat = timed
        CurvatureOperator.__matmul__ = timed
        return self

    def __exit__(self, *exc: object) -> None:
        CurvatureOperator.matmat = self._orig
        CurvatureOperator.__matmul__ = self._orig


def problem(widths: list[int], samples: int, seed: int = 0, device: str = "cpu"):
    model = mlp(widths, activation="linear", bias=False, seed=seed, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(samples, widths[0], generator=g, dtype=torch.float64)
    y = torch.randn(samples, widths[-1], generator=g, dtype=torch.float64)
    return model.to(device), (x.to(device), y.to(device))


def cgs_pass(n: int, r: int, block: int = 64, seed: int = 0,
             device: str = "cpu") -> tuple[float, float]:
    """Wall and CPU seconds of one block classical Gram-Schmidt pass of an n x r basis."""
    g = torch.Generator(device).manual_seed(seed)
    # column-major, as the sketch's basis
    q = torch.randn(r, n, generator=g, dtype=torch.float64, device=device).mT
    sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    for k in range(block, r, block):
        x = q[:, k:k + block]
        c = q[:, :k].mT @ x
        x.sub_(q[:, :k] @ c)
    sync(device)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    del q
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return seconds, cpu


def run_sketch(model, data, kind: str, block_size: int, profile: bool,
               device: str = "cpu") -> dict:
    gc.collect()
    rss0 = rss_mb()
    gpu = device.startswith("cuda")
    if gpu:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        gpu0 = torch.cuda.memory_allocated()
    prof = cProfile.Profile() if profile else None
    with ProductClock(device) as clock, RssPeak() as peak, SecondPassCounter() as second:
        t0, c0 = time.perf_counter(), time.process_time()
        if prof is not None:
            prof.enable()
        res = hr.estimate_rank(model, "mse", data, kind, method="sketch", seed=0,
                               block_size=block_size)
        sync(device)
        if prof is not None:
            prof.disable()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    row = {"cpu_s": cpu, "products_cpu_s": clock.cpu, "rank": res.rank,
           "certified": res.certified, "matvecs": res.matvecs,
           "basis_size": res.extra.get("basis_size"), "wall_s": wall,
           "products_s": clock.seconds, "product_columns": clock.columns,
           "result_seconds": res.seconds, "rss_before_mb": rss0,
           "rss_peak_mb": peak.peak_mb, "second_pass_columns": second.columns}
    if gpu:
        row["gpu_before_mb"] = gpu0 / 2**20
        row["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    if prof is not None:
        stats = pstats.Stats(prof)
        parts = {}
        for label, fn, suffix in PARTS:
            cum = sum(v[3] for (file, _, name), v in stats.stats.items()
                      if name == fn and file.endswith(suffix))
            parts[label] = cum
        row["profile_s"] = parts
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--widths", default="1500,64,64,10", help="layer widths (comma separated)")
    p.add_argument("--samples", type=int, default=64, help="N, the number of samples")
    p.add_argument("--kind", default="loss", choices=["loss", "outer", "functional"])
    p.add_argument("--block-size", type=int, default=8, help="block_size passed to the sketch")
    p.add_argument("--floor-block", type=int, default=64, help="block of the CGS floor pass")
    p.add_argument("--no-profile", action="store_true", help="skip the cProfile breakdown")
    p.add_argument("--no-floor", action="store_true",
                   help="skip the CGS floor passes (scale runs: wall and breakdown only)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--device", default="cpu", help="where the model and the basis live")
    p.add_argument("--quick", action="store_true", help="smoke run ([200, 32, 32, 10], N = 4)")
    p.add_argument("--json", default=None, help="write results here")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    widths = [200, 32, 32, 10] if a.quick else [int(w) for w in a.widths.split(",")]
    samples = 4 if a.quick else a.samples
    info = machine(a.device)
    info["threads"] = torch.get_num_threads()
    print(f"# {info}", flush=True)
    pred = getattr(predict_rank_from_widths(widths, loss="mse", num_samples=samples), a.kind)
    model, data = problem(widths, samples, device=a.device)
    n = sum(p.numel() for p in model.parameters())
    print(f"# widths {widths}, N = {samples}, n = {n:,}, predicted rank({a.kind}) = {pred}",
          flush=True)
    # round-robin: floor pass, sketch, floor pass (the floor's array is freed before the sketch)
    nan = (float("nan"), float("nan"))
    floor_a = nan if a.no_floor else cgs_pass(n, pred, a.floor_block, device=a.device)
    sketch = run_sketch(model, data, a.kind, a.block_size, not a.no_profile, a.device)
    floor_b = nan if a.no_floor else cgs_pass(n, pred, a.floor_block, device=a.device)
    cgs, cgs_cpu = min(floor_a[0], floor_b[0]), min(floor_a[1], floor_b[1])
    floor = sketch["products_s"] + cgs
    floor_cpu = sketch["products_cpu_s"] + cgs_cpu
    basis_mb = n * sketch["basis_size"] * 8 / 2**20
    out = {"n": n, "widths": widths, "samples": samples, "kind": a.kind, "predicted": pred,
           "cgs_pass_s": [floor_a, floor_b], "floor_s": floor,
           "ratio": sketch["wall_s"] / floor, "floor_cpu_s": floor_cpu,
           "ratio_cpu": sketch["cpu_s"] / floor_cpu, "basis_mb": basis_mb, "sketch": sketch,
           "machine": info, "argv": sys.argv}
    print(f"rank {sketch['rank']} (predicted {pred}), certified {sketch['certified']}, "
          f"{sketch['matvecs']} products, basis {sketch['basis_size']}", flush=True)
    print(f"sketch {sketch['wall_s']:.1f} s; floor {floor:.1f} s = products "
          f"{sketch['products_s']:.1f} s + CGS pass {cgs:.1f} s (block {a.floor_block}; "
          f"{floor_a[0]:.1f} s before, {floor_b[0]:.1f} s after); ratio {out['ratio']:.2f}",
          flush=True)
    print(f"CPU time: sketch {sketch['cpu_s']:.1f} s; floor {floor_cpu:.1f} s = products "
          f"{sketch['products_cpu_s']:.1f} s + CGS pass {cgs_cpu:.1f} s ({floor_a[1]:.1f} s "
          f"before, {floor_b[1]:.1f} s after); ratio {out['ratio_cpu']:.2f}", flush=True)
    for label, secs in sketch.get("profile_s", {}).items():
        print(f"  {label:<58} {secs:8.1f} s {100 * secs / sketch['wall_s']:5.1f}%", flush=True)
    print(f"  {'products (timed inside the operator)':<58} {sketch['products_s']:8.1f} s "
          f"{100 * sketch['products_s'] / sketch['wall_s']:5.1f}%", flush=True)
    print(f"second Gram-Schmidt pass: {sketch['second_pass_columns']} directions "
          f"(of {sketch['product_columns']} product columns)", flush=True)
    grown = sketch["rss_peak_mb"] - sketch["rss_before_mb"]
    out["peak_over_basis"] = grown / basis_mb
    print(f"sketch memory: peak RSS {sketch['rss_peak_mb']:.0f} MB - {sketch['rss_before_mb']:.0f}"
          f" MB before = {grown:.0f} MB = {grown / basis_mb:.2f} x the n x basis float64 "
          f"array ({basis_mb:.0f} MB)", flush=True)
    if "gpu_peak_mb" in sketch:
        grown = sketch["gpu_peak_mb"] - sketch["gpu_before_mb"]
        out["gpu_peak_over_basis"] = grown / basis_mb
        print(f"GPU memory: peak allocated {sketch['gpu_peak_mb']:.0f} MB - "
              f"{sketch['gpu_before_mb']:.0f} MB before = {grown:.0f} MB = "
              f"{grown / basis_mb:.2f} x the basis array", flush=True)
    write_json(a.json, out)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
