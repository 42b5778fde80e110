"""HTML pages of result folders: one style, tables, figures as data URIs and the page
itself, written atomically. `orthodiff report` (`heads/report.py`) and `orthodiff evaluate
seg` (`evaluation/run.py`) both build theirs from these."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np
import pandas as pd

from orthodiff.files import atomic_write
from orthodiff.outputs import pyplot

STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1180px;color:#222;line-height:1.4}
table{border-collapse:collapse;font-size:13px;margin:0.5em 0 1em}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f0f0f0}
td:first-child,th:first-child{text-align:left}
h1{margin-bottom:0.2em}h2{border-bottom:2px solid #888;margin-top:2em}h3{margin-bottom:0.3em}
img{max-width:100%;display:block;margin:0.5em 0}figure{margin:1em 0}figcaption{font-size:13px;color:#555}
.warn{background:#fff3cd}.note{color:#555;font-size:13px}details{margin:0.4em 0}summary{cursor:pointer}
dl{display:grid;grid-template-columns:max-content auto;gap:2px 12px;font-size:13px}dt{font-weight:600}dd{margin:0}
nav a{margin-right:1em;white-space:nowrap}
"""


def esc(text) -> str:
    return html.escape(str(text))


def table(df: pd.DataFrame, warn_rows=None, float_format: str = "{:.3f}") -> str:
    """A plain HTML table (floats as ``float_format``, NaN as a dash); rows where
    ``warn_rows`` is true are highlighted."""
    def cell(v):
        if isinstance(v, float | np.floating):
            return "—" if np.isnan(v) else float_format.format(v)
        return esc(v)

    head = "".join(f"<th>{esc(c)}</th>" for c in df.columns)
    warn = np.zeros(len(df), bool) if warn_rows is None else np.asarray(warn_rows, bool)
    body = "".join(f"<tr{' class=warn' if w else ''}>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>"
                   for row, w in zip(df.itertuples(index=False), warn))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def png(data: bytes, alt: str, caption: str = "") -> str:
    src = base64.b64encode(data).decode()
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f"<figure><img alt='{esc(alt)}' src='data:image/png;base64,{src}'>{cap}</figure>"


def fig_png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    pyplot().close(fig)
    return buffer.getvalue()


def definitions(record: dict) -> str:
    """A record (e.g. a run's summary) as a definition list: keys as terms (underscores as
    spaces), lists of values joined by commas, nested records as nested lists, lists of
    records as tables."""
    def value(v) -> str:
        if isinstance(v, dict):
            return definitions(v) if v else "—"
        if isinstance(v, list | tuple) and v and all(isinstance(x, dict) for x in v):
            return table(pd.DataFrame(v), float_format="{:.4g}")
        if isinstance(v, list | tuple):
            return esc(", ".join(map(str, v))) if v else "—"
        if isinstance(v, float | np.floating):
            return "—" if np.isnan(v) else esc(f"{v:.4g}")
        return "—" if v is None else esc(v)

    items = "".join(f"<dt>{esc(str(k).replace('_', ' '))}</dt><dd>{value(v)}</dd>" for k, v in record.items())
    return f"<dl>{items}</dl>"


def details(summary: str, body: str, open_: bool = False) -> str:
    return f"<details{' open' if open_ else ''}><summary>{esc(summary)}</summary>{body}</details>"


def write_page(path: str | Path, title: str, parts: list[str]) -> Path:
    """One self-contained page: ``title``, the style, then ``parts`` one per line."""
    page = [f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title>"
            f"<style>{STYLE}</style></head><body>", *parts, "</body></html>"]
    return atomic_write(path, lambda tmp: Path(tmp).write_text("\n".join(page), encoding="utf-8"))
