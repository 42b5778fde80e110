"""The HTML report of a run directory (tables, JSON and figures are written by `orthodiff.outputs`).

The report tells a run directory's story in the order a reader asks: what cohort and which
configuration, how well each method does on the test split (with CIs) and whether the
differences are real (permutation p-values); then per-label curves and tables, subgroups
(collapsed), the sweep and label-efficiency plots, and a link to every file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from orthodiff import pages
from orthodiff.errors import OrthodiffError
from orthodiff.heads.metrics import MIN_SUPPORT
from orthodiff.outputs import pyplot, read_table, resolved

METRIC_DEFINITIONS = {
    "macro AUROC": "area under the ROC curve of each label, averaged over the labels where it is defined "
                   "(both classes present in the test split).",
    "AP": "average precision: the area under the label's precision-recall curve.",
    "CP / CR": "per-label precision and recall at a 0.5 threshold, averaged over the labels (class-wise).",
    "CF1": "the mean over labels of each label's F1 (the harmonic mean of its precision and recall).",
    "OP / OR / OF1": "precision, recall and F1 with true positives, predictions and positives pooled over all "
                     "labels (overall).",
    "95% CI": "2.5th-97.5th percentile of the metric over bootstrap resamples of whole patients.",
    "p (permutation)": "paired permutation test: each patient's predictions are swapped between methods A and B "
                       "at random; the share of swaps whose |delta| is at least the observed one.",
    "exams left out": "test exams without a series of every plane of the configuration: fusion needs all of "
                      "them, so these exams are not scored (listed in <run>/missing_planes.csv).",
    "low support": f"a label with fewer than {MIN_SUPPORT} positive (or negative) exams in the split: its AUROC and "
                   "CI rest on a handful of exams and can be 1.000 or 0.500 by chance.",
}
def _csv_table(path: Path, limit: int = 200) -> str:
    df = pd.read_csv(path)
    more = f"<p class=note>first {limit} of {len(df)} rows</p>" if len(df) > limit else ""
    return more + pages.table(df.head(limit))


# ---- what a run directory holds ------------------------------------------------------------

def _json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


class _Runs:
    """The run records under a directory, by kind, in a stable order."""

    def __init__(self, root: Path):
        self.root = root
        self.records = {p.parent: _json(p) for p in sorted(root.rglob("run.json"))}
        self.configs = {p: c for p in sorted(root.rglob("*.json")) if p.name != "run.json"
                        for c in [_json(p)] if "planes" in c and "pooling" in c}
        classify = [d for d, r in self.records.items() if r.get("kind") in ("fuse", "baseline")
                    and (d / "predictions.parquet").is_file() and (d / "metrics.parquet").is_file()]
        summary = self.root / "summary.parquet"
        order = list(pd.read_parquet(summary)["run"]) if summary.is_file() else []
        self.classify = sorted(classify, key=lambda d: (order.index(d.name) if d.name in order else len(order), str(d)))
        self.sweeps = [d for d, r in self.records.items() if r.get("kind") == "sweep"]
        self.efficiency = [d for d, r in self.records.items() if r.get("kind") == "efficiency"]
        self.evaluations = [p.parent for p in sorted(root.rglob("evaluation.json")) if (p.parent / "evaluation.html").is_file()]
        self.comparisons = sorted(p for p in root.rglob("*.parquet") if p.stem.count("_vs_") == 1
                                  and {"auroc_a", "auroc_b", "delta", "p_value"} <= set(pd.read_parquet(p).columns))

    def name(self, path: Path) -> str:
        rel = path.relative_to(self.root)
        return str(rel) if str(rel) != "." else self.root.name

    def catalog(self) -> Path | None:
        records = [*((p.parent, c) for p, c in self.configs.items()), *self.records.items()]
        for folder, record in ((f, resolved(r, f)) for f, r in records):
            path = record.get("catalog") or record.get("config", {}).get("catalog")
            if path and Path(path).is_file():
                return Path(path)
        return None


# ---- sections ------------------------------------------------------------------------------

def _cohort(runs: _Runs) -> str:
    from orthodiff.catalogs.cohort import SPLITS, label_columns, read_catalog, split_fingerprint

    path = runs.catalog()
    if path is None:
        return "<p class=note>The catalog these runs were made from is not at its recorded path.</p>"
    df = read_catalog(path)
    exams = df.drop_duplicates("case_id")
    labels = label_columns(df)
    rows = []
    for split in SPLITS:
        part = exams[exams["split"] == split]
        rows.append({"split": split, "patients": part["patient_id"].nunique(), "exams": len(part),
                     "series": int((df["split"] == split).sum()), **{c: int(part[c].sum()) for c in labels}})
    table = pd.DataFrame(rows)
    low = [c for c in labels if 0 < min(table[c].min(), (table["exams"] - table[c]).min()) < MIN_SUPPORT
           or table[c].min() == 0]
    warn = (f"<p class='warn'>Low support: {', '.join(low)} have fewer than {MIN_SUPPORT} positive (or negative) exams "
            "in some split; their per-label numbers are flagged below.</p>") if low else ""
    return (f"<p>Catalog <code>{pages.esc(os.path.relpath(path, runs.root))}</code> (split fingerprint <code>{split_fingerprint(df)}</code>): "
            f"{len(df)} series, {len(exams)} exams, {df['patient_id'].nunique()} patients. "
            "Label columns count positive exams per split.</p>" + pages.table(table) + warn)


def _configuration(runs: _Runs) -> str:
    parts = []
    for path, config in runs.configs.items():
        planes = pd.DataFrame([{"plane": p, **c} for p, c in config["planes"].items()])
        settings = {k: config[k] for k in ("pooling", "selection_method", "val_macro_auroc", "split_fingerprint") if k in config}
        params = "".join(f"<dt>{pages.esc(k)}</dt><dd>{pages.esc(json.dumps(config[k]))}</dd>"
                         for k in ("probe_params", "fusion_params") if k in config)
        items = "".join(f"<dt>{pages.esc(k)}</dt><dd>{pages.esc(v if not isinstance(v, float) else f'{v:.3f}')}</dd>"
                        for k, v in settings.items())
        parts.append(f"<h3>{pages.esc(runs.name(path))}</h3><dl>{items}{params}</dl>" + pages.table(planes))
    return "".join(parts) or "<p class=note>No configuration file (written by <code>orthodiff select</code>).</p>"


def _metrics(run: Path) -> pd.DataFrame:
    return read_table(run / "metrics.parquet")


def _headline(runs: _Runs) -> str:
    rows, warn = [], []
    for run in runs.classify:
        m = _metrics(run)
        overall = m[m["label"] == "all"].set_index("metric")
        record = runs.records[run]
        flagged = sorted(m.loc[(m["label"] != "all") & (m["note"].fillna("") != ""), "label"].unique())
        left_out = run / "missing_planes.parquet"
        row = {"run": runs.name(run), "macro AUROC": overall.at["macro_auroc", "value"],
               "95% CI": f"{overall.at['macro_auroc', 'ci_low']:.3f}-{overall.at['macro_auroc', 'ci_high']:.3f}"}
        row |= {k: overall.at[k, "value"] for k in ("CP", "CR", "CF1", "OP", "OR", "OF1") if k in overall.index}
        row |= {"test exams": record.get("test_exams", "—"),
                "exams left out": len(pd.read_parquet(left_out)) if left_out.is_file() else "—",
                "low support": ", ".join(flagged) or "—"}
        rows.append(row)
        warn.append(bool(flagged))
    if not rows:
        return "<p class=note>No classification runs (<code>orthodiff fuse</code>) here.</p>"
    return ("<p>Test split; macro AUROC with its 95% patient-bootstrap CI; the other metrics at a 0.5 threshold "
            "(definitions below). Highlighted: runs with low-support labels.</p>" + pages.table(pd.DataFrame(rows), warn))


def _comparisons(runs: _Runs) -> str:
    rows = []
    for path in runs.comparisons:
        table = pd.read_parquet(path)
        macro = table[table["label"] == "macro"].iloc[0]
        a, b = path.stem.split("_vs_")
        rows.append({"A": a, "B": b, "AUROC A": macro.auroc_a, "AUROC B": macro.auroc_b, "delta (A - B)": macro.delta,
                     "p (permutation)": macro.p_value, "table": runs.name(path.with_suffix(".csv"))})
    if not rows:
        return "<p class=note>No comparisons (<code>orthodiff compare ... --out</code>) here.</p>"
    df = pd.DataFrame(rows)
    return ("<p>Macro AUROC on the test exams both runs scored; per-label deltas and p-values are in each table. "
            "Highlighted: p &lt; 0.05.</p>" + pages.table(df, df["p (permutation)"] < 0.05))


def _definitions() -> str:
    return "<dl>" + "".join(f"<dt>{pages.esc(k)}</dt><dd>{pages.esc(v)}</dd>" for k, v in METRIC_DEFINITIONS.items()) + "</dl>"


def _curves(runs: _Runs) -> str:
    """ROC and precision-recall curves, one panel per label, one line per run."""
    from sklearn.metrics import precision_recall_curve, roc_curve

    if not runs.classify:
        return ""
    plt = pyplot()
    predictions = {runs.name(r): read_table(r / "predictions.parquet") for r in runs.classify}
    labels = runs.records[runs.classify[0]].get("labels") or []
    out = []
    for kind in ("ROC", "precision-recall"):
        cols = min(4, len(labels))
        rows = int(np.ceil(len(labels) / cols))
        fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.0 * rows + 0.6), squeeze=False, layout="constrained")
        for ax, label in zip(axes.flat, labels):
            for name, pred in predictions.items():
                if label not in pred or f"p_{label}" not in pred:
                    continue
                y, p = pred[label].to_numpy(), pred[f"p_{label}"].to_numpy()
                if len(np.unique(y)) < 2:
                    continue
                if kind == "ROC":
                    x_, y_, _ = roc_curve(y, p)
                else:
                    y_, x_, _ = precision_recall_curve(y, p)
                ax.plot(x_, y_, label=name, lw=1.2, drawstyle="steps-post" if kind != "ROC" else "default")
            positives = int(predictions[next(iter(predictions))][label].sum())
            ax.set_title(f"{label} ({positives} positive)" + (" — low support" if positives < MIN_SUPPORT else ""),
                         fontsize=9, color="#b00" if positives < MIN_SUPPORT else "black")
            ax.set_xlabel("false positive rate" if kind == "ROC" else "recall", fontsize=8)
            ax.set_ylabel("true positive rate" if kind == "ROC" else "precision", fontsize=8)
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1.02)
            ax.tick_params(labelsize=7)
            if kind == "ROC":
                ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=0.8)
        for ax in list(axes.flat)[len(labels):]:
            ax.axis("off")
        handles, names = axes.flat[0].get_legend_handles_labels()
        fig.legend(handles, names, loc="outside upper right", ncol=min(len(names), 5), fontsize=8)
        fig.suptitle(f"{kind} curves per label, test split", x=0.01, ha="left", fontsize=11)
        out.append(pages.png(pages.fig_png(fig), f"{kind} curves per label"))
    return "".join(out)


def _per_label(runs: _Runs) -> str:
    parts = []
    for run in runs.classify:
        m = _metrics(run)
        per = m[m["label"] != "all"].set_index(["label", "metric"])
        notes = m[m["label"] != "all"].drop_duplicates("label").set_index("label")["note"].fillna("")
        pred = read_table(run / "predictions.parquet")
        rows = []
        for label in notes.index:
            row = {"label": label, "positives": int(pred[label].sum()) if label in pred else "—", "test exams": len(pred)}
            for metric, name in (("auroc", "AUROC"), ("ap", "AP")):
                if (label, metric) in per.index:
                    value = per.loc[(label, metric)]
                    row[name] = value["value"]
                    row[f"{name} 95% CI"] = f"{value['ci_low']:.3f}-{value['ci_high']:.3f}"
            row["note"] = notes[label]
            rows.append(row)
        table = pd.DataFrame(rows)
        extra = ""
        if (run / "gating.png").is_file():
            extra += pages.png((run / "gating.png").read_bytes(), f"{runs.name(run)} gating",
                          "MPAE: mean gating weight of each plane per label on the test exams.")
        if (run / "ehr_weight.csv").is_file():
            extra += "<p>EHR late fusion: weight of the MRI head per label (1 - weight goes to the EHR head).</p>"
            extra += _csv_table(run / "ehr_weight.csv")
        parts.append(f"<h3>{pages.esc(runs.name(run))}</h3>" + pages.table(table, table["note"] != "") + extra)
    return "".join(parts)


def _subgroups(runs: _Runs) -> str:
    parts = []
    for run in runs.classify:
        path = run / "subgroups.parquet"
        if path.is_file():
            df = read_table(path)
            macro = df[df["label"] == "macro"].drop(columns="label").rename(columns={"auroc": "macro AUROC"})
            body = ("<p>Macro AUROC per subgroup (rows with fewer than 10 exams highlighted); the per-label values are in "
                    f"<code>{pages.esc(runs.name(path.with_suffix('.csv')))}</code>.</p>" + pages.table(macro, macro["n"] < 10))
            parts.append(pages.details(f"{runs.name(run)}: by center, field strength and vendor", body))
    return "".join(parts)


def _sweeps(runs: _Runs) -> str:
    parts = []
    for run in runs.sweeps:
        body = "".join(pages.png(p.read_bytes(), p.stem, f"{runs.name(run)}: {p.stem.replace('_', ' ')}")
                       for p in sorted(run.glob("heatmap_*.png")))
        if (run / "top4.csv").is_file():
            body += "<p>Top 4 (timestep, block) per plane, validation macro AUROC:</p>" + _csv_table(run / "top4.csv")
        parts.append(f"<h3>{pages.esc(runs.name(run))}</h3>{body}")
    for path in runs.configs:
        selection = path.with_name(path.stem + "_selection.csv")
        if selection.is_file():
            parts.append(pages.details(f"cross-plane selection ({runs.name(selection)}), best 20",
                                  pages.table(pd.read_csv(selection).head(20))))
    return "".join(parts)


def _efficiency(runs: _Runs) -> str:
    parts = []
    for run in runs.efficiency:
        if (run / "efficiency.png").is_file():
            parts.append(pages.png((run / "efficiency.png").read_bytes(), f"{runs.name(run)} efficiency"))
        if (run / "efficiency.csv").is_file():
            parts.append(_csv_table(run / "efficiency.csv"))
    return "".join(parts)


EVALUATION_TABLES = (("tier_tissue", "Subject Dice by tissue type"),
                     ("agreement", "Biomarker agreement with the reference (thickness, T2)"),
                     ("friedman", "Friedman test on subject Dice"),
                     ("wilcoxon", "Pairwise Wilcoxon on subject Dice, Benjamini-Hochberg adjusted"),
                     ("acquisition_effects", "Acquisition fixed effects on series Dice (MixedLM)"))
AGREEMENT_COLUMNS = ["model", "biomarker", "n", "method", "icc", "icc_low", "icc_high", "bias", "loa_low", "loa_high"]
EVALUATION_FIGURES = ("raincloud.png", "agreement_*.png", "forest.png")


def _href(path: Path, target: Path) -> str:
    """A link from the report `target` to `path`, `./`-relative, so that no folder name (say
    `javascript:...`) can read as a URL scheme."""
    rel = Path(os.path.relpath(path, target.parent)).as_posix()
    return rel if rel.startswith("../") else f"./{rel}"


def _evaluations(runs: _Runs, target: Path) -> str:
    """Each `orthodiff evaluate seg` folder: its headline tables and figures, and a link to
    its own evaluation.html (which has every table)."""
    parts = []
    for folder in runs.evaluations:
        link = _href(folder / "evaluation.html", target)
        summary = _json(folder / "evaluation.json")
        parts.append(f"<h3>{pages.esc(runs.name(folder))}</h3><p>{pages.esc(', '.join(summary.get('models', [])))}: "
                     f"{summary.get('series', '?')} series of {summary.get('subjects', '?')} subjects. "
                     f"<a href='{pages.esc(link)}'>Every table: evaluation.html</a></p>")
        for name, title in EVALUATION_TABLES:
            path = folder / f"{name}.parquet"
            table = read_table(path) if path.is_file() else pd.DataFrame()
            if name == "agreement" and not table.empty:  # volumes stay in evaluation.html
                table = table[table["biomarker"].str.contains("thickness|t2_")].reindex(columns=AGREEMENT_COLUMNS)
            if not table.empty:
                parts.append(f"<h4>{pages.esc(title)}</h4>" + pages.table(table))
        parts += [pages.png(p.read_bytes(), p.name, p.name) for pattern in EVALUATION_FIGURES for p in sorted(folder.glob(pattern))]
    return "".join(parts)


def _other(runs: _Runs, shown: set[Path]) -> str:
    """Figures and tables no section above shows (e.g. supervised runs), collapsed."""
    parts = []
    for path in sorted(p for p in runs.root.rglob("*") if p.suffix in (".png", ".csv") and p not in shown
                       and not p.name.startswith(".")):
        body = pages.png(path.read_bytes(), path.name) if path.suffix == ".png" else _csv_table(path)
        parts.append(pages.details(runs.name(path), body, open_=path.suffix == ".png"))
    return "".join(parts)


def _artefacts(runs: _Runs, target: Path) -> str:
    files = sorted(p for p in runs.root.rglob("*") if p.is_file() and not p.name.startswith(".") and p != target)
    items = "".join(f"<li><a href='{pages.esc(_href(p, target))}'>{pages.esc(runs.name(p))}</a>"
                    f" <span class=note>({p.stat().st_size / 1024:.1f} KiB)</span></li>" for p in files)
    return f"<ul>{items}</ul>"


def _shown(runs: _Runs) -> set[Path]:
    """Files whose content a section already presents."""
    shown = set()
    for run in runs.classify:
        shown |= {run / f for f in ("metrics.csv", "predictions.csv", "subgroups.csv", "gating.png", "gating.csv",
                                    "ehr_weight.csv", "missing_planes.csv")}
    for run in runs.sweeps:
        shown |= {*run.glob("heatmap_*.png"), run / "top4.csv", run / "sweep.csv"}
    for run in runs.efficiency:
        shown |= {run / "efficiency.png", run / "efficiency.csv", run / "predictions.csv"}
    for folder in runs.evaluations:  # the rest of an evaluation is in its own evaluation.html
        shown |= {p for p in folder.iterdir() if p.suffix in (".csv", ".png")}
    shown |= {p.with_name(p.stem + "_selection.csv") for p in runs.configs}
    shown |= {p.with_suffix(".csv") for p in runs.comparisons} | {runs.root / "summary.csv"}
    return shown


def report_inputs(run_dir: str | Path) -> list[Path]:
    """The result tables, plots and configurations under ``run_dir`` that a report draws on
    (CSV, PNG, JSON; hidden files such as half-written temporaries left out), sorted."""
    return sorted(p for p in Path(run_dir).rglob("*") if p.suffix in {".csv", ".png", ".json"} and not p.name.startswith("."))


def build_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """One self-contained HTML page (tables inline, figures as data URIs) of ``run_dir``:
    overview first (cohort, configuration, test results with CIs, method comparisons with
    p-values, metric definitions), then ROC/PR curves, per-label and subgroup tables, sweeps,
    label efficiency, segmentation evaluations (`orthodiff evaluate seg` folders), any other
    figures and tables, and links to every file."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise OrthodiffError(f"{run_dir}: not a run directory")
    target = Path(out) if out else run_dir / "report.html"
    if not report_inputs(run_dir):
        raise OrthodiffError(f"{run_dir}: no result tables, plots or configurations to report")
    runs = _Runs(run_dir)
    sections = [("overview", "Overview", "<h3>Cohort</h3>" + _cohort(runs) + "<h3>Configuration</h3>" + _configuration(runs)
                 + "<h3>Test results</h3>" + _headline(runs) + "<h3>Method comparisons</h3>" + _comparisons(runs)
                 + "<h3>Metric definitions</h3>" + _definitions())]
    if runs.classify:
        sections += [("curves", "ROC and precision-recall curves", _curves(runs)),
                     ("labels", "Per-label results", _per_label(runs)),
                     ("subgroups", "Subgroups", _subgroups(runs))]
    if runs.sweeps or runs.configs:
        sections.append(("sweep", "Sweep and selection (validation split)", _sweeps(runs)))
    if runs.efficiency:
        sections.append(("efficiency", "Label efficiency", _efficiency(runs)))
    if runs.evaluations:
        sections.append(("evaluation", "Segmentation evaluation", _evaluations(runs, target)))
    other = _other(runs, _shown(runs))
    if other:
        sections.append(("other", "Other figures and tables", other))
    sections.append(("files", "All files", _artefacts(runs, target)))
    nav = "".join(f"<a href='#{key}'>{pages.esc(title)}</a>" for key, title, _ in sections)
    parts = [f"<h1>orthodiff report: {pages.esc(run_dir.name)}</h1><p class=note>{pages.esc(run_dir.resolve())}</p><nav>{nav}</nav>"]
    parts += [f"<section id='{key}'><h2>{pages.esc(title)}</h2>{body}</section>" for key, title, body in sections]
    return pages.write_page(target, f"orthodiff report: {run_dir.name}", parts)
