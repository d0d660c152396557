"""Cost of one curvature product (H_L v) relative to one gradient, ours vs PyHessian.

Three models, each over a multi-batch dataset (every time below is for the WHOLE dataset):

* mlp:    784-512-512-512-10 tanh MLP, float32, cross-entropy, --batches batches of 256.
* cnn:    three 3x3 convolutions (3-32, 32-64 stride 2, 64-64 stride 2, tanh) and a linear
          read-out, 97,300 parameters, float32, cross-entropy, --batches batches of 64 images.
* minilm: the packaged all-MiniLM-L6-v2 (eager attention), float32, loss "mse" on the
          normalised embeddings, --batches batches of 8 short sentences (load_model_spec).

Paths, timed round-robin in one run (scripts/bench/common.py: min and median of --reps):

* grad:        one gradient over the dataset (torch.autograd.grad per batch).
* ours:        ``curvature_operator(model, loss, data) @ v`` with the per-batch graphs cached
               (after a first product that builds them).
* ours_singles: --block single products ``op @ V[:, j]`` on the columns of V, per product.
* ours_block:  ``op @ V`` with V of --block columns (column-major, as QR returns blocks),
               reported per product.
* ours_vmap_block: the block through ONE vmap over all columns (curvature.COLUMN_LOOP_MIN_SIZE
               emptied), the alternative to the CPU default of a column loop.
* ours_nocache: the same operator with ``cache=False`` (forward + backward per product).
* pyhessian:   ``pyhessian.hessian(model, criterion, dataloader=data, cuda=...)``
               ``.dataloader_hv_product(v)`` (forward, backward(create_graph), grad per batch).
* curvlinops:  ``curvlinops.HessianLinearOperator(model, nn.CrossEntropyLoss(), params, data)
               @ v`` (and the block, per product; MLP only), when curvlinops is installed;
               otherwise skipped with a note (install it with ``pip install --no-deps
               curvlinops-for-pytorch`` plus its pure-Python dependencies, so that it cannot
               replace torch); ``agreement_vs_curvlinops`` is the relative difference of the
               two products on the same v.

Peak memory: each path runs in a fresh subprocess; CPU: peak RSS (VmHWM, reset through
/proc/self/clear_refs after model, data and vectors are in place, else ru_maxrss delta) minus
the RSS at that point; "kept" = RSS after the products minus RSS before, both after
malloc_trim (the cached graphs).
CUDA: torch.cuda.max_memory_allocated after reset_peak_memory_stats, in the same way.

    .venv/bin/python scripts/bench/hvp.py                      # both models, 1 and default threads
    .venv/bin/python scripts/bench/hvp.py --quick              # smoke run, < 30 s
    .venv/bin/python scripts/bench/hvp.py --models cnn --profile  # operators behind the ratio
    .venv/bin/python scripts/bench/hvp.py --device cuda        # GPU (CUDA allocator memory)
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import default_threads, interleaved, machine, maxrss_mb, rss_mb, run_child, write_json  # noqa: E402
from torch import Tensor, nn  # noqa: E402

import scalable_hrank as hr  # noqa: E402
from scalable_hrank.operators.batches import call_model  # noqa: E402
from scalable_hrank.operators.losses import resolve_loss  # noqa: E402

# PyHessian's backward(create_graph=True) warns about the reference cycle it creates.
warnings.filterwarnings("ignore", message=".*create_graph=True.*")

PATHS = ("grad", "ours", "ours_singles", "ours_block", "ours_vmap_block", "ours_nocache",
         "pyhessian", "curvlinops", "curvlinops_block")


# -- models --------------------------------------------------------------------------------
class _Packed(nn.Module):
    """PyHessian calls ``model(inputs)`` with one tensor: unpack (N, 3, T) token tensors."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, packed: Tensor) -> Tensor:
        return self.inner(input_ids=packed[:, 0], token_type_ids=packed[:, 1],
                          attention_mask=packed[:, 2])


