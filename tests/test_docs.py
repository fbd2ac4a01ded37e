"""Every image and relative link of the user guide and the README resolves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors of a Markdown page."""
    anchors = set()
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


def _links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    return [m for m in LINK.findall(text) if not re.match(r"[a-z]+:", m)]


def test_the_guide_has_its_pages_and_pictures():
    names = {p.relative_to(ROOT).as_posix() for p in PAGES}
    assert {"docs/README.md", "docs/tutorial.md", "docs/cli.md"} <= names
    assert len([p for p in PAGES if p.parent.name == "widgets"]) == 5
    images = [link for page in PAGES for link in _links(page) if link.endswith(".png")]
    assert len(set(images)) >= 6


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(page: Path):
    broken = []
    for link in _links(page):
        target, _, anchor = link.partition("#")
        path = (page.parent / target).resolve() if target else page
        if not path.exists() or (path.suffix == ".md" and anchor not in _anchors(path) | {""}):
            broken.append(link)
    assert not broken, f"{page.name}: {broken}"


IMPORT = re.compile(r"^\s*from (napari_cellsparse[\w.]*) import ([\w, ]+)$", re.M)


def test_every_import_the_docs_show_works():
    """The Python the README and the guide show imports what it names from where it says."""
    import importlib

    shown = {
        (m, n.strip())
        for p in PAGES
        for m, names in IMPORT.findall(p.read_text("utf-8"))
        for n in names.split(",")
        if n.strip()
    }
    assert len(shown) >= 10
    missing = [f"{m}.{n}" for m, n in sorted(shown) if not hasattr(importlib.import_module(m), n)]
    assert not missing
