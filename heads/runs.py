"""Whole runs behind the CLI: sweep, select, fuse, compare, efficiency. Each takes the
per-plane feature Datasets (``gap`` and/or ``activation`` with a ``series`` dimension)
and the catalog, and writes tidy tables (Parquet + CSV), PNGs and a ``run.json``."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from orthodiff.catalogs.tasks import PLANES
from orthodiff.errors import OrthodiffError
from orthodiff.heads.metrics import evaluate, macro_auroc, permutation_test, subgroup_table, youden_thresholds
from orthodiff.heads.protocol import TwoStageFusion
from orthodiff.heads.report import atomic_savefig, pyplot, read_table, write_json, write_table
from orthodiff.heads.sweep import plot_heatmaps, sweep, top_configs

# the paper's values (docs/paper.md)
DEFAULT_PROBE = {"epochs": 10, "lr": 5e-4, "batch_size": 10}
DEFAULT_FUSION = {"epochs": 5, "lr": 5e-5, "batch_size": 10}


def _prob_columns(labels):
    return [f"p_{c}" for c in labels]


def read_config(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise OrthodiffError(f"{path}: configuration file not found")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise OrthodiffError(f"{path}: not a JSON configuration ({err.msg}, line {err.lineno})") from None
    for key in ("pooling", "planes"):
        if key not in config:
            raise OrthodiffError(f"{path}: configuration lacks {key!r}")
    return config


def config_features(features: dict[str, xr.Dataset], config: dict, source: str = "configuration") -> dict[str, xr.DataArray]:
    """Per plane, the configured (timestep, block) slab: the GAP vectors for GAP pooling,
    the activation otherwise. A plane, timestep or block absent from the store is an error."""
    out = {}
    for plane, choice in config["planes"].items():
        if plane not in features:
            raise OrthodiffError(f"{source}: plane {plane!r} is not in the store (it has {sorted(features)})")
        ds = features[plane]
        var = "gap" if config["pooling"] == "gap" else "activation"
        if var not in ds:
            raise OrthodiffError(f"{source}: the store has no {var!r} variable for plane {plane}")
        for dim in ("timestep", "block"):
            known = ds[dim].to_numpy().tolist()
            if choice[dim] not in known:
                raise OrthodiffError(f"{source}: {plane} {dim} {choice[dim]!r} is not in the store (it has {known})")
        out[plane] = ds[var].sel(timestep=choice["timestep"], block=choice["block"])
    return out


def run_sweep(features, catalog, labels, pooling, out, probe_params=None, provenance=None, progress=None):
    """Sweep every (plane, timestep, block); write sweep/top4 tables, heatmaps, run.json."""
    out = Path(out)
    params = {**DEFAULT_PROBE, **(probe_params or {})}
    results = sweep(features, catalog, labels, pooling, probe_params=params, progress=progress)
    top = top_configs(results, 4)
    write_table(results, out / "sweep")
    write_table(top, out / "top4")
    plot_heatmaps(results, out)
    write_json({"kind": "sweep", "pooling": pooling, "labels": labels, "probe_params": params, **(provenance or {})}, out / "run.json")
    return results, top


def _split(catalog, name):
    return catalog[catalog["split"] == name]


def run_select(sweep_dir, features, catalog, labels, config_path, method="concat", fusion_params=None, top_k=4,
               progress=None):
    """Score every cross-plane combination of the per-plane top ``top_k`` on validation with the
    fusion head; freeze the best as the configuration file. Returns the scored table."""
    sweep_dir = Path(sweep_dir)
    run = json.loads((sweep_dir / "run.json").read_text()) if (sweep_dir / "run.json").is_file() else None
    if not run or run.get("kind") != "sweep":
        raise OrthodiffError(f"{sweep_dir}: not a sweep directory (no sweep run.json)")
    top = read_table(sweep_dir / "top4.parquet")
    top = top[top["rank"] <= top_k]
    planes = [p for p in PLANES if p in set(top["plane"])]
    fusion = {**DEFAULT_FUSION, **(fusion_params or {})}
    rows, stage_one = [], {}
    per_plane = [top[top["plane"] == p][["timestep", "block"]].to_dict("records") for p in planes]
    for combo in itertools.product(*per_plane):
        config = {"pooling": run["pooling"], "planes": dict(zip(planes, combo))}
        slabs = config_features(features, config, str(sweep_dir))
        model = TwoStageFusion(run["pooling"], method, probe_params=run["probe_params"], fusion_params=fusion)
        keys = {p: (p, c["timestep"], c["block"]) for p, c in zip(planes, combo)}
        model.fit(slabs, _split(catalog, "train"), labels, probes={p: stage_one[k] for p, k in keys.items() if k in stage_one})
        stage_one.update({k: model.probes_[p] for p, k in keys.items()})  # Stage I is frozen: reuse it
        pred = model.predict(slabs, _split(catalog, "val"))
        row = {f"{p}_{k}": c[k] for p, c in zip(planes, combo) for k in ("timestep", "block")}
        rows.append({**row, "val_macro_auroc": macro_auroc(pred[labels].to_numpy(), pred[_prob_columns(labels)].to_numpy())})
        if progress:
            progress()
    scored = pd.DataFrame(rows).sort_values("val_macro_auroc", ascending=False, kind="stable").reset_index(drop=True)
    best = scored.iloc[0]
    config = {
        "pooling": run["pooling"],
        "planes": {p: {"timestep": int(best[f"{p}_timestep"]), "block": str(best[f"{p}_block"])} for p in planes},
        "selection_method": method,
        "val_macro_auroc": float(best["val_macro_auroc"]),
        "labels": labels,
        "probe_params": run["probe_params"],
        "fusion_params": fusion,
        **{k: run[k] for k in ("store", "backbone", "catalog") if k in run},
    }
    write_table(scored, Path(config_path).with_name(Path(config_path).stem + "_selection"))
    write_json(config, config_path)
    return scored, config


def plot_gating(gating: pd.DataFrame, path) -> Path:
    plt = pyplot()
    grid = gating.pivot(index="label", columns="plane", values="weight")
    grid = grid[[p for p in PLANES if p in grid.columns]].loc[gating["label"].unique()]
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * len(grid), 3.2))
    bottom = np.zeros(len(grid))
    for plane in grid.columns:
        ax.bar(grid.index, grid[plane], bottom=bottom, label=plane)
        bottom += grid[plane].to_numpy()
    ax.set_ylabel("mean MPAE gating weight (test)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8, loc="upper right", bbox_to_anchor=(1.0, 1.25), ncol=3)
    fig.tight_layout()
    path = atomic_savefig(fig, path)
    plt.close(fig)
    return path


def decision_thresholds(threshold, model, slabs, catalog, labels) -> np.ndarray:
    """Per-label thresholds: a number for every label, or ``"youden"``: Youden's J on the
    validation split's predictions, then frozen for test."""
    if threshold != "youden":
        try:
            value = float(threshold)
        except ValueError:
            raise OrthodiffError(f"threshold {threshold!r}: expected a number in (0, 1) or 'youden'") from None
        if not 0 < value < 1:
            raise OrthodiffError(f"threshold {value}: expected a number in (0, 1) or 'youden'")
        return np.full(len(labels), value)
    val = _split(catalog, "val")
    if val.empty:
        raise OrthodiffError("--threshold youden needs a validation split ('val') in the catalog")
    pred = model.predict(slabs, val)
    return youden_thresholds(pred[labels].to_numpy(), pred[_prob_columns(labels)].to_numpy())


