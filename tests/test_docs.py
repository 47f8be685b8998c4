"""The docs hold together: every relative link and #anchor in README.md,
CONTRIBUTING.md and docs/*.md leads somewhere, and the configuration table
is the one the declarations make."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from configdoc import DOC, committed_table, render_table

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted([ROOT / "README.md", ROOT / "CONTRIBUTING.md", *(ROOT / "docs").glob("*.md")])
LINK = re.compile(r"\]\(([^)\s]+)\)")


def prose(text: str) -> str:
    """The text outside fenced code blocks, where "# comment" is no heading."""
    return "".join(part for i, part in enumerate(re.split(r"^```.*$", text, flags=re.MULTILINE))
                   if i % 2 == 0)


def anchors(page: Path) -> set[str]:
    """The anchors GitHub gives a page's headings: lower-case, spaces to '-',
    punctuation dropped."""
    headings = re.findall(r"^#+ (.+)$", prose(page.read_text()), re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_the_readme_stays_a_front_door() -> None:
    assert len((ROOT / "README.md").read_bytes()) < 20_000


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves(page: Path) -> None:
    broken = []
    for target in LINK.findall(prose(page.read_text())):
        if re.match(r"[a-z]+:", target):  # https:, mailto:: not ours to check
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        found = linked.exists() and (
            not anchor or (linked.suffix == ".md" and anchor in anchors(linked)))
        if not found:
            broken.append(target)
    assert broken == []


def test_the_configuration_table_is_the_declarations() -> None:
    # Regenerate with `python tests/configdoc.py` after changing an option.
    assert committed_table(DOC.read_text()) == render_table()
