"""The repository explains itself: every repository path that a doc or a docstring cites
exists, and nothing points at a file outside the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOP = (
    "docs", "worker", "triggers", "tests", "config", "templates", "migrations", "bench", "schema",
)  # fmt: skip
# A path: one of the top folders, then name characters, ending in a file suffix.
CITED = re.compile(
    r"(?<![\w./-])((?:" + "|".join(TOP) + r")/[\w.-]+(?:/[\w.-]+)*\.(?:py|md|yaml|yml|json|csv|"
    r"html|txt|mako|jsonl))(?![\w/-])"
)
CODE = ("worker", "triggers", "tests", "bench", "migrations")
SOURCES = sorted(
    [ROOT / "README.md", *ROOT.glob("docs/*.md")]
    + [path for top in CODE for path in ROOT.glob(f"{top}/**/*.py")]
)
# Files that a doc names as an example of what a user would add, not as ours.
EXAMPLES = re.compile(r"\.(?:[a-z]{2}_[A-Z]{2}|[a-z]{2}-[A-Z]{2})\.|/my_|/your_|example|/[a-z][./]")


def _cited(path: Path) -> list[tuple[int, str]]:
    text = path.read_text(encoding="utf-8", errors="replace")
    return [
        (text.count("\n", 0, match.start()) + 1, match.group(1)) for match in CITED.finditer(text)
    ]


@pytest.mark.parametrize("source", SOURCES, ids=[str(p.relative_to(ROOT)) for p in SOURCES])
def test_every_cited_repository_path_exists(source: Path) -> None:
    missing = [
        f"{source.relative_to(ROOT)}:{line}: {cited}"
        for line, cited in _cited(source)
        if not (ROOT / cited).exists() and not EXAMPLES.search(cited)
    ]
    assert missing == []


def test_nothing_cites_a_file_outside_the_repository() -> None:
    """The design brief the project started from is not part of the repository."""
    offenders = [
        str(path.relative_to(ROOT))
        for path in SOURCES
        if path != Path(__file__).resolve() and "DESIGN" + ".md" in path.read_text("utf-8")
    ]
    assert offenders == []
