"""The project's own documentation (docs/) stays true: the configuration page is what the
settings' help generates, every attack the tests pin is on the security page and every entry
there is pinned by a test, and the pages link only to files that exist."""

from __future__ import annotations

import re

from sf.config import PROJECT_ROOT
from sf.ops import config_docs

DOCS = PROJECT_ROOT / "docs"
TESTS = PROJECT_ROOT / "tests"
SECURITY = DOCS / "security.md"
REFERENCE = re.compile("security" + r"\.md#([a-z0-9-]+)")  # split so this file names none


def test_the_configuration_page_is_the_generated_one():
    assert (DOCS / "configuration.md").read_text() == config_docs.render(), (
        "docs/configuration.md is stale: run `python -m sf.ops.config_docs --write`")


def test_every_setting_has_help_and_appears_on_the_configuration_page():
    page = config_docs.render()
    rows = re.findall(r"^\| `(SF_[A-Z0-9_]+)` \|", page, flags=re.MULTILINE)
    assert len(rows) == len(set(rows)) > 50
    assert "SF_API_INTERNAL_PORT" in rows and "SF_VIEWER_MIN_DWELL_SECONDS" in rows


def security_entries() -> list[str]:
    return re.findall(r"^### ([a-z0-9-]+)$", SECURITY.read_text(), flags=re.MULTILINE)


def security_references() -> dict[str, set[str]]:
    """Entry name → the test files that refer to it."""
    found: dict[str, set[str]] = {}
    for path in sorted(TESTS.rglob("*.py")):
        for name in REFERENCE.findall(path.read_text()):
            found.setdefault(name, set()).add(path.name)
    return found


def test_every_security_reference_in_the_tests_is_an_entry():
    entries = set(security_entries())
    assert {name: files for name, files in security_references().items()
            if name not in entries} == {}


def test_every_security_entry_is_pinned_by_a_test_and_named_once():
    entries = security_entries()
    assert len(entries) == len(set(entries)), "an entry name is used twice"
    assert [name for name in entries if name not in security_references()] == []


def test_every_security_entry_is_one_sentence():
    text = SECURITY.read_text()
    for name in security_entries():
        body = text.split(f"### {name}\n", 1)[1].split("\n\n", 1)[0].strip()
        assert body and "\n" not in body, name


def test_links_between_pages_point_at_files_that_exist():
    broken = []
    for page in [PROJECT_ROOT / "README.md", *sorted(DOCS.glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target:
                continue
            if not (page.parent / target).exists():
                broken.append(f"{page.name} → {target}")
    assert broken == []


def test_the_readme_is_a_front_door():
    """About 150 lines; the reference lives in docs/."""
    readme = (PROJECT_ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    for page in ("architecture", "api", "configuration", "operations", "benchmarks", "security"):
        assert f"docs/{page}.md" in readme, page


def test_no_page_points_outside_the_repository():
    for page in [PROJECT_ROOT / "README.md", *sorted(DOCS.glob("*.md"))]:
        assert "../shared" not in page.read_text(), page.name


def test_each_docs_page_has_a_title():
    for page in sorted(DOCS.glob("*.md")):
        assert page.read_text().startswith("# "), page.name
    assert {path.name for path in DOCS.glob("*.md")} >= {
        "architecture.md", "api.md", "configuration.md", "operations.md", "benchmarks.md",
        "security.md"}