def build(name: str, device: str, batches: int, quick: bool) -> dict[str, Any]:
    """Model (eval), loss name, our data, PyHessian's model/data/criterion."""
    if name == "mlp":
        torch.manual_seed(0)
        widths = [784, 512, 512, 512, 10]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            layers.append(nn.Linear(a, b))
            if i < len(widths) - 2:
                layers.append(nn.Tanh())
        model = nn.Sequential(*layers).to(device).eval()
        bs = 64 if quick else 256
        g = torch.Generator().manual_seed(1)
        data = [(torch.randn(bs, 784, generator=g).to(device),
                 torch.randint(0, 10, (bs,), generator=g).to(device)) for _ in range(batches)]
        loss = "cross_entropy"
        ph_model, ph_data = model, data
        desc = f"MLP 784-512-512-512-10 tanh, float32, {batches} x {bs} samples, cross_entropy"
    elif name == "cnn":
        torch.manual_seed(0)
        model = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.Tanh(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.Tanh(),
            nn.Conv2d(64, 64, 3, stride=2, padding=1), nn.Tanh(),
            nn.Flatten(), nn.Linear(64 * 8 * 8, 10)).to(device).eval()
        bs = 16 if quick else 64
        g = torch.Generator().manual_seed(1)
        data = [(torch.randn(bs, 3, 32, 32, generator=g).to(device),
                 torch.randint(0, 10, (bs,), generator=g).to(device)) for _ in range(batches)]
        loss = "cross_entropy"
        ph_model, ph_data = model, data
        desc = (f"CNN conv3x3(3-32)-conv3x3/2(32-64)-conv3x3/2(64-64)-linear(4096-10) tanh, "
                f"float32, {batches} x {bs} images 3x32x32, cross_entropy")
    elif name == "minilm":
        from scalable_hrank.models import attention_implementation, load_model_spec
        b = load_model_spec("hf:minilm", batch_size=8, num_samples=8 * batches, device=device)
        model, loss, data = b.model.eval(), b.loss, b.data
        ph_model = _Packed(model).eval()
        ph_data = []
        for x, y in data:
            tt = x.get("token_type_ids", torch.zeros_like(x["input_ids"]))
            ph_data.append((torch.stack([x["input_ids"], tt, x["attention_mask"]], 1), y))
        tokens = sum(int(x["attention_mask"].sum()) for x, _ in data)
        desc = (f"{b.description}; attention={attention_implementation(model)}; float32; "
                f"{batches} x 8 sentences ({tokens} tokens); loss {loss} on embeddings")
    else:
        msg = f"unknown model {name!r}"
        raise ValueError(msg)
    loss_fn = resolve_loss(loss)[1]
    return {"model": model, "loss": loss, "loss_fn": loss_fn, "data": data,
            "ph_model": ph_model, "ph_data": ph_data, "desc": desc,
            "params": [p for p in model.parameters() if p.requires_grad]}


