"""MiniLM study on CPU: certified block ranks, a layer density estimate, rank vs tokens.

Parts (each runs alone; ``--all`` runs every part):

    --blocks   certified ranks (method sketch, float64) of a LayerNorm, one attention
               projection and one MLP layer, for H_L, H_O and H_F; exact dense ranks as a
               cross-check for blocks with n <= --exact-max-n.
    --density  density estimate (SLQ count with an interval) for one whole transformer layer.
    --tokens   rank vs number of input tokens for one block (sentences truncated to L tokens,
               and more sentences at full length).

Every run writes ``<out>/<part>.json`` (one record per rank: block, kind, n, rank, certified,
matvecs, seconds, rank_low/high, tol) and a PNG plot next to it. Small defaults; see
docs/minilm.md for the commands and the numbers.

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=2 PYTHONPATH=src python scripts/minilm_study.py --blocks
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
from scalable_hrank.planner import plan  # noqa: E402

log = logging.getLogger("minilm_study")

KINDS = ("loss", "outer", "functional")
BLOCKS = {
    "layernorm": "encoder.layer.5.output.LayerNorm.*",              # 768
    "attn_value": "encoder.layer.5.attention.self.value.*",         # 147,840
    "mlp_out": "encoder.layer.5.output.dense.*",                    # 590,208
}
LAYER = "encoder.layer.5.*"                                         # 1,774,464


def _rank_api():
    from scalable_hrank.exact import exact_rank
    from scalable_hrank.rank import estimate_rank

    return estimate_rank, exact_rank


def _record(res, **extra) -> dict:
    d = {k: getattr(res, k, None) for k in ("rank", "n", "kind", "method", "certified",
                                            "matvecs", "seconds", "rank_low", "rank_high",
                                            "confidence", "tol", "dtype")}
    d["rank_curve"] = [list(p) for p in getattr(res, "rank_curve", ()) or ()]
    d.update(extra)
    return d


def _bundle(args, **kw):
    return load_model_spec("hf:minilm", num_samples=kw.pop("num_samples", args.sentences),
                           max_length=kw.pop("max_length", args.max_length), seed=args.seed)


def _n(model, glob) -> int:
    return sum(p.numel() for _, p in select_parameters(model, glob))


def part_blocks(args) -> list[dict]:
    estimate_rank, exact_rank = _rank_api()
    b = _bundle(args)
    rows = []
    names = args.block_names.split(",")
    for name in names:
        glob = BLOCKS[name]
        n = _n(b.model, glob)
        p = plan(b.model, n, b.data[0], "sketch", torch.float64, "cpu",
                 expected_rank=min(n, args.sentences * 383))
        log.info("%s (%s): n = %d\n%s", name, glob, n, p.summary())
        for kind in args.kinds.split(","):
            res = estimate_rank(b.model, b.loss, b.data, kind, method="sketch", params=glob,
                                seed=args.seed, block_size=args.block_size)
            row = _record(res, block=name, glob=glob, plan_bytes=p.total_bytes)
            if n <= args.exact_max_n:
                ex = exact_rank(b.model, b.loss, b.data, kind, params=glob)
                row.update(exact_rank=ex.rank, exact_seconds=ex.seconds)
            log.info("%-10s %-10s n=%-8d rank=%-6s certified=%s matvecs=%d %.1fs", name, kind,
                     n, res.rank, res.certified, res.matvecs, res.seconds)
            rows.append(row)
    _plot_blocks(rows, args.out / "blocks.png")
    return rows


def part_density(args) -> list[dict]:
    estimate_rank, _ = _rank_api()
    b = _bundle(args)
    n = _n(b.model, args.layer)
    p = plan(b.model, n, b.data[0], "density", torch.float64, "cpu")
    log.info("layer %s: n = %d\n%s", args.layer, n, p.summary())
    rows = []
    for kind in args.kinds.split(","):
        res = estimate_rank(b.model, b.loss, b.data, kind, method="density", params=args.layer,
                            seed=args.seed, max_matvecs=args.density_matvecs)
        rows.append(_record(res, block="layer", glob=args.layer,
                            density_fraction=res.rank / res.n))
        log.info("layer %-10s n=%d rank=%d [%s, %s] matvecs=%d %.1fs", kind, n, res.rank,
                 res.rank_low, res.rank_high, res.matvecs, res.seconds)
    _plot_density(rows, args.out / "density.png")
    return rows


def part_tokens(args) -> list[dict]:
    estimate_rank, _ = _rank_api()
    glob = BLOCKS[args.token_block]
    settings = [(1, L) for L in (int(x) for x in args.token_lengths.split(","))]
    settings += [(int(s), args.max_length) for s in args.sentence_counts.split(",")]
    rows = []
    for sentences, length in settings:
        b = _bundle(args, num_samples=sentences, max_length=length)
        tokens = int(sum(int(x["attention_mask"].sum()) for x, _ in b.data))
        for kind in args.kinds.split(","):
            res = estimate_rank(b.model, b.loss, b.data, kind, method="sketch", params=glob,
                                seed=args.seed, block_size=args.block_size)
            rows.append(_record(res, block=args.token_block, sentences=sentences,
                                max_length=length, tokens=tokens))
            log.info("N=%d L=%d tokens=%d %-10s rank=%d/%d certified=%s %.1fs", sentences,
                     length, tokens, kind, res.rank, res.n, res.certified, res.seconds)
    _plot_tokens(rows, args.out / "tokens.png")
    return rows


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_blocks(rows, path):
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    blocks = list(dict.fromkeys(r["block"] for r in rows))
    for j, kind in enumerate(KINDS):
        ks = [r for r in rows if r["kind"] == kind]
        axes[0].bar([i + 0.27 * (j - 1) for i in range(len(ks))],
                    [r["rank"] / r["n"] for r in ks], width=0.27, label=kind)
        for r in ks:
            if r["rank_curve"]:
                t, k = zip(*r["rank_curve"], strict=True)
                axes[1].loglog(t, [max(v, 0.5) for v in k], label=f"{r['block']} {kind}")
    axes[0].set_xticks(range(len(blocks)), blocks)
    axes[0].set_ylabel("rank / n")
    axes[0].legend()
    axes[1].set_xlabel("threshold tau")
    axes[1].set_ylabel("rank(tau)")
    axes[1].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _plot_density(rows, path):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for i, r in enumerate(rows):
        lo, hi = r["rank_low"] or r["rank"], r["rank_high"] or r["rank"]
        ax.errorbar([i], [r["rank"]], yerr=[[r["rank"] - lo], [hi - r["rank"]]], fmt="o")
    ax.set_xticks(range(len(rows)), [r["kind"] for r in rows])
    ax.set_ylabel(f"rank of {rows[0]['glob']} (n = {rows[0]['n']:,})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _plot_tokens(rows, path):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for kind in KINDS:
        ks = sorted((r for r in rows if r["kind"] == kind), key=lambda r: r["tokens"])
        if ks:
            ax.plot([r["tokens"] for r in ks], [r["rank"] for r in ks], "o-", label=kind)
    if rows:
        ax.axhline(rows[0]["n"], color="gray", ls=":", label="n")
    ax.set_xlabel("input tokens (real, summed over sentences)")
    ax.set_ylabel(f"rank ({rows[0]['block'] if rows else ''})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--blocks", action="store_true")
    ap.add_argument("--density", action="store_true")
    ap.add_argument("--tokens", action="store_true")
    ap.add_argument("--all", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("hrank-out/minilm"))
    ap.add_argument("--sentences", type=int, default=4, help="built-in sentences (max 16)")
    ap.add_argument("--max-length", type=int, default=16, help="token truncation")
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--block-names", default="layernorm,attn_value,mlp_out",
                    help=f"comma list of {list(BLOCKS)}")
    ap.add_argument("--block-size", type=int, default=8)
    ap.add_argument("--exact-max-n", type=int, default=3000)
    ap.add_argument("--layer", default=LAYER)
    ap.add_argument("--density-matvecs", type=int, default=2000)
    ap.add_argument("--token-block", default="layernorm", choices=list(BLOCKS))
    ap.add_argument("--token-lengths", default="3,4,6,8,12", help="lengths with 1 sentence")
    ap.add_argument("--sentence-counts", default="1,2,4", help="sentence counts at max length")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    parts = {"blocks": part_blocks, "density": part_density, "tokens": part_tokens}
    chosen = [p for p in parts if args.all or getattr(args, p)]
    if not chosen:
        ap.error("choose --blocks, --density, --tokens or --all")
    for name in chosen:
        t0 = time.perf_counter()
        rows = parts[name](args)
        meta = {"part": name, "seconds": time.perf_counter() - t0, "torch": torch.__version__,
                "threads": torch.get_num_threads(), "args": {k: str(v) for k, v in
                                                             vars(args).items()}}
        (args.out / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": rows},
                                                          indent=1, default=str))
        log.info("%s: %d rows in %.1fs -> %s", name, len(rows), meta["seconds"],
                 args.out / f"{name}.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
