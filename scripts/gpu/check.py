"""GPU check (< 5 minutes on one H100): accuracy and speed of curvature products on CUDA.

For a random-weight GPT-2-small-sized model (transformers GPT2Config defaults, 124M
parameters, no download) and the packaged MiniLM:

1. products: H_L V for a parameter block, float32 on the GPU (TF32 off) against float64 on
   the CPU; relative error ||HV_gpu - HV_cpu64|| / ||HV_cpu64|| (expected ~1e-6..1e-5);
2. speed: time of one block product (k = 1 and k = 8 columns) / time of one gradient;
3. a certified block rank (method sketch, float32, GPU) of a LayerNorm;
4. a density estimate (method density) of a whole transformer layer, capped in products.

Prints a short table and writes ``$OUT/gpu_check.json`` when ``OUT`` is set. Each step is
timed and fenced: a failing step is recorded and the others still run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

import torch  # noqa: E402

from scalable_hrank.models import (  # noqa: E402
    Task,
    load_model_spec,
    select_parameters,
    wrap_hf_model,
)
from scalable_hrank.operators.losses import resolve_loss  # noqa: E402
from scalable_hrank.planner import format_bytes, tf32_disabled  # noqa: E402

log = logging.getLogger("gpu_check")


def gpt2_small(batch: int, length: int, seed: int):
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.GPT2Config()          # 12 layers, 768 wide, 50257 vocab: 124M
    hf = transformers.GPT2LMHeadModel(cfg)
    model = wrap_hf_model(hf, task="causal_lm")
    task = Task("causal_lm", "cross_entropy", cfg.vocab_size)
    return model, "cross_entropy", random_tokens(task, cfg.vocab_size, batch, length, seed)


def random_tokens(task, vocab_size: int, batch: int, length: int, seed: int):
    """One batch of uniform random token ids with the task's targets."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(vocab_size, (batch, length), generator=gen)
    return [task.make_batch({"input_ids": ids, "attention_mask": torch.ones_like(ids)},
                            generator=gen)]


def minilm(batch: int, length: int, seed: int):
    """The packaged MiniLM; where that package is absent (the GPU image), a random-weight
    BERT of MiniLM's shape (6 layers, 384 wide, 12 heads), eager attention."""
    try:
        b = load_model_spec("hf:minilm", num_samples=batch, max_length=length, seed=seed)
        return b.model, b.loss, b.data
    except (ImportError, FileNotFoundError, ValueError) as exc:
        log.warning("packaged MiniLM unavailable (%s): random weights, MiniLM shape", exc)
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                                  intermediate_size=1536, attn_implementation="eager")
    model = wrap_hf_model(transformers.BertModel(cfg, add_pooling_layer=False),
                          task="embedding")
    task = Task("embedding", "mse", cfg.hidden_size)
    return model, "mse", random_tokens(task, cfg.vocab_size, batch, length, seed)


