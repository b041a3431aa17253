"""README is the front door; the reference lives in docs/. The configuration page is generated from
the settings object, README stays short, every link resolves and every page is reachable."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from config import reference
from config.settings import Settings

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
DOCS = REPO / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
README_MAX_BYTES = 12_000
# Variables the test suite reads besides the settings (docs/configuration.md names them).
TEST_VARIABLES = {"LOYALTY_TEST_KAFKA_PORT"}

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", flags=re.M | re.S)
HEADING = re.compile(r"^#{1,6} +(.+?) *$", flags=re.M)


def _id(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def _prose(path: Path) -> str:
    """The page without its fenced code blocks (a link or heading inside one is not one)."""
    return FENCE.sub("", path.read_text())


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens, -1, -2 on repeats."""
    anchors: set[str] = set()
    for heading in HEADING.findall(_prose(path)):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        candidate, n = slug, 0
        while candidate in anchors:
            n += 1
            candidate = f"{slug}-{n}"
        anchors.add(candidate)
    return anchors


def _relative_links(path: Path) -> list[str]:
    return [t for t in LINK.findall(_prose(path)) if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


def test_configuration_page_is_generated_from_the_settings():
    page = (DOCS / "configuration.md").read_text()
    assert page == reference.markdown(), f"docs/configuration.md is out of date; run: {reference.REGENERATE}"


def test_configuration_table_lists_every_setting():
    text = (DOCS / "configuration.md").read_text()
    documented = set(re.findall(r"^\| `(LOYALTY_[A-Z0-9_]+)` \|", text, flags=re.M))
    assert documented == {f"LOYALTY_{name.upper()}" for name in Settings.model_fields}


def test_reference_never_shows_a_secret_value():
    secrets = [name for name, info in Settings.model_fields.items() if reference.is_secret(info)]
    assert secrets
    rows = {line.split(" | ")[0]: line.split(" | ")[1] for line in reference.markdown().splitlines() if line.startswith("| `")}
    assert {rows[f"| `LOYALTY_{name.upper()}`"] for name in secrets} <= {"*unset*", "`***`"}


def test_readme_is_short():
    size = len(README.read_bytes())
    assert size < README_MAX_BYTES, f"README.md is {size} bytes; move reference material to docs/"


def test_the_two_commands_are_the_ones_ci_runs():
    text = README.read_text()
    ci = (REPO / ".ci" / "run").read_text()
    for command in ("./loyalty demo ", "./loyalty demo --once", "./loyalty test "):
        assert command in text
    assert "\n./loyalty test\n" in ci


@pytest.mark.parametrize("page", PAGES, ids=_id)
def test_relative_links_resolve(page: Path):
    for target in _relative_links(page):
        file, _, anchor = target.partition("#")
        linked = (page.parent / file).resolve() if file else page
        assert linked.is_file(), f"{_id(page)} links to {target}: no such file"
        if anchor:
            assert anchor in _anchors(linked), f"{_id(page)} links to {target}: no such heading"


def test_every_docs_page_is_linked_from_readme():
    linked = {(README.parent / t.partition("#")[0]).resolve() for t in _relative_links(README)}
    unlinked = [_id(p) for p in DOCS.glob("*.md") if p.resolve() not in linked]
    assert not unlinked, f"not linked from README.md: {unlinked}"


@pytest.mark.parametrize("page", PAGES, ids=_id)
def test_named_variables_are_settings(page: Path):
    settings = {f"LOYALTY_{name.upper()}" for name in Settings.model_fields}
    for name, wildcard in re.findall(r"(LOYALTY_[A-Z0-9_]*[A-Z0-9])(_\*)?", page.read_text()):
        if wildcard:
            assert any(s.startswith(name + "_") for s in settings), f"{_id(page)}: no setting matches {name}_*"
        else:
            assert name in settings | TEST_VARIABLES, f"{_id(page)} names {name}, which is not a setting"
