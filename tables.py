"""Rich tables from pandas frames: how every command prints its results."""

from __future__ import annotations

import math
import shutil

import pandas as pd
from rich.console import Console
from rich.table import Table


def make_console() -> Console:
    """A console as wide as the terminal, or 140 columns when output goes to a file or pipe
    (rich would use 80 there and squeeze the wider tables into ellipses)."""
    return Console(width=shutil.get_terminal_size((140, 24)).columns)


def _cell(value, float_format: str) -> str:
    if isinstance(value, float):
        return "—" if math.isnan(value) else float_format.format(value)
    return str(value)


def frame_table(df: pd.DataFrame, title: str | None = None, float_format: str = "{:.3f}") -> Table:
    """A `rich.table.Table` of `df` (index dropped; NaN shown as a dash)."""
    table = Table(title=title, title_justify="left", min_width=len(title or ""))
    for name in df.columns:
        numeric = pd.api.types.is_numeric_dtype(df[name])
        table.add_column(str(name), justify="right" if numeric else "left")
    for row in df.itertuples(index=False):
        table.add_row(*(_cell(v, float_format) for v in row))
    return table
