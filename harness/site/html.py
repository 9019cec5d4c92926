"""Writing HTML: escaping, a page's frame, tables and definition lists. Every text that reaches a page passes
through :func:`esc` (run names, options and error messages come from users and plugins)."""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from harness.site.assets import SCRIPT, STYLE


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


@dataclass(frozen=True)
class Cell:
    """One table cell: its ``text``, its sort key (``None``: no value, sorted last), a link (or several: ``links``,
    (text, href) pairs shown instead of ``text``), a CSS class and a tooltip."""

    text: str
    sort: float | str | None = None
    href: str | None = None
    css: str = ""
    title: str | None = None
    links: tuple[tuple[str, str], ...] = ()

    def render(self) -> str:
        body = esc(self.text)
        if self.links:
            body = ", ".join(f'<a href="{esc(href)}">{esc(text)}</a>' for text, href in self.links)
        elif self.href is not None:
            body = f'<a href="{esc(self.href)}">{body}</a>'
        attrs = ""
        if self.sort is not None:
            attrs += f' data-sort="{esc(self.sort if isinstance(self.sort, str) else repr(float(self.sort)))}"'
        if self.css:
            attrs += f' class="{esc(self.css)}"'
        if self.title:
            attrs += f' title="{esc(self.title)}"'
        return f"<td{attrs}>{body}</td>"


@dataclass(frozen=True)
class Column:
    """A table column: its ``key`` (stable, for tests and scripts), its header, and whether it sorts as numbers."""

    key: str
    header: str
    numeric: bool = False
    title: str | None = None


def table(columns: Sequence[Column], rows: Iterable[tuple[Sequence[Cell], str, str]], *, css: str = "sortable") -> str:
    """A table; ``rows`` are ``(cells, row key, row class)``. With ``css="sortable"`` every header sorts its column."""
    sortable = "sortable" in css.split()
    head = []
    for c in columns:
        title = f' title="{esc(c.title)}"' if c.title else ""
        kind = ' data-type="number"' if c.numeric else ' data-type="text"'
        label = f'<button type="button">{esc(c.header)}</button>' if sortable else esc(c.header)
        head.append(f'<th class="{"sortable" if sortable else ""}" data-key="{esc(c.key)}"{kind}{title}>{label}</th>')
    body = []
    for cells, key, row_css in rows:
        css_attr = f' class="{esc(row_css)}"' if row_css else ""
        body.append(f'<tr data-key="{esc(key)}"{css_attr}>' + "".join(cell.render() for cell in cells) + "</tr>")
    return (f'<table class="{esc(css)}"><thead><tr>' + "".join(head) + "</tr></thead><tbody>\n" + "\n".join(body)
            + "\n</tbody></table>")


def facts(items: Iterable[tuple[str, str]]) -> str:
    """A definition list of label → (already escaped) HTML value."""
    return '<dl class="facts">' + "".join(f"<dt>{esc(k)}</dt><dd>{v}</dd>" for k, v in items) + "</dl>"


def page(title: str, body: str, *, crumbs: Sequence[tuple[str, str | None]] = ()) -> str:
    """A complete page: the inline style sheet and sorting script, a breadcrumb line, ``body`` (escaped HTML)."""
    nav = " › ".join(f'<a href="{esc(href)}">{esc(text)}</a>' if href else esc(text) for text, href in crumbs)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        # No network: a page that somehow referenced a remote resource still fetches nothing.
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src 'self'; "
        "style-src 'unsafe-inline'; script-src 'unsafe-inline'\">"
        f"<title>{esc(title)}</title><style>{STYLE}</style></head>\n<body>\n"
        + (f"<nav>{nav}</nav>\n" if nav else "")
        + f"<h1>{esc(title)}</h1>\n{body}\n<script>{SCRIPT}</script>\n</body></html>\n"
    )
