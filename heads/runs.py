"""Whole runs behind the CLI: sweep, select, fuse, compare, efficiency. Each takes a
``FusionData`` (the catalog's series with their plane nodes of the store's tree, ``gap`` and/or
``activation`` with a ``series`` dimension: ``heads.inputs.load_inputs``) and writes tidy tables
(Parquet + CSV), PNGs and a ``run.json``."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from orthodiff.catalogs.tasks import PLANES
from orthodiff.errors import OrthodiffError
from orthodiff.files import atomic_write, read_weights
from orthodiff.heads.defaults import FUSION, METHOD, PROBE
from orthodiff.heads.metrics import MIN_SUPPORT, evaluate, macro_auroc, permutation_test, subgroup_table, youden_thresholds
from orthodiff.heads.probe import PlaneProbe
from orthodiff.heads.protocol import FusionData, TwoStageFusion, stage_one_probe, stage_two_head
from orthodiff.heads.sweep import plane_units, plot_heatmaps, sweep, top_configs
from orthodiff.options import Method
from orthodiff.outputs import atomic_savefig, portable, pyplot, read_run, read_table, resolved, write_json, write_run, write_table
from orthodiff.progress import no_progress

SWEEP_PROBES = "probes.pt"  # a GLP or SAP sweep's trained probes (``sweep_probes``)


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
    return resolved(config, path.parent)


def split_of(data: FusionData) -> str:
    """The split fingerprint of ``data``'s catalog (``FusionData.from_tree`` records it before
    leaving out planes without features)."""
    from orthodiff.catalogs.cohort import split_fingerprint

    return data.split_fingerprint or split_fingerprint(data.catalog)


def check_split(recorded: dict, data: FusionData, source) -> None:
    """Refuse to go on when ``recorded`` (a run.json or configuration) was made under another
    split of the patients than ``data``'s catalog has now."""
    then, now = recorded.get("split_fingerprint"), split_of(data)
    if then and then != now:
        raise OrthodiffError(
            f"{source} was made under another train/val/test split (fingerprint {then}) than the catalog "
            f"has now ({now}): its features were chosen on the old validation split. Rerun sweep and select "
            f"on this catalog, or pass the catalog it was made with (--catalog)"
        )