# -- the paths -----------------------------------------------------------------------------
def make_paths(m: dict[str, Any], device: str, block: int, which: tuple[str, ...],
               seed: int = 0, sub_blocks: tuple[int, ...] = (),
               ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Callables (one product / one gradient over the dataset) and the objects they use."""
    model, loss, data, loss_fn, params = m["model"], m["loss"], m["data"], m["loss_fn"], m["params"]
    n = sum(p.numel() for p in params)
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(n, generator=g).to(device)
    fns: dict[str, Any] = {}
    objs: dict[str, Any] = {"v": v, "n": n}
    if "grad" in which:
        def grad() -> None:
            for x, y in data:
                torch.autograd.grad(loss_fn(call_model(model, {}, x), y), params)
        fns["grad"] = grad
    if "ours" in which or "ours_block" in which or "ours_singles" in which:
        op = hr.curvature_operator(model, loss, data, "loss")
        objs["op"] = op
        if "ours" in which:
            fns["ours"] = lambda: op @ v
        if "ours_block" in which or "ours_singles" in which:
            vb = torch.randn(block, n, generator=g).to(device).T  # column-major, as QR returns
            objs["V"] = vb
            fns["ours_block"] = lambda: op @ vb
            fns["ours_singles"] = lambda: [op @ vb[:, j] for j in range(vb.shape[1])]
            for k in sub_blocks:
                if k < block:
                    fns[f"ours_block{k}"] = (lambda k=k: op @ vb[:, :k])
    if "ours_vmap_block" in which:
        # The alternative this benchmark rejected on CPUs: the whole block in one vmap.
        from scalable_hrank.operators import curvature

        def one_vmap(x: Tensor) -> Tensor:
            saved = dict(curvature.COLUMN_LOOP_MIN_SIZE)
            curvature.COLUMN_LOOP_MIN_SIZE.clear()
            try:
                return op_vm @ x
            finally:
                curvature.COLUMN_LOOP_MIN_SIZE.update(saved)

        op_vm = hr.curvature_operator(model, loss, data, "loss")
        one_vmap(v)  # build (and keep) the per-batch graphs
        vb_vm = objs.get("V")
        if vb_vm is None:
            vb_vm = torch.randn(block, n, generator=g).to(device).T  # column-major, as QR returns
        fns["ours_vmap_block"] = lambda: one_vmap(vb_vm)
    if "ours_nocache" in which:
        op_nc = hr.curvature_operator(model, loss, data, "loss", cache=False)
        fns["ours_nocache"] = lambda: op_nc @ v
    if "pyhessian" in which:
        ph = pyhessian_operator(m, device)
        vs = [c.view_as(p) for c, p in zip(torch.split(v, [p.numel() for p in params]),
                                            params, strict=True)]
        objs["ph"], objs["ph_v"] = ph, vs
        fns["pyhessian"] = lambda: ph.dataloader_hv_product(vs)
    if "curvlinops" in which or "curvlinops_block" in which:
        cl = curvlinops_operator(m)
        if cl is not None:
            objs["cl"] = cl
            if "curvlinops" in which:
                fns["curvlinops"] = lambda: cl @ v
            if "curvlinops_block" in which:
                vb_cl = objs.get("V")
                if vb_cl is None:
                    vb_cl = torch.randn(block, n, generator=g).to(device).T
                fns["curvlinops_block"] = lambda: cl @ vb_cl
    return fns, objs


def curvlinops_available() -> bool:
    try:
        import curvlinops  # noqa: F401
    except ImportError:
        return False
    return True


def curvlinops_operator(m: dict[str, Any]) -> Any:
    """curvlinops' HessianLinearOperator on the same model and batches (None: not available).

    curvlinops takes the criterion as a module with a ``reduction``; only the MLP's
    cross-entropy has one here.
    """
    if not curvlinops_available() or m["loss"] != "cross_entropy":
        return None
    from curvlinops import HessianLinearOperator

    params = [p for p in m["ph_model"].parameters() if p.requires_grad]
    return HessianLinearOperator(m["ph_model"], nn.CrossEntropyLoss(), params, m["ph_data"],
                                 progressbar=False)


def pyhessian_operator(m: dict[str, Any], device: str) -> Any:
    """PyHessian's hessian object on the dataloader path (no patch needed on torch 2.13:
    dataloader_hv_product only uses backward(create_graph=True) and autograd.grad)."""
    from pyhessian import hessian
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return hessian(m["ph_model"], m["loss_fn"], dataloader=m["ph_data"],
                       cuda=device.startswith("cuda"))


def agreement_curvlinops(objs: dict[str, Any]) -> float | None:
    """Relative difference between our product and curvlinops' on the same v."""
    if "op" not in objs or "cl" not in objs:
        return None
    ours = objs["op"] @ objs["v"]
    theirs = objs["cl"] @ objs["v"]
    return float((ours - theirs).norm() / theirs.norm())


def agreement(objs: dict[str, Any]) -> float | None:
    """Relative difference between our product and PyHessian's on the same v."""
    if "op" not in objs or "ph" not in objs:
        return None
    ours = objs["op"] @ objs["v"]
    _, thv = objs["ph"].dataloader_hv_product(objs["ph_v"])
    theirs = torch.cat([t.reshape(-1) for t in thv])
    return float((ours - theirs).norm() / theirs.norm())


