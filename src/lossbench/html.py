"""report.html: one self-contained page beside summary.md, for a person to open (or mail) as it is.

It holds the verdict, the compact table, every figure embedded as a data URI, and summary.md's details folded
away; no script, no style sheet, font or image is fetched from anywhere, so it opens offline. The layout is one
column that narrows with the screen: wide tables scroll sideways inside their own box, figures shrink to fit.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;padding:0 12px 32px;
max-width:1100px;line-height:1.45;color:#1b1b1b;background:#fff}
h1{font-size:1.5em;margin:16px 0 8px}h2{font-size:1.2em;margin:20px 0 8px;border-bottom:1px solid #ddd}
h3{font-size:1.05em}
.verdict{background:#f3f7ff;border-left:4px solid #2f6fd6;padding:8px 12px;margin:12px 0}
.advice{font-weight:600}
.scroll{overflow-x:auto;-webkit-overflow-scrolling:touch;margin:8px 0}
table{border-collapse:collapse;font-size:.88em}
th,td{border:1px solid #ccc;padding:4px 6px;text-align:left;vertical-align:top}
th{background:#f2f2f2}
tr.best td{background:#eefbe9}
figure{margin:12px 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.85em;color:#555}
details{margin:16px 0}summary{cursor:pointer;font-weight:600}
code{background:#f4f4f4;padding:0 3px;border-radius:3px}
td{white-space:nowrap}td.wrap{white-space:normal}
@media (max-width:600px){body{font-size:15px}table{font-size:.8em}
table.cards thead{display:none}table.cards,table.cards tbody,table.cards tr,table.cards td{display:block;width:auto}
table.cards tr{border:1px solid #ccc;margin:0 0 8px;padding:4px}table.cards td{border:none;white-space:normal;
padding:2px 4px}table.cards td::before{content:attr(data-label) ": ";font-weight:600;color:#444}}
"""


def _inline(text: str) -> str:
    """Markdown's inline marks that summary.md uses (code, bold) on escaped text."""
    text = html.escape(text, quote=False)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)


def _table(rows: list[list[str]], best_first: bool = False, cards: bool = False) -> str:
    """A table in its own sideways-scrolling box; `cards`: on a narrow screen each row becomes a card of
    "column: value" lines (the compact table), instead of scrolling."""
    head, body = rows[0], rows[1:]
    table_class = ' class="cards"' if cards else ""
    cell_class = "" if cards else ' class="wrap"'
    out = [
        f'<div class="scroll"><table{table_class}>',
        "<thead><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in head) + "</tr></thead>",
        "<tbody>",
    ]
    for i, row in enumerate(body):
        css = ' class="best"' if best_first and i == 0 else ""
        cells = "".join(f'<td data-label="{html.escape(h)}"{cell_class}>{_inline(c)}</td>' for h, c in zip(head, row))
        out.append(f"<tr{css}>{cells}</tr>")
    return "\n".join(out + ["</tbody></table></div>"])


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def markdown_to_html(text: str) -> str:
    """The subset of markdown that summary.md is written in: headings, paragraphs, lists, pipe tables."""
    out, paragraph, items, table = [], [], [], []

    def flush() -> None:
        if paragraph:
            out.append("<p>" + _inline(" ".join(paragraph)) + "</p>")
            paragraph.clear()
        if items:
            out.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in items) + "</ul>")
            items.clear()
        if table:
            out.append(_table([row for row in table if not set("".join(row)) <= set("-: ")]))
            table.clear()

    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("|"):
            if paragraph or items:
                flush()
            table.append(_cells(stripped))
            continue
        if table:
            flush()
        if not stripped:
            flush()
        elif stripped.startswith("#"):
            flush()
            level = min(len(stripped) - len(stripped.lstrip("#")) + 1, 4)
            out.append(f"<h{level}>{_inline(stripped.lstrip('#').strip())}</h{level}>")
        elif stripped.startswith("- "):
            if paragraph:
                flush()
            items.append(stripped[2:])
        elif items and line.startswith("  "):
            items[-1] += " " + stripped
        else:
            paragraph.append(stripped)
    flush()
    return "\n".join(out)


def figure(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    name = html.escape(Path(path).name)
    return f'<figure><img alt="{name}" src="data:image/png;base64,{data}"><figcaption>{name}</figcaption></figure>'


def page(title: str, verdict, markdown: str, figures: list[Path]) -> str:
    """The whole report.html: the verdict, the compact table, the figures, then summary.md's details folded."""
    from lossbench.verdict import compact_rows  # verdict imports nothing of this module; report imports both

    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>lossbench report: {html.escape(title)}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>lossbench report: {html.escape(title)}</h1>",
    ]
    if verdict is not None:
        parts.append('<section class="verdict" id="verdict"><h2>Verdict</h2>')
        parts.append(f"<p>{_inline(verdict.headline)}</p>")
        if verdict.lines:
            parts.append("<ul>" + "".join(f"<li>{_inline(line)}</li>" for line in verdict.lines) + "</ul>")
        if verdict.advice:
            parts.append(f'<p class="advice">Advice: {_inline(verdict.advice)}</p>')
        parts.append("</section>")
        header, rows = compact_rows(verdict)
        if rows:
            parts += [
                '<section id="glance"><h2>At a glance</h2>',
                _table([header, *rows], best_first=True, cards=True),
                "</section>",
            ]
    if figures:
        parts += ['<section id="figures"><h2>Figures</h2>', *(figure(p) for p in figures), "</section>"]
    shown, folded = [], []
    for section in re.split(r"\n(?=## )", markdown):
        heading = section.lstrip().splitlines()[0] if section.strip() else ""
        if heading.startswith(("# Summary", "## Verdict", "## At a glance")):
            continue
        (shown if heading.startswith("## Rescored") else folded).append(section)
    parts += [markdown_to_html(s) for s in shown]
    parts += [
        '<details id="details"><summary>Details: every measure, the tests against ce, warnings</summary>',
        markdown_to_html("\n".join(folded)),
        "</details>",
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"
