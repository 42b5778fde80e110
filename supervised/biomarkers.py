"""Biomarkers from label masks (structure volumes, cartilage thickness) and their agreement.

Masks are (slices, rows, columns) arrays with voxel spacing in mm in the same order, taken
from the series' geometry (the store's `spacing`, `catalogs.geometry`), never a default.
Cartilage thickness is measured along the image row axis (superior-inferior in sagittal
and coronal knee series, close to the normal of the femoral and tibial cartilage plates):
per (slice, column) line, the number of cartilage voxels times the row spacing. The map
of a compartment is that (slices x columns) array; its mean is over lines that cross it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from orthodiff.catalogs.geometry import spacing_of  # noqa: F401  (evaluation reads it from here)
from orthodiff.catalogs.tasks import StructureSet


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
