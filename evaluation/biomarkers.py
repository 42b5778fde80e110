"""Biomarkers: named functions of a structure's mask, an image (a relaxation map) and the
geometry (voxel spacing in mm), as the MSK evaluation paper's metric classes.

`BIOMARKERS` lists them; each applies to the structures of its tissues and is reported as
`<name>_<abbr>`:
- `volume` (every structure, mm^3): voxels x voxel volume;
- `thickness` (cartilage, mm): along the image row axis (superior-inferior in sagittal and
  coronal knee series): per (slice, column) line, cartilage voxels times the row spacing
  (`thickness_map`), averaged over the lines that cross the compartment;
- `skeleton_thickness` (cartilage, mm), the paper's: per slice, the medial axis of the
  compartment and its Euclidean distance transform (anisotropic pixels respected); the
  distance at each skeleton pixel is half the local thickness, so twice the mean distance
  along the skeletons of all slices reads in mm of cartilage (the paper reports the distance
  itself; the factor cancels in ICC and correlations);
- `t2`, `t1rho` (cartilage, ms): the mean of the map clipped to 0-100 ms inside the
  compartment, where the catalog has the map (`t2_path`, `t1rho_path`); map voxels without a
  value (NaN, Inf) are left out of every mask's mean alike and noted per series and structure;
- `disc_height` (discs, mm), the paper's: on each slice the minimum-area rectangle around
  the disc's pixels (their corners, in mm), its shorter side the height; the maximum over
  slices.

Spacing is taken from the series' geometry (the store's `spacing`, `catalogs.geometry`), never
a default. `biomarkers`, `agreement` and the plots serve `orthodiff segment predict`; every
caller measures here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

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


def mean_relaxation(mask: np.ndarray, relaxation: np.ndarray, spacing=None) -> float:
    """Mean of a T2 or T1rho map (ms) clipped to 0-100 ms over the finite map voxels inside
    `mask`; NaN if none (`missing_values` counts the others, for the notes)."""
    values = np.asarray(relaxation)[np.asarray(mask, bool)]
    values = values[np.isfinite(values)]
    return float(np.clip(values, *T2_RANGE_MS).mean()) if values.size else float("nan")


def missing_values(mask: np.ndarray, relaxation: np.ndarray) -> int:
    """Map voxels inside `mask` without a value (NaN or Inf)."""
    return int((~np.isfinite(np.asarray(relaxation)[np.asarray(mask, bool)])).sum())


def rectangle_height(points: np.ndarray) -> float:
    """The shorter side of the minimum-area rectangle around 2D `points` (rotating calipers
    over the convex hull's edge directions)."""
    from scipy.spatial import ConvexHull

    hull = points[ConvexHull(points).vertices]
    edges = np.diff(np.vstack([hull, hull[:1]]), axis=0)
    angles = np.arctan2(edges[:, 1], edges[:, 0])  # each edge as (row, column) = (cos, sin)
    best = (np.inf, np.nan)
    for a in angles:
        c, s = np.cos(a), np.sin(a)
        u, v = hull @ np.array([c, s]), hull @ np.array([-s, c])
        sides = (np.ptp(u), np.ptp(v))
        best = min(best, (sides[0] * sides[1], min(sides)))
    return float(best[1])


def disc_height(mask: np.ndarray, image=None, spacing=(1.0, 1.0, 1.0)) -> float:
    """Maximum over slices of the height (mm) of the minimum-area rectangle around the
    disc's pixels on that slice; NaN if empty."""
    heights = []
    corners = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], float)
    for plane in np.asarray(mask, bool):
        rows, cols = np.nonzero(plane)
        if len(rows):
            points = (np.stack([rows, cols], 1)[:, None, :] + corners[None]).reshape(-1, 2) * np.asarray(spacing[1:])
            heights.append(rectangle_height(np.unique(points, axis=0)))
    return max(heights) if heights else float("nan")


def _volume(mask, image, spacing) -> float:
    return float(np.count_nonzero(mask) * np.prod(spacing))


def _row_thickness(mask, image, spacing) -> float:
    m = thickness_map(mask, True, spacing)
    return float(m[m > 0].mean()) if (m > 0).any() else float("nan")


def _skeleton(mask, image, spacing) -> float:
    return skeleton_thickness(mask, spacing)


@dataclass(frozen=True)
class Biomarker:
    """A named function `measure(mask, image, spacing) -> float` of one structure's boolean
    (slices, rows, columns) mask, the map named `image` (None: needs none) and the (slice,
    row, column) spacing in mm, for the structures of `tissues` (empty: every structure)."""

    name: str
    measure: Callable[[np.ndarray, np.ndarray | None, tuple], float]
    unit: str
    tissues: tuple[str, ...] = ()
    image: str | None = None

    def applies(self, tissue: str) -> bool:
        return not self.tissues or tissue in self.tissues


BIOMARKERS = (
    Biomarker("volume", _volume, "mm^3"),
    Biomarker("thickness", _row_thickness, "mm", ("cartilage",)),
    Biomarker("skeleton_thickness", _skeleton, "mm", ("cartilage",)),
    Biomarker("t2", mean_relaxation, "ms", ("cartilage",), "t2"),
    Biomarker("t1rho", mean_relaxation, "ms", ("cartilage",), "t1rho"),
    Biomarker("disc_height", disc_height, "mm", ("disc",)),
)
MAPS = tuple(sorted({b.image for b in BIOMARKERS if b.image}))
MAP_NAMES = {"t2": "T2", "t1rho": "T1rho"}  # as notes name them  # catalog columns `<map>_path`
# What the paper plots per biomarker (its Fig. 5b): thickness, relaxation, disc height and
# muscle volume; other volumes stay in the tables.
CLINICAL = r"thickness_|^t2_|^t1rho_|^disc_height_|^volume_(?:QUAD|HAM|ADD)$"


def series_biomarkers(mask: np.ndarray, spacing, structure_set: StructureSet,
                      maps: dict[str, np.ndarray] | None = None) -> tuple[dict[str, float], list[str]]:
    """`<biomarker>_<abbr>` -> value of one mask (a map's biomarkers only where `maps` has
    it), and notes naming each undefined one (NaN) but volumes (0 for an absent structure)."""
    maps = maps or {}
    mask = np.asarray(mask)
    out, notes = {}, []
    for s in structure_set.structures:
        structure = mask == s.value
        names = []
        for b in BIOMARKERS:
            if b.applies(s.tissue) and (b.image is None or b.image in maps):
                out[f"{b.name}_{s.abbr}"] = b.measure(structure, maps.get(b.image), spacing)
                names += [b.name] if b.name != "volume" else []
                missing = missing_values(structure, maps[b.image]) if b.image else 0
                if missing:
                    label = MAP_NAMES[b.image]
                    notes.append(f"{missing} of {int(structure.sum())} {s.abbr} voxels have no {label} value (NaN or Inf "
                                 f"in the map): left out of {label} of {s.abbr}" + (" (undefined, NaN)" if missing == structure.sum() else ""))
        if names and not structure.any():
            notes.append(f"no {s.abbr} voxels: {', '.join(names)} of {s.abbr} undefined (NaN)")
    return out, notes