def inputs_fingerprint(data: FusionData, labels, **settings) -> str:
    """A hash of everything a run's outputs depend on: which features (backbones, timesteps,
    blocks, series per plane), the split, the labels and the run's settings."""
    import hashlib

    stored = {p: {"attrs": dict(ds.attrs), "series": ds.sizes["series"],
                  "timestep": ds["timestep"].to_numpy().tolist(), "block": ds["block"].to_numpy().tolist()}
              for p, ds in sorted(data.features.items())}
    text = json.dumps({"features": stored, "split": split_of(data), "labels": list(labels), **settings},
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def completed(out, fingerprint: str, tables=(), run_file="run.json") -> dict | None:
    """The run record of ``out`` if the run there is complete (its record and tables exist)
    and was made from the same inputs; otherwise None."""
    out = Path(out)
    record = out / run_file
    if not record.is_file() or not all((out / f"{t}.parquet").is_file() for t in tables):
        return None
    run = json.loads(record.read_text())
    return run if run.get("inputs_fingerprint") == fingerprint else None


def run_sweep(data: FusionData, labels, pooling, out, probe_params=None, provenance=None, progress=None,
              reuse=False, stage_one=None, workers=1):
    """Sweep every (plane, timestep, block); write sweep/top4 tables, heatmaps, run.json.
    ``reuse``: return the tables of a complete sweep from the same inputs instead.
    ``stage_one``: a Stage I cache (``stage_one_keys``) filled with the sweep's GLP or SAP probes,
    which are the Stage I probes of the selection and fusion runs on the same inputs.
    ``workers``: processes sweeping planes at once (:func:`sweep`); the results do not depend on it."""
    out = Path(out)
    params = {**PROBE, **(probe_params or {})}
    fingerprint = inputs_fingerprint(data, labels, kind="sweep", pooling=pooling, probe=params)
    if reuse and completed(out, fingerprint, ("sweep", "top4")):
        return read_table(out / "sweep.parquet"), read_table(out / "top4.parquet")
    probes = {}
    results = sweep(data.features, data.catalog, labels, pooling, probe_params=params, progress=progress, probes=probes,
                    workers=workers)
    if probes:
        state = {"inputs_fingerprint": fingerprint,
                 "probes": {"|".join(map(str, key)): probe.net_.state_dict() for key, probe in probes.items()}}
        atomic_write(out / SWEEP_PROBES, lambda tmp: torch.save(state, tmp))
    if stage_one is not None:
        seed = params.get("random_state", 0)
        stage_one.update({(p, t, b, seed): probe for (p, t, b), probe in probes.items()})
    top = top_configs(results, 4)
    write_table(results, out / "sweep")
    write_table(top, out / "top4")
    plot_heatmaps(results, out)
    write_run({"kind": "sweep", "pooling": pooling, "labels": labels, "probe_params": params, **(provenance or {}),
                "planes": [p for p in PLANES if p in data.features], "split_fingerprint": split_of(data),
                "inputs_fingerprint": fingerprint}, out)
    return results, top


def sweep_probes(sweep_dir, fingerprint: str) -> dict:
    """The GLP or SAP probes a sweep trained, keyed as ``stage_one_keys``: the Stage I probes of
    the selection and fusion runs on its configurations, so that the demo in one process and the
    same commands one by one compute the same. Empty for a GAP sweep, or when the sweep folder
    now holds a sweep of other inputs than ``fingerprint`` (the one a selection recorded)."""
    sweep_dir = Path(sweep_dir)
    path = sweep_dir / SWEEP_PROBES
    if not path.is_file():
        return {}
    saved = read_weights(path, "sweep's probe file", "rerun `orthodiff sweep` into this folder to make it again")
    run = read_run(sweep_dir, ("sweep",), "a sweep directory")
    if not isinstance(saved.get("probes"), dict):
        raise OrthodiffError(f"{path}: not a sweep's probe file (no 'probes'); rerun `orthodiff sweep` into this folder")
    if saved.get("inputs_fingerprint") != fingerprint or run.get("inputs_fingerprint") != fingerprint:
        return {}
    params = run["probe_params"]
    probes = {}
    for name, state in saved["probes"].items():
        plane, timestep, block = name.split("|")
        probes[(plane, int(timestep), block, params.get("random_state", 0))] = PlaneProbe.from_head(run["pooling"], state, **params)
    return probes


def sweep_steps(data: FusionData, pooling: str) -> int:
    """Progress units of a sweep: one per plane for the batched GAP and SAP sweeps, one per configuration otherwise."""
    return sum(plane_units(ds, pooling, batched=True) for ds in data.features.values())


def selection_size(sweep_dir, top_k: int = 4) -> int:
    """How many cross-plane combinations ``run_select`` scores (for progress bars)."""
    top = read_table(Path(sweep_dir) / "top4.parquet")
    return int(np.prod(top[top["rank"] <= top_k].groupby("plane").size().to_numpy()))


def stage_one_keys(config: dict, seed: int) -> dict:
    """The key of each plane's Stage I probe in a ``stage_one`` cache: what it was trained on,
    within one set of features, catalog and probe settings."""
    return {p: (p, int(c["timestep"]), str(c["block"]), seed) for p, c in config["planes"].items()}


def run_select(sweep_dir, data: FusionData, labels, config_path, method=METHOD, fusion_params=None, top_k=4,
               progress=None, reuse=False, stage_one=None):
    """Score every cross-plane combination of the per-plane top ``top_k`` on validation with the
    fusion head; freeze the best as the configuration file. Returns the scored table and the
    configuration (``reuse``: those of a complete selection from the same inputs).
    ``stage_one``: a dict that collects the Stage I probes trained here (``stage_one_keys``), so
    that fusion runs of the chosen configuration (``run_fuse(stage_one=...)``) reuse them; a
    GLP or SAP sweep's own probes are Stage I wherever they apply (``sweep_probes``)."""
    sweep_dir, config_path = Path(sweep_dir), Path(config_path)
    run = read_run(sweep_dir, ("sweep",), "a sweep directory")
    check_split(run, data, f"the sweep {sweep_dir}")
    fusion = {**FUSION, **(fusion_params or {})}
    selection = config_path.with_name(config_path.stem + "_selection")
    fingerprint = inputs_fingerprint(data, labels, kind="select", sweep=run.get("inputs_fingerprint"),
                                     method=method, fusion=fusion, top_k=top_k)
    if reuse and completed(config_path.parent, fingerprint, (selection.name,), config_path.name):
        return read_table(selection.with_suffix(".parquet")), read_config(config_path)
    top = read_table(sweep_dir / "top4.parquet")
    top = top[top["rank"] <= top_k]
    planes = [p for p in PLANES if p in set(top["plane"])]
    seed = run["probe_params"].get("random_state", 0)  # the sweep's probes' (``run_sweep``)
    rows, stage_one = [], stage_one if stage_one is not None else {}
    for key, probe in sweep_probes(sweep_dir, run["inputs_fingerprint"]).items():
        stage_one.setdefault(key, probe)
    outputs = {}  # Stage I outputs on train and validation per plane configuration, shared by its combinations
    train, val = data.split("train").catalog, data.split("val").catalog
    per_plane = [top[top["plane"] == p][["timestep", "block"]].to_dict("records") for p in planes]
    for combo in itertools.product(*per_plane):
        config = {"pooling": run["pooling"], "planes": dict(zip(planes, combo))}
        slabs = data.configured(config, str(sweep_dir))
        model = TwoStageFusion(stage_one_probe(run["pooling"], run["probe_params"], seed), stage_two_head(method, fusion))
        keys = stage_one_keys(config, seed)
        X = slabs.rows(train)
        model.fit_stage_one(X, X.labels(labels), probes={p: stage_one[k] for p, k in keys.items() if k in stage_one})
        stage_one.update({k: model.probes_[p] for p, k in keys.items()})  # Stage I is frozen: reuse it
        new = [p for p, k in keys.items() if k not in outputs]
        if new:  # and pool each series once per plane configuration
            both = FusionData({p: slabs.features[p] for p in new}, pd.concat([train, val]), split_fingerprint=split_of(data))
            pooled = model.stage_one_outputs(both)
            outputs.update({keys[p]: pooled[p] for p in new})
        shared = replace(slabs, pooled={p: outputs[k] for p, k in keys.items()})
        X = shared.rows(train)
        model.fit(X, X.labels(labels), probes=model.probes_)
        pred = model.predict_exams(shared.rows(val))
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
        "sweep": str(sweep_dir.resolve()), "sweep_fingerprint": run["inputs_fingerprint"],
        "split_fingerprint": split_of(data),
        "inputs_fingerprint": fingerprint,
    }
    write_table(scored, selection)
    write_json(portable(config, config_path.parent), config_path)
    return scored, config


