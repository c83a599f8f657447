"""The report's page: one self-contained HTML file (inline CSS, PNGs as base64 data URIs, no script, no external asset)
and the same content as Markdown (``summary.md``, linking the PNG files written next to it).

Nothing here computes a number: :func:`kdkit.report.write_report` fills a :class:`Page`, and the two renderers only
lay it out, so the page and the Markdown never disagree.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field

from kdkit.report.runs import ROLE_COLORS, ROLE_LABELS

__all__ = ["Table", "Plot", "Section", "Page", "render_html", "render_markdown"]


@dataclass
class Table:
    """A table of already-formatted cells. ``roles[i]`` (optional) shows row *i*'s cell in column ``role_col`` as a
    chip in the role's colour; ``numeric[j]`` right-aligns column *j*."""

    headers: list[str]
    rows: list[list[str]]
    roles: list[str] = field(default_factory=list)
    numeric: list[bool] = field(default_factory=list)
    role_col: int = 0


@dataclass
class Plot:
    """A PNG (bytes) with the file name it is also written under and a caption saying how to read it."""

    filename: str
    png: bytes
    alt: str
    caption: str = ""


@dataclass
class Section:
    title: str
    intro: str = ""
    tables: list[Table] = field(default_factory=list)
    plots: list[Plot] = field(default_factory=list)
    bullets: list[str] = field(default_factory=list)
    anchor: str = ""


@dataclass
class Page:
    title: str
    glance: str
    glance_details: list[str]
    sections: list[Section]
    footer: str = ""
    glance_role: str = "distilled"


_CSS = """
:root { --ink:#1d1d1f; --muted:#5f6368; --line:#e3e3e3; --bg:#ffffff; --soft:#f6f7f9; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--ink);
       font: 16px/1.5 "DejaVu Sans", "Segoe UI", Helvetica, Arial, sans-serif; }
main { max-width: 1340px; margin: 0 auto; padding: 28px 32px 48px; }
h1 { font-size: 22px; margin: 0 0 14px; color: var(--muted); font-weight: 600; letter-spacing: .2px; }
h2 { font-size: 21px; margin: 38px 0 10px; padding-bottom: 6px; border-bottom: 2px solid var(--line); }
h3 { font-size: 17px; margin: 22px 0 6px; }
.glance { border-left: 8px solid var(--accent); background: var(--soft); padding: 18px 24px; border-radius: 6px; }
.glance .headline { font-size: 29px; font-weight: 700; line-height: 1.3; }
.glance ul { margin: 10px 0 0; padding-left: 20px; color: var(--muted); font-size: 15.5px; }
nav { margin: 14px 0 0; font-size: 14.5px; color: var(--muted); }
nav a { color: #0b57d0; text-decoration: none; margin-right: 14px; }
p.intro { color: var(--muted); margin: 4px 0 12px; max-width: 1100px; }
figure { margin: 12px 0 22px; }
figure img { width: 100%; height: auto; border: 1px solid var(--line); border-radius: 4px; display: block; }
figcaption { color: var(--muted); font-size: 14px; margin-top: 6px; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 14.5px; }
th, td { padding: 6px 10px; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
th { background: var(--soft); font-weight: 600; border-bottom: 2px solid #cfcfcf; white-space: nowrap; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr:nth-child(even) td { background: #fbfbfc; }
.role { display: inline-block; padding: 1px 9px; border-radius: 10px; color: #fff; font-size: 13px;
        font-weight: 600; white-space: nowrap; }
ul.notes { color: var(--muted); font-size: 14.5px; }
footer { margin-top: 36px; color: var(--muted); font-size: 13px; border-top: 1px solid var(--line); padding-top: 10px; }
code { background: var(--soft); padding: 1px 5px; border-radius: 3px; font-size: 14px; }
"""


def _e(text: str) -> str:
    return html.escape(str(text), quote=True)


def role_chip(role: str) -> str:
    color = ROLE_COLORS.get(role, "#333333")
    return f'<span class="role" style="background:{color}">{_e(ROLE_LABELS.get(role, role))}</span>'