# -- memory child --------------------------------------------------------------------------
def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _trimmed_rss_mb() -> float:
    """RSS after handing freed heap memory back to the OS (glibc malloc_trim)."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    return rss_mb()


def _hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return maxrss_mb()


def child(a: argparse.Namespace) -> None:
    """Peak memory of one path in this fresh process; prints one JSON line."""
    torch.set_num_threads(1)
    m = build(a.model, a.device, a.batches, a.quick)
    fns, objs = make_paths(m, a.device, a.block, (a.child,))
    f = fns[a.child]
    gc.collect()
    out: dict[str, Any] = {"path": a.child, "model": a.model}
    if a.device.startswith("cuda"):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        f()
        f()
        torch.cuda.synchronize()
        out.update(method="torch.cuda.max_memory_allocated - memory_allocated before",
                   peak_mb=(torch.cuda.max_memory_allocated() - base) / 2**20,
                   kept_mb=(torch.cuda.memory_allocated() - base) / 2**20)
    else:
        base_rss = _trimmed_rss_mb()
        reset = _reset_peak()
        before_max = maxrss_mb()
        f()
        f()
        gc.collect()
        if reset:
            peak, method = _hwm_mb() - base_rss, "VmHWM after clear_refs, minus RSS before"
        else:
            peak, method = maxrss_mb() - before_max, "ru_maxrss delta (lower bound)"
        out.update(method=method, peak_mb=peak, kept_mb=_trimmed_rss_mb() - base_rss,
                   base_rss_mb=base_rss)
    print(json.dumps(out), flush=True)


# -- main ----------------------------------------------------------------------------------
def run_model(name: str, a: argparse.Namespace, threads: list[int]) -> dict[str, Any]:
    block = a.minilm_block if name == "minilm" else a.block
    m = build(name, a.device, a.batches, a.quick)
    which = tuple(p for p in PATHS if not (p == "pyhessian" and a.no_pyhessian))
    if not curvlinops_available():
        print("# curvlinops: not installed, skipped (pip install --no-deps "
              "curvlinops-for-pytorch backpack-for-pytorch einops einconv opt-einsum)",
              flush=True)
        which = tuple(p for p in which if not p.startswith("curvlinops"))
    subs = tuple(int(k) for k in a.sub_blocks.split(",") if k) if name == "mlp" else ()
    fns, objs = make_paths(m, a.device, block, which, sub_blocks=subs)
    res: dict[str, Any] = {"model": name, "desc": m["desc"], "params": objs["n"],
                           "batches": a.batches, "block": block, "timing": {}}
    res["agreement_vs_pyhessian"] = agreement(objs)
    res["agreement_vs_curvlinops"] = agreement_curvlinops(objs)
    if res["agreement_vs_curvlinops"] is not None:
        print(f"# curvlinops agreement (relative difference): "
              f"{res['agreement_vs_curvlinops']:.2e}", flush=True)
    for th in threads:
        torch.set_num_threads(th)
        reps = a.reps if name == "mlp" else max(2, a.reps - 2)
        t = interleaved(fns, reps=reps, device=a.device)
        for key in list(t):
            if key.startswith("ours_block") or key in ("ours_vmap_block", "ours_singles",
                                                        "curvlinops_block"):
                k = (int(key[len("ours_block"):] or block) if key.startswith("ours_block")
                     else block)
                t[key] = {s: (x / k if s != "reps" else x) for s, x in t[key].items()}
        res["timing"][str(th)] = t
        report(name, th, t, block)
        if a.profile:
            res.setdefault("profile", {})[str(th)] = profile_paths(fns)
    torch.set_num_threads(default_threads())
    if not a.no_memory:
        mem = {}
        for path in (w for w in which if w not in ("ours_singles", "curvlinops_block")):
            args = ["--child", path, "--models", name, "--device", a.device,
                    "--batches", str(a.batches), "--block", str(block)]
            if a.quick:
                args.append("--quick")
            mem[path] = run_child(__file__, args)
        res["memory"] = mem
        for path, r in mem.items():
            if "error" in r:
                print(f"  memory {path}: ERROR {r['error'][-300:]}")
            else:
                print(f"  memory {path:13s} peak {r['peak_mb']:8.0f} MB  "
                      f"kept {r['kept_mb']:8.0f} MB")
    return res


def profile_paths(fns: dict[str, Any], keys: tuple[str, ...] = ("grad", "ours"),
                  top: int = 8) -> dict[str, dict[str, float]]:
    """Self CPU milliseconds of the costliest operators in one call of each path."""
    from torch.profiler import ProfilerActivity, profile

    out = {}
    for key in (k for k in keys if k in fns):
        fns[key]()  # warm (graphs cached)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fns[key]()
        events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total,
                        reverse=True)
        total = sum(e.self_cpu_time_total for e in events) / 1e3
        out[key] = {"total": total, **{e.key: e.self_cpu_time_total / 1e3
                                       for e in events[:top]}}
        print(f"  profile {key} (self CPU, total {total:.1f} ms): " + ", ".join(
            f"{k} {v:.1f}" for k, v in out[key].items() if k != "total"), flush=True)
    return out


def report(name: str, th: int, t: dict[str, dict[str, float]], block: int) -> None:
    g = t["grad"]["min"]
    print(f"[{name}, threads={th}] per product over the dataset, min (median) of "
          f"{t['grad']['reps']} round-robin reps; ratio = min / min(grad)")
    for k, r in t.items():
        label = f"{k} (/{block})" if k in ("ours_block", "ours_vmap_block", "ours_singles") else k
        if k.startswith("ours_block") and k != "ours_block":
            label = f"{k} (/{k[len('ours_block'):]})"
        print(f"  {label:18s} {r['min'] * 1e3:9.1f} ms ({r['median'] * 1e3:9.1f})  "
              f"x grad {r['min'] / g:5.2f}")
    o = t["ours"]["min"]
    print(f"  block/single per product: {t['ours_block']['min'] / t['ours_singles']['min']:.2f}"
          f" ({block} singles on the same columns)")
    if "ours_vmap_block" in t:
        print("  one-vmap block/single per product: "
              f"{t['ours_vmap_block']['min'] / t['ours_singles']['min']:.2f}")
    if "pyhessian" in t:
        print(f"  pyhessian/ours: {t['pyhessian']['min'] / o:.2f}x")
    if "curvlinops" in t:
        print(f"  curvlinops/ours: {t['curvlinops']['min'] / o:.2f}x")
    if "curvlinops_block" in t:
        print(f"  curvlinops_block/ours_block: "
              f"{t['curvlinops_block']['min'] / t['ours_block']['min']:.2f}x")
    sys.stdout.flush()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="mlp,minilm")
    p.add_argument("--threads", default="1,default",
                   help="comma list of thread counts; 'default' = torch's default")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--block", type=int, default=32, help="block width (MLP)")
    p.add_argument("--minilm-block", type=int, default=8,
                   help="block width for MiniLM (32 x 22.6M floats = 2.9 GB per operand)")
    p.add_argument("--sub-blocks", default="8", help="extra block widths (MLP), per product")
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--no-pyhessian", action="store_true")
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: MLP only, 2 batches of 64, 1 thread, no memory, < 30 s")
    p.add_argument("--profile", action="store_true",
                   help="torch.profiler: costliest operators of one gradient and one product")
    p.add_argument("--json", default=None)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available")
    if a.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    if a.child:
        a.model = a.models
        child(a)
        return
    if a.quick:
        a.models, a.batches, a.reps, a.block, a.threads = "mlp", 2, 2, 8, "1"
        a.no_memory, a.sub_blocks = True, ""
    threads = sorted({default_threads() if s.strip() == "default" else int(s)
                      for s in a.threads.split(",")})
    info = machine(a.device)
    print(f"# {info}", flush=True)
    results = [run_model(name, a, threads) for name in a.models.split(",")]
    info["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    print(f"# load average at end: {info['loadavg_end']}")
    write_json(a.json, {"machine": info, "device": a.device, "results": results,
                        "argv": sys.argv})


if __name__ == "__main__":
    main()
