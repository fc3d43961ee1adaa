"""The Markdown files hold together: every relative link, image and anchor resolves, every page under docs/ is
reachable from the README and listed in docs/index.md, and the README stays short. External links are not fetched
(the suite runs offline)."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parent.parent
README_MAX_LINES = 250  # the README is the way in; the rest lives under docs/

FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1[^\n]*$", re.S | re.M)
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+[\"'][^\"']*[\"'])?\s*\)")
REFERENCE_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.M)
HTML_TARGET = re.compile(r"<(?:img|a|source)\b[^>]*?\b(?:src|href|srcset)\s*=\s*[\"']([^\"']+)[\"']", re.I)
HTML_ANCHOR = re.compile(r"<[a-z][^>]*?\b(?:id|name)\s*=\s*[\"']([^\"']+)[\"']", re.I)
HEADING = re.compile(r"^ {0,3}#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", re.M)
SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)  # http:, https:, mailto:, data:, ...


def markdown_files(root: Path) -> list[Path]:
    """Every *.md of the repository, outside hidden folders (.git, .venv) and virtual environments."""
    found = []
    for path in sorted(root.rglob("*.md")):
        parts = path.relative_to(root).parts[:-1]
        if any(p.startswith(".") for p in parts):
            continue
        if any((root.joinpath(*parts[: i + 1]) / "pyvenv.cfg").exists() for i in range(len(parts))):
            continue
        found.append(path)
    return found


def prose(text: str) -> str:
    """The text with fenced code blocks and code spans blanked: a link written inside code is not a link."""
    text = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    return CODE_SPAN.sub(lambda m: " " * len(m.group(0)), text)


def targets(text: str) -> list[str]:
    """Every link, image and HTML src/href target of a Markdown text."""
    text = prose(text)
    found = INLINE_LINK.findall(text) + REFERENCE_DEF.findall(text) + HTML_TARGET.findall(text)
    return [t for t in found if t]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its rendered text lower-cased, punctuation other than '-' and '_' dropped,
    spaces made '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link renders as its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").replace("*", "")
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors a Markdown file offers: its headings' slugs (repeats numbered as GitHub does) and HTML ids."""
    text = path.read_text(encoding="utf-8")
    seen: Counter[str] = Counter()
    found = set(HTML_ANCHOR.findall(text))
    for heading in HEADING.findall(FENCE.sub("", text)):
        base = slug(heading)
        found.add(base if not seen[base] else f"{base}-{seen[base]}")
        seen[base] += 1
    return found


def broken_links(page: Path, root: Path) -> list[str]:
    """One line per target of `page` that does not resolve to a file in `root` (or to an anchor in it)."""
    problems = []
    for target in targets(page.read_text(encoding="utf-8")):
        if SCHEME.match(target) or target.startswith("//"):
            continue  # external: not fetched offline
        where, _, anchor = target.partition("#")
        file = (page.parent / unquote(where)).resolve() if where else page
        if root.resolve() not in (file, *file.parents):
            problems.append(f"{target}: outside the repository")
        elif not file.exists():
            problems.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and unquote(anchor) not in anchors(file):
            problems.append(f"{target}: no heading #{anchor} in {file.relative_to(root.resolve())}")
    return problems


def linked_pages(page: Path) -> set[Path]:
    """The local Markdown files that `page` links to."""
    pages = set()
    for target in targets(page.read_text(encoding="utf-8")):
        where = target.partition("#")[0]
        if where.endswith(".md") and not SCHEME.match(where):
            pages.add((page.parent / unquote(where)).resolve())
    return pages


def reachable(start: Path) -> set[Path]:
    seen, todo = {start.resolve()}, [start.resolve()]
    while todo:
        for page in linked_pages(todo.pop()):
            if page.exists() and page not in seen:
                seen.add(page)
                todo.append(page)
    return seen


def docs_pages() -> list[Path]:
    return sorted((ROOT / "docs").rglob("*.md"))


@pytest.mark.parametrize("page", markdown_files(ROOT), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_image_and_anchor_resolves(page):
    assert broken_links(page, ROOT) == []


def test_every_docs_page_is_reachable_from_the_readme_and_listed_in_the_index():
    assert docs_pages(), "docs/ has no pages"
    from_readme = reachable(ROOT / "README.md")
    assert [str(p.relative_to(ROOT)) for p in docs_pages() if p.resolve() not in from_readme] == []
    index = ROOT / "docs" / "index.md"
    listed = linked_pages(index)
    assert [str(p.relative_to(ROOT)) for p in docs_pages() if p != index and p.resolve() not in listed] == []


def test_the_readme_stays_short():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move details under docs/"


def test_the_check_finds_each_kind_of_broken_link(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "fig.png").write_bytes(b"png")
    (tmp_path / "docs" / "page.md").write_text("# A page\n\n## Two words, `code` (here)\n", encoding="utf-8")
    readme = tmp_path / "README.md"
    readme.write_text(
        "# Top\n\n"
        "[fine](docs/page.md#two-words-code-here) ![fine](fig.png) [web](https://example.org/x.md) [self](#top)\n"
        "```\n[in code](nowhere.md)\n```\n`[in a span](nowhere.md)`\n"
        '[missing](docs/nope.md) ![missing](figs/none.png) <img src="gone.png" alt="x">\n'
        "[bad anchor](docs/page.md#three-words) [escapes](../outside.md)\n[ref]: docs/other.md\n",
        encoding="utf-8",
    )
    problems = broken_links(readme, tmp_path)
    assert [p.split(":")[0] for p in problems] == [
        "docs/nope.md",
        "figs/none.png",
        "docs/page.md#three-words",
        "../outside.md",
        "docs/other.md",
        "gone.png",
    ]


def test_slugs_follow_githubs_rules():
    assert slug("CIFAR-10, every loss tuned (`results/cifar10/`)") == "cifar-10-every-loss-tuned-resultscifar10"
    assert slug("Many runs at once, and beyond one machine") == "many-runs-at-once-and-beyond-one-machine"
    assert slug("Tuning (`results/cifar10_tuning/`)") == "tuning-resultscifar10_tuning"
    assert slug("Set-up: two commands") == "set-up-two-commands"
