"""Small HTML building blocks shared by the report's sections: a plotly figure, a table."""

from __future__ import annotations

import html
from typing import Any

Section = tuple[str, str]  # (title, html)


def fig_html(fig: Any) -> str:
    """A plotly figure as an HTML fragment (plotly.js is inlined once by the page)."""
    return f'<div class="plot">{fig.to_html(full_html=False, include_plotlyjs=False)}</div>'


def table_html(rows: list[dict[str, Any]], columns: list[str] | None = None, fmt: str = "{:.4g}") -> str:
    """An HTML table of dict rows (columns: the first row's keys unless given; floats with ``fmt``)."""
    if not rows:
        return "<p class='muted'>no rows</p>"
    columns = columns or list(rows[0])

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return fmt.format(v)
        return html.escape("" if v is None else str(v))

    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{cell(r.get(c))}</td>" for c in columns) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
