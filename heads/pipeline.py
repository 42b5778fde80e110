"""The heads tier end to end on one store (what `orthodiff demo` runs after extraction):
SAP sweep -> select -> fuse (concat and MPAE, with and without EHR) -> LightGBM comparison ->
permutation tests -> HTML report, each step printing its table."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from rich.console import Console

from orthodiff.heads.commands import load_inputs
from orthodiff.heads.report import build_report, write_table
from orthodiff.heads.runs import compare_runs, run_fuse, run_select, run_sweep
from orthodiff.tables import frame_table

# Small cohorts (a hundred exams) need more steps than the paper's 5e-4 / 5e-5 and some L2:
# with Adam, weights of uninformative channels random-walk by ~lr per step.
SMALL_COHORT_PROBE = {"epochs": 30, "lr": 3e-3, "batch_size": 16, "weight_decay": 1e-2}
SMALL_COHORT_FUSION = {"epochs": 100, "lr": 3e-3, "batch_size": 16, "weight_decay": 1e-2,
                       "plane_epochs": 100, "plane_lr": 3e-3, "gate_epochs": 200}
FUSIONS = (("concat", False), ("concat", True), ("mpae", False), ("mpae", True), ("lightgbm", False))


def run_heads(store, catalog_path, out, console: Console, backbone=None, pooling="sap",
              probe_params=None, fusion_params=None, n_boot=500, seed=0) -> pd.DataFrame:
    """Run every step under ``out``; return the test summary (one row per fusion run)."""
    out = Path(out)
    probe = probe_params or SMALL_COHORT_PROBE
    fusion = fusion_params or SMALL_COHORT_FUSION
    features, catalog, labels, provenance = load_inputs(store, catalog_path, backbone)

    _, top = run_sweep(features, catalog, labels, pooling, out / "sweep", probe, provenance)
    console.print(frame_table(top, f"{pooling.upper()} sweep: top 4 (timestep, block) per plane, validation macro AUROC"))
    scored, config = run_select(out / "sweep", features, catalog, labels, out / "config.json", "concat", fusion)
    console.print(frame_table(scored.head(5), f"Cross-plane selection: best of {len(scored)} combinations (validation)"))

    rows = []
    for method, ehr in FUSIONS:
        name = f"{method}{'_ehr' if ehr else ''}"
        metrics, model = run_fuse(config, features, catalog, labels, method, out / name, ehr=ehr, n_boot=n_boot, seed=seed)
        summary = metrics[metrics["label"] == "all"].set_index("metric")
        rows.append({"run": name, **{m: summary.at[m, "value"] for m in summary.index},
                     "auroc_ci": f"{summary.at['macro_auroc', 'ci_low']:.3f}-{summary.at['macro_auroc', 'ci_high']:.3f}",
                     "exams_left_out": len(model.missing_exams(catalog[catalog["split"] == "test"]))})
    table = pd.DataFrame(rows)
    write_table(table, out / "summary")
    console.print(frame_table(table, "Test set: fusion heads vs LightGBM on the same pooled vectors"))

    for a, b in (("concat", "lightgbm"), ("mpae", "concat"), ("concat_ehr", "concat")):
        test = compare_runs(out / a, out / b, seed=seed)
        write_table(test, out / "compare" / f"{a}_vs_{b}")
        macro = test[test["label"] == "macro"].iloc[0]
        console.print(f"{a} vs {b}: macro AUROC delta {macro.delta:+.3f}, paired permutation p = {macro.p_value:.3f}")
    report = build_report(out)
    console.print(f"HTML report: {report}")
    return table