def run_fuse(config, features, catalog, labels, method, out, ehr=False, n_boot=500, seed=0, fusion_params=None,
             threshold="0.5", probes=None):
    """Train on train (two stages), evaluate on test: metrics with patient bootstrap CIs
    (thresholded metrics at ``threshold``, see ``decision_thresholds``), subgroups, exam
    predictions, exams left out, MPAE gating and EHR weights. ``probes``: fitted Stage I
    probes by plane used as they are (e.g. fine-tuned pooling heads) instead of new ones."""
    out = Path(out)
    slabs = config_features(features, config)
    fusion = {**DEFAULT_FUSION, **config.get("fusion_params", {}), **(fusion_params or {})}
    model = TwoStageFusion(config["pooling"], method, ehr=ehr, probe_params=config.get("probe_params"),
                           fusion_params=fusion, random_state=seed)
    model.fit(slabs, _split(catalog, "train"), labels, probes=probes)
    test = _split(catalog, "test")
    if test.empty:
        raise OrthodiffError("the catalog has no test series")
    cut = decision_thresholds(threshold, model, slabs, catalog, labels)
    pred = model.predict(slabs, test)
    y, p = pred[labels].to_numpy(), pred[_prob_columns(labels)].to_numpy()
    metrics = evaluate(y, p, labels, groups=pred["patient_id"].to_numpy(), n_boot=n_boot, seed=seed, threshold=cut)
    meta = test.drop_duplicates("case_id").set_index("case_id").loc[pred["case_id"]].reset_index()
    subgroups = subgroup_table(y, p, labels, meta)
    write_table(pred, out / "predictions")
    write_table(metrics, out / "metrics")
    write_table(subgroups, out / "subgroups")
    missing = model.missing_exams(test)
    write_table(missing, out / "missing_planes")
    if method == "mpae":
        gating = pd.DataFrame(
            [{"label": c, "plane": pl, "weight": float(pred[f"gate_{c}_{pl}"].mean())} for c in labels for pl in model.planes_]
        )
        write_table(gating, out / "gating")
        plot_gating(gating, out / "gating.png")
    if ehr:
        write_table(pd.DataFrame({"label": labels, "mri_weight": model.head_.mri_weight_}), out / "ehr_weight")
    write_json({"kind": "fuse", "method": method, "ehr": ehr, "config": config, "labels": labels,
                "threshold": threshold, "thresholds": dict(zip(labels, cut.tolist())),
                "stage_one": sorted(probes) if probes else [],
                "test_exams": len(pred), "exams_missing_a_plane": len(missing)}, out / "run.json")
    return metrics, model


