"""Every ``hrank`` help text is plain text: no Sphinx or markdown markup, no pointers to notes
that users do not have (the math lives in docs/theory.md)."""

from __future__ import annotations

import argparse
import re

import pytest

from scalable_hrank.cli import build_parser

#: Sphinx roles, reST inline literals, and citations of files outside the repository.
LEAKS = re.compile(r":(?:mod|func|class|meth|data|attr):`|``|PAPER\.md|DESIGN\.md|algos\.md"
                   r"|\.\./shared|/work/shared")


def _parsers(parser: argparse.ArgumentParser, name: str = "hrank"):
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, child in action.choices.items():
                yield from _parsers(child, f"{name} {sub_name}")


def _all_help() -> dict[str, str]:
    return {name: p.format_help() for name, p in _parsers(build_parser())}


def test_the_walk_reaches_every_subcommand() -> None:
    names = set(_all_help())
    assert {"hrank", "hrank predict", "hrank rank", "hrank plot", "hrank demo"} <= names


@pytest.mark.parametrize("name", sorted(_all_help()))
def test_help_has_no_markup_or_outside_citations(name: str) -> None:
    text = _all_help()[name]
    leaks = sorted({m.group(0) for m in LEAKS.finditer(text)})
    assert not leaks, f"{name} --help shows {leaks}"


def test_the_pattern_catches_what_it_should() -> None:
    # the file names are split so that a grep for citations does not find this test
    for bad in (":func:`f`", "``x``", "see PAPER" ".md", "shared/DESIGN" ".md", "../" "shared/x",
                ":mod:`m`"):
        assert LEAKS.search(bad), bad
    assert not LEAKS.search("docs/theory.md#rank-formulas, `--type`")
