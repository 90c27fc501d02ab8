"""A report as a few kinds of blocks, rendered two ways from the same content: Markdown for a pull-request comment
(GitHub renders <details> and <img>) and a standalone HTML page with its pictures embedded."""
from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Text:
    markdown: str  # inline Markdown: **bold**, `code`, [link](url)


@dataclass
class Bullets:
    items: list[str]  # inline Markdown each


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    right: set[int] = field(default_factory=set)  # columns aligned right (numbers)


@dataclass
class Picture:
    """One picture at both revisions, side by side; None where a revision has none."""
    title: str
    base: Path | None
    head: Path | None


@dataclass
class Figure:
    """One picture drawn for the report (both revisions on one chart)."""
    title: str
    path: Path


@dataclass
class Details:
    summary: str
    blocks: list
    open: bool = False


@dataclass
class Document:
    title: str
    blocks: list
    labels: tuple[str, str] = ("base", "head")  # the two revisions, as the picture columns name them


# -- Markdown -----------------------------------------------------------------------------------------------------

def to_markdown(document: Document, image_url) -> str:
    """`image_url(path)`: how the comment refers to a picture file (a published URL, or a path beside the report)."""
    lines = [f"## {document.title}", ""]
    for block in document.blocks:
        lines += _markdown_block(block, document.labels, image_url)
    return "\n".join(lines).rstrip() + "\n"


def _markdown_block(block, labels, image_url) -> list[str]:
    if isinstance(block, Text):
        return [block.markdown, ""]
    if isinstance(block, Bullets):
        return [*(f"- {item}" for item in block.items), ""]
    if isinstance(block, Table):
        align = ["---:" if i in block.right else "---" for i in range(len(block.header))]
        return ["| " + " | ".join(block.header) + " |", "| " + " | ".join(align) + " |",
                *("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in block.rows), ""]
    if isinstance(block, Picture):
        cells = [f'<img src="{image_url(path)}" width="420" alt="{block.title}, {label}">' if path else "(none)"
                 for path, label in ((block.base, labels[0]), (block.head, labels[1]))]
        return [f"**{block.title}**", "", f"| {labels[0]} | {labels[1]} |", "| --- | --- |",
                f"| {cells[0]} | {cells[1]} |", ""]
    if isinstance(block, Figure):
        return [f"**{block.title}**", "", f'<img src="{image_url(block.path)}" width="860" alt="{block.title}">', ""]
    if isinstance(block, Details):
        inner = [line for child in block.blocks for line in _markdown_block(child, labels, image_url)]
        return [f"<details{' open' if block.open else ''}><summary>{block.summary}</summary>", "", *inner,
                "</details>", ""]
    raise TypeError(f"not a report block: {block!r}")


# -- HTML -----------------------------------------------------------------------------------------------------------

STYLE = """body{font:15px/1.45 system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#1f2328}
table{border-collapse:collapse;margin:.5em 0 1em}td,th{border:1px solid #d0d7de;padding:4px 10px}
th{background:#f6f8fa}td.r{text-align:right;font-variant-numeric:tabular-nums}
details{margin:.6em 0;border:1px solid #d0d7de;border-radius:6px;padding:.4em .8em}summary{cursor:pointer;
font-weight:600}.pair{display:flex;gap:1em}.pair figure{margin:0;flex:1}.pair img{width:100%}
figcaption{color:#57606a;font-size:13px}code{background:#f6f8fa;padding:0 3px;border-radius:3px}"""
# Tells a headless browser (and a reader's console) whether every picture decoded: the test reads the mark.
SCRIPT = """window.addEventListener('load',()=>{const i=[...document.images];
document.body.dataset.images=i.length;document.body.dataset.decoded=i.filter(x=>x.complete&&x.naturalWidth>0).length;
document.body.dataset.rendered='yes'});"""


def to_html(document: Document) -> str:
    body = "".join(_html_block(block, document.labels) for block in document.blocks)
    title = html.escape(document.title)
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{title}</title>"
            f"<style>{STYLE}</style><script>{SCRIPT}</script></head>"
            f"<body><h2>{_inline(document.title)}</h2>{body}</body></html>\n")


def _html_block(block, labels) -> str:
    if isinstance(block, Text):
        return f"<p>{_inline(block.markdown)}</p>"
    if isinstance(block, Bullets):
        return "<ul>" + "".join(f"<li>{_inline(item)}</li>" for item in block.items) + "</ul>"
    if isinstance(block, Table):
        head = "".join(f"<th>{_inline(cell)}</th>" for cell in block.header)
        rows = "".join("<tr>" + "".join(f"<td{' class=r' if i in block.right else ''}>{_inline(cell)}</td>"
                                        for i, cell in enumerate(row)) + "</tr>" for row in block.rows)
        return f"<table><tr>{head}</tr>{rows}</table>"
    if isinstance(block, Picture):
        figures = "".join(
            f"<figure><img src='{_data_uri(path)}' alt='{html.escape(block.title)}, {label}'>"
            f"<figcaption>{html.escape(label)}</figcaption></figure>" if path else
            f"<figure><figcaption>{html.escape(label)}: none</figcaption></figure>"
            for path, label in ((block.base, labels[0]), (block.head, labels[1])))
        return f"<h4>{html.escape(block.title)}</h4><div class=pair>{figures}</div>"
    if isinstance(block, Figure):
        return (f"<h4>{html.escape(block.title)}</h4><img src='{_data_uri(block.path)}' style='max-width:100%' "
                f"alt='{html.escape(block.title)}'>")
    if isinstance(block, Details):
        inner = "".join(_html_block(child, labels) for child in block.blocks)
        return f"<details{' open' if block.open else ''}><summary>{_inline(block.summary)}</summary>{inner}</details>"
    raise TypeError(f"not a report block: {block!r}")


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def _inline(markdown: str) -> str:
    """The inline Markdown the report writes (**bold**, `code`, [text](url)) as HTML, everything else escaped."""
    text = html.escape(markdown, quote=False)
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    return re.sub(r"\[([^\]]+)\]\((https?://[^)\s]+)\)", lambda m: f"<a href=\"{html.escape(m[2])}\">{m[1]}</a>",
                  text)
