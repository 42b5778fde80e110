"""Biomarkers from one mask: structure volumes, cartilage thickness two ways, mean T2.

Row-axis thickness (`thickness_<abbr>`) is `orthodiff.supervised.biomarkers`'; the
skeleton thickness (`skeleton_thickness_<abbr>`) follows the paper: per slice, the medial
axis of the compartment and its Euclidean distance transform (in mm, anisotropic pixels
respected); the distance at each skeleton pixel is half the local thickness, so twice the
mean distance along the skeletons of all slices is the compartment's thickness (the paper
reports the distance itself; the factor of two makes both methods read in mm of
cartilage, and cancels in ICC and correlations). T2 (`t2_<abbr>`) is the mean of the T2
map clipped to 0-100 ms inside each cartilage compartment.
"""

from __future__ import annotations

import numpy as np

from orthodiff.catalogs.tasks import StructureSet
from orthodiff.supervised.biomarkers import biomarkers as volume_and_row_thickness, cartilage

T2_RANGE_MS = (0.0, 100.0)


def skeleton_thickness(mask: np.ndarray, spacing) -> float:
    """Mean cartilage thickness in mm of a boolean (slices, rows, columns) mask along its
    per-slice medial axes; NaN for an empty mask."""
    from scipy.ndimage import distance_transform_edt
    from skimage.morphology import medial_axis

    values = []
    for plane in np.asarray(mask, bool):
        if plane.any():
            skeleton = medial_axis(plane, rng=0)  # seeded: ties are broken at random
            values.append(distance_transform_edt(plane, sampling=spacing[1:])[skeleton])
    return float(2 * np.concatenate(values).mean()) if values else float("nan")


def mean_t2(t2: np.ndarray, mask: np.ndarray) -> float:
    inside = np.asarray(mask, bool)
    return float(np.clip(t2[inside], *T2_RANGE_MS).mean()) if inside.any() else float("nan")


def series_biomarkers(mask: np.ndarray, spacing, structure_set: StructureSet,
                      t2: np.ndarray | None = None) -> tuple[dict[str, float], list[str]]:
    """Biomarker name -> value of one mask, and notes naming each undefined one (NaN)."""
    out = volume_and_row_thickness(mask, spacing, structure_set)
    notes = []
    for s in cartilage(structure_set):
        compartment = mask == s.value
        out[f"skeleton_thickness_{s.abbr}"] = skeleton_thickness(compartment, spacing)
        if t2 is not None:
            out[f"t2_{s.abbr}"] = mean_t2(t2, compartment)
        if not compartment.any():
            notes.append(f"no {s.abbr} voxels: thickness{' and T2' if t2 is not None else ''} of {s.abbr} undefined (NaN)")
    return out, notes
