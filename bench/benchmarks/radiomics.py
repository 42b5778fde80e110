"""Radiomics: our vectorised IBSI families vs `mirp` on the same ROIs (speed, largest disagreement).

    .venv/bin/python bench/benchmarks/radiomics.py [--rois 3]

Draws a smooth random 16x32x32 volume, takes the first `--rois` cells of the 3x3x3 central box
grid, computes every family with both, matches features by mirp's names and prints the
largest relative disagreement per family, seconds per ROI for each, and the implied series/s
for 27 ROIs x 3 sources.
"""

from __future__ import annotations

import argparse
import logging
import re
import time
import warnings

import numpy as np
import pandas as pd
from scipy import ndimage

from orthodiff.personas.rois import box_grid
from orthodiff.radiomics.ibsi import roi_features

MIRP_FAMILIES = ["morphology", "statistics", "intensity_histogram", "glcm", "glrlm", "glszm", "ngtdm", "ngldm"]


def mirp_features(image: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    from mirp import extract_features

    out = extract_features(
        image=image.astype(np.float32), mask=mask.astype(bool), image_modality="mr",
        base_feature_families=MIRP_FAMILIES, base_discretisation_method="fixed_bin_number",
        base_discretisation_n_bins=32, glcm_spatial_method="3d_volume_merge", glrlm_spatial_method="3d_volume_merge",
        glszm_spatial_method="3d", ngtdm_spatial_method="3d", ngldm_spatial_method="3d", glcm_distance=1.0,
    )[0]
    values = {}
    for column, value in out.iloc[0].items():
        m = re.match(r"^((?:stat|ih|morph|cm|rlm|szm|ngt|ngl)_[a-z0-9_]+?)(?:_d1|_fbn|_3d|_a0|$)", column)
        if m and isinstance(value, (int, float, np.floating)):
            values.setdefault(m.group(1), float(value))
    return values


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rois", type=int, default=3)
    args = parser.parse_args()
    logging.disable(logging.INFO)
    warnings.filterwarnings("ignore")
    rng = np.random.default_rng(0)
    image = ndimage.gaussian_filter(rng.normal(0, 1, (16, 32, 32)), 1.5) * 300 + 500
    labels, names = box_grid(image.shape, 3)
    rows, own_s, mirp_s = [], 0.0, 0.0
    for j in range(1, args.rois + 1):
        mask = labels == j
        t = time.perf_counter()
        own = roi_features(image, mask)
        own_s += time.perf_counter() - t
        t = time.perf_counter()
        ref = mirp_features(image, mask)
        mirp_s += time.perf_counter() - t
        for name, value in own.items():
            if name in ref:
                diff = abs(value - ref[name]) / max(abs(ref[name]), 1e-9)
                rows.append({"roi": names[j - 1], "feature": name, "own": value, "mirp": ref[name], "rel_diff": diff})
    df = pd.DataFrame(rows)
    df["family"] = df.feature.str.split("_").str[0]
    pd.set_option("display.width", 200)
    print(df.groupby("family").rel_diff.agg(["max", "median", "count"]))
    print(df.sort_values("rel_diff", ascending=False).head(25).to_string())
    matched = df.feature.nunique()
    print(f"own {len(own)} features/ROI, matched by name with mirp: {matched}")
    print(f"seconds per ROI: own {own_s / args.rois:.3f}, mirp {mirp_s / args.rois:.2f} (ratio {mirp_s / own_s:.0f}x)")
    print(f"series/s at 27 ROIs x 3 sources: own {1 / (81 * own_s / args.rois):.3f}, mirp {1 / (81 * mirp_s / args.rois):.4f}")


if __name__ == "__main__":
    main()
