"""Biomarkers from label masks: structure volumes, cartilage thickness two ways, mean T2,
and their Bland-Altman agreement. Every caller measures here: `orthodiff segment predict`
(`supervised/runs.py`) and `orthodiff evaluate seg` (`evaluation/run.py`).

Masks are (slices, rows, columns) arrays with voxel spacing in mm in the same order, taken
from the series' geometry (the store's `spacing`, `catalogs.geometry`), never a default.
Row-axis thickness (`thickness_<abbr>`) is measured along the image row axis
(superior-inferior in sagittal and coronal knee series, close to the normal of the femoral
and tibial cartilage plates): per (slice, column) line, the number of cartilage voxels
times the row spacing. The map of a compartment is that (slices x columns) array; its mean
is over lines that cross it. The skeleton thickness (`skeleton_thickness_<abbr>`) follows
the paper: per slice, the medial axis of the compartment and its Euclidean distance
transform (in mm, anisotropic pixels respected); the distance at each skeleton pixel is
half the local thickness, so twice the mean distance along the skeletons of all slices is
the compartment's thickness (the paper reports the distance itself; the factor of two makes
both methods read in mm of cartilage, and cancels in ICC and correlations). T2 (`t2_<abbr>`)
is the mean of the T2 map clipped to 0-100 ms inside each cartilage compartment; map voxels without a value (NaN,
Inf) are left out of every mask's mean and noted per series and structure.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from orthodiff.catalogs.geometry import spacing_of  # noqa: F401  (callers measure with it from here)
from orthodiff.catalogs.tasks import StructureSet

T2_RANGE_MS = (0.0, 100.0)

def cartilage(structure_set: StructureSet) -> list:
    return [s for s in structure_set.structures if s.name.lower().endswith("cartilage")]


def thickness_map(mask: np.ndarray, value: int, spacing: tuple[float, float, float]) -> np.ndarray:
    """(slices, columns) thickness in mm of structure `value` along the row axis (0 where absent)."""
    return (np.asarray(mask) == value).sum(axis=1) * spacing[1]


def biomarkers(mask: np.ndarray, spacing: tuple[float, float, float], structure_set: StructureSet) -> dict[str, float]:
    """`volume_<abbr>` (mm^3) for every structure and `thickness_<abbr>` (mean mm, NaN when
    the compartment is absent) for every cartilage compartment."""
    mask = np.asarray(mask)
    voxel = float(np.prod(spacing))
    counts = np.bincount(mask.ravel(), minlength=max(structure_set.values) + 1)
    out = {f"volume_{s.abbr}": float(counts[s.value] * voxel) for s in structure_set.structures}
    for s in cartilage(structure_set):
        m = thickness_map(mask, s.value, spacing)
        out[f"thickness_{s.abbr}"] = float(m[m > 0].mean()) if (m > 0).any() else float("nan")
    return out


def agreement(predicted: pd.DataFrame, reference: pd.DataFrame) -> pd.DataFrame:
    """Bland-Altman agreement per biomarker column, on rows (series) present in both and
    finite in both: n, reference mean, bias (predicted - reference), SD of the differences,
    95% limits of agreement (bias +- 1.96 SD), and Pearson r."""
    pred, ref = predicted.align(reference, join="inner", axis=0)
    rows = []
    for column in [c for c in ref.columns if c in pred.columns]:
        a, b = pred[column].to_numpy(float), ref[column].to_numpy(float)
        ok = np.isfinite(a) & np.isfinite(b)
        a, b = a[ok], b[ok]
        diff = a - b
        sd = float(diff.std(ddof=1)) if len(diff) > 1 else float("nan")
        bias = float(diff.mean()) if len(diff) else float("nan")
        r = float(np.corrcoef(a, b)[0, 1]) if len(a) > 2 and a.std() > 0 and b.std() > 0 else float("nan")
        rows.append({"biomarker": column, "n": int(ok.sum()), "reference_mean": float(b.mean()) if len(b) else float("nan"),
                     "bias": bias, "sd": sd, "loa_low": bias - 1.96 * sd, "loa_high": bias + 1.96 * sd, "pearson_r": r})
    return pd.DataFrame(rows)


def plot_bland_altman(predicted: pd.DataFrame, reference: pd.DataFrame, table: pd.DataFrame, path) -> None:
    """One Bland-Altman panel per biomarker with agreement statistics."""
    from orthodiff.outputs import atomic_savefig, pyplot

    plt = pyplot()
    pred, ref = predicted.align(reference, join="inner", axis=0)
    columns = table["biomarker"].tolist()
    ncols = min(4, len(columns))
    nrows = -(-len(columns) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 2.6 * nrows), squeeze=False)
    for ax, row in zip(axes.flat, table.itertuples()):
        a, b = pred[row.biomarker].to_numpy(float), ref[row.biomarker].to_numpy(float)
        ax.scatter((a + b) / 2, a - b, s=8)
        for level, style in ((row.bias, "-"), (row.loa_low, "--"), (row.loa_high, "--")):
            ax.axhline(level, color="k", linestyle=style, linewidth=0.8)
        ax.set_title(row.biomarker, fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(columns):]:
        ax.axis("off")
    fig.supxlabel("mean of predicted and reference")
    fig.supylabel("predicted - reference")
    fig.tight_layout()
    atomic_savefig(fig, path)
    plt.close(fig)


def plot_thickness_maps(masks: dict[str, np.ndarray], spacing: tuple[float, float, float],
                        structure_set: StructureSet, path, title: str = "") -> None:
    """Thickness maps (mm, slices x columns) of every cartilage compartment, one row per
    mask in `masks` (e.g. predicted and reference), on a shared colour scale per compartment."""
    from orthodiff.outputs import atomic_savefig, pyplot

    plt = pyplot()
    compartments = cartilage(structure_set)
    maps = {name: [thickness_map(m, s.value, spacing) for s in compartments] for name, m in masks.items()}
    fig, axes = plt.subplots(len(masks), len(compartments), figsize=(2.6 * len(compartments), 2.2 * len(masks)),
                             squeeze=False)
    for j, s in enumerate(compartments):
        top = max(float(maps[name][j].max()) for name in masks) or 1.0
        for i, name in enumerate(masks):
            image = axes[i, j].imshow(np.ma.masked_equal(maps[name][j], 0), vmin=0, vmax=top, cmap="viridis",
                                      aspect="auto", interpolation="nearest")
            axes[i, j].set_title(f"{s.abbr} {name}", fontsize=8)
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
        fig.colorbar(image, ax=axes[:, j], shrink=0.8, label="mm")
    if title:
        fig.suptitle(title, fontsize=9)
    atomic_savefig(fig, path)
    plt.close(fig)


def skeleton_thicknesses(mask: np.ndarray, values, spacing) -> dict[int, float]:
    """Mean thickness in mm of each label in `values` of a (slices, rows, columns) mask
    along its per-slice medial axes; NaN for a label with no voxels.

    Every non-empty (label, slice) plane is cropped to the label with a one-pixel
    background margin and the crops are laid side by side, so that one `medial_axis` call
    (whose fixed set-up cost dominates on small planes) serves the whole mask; the crops
    are separated by background, so each one's skeleton and distances are its own.
    """
    from scipy.ndimage import distance_transform_edt, find_objects
    from skimage.morphology import medial_axis

    crops, owner = [], []
    for value in values:
        for plane in np.asarray(mask) == value:
            box = find_objects(plane.astype(np.uint8))
            if box:
                crops.append(np.pad(plane[box[0]], 1))
                owner.append(value)
    out = {value: float("nan") for value in values}
    if not crops:
        return out
    height = max(c.shape[0] for c in crops)
    strip = np.concatenate([np.pad(c, ((0, height - c.shape[0]), (0, 0))) for c in crops], axis=1)
    columns = np.repeat(np.asarray(owner), [c.shape[1] for c in crops])
    skeleton = medial_axis(strip, rng=0)  # seeded: ties are broken at random
    distance = distance_transform_edt(strip, sampling=spacing[1:])
    rows, cols = np.nonzero(skeleton)
    for value in set(owner):
        here = columns[cols] == value
        out[value] = float(2 * distance[rows[here], cols[here]].mean())
    return out


def skeleton_thickness(mask: np.ndarray, spacing) -> float:
    """`skeleton_thicknesses` of one boolean compartment mask."""
    return skeleton_thicknesses(np.asarray(mask, np.uint8), [1], spacing)[1]


def mean_t2(t2: np.ndarray, mask: np.ndarray) -> tuple[float, int]:
    """(mean T2 of the finite map voxels inside `mask`, clipped to `T2_RANGE_MS`; how many voxels
    inside had no value, NaN or Inf, and were left out). A voxel without a value is left out of
    every mask's mean alike, so reference and model are compared on the same map."""
    values = np.asarray(t2)[np.asarray(mask, bool)]
    finite = np.isfinite(values)
    mean = float(np.clip(values[finite], *T2_RANGE_MS).mean()) if finite.any() else float("nan")
    return mean, int((~finite).sum())


def series_biomarkers(mask: np.ndarray, spacing, structure_set: StructureSet,
                      t2: np.ndarray | None = None) -> tuple[dict[str, float], list[str]]:
    """Biomarker name -> value of one mask, and notes naming each undefined one (NaN)."""
    out = biomarkers(mask, spacing, structure_set)
    notes = []
    compartments = cartilage(structure_set)
    thickness = skeleton_thicknesses(mask, [s.value for s in compartments], spacing)
    for s in compartments:
        compartment = mask == s.value
        out[f"skeleton_thickness_{s.abbr}"] = thickness[s.value]
        if t2 is not None:
            out[f"t2_{s.abbr}"], missing = mean_t2(t2, compartment)
            if missing:
                notes.append(f"{missing} of {int(compartment.sum())} {s.abbr} voxels have no T2 value (NaN or Inf in the "
                             f"map): left out of T2 of {s.abbr}" + (" (undefined, NaN)" if missing == compartment.sum() else ""))
        if not compartment.any():
            notes.append(f"no {s.abbr} voxels: thickness{' and T2' if t2 is not None else ''} of {s.abbr} undefined (NaN)")
    return out, notes
