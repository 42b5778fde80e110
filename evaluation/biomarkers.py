"""Biomarkers: named functions of a structure's mask, an image (a relaxation map) and the
geometry (voxel spacing in mm), as the MSK evaluation paper's metric classes.

`BIOMARKERS` lists them; each applies to the structures of its tissues and is reported as
`<name>_<abbr>`:
- `volume` (every structure, mm^3): voxels x voxel volume;
- `thickness` (cartilage, mm): `orthodiff.supervised.biomarkers`' row-axis thickness;
- `skeleton_thickness` (cartilage, mm), the paper's: per slice, the medial axis of the
  compartment and its Euclidean distance transform (anisotropic pixels respected); the
  distance at each skeleton pixel is half the local thickness, so twice the mean distance
  along the skeletons of all slices reads in mm of cartilage (the paper reports the distance
  itself; the factor cancels in ICC and correlations);
- `t2`, `t1rho` (cartilage, ms): the mean of the map clipped to 0-100 ms inside the
  compartment, where the catalog has the map (`t2_path`, `t1rho_path`);
- `disc_height` (discs, mm), the paper's: on each slice the minimum-area rectangle around
  the disc's pixels (their corners, in mm), its shorter side the height; the maximum over
  slices.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from orthodiff.catalogs.tasks import StructureSet
from orthodiff.supervised.biomarkers import thickness_map

T2_RANGE_MS = (0.0, 100.0)


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
    """Mean of a T2 or T1rho map (ms) clipped to 0-100 ms inside `mask`; NaN if empty."""
    inside = np.asarray(mask, bool)
    return float(np.clip(relaxation[inside], *T2_RANGE_MS).mean()) if inside.any() else float("nan")


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
MAPS = tuple(sorted({b.image for b in BIOMARKERS if b.image}))  # catalog columns `<map>_path`
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
        if names and not structure.any():
            notes.append(f"no {s.abbr} voxels: {', '.join(names)} of {s.abbr} undefined (NaN)")
    return out, notes
