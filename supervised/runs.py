"""Whole runs behind `finetune`, `segment train|predict` and `baseline classify|segment`.

Classification runs write exam predictions and metrics in the fuse runs' format (so
`orthodiff compare` and `orthodiff table` take them side by side); segmentation runs write
per-structure Dice, an overlay PNG, the model, and on request label-efficiency curves.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from orthodiff.backbone import backbone_id
from orthodiff.backbone.checkpoint import read_checkpoint, reference_state, save_atomic
from orthodiff.backbone.diffusion import NoiseScheduler
from orthodiff.catalogs.cohort import SUBSET_PREFIX, label_columns, read_catalog
from orthodiff.catalogs.tasks import structures
from orthodiff.errors import OrthodiffError
from orthodiff.files import read_weights, series_file
from orthodiff.heads.metrics import evaluate, macro_auroc, patient_resamples
from orthodiff.heads.probe import PlaneProbe
from orthodiff.outputs import atomic_savefig, pyplot, write_mask, write_run, write_table
from orthodiff.supervised.data import exam_predictions, plane_volumes, split_rows
from orthodiff.supervised.estimators import VolumeClassifier, VolumeSegmenter

MODEL_FILE = "model.pt"


def _catalog(catalog_path) -> tuple[pd.DataFrame, list[str]]:
    catalog = read_catalog(catalog_path)
    return catalog, label_columns(catalog)


def run_finetune(store, catalog_path, plane, backbone, timestep, block, out, pooling="sap", epochs=5, lr=2.5e-5,
                 head_lr=5e-4, batch_size=10, seed=0, device=None, progress=None, timesteps=None, blocks=None,
                 subset=None) -> dict:
    """Stage I fine-tuning on the plane's training series (paper: head 5e-4, backbone
    0.05 x that, 5 epochs, batch 10); writes a new backbone checkpoint (same layout, new id,
    the fine-tuned pooling head under ``finetune_head``) and returns a summary with the
    validation macro AUROC (NaN without a validation split). With several ``timesteps`` /
    ``blocks`` (the paper's FT-Opt search), each pair is fine-tuned and the one with the
    best validation macro AUROC is written (``selection`` in the summary). ``subset``: only
    that label-efficiency subset of the training patients (catalog column ``subset_<N>``)."""
    ckpt = _plane_checkpoint(backbone, plane)
    catalog, labels = _catalog(catalog_path)
    ds, rows = plane_volumes(store, catalog, plane)
    train_ds, train_rows = split_rows(ds, rows, "train", None if subset is None else f"{SUBSET_PREFIX}{subset}")
    has_val = (rows["split"] == "val").any()
    candidates = [(int(t), str(b)) for t in (timesteps or [timestep]) for b in (blocks or [block])]
    if len(candidates) > 1 and not has_val:
        raise OrthodiffError(f"choosing among {len(candidates)} (timestep, block) pairs needs a validation split ('val')")
    best, selection = None, []
    for timestep, block in candidates:
        start = time.perf_counter()
        model = VolumeClassifier("finetune", str(backbone), timestep, block, pooling, epochs=epochs, lr=head_lr,
                                 encoder_lr=lr, batch_size=batch_size, random_state=seed, device=device)
        model.fit(train_ds.volume, train_rows[labels].to_numpy(), on_step=progress)
        seconds = time.perf_counter() - start
        val_auroc = float("nan")
        if has_val:
            val_ds, val_rows = split_rows(ds, rows, "val")
            pred = exam_predictions(val_rows, model.predict_proba(val_ds.volume), labels)
            val_auroc = macro_auroc(pred[labels].to_numpy(), pred[[f"p_{c}" for c in labels]].to_numpy())
        selection.append({"timestep": timestep, "block": block, "val_macro_auroc": val_auroc})
        if best is None or val_auroc > best[0]:
            best = (val_auroc, timestep, block, model, seconds)
    val_auroc, timestep, block, model, seconds = best
    parent = backbone_id(backbone, ckpt)
    state = reference_state(model.backbone_, dict(NoiseScheduler().state_dict()))
    tuned = {"ema": state, "model": state, **{k: ckpt[k] for k in ("step", "preset", "config", "plane") if k in ckpt},
             "finetuned_from": parent,
             "finetune": {"timestep": int(timestep), "block": block, "pooling": pooling, "epochs": epochs, "lr": lr,
                          "head_lr": head_lr, "seed": seed, "train_series": len(train_rows), "subset": subset,
                          "selection": selection},
             "finetune_head": {k: v.detach().cpu() for k, v in model.net_.head.state_dict().items()}}
    save_atomic(tuned, out)
    return {"backbone": backbone_id(out, tuned), "finetuned_from": parent, "train_series": len(train_rows),
            "timestep": timestep, "block": block, "val_macro_auroc": val_auroc, "seconds": round(seconds, 1),
            "selection": selection}


def finetuned_probes(checkpoints: dict, config: dict) -> dict:
    """Stage I probes by plane from fine-tuned checkpoints' pooling heads, so Stage II fuses
    the pooled vectors of the head trained with the encoder (as the paper). Each checkpoint
    must have been fine-tuned at the configuration's (timestep, block) and pooling."""
    probes = {}
    for plane, path in checkpoints.items():
        ckpt = _plane_checkpoint(path, plane)
        if "finetune_head" not in ckpt:
            raise OrthodiffError(f"{path}: no fine-tuned pooling head (finetune_head); write it with `orthodiff finetune`")
        tuned, choice = ckpt["finetune"], config["planes"].get(plane)
        if choice is None or (choice["timestep"], choice["block"]) != (tuned["timestep"], tuned["block"]):
            raise OrthodiffError(f"{path}: fine-tuned at timestep {tuned['timestep']} block {tuned['block']!r}, but the "
                                 f"configuration's {plane} choice is {choice}")
        if tuned["pooling"] != config["pooling"]:
            raise OrthodiffError(f"{path}: its head pools with {tuned['pooling']!r}, the configuration with "
                                 f"{config['pooling']!r}; select with a {tuned['pooling']} sweep")
        probes[plane] = PlaneProbe.from_head(tuned["pooling"], ckpt["finetune_head"])
    return probes


def _plane_checkpoint(backbone, plane: str) -> dict:
    """The checkpoint, refused when it was trained on another plane."""
    ckpt = read_checkpoint(backbone)
    if ckpt.get("plane") and ckpt["plane"] != plane:
        raise OrthodiffError(f"{backbone}: backbone trained on {ckpt['plane']} series cannot be used for {plane} series")
    return ckpt


def run_baseline_classify(store, catalog_path, model, planes, out, epochs=5, lr=1e-3, batch_size=4, pooling="sap",
                          seed=0, n_boot=500, device=None, progress=None) -> pd.DataFrame:
    """A classifier from scratch per plane (training split), series probabilities averaged
    per test exam over its planes; test metrics with patient bootstrap CIs. ``progress()``
    is called after every optimizer step."""
    out = Path(out)
    catalog, labels = _catalog(catalog_path)
    parts = []
    for plane in planes:
        ds, rows = plane_volumes(store, catalog, plane)
        train_ds, train_rows = split_rows(ds, rows, "train")
        test_ds, test_rows = split_rows(ds, rows, "test")
        est = VolumeClassifier(model, pooling=pooling, epochs=epochs, lr=lr, batch_size=batch_size,
                               random_state=seed, device=device)
        est.fit(train_ds.volume, train_rows[labels].to_numpy(), on_step=progress)
        parts.append((test_rows, est.predict_proba(test_ds.volume)))
    rows = pd.concat([r for r, _ in parts], ignore_index=True)
    pred = exam_predictions(rows, np.concatenate([p for _, p in parts]), labels)
    y, p = pred[labels].to_numpy(), pred[[f"p_{c}" for c in labels]].to_numpy()
    metrics = evaluate(y, p, labels, groups=pred["patient_id"].to_numpy(), n_boot=n_boot, seed=seed)
    write_table(pred, out / "predictions")
    write_table(metrics, out / "metrics")
    write_run({"kind": "baseline", "task": "classify", "model": model, "planes": list(planes), "labels": labels,
                "epochs": epochs, "lr": lr, "test_exams": len(pred), "store": str(store),
                "catalog": str(catalog_path)}, out)
    return metrics


def series_dice(pred: np.ndarray, true: np.ndarray, structure_set) -> np.ndarray:
    """3D Dice of every (series, structure) of (series, slices, rows, columns) label arrays,
    scored as `evaluate seg` does (`evaluation.metrics`): a structure only in the prediction
    scores 0, one in neither mask is undefined (NaN)."""
    from orthodiff.evaluation.metrics import overlap

    return overlap(pred, true, structure_set)[0]


def dice_table(pred: np.ndarray, true: np.ndarray, structure_set) -> pd.DataFrame:
    """Per-structure Dice (`series_dice`) over series: mean, SD and the number of series where
    it is defined (the structure in the reference or the prediction; others are left out)."""
    scores = series_dice(pred, true, structure_set)
    rows = []
    for s, column in zip(structure_set.structures, scores.T):
        ok = np.isfinite(column)
        rows.append({"structure": s.abbr, "name": s.name, "dice": float(column[ok].mean()) if ok.any() else float("nan"),
                     "sd": float(column[ok].std()) if ok.any() else float("nan"), "series": int(ok.sum())})
    return pd.DataFrame(rows)


def macro_dice(scores: np.ndarray) -> float:
    """The mean over structures of each structure's mean over the series that have it."""
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a structure absent from every resampled series
        return float(np.nanmean(np.nanmean(scores, axis=0)))


def efficiency_point(scores: np.ndarray, rows: pd.DataFrame, n_boot: int = 500, seed: int = 0) -> dict:
    """Test macro Dice of one training subset with its 95% CI from resampling whole patients."""
    boots = np.array([macro_dice(scores[idx]) for idx in patient_resamples(rows["patient_id"].to_numpy(), n_boot, seed)])
    low, high = np.nanpercentile(boots, [2.5, 97.5])
    return {"macro_dice": macro_dice(scores), "ci_low": float(low), "ci_high": float(high)}


def plot_overlay(volumes: np.ndarray, true: np.ndarray, pred: np.ndarray, ids, path, n: int = 3) -> None:
    """Central slices of up to `n` series: the image, the reference mask, the prediction."""
    plt = pyplot()
    n = min(n, len(volumes))
    fig, axes = plt.subplots(n, 3, figsize=(7.5, 2.5 * n), squeeze=False)
    mid = volumes.shape[1] // 2
    for i in range(n):
        for j, (title, mask) in enumerate((("image", None), ("reference", true[i]), ("predicted", pred[i]))):
            ax = axes[i, j]
            ax.imshow(volumes[i, mid], cmap="gray", interpolation="nearest")
            if mask is not None:
                ax.imshow(np.ma.masked_equal(mask[mid], 0), cmap="tab20", alpha=0.5, vmin=0, vmax=20, interpolation="nearest")
            ax.set_title(f"{ids[i]} {title}", fontsize=7)
            ax.axis("off")
    fig.tight_layout()
    atomic_savefig(fig, path)
    plt.close(fig)


def _joint(rows: pd.DataFrame) -> str:
    return str(rows["joint"].iloc[0]) if "joint" in rows.columns else "knee"


def run_segment(store, catalog_path, plane, model, out, backbone=None, timestep=10, block="mid_2", epochs=30,
                lr=None, head_lr=1e-3, batch_size=10, subsets=(), seed=0, device=None, progress=None,
                decoder="light", timesteps=None, blocks=None, unetr_size="paper") -> pd.DataFrame:
    """Train a segmenter on the plane's training masks, score per-structure Dice on the test
    split, save the model, an overlay PNG, and label-efficiency curves over `subsets`.
    With several ``timesteps`` / ``blocks`` (diffusion models), each pair is trained and the
    one with the best validation mean Dice is kept (as in the paper; table ``selection``).
    ``progress()`` is called after every optimizer step."""
    out = Path(out)
    if backbone is not None:
        _plane_checkpoint(backbone, plane)
    catalog, _ = _catalog(catalog_path)
    ds, rows = plane_volumes(store, catalog, plane, masks=True)
    structure_set = structures(_joint(rows))
    test_ds, test_rows = split_rows(ds, rows, "test")
    true = test_ds.mask.to_numpy()
    lr = lr if lr is not None else (0.05 * head_lr if model == "diffusion" else 1e-3)  # the paper's encoder rate

    def fit(column=None):
        train_ds, train_rows = split_rows(ds, rows, "train", column)
        est = VolumeSegmenter(model, str(backbone) if backbone else None, timestep, block, max(structure_set.values) + 1,
                              epochs=epochs, lr=head_lr if model == "diffusion" else lr, encoder_lr=lr, batch_size=batch_size, random_state=seed, device=device,
                              decoder=decoder, unetr_size=unetr_size)
        est.fit(train_ds.volume, train_ds.mask, on_step=progress)
        return est, len(train_rows)

    candidates = [(int(t), str(b)) for t in (timesteps or [timestep]) for b in (blocks or [block])]
    if len(candidates) > 1 and model == "diffusion":
        val_ds, _ = split_rows(ds, rows, "val")
        selection, fitted = [], []
        for timestep, block in candidates:
            start = time.perf_counter()
            fitted.append((*fit(), time.perf_counter() - start))
            val_dice = dice_table(fitted[-1][0].predict(val_ds.volume), val_ds.mask.to_numpy(), structure_set)
            selection.append({"timestep": timestep, "block": block, "val_mean_dice": float(val_dice["dice"].mean())})
        best = int(np.argmax([r["val_mean_dice"] for r in selection]))
        (timestep, block), (est, n_train, seconds) = candidates[best], fitted[best]
        out.mkdir(parents=True, exist_ok=True)
        write_table(pd.DataFrame(selection), out / "selection")
    else:
        (timestep, block), start = candidates[0], time.perf_counter()
        est, n_train = fit()
        seconds = time.perf_counter() - start
    pred = est.predict(test_ds.volume)
    dice = dice_table(pred, true, structure_set)
    out.mkdir(parents=True, exist_ok=True)
    save_atomic({**est.state(), "plane": plane, "joint": structure_set.joint}, out / MODEL_FILE)
    write_table(dice, out / "dice")
    plot_overlay(test_ds.volume.to_numpy().astype(np.float32), true, pred, test_rows["series_id"].tolist(), out / "overlay.png")
    curve, per_series = [], []
    for size in subsets:
        if size == "all":
            n, scores = n_train, series_dice(pred, true, structure_set)
        else:
            sub, n = fit(f"{SUBSET_PREFIX}{size}")
            scores = series_dice(sub.predict(test_ds.volume), true, structure_set)
        curve.append({"subset": str(size), "series": n, **efficiency_point(scores, test_rows, seed=seed)})
        per_series.append(pd.DataFrame(scores, columns=[s.abbr for s in structure_set.structures])
                          .assign(subset=str(size), series_id=test_rows["series_id"].to_numpy(),
                                  patient_id=test_rows["patient_id"].to_numpy()))
    if curve:
        _plot_efficiency(pd.DataFrame(curve), out)
        write_table(pd.concat(per_series, ignore_index=True), out / "efficiency_series")
    write_run({"kind": "segment", "model": model, "plane": plane, "backbone": str(backbone) if backbone else None,
                "decoder": decoder if model == "diffusion" else None, "timestep": timestep, "block": block, "epochs": epochs, "lr": lr, "train_series": n_train,
                "test_series": len(test_rows), "train_seconds": round(seconds, 1), "store": str(store),
                "catalog": str(catalog_path)}, out)
    return dice


def _plot_efficiency(curve: pd.DataFrame, out: Path) -> None:
    write_table(curve, out / "efficiency")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.errorbar(curve["series"], curve["macro_dice"], marker="o", capsize=3,
                yerr=[curve["macro_dice"] - curve["ci_low"], curve["ci_high"] - curve["macro_dice"]])
    ax.set_xscale("log")
    ax.set_xlabel("training series")
    ax.set_ylabel("test macro Dice (95% CI)")
    fig.tight_layout()
    atomic_savefig(fig, out / "efficiency.png")
    plt.close(fig)


def load_segmenter(model_dir, device=None) -> tuple[VolumeSegmenter, dict]:
    path = Path(model_dir) / MODEL_FILE
    hint = "run `orthodiff segment train` (or `baseline segment`) into a new folder"
    if not path.is_file():
        raise OrthodiffError(f"{model_dir}: not a segmentation run (no {MODEL_FILE}); {hint}")
    saved = read_weights(path, "segmentation model", hint)
    missing = [k for k in ("params", "image_size", "unet", "state", "plane", "joint") if k not in saved]
    if missing:
        raise OrthodiffError(f"{path}: not a segmentation model (no {', '.join(missing)}); {hint}")
    try:
        return VolumeSegmenter.from_state(saved, device), saved
    except (RuntimeError, TypeError, KeyError, ValueError) as err:
        raise OrthodiffError(f"{path}: the weights do not fit the model it names ({type(err).__name__}: "
                             f"{str(err).splitlines()[0][:120]}); {hint}") from None


def run_segment_predict(model_dir, store, catalog_path, out, split="test", device=None, progress=None) -> pd.DataFrame:
    """Predict masks for a split's series, write them as NIfTI on each input series' grid
    (`out/masks/<series_id>.nii.gz`), and compare biomarkers with the reference masks
    (`biomarkers`, `agreement`, `bland_altman.png`, `thickness_maps.png`)."""
    from monai.transforms import Resize

    from orthodiff.catalogs.cohort import resolve_path
    from orthodiff.catalogs.geometry import spacing_of
    from orthodiff.catalogs.readers import read_mask, series_geometry
    from orthodiff.evaluation.biomarkers import agreement, biomarkers, cartilage, plot_bland_altman, plot_thickness_maps
    from orthodiff.featurestore.ingest import central_slices
    from orthodiff.featurestore.volumes import stored_reorientation

    out = Path(out)
    catalog, _ = _catalog(catalog_path)  # first: its series ids name the files written below
    est, saved = load_segmenter(model_dir, device)
    ds, rows = plane_volumes(store, catalog, saved["plane"])
    ds, rows = split_rows(ds, rows, split)
    structure_set = structures(saved["joint"])
    pred = est.predict(ds.volume)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    measured, reference = {}, {}
    for row, mask in zip(rows.itertuples(index=False), pred):
        path = resolve_path(catalog_path, row.path)
        shape, affine = series_geometry(path)
        turn = stored_reorientation(ds, row.series_id, affine, shape, row.plane)
        grid = shape if turn is None else turn.shape  # the stored orientation, before the in-plane resize
        full = np.zeros(grid, np.uint8)
        start = (grid[0] - mask.shape[0]) // 2
        full[start : start + mask.shape[0]] = np.asarray(Resize(grid[1:], mode="nearest")(mask), dtype=np.uint8)
        write_mask(series_file(out / "masks", row.series_id), full if turn is None else turn.undo(full), affine)
        spacing = tuple(ds.spacing.sel(series=row.series_id).values.tolist())
        if not np.isfinite(spacing).all() and not path.name.endswith(".npy"):  # a store older than its geometry arrays
            spacing = spacing_of(affine)
        measured[row.series_id] = biomarkers(central_slices(full), spacing, structure_set)
        if isinstance(row.mask_path, str) and row.mask_path:
            true = read_mask(resolve_path(catalog_path, row.mask_path), shape, structure_set.values)
            true = true if turn is None else turn.apply(true)
            reference[row.series_id] = biomarkers(central_slices(true), spacing, structure_set)
            if len(reference) == 1 and cartilage(structure_set):  # maps of the first series with a reference
                plot_thickness_maps({"predicted": central_slices(full), "reference": central_slices(true)}, spacing,
                                    structure_set, out / "thickness_maps.png", f"cartilage thickness, {row.series_id}")
        if progress:
            progress()
    measured = pd.DataFrame.from_dict(measured, orient="index")
    write_table(measured.rename_axis("series_id").reset_index(), out / "biomarkers")
    table = pd.DataFrame()
    if reference:
        reference = pd.DataFrame.from_dict(reference, orient="index")
        table = agreement(measured, reference)
        write_table(table, out / "agreement")
        plot_bland_altman(measured, reference, table, out / "bland_altman.png")
    write_run({"kind": "segment_predict", "model": str(model_dir), "split": split, "series": len(rows),
                "with_reference": len(reference)}, out)
    return table


def comparison(run_dirs) -> pd.DataFrame:
    """One row per run, side by side: classification runs (fuse, baseline) with test macro
    AUROC, its 95% CI, CF1 and OF1; segmentation runs with Dice per structure and the mean.
    Mixing the two kinds is an error."""
    from orthodiff.outputs import read_run, read_table

    rows, kinds = [], set()
    for run_dir in map(Path, run_dirs):
        run = read_run(run_dir, ("fuse", "baseline", "segment"), "a fuse, baseline or segment run directory")
        kind = run["kind"]
        if kind in ("fuse", "baseline"):
            kinds.add("classification")
            m = read_table(run_dir / "metrics.parquet").set_index(["metric", "label"])
            name = run.get("model") or run["method"] + (" + EHR" if run.get("ehr") else "")
            rows.append({"run": str(run_dir), "model": name, "macro_auroc": m.loc[("macro_auroc", "all"), "value"],
                         "ci_low": m.loc[("macro_auroc", "all"), "ci_low"], "ci_high": m.loc[("macro_auroc", "all"), "ci_high"],
                         "CF1": m.loc[("CF1", "all"), "value"], "OF1": m.loc[("OF1", "all"), "value"]})
        else:
            kinds.add("segmentation")
            dice = read_table(run_dir / "dice.parquet")
            rows.append({"run": str(run_dir), "model": run["model"], **dict(zip(dice["structure"], dice["dice"])),
                         "mean": float(dice["dice"].mean())})
    if len(kinds) > 1:
        raise OrthodiffError("classification and segmentation runs cannot share one table")
    return pd.DataFrame(rows)