def plot_gating(gating: pd.DataFrame, path, title: str = "MPAE gating weights") -> Path:
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
    ax.set_title(title, fontsize=10, loc="left", pad=24)
    ax.legend(fontsize=8, loc="upper right", bbox_to_anchor=(1.0, 1.25), ncol=3)
    fig.tight_layout()
    path = atomic_savefig(fig, path)
    plt.close(fig)
    return path


def decision_thresholds(threshold, model, slabs: FusionData, labels) -> np.ndarray:
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
    val = slabs.split("val")
    if not len(val):
        raise OrthodiffError("--threshold youden needs a validation split ('val') in the catalog")
    pred = model.predict_exams(val)
    return youden_thresholds(pred[labels].to_numpy(), pred[_prob_columns(labels)].to_numpy())


def flag_support(metrics: pd.DataFrame, y: np.ndarray, labels, split: str = "test", minimum: int = MIN_SUPPORT) -> pd.DataFrame:
    """Add to ``note`` of every label with fewer than ``minimum`` positives or negatives that
    its metrics rest on too few exams (unless it already says why they are undefined)."""
    y = np.asarray(y)
    notes = {}
    for j, label in enumerate(labels):
        pos, neg = int(y[:, j].sum()), int(len(y) - y[:, j].sum())
        if 0 < min(pos, neg) < minimum:
            notes[label] = f"low support: {pos} positive / {neg} negative exams in the {split} split (< {minimum})"
    out = metrics.copy()
    flagged = out["label"].map(lambda label: notes.get(label, ""))
    out["note"] = np.where((out["note"] == "") & (flagged != ""), flagged, out["note"])
    return out


def training_part(catalog: pd.DataFrame, subset: int | str | None = None) -> pd.DataFrame:
    """The training rows: all of them (``None`` or "all"), or the nested label-efficiency
    subset of ``subset`` patients (the catalog's ``subset_<N>`` column)."""
    from orthodiff.catalogs.cohort import SUBSET_PREFIX, subset_sizes

    train = catalog[catalog["split"] == "train"]
    if subset is None or subset == "all":
        return train
    column = f"{SUBSET_PREFIX}{subset}"
    if column not in catalog.columns:
        raise OrthodiffError(
            f"the catalog has no subset column {column!r} (it has subsets {subset_sizes(catalog) or 'none'} of "
            f"{train['patient_id'].nunique()} training patients); run `orthodiff catalog split --subsets` with sizes "
            f"up to that number, or pass subsets from the ones it has"
        )
    return train[train[column].fillna(False).astype(bool)]


