"""How good are personas: reproduction of healthy exams, localisation of lesions.

- `reproduction`: on healthy exams (all labels 0), where the persona should be the image,
  SSIM and MSE inside the ROI (SSIM over the ROI's bounding box, data range 2 for
  intensities in [-1, 1]; MSE also on the 0-255 scale the paper's Table 2 uses).
- `localisation`: on positive exams with a structure mask, the share of residual energy
  |x - persona|^2 of the ROI that falls in the lesion's structure (e.g. the ACL for an ACL
  tear), divided by the share in random translations of that structure within the ROI
  (same size): 1 means no localisation, larger is better.
"""

from __future__ import annotations

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


def reproduction(personas, catalog: pd.DataFrame, split: str | None = "test") -> pd.DataFrame:
    """Per healthy series of `split`: ssim, mse, mse_255. `personas` is `open_personas` output."""
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
        ssim, mse = roi_ssim_mse(ds.image.values[i], ds.persona.values[i], ds["mask"].values[i] > 0)
        out.append({"series": series, "ssim": ssim, "mse": mse, "mse_255": mse * (255 / 2) ** 2})
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
    structure inside the ROI: the localisation score of its residual. `personas` is
    `open_personas` output (which carries the stored structure masks as `structure`)."""
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
                residual = ds.image.values.astype(np.float64) - ds.persona.values.astype(np.float64)
                out.append({"series": row.series_id, "label": label, "score": localisation_score(residual, lesion, roi)})
    return pd.DataFrame(out, columns=["series", "label", "score"])
