"""Run outputs: atomic writes of tables (Parquet + CSV), figures and JSON; the HTML report."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import pandas as pd

from orthodiff.errors import OrthodiffError
from orthodiff.files import atomic_write


def write_table(df: pd.DataFrame, path: str | Path) -> Path:
    """``path``.parquet and ``path``.csv (tidy, no index); returns the Parquet path."""
    path = Path(path)
    atomic_write(path.with_suffix(".csv"), lambda tmp: df.to_csv(tmp, index=False))
    return atomic_write(path.with_suffix(".parquet"), lambda tmp: df.to_parquet(tmp, index=False))


def read_table(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise OrthodiffError(f"{path}: result table not found")
    return pd.read_parquet(path)


def write_json(obj, path: str | Path) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2) + "\n"))


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def atomic_savefig(fig, path: str | Path) -> Path:
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))


def build_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """One self-contained HTML page (tables inline, PNGs as data URIs) of every CSV, PNG
    and JSON file under ``run_dir``, grouped by sub-folder."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise OrthodiffError(f"{run_dir}: not a run directory")
    files = sorted(p for p in run_dir.rglob("*") if p.suffix in {".csv", ".png", ".json"} and not p.name.startswith("."))
    if not files:
        raise OrthodiffError(f"{run_dir}: no result tables, plots or configurations to report")
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>orthodiff report</title><style>"
        "body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;font-size:12px}"
        "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}h2{border-bottom:1px solid #888}"
        "img{max-width:100%}pre{background:#f4f4f4;padding:8px}</style></head><body>",
        f"<h1>orthodiff report: {html.escape(run_dir.name)}</h1>",
    ]
    section = None
    for path in files:
        rel = path.relative_to(run_dir)
        folder = str(rel.parent)
        if folder != section:
            section = folder
            parts.append(f"<h2>{html.escape(folder if folder != '.' else run_dir.name)}</h2>")
        parts.append(f"<h3>{html.escape(rel.name)}</h3>")
        if path.suffix == ".csv":
            df = pd.read_csv(path)
            more = f"<p>first 200 of {len(df)} rows</p>" if len(df) > 200 else ""
            parts.append(more + df.head(200).to_html(index=False, float_format=lambda v: f"{v:.3f}", na_rep="—"))
        elif path.suffix == ".png":
            data = base64.b64encode(path.read_bytes()).decode()
            parts.append(f"<img alt='{html.escape(rel.name)}' src='data:image/png;base64,{data}'>")
        else:
            parts.append(f"<pre>{html.escape(path.read_text())}</pre>")
    parts.append("</body></html>")
    target = Path(out) if out else run_dir / "report.html"
    return atomic_write(target, lambda tmp: Path(tmp).write_text("\n".join(parts), encoding="utf-8"))