def run_fuse(config, data: FusionData, labels, method, out, ehr=False, n_boot=500, seed=0, fusion_params=None,
             threshold="0.5", probes=None, reuse=False, progress=None, stage_one=None, subset=None):
    """Train on train (two stages), evaluate on test: metrics with patient bootstrap CIs
    (thresholded metrics at ``threshold``, see ``decision_thresholds``), subgroups, exam
    predictions, exams left out, MPAE gating and EHR weights. ``probes``: fitted Stage I
    probes by plane used as they are (e.g. fine-tuned pooling heads) instead of new ones.
    Returns the metrics and the fitted model (``reuse``, without ``probes``: the metrics of a
    complete run from the same inputs, and None). ``stage_one``: a cache of Stage I probes
    trained on the same inputs with the same settings (``run_select``, earlier runs), read and
    filled here: the runs of one configuration train each plane's probe once. The configuration's
    sweep's probes (``sweep_probes``) are used where they apply. ``subset``: train on that
    label-efficiency subset of the training patients only (``training_part``; neither cache
    applies). ``progress(stage=...)`` after training, evaluation and writing."""
    progress = progress or no_progress
    out = Path(out)
    check_split(config, data, "the configuration")
    slabs = data.configured(config)
    fusion = {**FUSION, **config.get("fusion_params", {}), **(fusion_params or {})}
    whole = subset in (None, "all")  # the Stage I caches hold probes trained on the whole training split
    fingerprint = inputs_fingerprint(data, labels, kind="fuse", config=config.get("planes"),
                                     pooling=config["pooling"], probe=config.get("probe_params"), fusion=fusion,
                                     method=method, ehr=ehr, n_boot=n_boot, seed=seed, threshold=threshold,
                                     **({} if whole else {"subset": str(subset)}))
    if reuse and not probes and completed(out, fingerprint, ("predictions", "metrics", "subgroups", "missing_planes")):
        return read_table(out / "metrics.parquet"), None
    model = TwoStageFusion(stage_one_probe(config["pooling"], config.get("probe_params"), seed),
                           stage_two_head(method, fusion, seed), ehr=ehr)
    keys = stage_one_keys(config, seed)
    cached = {}
    if whole and not probes:
        known = {**(sweep_probes(config["sweep"], config["sweep_fingerprint"]) if "sweep" in config else {}),
                 **(stage_one or {})}
        cached = {p: known[k] for p, k in keys.items() if k in known}
    X = slabs.rows(training_part(data.catalog, subset))
    model.fit(X, X.labels(labels), probes=probes or cached)
    if stage_one is not None and not probes and whole:
        stage_one.update({k: model.probes_[p] for p, k in keys.items()})
    progress(stage="trained")
    test = slabs.split("test")
    if not len(test):
        raise OrthodiffError("the catalog has no test series")
    cut = decision_thresholds(threshold, model, slabs, labels)
    pred = model.predict_exams(test)
    y, p = pred[labels].to_numpy(), pred[_prob_columns(labels)].to_numpy()
    metrics = flag_support(evaluate(y, p, labels, groups=pred["patient_id"].to_numpy(), n_boot=n_boot, seed=seed, threshold=cut), y, labels)
    meta = test.catalog.drop_duplicates("case_id").set_index("case_id").loc[pred["case_id"]].reset_index()
    subgroups = subgroup_table(y, p, labels, meta)
    progress(stage="evaluated")
    write_table(pred, out / "predictions")
    write_table(metrics, out / "metrics")
    write_table(subgroups, out / "subgroups")
    missing = model.missing_exams(test)
    write_table(missing, out / "missing_planes")
    if Method(method).gated:
        gating = pd.DataFrame(
            [{"label": c, "plane": pl, "weight": float(pred[f"gate_{c}_{pl}"].mean())} for c in labels for pl in model.planes_]
        )
        write_table(gating, out / "gating")
        plot_gating(gating, out / "gating.png", f"MPAE gating weights per label — {out.name}")
    if ehr:
        write_table(pd.DataFrame({"label": labels, "mri_weight": model.head_.mri_weight_}), out / "ehr_weight")
    write_run({"kind": "fuse", "method": method, "ehr": ehr, "config": config, "labels": labels,
                "threshold": threshold, "thresholds": dict(zip(labels, cut.tolist())),
                "stage_one": sorted(probes) if probes else [], "fusion_params": fusion, "test_exams": len(pred),
                "subset": None if whole else str(subset),
                "exams_missing_a_plane": len(missing), "split_fingerprint": split_of(data),
                "inputs_fingerprint": fingerprint}, out)
    progress(stage="written")
    return metrics, model


