"""The heads tier end to end on one store (what `orthodiff demo` runs after extraction):
SAP sweep -> select -> fuse (concat and MPAE, with and without EHR) -> LightGBM comparison ->
permutation tests -> HTML report, each step printing its table. Steps whose outputs are
complete and were made from the same inputs are reused, so a rerun only writes the report."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from rich.console import Console

from orthodiff.heads.defaults import FUSION, POOLING, PROBE
from orthodiff.heads.inputs import load_inputs
from orthodiff.heads.metrics import MIN_SUPPORT
from orthodiff.heads.report import build_report
from orthodiff.heads.sweep import default_workers
from orthodiff.options import Method
from orthodiff.outputs import read_table, write_table
from orthodiff.heads.runs import compare_runs, run_fuse, run_select, run_sweep, selection_size, sweep_steps
from orthodiff.progress import progress_bar
from orthodiff.tables import frame_table

# Small cohorts (a hundred exams) need larger rates than the paper's 5e-4 / 5e-5 and some L2:
# with Adam, weights of uninformative channels random-walk by ~lr per step. The probes keep the
# paper's 10 epochs of batch 10: a SAP sweep of the demo at 30 epochs took 9.5 minutes.
SMALL_COHORT_PROBE = {"epochs": 10, "lr": 3e-3, "batch_size": 10, "weight_decay": 1e-2}
SMALL_COHORT_FUSION = {"epochs": 100, "lr": 3e-3, "batch_size": 16, "weight_decay": 1e-2,
                       "plane_epochs": 100, "plane_lr": 3e-3, "gate_epochs": 200}
FUSIONS = ((Method.concat, False), (Method.concat, True), (Method.mpae, False), (Method.mpae, True), (Method.lightgbm, False))
COMPARISONS = (("concat", "lightgbm"), ("mpae", "concat"), ("concat_ehr", "concat"))
OPTION_NAMES = {"epochs": "--epochs", "lr": "--lr", "weight_decay": "--weight-decay", "batch_size": "--batch",
                "plane_epochs": "--plane-epochs", "plane_lr": "--plane-lr", "gate_epochs": "--gate-epochs"}


def _run_name(method: str, ehr: bool) -> str:
    return f"{method}{'_ehr' if ehr else ''}"


def settings_flags(params: dict) -> str:
    return " ".join(f"{OPTION_NAMES[k]} {v:g}" for k, v in params.items() if k in OPTION_NAMES)


def heads_commands(store, catalog, out, probe_params, fusion_params, pooling=POOLING) -> list[str]:
    """The `orthodiff` commands that make what :func:`run_heads` makes, step by step."""
    out = Path(out)
    lines = [
        f"orthodiff sweep --store {store} --catalog {catalog} --pooling {pooling} {settings_flags(probe_params)} --out {out / 'sweep'}",
        f"orthodiff select --sweep {out / 'sweep'} {settings_flags(fusion_params)} --out {out / 'config.json'}",
    ]
    for method, ehr in FUSIONS:
        lines.append(f"orthodiff fuse --config {out / 'config.json'} --method {method}{' --ehr' if ehr else ''} "
                     f"--out {out / _run_name(method, ehr)}")
    for a, b in COMPARISONS:
        lines.append(f"orthodiff compare {out / a} {out / b} --out {out / 'compare' / f'{a}_vs_{b}'}")
    lines.append(f"orthodiff report {out}")
    return lines


def run_heads(store, catalog_path, out, console: Console, backbone=None, pooling=POOLING,
              probe_params=None, fusion_params=None, n_boot=500, seed=0, workers=None) -> pd.DataFrame:
    """Run every step under ``out``; return the test summary (one row per fusion run).
    ``probe_params``/``fusion_params`` default to the paper's values (``heads.defaults.PROBE``,
    ``FUSION``); the demo passes ``SMALL_COHORT_PROBE``/``SMALL_COHORT_FUSION``.
    ``workers``: processes of the sweep (default: ``heads.sweep.default_workers``)."""
    out = Path(out)
    probe = {**PROBE, **(probe_params or {})}
    fusion = {**FUSION, **(fusion_params or {})}
    data, labels, provenance = load_inputs(store, catalog_path, backbone)

    stage_one = {}  # Stage I probes: the sweep's, shared by the selection and every fusion run
    with progress_bar(console, f"{pooling} sweep", sweep_steps(data, pooling)) as advance:
        _, top = run_sweep(data, labels, pooling, out / "sweep", probe, provenance, advance, reuse=True,
                           stage_one=stage_one, workers=workers or default_workers(len(data.features), pooling))
    console.print(frame_table(top, f"{pooling.upper()} sweep: top 4 (timestep, block) per plane, validation macro AUROC"))
    with progress_bar(console, "cross-plane combinations", selection_size(out / "sweep")) as advance:
        scored, config = run_select(out / "sweep", data, labels, out / "config.json", "concat", fusion,
                                    progress=advance, reuse=True, stage_one=stage_one)
    console.print(frame_table(scored.head(5), f"Cross-plane selection: best of {len(scored)} combinations (validation)"))

    rows, reused = [], []
    with progress_bar(console, "fusion runs", len(FUSIONS), unit="runs") as advance:
        for method, ehr in FUSIONS:
            name = _run_name(method, ehr)
            metrics, model = run_fuse(config, data, labels, method, out / name, ehr=ehr, n_boot=n_boot,
                                      seed=seed, reuse=True, stage_one=stage_one)
            if model is None:
                reused.append(name)
            summary = metrics[metrics["label"] == "all"].set_index("metric")
            flagged = metrics.loc[(metrics["label"] != "all") & (metrics["note"] != ""), "label"].unique()
            rows.append({"run": name, **{m: summary.at[m, "value"] for m in summary.index},
                         "auroc_ci": f"{summary.at['macro_auroc', 'ci_low']:.3f}-{summary.at['macro_auroc', 'ci_high']:.3f}",
                         "exams_left_out": len(read_table(out / name / "missing_planes.parquet")),
                         "low_support": ",".join(flagged)})
            advance(run=name)
    if reused:
        console.print(f"reused {len(reused)} complete fusion runs made from the same inputs: {', '.join(reused)}")
    table = pd.DataFrame(rows)
    write_table(table, out / "summary")
    console.print(frame_table(table, "Test set: fusion heads vs LightGBM on the same pooled vectors"))
    console.print("exams_left_out: test exams without a series of every plane (fusion needs all three; listed in "
                  f"<run>/missing_planes.csv). low_support: labels with fewer than {MIN_SUPPORT} positive or negative test exams, "
                  "whose AUROC and CI rest on a handful of exams.")

    for a, b in COMPARISONS:
        test = compare_runs(out / a, out / b, seed=seed)
        write_table(test, out / "compare" / f"{a}_vs_{b}")
        macro = test[test["label"] == "macro"].iloc[0]
        console.print(f"{a} vs {b}: macro AUROC delta {macro.delta:+.3f}, paired permutation p = {macro.p_value:.3f}")
    report = build_report(out)
    console.print(f"HTML report: {report}")
    return table