def compare_runs(a, b, n_perm=1000, seed=0) -> pd.DataFrame:
    """Paired permutation test of two classification runs (fuse or baseline) on their common test exams."""
    runs = []
    for path in (Path(a), Path(b)):
        run_file = path / "run.json"
        if not run_file.is_file() or json.loads(run_file.read_text()).get("kind") not in ("fuse", "baseline"):
            raise OrthodiffError(f"{path}: not a fuse or baseline classification run (no such run.json)")
        runs.append((json.loads(run_file.read_text()), read_table(path / "predictions.parquet")))
    (run_a, pa), (run_b, pb) = runs
    if run_a["labels"] != run_b["labels"]:
        raise OrthodiffError(f"{a} and {b} predict different labels")
    labels = run_a["labels"]
    joined = pa.merge(pb[["case_id", *_prob_columns(labels)]], on="case_id", suffixes=("_a", "_b"))
    if joined.empty:
        raise OrthodiffError(f"{a} and {b} share no test exams")
    cols_a = [f"{c}_a" for c in _prob_columns(labels)]
    cols_b = [f"{c}_b" for c in _prob_columns(labels)]
    return permutation_test(joined[labels].to_numpy(), joined[cols_a].to_numpy(), joined[cols_b].to_numpy(),
                            labels, joined["patient_id"].to_numpy(), n_perm=n_perm, seed=seed)


def run_efficiency(config, features, catalog, labels, subsets, out, method="concat", comparator="lightgbm",
                   seed=0, progress=None):
    """Test macro AUROC of the fusion head and the comparator trained on nested patient
    subsets (catalog columns ``subset_<N>``; "all" = the whole training split)."""
    from orthodiff.catalogs.cohort import SUBSET_PREFIX

    out = Path(out)
    slabs = config_features(features, config)
    train, test = _split(catalog, "train"), _split(catalog, "test")
    rows = []
    for size in subsets:
        if size == "all":
            part = train
        else:
            column = f"{SUBSET_PREFIX}{size}"
            if column not in catalog.columns:
                raise OrthodiffError(f"catalog has no subset column {column!r}; run `orthodiff catalog split --subsets`")
            part = train[train[column].astype(bool)]
        for head in (method, comparator):
            model = TwoStageFusion(config["pooling"], head, probe_params=config.get("probe_params"),
                                   fusion_params=config.get("fusion_params"), random_state=seed)
            pred = model.fit(slabs, part, labels).predict(slabs, test)
            rows.append({"subset": str(size), "patients": part["patient_id"].nunique(), "head": head,
                         "test_macro_auroc": macro_auroc(pred[labels].to_numpy(), pred[_prob_columns(labels)].to_numpy())})
            if progress:
                progress()
    curves = pd.DataFrame(rows)
    write_table(curves, out / "efficiency")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for head, part in curves.groupby("head", sort=False):
        ax.plot(part["patients"], part["test_macro_auroc"], marker="o", label=head)
    ax.set_xscale("log")
    ax.set_xlabel("training patients")
    ax.set_ylabel("test macro AUROC")
    ax.legend()
    fig.tight_layout()
    atomic_savefig(fig, out / "efficiency.png")
    plt.close(fig)
    write_json({"kind": "efficiency", "config": config, "method": method, "comparator": comparator,
                "subsets": [str(s) for s in subsets]}, out / "run.json")
    return curves