def compare_runs(a, b, n_perm=1000, seed=0) -> pd.DataFrame:
    """Paired permutation test of two classification runs (fuse or baseline) on their common test exams."""
    runs = []
    for path in (Path(a), Path(b)):
        runs.append((read_run(path, ("fuse", "baseline"), "a fuse or baseline classification run"),
                     read_table(path / "predictions.parquet")))
    (run_a, pa), (run_b, pb) = runs
    if run_a["labels"] != run_b["labels"]:
        raise OrthodiffError(f"{a} and {b} predict different labels")
    return compare_predictions(pa, pb, run_a["labels"], n_perm=n_perm, seed=seed, names=(a, b))


def common_exams(a: pd.DataFrame, b: pd.DataFrame, names=("A", "B")) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The rows of two exam-prediction tables (one row per ``case_id``) for the exams both
    have, both in ``a``'s row order: ``permutation_test`` draws one swap per patient in the
    order patients first appear, so the row order is part of its p-values. ``names`` name the
    tables in errors."""
    for table, name in zip((a, b), names):
        repeated = table["case_id"][table["case_id"].duplicated()]
        if len(repeated):
            raise OrthodiffError(f"{name} predicts exam {repeated.iloc[0]!r} more than once: keep one run's rows "
                                 "(e.g. one subset and head of an efficiency run)")
    shared = a[a["case_id"].isin(b["case_id"])]
    if shared.empty:
        raise OrthodiffError(f"{names[0]} and {names[1]} share no test exams")
    return shared, b.set_index("case_id").loc[shared["case_id"]].reset_index()


def compare_predictions(a: pd.DataFrame, b: pd.DataFrame, labels, n_perm=1000, seed=0, names=("A", "B")) -> pd.DataFrame:
    """Paired permutation test of two exam-prediction tables (case_id, patient_id, the labels,
    ``p_<label>``) on their common exams (``common_exams``); truth and patients are ``a``'s."""
    a, b = common_exams(a, b, names)
    return permutation_test(a[labels].to_numpy(), a[_prob_columns(labels)].to_numpy(), b[_prob_columns(labels)].to_numpy(),
                            labels, a["patient_id"].to_numpy(), n_perm=n_perm, seed=seed)


def run_efficiency(config, data: FusionData, labels, subsets, out, method=METHOD, comparator="lightgbm",
                   seed=0, progress=None, fusion_params=None, n_boot=500):
    """Test macro AUROC (patient bootstrap CI) of the fusion head and the comparator trained on
    nested patient subsets (catalog columns ``subset_<N>``; "all" = the whole training split);
    their exam predictions are kept (``predictions``, with ``subset`` and ``head``) for paired tests."""
    out = Path(out)
    check_split(config, data, "the configuration")
    fusion = {**FUSION, **config.get("fusion_params", {}), **(fusion_params or {})}
    slabs = data.configured(config)
    test = slabs.split("test")
    rows, predictions = [], []
    for size in subsets:
        part = training_part(data.catalog, size)
        for head in (method, comparator):
            model = TwoStageFusion(stage_one_probe(config["pooling"], config.get("probe_params"), seed),
                                   stage_two_head(head, fusion, seed))
            X = slabs.rows(part)
            pred = model.fit(X, X.labels(labels)).predict_exams(test)
            metrics = evaluate(pred[labels].to_numpy(), pred[_prob_columns(labels)].to_numpy(), labels,
                               groups=pred["patient_id"].to_numpy(), n_boot=n_boot, seed=seed)
            macro = metrics[metrics["metric"] == "macro_auroc"].iloc[0]
            rows.append({"subset": str(size), "patients": part["patient_id"].nunique(), "head": head,
                         "test_macro_auroc": macro["value"], "ci_low": macro["ci_low"], "ci_high": macro["ci_high"]})
            predictions.append(pred.assign(subset=str(size), head=head))
            if progress:
                progress()
    curves = pd.DataFrame(rows)
    write_table(pd.concat(predictions, ignore_index=True), out / "predictions")
    write_table(curves, out / "efficiency")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for head, part in curves.groupby("head", sort=False):
        ax.plot(part["patients"], part["test_macro_auroc"], marker="o", label=head)
    ax.set_xscale("log")
    ticks = sorted(curves["patients"].unique())
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("training patients (log scale)")
    ax.set_ylabel("test macro AUROC")
    ax.set_title(f"Label efficiency: {method} vs {comparator} — {out.name}", fontsize=10, loc="left")
    ax.legend()
    fig.tight_layout()
    atomic_savefig(fig, out / "efficiency.png")
    plt.close(fig)
    write_run({"kind": "efficiency", "config": config, "method": method, "comparator": comparator,
               "fusion_params": fusion, "subsets": [str(s) for s in subsets], "n_boot": n_boot, "seed": seed,
               "split_fingerprint": split_of(data)}, out)
    return curves