def check_mlp(args, device, report) -> None:
    """784-512-512-512-10 tanh MLP, batch 256, float32 on the device: HVP / gradient, a block
    of 32 products vs 32 single products; and a float64 exactness check on the device (exact
    and certified sketch ranks of a deep linear net equal the CPU's and the formula)."""
    import scalable_hrank as hr
    from scalable_hrank.models.mlp import mlp

    rec = report.setdefault("mlp", {})
    model = mlp((784, 512, 512, 512, 10), activation="tanh", dtype=torch.float32).to(device)
    gen = torch.Generator().manual_seed(args.seed)
    x = torch.randn(256, 784, generator=gen).to(device)
    y = torch.randint(0, 10, (256,), generator=gen).to(device)
    op = hr.curvature_operator(model, "cross_entropy", (x, y), "loss")
    params = list(model.parameters())

    def grad():
        torch.autograd.grad(torch.nn.functional.cross_entropy(model(x), y), params)

    v1 = torch.randn(op.size, 1, device=device)
    v32 = torch.randn(op.size, 32, device=device)
    with tf32_disabled():
        tg = timed(grad, device, args.reps)
        t1 = timed(lambda: op.matmat(v1), device, args.reps)
        t32 = timed(lambda: op.matmat(v32), device, args.reps)
    rec["speed"] = {"n": op.size, "grad_s": tg, "hvp_over_grad": t1 / tg,
                    "block32_over_32_singles": t32 / (32 * t1)}
    small = mlp((16, 8, 8, 4), dtype=torch.float64)
    xs = torch.randn(40, 16, generator=gen, dtype=torch.float64)
    ys = torch.nn.functional.one_hot(torch.randint(0, 4, (40,), generator=gen), 4).double()
    pred = hr.predict_rank(small, loss="mse", data=(xs, ys))
    out = {}
    for kind in ("loss", "outer", "functional"):
        cpu = hr.exact_rank(small, "mse", (xs, ys), kind).rank
        dev_model = small.to(device)
        dev = hr.estimate_rank(dev_model, "mse", (xs.to(device), ys.to(device)), kind,
                               method="sketch")
        small = small.cpu()
        out[kind] = {"formula": pred.rank(kind), "exact_cpu": cpu, "sketch_device": dev.rank,
                     "certified": dev.certified, "matvecs": dev.matvecs}
    rec["float64_ranks"] = out
    dens = {}
    for where in ("cpu", device):
        m = small.to(where)
        r = hr.estimate_rank(m, "mse", (xs.to(where), ys.to(where)), "outer", method="density",
                             seed=args.seed, density={"num_probes": 4})
        dens[str(where)] = {"estimate": r.extra["estimate"], "interval": [r.rank_low, r.rank_high],
                            "matvecs": r.matvecs}
    small = small.cpu()
    rec["density_outer_cpu_vs_device"] = dens


