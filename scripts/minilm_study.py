"""MiniLM study on CPU: a layer density estimate and rank vs tokens.

The certified ranks of individual blocks (every layer's LayerNorms, biases, value projection)
are a sweep, not part of this script: ``hrank sweep examples/minilm_blocks.toml --local``
(and ``examples/minilm_large_blocks.toml``), then ``hrank collect``; see docs/minilm.md.

Parts (each runs alone; ``--all`` runs every part):

    --density  density estimate (deflated SLQ count with an interval) for one whole
               transformer layer; a small product budget for the indefinite kinds reports
               what they would need.
    --tokens   rank vs number of input tokens: the final LayerNorm (one sentence truncated
               to L tokens, then more sentences) and the attention value projection (one
               sentence of L = 2, 3 tokens).

Every part writes ``<out>/<part>.json`` (one record per rank: block, kind, n, rank,
certified, matvecs, seconds, rank_low/high, tol, data) and ``<fig-dir>/minilm_<part>.png``.
Measured commands, times and numbers: docs/minilm.md.

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 PYTHONPATH=src python scripts/minilm_study.py --tokens

Threads: on a shared 2-core machine OMP_NUM_THREADS=1 was 5x faster than 2 (spinning
OpenMP threads); use all cores only on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from scalable_hrank.models import load_model_spec, select_parameters  # noqa: E402
from scalable_hrank.planner import PlanError, plan  # noqa: E402

log = logging.getLogger("minilm_study")

KINDS = ("loss", "outer", "functional")
#: name -> parameter glob (all in the last transformer layer, number 5).
BLOCKS = {
    "layernorm": "encoder.layer.5.output.LayerNorm.*",               # 768
    "value_bias": "encoder.layer.5.attention.self.value.bias",       # 384
    "mlp_in_bias": "encoder.layer.5.intermediate.dense.bias",        # 1,536
    "attn_value": "encoder.layer.5.attention.self.value.*",          # 147,840
    "mlp_out": "encoder.layer.5.output.dense.*",                     # 590,208
}
LAYER = "encoder.layer.5.*"                                          # 1,774,464
#: Output dimension of the embedding (hidden size); H_O has rank <= (D - 1) per sentence.
D = 384


def _rank_api():
    from scalable_hrank.rank import estimate_rank

    return estimate_rank


def _record(res, **extra) -> dict:
    d = {k: getattr(res, k, None) for k in ("rank", "n", "kind", "method", "certified",
                                            "matvecs", "seconds", "rank_low", "rank_high",
                                            "confidence", "tol", "scale", "dtype")}
    d["rank_curve"] = [list(p) for p in getattr(res, "rank_curve", ()) or ()]
    d["gap"] = list(res.gap) if getattr(res, "gap", None) else None
    d["notes"] = list(getattr(res, "notes", ()) or ())
    d.update(extra)
    return d


def _bundle(args, sentences: int, length: int):
    b = load_model_spec("hf:minilm", num_samples=sentences, max_length=length, seed=args.seed)
    tokens = int(sum(int(x["attention_mask"].sum()) for x, _ in b.data))
    return b, tokens


def _n(model, glob) -> int:
    return sum(p.numel() for _, p in select_parameters(model, glob))


def _block_size(args, n: int) -> int:
    """Wide blocks for large n: the CGS2 passes over the (n, rank) basis are memory bound,
    so their cost scales with the number of blocks (8 -> 64 halved the time at n = 147,840)."""
    return args.big_block_size if n > args.big_n else args.block_size


def _plan(b, n, method, expected_rank=None, **kw):
    try:
        p = plan(b.model, n, b.data[0], method, torch.float64, "cpu",
                 expected_rank=expected_rank, **kw)
    except PlanError as exc:  # report and go on: the planner is conservative
        log.warning("planner: %s", exc)
        return None
    return p  # plan() logs its summary


def part_density(args) -> list[dict]:
    estimate_rank = _rank_api()
    b, tokens = _bundle(args, args.density_sentences, args.max_length)
    n = _n(b.model, args.layer)
    _plan(b, n, "density", probes=args.density_probes, deflation=args.density_deflate)
    log.info("layer %s: n = %d, %d sentences, %d tokens", args.layer, n,
             args.density_sentences, tokens)
    rows = []
    for kind in args.kinds.split(","):
        budget = args.density_matvecs if kind == "outer" else args.density_matvecs_indefinite
        res = estimate_rank(b.model, b.loss, b.data, kind, method="density", params=args.layer,
                            seed=args.seed, max_matvecs=budget,
                            density={"num_probes": args.density_probes,
                                     "num_deflate": args.density_deflate})
        ex = res.extra
        rows.append(_record(res, block="layer", glob=args.layer, budget=budget,
                            sentences=args.density_sentences, tokens=tokens,
                            feasible=ex.get("feasible"), matvecs_needed=ex.get("matvecs_needed"),
                            steps_needed=ex.get("steps_needed"), kappa=ex.get("kappa"),
                            estimate=ex.get("estimate"), probe_std=ex.get("probe_std"),
                            num_steps=ex.get("num_steps"),
                            deflation_matvecs=ex.get("deflation_matvecs"),
                            deflated_count=ex.get("deflated_count")))
        log.info("layer %-10s n=%d rank=%d [%s, %s] feasible=%s needed=%s matvecs=%d %.1fs",
                 kind, n, res.rank, res.rank_low, res.rank_high, ex.get("feasible"),
                 ex.get("matvecs_needed"), res.matvecs, res.seconds)
    _plot_density(rows, args.fig_dir / "minilm_density.png")
    return rows


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x]


def part_tokens(args) -> list[dict]:
    estimate_rank = _rank_api()
    runs = [(args.token_block, 1, L, args.kinds) for L in _ints(args.token_lengths)]
    runs += [(args.token_block, s, args.max_length, args.kinds)
             for s in _ints(args.sentence_counts)]
    runs += [("attn_value", 1, L, args.value_kinds) for L in _ints(args.value_lengths)]
    rows = []
    for block, sentences, length, kinds in runs:
        glob = BLOCKS[block]
        b, tokens = _bundle(args, sentences, length)
        n = _n(b.model, glob)
        for kind in kinds.split(","):
            res = estimate_rank(b.model, b.loss, b.data, kind, method="sketch", params=glob,
                                seed=args.seed, block_size=_block_size(args, n))
            rows.append(_record(res, block=block, sentences=sentences, max_length=length,
                                tokens=tokens))
            log.info("%s N=%d L=%d tokens=%d %-10s rank=%d/%d certified=%s matvecs=%d %.1fs",
                     block, sentences, length, tokens, kind, res.rank, res.n, res.certified,
                     res.matvecs, res.seconds)
    _plot_tokens(rows, args.fig_dir / "minilm_tokens.png")
    return rows


KIND_SYMBOL = {"loss": "H_L", "outer": "H_O", "functional": "H_F"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_density(rows, path):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for i, r in enumerate(rows):
        lo, hi = r["rank_low"], r["rank_high"]
        ax.errorbar([i], [r["rank"]], yerr=[[r["rank"] - lo], [hi - r["rank"]]], fmt="o",
                    capsize=4, color="C0" if r["feasible"] else "C3")
        txt = "feasible" if r["feasible"] else f"infeasible\nneeds {r['matvecs_needed']:,}"
        ax.annotate(f"{r['rank']:,}\n{txt}", (i, r["rank"]), textcoords="offset points",
                    xytext=(8, 0), fontsize=7)
    ax.set_yscale("log")
    ax.set_xticks(range(len(rows)), [r["kind"] for r in rows])
    ax.set_xlim(-0.5, len(rows) - 0.2)
    ax.set_ylabel("rank (interval; red: lower bound only)")
    ax.set_title(f"{rows[0]['glob']} (n = {rows[0]['n']:,}), {rows[0]['sentences']} sentence(s)",
                 fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_tokens(rows, path):
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, block in zip(axes, ("layernorm", "attn_value"), strict=True):
        br = [r for r in rows if r["block"] == block]
        if not br:
            continue
        for kind, marker in zip(KINDS, "os^", strict=True):
            for one, ls in ((True, "-"), (False, "--")):
                ks = sorted((r for r in br if r["kind"] == kind and
                             (r["sentences"] == 1) == one), key=lambda r: r["tokens"])
                if ks:
                    ax.plot([r["tokens"] for r in ks], [r["rank"] for r in ks], marker + ls,
                            label=f"{kind} ({'1 sentence' if one else 'N sentences'})",
                            alpha=0.8)
        tk = sorted({r["tokens"] for r in br})
        if block == "attn_value":
            ax.plot(tk, [D * t for t in tk], "k:", label="384 x tokens")
        ax.axhline(br[0]["n"] if br[0]["n"] < 5000 else D, color="gray", ls=":",
                   label="n" if br[0]["n"] < 5000 else "383 / sentence (H_O)")
        ax.set_xlabel("input tokens (summed over sentences)")
        ax.set_ylabel("certified rank")
        ax.set_title(f"{BLOCKS[block]} (n = {br[0]['n']:,})", fontsize=8)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--density", action="store_true")
    ap.add_argument("--tokens", action="store_true")
    ap.add_argument("--all", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("hrank-out/minilm"))
    ap.add_argument("--fig-dir", type=Path, default=None, help="PNG folder (default --out)")
    ap.add_argument("--sentences", type=int, default=2, help="built-in sentences (max 16)")
    ap.add_argument("--max-length", type=int, default=16, help="token truncation")
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--block-size", type=int, default=8)
    ap.add_argument("--big-block-size", type=int, default=64,
                    help="block size for blocks with n > --big-n")
    ap.add_argument("--big-n", type=int, default=20_000)
    ap.add_argument("--layer", default=LAYER)
    ap.add_argument("--density-sentences", type=int, default=1)
    ap.add_argument("--density-matvecs", type=int, default=1200, help="SLQ budget, kind outer")
    ap.add_argument("--density-matvecs-indefinite", type=int, default=160,
                    help="SLQ budget for loss/functional (enough to read what they need)")
    ap.add_argument("--density-probes", type=int, default=4)
    ap.add_argument("--density-deflate", type=int, default=16)
    ap.add_argument("--token-block", default="layernorm", choices=list(BLOCKS))
    ap.add_argument("--token-lengths", default="3,6,16", help="lengths with 1 sentence")
    ap.add_argument("--sentence-counts", default="2,3", help="sentence counts at max length")
    ap.add_argument("--value-lengths", default="2,3",
                    help="attn_value: 1 sentence, L tokens")
    ap.add_argument("--value-kinds", default="loss")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.fig_dir is None:
        args.fig_dir = args.out
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    args.fig_dir.mkdir(parents=True, exist_ok=True)
    parts = {"density": part_density, "tokens": part_tokens}
    chosen = [p for p in parts if args.all or getattr(args, p)]
    if not chosen:
        ap.error("choose --density, --tokens or --all")
    for name in chosen:
        t0 = time.perf_counter()
        rows = parts[name](args)
        meta = {"part": name, "seconds": time.perf_counter() - t0, "torch": torch.__version__,
                "threads": torch.get_num_threads(), "load": os.getloadavg(),
                "args": {k: str(v) for k, v in vars(args).items()}}
        (args.out / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": rows},
                                                          indent=1, default=str))
        log.info("%s: %d rows in %.1fs -> %s", name, len(rows), meta["seconds"],
                 args.out / f"{name}.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