def _html_table(t: Table) -> str:
    numeric = list(t.numeric) + [False] * (len(t.headers) - len(t.numeric))
    head = "".join(f'<th class="num">{_e(h)}</th>' if numeric[j] else f"<th>{_e(h)}</th>"
                   for j, h in enumerate(t.headers))
    body = []
    for i, row in enumerate(t.rows):
        cells = []
        for j, cell in enumerate(row):
            if j == t.role_col and i < len(t.roles) and t.roles[i]:
                cells.append(f"<td>{role_chip(t.roles[i])}</td>")
            else:
                cls = ' class="num"' if numeric[j] else ""
                cells.append(f"<td{cls}>{_e(cell)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def render_html(page: Page) -> str:
    """The whole page as one HTML string (UTF-8, no external references)."""
    accent = ROLE_COLORS.get(page.glance_role, "#333333")
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>{_e(page.title)}</title>", f"<style>{_CSS}</style></head><body><main>",
           f"<h1>{_e(page.title)}</h1>",
           f'<section class="glance" style="--accent:{accent}"><div class="headline">{_e(page.glance)}</div>']
    if page.glance_details:
        out.append("<ul>" + "".join(f"<li>{_e(d)}</li>" for d in page.glance_details) + "</ul>")
    out.append("</section>")
    links = [f'<a href="#{_e(s.anchor)}">{_e(s.title)}</a>' for s in page.sections if s.anchor]
    if links:
        out.append("<nav>" + "".join(links) + "</nav>")
    for s in page.sections:
        anchor = f' id="{_e(s.anchor)}"' if s.anchor else ""
        out.append(f"<h2{anchor}>{_e(s.title)}</h2>")
        if s.intro:
            out.append(f'<p class="intro">{_e(s.intro)}</p>')
        for t in s.tables:
            out.append(_html_table(t))
        for p in s.plots:
            cap = f"<figcaption>{_e(p.caption)}</figcaption>" if p.caption else ""
            out.append(f'<figure><img src="{_data_uri(p.png)}" alt="{_e(p.alt)}">{cap}</figure>')
        if s.bullets:
            out.append('<ul class="notes">' + "".join(f"<li>{_e(b)}</li>" for b in s.bullets) + "</ul>")
    if page.footer:
        out.append(f"<footer>{_e(page.footer)}</footer>")
    out.append("</main></body></html>")
    return "\n".join(out) + "\n"


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_table(t: Table) -> list[str]:
    numeric = list(t.numeric) + [False] * (len(t.headers) - len(t.numeric))
    lines = ["| " + " | ".join(_md_cell(h) for h in t.headers) + " |",
             "|" + "".join("---:|" if n else "---|" for n in numeric[: len(t.headers)])]
    for i, row in enumerate(t.rows):
        cells = list(row)
        if i < len(t.roles) and t.roles[i]:
            cells[t.role_col] = ROLE_LABELS.get(t.roles[i], t.roles[i])
        lines.append("| " + " | ".join(_md_cell(c) for c in cells) + " |")
    return lines


def render_markdown(page: Page, image_dir: str = "") -> str:
    """The page as Markdown; images are linked as ``image_dir/filename`` (relative to summary.md)."""
    prefix = f"{image_dir.rstrip('/')}/" if image_dir else ""
    out = [f"# {page.title}", "", f"**{page.glance}**", ""]
    out += [f"- {d}" for d in page.glance_details]
    for s in page.sections:
        out += ["", f"## {s.title}", ""]
        if s.intro:
            out += [s.intro, ""]
        for t in s.tables:
            out += _md_table(t) + [""]
        for p in s.plots:
            out += [f"![{p.alt}]({prefix}{p.filename})", ""]
            if p.caption:
                out += [f"*{p.caption}*", ""]
        out += [f"- {b}" for b in s.bullets]
    if page.footer:
        out += ["", "---", "", page.footer]
    return "\n".join(out).rstrip() + "\n"
