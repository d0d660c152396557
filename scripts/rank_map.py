"""Draw a collected block sweep as a rank map: blocks by kinds, colour rank/n, certified marked.

    python scripts/rank_map.py hrank-out/minilm-blocks/results.json \
        --out docs/figures/minilm_rank_map.png

Each cell shows rank / n (and the formula bound when it is below n); a cell whose rank is not
certified (or exact) is hatched. ``hrank plot`` draws the same map for any collected sweep.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

KINDS = ("loss", "outer", "functional")
LABELS = {"loss": "H_L", "outer": "H_O", "functional": "H_F"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", type=Path, help="results.json of hrank collect")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    rows = [r for r in json.loads(args.results.read_text())["rows"] if r["status"] == "ok"]
    blocks = list(dict.fromkeys(r["block"] for r in rows))
    cell = {(r["block"], r["kind"]): r for r in rows}
    ratio = np.full((len(blocks), len(KINDS)), np.nan)
    fig, ax = plt.subplots(figsize=(6.5, 0.32 * len(blocks) + 1.4))
    for i, block in enumerate(blocks):
        for j, kind in enumerate(KINDS):
            r = cell.get((block, kind))
            if r is None:
                continue
            ratio[i, j] = r["rank"] / r["n"]
            text = f"{r['rank']}/{r['n']}"
            if r.get("bound") is not None and r["bound"] < r["n"]:
                text += f" (<= {r['bound']})"
            ax.text(j, i, text, ha="center", va="center", fontsize=7)
            if r.get("guarantee") not in ("exact", "certified"):
                ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="//"))
    image = ax.imshow(ratio, cmap="viridis", vmin=0, vmax=1, aspect="auto", alpha=0.75)
    ax.set_xticks(range(len(KINDS)), [LABELS[k] for k in KINDS])
    ax.set_yticks(range(len(blocks)), blocks, fontsize=7)
    ax.set_title("rank / n per block (all certified unless hatched)", fontsize=9)
    fig.colorbar(image, ax=ax, label="rank / n", fraction=0.05)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=130)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
