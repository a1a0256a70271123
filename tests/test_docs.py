"""The documentation: the MkDocs site builds with --strict (a link to a missing page or heading, a page left out of
the navigation, fails), and the README, the landing page, stays short and links only to what exists. All of it on
the project as a clone has it (conftest's `project` copy: the tracked files), so that a page not yet added to git,
or a draft beside the others, neither makes a link good nor fails the build."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote

README_MAX_LINES = 250
# [text](target) and ![alt](target); a target ends at whitespace (an optional "title") or the closing parenthesis
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1\s*$", re.MULTILINE | re.DOTALL)


def test_mkdocs_build_strict(project, tmp_path):
    site = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (site / "index.html").is_file() and (site / "parameters" / "index.html").is_file()


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, each space a hyphen."""
    text = re.sub(r"[`*_]|<[^>]+>", "", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(markdown: Path) -> set[str]:
    text = FENCE.sub("", markdown.read_text())
    return {github_slug(h) for h in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.MULTILINE)}


def readme_links(root: Path) -> list[str]:
    text = FENCE.sub("", (root / "README.md").read_text())  # code blocks hold shell lines, not links
    return LINK.findall(text)


def test_readme_is_a_short_landing_page(project):
    lines = (project / "README.md").read_text().splitlines()
    assert len(lines) < README_MAX_LINES, f"README.md has {len(lines)} lines; move details into docs/"


def test_readme_relative_links_point_at_existing_files_and_headings(project):
    root = project.resolve()
    links = [link for link in readme_links(root) if not re.match(r"^[a-z][a-z0-9+.-]*:", link)]  # http:, mailto:
    assert any(link.startswith("docs/") for link in links)
    broken = []
    for link in links:
        path, _, anchor = link.partition("#")
        target = (root / unquote(path)).resolve() if path else root / "README.md"
        if not target.exists() or root not in (target, *target.parents):
            broken.append(f"{link}: no such file in the repository")
        elif anchor and (target.suffix != ".md" or anchor not in anchors(target)):
            broken.append(f"{link}: no heading #{anchor} in {target.relative_to(root)}")
    assert not broken, broken


def test_every_docs_page_is_linked_from_the_readme(project):
    root = project.resolve()
    linked = {(root / link.partition("#")[0]).resolve() for link in readme_links(root)}
    pages = set((root / "docs").glob("*.md"))
    assert pages - linked == set(), sorted(str(p.relative_to(root)) for p in pages - linked)
