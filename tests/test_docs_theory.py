"""docs/theory.md has the sections other files link to, and every such link resolves."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
THEORY = ROOT / "docs" / "theory.md"
REQUIRED = ("rank-formulas", "threshold-rule", "estimator-guarantees", "loss-conventions")
LINK = re.compile(r"theory\.md#([A-Za-z0-9_-]+)")


def _slug(heading: str) -> str:
    """GitHub's anchor for a markdown heading: lower case, punctuation dropped, spaces -> '-'."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors() -> set[str]:
    lines = THEORY.read_text(encoding="utf-8").splitlines()
    return {_slug(line.lstrip("#")) for line in lines if re.match(r"#{1,6} ", line)}


def test_slug_rule() -> None:
    assert _slug(" Rank formulas") == "rank-formulas"
    assert _slug(" sketch and lanczos (certified block Krylov)") == (
        "sketch-and-lanczos-certified-block-krylov")


def test_required_sections_exist() -> None:
    assert set(REQUIRED) <= _anchors()


def test_every_link_into_theory_resolves() -> None:
    anchors = _anchors()
    files = [ROOT / "README.md"]
    for folder in ("src", "docs", "tests", "scripts"):
        files += [p for p in (ROOT / folder).rglob("*") if p.suffix in (".py", ".md", ".sh")]
    broken, seen = [], 0
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        for match in LINK.finditer(text):
            seen += 1
            if match.group(1) not in anchors and path.name != Path(__file__).name:
                broken.append(f"{path.relative_to(ROOT)}: #{match.group(1)}")
    assert seen >= 5  # docs/CONTRACTS.md, docs/reproduction.md and the theory package link here
    assert not broken, broken