def to(data, device, dtype):
    from scalable_hrank.data import batch_to

    return [batch_to(b, device, dtype) for b in data]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, reps):
    fn()
    sync(device)
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def check_model(name, make, blocks, layer, args, device, report):
    import copy

    import scalable_hrank as hr
    from scalable_hrank.rank import estimate_rank

    model, loss, data = make(args.batch, args.length, args.seed)
    n_all = sum(p.numel() for p in model.parameters())
    rec = report.setdefault(name, {"parameters": n_all})
    gen = torch.Generator().manual_seed(args.seed)

    def step(label, fn):
        t = time.perf_counter()
        try:
            rec[label] = fn()
        except Exception as exc:  # noqa: BLE001 - recorded, the check goes on
            rec[label] = {"error": f"{type(exc).__name__}: {exc}"}
            log.error("%s %s failed:\n%s", name, label, traceback.format_exc())
        log.info("%s %s: %.1fs %s", name, label, time.perf_counter() - t, rec[label])

    gpu_model = copy.deepcopy(model).to(device)
    gpu_data = to(data, device, None)
    cpu64 = copy.deepcopy(model).to(torch.float64)
    cpu_data = to(data, "cpu", torch.float64)

    def products():
        out = {}
        for glob in blocks:
            op_g = hr.curvature_operator(gpu_model, loss, gpu_data, "loss", params=glob)
            op_c = hr.curvature_operator(cpu64, loss, cpu_data, "loss", params=glob)
            V = torch.randn(op_g.size, args.columns, generator=gen, dtype=torch.float64)
            with tf32_disabled():
                hv_g = op_g.matmat(V.to(device, torch.float32)).double().cpu()
            hv_c = op_c.matmat(V)
            err = float((hv_g - hv_c).norm() / hv_c.norm())
            out[glob] = {"n": op_g.size, "rel_err_fp32_gpu_vs_fp64_cpu": err}
        return out

    def speed():
        glob = blocks[-1]
        params = [p for _, p in select_parameters(gpu_model, glob)]
        lossf = resolve_loss(loss)[1]
        x, y = gpu_data[0]

        def grad():
            torch.autograd.grad(lossf(gpu_model(**x), y), params)

        op = hr.curvature_operator(gpu_model, loss, gpu_data, "loss", params=glob, cache=False)
        v1 = torch.randn(op.size, 1, device=device)
        v8 = torch.randn(op.size, 8, device=device)
        with tf32_disabled():
            tg = timed(grad, device, args.reps)
            t1 = timed(lambda: op.matmat(v1), device, args.reps)
            t8 = timed(lambda: op.matmat(v8), device, args.reps)
        peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
        return {"block": glob, "grad_s": tg, "hvp_s": t1, "hvp_over_grad": t1 / tg,
                "block8_per_column_over_grad": t8 / 8 / tg, "peak_memory": format_bytes(peak)}

    def certified():
        with tf32_disabled():
            r = estimate_rank(gpu_model, loss, gpu_data, "loss", method="sketch",
                              params=blocks[0], dtype=torch.float32, seed=args.seed)
        return {"block": blocks[0], "n": r.n, "rank": r.rank, "certified": r.certified,
                "matvecs": r.matvecs, "seconds": r.seconds}

    def density():
        with tf32_disabled():
            r = estimate_rank(gpu_model, loss, gpu_data, "loss", method="density",
                              params=layer, dtype=torch.float32, seed=args.seed,
                              max_matvecs=args.density_matvecs)
        return {"block": layer, "n": r.n, "rank": r.rank, "rank_low": r.rank_low,
                "rank_high": r.rank_high, "matvecs": r.matvecs, "seconds": r.seconds}

    step("products", products)
    step("speed", speed)
    step("certified_rank", certified)
    step("density", density)
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _fmt(v) -> str:
    if isinstance(v, dict):
        return ", ".join(f"{k}={_fmt(x)}" for k, x in v.items() if k != "block")
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def table(report) -> str:
    lines = [f"{'model':8} {'check':16} result"]
    for name, rec in report.items():
        if not isinstance(rec, dict) or "parameters" not in rec:
            continue
        prod = rec.get("products", {})
        for glob, v in (prod.items() if "error" not in prod else [("", prod)]):
            lines.append(f"{name:8} {'fp32 vs fp64':16} {glob} {_fmt(v)}")
        for key in ("speed", "certified_rank", "density"):
            v = rec.get(key) or {}
            lines.append(f"{name:8} {key:16} {v.get('block', '')} {_fmt(v)}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="GPU check of curvature products")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--length", type=int, default=32)
    ap.add_argument("--columns", type=int, default=4)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--density-matvecs", type=int, default=400)
    ap.add_argument("--models", default="mlp,minilm,gpt2")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cpu", action="store_true", help="dry run without a GPU")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    report: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda"
                    else "cpu", "torch": torch.__version__}
    t0 = time.perf_counter()
    specs = {
        "minilm": (minilm, ["encoder.layer.5.output.LayerNorm.*",
                            "encoder.layer.5.attention.self.value.*"], "encoder.layer.5.*"),
        "gpt2": (gpt2_small, ["transformer.h.5.ln_2.*", "transformer.h.5.attn.c_proj.*"],
                 "transformer.h.5.*"),
    }
    for name in args.models.split(","):
        if name == "mlp":
            try:
                check_mlp(args, device, report)
            except Exception as exc:  # noqa: BLE001 - recorded, the check goes on
                report["mlp"] = {"error": f"{type(exc).__name__}: {exc}"}
                log.error("mlp failed:\n%s", traceback.format_exc())
            log.info("mlp: %s", report["mlp"])
            continue
        make, blocks, layer = specs[name]
        check_model(name, make, blocks, layer, args, device, report)
    report["seconds"] = time.perf_counter() - t0
    print(table(report))
    print("mlp:", json.dumps(report.get("mlp"), default=str))
    print(f"total {report['seconds']:.0f}s on {report['device']}")
    out = os.environ.get("OUT")
    if out:
        Path(out, "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
