"""README.md and the MkDocs site in docs/ link only to pages and anchors that exist.

Links are checked twice: as GitHub renders the files (its heading anchors, relative file links,
so README.md's links into docs/ work on GitHub), and as `mkdocs build --strict` does (which fails
on a link to a missing page or anchor; mkdocs.yml turns those checks on).
"""

from __future__ import annotations

import html
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

README = REPO_ROOT / "README.md"
DOCS = REPO_ROOT / "docs"
MKDOCS_YML = REPO_ROOT / "mkdocs.yml"
BUILD_TIMEOUT_SECONDS = 60
# Never --quiet: it drops the warnings that --strict counts, and a broken link then passes.
MKDOCS_BUILD = (sys.executable, "-m", "mkdocs", "build", "--strict")

FENCE = re.compile(r"^\s*```")
CODE_SPAN = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\[[^\]\n]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^(#{1,6}) +(.+?) *#*$")
HTML_ID = re.compile(r'<a id="([^"]+)"')


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks (a `# comment` in a shell block is no heading)."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: formatting dropped, punctuation dropped, spaces to '-'."""
    text = heading.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    for line in prose_lines(path.read_text()):
        if m := HEADING.match(line):
            slug = github_slug(m.group(2))
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            found.add(slug if n == 0 else f"{slug}-{n}")
        found.update(HTML_ID.findall(line))
    return found


def links(path: Path) -> list[str]:
    out: list[str] = []
    for line in prose_lines(path.read_text()):
        out += LINK.findall(CODE_SPAN.sub("``", line))
    return out


def broken_links(path: Path) -> list[str]:
    """Every relative link of `path` whose file or `#anchor` does not exist."""
    broken = []
    for target in links(path):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto: …: not ours to check
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and (dest.is_dir() or anchor not in anchors(dest)):
            broken.append(f"{target}: no such anchor")
    return broken


def mkdocs_build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MKDOCS_BUILD, "--config-file", str(config), "--site-dir", str(site)],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_SECONDS,
        check=False,
    )


def test_readme_links_into_the_docs_resolve() -> None:
    targets = links(README)
    assert any(t.startswith("docs/") for t in targets), "README.md should link into docs/"
    assert broken_links(README) == []


@pytest.mark.parametrize("page", sorted(p.name for p in DOCS.glob("*.md")))
def test_every_docs_page_link_resolves_as_github_shows_it(page: str) -> None:
    assert broken_links(DOCS / page) == []


def test_every_docs_page_is_in_the_nav() -> None:
    nav = MKDOCS_YML.read_text().split("\nnav:\n", 1)[1]
    assert sorted(re.findall(r": (\S+\.md)$", nav, re.M)) == sorted(
        p.name for p in DOCS.glob("*.md")
    )


def test_the_docs_home_page_is_the_readme_up_to_its_documentation_list() -> None:
    """docs/index.md is README.md's first part (what it is, the commands, a first session), its
    links into docs/ made relative to docs/: the two cannot drift apart."""
    head = README.read_text().split("\n## Documentation\n", 1)[0].rstrip("\n") + "\n"
    assert (DOCS / "index.md").read_text() == head.replace("](docs/", "](")


def code_blocks(text: str) -> list[str]:
    """The contents of every fenced code block, as pasted: the list item's indentation removed."""
    blocks, current, indent = [], list[str](), None
    for line in text.splitlines():
        if m := re.match(r"^(\s*)```", line):
            if indent is None:
                indent, current = m.group(1), []
            else:
                blocks.append(textwrap.dedent("\n".join(current)))
                indent = None
        elif indent is not None:
            current.append(line)
    return blocks


def page_html_text(site: Path, page: str) -> str:
    name = page.removesuffix(".md")
    built = site / ("index.html" if name == "index" else f"{name}/index.html")
    return html.unescape(re.sub(r"<[^>]+>", "", built.read_text()))


def test_mkdocs_strict_build_succeeds_and_shows_every_command_as_written(tmp_path: Path) -> None:
    """The site builds, and each code block (a command, a file, a transcript) appears in it line
    for line, so that what is copied from the site is what the docs say, even inside a numbered
    step (plain Markdown would run such a block together into one line of inline code)."""
    site = tmp_path / "site"
    result = mkdocs_build(MKDOCS_YML, site)
    assert result.returncode == 0, result.stderr
    for page in sorted(DOCS.glob("*.md")):
        blocks = code_blocks(page.read_text())
        shown = page_html_text(site, page.name)
        for block in blocks:
            # Python-Markdown expands tabs (the Caddyfile's indentation) to four spaces.
            assert block.strip("\n").expandtabs(4) in shown, f"{page.name}: {block[:60]!r}"


@pytest.mark.parametrize(
    "bad_link",
    ["[x](queue.md#no-such-anchor)", "[x](no-such-page.md)", "[x](#no-such-anchor-here)"],
)
def test_mkdocs_strict_build_fails_on_a_broken_link(tmp_path: Path, bad_link: str) -> None:
    """The check above is not vacuous: one broken link or anchor fails the build."""
    shutil.copytree(DOCS, tmp_path / "docs")
    shutil.copy(MKDOCS_YML, tmp_path / "mkdocs.yml")
    with (tmp_path / "docs" / "security.md").open("a") as page:
        page.write(f"\nSee {bad_link}.\n")
    result = mkdocs_build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert result.returncode != 0
    assert "security.md" in result.stderr


def test_the_backup_example_names_the_schema_at_head() -> None:
    """The example output of ``backup`` shows the schema a fresh install is at."""
    from nexus_bridge.db.migrate import head_revisions

    shown = re.findall(r"schema (\d{4}) \(current\)", (DOCS / "operating.md").read_text())
    assert shown, "docs/operating.md shows no backup output"
    assert set(shown) == set(head_revisions())
