"""The pieces every HTML report is made of: escaping, a table, a whole page.

One place, so every report treats text the same way: captions, questions, answers, reasons and
file names come from people and models we do not trust, and each one goes through `esc` before it
reaches a page. Cells of `table` are HTML the caller has built (a cell may hold a link or a
thumbnail), so the caller escapes the text inside them, or passes `escape_cells=True`.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence

BASE_CSS = (
    "body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}"
    "table{border-collapse:collapse;margin:1em 0}"
    "td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px;vertical-align:top}"
    "th{background:#f3f3f3}img{max-width:100%}"
    ".ok,.good{color:#282}.bad{color:#c22}.warn{color:#a60}"
)


def esc(value: object) -> str:
    """`value` as HTML text (quotes too, so it is safe inside an attribute); None is empty."""
    return html.escape("" if value is None else str(value), quote=True)


def table(head: Sequence[str], rows: Iterable[Sequence[str]], *, escape_cells: bool = False) -> str:
    """A table: the head's names are escaped here; cells are HTML unless `escape_cells`."""
    cell = esc if escape_cells else str
    th = "".join(f"<th>{esc(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{cell(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def page(title: str, body: str | Iterable[str], *, css: str = "") -> str:
    """A whole document: doctype, UTF-8, the escaped title, BASE_CSS then `css`, and the body."""
    text = body if isinstance(body, str) else "\n".join(body)
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title>"
        f"<style>{BASE_CSS}{css}</style></head><body>\n{text}\n</body></html>\n"
    )
