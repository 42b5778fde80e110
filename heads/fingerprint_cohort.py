"""`orthodiff fingerprint`: exam-level radiomic fingerprints for one task, with comparators.

Exam matrix: for every plane, ROI, source and feature of the stored radiomics one column
(`plane|roi|source|feature`), one row per exam (its first scan of each plane; a missing
plane is NaN, which the heads treat as the training mean). Targets: `abnormal` (any label
of the catalog's task), `acl` (ACL), `meniscus` (MM or LM; MRNet's MEN). Models are fitted
on `train`, thresholds (Youden's J) chosen on `val`, metrics reported on `test` with
bootstrap CIs resampling patients.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from orthodiff.errors import OrthodiffError
from orthodiff.heads.fingerprint import FingerprintClassifier, youden_threshold
from orthodiff.heads.metrics import patient_resamples
from orthodiff.outputs import write_run, write_table

TARGETS = {"abnormal": None, "acl": ("ACL",), "meniscus": ("MM", "LM", "MEN")}


def target(catalog: pd.DataFrame, task: str) -> pd.Series:
    """The 0/1 target per exam (case_id)."""
    from orthodiff.catalogs.cohort import label_columns

    if task not in TARGETS:
        raise OrthodiffError(f"--task {task!r}: expected one of {list(TARGETS)}")
    labels = label_columns(catalog)
    wanted = labels if TARGETS[task] is None else [c for c in TARGETS[task] if c in labels]
    if not wanted:
        raise OrthodiffError(f"catalog task has labels {labels}: none of {list(TARGETS[task])} for --task {task}")
    return (catalog.groupby("case_id")[wanted].max().max(axis=1) > 0).astype(int)


def exam_matrix(radiomics, catalog: pd.DataFrame, sources=None, spatial_indices: bool = True) -> pd.DataFrame:
    """(exams x plane|roi|source|feature) from `open_radiomics` output, first scan per plane.

    `spatial_indices` (the paper's sec. 5.2.2: 35 + 3 candidate features per sub-patch) adds
    per grid cell and source the columns `index_z`, `index_y`, `index_x`: the cell's 1-based
    position in the n^3 grid (`personas.rois.cell_index` + 1, so the first cell is not 0).
    ROIs that are not grid cells (`--roi structures`) get none."""
    from orthodiff.heads.fingerprint import SPATIAL_INDICES
    from orthodiff.personas.rois import cell_index

    ds = radiomics if sources is None else radiomics.sel(source=list(sources))
    ds = ds.isel(series=np.flatnonzero(ds.scan.values == ds.scan.values.min()))
    parts = []
    for plane in np.unique(ds.plane.values):
        sub = ds.isel(series=np.flatnonzero(ds.plane.values == plane))
        values = sub.value.values.reshape(sub.sizes["series"], -1)
        names = [f"{plane}|{r}|{s}|{f}" for r in sub.roi_name.values for s in sub.source.values for f in sub.feature.values]
        frame = pd.DataFrame(values, columns=names, index=pd.Index(sub.case_id.values, name="case_id"))
        if spatial_indices:
            cells = [(f"{plane}|{r}|{s}|{axis}", position + 1) for r in sub.roi_name.values if str(r).startswith("box")
                     for s in sub.source.values for axis, position in zip(SPATIAL_INDICES, cell_index(str(r)))]
            constant = pd.DataFrame({name: np.full(len(frame), float(value)) for name, value in cells}, index=frame.index)
            frame = pd.concat([frame, constant], axis=1)  # one block: assigning 81+ columns one by one fragments the frame
        parts.append(frame[~frame.index.duplicated()])
    out = pd.concat(parts, axis=1)
    return out.loc[out.index.isin(catalog["case_id"])]


def binary_metrics(y, p, threshold: float, groups, n_boot: int = 500, seed: int = 0) -> dict:
    """AUC, accuracy, sensitivity, specificity at `threshold`, with 95% CIs over patients."""
    y, p = np.asarray(y), np.asarray(p)

    def point(idx):
        yy, pred = y[idx], p[idx] >= threshold
        auc = roc_auc_score(yy, p[idx]) if len(np.unique(yy)) == 2 else np.nan
        pos, neg = yy == 1, yy == 0
        return {"auc": auc, "accuracy": float((pred == yy).mean()),
                "sensitivity": float(pred[pos].mean()) if pos.any() else np.nan,
                "specificity": float((~pred[neg]).mean()) if neg.any() else np.nan}

    out = point(np.arange(len(y)))
    boots = [point(idx) for idx in patient_resamples(groups, n_boot, seed)]
    for key in list(out):
        sample = np.array([b[key] for b in boots], float)
        sample = sample[np.isfinite(sample)]
        out[f"{key}_ci"] = [float(v) for v in np.percentile(sample, [2.5, 97.5])] if len(sample) else [np.nan, np.nan]
    return out


def models(random_state: int = 0, epochs: int = 200, usage_encoder=None) -> dict:
    """The fingerprint head and its comparators: name -> (estimator, sources, uses diffusion features).

    Fingerprints on the image alone (the paper's NoPersona ablation), on image + persona (the
    paper's model), on all three sources and on the residual; u = 1 (the paper's NoFS); L1
    logistic regression (classical radiomics) on the image, persona, residual and all three.
    With `usage_encoder` (`supervised.networks.usage_encoder`) also the paper's usage predictor
    on the volumes: the pretrained diffusion encoder fine-tuned with the head."""
    l1 = make_pipeline(SimpleImputer(keep_empty_features=True), StandardScaler(),
                       LogisticRegression(l1_ratio=1.0, solver="saga", C=1.0, class_weight="balanced", max_iter=5000))
    fp = FingerprintClassifier(usage="mlp", epochs=epochs, random_state=random_state)
    encoder = {} if usage_encoder is None else {"fingerprint (image+persona, pretrained encoder)": (
        FingerprintClassifier(usage="diffusion", encoder=usage_encoder, epochs=epochs, random_state=random_state),
        ("image", "persona"), True)}
    return {
        **encoder,
        "fingerprint (image)": (fp, ("image",), True),
        "fingerprint (image+persona)": (fp, ("image", "persona"), True),
        "fingerprint (image+persona+residual)": (fp, ("image", "persona", "residual"), True),
        "fingerprint (residual)": (fp, ("residual",), True),
        "u = 1 (no selection)": (FingerprintClassifier(usage="none", epochs=epochs, random_state=random_state),
                                  ("image", "persona"), False),
        "classical radiomics (L1 logistic, image)": (l1, ("image",), False),
        "L1 logistic, persona only": (l1, ("persona",), False),
        "L1 logistic, residual only": (l1, ("residual",), False),
        "L1 logistic, all features (image+persona+residual)": (l1, ("image", "persona", "residual"), False),
    }


def usage_features(store: str, timestep: int | None = None, block: str | None = None) -> pd.DataFrame | None:
    """Per exam the stored GAP diffusion features of every plane (None if the store has none)."""
    from orthodiff import open_store
    from orthodiff.heads.store import plane_nodes

    try:
        per_plane = plane_nodes(open_store(str(store)), str(store))
    except OrthodiffError:
        return None
    parts = []
    for plane, ds in sorted(per_plane.items()):
        gap = ds.gap.sel(timestep=timestep if timestep is not None else ds.timestep.values[0],
                         block=block if block is not None else ds.block.values[0]).load()
        sub = gap.isel(series=np.flatnonzero(gap.scan.values == gap.scan.values.min()))
        frame = pd.DataFrame(sub.values, index=pd.Index(sub.case_id.values, name="case_id")).add_prefix(f"{plane}|gap")
        parts.append(frame[~frame.index.duplicated()])
    return pd.concat(parts, axis=1)


def usage_images(store: str, exams, planes, backbones: dict | None = None) -> np.ndarray:
    """(exams, planes, D, H, W) float32: each exam's first-scan volume per plane as the
    personas group holds it (0 where the exam lacks the plane), the usage predictor's input.
    In memory: for demo-sized cohorts. `backbones`: plane -> persona backbone id, where the
    store holds personas of several."""
    from orthodiff.personas.reader import open_personas

    out = None
    for c, plane in enumerate(planes):
        ds = open_personas(store, plane, (backbones or {}).get(plane))
        ds = ds.isel(series=np.flatnonzero(ds.scan.values == ds.scan.values.min()))
        image = ds.image.values.astype(np.float32)
        if out is None:
            out = np.zeros((len(exams), len(planes), *image.shape[1:]), np.float32)
        row = {}
        for i, case in enumerate(ds.case_id.values):
            row.setdefault(str(case), i)
        for j, exam in enumerate(exams):
            if str(exam) in row:
                out[j, c] = image[row[str(exam)]]
    return out


def persona_figure(store: str, catalog: pd.DataFrame, exam: str, png: Path, planes=None,
                   backbones: dict | None = None) -> Path:
    """Central slice of the exam's image, persona and residual per plane (of `planes`, default
    all; `backbones`: plane -> persona backbone id), ROI outlined."""
    from orthodiff.outputs import atomic_savefig, pyplot
    from orthodiff.personas.fidelity import persona_panels
    from orthodiff.personas.reader import open_personas

    series = catalog[(catalog.case_id == exam) & (catalog.plane.isin(planes) if planes is not None else True)]
    series = series.drop_duplicates("plane")
    plt = pyplot()
    fig, axes = plt.subplots(len(series), 3, figsize=(9, 3 * len(series)), squeeze=False)
    for row, (plane, sid) in zip(axes, zip(series.plane, series.series_id)):
        ds = open_personas(store, plane, (backbones or {}).get(plane)).sel(series=sid).load()
        z = ds.sizes["z"] // 2
        persona_panels(row, ds.image.values[z].astype(float), ds.persona.values[z].astype(float),
                       ds["mask"].values[z] > 0, f"{exam} {plane}")
    fig.tight_layout()
    path = atomic_savefig(fig, png)
    plt.close(fig)
    return path


def run_fingerprint(store: str, catalog_path: str | Path, task: str, out: str | Path, settings: str | None = None,
                    epochs: int = 200, n_boot: int = 500, seed: int = 0, top: int = 5, progress=None,
                    usage_encoder=None) -> pd.DataFrame:
    """Fit every model on train, threshold on val, score test; write metrics, explanations, betas to `out`.
    `usage_encoder`: see `models` (its `planes` say which volumes it reads)."""
    from orthodiff.catalogs.cohort import read_catalog
    from orthodiff.radiomics.reader import open_radiomics

    catalog = read_catalog(catalog_path)
    y = target(catalog, task)
    radiomics = open_radiomics(store, settings=settings)
    backbones = radiomics.attrs.get("persona_backbones", {})  # the personas these features were computed on
    have = set(radiomics.source.values.tolist())
    split = catalog.groupby("case_id")["split"].first()
    patient = catalog.groupby("case_id")["patient_id"].first()
    gap = usage_features(store)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows, choices = [], models(seed, epochs, usage_encoder)
    images = None
    for name, (estimator, sources, diffusion) in choices.items():
        if not set(sources) <= have:
            raise OrthodiffError(f"{store}: model {name!r} needs radiomics of {list(sources)}, the store has {sorted(have)} "
                                 f"(run `orthodiff persona` then `orthodiff radiomics --source image,persona,residual`)")
        X = exam_matrix(radiomics, catalog, sources)
        exams = {s: X.index[split.reindex(X.index).to_numpy() == s] for s in ("train", "val", "test")}
        if any(len(np.unique(y.reindex(exams[s]))) < 2 for s in ("train", "test")):
            raise OrthodiffError(f"--task {task}: train and test need positive and negative exams "
                                 f"({ {s: int(y.reindex(v).sum()) for s, v in exams.items()} } positives)")

        if isinstance(estimator, FingerprintClassifier) and estimator.usage == "diffusion" and images is None:
            images = dict(zip(X.index, usage_images(store, X.index, usage_encoder.planes, backbones)))

        def inputs(idx):
            if isinstance(estimator, FingerprintClassifier) and estimator.usage == "diffusion":
                return {"radiomics": X.loc[idx], "usage": np.stack([images[e] for e in idx])}
            if isinstance(estimator, FingerprintClassifier) and estimator.usage == "mlp" and diffusion and gap is not None:
                return {"radiomics": X.loc[idx], "usage": gap.reindex(idx).to_numpy(np.float32)}
            return X.loc[idx] if isinstance(estimator, FingerprintClassifier) else X.loc[idx].to_numpy()

        from sklearn.base import clone

        model = clone(estimator)
        if isinstance(model, FingerprintClassifier):
            model.fit(inputs(exams["train"]), y.reindex(exams["train"]), validation=(inputs(exams["val"]), y.reindex(exams["val"]))
                      if len(exams["val"]) else None)
            threshold = model.threshold_
        else:
            model.fit(inputs(exams["train"]), y.reindex(exams["train"]))
            val = exams["val"] if len(exams["val"]) else exams["train"]
            threshold = youden_threshold(y.reindex(val), model.predict_proba(inputs(val))[:, 1])
        p = model.predict_proba(inputs(exams["test"]))[:, 1]
        metrics = binary_metrics(y.reindex(exams["test"]), p, threshold, patient.reindex(exams["test"]).to_numpy(), n_boot, seed)
        usage_input = "volumes (pretrained encoder)" if getattr(estimator, "usage", "") == "diffusion" else \
            ("diffusion GAP" if gap is not None else "radiomics") if diffusion else ""
        rows.append({"model": name, "sources": "+".join(sources), "usage input": usage_input,
                     "threshold": threshold, **metrics})
        if isinstance(model, FingerprintClassifier) and model.usage != "none":
            slug = re.sub(r"[^a-z0-9]+", "_", name.split("(")[1].rstrip(")")).strip("_")
            write_table(model.explain(inputs(exams["test"]), top=top, exams=exams["test"]), out / f"explain_{slug}")
            write_table(pd.DataFrame({"feature": model.feature_names_, "beta": model.beta_.detach().numpy()}).sort_values(
                "beta", key=np.abs, ascending=False), out / f"beta_{slug}")
        if progress:
            progress()
    if gap is not None:  # the diffusion-feature probe: L2 logistic regression on the stored GAP features
        probe = make_pipeline(SimpleImputer(keep_empty_features=True), StandardScaler(),
                              LogisticRegression(C=0.1, class_weight="balanced", max_iter=2000))
        G = gap.reindex(X.index)
        probe.fit(G.loc[exams["train"]].to_numpy(), y.reindex(exams["train"]))
        val = exams["val"] if len(exams["val"]) else exams["train"]
        threshold = youden_threshold(y.reindex(val), probe.predict_proba(G.loc[val].to_numpy())[:, 1])
        p = probe.predict_proba(G.loc[exams["test"]].to_numpy())[:, 1]
        rows.append({"model": "diffusion-feature probe (GAP logistic)", "sources": "", "usage input": "",
                     "threshold": threshold, **binary_metrics(y.reindex(exams["test"]), p, threshold,
                                                              patient.reindex(exams["test"]).to_numpy(), n_boot, seed)})
    table = pd.DataFrame(rows)
    write_table(table, out / "metrics")
    positives = [e for e in exams["test"] if y.get(e, 0) == 1]
    if positives:
        persona_figure(store, catalog, positives[0], out / "persona_example.png", np.unique(radiomics.plane.values).tolist(),
                       backbones)
    from orthodiff.personas.reader import open_personas

    personas = {plane: {k: open_personas(store, plane, backbones.get(plane)).attrs.get(k) for k in ("backbone_id", "healthy")}
                for plane in np.unique(radiomics.plane.values).tolist()} if "persona" in have else {}
    method = {"spatial_indices": True, **{k: v for k, v in FingerprintClassifier().get_params().items()
                                          if k in ("beta_penalty", "youden_every", "fit_intercept", "lambda_u", "lambda_beta")}}
    write_run({"store": str(store), "catalog": str(catalog_path), "task": task,
               "personas": personas,  # healthy None: backbone not trained on healthy exams
               "settings": radiomics.attrs["settings_id"], "epochs": epochs, "seed": seed, "method": method,
               "exams": {s: int(len(v)) for s, v in exams.items()}}, out)
    return table
