"""How good are personas: reproduction of healthy exams, localisation of lesions.

- `reproduction`: on healthy exams (all labels 0), where the persona should be the image,
  SSIM and MSE inside the ROI (SSIM over the ROI's bounding box, data range 2 for
  intensities in [-1, 1]; MSE also on the 0-255 scale the paper's Table 2 uses).
- `localisation`: on positive exams with a structure mask, the share of residual energy
  |x - persona|^2 of the ROI that falls in the lesion's structure (e.g. the ACL for an ACL
  tear), divided by the share in random translations of that structure within the ROI
  (same size): 1 means no localisation, larger is better.
- Both beside two completions that need no model (`fill_baselines`): the ROI filled with
  the mean of its surroundings, and with a blurred copy of them (normalized convolution). A
  persona worth its network beats both on healthy exams.
- `fidelity_tables` summarises (means with percentile-bootstrap 95% CIs over series), and
  `fidelity_figure` draws image / persona / residual of a few healthy and lesion series.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from skimage.metrics import structural_similarity

from orthodiff.errors import OrthodiffError


def roi_ssim_mse(image: np.ndarray, persona: np.ndarray, roi: np.ndarray) -> tuple[float, float]:
    """(SSIM over the ROI's bounding box, MSE over the ROI's voxels) of one series."""
    if not roi.any():
        raise OrthodiffError("empty ROI: nothing to compare")
    box = tuple(slice(i.min(), i.max() + 1) for i in np.nonzero(roi))
    a, b = image[box].astype(np.float64), persona[box].astype(np.float64)
    win = min(7, *[s if s % 2 else s - 1 for s in a.shape])
    ssim = structural_similarity(a, b, data_range=2.0, win_size=max(win, 3)) if win >= 3 else np.nan
    return float(ssim), float(((image[roi] - persona[roi].astype(np.float64)) ** 2).mean())


BASELINES = ("mean_fill", "blur_fill")
COMPLETIONS = ("persona", *BASELINES)


def fill_baselines(image: np.ndarray, roi: np.ndarray) -> dict[str, np.ndarray]:
    """`image` with the ROI completed without a model, from its surroundings: the known voxels
    of the ROI's bounding box grown by a quarter of its extent per axis (at least 1 voxel).

    - `mean_fill`: their mean;
    - `blur_fill`: normalized convolution (Knutsson & Westin 1993): G * (image x known) /
      G * known with a Gaussian of sigma = a quarter of the ROI's extent per axis (at least
      1 voxel), so the centre of the ROI is about two sigmas from its edge; voxels the
      Gaussian does not reach take the mean fill.
    Written here because scipy gives the Gaussian, not the masked (normalized) filter."""
    from scipy.ndimage import gaussian_filter

    if not roi.any() or roi.all():
        raise OrthodiffError("empty ROI or no voxels around it: nothing to fill from")
    image = image.astype(np.float64)
    idx = np.nonzero(roi)
    extent = [int(i.max() - i.min() + 1) for i in idx]
    margin = [max(1, e // 4) for e in extent]
    shell = tuple(slice(max(0, int(i.min()) - m), int(i.max()) + 1 + m) for i, m in zip(idx, margin))
    known = ~roi
    mean = float(image[shell][known[shell]].mean())
    sigma = [max(1.0, e / 4) for e in extent]
    weight = gaussian_filter(known.astype(np.float64), sigma, mode="nearest", truncate=8.0)
    value = gaussian_filter(np.where(known, image, 0.0), sigma, mode="nearest", truncate=8.0)
    blurred = np.where(weight > 1e-9, value / np.maximum(weight, 1e-9), mean)
    return {"mean_fill": np.where(roi, mean, image), "blur_fill": np.where(roi, blurred, image)}


def reproduction(personas, catalog: pd.DataFrame, split: str | None = "test") -> pd.DataFrame:
    """Per healthy series of `split`: ssim, mse, mse_255 of the persona, and <baseline>_ssim,
    <baseline>_mse, <baseline>_mse_255 of each of `BASELINES` on the same ROI. `personas` is
    `open_personas` output."""
    from orthodiff.catalogs.cohort import label_columns

    labels = label_columns(catalog)
    healthy = catalog.groupby("case_id")[labels].max().max(axis=1) == 0
    rows = catalog[catalog.case_id.map(healthy) & (catalog.split == split if split else True)]
    wanted = [s for s in rows.series_id if s in set(personas.series.values.tolist())]
    if not wanted:
        raise OrthodiffError(f"no personas of healthy {split or 'any'}-split exams to score")
    ds = personas.sel(series=wanted).load()
    out = []
    for i, series in enumerate(wanted):
        image, roi = ds.image.values[i].astype(np.float64), ds["mask"].values[i] > 0
        ssim, mse = roi_ssim_mse(image, ds.persona.values[i], roi)
        row = {"series": series, "ssim": ssim, "mse": mse, "mse_255": mse * (255 / 2) ** 2}
        for name, filled in fill_baselines(image, roi).items():
            ssim, mse = roi_ssim_mse(image, filled, roi)
            row.update({f"{name}_ssim": ssim, f"{name}_mse": mse, f"{name}_mse_255": mse * (255 / 2) ** 2})
        out.append(row)
    return pd.DataFrame(out)


def localisation_score(residual: np.ndarray, lesion: np.ndarray, roi: np.ndarray, draws: int = 50,
                       seed: int = 0) -> float:
    """Residual energy share in `lesion` / mean share in random translations of it inside `roi`."""
    energy = residual.astype(np.float64) ** 2 * roi
    total = energy.sum()
    if total == 0 or not lesion.any():
        return float("nan")
    inside = energy[lesion & roi].sum() / total
    rng = np.random.default_rng(seed)
    idx = np.argwhere(lesion)
    lo, hi = idx.min(0), idx.max(0)
    bounds = [np.nonzero(roi.any(axis=tuple(a for a in range(3) if a != k)))[0] for k in range(3)]
    shares = []
    for _ in range(draws):
        shift = [rng.integers(b.min() - l, b.max() - h + 1) if b.max() - h >= b.min() - l else 0
                 for b, l, h in zip(bounds, lo, hi)]
        moved = np.zeros_like(lesion)
        target = idx + np.asarray(shift)
        moved[tuple(target.T)] = True
        shares.append(energy[moved].sum() / total)
    return float(inside / max(np.mean(shares), 1e-12))


LESION_STRUCTURES = {"ACL": "ACL", "PCL": "PCL", "MM": "MM", "LM": "LM"}  # knee label -> structure abbr


def localisation(personas, catalog: pd.DataFrame, split: str | None = "test") -> pd.DataFrame:
    """Per positive series (label in `LESION_STRUCTURES`) whose structure mask puts that
    structure inside the ROI: the localisation score of its residual (`score`), and of the
    residuals of the `BASELINES` (`<baseline>_score`: what a model-free completion localises).
    `personas` is `open_personas` output (which carries the stored structure masks as `structure`)."""
    from orthodiff.catalogs.tasks import structures

    value = {s.abbr: s.value for s in structures("knee").structures}
    rows = catalog[catalog.series_id.isin(set(personas.series.values.tolist()))]
    if split:
        rows = rows[rows.split == split]
    out = []
    for row in rows.itertuples():
        for label, abbr in LESION_STRUCTURES.items():
            if getattr(row, label, 0) != 1:
                continue
            ds = personas.sel(series=row.series_id).load()
            roi = ds["mask"].values > 0
            lesion = (ds["structure"].values == value[abbr]) & roi
            if lesion.any():
                image = ds.image.values.astype(np.float64)
                entry = {"series": row.series_id, "label": label,
                         "score": localisation_score(image - ds.persona.values.astype(np.float64), lesion, roi)}
                for name, filled in fill_baselines(image, roi).items():
                    entry[f"{name}_score"] = localisation_score(image - filled, lesion, roi)
                out.append(entry)
    return pd.DataFrame(out, columns=["series", "label", "score", *(f"{b}_score" for b in BASELINES)])


def mean_ci(values, n_boot: int = 500, seed: int = 0) -> tuple[float, float, float]:
    """(mean, 95% CI low, high): percentile bootstrap over the values (scipy); NaN bounds
    for fewer than 2 values. NaN values are left out."""
    from scipy.stats import bootstrap

    values = np.asarray(values, np.float64)
    values = values[np.isfinite(values)]
    if not len(values):
        return float("nan"), float("nan"), float("nan")
    if len(values) < 2:
        return float(values[0]), float("nan"), float("nan")
    if np.ptp(values) == 0:  # scipy's bootstrap refuses constant data
        return (float(values[0]),) * 3
    ci = bootstrap((values,), np.mean, n_resamples=n_boot, method="percentile", random_state=seed).confidence_interval
    return float(values.mean()), float(ci[0]), float(ci[1])


def fidelity_tables(rep: pd.DataFrame, loc: pd.DataFrame, n_boot: int = 500, seed: int = 0) -> dict[str, pd.DataFrame]:
    """Summaries of `reproduction` and `localisation` output: `reproduction` (per completion:
    healthy series, SSIM and MSE on 0-255 with 95% CIs) and `localisation` (per lesion label
    and completion: series, mean score with its CI, median)."""
    rows = []
    for name in COMPLETIONS:
        prefix = "" if name == "persona" else f"{name}_"
        row = {"completion": name, "series": len(rep)}
        for metric in ("ssim", "mse_255"):
            row[metric], row[f"{metric}_low"], row[f"{metric}_high"] = mean_ci(rep[f"{prefix}{metric}"], n_boot, seed)
        rows.append(row)
    local = []
    for label, group in loc.groupby("label"):
        for name in COMPLETIONS:
            scores = group["score" if name == "persona" else f"{name}_score"]
            mean, low, high = mean_ci(scores, n_boot, seed)
            local.append({"label": label, "completion": name, "series": int(scores.notna().sum()), "score": mean,
                          "score_low": low, "score_high": high, "median": float(scores.median())})
    columns = ["label", "completion", "series", "score", "score_low", "score_high", "median"]
    return {"reproduction": pd.DataFrame(rows), "localisation": pd.DataFrame(local, columns=columns)}


def persona_panels(axes, image: np.ndarray, persona: np.ndarray, roi: np.ndarray, title: str,
                   lesion: np.ndarray | None = None) -> None:
    """Image, persona and residual of one (y, x) slice on three axes, ROI outlined in yellow
    (and the lesion's structure in red on the residual)."""
    for ax, (name, data) in zip(axes, (("image", image), ("persona", persona), ("residual", image - persona))):
        scale = dict(cmap="gray", vmin=-1, vmax=1) if name != "residual" else dict(cmap="coolwarm", vmin=-2, vmax=2)
        ax.imshow(data, **scale)
        ax.contour(roi, levels=[0.5], colors="yellow", linewidths=0.8)
        if lesion is not None and name == "residual" and lesion.any():
            ax.contour(lesion, levels=[0.5], colors="red", linewidths=0.8)
        ax.set_title(f"{title}: {name}", fontsize=8)
        ax.axis("off")


def fidelity_figure(personas, healthy: list[str], lesion: list[tuple[str, str]], png) -> Path:
    """One row per series (`healthy` ids, then (`series`, label) lesion pairs): image,
    persona and residual on the middle slice through the ROI, for a lesion series the slice
    with most of its lesion's structure inside the ROI (outlined in red)."""
    from orthodiff.catalogs.tasks import structures
    from orthodiff.outputs import atomic_savefig, pyplot

    rows = [(s, None) for s in healthy] + list(lesion)
    if not rows:
        raise OrthodiffError("no series to draw")
    value = {s.abbr: s.value for s in structures("knee").structures}
    plt = pyplot()
    fig, axes = plt.subplots(len(rows), 3, figsize=(7.5, 2.6 * len(rows)), squeeze=False)
    for row, (series, label) in zip(axes, rows):
        ds = personas.sel(series=series).load()
        roi = ds["mask"].values > 0
        zs = np.flatnonzero(roi.any(axis=(1, 2)))
        z = int(zs[len(zs) // 2])
        lesion_mask = None
        if label:
            lesion = (ds["structure"].values == value[LESION_STRUCTURES[label]]) & roi
            z = int(lesion.sum(axis=(1, 2)).argmax()) if lesion.any() else z
            lesion_mask = lesion[z]
        persona_panels(row, ds.image.values[z].astype(float), ds.persona.values[z].astype(float), roi[z],
                       f"{series} ({label or 'healthy'})", lesion_mask)
    fig.tight_layout()
    path = atomic_savefig(fig, png)
    plt.close(fig)
    return path


def persona_fidelity(personas, catalog: pd.DataFrame, split: str | None = "test", out=None, n_boot: int = 500,
                     seed: int = 0, examples: int = 3) -> dict[str, pd.DataFrame]:
    """`reproduction` and `localisation` of `split` with their summaries (`fidelity_tables`);
    with `out`, writes per-series tables, the summaries and `fidelity.png` (`examples`
    healthy and `examples` lesion series) there. A split without healthy personas gives an
    empty reproduction table, not an error, when it has lesion ones."""
    from orthodiff.outputs import write_table

    try:
        rep = reproduction(personas, catalog, split)
    except OrthodiffError:
        rep = pd.DataFrame(columns=["series", "ssim", "mse", "mse_255",
                                    *(f"{b}_{m}" for b in BASELINES for m in ("ssim", "mse", "mse_255"))])
    loc = localisation(personas, catalog, split)
    if not len(rep) and not len(loc):
        raise OrthodiffError(f"no personas of healthy or lesion {split or 'any'}-split exams to score")
    tables = {"per_series": rep, "lesions": loc, **fidelity_tables(rep, loc, n_boot, seed)}
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        for name, table in tables.items():
            write_table(table, out / f"fidelity_{name}")
        if examples:
            lesions = list(loc.drop_duplicates("series")[["series", "label"]].itertuples(index=False, name=None))
            fidelity_figure(personas, rep.series.tolist()[:examples], lesions[:examples], out / "fidelity.png")
    return tables
