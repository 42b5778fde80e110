"""Biomarkers from one mask: structure volumes, cartilage thickness two ways, mean T2.

Row-axis thickness (`thickness_<abbr>`) is `orthodiff.supervised.biomarkers`'; the
skeleton thickness (`skeleton_thickness_<abbr>`) follows the paper: per slice, the medial
axis of the compartment and its Euclidean distance transform (in mm, anisotropic pixels
respected); the distance at each skeleton pixel is half the local thickness, so twice the
mean distance along the skeletons of all slices is the compartment's thickness (the paper
reports the distance itself; the factor of two makes both methods read in mm of
cartilage, and cancels in ICC and correlations). T2 (`t2_<abbr>`) is the mean of the T2
map clipped to 0-100 ms inside each cartilage compartment; map voxels without a value (NaN,
Inf) are left out of every mask's mean and noted per series and structure.
"""

from __future__ import annotations

import numpy as np

from orthodiff.catalogs.tasks import StructureSet
from orthodiff.supervised.biomarkers import biomarkers as volume_and_row_thickness, cartilage

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
    out = volume_and_row_thickness(mask, spacing, structure_set)
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
